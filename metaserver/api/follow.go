package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"
)

// The loops every daemon runs against the metaserver: register until it
// answers, heartbeat on a ticker, and follow its long-polled assignments.

// Register calls register until it succeeds, answers with a client error
// (4xx: retrying cannot help) or ctx ends; other failures (the metaserver
// unreachable or failing) are retried with backoff from 200 ms to 5 s. A
// metaserver whose certificate does not verify is not retried either: that
// is a wrong CA or address, which waiting does not mend.
func Register(ctx context.Context, log *slog.Logger, register func(ctx context.Context) error) error {
	backoff := 200 * time.Millisecond
	for {
		err := register(ctx)
		if err == nil {
			return nil
		}
		var ae *Error
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
			return err
		}
		if IsCertificateError(err) {
			return err
		}
		log.Warn("metaserver not reachable, retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// Heartbeat calls beat every interval until ctx ends, logging failures.
func Heartbeat(ctx context.Context, log *slog.Logger, interval time.Duration, beat func(ctx context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := beat(ctx); err != nil && ctx.Err() == nil {
			log.Warn("heartbeat failed", "err", err)
		}
	}
}

// Follow long-polls fetch for changes after the last generation it applied
// and hands each answer to apply until ctx ends. An answer counts as applied
// only when apply reports success; otherwise the same generation is fetched
// again after a second.
func Follow[T any](ctx context.Context, log *slog.Logger, what string,
	fetch func(ctx context.Context, after int64) (T, int64, error), apply func(T) bool) {
	var gen int64
	for ctx.Err() == nil {
		v, next, err := fetch(ctx, gen)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("fetching "+what, "err", err)
		} else if apply(v) {
			gen = next
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// IsCertificateError reports whether err is a TLS peer that failed
// verification: a certificate no trusted CA signed, for another name, or
// for another role of the cluster (pki wraps that in a
// tls.CertificateVerificationError too).
func IsCertificateError(err error) bool {
	var ve *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	return errors.As(err, &ve) || errors.As(err, &ua) || errors.As(err, &he)
}
