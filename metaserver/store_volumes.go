package metaserver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// volumeFilter selects the volumes loadVolumes returns; the zero value
// selects all of them.
type volumeFilter struct {
	id     int64
	name   string
	hostID int64
	// secrets fills in the CHAP secrets and the members' export names.
	// Only the answer to the host a volume is attached to (hostVolumes)
	// may carry them.
	secrets bool
	// readOnly fills in read-only export names of the members at the
	// volume's epoch (readExports, for volume verify); of snapshot
	// snapshot of them when it is set.
	readOnly bool
	snapshot string
	// exportHost names the reader in read-only export names (default
	// readOnlyExportHost).
	exportHost string
}

// loadVolumes returns the volumes that match f, ordered by name, complete
// with sets, members, member states, the export names of the volume's host
// at its epoch and the access control (with secrets only if f.secrets).
func (st *store) loadVolumes(ctx context.Context, q querier, f volumeFilter) ([]api.Volume, error) {
	rows, err := q.Query(ctx, `
		SELECT v.id, v.name, v.size_bytes, v.layout, v.stripe_unit, v.bitmap, coalesce(h.name, ''), v.epoch,
		       v.clean_detach, v.created_at, v.chap_user, v.mutual_user, v.allowed_initiators,
		       CASE WHEN $4 THEN v.chap_secret END, CASE WHEN $4 THEN v.mutual_secret END, v.qos,
		       coalesce(pv.name || '@' || v.parent_snapshot, '')
		FROM volumes v LEFT JOIN hosts h ON h.id = v.host_id LEFT JOIN volumes pv ON pv.id = v.parent_volume_id
		WHERE ($1::bigint = 0 OR v.id = $1)
		  AND ($2::text = '' OR v.name = $2)
		  AND ($3::bigint = 0 OR v.host_id = $3)
		ORDER BY v.name`, f.id, f.name, f.hostID, f.secrets)
	if err != nil {
		return nil, fmt.Errorf("load volumes: %w", err)
	}
	var ids []int64
	vols, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Volume, error) {
		var (
			v                     api.Volume
			id                    int64
			chapSealed, mutSealed []byte
		)
		err := row.Scan(&id, &v.Name, &v.SizeBytes, &v.Layout, &v.StripeUnit, &v.Bitmap, &v.Host, &v.Epoch,
			&v.CleanDetach, &v.CreatedAt, &v.Auth.CHAPUser, &v.Auth.MutualUser, &v.Auth.AllowedInitiators,
			&chapSealed, &mutSealed, &v.QoS, &v.CloneOf)
		if err != nil {
			return v, err
		}
		v.IQN = api.IQNPrefix + v.Name
		v.Sets = []api.Set{}
		v.Snapshots = []api.Snapshot{}
		if v.Auth.AllowedInitiators == nil {
			v.Auth.AllowedInitiators = []string{}
		}
		ids = append(ids, id)
		if f.secrets {
			if v.Auth.CHAPSecret, err = st.openSecret(v.Name, colCHAPSecret, chapSealed); err != nil {
				return v, err
			}
			if v.Auth.MutualSecret, err = st.openSecret(v.Name, colMutualSecret, mutSealed); err != nil {
				return v, err
			}
		}
		return v, nil
	})
	if err != nil {
		return nil, fmt.Errorf("load volumes: %w", err)
	}
	if len(vols) == 0 {
		return []api.Volume{}, nil
	}
	byID := make(map[int64]*api.Volume, len(vols))
	for i, id := range ids {
		byID[id] = &vols[i]
	}
	if err := loadSnapshots(ctx, q, ids, byID); err != nil {
		return nil, err
	}
	rows, err = q.Query(ctx, `
		SELECT s.volume_id, s.idx, s.size_bytes, s.dirty_bytes, s.reconciling, s.reconcile_done_bytes, s.reconcile_total_bytes, s.full_resync,
		       c.id::text, cs.name, cs.addr, cs.control_addr, c.member_state, c.member_state_since,
		       c.resync_done_bytes, c.resync_total_bytes, c.member_error, c.size_bytes, c.failed_reason, c.member_state_gen,
		       c.rebuild_watermark, coalesce(c.replaces::text, '')
		FROM sets s
		LEFT JOIN chunks c ON c.volume_id = s.volume_id AND c.set_idx = s.idx
		LEFT JOIN chunkservers cs ON cs.id = c.chunkserver_id
		WHERE s.volume_id = ANY($1)
		ORDER BY s.volume_id, s.idx, c.member_idx`, ids)
	if err != nil {
		return nil, fmt.Errorf("load sets: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			volumeID    int64
			idx         int
			size, dirty int64
			reconciling bool
			fullResync  bool
			recDone     int64
			recTotal    int64
			// The member columns are NULL for a set without members.
			chunk, server, addr, control, state, errMsg, failed *string
			since                                               *time.Time
			done, total, chunkSize, stateGen, watermark         *int64
			replaces                                            *string
		)
		if err := rows.Scan(&volumeID, &idx, &size, &dirty, &reconciling, &recDone, &recTotal, &fullResync, &chunk, &server, &addr, &control, &state, &since,
			&done, &total, &errMsg, &chunkSize, &failed, &stateGen, &watermark, &replaces); err != nil {
			return nil, fmt.Errorf("load sets: %w", err)
		}
		v := byID[volumeID]
		if n := len(v.Sets); n == 0 || v.Sets[n-1].Index != idx {
			s := api.Set{Index: idx, SizeBytes: size, DirtyBytes: dirty, Members: []api.Member{}, FullResync: fullResync}
			if reconciling {
				s.Reconciling, s.ReconcileDoneBytes, s.ReconcileTotalBytes = true, recDone, recTotal
			}
			v.Sets = append(v.Sets, s)
		}
		if chunk == nil {
			continue
		}
		v.RawBytes += *chunkSize
		m := api.Member{
			ChunkID: *chunk, Chunkserver: *server, Addr: *addr, ControlAddr: *control,
			State: *state, StateSince: *since, ResyncDoneBytes: *done, ResyncTotalBytes: *total, Error: *errMsg,
			StateGen: *stateGen, RebuildWatermark: *watermark,
		}
		if failed != nil {
			m.ChunkFailed = *failed
		}
		if replaces != nil {
			m.Replaces = *replaces
		}
		reader := f.exportHost
		if reader == "" {
			reader = readOnlyExportHost
		}
		switch {
		case f.readOnly && f.snapshot != "":
			m.Export = api.ExportName{
				Chunk: m.ChunkID, Host: reader, Epoch: v.Epoch, ReadOnly: true, Snapshot: f.snapshot,
				Token: api.SnapshotExportToken(st.secret, m.ChunkID, reader, v.Epoch, f.snapshot),
			}.String()
		case f.readOnly:
			m.Export = api.ExportName{
				Chunk: m.ChunkID, Host: reader, Epoch: v.Epoch, ReadOnly: true,
				Token: api.ReadOnlyExportToken(st.secret, m.ChunkID, reader, v.Epoch),
			}.String()
		case f.secrets && v.Host != "":
			m.Export = api.ExportName{
				Chunk: m.ChunkID, Host: v.Host, Epoch: v.Epoch,
				Token: api.ExportToken(st.secret, m.ChunkID, v.Host, v.Epoch),
			}.String()
		}
		s := &v.Sets[len(v.Sets)-1]
		s.Members = append(s.Members, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load sets: %w", err)
	}
	return vols, nil
}

