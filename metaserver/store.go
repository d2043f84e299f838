package metaserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// store runs the metaserver's SQL. Conditions a client must see come back as
// *api.Error (or *PlacementError); anything else is an internal error.
//
// Every change of chunk or volume assignments runs through mutate, which
// first bumps cluster.generation. That UPDATE locks the single cluster row,
// so mutations are serialized cluster-wide (placement sees a stable view),
// and the NOTIFY sent in the same transaction is delivered on commit.
type store struct {
	db *pgxpool.Pool
	// caCert and caKey are the cluster CA's (PEM): registrations get the
	// certificate, chunkservers a control API certificate it signs.
	caCert, caKey []byte
	// replaceAfter is Config.ReplaceAfter.
	replaceAfter time.Duration
	// overcommit is the capacity guard's ratio (Config.Overcommit).
	overcommit float64
	// secret is the cluster secret (hex) that keys export tokens.
	secret string
	// box seals the volumes' CHAP secrets with a key derived from secret.
	box *sealer
	// tokenKey keys the hashes of the API tokens (derived from secret).
	tokenKey []byte
	// The timeout budget: offlineAfter is used here, the others are handed
	// to the daemons.
	offlineAfter, ioTimeout, logPeriod time.Duration
	log                                *slog.Logger
	// committed is told the generation of every committed mutation.
	committed func(gen int64)
}

// notifyChannel is the LISTEN/NOTIFY channel of generation changes. Its
// payload is "<schema> <generation>": one database may hold several
// clusters in different schemas (the tests do).
const notifyChannel = "chunkraid_generation"

// querier is what pgx.Tx and *pgx.Conn have in common for reads.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// mutate runs fn in a transaction after bumping the generation.
func (st *store) mutate(ctx context.Context, fn func(tx pgx.Tx, chunkSize int64) error) error {
	var gen int64
	err := pgx.BeginTxFunc(ctx, st.db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		var chunkSize int64
		var err error
		if gen, chunkSize, err = bumpGeneration(ctx, tx); err != nil {
			return err
		}
		return fn(tx, chunkSize)
	})
	if err == nil && st.committed != nil {
		st.committed(gen)
	}
	return err
}

// bumpGeneration takes the next generation in tx, and the NOTIFY that wakes
// the long polls of every metaserver when tx commits.
func bumpGeneration(ctx context.Context, tx pgx.Tx) (gen, chunkSize int64, err error) {
	err = tx.QueryRow(ctx, `UPDATE cluster SET generation = generation + 1 RETURNING generation, chunk_size`).
		Scan(&gen, &chunkSize)
	if err != nil {
		return 0, 0, fmt.Errorf("bump generation: %w", err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, current_schema() || ' ' || $2::bigint)`, notifyChannel, gen); err != nil {
		return 0, 0, fmt.Errorf("notify: %w", err)
	}
	return gen, chunkSize, nil
}

// read runs fn in a read-only transaction that sees one snapshot.
func (st *store) read(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, st.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

// offlineSecs is the heartbeat age, in seconds, after which a server is offline.
func (st *store) offlineSecs() float64 { return st.offlineAfter.Seconds() }

// cluster returns the cluster row and the schema version.
func (st *store) cluster(ctx context.Context) (*api.Cluster, error) {
	c := &api.Cluster{
		OfflineAfterSeconds: st.offlineSecs(),
		IOTimeoutMS:         st.ioTimeout.Milliseconds(),
		OfflineAfterMS:      st.offlineAfter.Milliseconds(),
		LogPeriodMS:         st.logPeriod.Milliseconds(),
		ReplaceAfterMS:      st.replaceAfter.Milliseconds(),
	}
	err := st.read(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			SELECT chunk_size, generation, created_at, (SELECT coalesce(max(version), 0) FROM schema_migrations)
			FROM cluster`).Scan(&c.ChunkSize, &c.Generation, &c.CreatedAt, &c.SchemaVersion)
		if err != nil {
			return err
		}
		cp, err := st.capacity(ctx, tx)
		if err != nil {
			return err
		}
		c.RawCapacityBytes, c.RawFreeBytes, c.ProvisionedBytes, c.AllocatedBytes = cp.raw, cp.free, cp.provisioned, cp.allocated
		c.Overcommit, c.ProvisionableBytes = st.overcommit, cp.provisionable(st.overcommit)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read cluster: %w", err)
	}
	return c, nil
}

