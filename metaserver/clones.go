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

// Writable clones. A clone of snapshot S of volume P is a new volume of S's
// size and P's layout whose every member chunk is created on the
// chunkserver of the matching member of P, as a clone of S of that chunk
// (chunks.base_chunk, base_snapshot): it reads the blocks it has not
// written from there, so it is made at once and takes space only as it is
// written. Its placement is P's; a member of it that is rebuilt elsewhere
// (a replacement, a drain) becomes a full copy. P, and S, cannot be deleted
// while a clone reads them.

func (s *Server) cloneVolume(w http.ResponseWriter, r *http.Request) {
	var req api.CloneVolumeRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateVolumeName(req.Name); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !api.ValidSnapshotName(req.Snapshot) {
		s.writeError(w, r, invalid("snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", req.Snapshot))
		return
	}
	if req.Host != "" && !serverNameRE.MatchString(req.Host) {
		s.writeError(w, r, invalid("invalid host name %q (chunkraid host list shows the registered hosts)", req.Host))
		return
	}
	parent := chi.URLParam(r, "name")
	v, err := s.st.cloneVolume(r.Context(), parent, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume cloned", "name", v.Name, "parent", parent, "snapshot", req.Snapshot, "size", v.SizeBytes, "host", v.Host)
	s.writeJSON(w, http.StatusCreated, v)
}

func (st *store) cloneVolume(ctx context.Context, parent string, req api.CloneVolumeRequest) (*api.Volume, error) {
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, chunkSize int64) error {
		var (
			pid                  int64
			layout, bitmap       string
			stripe, snapSize     int64
			state                string
			parentSize, setCount int64
		)
		err := tx.QueryRow(ctx, `
			SELECT id, layout, stripe_unit, bitmap, size_bytes FROM volumes WHERE name = $1 FOR UPDATE`, parent).
			Scan(&pid, &layout, &stripe, &bitmap, &parentSize)
		if err != nil {
			return notFound(err, "volume %q does not exist", parent)
		}
		err = tx.QueryRow(ctx, `SELECT state, size_bytes FROM snapshots WHERE volume_id = $1 AND name = $2`, pid, req.Snapshot).
			Scan(&state, &snapSize)
		if err != nil {
			return notFound(err, "volume %q has no snapshot %q (chunkraid snapshot list %s)", parent, req.Snapshot, parent)
		}
		if state != api.SnapshotReady {
			return api.Errorf(api.CodeConflict, "snapshot %q of volume %q is %s: only a ready snapshot can be cloned", req.Snapshot, parent, state)
		}
		l, err := api.ParseLayout(layout)
		if err != nil {
			return err
		}
		setSize := int64(l.DataChunks()) * chunkSize
		setCount = (snapSize + setSize - 1) / setSize
		// Every member the clone reads must be there and hold the snapshot:
		// in sync, on an online chunkserver that is not being drained.
		rows, err := tx.Query(ctx, `
			SELECT c.id::text, c.chunkserver_id, c.disk_id, c.set_idx, c.member_idx, c.size_bytes, c.member_state,
			       c.replaces IS NOT NULL, c.failed_reason IS NOT NULL, cs.name, cs.draining,
			       cs.last_heartbeat > now() - make_interval(secs => $3)
			FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id
			WHERE c.volume_id = $1 AND c.set_idx < $2 AND c.state = 'active'
			ORDER BY c.set_idx, c.member_idx`, pid, setCount, st.offlineSecs())
		if err != nil {
			return fmt.Errorf("parent chunks: %w", err)
		}
		type member struct {
			chunk              string
			server, disk, size int64
			set, idx           int32
		}
		var members []member
		var why []string
		for rows.Next() {
			var (
				m                 member
				mstate, csName    string
				successor, failed bool
				draining, online  bool
			)
			if err := rows.Scan(&m.chunk, &m.server, &m.disk, &m.set, &m.idx, &m.size, &mstate, &successor, &failed, &csName, &draining, &online); err != nil {
				rows.Close()
				return fmt.Errorf("parent chunks: %w", err)
			}
			switch {
			case successor:
				why = append(why, fmt.Sprintf("set %d is moving a member off %s", m.set, csName))
			case failed:
				why = append(why, fmt.Sprintf("set %d member %d's chunk on %s failed", m.set, m.idx, csName))
			case mstate != api.MemberInSync:
				why = append(why, fmt.Sprintf("set %d member %d on %s is %s", m.set, m.idx, csName, mstate))
			case !online:
				why = append(why, fmt.Sprintf("chunkserver %s is offline", csName))
			case draining:
				why = append(why, fmt.Sprintf("chunkserver %s is being drained", csName))
			}
			members = append(members, m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("parent chunks: %w", err)
		}
		if len(why) > 0 {
			return api.Errorf(api.CodeConflict, "volume %q cannot be cloned now: %s; a clone is made on the chunkservers of the parent's in-sync members, so try again once they are",
				parent, strings.Join(why, "; "))
		}
		if int64(len(members)) != setCount*int64(l.Width()) {
			return api.Errorf(api.CodeConflict, "volume %q has %d member chunks in the %d sets snapshot %q holds, want %d",
				parent, len(members), setCount, req.Snapshot, setCount*int64(l.Width()))
		}
		cp, err := st.capacity(ctx, tx)
		if err != nil {
			return err
		}
		if need, avail := int64(len(members))*chunkSize, cp.provisionable(st.overcommit); need > avail {
			return api.Errorf(api.CodeUnsatisfiable, "a clone of %s provisions %s of raw space like a new volume (written, it takes up to that) but only %s more can be provisioned",
				parent+"@"+req.Snapshot, approxSize(need), approxSize(avail))
		}
		host, err := optionalHostID(ctx, tx, req.Host)
		if err != nil {
			return err
		}
		var id int64
		err = tx.QueryRow(ctx, `
			INSERT INTO volumes (name, size_bytes, layout, stripe_unit, bitmap, host_id, parent_volume_id, parent_snapshot)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING RETURNING id`,
			req.Name, snapSize, layout, stripe, bitmap, host, pid, req.Snapshot).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return api.Errorf(api.CodeAlreadyExists, "volume %q already exists: choose another name or delete it first", req.Name)
		}
		if err != nil {
			return fmt.Errorf("insert clone volume: %w", err)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO sets (volume_id, idx, size_bytes)
			SELECT $1, i, least($3::bigint, $4::bigint - i::bigint * $3::bigint) FROM generate_series(0, $2::int - 1) i`,
			id, setCount, setSize, snapSize); err != nil {
			return fmt.Errorf("insert clone sets: %w", err)
		}
		for _, m := range members {
			if _, err := tx.Exec(ctx, `
				INSERT INTO chunks (chunkserver_id, disk_id, volume_id, set_idx, member_idx, size_bytes, base_chunk, base_snapshot)
				VALUES ($1, $2, $3, $4, $5, $6, $7::uuid, $8)`,
				m.server, m.disk, id, m.set, m.idx, m.size, m.chunk, req.Snapshot); err != nil {
				return fmt.Errorf("insert clone chunks: %w", err)
			}
		}
		if out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: req.Name}); err != nil {
			return err
		}
		evs := []event{{Kind: api.EventVolumeCloned, Subject: "volume/" + req.Name, Volume: req.Name,
			Message: fmt.Sprintf("created as a writable clone of snapshot %s of volume %s: %s, %s, %d sets, sharing every block it has not written",
				req.Snapshot, parent, describeSize(snapSize), layout, setCount)}}
		if req.Host != "" {
			evs = append(evs, attachEvent(req.Name, req.Host, out.Epoch, "", false))
		}
		return addEvents(ctx, tx, evs...)
	})
	return out, err
}

// clonesOf names the clones of volume id (of its snapshot snap, or of any
// for ""), for the refusal of a delete they depend on.
func clonesOf(ctx context.Context, tx pgx.Tx, id int64, snap string) ([]string, error) {
	rows, err := tx.Query(ctx, `
		SELECT name FROM volumes WHERE parent_volume_id = $1 AND ($2 = '' OR parent_snapshot = $2) ORDER BY name`, id, snap)
	if err != nil {
		return nil, fmt.Errorf("clones: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (s *Server) flattenVolume(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	start := time.Now()
	v, err := s.flatten(r.Context(), name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume flattened", "name", name, "took", time.Since(start))
	s.writeJSON(w, http.StatusOK, v)
}

// flatten makes clone volume name an ordinary volume: every chunkserver
// copies into its clone chunks what they share with the parent's snapshot
// (side by side), then the metaserver forgets the link. A flatten that
// fails part way leaves the volume a clone; running it again goes on.
func (s *Server) flatten(ctx context.Context, name string) (*api.Volume, error) {
	var (
		id       int64
		epoch    int64
		parent   string
		snap     string
		byServer = map[string][]string{}
	)
	err := s.st.read(ctx, func(tx pgx.Tx) error {
		var p, sn *string
		err := tx.QueryRow(ctx, `
			SELECT v.id, v.epoch, pv.name, v.parent_snapshot FROM volumes v LEFT JOIN volumes pv ON pv.id = v.parent_volume_id
			WHERE v.name = $1`, name).Scan(&id, &epoch, &p, &sn)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		if p == nil {
			return api.Errorf(api.CodeConflict, "volume %q is not a clone: there is nothing to flatten", name)
		}
		parent, snap = *p, *sn
		rows, err := tx.Query(ctx, `
			SELECT c.id::text, cs.control_addr FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id
			WHERE c.volume_id = $1 AND c.state = 'active' AND c.base_chunk IS NOT NULL`, id)
		if err != nil {
			return fmt.Errorf("clone chunks: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var chunk, addr string
			if err := rows.Scan(&chunk, &addr); err != nil {
				return fmt.Errorf("clone chunks: %w", err)
			}
			byServer[addr] = append(byServer[addr], chunk)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, rollbackTimeout)
	defer cancel()
	err = s.perChunkserver(fctx, epoch, byServer, func(post func(path string, in any) error, chunks []api.ChunkPin) error {
		return postBatches(post, "/v1/snapshots/flatten", snap, chunks)
	})
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "flattening volume %q: %v; it is still a clone of %s@%s: run the flatten again", name, err, parent, snap)
	}
	var out *api.Volume
	err = s.st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		if _, err := tx.Exec(ctx, `UPDATE chunks SET base_chunk = NULL, base_snapshot = NULL WHERE volume_id = $1`, id); err != nil {
			return fmt.Errorf("flatten: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE volumes SET parent_volume_id = NULL, parent_snapshot = NULL WHERE id = $1`, id); err != nil {
			return fmt.Errorf("flatten: %w", err)
		}
		var err error
		if out, err = s.st.loadVolume(ctx, tx, volumeFilter{id: id, name: name}); err != nil {
			return err
		}
		return addEvents(ctx, tx, event{Kind: api.EventVolumeFlattened, Subject: "volume/" + name, Volume: name,
			Message: fmt.Sprintf("flattened in %s: no longer shares blocks with snapshot %s of volume %s", time.Since(start).Round(time.Millisecond), snap, parent)})
	})
	return out, err
}
