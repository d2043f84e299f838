package metaserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Snapshots of volumes. An operator's request records a pending snapshot
// and moves the generation, so the volume's host sees it in its long poll;
// the host holds the volume's commands, has every member chunk record the
// snapshot and reports (POST /hosts/{id}/snapshots); the request answers
// once the snapshot is ready, or after api.SnapshotTimeout with it still
// pending. A delete goes the same way through the state deleting. Both
// need the volume attached: its host does the work.

// snapshotPoll is how often a request waiting for the host reads the
// snapshot's state.
const snapshotPoll = 20 * time.Millisecond

func snapshotEvent(kind, volume, msg string) event {
	return event{Kind: kind, Subject: "volume/" + volume, Volume: volume, Message: msg}
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSnapshotRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !api.ValidSnapshotName(req.Name) {
		s.writeError(w, r, invalid("snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name))
		return
	}
	volume := chi.URLParam(r, "name")
	if err := s.st.requestSnapshot(r.Context(), volume, req.Name); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("snapshot requested", "volume", volume, "name", req.Name)
	snap, err := s.st.awaitSnapshot(r.Context(), volume, req.Name, func(sn *api.Snapshot) bool {
		return sn != nil && sn.State == api.SnapshotReady
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusCreated, snap)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	v, err := s.st.getVolume(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, v.Snapshots)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	volume, name := chi.URLParam(r, "name"), chi.URLParam(r, "snapshot")
	if err := s.st.requestSnapshotDelete(r.Context(), volume, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("snapshot delete requested", "volume", volume, "name", name)
	if _, err := s.st.awaitSnapshot(r.Context(), volume, name, func(sn *api.Snapshot) bool { return sn == nil }); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) hostSnapshotReport(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("host", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var rep api.SnapshotReport
	if err := decode(w, r, &rep); err != nil {
		s.writeError(w, r, err)
		return
	}
	if rep.Op != api.SnapshotOpCreate && rep.Op != api.SnapshotOpDelete || !api.ValidSnapshotName(rep.Name) {
		s.writeError(w, r, invalid("snapshot report: op %q (create or delete) and name %q", rep.Op, rep.Name))
		return
	}
	if err := s.st.snapshotReport(r.Context(), id, rep); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// attachedVolume locks volume name and returns its id, refusing one that
// is not attached (its host does the work). Mirror and EC volumes alike:
// every member chunk of a set records the snapshot at the same point, so
// an EC set's snapshot layers hold consistent stripes.
func attachedVolume(ctx context.Context, tx pgx.Tx, name, what string) (int64, error) {
	var (
		id   int64
		host *int64
	)
	err := tx.QueryRow(ctx, `SELECT id, host_id FROM volumes WHERE name = $1 FOR UPDATE`, name).Scan(&id, &host)
	if err != nil {
		return 0, notFound(err, "volume %q does not exist", name)
	}
	if host == nil {
		return 0, api.Errorf(api.CodeConflict, "volume %q is not attached: its host %s, so attach it first (chunkraid volume attach)", name, what)
	}
	return id, nil
}

// requestSnapshot records snapshot name of volume as pending.
func (st *store) requestSnapshot(ctx context.Context, volume, name string) error {
	return st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		id, err := attachedVolume(ctx, tx, volume, "takes the snapshot")
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO snapshots (volume_id, name, size_bytes) SELECT $1, $2, size_bytes FROM volumes WHERE id = $1
			ON CONFLICT DO NOTHING`, id, name)
		if err != nil {
			return fmt.Errorf("insert snapshot: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return api.Errorf(api.CodeAlreadyExists, "volume %q has a snapshot %q: choose another name or delete it first", volume, name)
		}
		return nil
	})
}

// requestSnapshotDelete marks snapshot name of volume deleting.
func (st *store) requestSnapshotDelete(ctx context.Context, volume, name string) error {
	return st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		id, err := attachedVolume(ctx, tx, volume, "deletes it from the chunks")
		if err != nil {
			return err
		}
		var host *string
		err = tx.QueryRow(ctx, `
			SELECT h.name FROM snapshots s LEFT JOIN hosts h ON h.id = s.host_id
			WHERE s.volume_id = $1 AND s.name = $2`, id, name).Scan(&host)
		if err != nil {
			return notFound(err, "volume %q has no snapshot %q (chunkraid snapshot list %s)", volume, name, volume)
		}
		if host != nil {
			return api.Errorf(api.CodeConflict, "snapshot %q of volume %q is attached to host %s: chunkraid snapshot detach %s %s first",
				name, volume, *host, volume, name)
		}
		clones, err := clonesOf(ctx, tx, id, name)
		if err != nil {
			return err
		}
		if len(clones) > 0 {
			return api.Errorf(api.CodeConflict, "snapshot %q of volume %q is the base of the clone(s) %s, which read the blocks they have not written from it: delete them first",
				name, volume, strings.Join(clones, ", "))
		}
		if _, err := tx.Exec(ctx, `UPDATE snapshots SET state = 'deleting' WHERE volume_id = $1 AND name = $2`, id, name); err != nil {
			return fmt.Errorf("delete snapshot: %w", err)
		}
		return nil
	})
}

// awaitSnapshot waits until done holds for snapshot name of volume (nil
// when it is gone), for at most api.SnapshotTimeout.
func (st *store) awaitSnapshot(ctx context.Context, volume, name string, done func(*api.Snapshot) bool) (*api.Snapshot, error) {
	deadline := time.Now().Add(api.SnapshotTimeout)
	for {
		var snap *api.Snapshot
		err := st.read(ctx, func(tx pgx.Tx) error {
			var sn api.Snapshot
			err := tx.QueryRow(ctx, `
				SELECT s.name, v.name, s.state, s.created_at, s.pause_us, s.size_bytes FROM snapshots s JOIN volumes v ON v.id = s.volume_id
				WHERE v.name = $1 AND s.name = $2`, volume, name).Scan(&sn.Name, &sn.Volume, &sn.State, &sn.CreatedAt, &sn.PauseMicros, &sn.SizeBytes)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read snapshot: %w", err)
			}
			snap = &sn
			return nil
		})
		if err != nil {
			return nil, err
		}
		if done(snap) {
			return snap, nil
		}
		if snap == nil {
			return nil, api.Errorf(api.CodeInternal, "snapshot %q of volume %q failed on its host (chunkraid events --volume %s says why)", name, volume, volume)
		}
		if time.Now().After(deadline) {
			return nil, api.Errorf(api.CodeUnavailable, "the host of volume %q has not finished with snapshot %q in %s: it is %s; chunkraid snapshot list %s shows when it is done",
				volume, name, api.SnapshotTimeout, snap.State, volume)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(snapshotPoll):
		}
	}
}

// snapshotReport applies what host id did with a snapshot of a volume it
// serves: a taken one is ready, a deleted one gone; a failed take drops the
// pending snapshot, a failed delete leaves it deleting for the host to try
// again. Reports about volumes the host does not hold are refused.
func (st *store) snapshotReport(ctx context.Context, hostID int64, rep api.SnapshotReport) error {
	return st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var id, epoch int64
		var host *int64
		err := tx.QueryRow(ctx, `SELECT id, epoch, host_id FROM volumes WHERE name = $1 FOR UPDATE`, rep.Volume).Scan(&id, &epoch, &host)
		if err != nil {
			return notFound(err, "volume %q does not exist", rep.Volume)
		}
		if host == nil || *host != hostID || epoch != rep.Epoch {
			return api.Errorf(api.CodeConflict, "volume %q at epoch %d is not this host's: stop serving it", rep.Volume, rep.Epoch)
		}
		var ev event
		switch {
		case rep.Op == api.SnapshotOpCreate && rep.Error == "":
			_, err = tx.Exec(ctx, `UPDATE snapshots SET state = 'ready', pause_us = $3 WHERE volume_id = $1 AND name = $2 AND state = 'pending'`,
				id, rep.Name, rep.PauseMicros)
			ev = snapshotEvent(api.EventSnapshotCreated, rep.Volume, fmt.Sprintf("snapshot %s taken; the volume's commands were held %s",
				rep.Name, time.Duration(rep.PauseMicros)*time.Microsecond))
		case rep.Op == api.SnapshotOpCreate:
			_, err = tx.Exec(ctx, `DELETE FROM snapshots WHERE volume_id = $1 AND name = $2 AND state = 'pending'`, id, rep.Name)
			ev = snapshotEvent(api.EventSnapshotFailed, rep.Volume, fmt.Sprintf("snapshot %s not taken: %s", rep.Name, rep.Error))
		case rep.Error == "":
			_, err = tx.Exec(ctx, `DELETE FROM snapshots WHERE volume_id = $1 AND name = $2 AND state = 'deleting'`, id, rep.Name)
			ev = snapshotEvent(api.EventSnapshotDeleted, rep.Volume, fmt.Sprintf("snapshot %s deleted", rep.Name))
		default:
			ev = snapshotEvent(api.EventSnapshotFailed, rep.Volume, fmt.Sprintf("snapshot %s not deleted yet: %s", rep.Name, rep.Error))
		}
		if err != nil {
			return fmt.Errorf("snapshot report: %w", err)
		}
		return addEvents(ctx, tx, ev)
	})
}

// loadSnapshots fills in the snapshots of the volumes byID holds.
func loadSnapshots(ctx context.Context, q querier, ids []int64, byID map[int64]*api.Volume) error {
	rows, err := q.Query(ctx, `
		SELECT s.volume_id, s.name, s.state, s.created_at, s.pause_us, s.size_bytes, coalesce(h.name, '')
		FROM snapshots s LEFT JOIN hosts h ON h.id = s.host_id WHERE s.volume_id = ANY($1)
		ORDER BY s.volume_id, s.created_at, s.name`, ids)
	if err != nil {
		return fmt.Errorf("load snapshots: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			vid int64
			sn  api.Snapshot
		)
		if err := rows.Scan(&vid, &sn.Name, &sn.State, &sn.CreatedAt, &sn.PauseMicros, &sn.SizeBytes, &sn.Host); err != nil {
			return fmt.Errorf("load snapshots: %w", err)
		}
		v := byID[vid]
		sn.Volume = v.Name
		if sn.Host != "" {
			sn.IQN = api.SnapshotIQN(v.Name, sn.Name)
		}
		v.Snapshots = append(v.Snapshots, sn)
	}
	return rows.Err()
}

func (s *Server) attachSnapshot(w http.ResponseWriter, r *http.Request) {
	var req api.AttachSnapshotRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Host == "" {
		s.writeError(w, r, invalid("host is required: the host that serves the snapshot read-only (chunkraid host list shows them)"))
		return
	}
	volume, name := chi.URLParam(r, "name"), chi.URLParam(r, "snapshot")
	snap, err := s.st.attachSnapshot(r.Context(), volume, name, req.Host)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("snapshot attached", "volume", volume, "name", name, "host", req.Host, "iqn", snap.IQN)
	s.writeJSON(w, http.StatusOK, snap)
}

func (s *Server) detachSnapshot(w http.ResponseWriter, r *http.Request) {
	volume, name := chi.URLParam(r, "name"), chi.URLParam(r, "snapshot")
	host, err := s.st.detachSnapshot(r.Context(), volume, name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("snapshot detached", "volume", volume, "name", name, "host", host)
	w.WriteHeader(http.StatusNoContent)
}

// lockSnapshot locks volume's row and returns its id and its snapshot
// name's state and host ("" when not attached).
func lockSnapshot(ctx context.Context, tx pgx.Tx, volume, name string) (id int64, state, host string, err error) {
	if err := tx.QueryRow(ctx, `SELECT id FROM volumes WHERE name = $1 FOR UPDATE`, volume).Scan(&id); err != nil {
		return 0, "", "", notFound(err, "volume %q does not exist", volume)
	}
	err = tx.QueryRow(ctx, `
		SELECT s.state, coalesce(h.name, '') FROM snapshots s LEFT JOIN hosts h ON h.id = s.host_id
		WHERE s.volume_id = $1 AND s.name = $2`, id, name).Scan(&state, &host)
	if err != nil {
		return 0, "", "", notFound(err, "volume %q has no snapshot %q (chunkraid snapshot list %s)", volume, name, volume)
	}
	return id, state, host, nil
}

// attachSnapshot has host serve snapshot name of volume read-only. The
// volume itself may be attached anywhere or not at all: the host reads the
// snapshot from the member chunks. Attaching it again moves it.
func (st *store) attachSnapshot(ctx context.Context, volume, name, host string) (*api.Snapshot, error) {
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		id, state, prev, err := lockSnapshot(ctx, tx, volume, name)
		if err != nil {
			return err
		}
		if state != api.SnapshotReady {
			return api.Errorf(api.CodeConflict, "snapshot %q of volume %q is %s: only a ready snapshot can be attached", name, volume, state)
		}
		hid, err := hostID(ctx, tx, host)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT name FROM snapshots WHERE volume_id = $1 AND host_id IS NOT NULL AND name <> $2`, id, name)
		if err != nil {
			return fmt.Errorf("attached snapshots: %w", err)
		}
		others, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("attached snapshots: %w", err)
		}
		iqn := api.SnapshotIQN(volume, name)
		for _, o := range others {
			if api.SnapshotIQN(volume, o) == iqn {
				return api.Errorf(api.CodeConflict, "snapshot %q of volume %q is attached as %s, the iSCSI name snapshot %q would have: detach it first",
					o, volume, iqn, name)
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE snapshots SET host_id = $3 WHERE volume_id = $1 AND name = $2`, id, name, hid); err != nil {
			return fmt.Errorf("attach snapshot: %w", err)
		}
		msg := fmt.Sprintf("snapshot %s served read-only by host %s as %s", name, host, iqn)
		if prev != "" && prev != host {
			msg += " (moved from host " + prev + ")"
		}
		return addEvents(ctx, tx, snapshotEvent(api.EventSnapshotAttached, volume, msg))
	})
	if err != nil {
		return nil, err
	}
	v, err := st.getVolume(ctx, volume)
	if err != nil {
		return nil, err
	}
	for _, sn := range v.Snapshots {
		if sn.Name == name {
			return &sn, nil
		}
	}
	return nil, api.Errorf(api.CodeNotFound, "volume %q has no snapshot %q (chunkraid snapshot list %s)", volume, name, volume)
}

// detachSnapshot stops serving snapshot name of volume; it returns the
// host that served it.
func (st *store) detachSnapshot(ctx context.Context, volume, name string) (string, error) {
	var host string
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		id, _, h, err := lockSnapshot(ctx, tx, volume, name)
		if err != nil {
			return err
		}
		if h == "" {
			return api.Errorf(api.CodeConflict, "snapshot %q of volume %q is not attached", name, volume)
		}
		host = h
		if _, err := tx.Exec(ctx, `UPDATE snapshots SET host_id = NULL WHERE volume_id = $1 AND name = $2`, id, name); err != nil {
			return fmt.Errorf("detach snapshot: %w", err)
		}
		return addEvents(ctx, tx, snapshotEvent(api.EventSnapshotDetached, volume, fmt.Sprintf("snapshot %s no longer served by host %s", name, h)))
	})
	return host, err
}

// snapshotTargets returns the snapshots host id (named hostName) serves,
// each with the sets that hold its bytes and read-only export names of
// the snapshot for that host.
func (st *store) snapshotTargets(ctx context.Context, tx pgx.Tx, id int64, hostName string) ([]api.SnapshotTarget, error) {
	rows, err := tx.Query(ctx, `
		SELECT v.name, s.name, s.size_bytes FROM snapshots s JOIN volumes v ON v.id = s.volume_id
		WHERE s.host_id = $1 ORDER BY v.name, s.name`, id)
	if err != nil {
		return nil, fmt.Errorf("snapshot targets: %w", err)
	}
	type attached struct {
		volume, snap string
		size         int64
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (attached, error) {
		var a attached
		return a, row.Scan(&a.volume, &a.snap, &a.size)
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot targets: %w", err)
	}
	out := []api.SnapshotTarget{}
	for _, a := range list {
		v, err := st.loadVolume(ctx, tx, volumeFilter{name: a.volume, secrets: true, readOnly: true, snapshot: a.snap, exportHost: hostName})
		if err != nil {
			return nil, err
		}
		t := api.SnapshotTarget{Volume: a.volume, Snapshot: a.snap, IQN: api.SnapshotIQN(a.volume, a.snap),
			SizeBytes: a.size, Layout: v.Layout, StripeUnit: v.StripeUnit, Auth: v.Auth, Sets: []api.Set{}}
		if members := countMembers(v.Sets); members > 0 {
			t.ChunkBytes = v.RawBytes / int64(members)
		}
		var start int64
		for _, set := range v.Sets {
			if start >= a.size {
				break
			}
			t.Sets = append(t.Sets, set)
			start += set.SizeBytes
		}
		out = append(out, t)
	}
	return out, nil
}

func countMembers(sets []api.Set) int {
	n := 0
	for _, s := range sets {
		n += len(s.Members)
	}
	return n
}

// hostSnapshotExports answers a host with the volume it serves and
// read-only export names of a ready snapshot of its members, named for the
// host: a rebuild copies the snapshot onto the new member.
func (s *Server) hostSnapshotExports(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("host", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req api.HostSnapshotExportsRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.st.hostSnapshotExports(r.Context(), id, req.Volume, req.Snapshot)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, v)
}

func (st *store) hostSnapshotExports(ctx context.Context, hostID int64, volume, snap string) (*api.Volume, error) {
	var out *api.Volume
	err := st.read(ctx, func(tx pgx.Tx) error {
		var host string
		err := tx.QueryRow(ctx, `
			SELECT h.name FROM volumes v JOIN hosts h ON h.id = v.host_id
			WHERE v.name = $1 AND v.host_id = $2`, volume, hostID).Scan(&host)
		if err != nil {
			return notFound(err, "volume %q is not attached to this host", volume)
		}
		if out, err = st.loadVolume(ctx, tx, volumeFilter{name: volume, readOnly: true, snapshot: snap, exportHost: host}); err != nil {
			return err
		}
		for _, sn := range out.Snapshots {
			if sn.Name == snap && sn.State == api.SnapshotReady {
				return nil
			}
		}
		return api.Errorf(api.CodeNotFound, "volume %q has no snapshot %q ready", volume, snap)
	})
	return out, err
}