// capacity is the cluster's raw capacity and free space (of the online
// chunkservers' disks), what its chunks are provisioned and what they
// take on disk.
type capacity struct{ raw, free, provisioned, allocated int64 }

func (st *store) capacity(ctx context.Context, q querier) (capacity, error) {
	var c capacity
	err := q.QueryRow(ctx, `
		SELECT coalesce(sum(d.capacity_bytes), 0)::bigint, coalesce(sum(d.free_bytes), 0)::bigint,
		       (SELECT coalesce(sum(size_bytes), 0)::bigint FROM chunks),
		       coalesce(sum(d.allocated_bytes), 0)::bigint
		FROM disks d JOIN chunkservers cs ON cs.id = d.chunkserver_id
		WHERE cs.last_heartbeat > now() - make_interval(secs => $1)`, st.offlineSecs()).
		Scan(&c.raw, &c.free, &c.provisioned, &c.allocated)
	return c, err
}

// provisionable is the raw size a new volume may still take: overcommit ×
// free, less the space promised to chunks but not yet written.
func (c capacity) provisionable(overcommit float64) int64 {
	unwritten := max(0, c.provisioned-c.allocated)
	return max(0, int64(overcommit*float64(c.free))-unwritten)
}

// generation returns the current generation.
func (st *store) generation(ctx context.Context, q querier) (gen, chunkSize int64, err error) {
	err = q.QueryRow(ctx, `SELECT generation, chunk_size FROM cluster`).Scan(&gen, &chunkSize)
	if err != nil {
		return 0, 0, fmt.Errorf("read generation: %w", err)
	}
	return gen, chunkSize, nil
}