// listVolumes lists every volume.
func (st *store) listVolumes(ctx context.Context) ([]api.Volume, error) {
	var out []api.Volume
	err := st.read(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = st.loadVolumes(ctx, tx, volumeFilter{})
		return err
	})
	return out, err
}

// getVolume returns one volume by name.
func (st *store) getVolume(ctx context.Context, name string) (*api.Volume, error) {
	var out *api.Volume
	err := st.read(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = st.loadVolume(ctx, tx, volumeFilter{name: name})
		return err
	})
	return out, err
}

// readOnlyExportHost is the host of the read-only export names: it names
// the connection in the chunkservers' logs.
const readOnlyExportHost = "verify"

// readExports returns volume name with read-only export names of its
// members, bound to its current epoch: a move of the volume (a new epoch,
// fenced) ends them.
func (st *store) readExports(ctx context.Context, name, snapshot string) (*api.Volume, error) {
	var out *api.Volume
	err := st.read(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = st.loadVolume(ctx, tx, volumeFilter{name: name, readOnly: true, snapshot: snapshot})
		return err
	})
	if err != nil || snapshot == "" {
		return out, err
	}
	for _, sn := range out.Snapshots {
		if sn.Name == snapshot && sn.State == api.SnapshotReady {
			return out, nil
		}
	}
	return nil, api.Errorf(api.CodeNotFound, "volume %q has no snapshot %q ready (chunkraid snapshot list %s)", name, snapshot, name)
}

