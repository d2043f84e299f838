package metaserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Detach and rollback. A detached volume has no host: its assignment is
// gone, so its host stops serving it. A rollback needs the volume detached
// (nothing may write it meanwhile): the metaserver moves the volume's
// epoch on, fences every member chunk at the new epoch (closing whatever
// connection an old host still holds) and has each member chunk roll back
// to the snapshot, one control call per chunkserver, side by side.

// controlHost names the metaserver's control calls (a rollback, a flatten) in the
// chunkservers' logs.
const controlHost = "metaserver"

// rollbackTimeout bounds the chunkservers' part of a rollback.
const rollbackTimeout = 10 * time.Minute

func (s *Server) detachVolume(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	host, err := s.st.detachVolume(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume detached", "name", name, "host", host)
	w.WriteHeader(http.StatusNoContent)
}

func (st *store) detachVolume(ctx context.Context, name string) (string, error) {
	var host string
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var h *string
		err := tx.QueryRow(ctx, `
			SELECT h.name FROM volumes v LEFT JOIN hosts h ON h.id = v.host_id WHERE v.name = $1 FOR UPDATE OF v`, name).Scan(&h)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		if h == nil {
			return api.Errorf(api.CodeConflict, "volume %q is not attached", name)
		}
		host = *h
		if _, err := tx.Exec(ctx, `UPDATE volumes SET host_id = NULL, clean_detach = false WHERE name = $1`, name); err != nil {
			return fmt.Errorf("detach volume: %w", err)
		}
		return addEvents(ctx, tx, event{Kind: api.EventVolumeDetached, Subject: "volume/" + name, Volume: name,
			Message: fmt.Sprintf("detached from host %s by an operator; no host serves it", host)})
	})
	return host, err
}

func (s *Server) rollbackVolume(w http.ResponseWriter, r *http.Request) {
	var req api.RollbackRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	name := chi.URLParam(r, "name")
	v, err := s.st.prepareRollback(r.Context(), name, req.Snapshot)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), rollbackTimeout)
	defer cancel()
	if err := s.rollbackChunks(ctx, v, req.Snapshot); err != nil {
		s.recordEvents(context.WithoutCancel(r.Context()), snapshotEvent(api.EventSnapshotFailed, name,
			fmt.Sprintf("rollback to snapshot %s failed: %v; the volume's chunks may differ: roll back again before attaching it", req.Snapshot, err)))
		s.writeError(w, r, api.Errorf(api.CodeInternal, "rolling volume %q back to snapshot %q: %v (roll back again before attaching it)", name, req.Snapshot, err))
		return
	}
	took := time.Since(start)
	s.recordEvents(r.Context(), snapshotEvent(api.EventVolumeRolledBack, name,
		fmt.Sprintf("rolled back to snapshot %s in %s at epoch %d", req.Snapshot, took.Round(time.Millisecond), v.Epoch)))
	s.log.Info("volume rolled back", "name", name, "snapshot", req.Snapshot, "epoch", v.Epoch, "took", took)
	w.WriteHeader(http.StatusNoContent)
}

// recordEvents records events outside a change of the cluster.
func (s *Server) recordEvents(ctx context.Context, evs ...event) {
	err := pgx.BeginTxFunc(ctx, s.st.db, pgx.TxOptions{}, func(tx pgx.Tx) error { return addEvents(ctx, tx, evs...) })
	if err != nil {
		s.log.Error("recording events", "err", err)
	}
}

// prepareRollback checks that volume name is detached and has snapshot
// snap ready, moves its epoch on and returns it, members included.
func (st *store) prepareRollback(ctx context.Context, name, snap string) (*api.Volume, error) {
	if !api.ValidSnapshotName(snap) {
		return nil, api.Errorf(api.CodeInvalidArgument, "snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", snap)
	}
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var (
			id   int64
			host *string
		)
		err := tx.QueryRow(ctx, `
			SELECT v.id, h.name FROM volumes v LEFT JOIN hosts h ON h.id = v.host_id WHERE v.name = $1 FOR UPDATE OF v`, name).Scan(&id, &host)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		if host != nil {
			return api.Errorf(api.CodeConflict, "volume %q is attached to host %s: detach it first (chunkraid volume detach %s); a rollback rewrites what its host serves",
				name, *host, name)
		}
		var state string
		err = tx.QueryRow(ctx, `SELECT state FROM snapshots WHERE volume_id = $1 AND name = $2`, id, snap).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && state != api.SnapshotReady {
			return api.Errorf(api.CodeNotFound, "volume %q has no snapshot %q ready (chunkraid snapshot list %s)", name, snap, name)
		}
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE volumes SET epoch = epoch + 1, clean_detach = false WHERE id = $1`, id); err != nil {
			return fmt.Errorf("rollback: %w", err)
		}
		out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name})
		return err
	})
	return out, err
}

// rollbackChunks fences every member chunk of v at its epoch, then rolls
// them back to snapshot snap, one call per chunkserver, side by side.
func (s *Server) rollbackChunks(ctx context.Context, v *api.Volume, snap string) error {
	// The chunkservers' control API (package chunkserver/control, which
	// the metaserver does not import), over TLS to their certificates of
	// the cluster CA.
	byServer := map[string][]string{}
	for _, set := range v.Sets {
		for _, m := range set.Members {
			byServer[m.ControlAddr] = append(byServer[m.ControlAddr], m.ChunkID)
		}
	}
	return s.perChunkserver(ctx, v.Epoch, byServer, func(post func(path string, in any) error, chunks []api.ChunkPin) error {
		for _, ch := range chunks {
			if err := post("/v1/chunks/"+url.PathEscape(ch.Chunk)+"/fence", ch.ControlRequest); err != nil {
				return fmt.Errorf("fencing chunk %s: %w", ch.Chunk, err)
			}
		}
		return postBatches(post, "/v1/snapshots/rollback", snap, chunks)
	})
}

// perChunkserver runs do once per chunkserver control address of
// byServer, side by side, with a poster to that chunkserver's control API
// and its chunks with credentials at epoch (host controlHost).
func (s *Server) perChunkserver(ctx context.Context, epoch int64, byServer map[string][]string,
	do func(post func(path string, in any) error, chunks []api.ChunkPin) error) error {
	tc, err := pki.ClientConfig(s.st.caCert, pki.Chunkserver)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	defer hc.CloseIdleConnections()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for addr, ids := range byServer {
		chunks := make([]api.ChunkPin, len(ids))
		for i, id := range ids {
			chunks[i] = api.ChunkPin{Chunk: id, ControlRequest: api.ControlRequest{Host: controlHost, Epoch: epoch,
				Token: api.ExportToken(s.st.secret, id, controlHost, epoch)}}
		}
		post := func(path string, in any) error {
			return api.DoJSON(ctx, hc, "https://"+addr+path, http.MethodPost, nil, in, nil, 1<<20)
		}
		wg.Go(func() {
			if err := do(post, chunks); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("chunkserver %s: %w", addr, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// postBatches posts chunks to path as SnapshotRequests of snapshot snap,
// at most api.MaxPins chunks each.
func postBatches(post func(path string, in any) error, path, snap string, chunks []api.ChunkPin) error {
	for len(chunks) > 0 {
		n := min(len(chunks), api.MaxPins)
		if err := post(path, api.SnapshotRequest{Name: snap, Chunks: chunks[:n]}); err != nil {
			return err
		}
		chunks = chunks[n:]
	}
	return nil
}
