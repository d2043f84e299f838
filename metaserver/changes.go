package metaserver

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// changesPoll is how often a waiting GET /api/v1/changes looks again.
const changesPoll = 250 * time.Millisecond

// changes answers the cluster's change version: at once when it differs
// from ?after= (or without ?wait=), otherwise when it changes or the wait
// passes. The version moves with every change of placement or assignment
// (the cluster generation) and every event (member states, resyncs,
// servers): a page long-polls it and reads the cluster again only when it
// moved. Waiting polls count against the caller's long polls.
func (s *Server) changes(w http.ResponseWriter, r *http.Request) {
	after, wait, err := parsePoll(r.URL.Query().Get("after"), r.URL.Query().Get("wait"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.st.changeVersion(r.Context())
	if err == nil && wait > 0 && v == after {
		var release func()
		if release, err = s.polls.enter(callerName(r), s.cfg.MaxLongPolls); err == nil {
			v, err = s.waitChange(r.Context(), after, wait)
			release()
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, api.Changes{Version: v})
}

// waitChange looks at the version every changesPoll until it is not after
// or wait passed.
func (s *Server) waitChange(ctx context.Context, after int64, wait time.Duration) (int64, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(changesPoll)
	defer tick.Stop()
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.stopping:
			return after, nil
		case <-deadline.C:
			return after, nil
		case <-tick.C:
		}
		v, err := s.st.changeVersion(ctx)
		if err != nil || v != after {
			return v, err
		}
	}
}

// changeVersion is the cluster generation plus the newest event's id: both
// only grow, so their sum moves whenever either does.
func (st *store) changeVersion(ctx context.Context) (int64, error) {
	var v int64
	err := st.read(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT (SELECT generation FROM cluster) + coalesce((SELECT max(id) FROM events), 0)`).Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("change version: %w", err)
	}
	return v, nil
}