// loadVolume returns the one volume f selects, or not_found.
func (st *store) loadVolume(ctx context.Context, q querier, f volumeFilter) (*api.Volume, error) {
	vols, err := st.loadVolumes(ctx, q, f)
	if err != nil {
		return nil, err
	}
	if len(vols) != 1 {
		return nil, api.Errorf(api.CodeNotFound, "volume %q does not exist", f.name)
	}
	return &vols[0], nil
}

// optionalHostID is hostID of name, or nil for "".
func optionalHostID(ctx context.Context, q querier, name string) (*int64, error) {
	if name == "" {
		return nil, nil
	}
	id, err := hostID(ctx, q, name)
	if err != nil {
		return nil, err
	}
	return &id, nil
}

// hostID returns the ID of host name, or not_found.
func hostID(ctx context.Context, q querier, name string) (int64, error) {
	var id int64
	if err := q.QueryRow(ctx, `SELECT id FROM hosts WHERE name = $1`, name).Scan(&id); err != nil {
		return 0, notFound(err, "host %q is not registered (chunkraid host list shows the registered hosts)", name)
	}
	return id, nil
}

// createVolume creates a volume, places its chunks and, with req.Host set,
// attaches it, all in one transaction. req.Bitmap is already validated.
//
// A set of layout l holds l.DataChunks() × chunk size bytes, so the volume
// gets ceil(size / that) sets of l.Width() chunks each.
func (st *store) createVolume(ctx context.Context, req api.CreateVolumeRequest, l api.Layout) (*api.Volume, error) {
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, chunkSize int64) error {
		if req.StripeUnit != 0 && chunkSize%req.StripeUnit != 0 {
			return invalid("stripe_unit %s does not divide the cluster's chunk size %s: choose a power of two that does", describeSize(req.StripeUnit), describeSize(chunkSize))
		}
		setSize := int64(l.DataChunks()) * chunkSize
		sets := setCount(req.SizeBytes, setSize)
		if sets > maxSets {
			return invalid("a volume of %s needs %d sets of %s: at most %d are allowed", describeSize(req.SizeBytes), sets, describeSize(setSize), maxSets)
		}
		cp, err := st.capacity(ctx, tx)
		if err != nil {
			return err
		}
		if need, avail := sets*int64(l.Width())*chunkSize, cp.provisionable(st.overcommit); need > avail {
			needS, availS := approxSize(need), approxSize(avail)
			if needS == availS {
				needS, availS = fmt.Sprintf("%d bytes", need), fmt.Sprintf("%d bytes", avail)
			}
			return api.Errorf(api.CodeUnsatisfiable,
				"volume %q needs %s of raw space (%d chunks of %s for %s of %s) but only %s more can be provisioned: "+
					"%s free on the online chunkservers × overcommit %g, less %s promised to existing chunks and not yet written; "+
					"add chunkservers, delete volumes, or start the metaserver with a higher --overcommit",
				req.Name, needS, sets*int64(l.Width()), describeSize(chunkSize), describeSize(req.SizeBytes), l.String(),
				availS, approxSize(cp.free), st.overcommit, approxSize(max(0, cp.provisioned-cp.allocated)))
		}
		host, err := optionalHostID(ctx, tx, req.Host)
		if err != nil {
			return err
		}
		var volumeID int64
		err = tx.QueryRow(ctx, `
			INSERT INTO volumes (name, size_bytes, layout, stripe_unit, bitmap, host_id, qos) VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (name) DO NOTHING RETURNING id`, req.Name, req.SizeBytes, l.String(), req.StripeUnit, req.Bitmap, host, req.QoS).Scan(&volumeID)
		if errors.Is(err, pgx.ErrNoRows) {
			return api.Errorf(api.CodeAlreadyExists, "volume %q already exists: choose another name or delete it first", req.Name)
		}
		if err != nil {
			return fmt.Errorf("insert volume: %w", err)
		}
		cands, err := st.candidates(ctx, tx)
		if err != nil {
			return err
		}
		plan, err := place(l, int(sets), chunkSize, cands)
		if err != nil {
			return err
		}
		if err := insertSets(ctx, tx, volumeID, 0, plan, chunkSize, setSize, req.SizeBytes); err != nil {
			return err
		}
		out, err = st.loadVolume(ctx, tx, volumeFilter{id: volumeID, name: req.Name})
		if err != nil {
			return err
		}
		evs := []event{{
			Kind: api.EventVolumeCreated, Subject: "volume/" + req.Name, Volume: req.Name,
			Message: createdMessage(req, l, sets, chunkSize),
		}}
		if req.Host != "" {
			evs = append(evs, attachEvent(req.Name, req.Host, out.Epoch, "", false))
		}
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// createdMessage describes a new volume for its volume_created event.
func createdMessage(req api.CreateVolumeRequest, l api.Layout, sets, chunkSize int64) string {
	lay := l.String()
	if req.StripeUnit != 0 {
		lay += fmt.Sprintf(" (stripe unit %s)", describeSize(req.StripeUnit))
	}
	chunks := sets * int64(l.Width())
	return fmt.Sprintf("created: %s, %s, %d sets of %d chunks, %s raw (%.1f %%), bitmap %s",
		describeSize(req.SizeBytes), lay, sets, l.Width(), describeSize(chunks*chunkSize),
		100*float64(req.SizeBytes)/float64(chunks*chunkSize), req.Bitmap)
}

// candidates loads the online chunkservers with their disks and the active
// chunks on each disk.
func (st *store) candidates(ctx context.Context, tx pgx.Tx) ([]candidate, error) {
	rows, err := tx.Query(ctx, `
		SELECT cs.id, cs.name, cs.fault_domain, d.id, d.free_bytes,
		       (SELECT count(*) FROM chunks c WHERE c.disk_id = d.id AND c.state = 'active')
		FROM chunkservers cs JOIN disks d ON d.chunkserver_id = cs.id
		WHERE cs.last_heartbeat > now() - make_interval(secs => $1) AND d.capacity_bytes > 0
		  AND NOT `+diskFull+` AND NOT cs.draining
		ORDER BY cs.id, d.id`, st.offlineSecs())
	if err != nil {
		return nil, fmt.Errorf("load placement candidates: %w", err)
	}
	defer rows.Close()
	var out []candidate
	for rows.Next() {
		var c candidate
		var d candidateDisk
		if err := rows.Scan(&c.ID, &c.Name, &c.FaultDomain, &d.ID, &d.FreeBytes, &d.ActiveChunks); err != nil {
			return nil, fmt.Errorf("load placement candidates: %w", err)
		}
		if n := len(out); n > 0 && out[n-1].ID == c.ID {
			out[n-1].Disks = append(out[n-1].Disks, d)
			continue
		}
		c.Disks = []candidateDisk{d}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load placement candidates: %w", err)
	}
	return out, nil
}

// deleteVolume deletes a volume: its chunks leave their sets and become
// deleting, for their chunkservers to delete and acknowledge.
func (st *store) deleteVolume(ctx context.Context, name string) error {
	return st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var id int64
		if err := tx.QueryRow(ctx, `SELECT id FROM volumes WHERE name = $1 FOR UPDATE`, name).Scan(&id); err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		clones, err := clonesOf(ctx, tx, id, "")
		if err != nil {
			return err
		}
		if len(clones) > 0 {
			return api.Errorf(api.CodeConflict, "volume %q is the parent of the clone(s) %s, which read the blocks they have not written from its snapshots: delete them first",
				name, strings.Join(clones, ", "))
		}
		_, err = tx.Exec(ctx, `
			UPDATE chunks SET state = 'deleting', volume_id = NULL, set_idx = NULL, member_idx = NULL
			WHERE volume_id = $1`, id)
		if err != nil {
			return fmt.Errorf("release chunks: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM volumes WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete volume: %w", err)
		}
		return addEvents(ctx, tx, event{Kind: api.EventVolumeDeleted, Subject: "volume/" + name, Volume: name,
			Message: "deleted: its chunks are being deleted by their chunkservers"})
	})
}