// registerChunkserver inserts or updates a chunkserver by name and replaces
// its disk list. A disk left out of the list that still holds chunks cannot
// go (the chunks reference it): it stays, with no capacity, so placement
// avoids it.
func (st *store) registerChunkserver(ctx context.Context, req api.RegisterChunkserverRequest, caller *principal) (*api.RegisterChunkserverResponse, error) {
	resp := &api.RegisterChunkserverResponse{
		ClusterSecret: st.secret,
		ClusterCA:     string(st.caCert),
		IOTimeoutMS:   st.ioTimeout.Milliseconds(),
		LogPeriodMS:   st.logPeriod.Milliseconds(),
	}
	// Signed first: a bad request changes nothing.
	if req.ControlAddr != "" {
		host, _, _ := net.SplitHostPort(req.ControlAddr) // validated
		cert, err := pki.Sign(st.caCert, st.caKey, []byte(req.ControlCSR), pki.Chunkserver, []string{host}, time.Now())
		if err != nil {
			return nil, api.Errorf(api.CodeInvalidArgument, "control_csr: %v", err)
		}
		resp.ControlCert = string(cert)
	}
	paths := make([]string, len(req.Disks))
	caps := make([]int64, len(req.Disks))
	frees := make([]int64, len(req.Disks))
	allocs := make([]int64, len(req.Disks))
	outs := make([]bool, len(req.Disks))
	for i, d := range req.Disks {
		paths[i], caps[i], frees[i], allocs[i], outs[i] = d.Path, d.CapacityBytes, d.FreeBytes, d.AllocatedBytes, d.OutOfSpace
	}
	var kept []string
	err := st.mutate(ctx, func(tx pgx.Tx, chunkSize int64) error {
		resp.ChunkSize = chunkSize
		var existing int64
		err := tx.QueryRow(ctx, `SELECT id FROM chunkservers WHERE name = $1 FOR UPDATE`, req.Name).Scan(&existing)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		issue, err := admitDaemon(ctx, tx, api.RoleChunkserver, req.Name, existing, caller)
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO chunkservers (name, addr, control_addr, fault_domain) VALUES ($1, $2, $3, $4)
			ON CONFLICT (name) DO UPDATE
			SET addr = EXCLUDED.addr, control_addr = EXCLUDED.control_addr,
			    fault_domain = EXCLUDED.fault_domain, last_heartbeat = now()
			RETURNING id`, req.Name, req.Addr, req.ControlAddr, req.FaultDomain).Scan(&resp.ID)
		if err != nil {
			return fmt.Errorf("upsert chunkserver: %w", err)
		}
		if issue {
			if resp.Credential, err = st.issueCredential(ctx, tx, api.RoleChunkserver, req.Name, resp.ID); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO disks (chunkserver_id, path, capacity_bytes, free_bytes, allocated_bytes, out_of_space)
			SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::boolean[])
			ON CONFLICT (chunkserver_id, path) DO UPDATE
			SET capacity_bytes = EXCLUDED.capacity_bytes, free_bytes = EXCLUDED.free_bytes,
			    allocated_bytes = EXCLUDED.allocated_bytes, out_of_space = EXCLUDED.out_of_space`,
			resp.ID, paths, caps, frees, allocs, outs)
		if err != nil {
			return fmt.Errorf("upsert disks: %w", err)
		}
		_, err = tx.Exec(ctx, `
			DELETE FROM disks d
			WHERE d.chunkserver_id = $1 AND NOT d.path = ANY($2::text[])
			AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.disk_id = d.id)`, resp.ID, paths)
		if err != nil {
			return fmt.Errorf("delete disks: %w", err)
		}
		rows, err := tx.Query(ctx, `
			UPDATE disks SET capacity_bytes = 0, free_bytes = 0, allocated_bytes = 0
			WHERE chunkserver_id = $1 AND NOT path = ANY($2::text[])
			RETURNING path`, resp.ID, paths)
		if err != nil {
			return fmt.Errorf("retire disks: %w", err)
		}
		kept, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, p := range kept {
		st.log.Warn("chunkserver registered without a disk that still holds chunks; keeping the disk with no capacity",
			"chunkserver", req.Name, "disk", p)
	}
	return resp, nil
}

// chunkserverHeartbeat records a heartbeat and the disks' capacity.
func (st *store) chunkserverHeartbeat(ctx context.Context, id int64, hb api.ChunkserverHeartbeat) error {
	paths := make([]string, len(hb.Disks))
	caps := make([]int64, len(hb.Disks))
	frees := make([]int64, len(hb.Disks))
	allocs := make([]int64, len(hb.Disks))
	outs := make([]bool, len(hb.Disks))
	for i, d := range hb.Disks {
		paths[i], caps[i], frees[i], allocs[i], outs[i] = d.Path, d.CapacityBytes, d.FreeBytes, d.AllocatedBytes, d.OutOfSpace
	}
	return pgx.BeginTxFunc(ctx, st.db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE chunkservers SET last_heartbeat = now() WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return api.Errorf(api.CodeNotFound, "chunkserver %d is not registered: register again", id)
		}
		var unknown []string
		rows, err := tx.Query(ctx, `
			SELECT p FROM unnest($2::text[]) p
			WHERE NOT EXISTS (SELECT 1 FROM disks WHERE chunkserver_id = $1 AND path = p)`, id, paths)
		if err != nil {
			return fmt.Errorf("heartbeat disks: %w", err)
		}
		if unknown, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("heartbeat disks: %w", err)
		}
		if len(unknown) > 0 {
			return api.Errorf(api.CodeConflict, "disk %q of chunkserver %d is not registered: register again to change the disk list", unknown[0], id)
		}
		_, err = tx.Exec(ctx, `
			UPDATE disks d SET capacity_bytes = u.cap, free_bytes = u.free, allocated_bytes = u.alloc, out_of_space = u.out
			FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::boolean[]) AS u(path, cap, free, alloc, out)
			WHERE d.chunkserver_id = $1 AND d.path = u.path`, id, paths, caps, frees, allocs, outs)
		if err != nil {
			return fmt.Errorf("heartbeat disks: %w", err)
		}
		return recordFailedChunks(ctx, tx, id, hb.FailedChunks)
	})
}

