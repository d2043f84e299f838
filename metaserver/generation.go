package metaserver

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// generationHub fans the cluster's generation changes out to the long polls
// of this process. It learns of changes from this process's own commits and,
// through one LISTEN connection, from every metaserver sharing the database.
type generationHub struct {
	// interval bounds how long the listener goes without reading the
	// generation itself, a safety net for a notification lost in a reconnect.
	interval time.Duration
	mu       struct {
		sync.Mutex
		gen     int64         // guarded by mu: the newest generation known
		changed chan struct{} // guarded by mu: closed and replaced when gen grows
	}
}

// listenerAppName names the LISTEN connection in pg_stat_activity.
const listenerAppName = "chunkraid-metaserver-listener"

func newGenerationHub(interval time.Duration) *generationHub {
	h := &generationHub{interval: interval}
	h.mu.changed = make(chan struct{})
	return h
}

// changed returns a channel that is closed at the next generation change.
// Take it before reading the state a waiter compares against, so that no
// change slips between the read and the wait.
func (h *generationHub) changed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.changed
}

// observe records that generation gen was committed.
func (h *generationHub) observe(gen int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if gen <= h.mu.gen {
		return
	}
	h.mu.gen = gen
	close(h.mu.changed)
	h.mu.changed = make(chan struct{})
}

// listen keeps a LISTEN connection open until ctx ends and feeds the hub
// with the generations notified for schema. It reconnects after errors.
func (h *generationHub) listen(ctx context.Context, cfg *pgx.ConnConfig, log *slog.Logger) {
	cfg = cfg.Copy()
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = listenerAppName
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := h.listenOnce(ctx, cfg)
		if ctx.Err() != nil {
			return
		}
		log.Warn("generation listener lost its connection; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (h *generationHub) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return err
	}
	// Changes made before LISTEN took effect are seen here.
	if err := h.poll(ctx, conn); err != nil {
		return err
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, h.interval)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || (err != nil && wctx.Err() != nil):
			// Quiet for a while: the connection is still usable after a
			// timed-out wait; check the generation directly.
			if err := h.poll(ctx, conn); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		}
		s, g, ok := strings.Cut(n.Payload, " ")
		if !ok || s != schema {
			continue
		}
		if gen, err := strconv.ParseInt(g, 10, 64); err == nil {
			h.observe(gen)
		}
	}
}

func (h *generationHub) poll(ctx context.Context, conn *pgx.Conn) error {
	var gen int64
	if err := conn.QueryRow(ctx, `SELECT generation FROM cluster`).Scan(&gen); err != nil {
		return err
	}
	h.observe(gen)
	return nil
}