// attachVolume assigns a volume to a host, bumps its epoch (which changes
// every export name: chunkservers fence the older epochs), resets its clean
// detach and records the move.
func (st *store) attachVolume(ctx context.Context, name, host string) (*api.Volume, error) {
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var (
			id    int64
			prev  string
			clean bool
		)
		err := tx.QueryRow(ctx, `
			SELECT v.id, coalesce(h.name, ''), v.clean_detach
			FROM volumes v LEFT JOIN hosts h ON h.id = v.host_id
			WHERE v.name = $1 FOR UPDATE OF v`, name).Scan(&id, &prev, &clean)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		h, err := hostID(ctx, tx, host)
		if err != nil {
			return err
		}
		var epoch int64
		err = tx.QueryRow(ctx, `
			UPDATE volumes SET host_id = $2, epoch = epoch + 1, clean_detach = false
			WHERE id = $1 RETURNING epoch`, id, h).Scan(&epoch)
		if err != nil {
			return fmt.Errorf("attach volume: %w", err)
		}
		if out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name}); err != nil {
			return err
		}
		return addEvents(ctx, tx, attachEvent(name, host, epoch, prev, clean))
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// attachEvent describes the attachment of volume to host at epoch; prev is
// the host it was attached to before ("" if none) and clean whether prev had
// reported a clean detach.
func attachEvent(volume, host string, epoch int64, prev string, clean bool) event {
	msg := fmt.Sprintf("attached to host %s at epoch %d", host, epoch)
	switch {
	case prev == "" || prev == host:
	case clean:
		msg += fmt.Sprintf("; moved from host %s, which detached cleanly", prev)
	default:
		msg += fmt.Sprintf("; moved from host %s, which did not detach cleanly: the new host recovers from the LOG bitmaps", prev)
	}
	return event{Kind: api.EventVolumeAttached, Subject: "volume/" + volume, Volume: volume, Server: host, Message: msg}
}