// recordFailedChunks stores which chunks of chunkserver id it reports failed
// or quarantined, with an event for each that was healthy until now; a
// chunk it no longer reports (repaired, or deleted and created again) is
// healthy again. Reported ids that are not its chunks are ignored.
func recordFailedChunks(ctx context.Context, tx pgx.Tx, id int64, failed []api.FailedChunk) error {
	ids := make([]string, len(failed))
	reasons := make([]string, len(failed))
	for i, f := range failed {
		ids[i] = f.ID
		reasons[i] = truncateUTF8(f.Reason, maxErrorLen)
		if f.Quarantined {
			reasons[i] = truncateUTF8("quarantined: "+f.Reason, maxErrorLen)
		}
	}
	if _, err := tx.Exec(ctx, `
		UPDATE chunks SET failed_reason = NULL, failed_at = NULL
		WHERE chunkserver_id = $1 AND failed_reason IS NOT NULL AND NOT (id::text = ANY($2::text[]))`, id, ids); err != nil {
		return fmt.Errorf("heartbeat failed chunks: %w", err)
	}
	if len(failed) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `
		UPDATE chunks c SET failed_reason = r.reason, failed_at = now()
		FROM unnest($2::text[], $3::text[]) AS r(id, reason)
		WHERE c.chunkserver_id = $1 AND c.id::text = r.id AND c.failed_reason IS NULL
		RETURNING c.id::text, r.reason, coalesce((SELECT name FROM volumes v WHERE v.id = c.volume_id), ''),
		          coalesce(c.set_idx, 0), coalesce(c.member_idx, 0),
		          (SELECT name FROM chunkservers cs WHERE cs.id = c.chunkserver_id)`, id, ids, reasons)
	if err != nil {
		return fmt.Errorf("heartbeat failed chunks: %w", err)
	}
	var evs []event
	for rows.Next() {
		var chunk, reason, volume, server string
		var set, member int
		if err := rows.Scan(&chunk, &reason, &volume, &set, &member, &server); err != nil {
			rows.Close()
			return fmt.Errorf("heartbeat failed chunks: %w", err)
		}
		e := event{Kind: api.EventChunkFailed, Subject: "chunk/" + chunk, Volume: volume, Server: server,
			Message: fmt.Sprintf("chunk %s on chunkserver %s failed: %s", chunk, server, reason)}
		if volume != "" {
			e.Subject = fmt.Sprintf("volume/%s/set/%d/member/%d", volume, set, member)
			e.Message = fmt.Sprintf("chunk %s (member %d of set %d of volume %s) on chunkserver %s failed: %s",
				chunk, member, set, volume, server, reason)
		}
		evs = append(evs, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("heartbeat failed chunks: %w", err)
	}
	return addEvents(ctx, tx, evs...)
}

