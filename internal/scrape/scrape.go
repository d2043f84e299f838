// Package scrape serves a daemon's Prometheus metrics to the holders of an
// operator token: the daemon asks the metaserver who a scraper's bearer
// token belongs to (GET /api/v1/whoami) and remembers the answer, so that a
// scrape costs the metaserver one request a minute per token, and scrapes
// go on while the metaserver is away, when metrics matter most.
package scrape

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Recheck is how long a token the metaserver accepted is taken without
// asking again.
const Recheck = time.Minute

// Verify asks whether token is an operator token. An error wrapping
// ErrRefused means the metaserver refused it; any other error means it
// could not be asked.
type Verify func(ctx context.Context, token string) error

// ErrRefused is wrapped by a Verify error when the token is not one.
var ErrRefused = errors.New("scrape: token refused")

// WithMetaserver is the Verify of a daemon that talks to the metaserver
// through c: the token must be an operator's (reader or admin).
func WithMetaserver(c *api.Client) Verify {
	return func(ctx context.Context, token string) error {
		p, err := c.As(token).Whoami(ctx)
		switch code := api.ErrorCode(err); {
		case code == api.CodeUnauthenticated || code == api.CodePermissionDenied:
			return errors.Join(ErrRefused, err)
		case err != nil:
			return err
		case p.Role != api.RoleReader && p.Role != api.RoleAdmin:
			return errors.Join(ErrRefused, errors.New("not an operator token (role "+p.Role+")"))
		}
		return nil
	}
}

// Handler serves reg's exposition to requests with a bearer token verify
// accepts: 401 without one or with a refused one. A token accepted before
// is accepted again for Recheck without asking; after that it is asked
// again, and while verify cannot answer the token stays accepted.
func Handler(reg *prometheus.Registry, verify Verify, log *slog.Logger) http.Handler {
	h := &handler{next: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), verify: verify, log: log,
		known: map[[32]byte]time.Time{}}
	return h
}

type handler struct {
	next   http.Handler
	verify Verify
	log    *slog.Logger
	mu     sync.Mutex
	known  map[[32]byte]time.Time // hash of a token → when the metaserver last accepted it
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		http.Error(w, "a bearer token is required: an operator token of the cluster (chunkraid token create --role reader)", http.StatusUnauthorized)
		return
	}
	key := sha256.Sum256([]byte(token))
	h.mu.Lock()
	last, seen := h.known[key]
	h.mu.Unlock()
	if !seen || time.Since(last) >= Recheck {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		err := h.verify(ctx, token)
		cancel()
		switch {
		case errors.Is(err, ErrRefused):
			h.mu.Lock()
			delete(h.known, key)
			h.mu.Unlock()
			http.Error(w, "the metaserver does not know this token as an operator's", http.StatusUnauthorized)
			return
		case err != nil && !seen:
			h.log.Warn("metrics: cannot check a scraper's token with the metaserver", "err", err)
			http.Error(w, "cannot check the token with the metaserver", http.StatusServiceUnavailable)
			return
		case err != nil:
			// Known, and the metaserver is away: still accepted.
		default:
			h.mu.Lock()
			h.known[key] = time.Now()
			h.mu.Unlock()
		}
	}
	h.next.ServeHTTP(w, r)
}