// insertSets records the sets of plan as sets first, first+1, ... of a
// volume of size bytes in sets of setSize (the last holds the rest), with
// their chunks on the chunkservers and disks plan chose.
func insertSets(ctx context.Context, tx pgx.Tx, volumeID int64, first int, plan [][]placed, chunkSize, setSize, size int64) error {
	var setIdx, chunkSet, chunkMember []int32
	var servers, disks []int64
	for i, members := range plan {
		idx := int32(first + i)
		setIdx = append(setIdx, idx)
		for j, m := range members {
			servers = append(servers, m.ChunkserverID)
			disks = append(disks, m.DiskID)
			chunkSet = append(chunkSet, idx)
			chunkMember = append(chunkMember, int32(j))
		}
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO sets (volume_id, idx, size_bytes)
		SELECT $1, i, least($3::bigint, $4::bigint - i::bigint * $3::bigint) FROM unnest($2::int[]) i`,
		volumeID, setIdx, setSize, size)
	if err != nil {
		return fmt.Errorf("insert sets: %w", err)
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO chunks (chunkserver_id, disk_id, volume_id, set_idx, member_idx, size_bytes)
		SELECT u.server, u.disk, $1, u.set_idx, u.member_idx, $2
		FROM unnest($3::bigint[], $4::bigint[], $5::int[], $6::int[]) AS u(server, disk, set_idx, member_idx)`,
		volumeID, chunkSize, servers, disks, chunkSet, chunkMember)
	if err != nil {
		return fmt.Errorf("insert chunks: %w", err)
	}
	return nil
}