// listChunkservers lists every chunkserver with its state and totals.
func (st *store) listChunkservers(ctx context.Context) ([]api.Chunkserver, error) {
	out := []api.Chunkserver{}
	err := st.read(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT cs.id, cs.name, cs.addr, cs.control_addr, cs.fault_domain, cs.last_heartbeat,
			       cs.last_heartbeat > now() - make_interval(secs => $1),
			       coalesce(d.cap, 0), coalesce(d.free, 0), coalesce(c.n, 0), coalesce(d.roomy, 0) = 0 AND coalesce(d.cap, 0) > 0,
			       cs.draining, coalesce(c.members, 0)::int
			FROM chunkservers cs
			LEFT JOIN (SELECT chunkserver_id, sum(capacity_bytes)::bigint AS cap, sum(free_bytes)::bigint AS free,
			                  count(*) FILTER (WHERE NOT `+diskFull+`) AS roomy
			           FROM disks GROUP BY chunkserver_id) d ON d.chunkserver_id = cs.id
			LEFT JOIN (SELECT chunkserver_id, count(*) AS n, count(*) FILTER (WHERE volume_id IS NOT NULL) AS members
			           FROM chunks GROUP BY chunkserver_id) c ON c.chunkserver_id = cs.id
			ORDER BY cs.name`, st.offlineSecs())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Chunkserver, error) {
			var c api.Chunkserver
			var online bool
			err := row.Scan(&c.ID, &c.Name, &c.Addr, &c.ControlAddr, &c.FaultDomain, &c.LastHeartbeat, &online,
				&c.CapacityBytes, &c.FreeBytes, &c.Chunks, &c.Full, &c.Draining, &c.Members)
			c.State = stateOf(online)
			return c, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list chunkservers: %w", err)
	}
	return out, nil
}

// diskFull is the SQL condition of a nearly full disk (of table disks):
// less free than 1% of its capacity, and than 1 GiB, or a write refused
// for lack of space since its chunkserver last measured enough free space
// (a request larger than what is left). Placement avoids it.
const diskFull = `(free_bytes < least(capacity_bytes / 100, 1073741824) OR out_of_space)`

func stateOf(online bool) string {
	if online {
		return api.StateOnline
	}
	return api.StateOffline
}

// chunkAssignments returns the chunks of chunkserver id and the generation
// they belong to.
func (st *store) chunkAssignments(ctx context.Context, id int64) (*api.ChunkAssignments, error) {
	out := &api.ChunkAssignments{Chunks: []api.ChunkAssignment{}}
	err := st.read(ctx, func(tx pgx.Tx) error {
		var err error
		if out.Generation, out.ChunkSize, err = st.generation(ctx, tx); err != nil {
			return err
		}
		if err := exists(ctx, tx, `SELECT EXISTS (SELECT 1 FROM chunkservers WHERE id = $1)`, id); err != nil {
			return notFound(err, "chunkserver %d is not registered: register again", id)
		}
		rows, err := tx.Query(ctx, `
			SELECT id::text, size_bytes, state, coalesce(base_chunk::text, ''), coalesce(base_snapshot, '')
			FROM chunks WHERE chunkserver_id = $1 ORDER BY id`, id)
		if err != nil {
			return fmt.Errorf("list chunks: %w", err)
		}
		out.Chunks, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.ChunkAssignment, error) {
			var a api.ChunkAssignment
			err := row.Scan(&a.ID, &a.SizeBytes, &a.State, &a.Base, &a.BaseSnapshot)
			return a, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// errMissing is returned by exists when the row is not there.
var errMissing = errors.New("missing")

// exists runs a SELECT EXISTS query and returns errMissing if it is false.
func exists(ctx context.Context, q querier, sql string, args ...any) error {
	var ok bool
	if err := q.QueryRow(ctx, sql, args...).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return errMissing
	}
	return nil
}

// notFound turns errMissing and pgx.ErrNoRows into a not_found *api.Error
// and passes other errors on.
func notFound(err error, format string, args ...any) error {
	if errors.Is(err, errMissing) || errors.Is(err, pgx.ErrNoRows) {
		return api.Errorf(api.CodeNotFound, format, args...)
	}
	return err
}

// ackChunkDeleted removes a deleting chunk of chunkserver id.
func (st *store) ackChunkDeleted(ctx context.Context, id int64, chunk string) error {
	return st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM chunks WHERE id = $1 AND chunkserver_id = $2 FOR UPDATE`, chunk, id).Scan(&state)
		if err != nil {
			return notFound(err, "chunk %s is not assigned to chunkserver %d", chunk, id)
		}
		if state != api.ChunkDeleting {
			return api.Errorf(api.CodeConflict, "chunk %s is %s, not %s: only a chunk the metaserver asked to delete can be acknowledged", chunk, state, api.ChunkDeleting)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM chunks WHERE id = $1`, chunk); err != nil {
			return fmt.Errorf("delete chunk: %w", err)
		}
		return nil
	})
}

// listDisks lists every disk.
func (st *store) listDisks(ctx context.Context) ([]api.Disk, error) {
	var out []api.Disk
	err := st.read(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT d.id, cs.name, d.path, d.capacity_bytes, d.free_bytes,
			       (SELECT count(*) FROM chunks c WHERE c.disk_id = d.id),
			       (SELECT count(*) FROM chunks c WHERE c.disk_id = d.id AND c.failed_reason IS NOT NULL)
			FROM disks d JOIN chunkservers cs ON cs.id = d.chunkserver_id
			ORDER BY cs.name, d.path`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Disk, error) {
			var d api.Disk
			err := row.Scan(&d.ID, &d.Chunkserver, &d.Path, &d.CapacityBytes, &d.FreeBytes, &d.Chunks, &d.FailedChunks)
			return d, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	return out, nil
}

// listChunks lists every chunk, or those of one volume.
func (st *store) listChunks(ctx context.Context, volume string) ([]api.Chunk, error) {
	var out []api.Chunk
	err := st.read(ctx, func(tx pgx.Tx) error {
		var volumeID *int64
		if volume != "" {
			var id int64
			if err := tx.QueryRow(ctx, `SELECT id FROM volumes WHERE name = $1`, volume).Scan(&id); err != nil {
				return notFound(err, "volume %q does not exist", volume)
			}
			volumeID = &id
		}
		rows, err := tx.Query(ctx, `
			SELECT c.id::text, cs.name, coalesce(v.name, ''), coalesce(c.set_idx, 0), coalesce(c.member_idx, 0),
			       c.size_bytes, c.state, coalesce(c.failed_reason, '')
			FROM chunks c
			JOIN chunkservers cs ON cs.id = c.chunkserver_id
			LEFT JOIN volumes v ON v.id = c.volume_id
			WHERE $1::bigint IS NULL OR c.volume_id = $1
			ORDER BY v.name NULLS LAST, c.set_idx, c.member_idx, c.id`, volumeID)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Chunk, error) {
			var c api.Chunk
			err := row.Scan(&c.ID, &c.Chunkserver, &c.Volume, &c.SetIndex, &c.MemberIndex, &c.SizeBytes, &c.State, &c.Failed)
			return c, err
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// registerHost inserts or updates a host by name.
func (st *store) registerHost(ctx context.Context, req api.RegisterHostRequest, caller *principal) (*api.RegisterHostResponse, error) {
	resp := &api.RegisterHostResponse{
		ClusterCA:   string(st.caCert),
		IOTimeoutMS: st.ioTimeout.Milliseconds(),
		LogPeriodMS: st.logPeriod.Milliseconds(),
	}
	// Signed first: a bad request changes nothing.
	if req.MetricsAddr != "" {
		host, _, _ := net.SplitHostPort(req.MetricsAddr) // validated
		cert, err := pki.Sign(st.caCert, st.caKey, []byte(req.MetricsCSR), pki.Host, []string{host}, time.Now())
		if err != nil {
			return nil, api.Errorf(api.CodeInvalidArgument, "metrics_csr: %v", err)
		}
		resp.MetricsCert = string(cert)
	}
	err := pgx.BeginFunc(ctx, st.db, func(tx pgx.Tx) error {
		var existing int64
		err := tx.QueryRow(ctx, `SELECT id FROM hosts WHERE name = $1 FOR UPDATE`, req.Name).Scan(&existing)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		issue, err := admitDaemon(ctx, tx, api.RoleHost, req.Name, existing, caller)
		if err != nil {
			return err
		}
		err = tx.QueryRow(ctx, `
			INSERT INTO hosts (name, iscsi_addr, incarnation) VALUES ($1, $2, 1)
			ON CONFLICT (name) DO UPDATE SET iscsi_addr = EXCLUDED.iscsi_addr, last_heartbeat = now(),
				incarnation = hosts.incarnation + 1
			RETURNING id, incarnation`, req.Name, req.ISCSIAddr).Scan(&resp.ID, &resp.Incarnation)
		if err != nil {
			return fmt.Errorf("register host: %w", err)
		}
		if issue {
			resp.Credential, err = st.issueCredential(ctx, tx, api.RoleHost, req.Name, resp.ID)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// hostHeartbeat records a heartbeat of host id.
func (st *store) hostHeartbeat(ctx context.Context, id int64) error {
	tag, err := st.db.Exec(ctx, `UPDATE hosts SET last_heartbeat = now() WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("host heartbeat: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return api.Errorf(api.CodeNotFound, "host %d is not registered: register again", id)
	}
	return nil
}

// listHosts lists every host with its state.
func (st *store) listHosts(ctx context.Context) ([]api.Host, error) {
	var out []api.Host
	err := st.read(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT id, name, iscsi_addr, last_heartbeat, last_heartbeat > now() - make_interval(secs => $1)
			FROM hosts ORDER BY name`, st.offlineSecs())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Host, error) {
			var h api.Host
			var online bool
			err := row.Scan(&h.ID, &h.Name, &h.ISCSIAddr, &h.LastHeartbeat, &online)
			h.State = stateOf(online)
			return h, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	return out, nil
}

// hostVolumes returns the volumes assigned to host id and their generation.
func (st *store) hostVolumes(ctx context.Context, id int64) (*api.HostVolumes, error) {
	out := &api.HostVolumes{}
	err := st.read(ctx, func(tx pgx.Tx) error {
		var err error
		if out.Generation, _, err = st.generation(ctx, tx); err != nil {
			return err
		}
		var hostName string
		if err := tx.QueryRow(ctx, `SELECT name FROM hosts WHERE id = $1`, id).Scan(&hostName); err != nil {
			return notFound(err, "host %d is not registered: register again", id)
		}
		if out.Volumes, err = st.loadVolumes(ctx, tx, volumeFilter{hostID: id, secrets: true}); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT v.name, h.name, h.iscsi_addr, v.allowed_initiators
			FROM volumes v JOIN hosts h ON h.id = v.host_id
			WHERE v.host_id <> $1 ORDER BY v.name`, id)
		if err != nil {
			return fmt.Errorf("volumes served elsewhere: %w", err)
		}
		out.Elsewhere, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.ServedElsewhere, error) {
			var e api.ServedElsewhere
			err := row.Scan(&e.Volume, &e.Host, &e.Portal, &e.AllowedInitiators)
			e.IQN = api.IQNPrefix + e.Volume
			if e.AllowedInitiators == nil {
				e.AllowedInitiators = []string{}
			}
			return e, err
		})
		if err != nil {
			return fmt.Errorf("volumes served elsewhere: %w", err)
		}
		rows, err = tx.Query(ctx, `
			SELECT v.name, s.name, h.name, h.iscsi_addr, v.allowed_initiators
			FROM snapshots s JOIN volumes v ON v.id = s.volume_id JOIN hosts h ON h.id = s.host_id
			WHERE s.host_id <> $1 ORDER BY v.name, s.name`, id)
		if err != nil {
			return fmt.Errorf("snapshots served elsewhere: %w", err)
		}
		snaps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.ServedElsewhere, error) {
			var e api.ServedElsewhere
			err := row.Scan(&e.Volume, &e.Snapshot, &e.Host, &e.Portal, &e.AllowedInitiators)
			e.IQN = api.SnapshotIQN(e.Volume, e.Snapshot)
			if e.AllowedInitiators == nil {
				e.AllowedInitiators = []string{}
			}
			return e, err
		})
		if err != nil {
			return fmt.Errorf("snapshots served elsewhere: %w", err)
		}
		out.Elsewhere = append(orEmpty(out.Elsewhere), snaps...)
		out.SnapshotTargets, err = st.snapshotTargets(ctx, tx, id, hostName)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// removeChunkserver forgets the chunkserver named ref (or whose ID it is):
// its disks, its credential and the chunks it was to delete. It refuses one
// that holds set members (they must be replaced or moved first) or that is
// online (it must be stopped first: it would register again).
func (st *store) removeChunkserver(ctx context.Context, ref string) (string, error) {
	var name string
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var (
			id     int64
			online bool
			silent float64
		)
		err := tx.QueryRow(ctx, `
			SELECT id, name, last_heartbeat > now() - make_interval(secs => $2), extract(epoch FROM now() - last_heartbeat)::float8
			FROM chunkservers WHERE name = $1 OR id::text = $1 ORDER BY name = $1 DESC LIMIT 1 FOR UPDATE`,
			ref, st.offlineSecs()).Scan(&id, &name, &online, &silent)
		if err != nil {
			return notFound(err, "chunkserver %q is not registered (chunkraid server list shows them)", ref)
		}
		var members int
		var volumes []string
		err = tx.QueryRow(ctx, `
			SELECT count(*)::int, coalesce(array_agg(DISTINCT v.name ORDER BY v.name), '{}')
			FROM chunks c JOIN volumes v ON v.id = c.volume_id WHERE c.chunkserver_id = $1`, id).Scan(&members, &volumes)
		if err != nil {
			return fmt.Errorf("members of chunkserver %s: %w", name, err)
		}
		if members > 0 {
			shown := volumes
			if len(shown) > 5 {
				shown = append(shown[:5:5], fmt.Sprintf("%d more", len(volumes)-5))
			}
			return api.Errorf(api.CodeConflict, "chunkserver %s still holds %d set members (volumes %s): move them first (chunkraid server drain %[1]s), or wait until they are replaced by new chunks elsewhere (offline for replace_after)",
				name, members, strings.Join(shown, ", "))
		}
		if online {
			return api.Errorf(api.CodeConflict, "chunkserver %s is online (heartbeat %s ago): stop it first, or it registers again",
				name, time.Duration(silent*float64(time.Second)).Round(time.Second))
		}
		for _, q := range []string{`DELETE FROM chunks WHERE chunkserver_id = $1`, `DELETE FROM disks WHERE chunkserver_id = $1`, `DELETE FROM chunkservers WHERE id = $1`} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return fmt.Errorf("remove chunkserver %s: %w", name, err)
			}
		}
		return addEvents(ctx, tx, event{Kind: api.EventChunkserverRemoved, Subject: "chunkserver/" + name, Server: name,
			Message: fmt.Sprintf("chunkserver %s removed: it held no set member and had been offline for %s", name, time.Duration(silent*float64(time.Second)).Round(time.Second))})
	})
	return name, err
}

// drainChunkserver marks the chunkserver named ref (or whose ID it is)
// draining: it takes no new chunks and the leader moves each of its set
// members to another chunkserver (drainMembers). Members of EC sets are not
// moved: such a chunkserver is refused, naming the volumes.
func (st *store) drainChunkserver(ctx context.Context, ref string) (*api.DrainResponse, error) {
	out := &api.DrainResponse{}
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var (
			id       int64
			draining bool
		)
		err := tx.QueryRow(ctx, `
			SELECT id, name, draining FROM chunkservers WHERE name = $1 OR id::text = $1
			ORDER BY name = $1 DESC LIMIT 1 FOR UPDATE`, ref).Scan(&id, &out.Chunkserver, &draining)
		if err != nil {
			return notFound(err, "chunkserver %q is not registered (chunkraid server list shows them)", ref)
		}
		err = tx.QueryRow(ctx, `
			SELECT count(*)::int, coalesce(array_agg(DISTINCT v.name ORDER BY v.name), '{}')
			FROM chunks c JOIN volumes v ON v.id = c.volume_id WHERE c.chunkserver_id = $1`, id).Scan(&out.Members, &out.Volumes)
		if err != nil {
			return fmt.Errorf("members of chunkserver %s: %w", out.Chunkserver, err)
		}
		if draining {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE chunkservers SET draining = true, drain_done = false WHERE id = $1`, id); err != nil {
			return fmt.Errorf("drain chunkserver %s: %w", out.Chunkserver, err)
		}
		return addEvents(ctx, tx, event{Kind: api.EventChunkserverDraining, Subject: "chunkserver/" + out.Chunkserver, Server: out.Chunkserver,
			Message: fmt.Sprintf("chunkserver %s is draining: its %d set members move to other chunkservers, each rebuilt beside it before it leaves; new chunks go elsewhere",
				out.Chunkserver, out.Members)})
	})
	if err != nil {
		return nil, err
	}
	out.Volumes = orEmpty(out.Volumes)
	return out, nil
}
