package metaserver

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Background loops run on exactly one metaserver of a cluster: the one whose
// dedicated connection holds the schema's leader lock, a session advisory
// lock taken with pg_try_advisory_lock. The loops run on that connection
// too, so they stop the moment the lock is lost: when the leader dies or its
// connection breaks, PostgreSQL ends the session and releases the lock, and
// another metaserver takes it at its next try (every leaderTick).
//
// The failure detector flips chunkservers.offline and records the event in
// one transaction; the UPDATE's WHERE clause is rechecked under the row lock,
// so even two instances that both believed they lead would record each
// change once.

const (
	// leaderTick is how often the leader runs its loops, and how often the
	// other instances try to take the lock.
	leaderTick = time.Second
	// pruneEvery: the leader prunes old events once every this many ticks.
	pruneEvery = 60
	// detectorGap: a leader that finds the detector idle for longer (it
	// runs every leaderTick; another metaserver takes over a dead leader's
	// lock within about one) gives the daemons offline_after to heartbeat
	// before it judges them.
	detectorGap = 5 * leaderTick
	// leaderAppName names the leader connection in pg_stat_activity.
	leaderAppName = "chunkraid-metaserver-leader"
	// leaderLockKey is the key of the leader lock; one per schema, since one
	// database may hold several clusters.
	leaderLockKey = `hashtextextended('chunkraid.leader.' || current_schema(), 0)`
)

// lead competes for the leader lock until ctx ends, and runs the
// background loops while it holds it.
func (s *Server) lead(ctx context.Context, cfg *pgx.ConnConfig) {
	cfg = cfg.Copy()
	cfg.RuntimeParams["application_name"] = leaderAppName
	for ctx.Err() == nil {
		err := s.leadOnce(ctx, cfg)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("leader election: connection lost; retrying", "err", err, "in", leaderTick)
		select {
		case <-ctx.Done():
			return
		case <-time.After(leaderTick):
		}
	}
}

// leadOnce opens the leader connection, waits until it holds the lock and
// then runs the loops; it returns when ctx ends or the connection fails.
func (s *Server) leadOnce(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx) // ends the session: releases the lock
	}()
	t := time.NewTicker(leaderTick)
	defer t.Stop()
	for {
		var held bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+leaderLockKey+`)`).Scan(&held); err != nil {
			return fmt.Errorf("try the leader lock: %w", err)
		}
		if held {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	s.leading.Store(true)
	defer s.leading.Store(false)
	// Heartbeats may not have been recorded for a while if the detector
	// has not run for a while: the database or every metaserver was away
	// (a failover, a restart). Then judge them only once every daemon has
	// had offline_after to heartbeat again, or a database outage would
	// declare the whole cluster offline and move every volume.
	var idle *float64
	if err := conn.QueryRow(ctx, `SELECT extract(epoch FROM now() - detector_at)::float8 FROM cluster`).Scan(&idle); err != nil {
		return fmt.Errorf("the detector's last run: %w", err)
	}
	judgeFrom := time.Now()
	if idle != nil && *idle > detectorGap.Seconds() {
		judgeFrom = judgeFrom.Add(s.cfg.OfflineAfter)
		s.log.Info("leading: the failure detector had not run for a while; it judges heartbeats after offline_after",
			"idle", time.Duration(*idle*float64(time.Second)).Round(time.Second), "offline_after", s.cfg.OfflineAfter)
	} else {
		s.log.Info("leading: running the failure detector")
	}
	for tick := 0; ; tick++ {
		if _, err := conn.Exec(ctx, `UPDATE cluster SET detector_at = now()`); err != nil {
			return fmt.Errorf("record the detector's run: %w", err)
		}
		if time.Now().Before(judgeFrom) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
			}
			continue
		}
		if err := s.detectFailures(ctx, conn); err != nil {
			return err
		}
		if err := s.replaceMembers(ctx, conn); err != nil && ctx.Err() == nil {
			// Logged, not fatal: the detector's next query finds out
			// whether the connection itself broke.
			s.log.Error("replacing members of lost chunkservers", "err", err)
		}
		if err := s.drainMembers(ctx, conn); err != nil && ctx.Err() == nil {
			s.log.Error("moving the members of draining chunkservers", "err", err)
		}
		if err := s.failoverHosts(ctx, conn); err != nil && ctx.Err() == nil {
			s.log.Error("failing over the volumes of lost hosts", "err", err)
		}
		if tick%pruneEvery == pruneEvery-1 {
			if err := pruneEvents(ctx, conn, keptEvents); err != nil {
				return fmt.Errorf("prune events: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// detectFailures marks chunkservers offline whose heartbeat is older than
// OfflineAfter, and online again when it is not, recording an event for each
// change. The in-sync members of a chunkserver that went offline are marked
// degraded at a new generation (markOffline).
func (s *Server) detectFailures(ctx context.Context, conn *pgx.Conn) error {
	var (
		evs    []event
		marked int64 // the generation of the marks, 0 if none
	)
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		evs, marked = nil, 0
		rows, err := tx.Query(ctx, `
			UPDATE chunkservers SET offline = NOT offline
			WHERE offline = (last_heartbeat > now() - make_interval(secs => $1))
			RETURNING name, offline, extract(epoch FROM now() - last_heartbeat)::float8,
			          (SELECT count(*) FROM chunks c WHERE c.chunkserver_id = chunkservers.id AND c.volume_id IS NOT NULL)`,
			s.cfg.OfflineAfter.Seconds())
		if err != nil {
			return fmt.Errorf("failure detector: %w", err)
		}
		var (
			name    string
			offline bool
			silent  float64
			members int64
		)
		var wentOffline []string
		_, err = pgx.ForEachRow(rows, []any{&name, &offline, &silent, &members}, func() error {
			e := event{Subject: "chunkserver/" + name, Server: name}
			if offline {
				wentOffline = append(wentOffline, name)
				e.Kind = api.EventChunkserverOffline
				e.Message = fmt.Sprintf("chunkserver %s is offline: no heartbeat for %s (offline after %v); it holds %d set members",
					name, time.Duration(silent*float64(time.Second)).Round(time.Second), s.cfg.OfflineAfter, members)
			} else {
				e.Kind = api.EventChunkserverOnline
				e.Message = fmt.Sprintf("chunkserver %s is online again", name)
			}
			evs = append(evs, e)
			return nil
		})
		if err != nil {
			return fmt.Errorf("failure detector: %w", err)
		}
		if len(wentOffline) > 0 {
			mevs, gen, err := markOffline(ctx, tx, wentOffline, s.cfg.OfflineAfter)
			if err != nil {
				return fmt.Errorf("failure detector: %w", err)
			}
			evs, marked = append(evs, mevs...), gen
		}
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return err
	}
	if marked != 0 {
		s.gens.observe(marked)
	}
	for _, e := range evs {
		if e.Kind == api.EventChunkserverOffline {
			s.log.Warn("event", "kind", e.Kind, "subject", e.Subject, "message", e.Message)
		} else {
			s.log.Info("event", "kind", e.Kind, "subject", e.Subject, "message", e.Message)
		}
	}
	return nil
}

// markOffline marks degraded, at a new generation, the in-sync members of
// volumes on the chunkservers named: they miss every write from now on, and
// a host that attaches their volume must treat them as stale. A set is
// marked only if it keeps enough members in sync on online chunkservers to
// serve (one copy; K of ec:K+M): otherwise no write can be acknowledged
// without the members, which then hold every acknowledged write and must
// stay trusted. The hosts serving the volumes hear of the marks through
// their long polls and fail the members if they still have them in sync;
// only a completed resync (or rebuild) brings a member back to in_sync. It
// returns one event per member and the generation, 0 if none was marked.
func markOffline(ctx context.Context, tx pgx.Tx, servers []string, offlineAfter time.Duration) ([]event, int64, error) {
	rows, err := tx.Query(ctx, `
		SELECT v.name, v.layout, c.set_idx, c.member_idx, c.id::text, cs.name, c.member_state, cs.offline
		FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id JOIN volumes v ON v.id = c.volume_id
		WHERE (c.volume_id, c.set_idx) IN (
			SELECT c2.volume_id, c2.set_idx FROM chunks c2 JOIN chunkservers cs2 ON cs2.id = c2.chunkserver_id
			WHERE cs2.name = ANY($1) AND c2.volume_id IS NOT NULL AND c2.member_state = 'in_sync')
		ORDER BY v.name, c.set_idx, c.member_idx`, servers)
	if err != nil {
		return nil, 0, fmt.Errorf("members of offline chunkservers: %w", err)
	}
	type row struct {
		volume, layout, chunk, server, state string
		set, member                          int
		offline                              bool
	}
	var all []row
	var r row
	_, err = pgx.ForEachRow(rows, []any{&r.volume, &r.layout, &r.set, &r.member, &r.chunk, &r.server, &r.state, &r.offline}, func() error {
		all = append(all, r)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("members of offline chunkservers: %w", err)
	}
	going := map[string]bool{}
	for _, s := range servers {
		going[s] = true
	}
	var (
		evs  []event
		ids  []string
		errs []string
	)
	for lo := 0; lo < len(all); {
		hi := lo
		for hi < len(all) && all[hi].volume == all[lo].volume && all[hi].set == all[lo].set {
			hi++
		}
		set := all[lo:hi]
		lo = hi
		l, err := api.ParseLayout(set[0].layout)
		if err != nil {
			return nil, 0, err
		}
		up := 0
		var marks []row
		for _, m := range set {
			switch {
			case m.state == api.MemberInSync && going[m.server]:
				marks = append(marks, m)
			case m.state == api.MemberInSync && !m.offline:
				up++
			}
		}
		if up < l.DataChunks() {
			continue // no write can be acknowledged without these members
		}
		for _, m := range marks {
			ids = append(ids, m.chunk)
			errs = append(errs, fmt.Sprintf("chunkserver %s offline: no heartbeat for over %v", m.server, offlineAfter))
			evs = append(evs, event{
				Kind: api.EventMemberDegraded, Subject: fmt.Sprintf("volume/%s/set/%d/member/%d", m.volume, m.set, m.member), Volume: m.volume, Server: m.server,
				Message: fmt.Sprintf("member %d of set %d (chunk %s on chunkserver %s) is degraded: its chunkserver is offline (no heartbeat for over %v)",
					m.member, m.set, m.chunk, m.server, offlineAfter),
			})
		}
	}
	if len(ids) == 0 {
		return nil, 0, nil
	}
	gen, _, err := bumpGeneration(ctx, tx)
	if err != nil {
		return nil, 0, err
	}
	_, err = tx.Exec(ctx, `
		UPDATE chunks c SET member_state = 'degraded', member_state_since = now(), member_state_gen = $3, member_error = u.err
		FROM unnest($1::uuid[], $2::text[]) AS u(id, err)
		WHERE c.id = u.id`, ids, errs, gen)
	if err != nil {
		return nil, 0, fmt.Errorf("mark members degraded: %w", err)
	}
	return evs, gen, nil
}

// maxReplacementsPerTick bounds the members replaced in one tick of the
// leader; the rest wait for the next ticks, those of the sets with the
// least redundancy left first.
const maxReplacementsPerTick = 32

// replaceMembers replaces every degraded member whose chunkserver has been
// silent for ReplaceAfter (DESIGN §3), or whose chunk its chunkserver
// reports failed (a durability error: it never serves again), at once: its chunk leaves the set (deleting:
// its chunkserver deletes it if it ever returns) and a new chunk on an
// online chunkserver in a fault domain the set does not use takes its
// place, recorded rebuilding at a new generation, which the serving host
// sees in its assignments and rebuilds. Sets with the least redundancy
// left go first. A member no chunkserver can take is said once
// (replace_blocked) and retried every tick.
func (s *Server) replaceMembers(ctx context.Context, conn *pgx.Conn) error {
	var evs []event
	var gen int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		evs, gen = nil, 0
		type due struct {
			chunk, volume, layout, server, failed string
			volumeID, size, serverID, diskID      int64
			set, member, healthy                  int
			silent                                float64
			blocked                               bool
		}
		rows, err := tx.Query(ctx, `
			SELECT c.id::text, v.name, v.layout, cs.name, c.volume_id, c.size_bytes, c.set_idx, c.member_idx,
			       (SELECT count(*) FROM chunks o JOIN chunkservers ocs ON ocs.id = o.chunkserver_id
			        WHERE o.volume_id = c.volume_id AND o.set_idx = c.set_idx AND o.member_state = 'in_sync'
			          AND ocs.last_heartbeat > now() - make_interval(secs => $2))::int,
			       extract(epoch FROM now() - cs.last_heartbeat)::float8, c.replace_blocked,
			       coalesce(c.failed_reason, ''), c.chunkserver_id, c.disk_id
			FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id JOIN volumes v ON v.id = c.volume_id
			WHERE c.member_state = 'degraded'
			  AND (cs.last_heartbeat < now() - make_interval(secs => $1) OR c.failed_reason IS NOT NULL)
			ORDER BY v.name, c.set_idx, c.member_idx
			FOR UPDATE OF c`, s.cfg.ReplaceAfter.Seconds(), s.cfg.OfflineAfter.Seconds())
		if err != nil {
			return fmt.Errorf("members to replace: %w", err)
		}
		var dues []due
		var d due
		_, err = pgx.ForEachRow(rows, []any{&d.chunk, &d.volume, &d.layout, &d.server, &d.volumeID, &d.size, &d.set, &d.member,
			&d.healthy, &d.silent, &d.blocked, &d.failed, &d.serverID, &d.diskID}, func() error {
			dues = append(dues, d)
			return nil
		})
		if err != nil || len(dues) == 0 {
			return err
		}
		// Least redundancy left first: in-sync members beyond what the
		// set needs.
		spare := func(d due) int {
			l, err := api.ParseLayout(d.layout)
			if err != nil {
				return d.healthy
			}
			return d.healthy - l.DataChunks()
		}
		slices.SortStableFunc(dues, func(a, b due) int { return cmp.Compare(spare(a), spare(b)) })
		cands, err := s.st.candidates(ctx, tx)
		if err != nil {
			return err
		}
		replaced := 0
		for _, d := range dues {
			if replaced == maxReplacementsPerTick {
				break
			}
			subject := fmt.Sprintf("volume/%s/set/%d/member/%d", d.volume, d.set, d.member)
			used, err := setDomains(ctx, tx, d.volumeID, d.set, d.chunk)
			if err != nil {
				return fmt.Errorf("fault domains of %s: %w", subject, err)
			}
			// Not onto the disk whose chunk failed.
			avail := cands
			if d.failed != "" {
				avail = withoutDisk(cands, d.diskID)
			}
			p, ok := placeReplacement(d.size, avail, used)
			if !ok {
				if !d.blocked {
					if _, err := tx.Exec(ctx, `UPDATE chunks SET replace_blocked = true WHERE id = $1::uuid`, d.chunk); err != nil {
						return err
					}
					evs = append(evs, event{Kind: api.EventReplaceBlocked, Subject: subject, Volume: d.volume, Server: d.server,
						Message: fmt.Sprintf("member %d of set %d (chunk %s on chunkserver %s, %s) cannot be replaced: no online chunkserver with a disk in a fault domain the set does not use (%d in use); retrying",
							d.member, d.set, d.chunk, d.server, whyLong(d.failed, d.silent, s.cfg.ReplaceAfter), len(used))})
				}
				continue
			}
			if gen == 0 {
				if gen, _, err = bumpGeneration(ctx, tx); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, `
				UPDATE chunks SET state = 'deleting', volume_id = NULL, set_idx = NULL, member_idx = NULL
				WHERE id = $1::uuid`, d.chunk); err != nil {
				return fmt.Errorf("retire %s: %w", subject, err)
			}
			why := fmt.Sprintf("offline for %s", time.Duration(d.silent*float64(time.Second)).Round(time.Second))
			if d.failed != "" {
				why = "its chunk failed: " + d.failed
			}
			reason := fmt.Sprintf("replaces chunk %s on chunkserver %s, %s", d.chunk, d.server, why)
			var newChunk, newServer string
			err = tx.QueryRow(ctx, `
				INSERT INTO chunks (chunkserver_id, disk_id, volume_id, set_idx, member_idx, size_bytes,
				                    member_state, member_state_gen, member_error)
				VALUES ($1, $2, $3, $4, $5, $6, 'rebuilding', $7, $8)
				RETURNING id::text, (SELECT name FROM chunkservers WHERE id = $1)`,
				p.ChunkserverID, p.DiskID, d.volumeID, d.set, d.member, d.size, gen, reason).Scan(&newChunk, &newServer)
			if err != nil {
				return fmt.Errorf("replace %s: %w", subject, err)
			}
			takeDisk(cands, p.DiskID)
			evs = append(evs, event{Kind: api.EventMemberReplaced, Subject: subject, Volume: d.volume, Server: d.server,
				Message: fmt.Sprintf("member %d of set %d: chunk %s on chunkserver %s (%s) is replaced by chunk %s on chunkserver %s, which is being rebuilt",
					d.member, d.set, d.chunk, d.server, whyLong(d.failed, d.silent, s.cfg.ReplaceAfter), newChunk, newServer)})
			replaced++
		}
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return fmt.Errorf("replace members: %w", err)
	}
	s.loopDone(gen, evs, slog.LevelWarn)
	return nil
}

// loopDone makes the generation a loop of the leader committed (0: none)
// known to this metaserver's long polls, and logs the loop's events.
func (s *Server) loopDone(gen int64, evs []event, level slog.Level) {
	if gen != 0 {
		s.gens.observe(gen)
	}
	for _, e := range evs {
		s.log.Log(context.Background(), level, "event", "kind", e.Kind, "subject", e.Subject, "message", e.Message)
	}
}

// setDomains returns the fault domains (a chunkserver without one is its
// own) of the members of set set of a volume, but chunk except's.
func setDomains(ctx context.Context, tx pgx.Tx, volumeID int64, set int, except string) (map[string]bool, error) {
	rows, err := tx.Query(ctx, `
		SELECT coalesce(nullif(cs.fault_domain, ''), cs.name) FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id
		WHERE c.volume_id = $1 AND c.set_idx = $2 AND c.id <> $3::uuid`, volumeID, set, except)
	if err != nil {
		return nil, err
	}
	domains, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	for _, dom := range domains {
		used[dom] = true
	}
	return used, nil
}

// takeDisk counts a chunk just placed on disk id among cands, for the
// next placement of the same transaction.
func takeDisk(cands []candidate, id int64) {
	for i := range cands {
		for j := range cands[i].Disks {
			if cands[i].Disks[j].ID == id {
				cands[i].Disks[j].ActiveChunks++
			}
		}
	}
}

// whyLong says why a member is replaced: its chunk failed, or its
// chunkserver has been offline for silent seconds, over replaceAfter.
func whyLong(failed string, silent float64, replaceAfter time.Duration) string {
	if failed != "" {
		return "its chunk failed on its chunkserver: " + failed
	}
	return fmt.Sprintf("offline for %s, for over %v", time.Duration(silent*float64(time.Second)).Round(time.Second), replaceAfter)
}

// withoutDisk is cands without disk id.
func withoutDisk(cands []candidate, id int64) []candidate {
	out := make([]candidate, 0, len(cands))
	for _, c := range cands {
		c.Disks = slices.DeleteFunc(slices.Clone(c.Disks), func(d candidateDisk) bool { return d.ID == id })
		out = append(out, c)
	}
	return out
}

// failoverHosts attaches every volume whose host has had no heartbeat for
// HostFailoverAfter to the live host (heartbeat within OfflineAfter) with
// the fewest volumes, as chunkraid volume attach does: the epoch is bumped,
// so the new host fences the members before it reads their LOG bitmaps
// (DESIGN §2 rule 2) and a zombie of the old host cannot write again. A
// volume no live host can take is said once (host_failover_blocked) and
// retried every tick.
func (s *Server) failoverHosts(ctx context.Context, conn *pgx.Conn) error {
	var evs []event
	var gen int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		evs, gen = nil, 0
		type lost struct {
			id             int64
			name, host     string
			silent         float64
			clean, blocked bool
		}
		rows, err := tx.Query(ctx, `
			SELECT v.id, v.name, h.name, extract(epoch FROM now() - h.last_heartbeat)::float8, v.clean_detach, v.failover_blocked
			FROM volumes v JOIN hosts h ON h.id = v.host_id
			WHERE h.last_heartbeat < now() - make_interval(secs => $1)
			ORDER BY v.name
			FOR UPDATE OF v`, s.cfg.HostFailoverAfter.Seconds())
		if err != nil {
			return fmt.Errorf("volumes of lost hosts: %w", err)
		}
		var dues []lost
		var d lost
		_, err = pgx.ForEachRow(rows, []any{&d.id, &d.name, &d.host, &d.silent, &d.clean, &d.blocked}, func() error {
			dues = append(dues, d)
			return nil
		})
		if err != nil || len(dues) == 0 {
			return err
		}
		type live struct {
			id      int64
			name    string
			volumes int
		}
		hrows, err := tx.Query(ctx, `
			SELECT h.id, h.name, (SELECT count(*) FROM volumes v WHERE v.host_id = h.id)::int
			FROM hosts h WHERE h.last_heartbeat > now() - make_interval(secs => $1)
			ORDER BY h.name`, s.cfg.OfflineAfter.Seconds())
		if err != nil {
			return fmt.Errorf("live hosts: %w", err)
		}
		var hosts []live
		var h live
		if _, err := pgx.ForEachRow(hrows, []any{&h.id, &h.name, &h.volumes}, func() error {
			hosts = append(hosts, h)
			return nil
		}); err != nil {
			return fmt.Errorf("live hosts: %w", err)
		}
		for _, d := range dues {
			silent := time.Duration(d.silent * float64(time.Second)).Round(time.Second)
			subject := "volume/" + d.name
			if len(hosts) == 0 {
				if !d.blocked {
					if _, err := tx.Exec(ctx, `UPDATE volumes SET failover_blocked = true WHERE id = $1`, d.id); err != nil {
						return err
					}
					evs = append(evs, event{Kind: api.EventHostFailoverBlocked, Subject: subject, Volume: d.name, Server: d.host,
						Message: fmt.Sprintf("host %s has had no heartbeat for %s (failover after %v) and no live host can take volume %s; retrying",
							d.host, silent, s.cfg.HostFailoverAfter, d.name)})
				}
				continue
			}
			// The live host with the fewest volumes, the first by name
			// of those.
			best := 0
			for i := range hosts {
				if hosts[i].volumes < hosts[best].volumes {
					best = i
				}
			}
			to := &hosts[best]
			if gen == 0 {
				if gen, _, err = bumpGeneration(ctx, tx); err != nil {
					return err
				}
			}
			var epoch int64
			err := tx.QueryRow(ctx, `
				UPDATE volumes SET host_id = $2, epoch = epoch + 1, clean_detach = false, failover_blocked = false
				WHERE id = $1 RETURNING epoch`, d.id, to.id).Scan(&epoch)
			if err != nil {
				return fmt.Errorf("fail over volume %s: %w", d.name, err)
			}
			to.volumes++
			how := "recovers it from the LOG bitmaps"
			if d.clean {
				how = "opens it (host " + d.host + " had detached it cleanly)"
			}
			evs = append(evs, event{Kind: api.EventHostFailover, Subject: subject, Volume: d.name, Server: to.name,
				Message: fmt.Sprintf("host %s has had no heartbeat for %s (failover after %v): volume %s is attached to host %s at epoch %d, which %s",
					d.host, silent, s.cfg.HostFailoverAfter, d.name, to.name, epoch, how)})
		}
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return fmt.Errorf("host failover: %w", err)
	}
	s.loopDone(gen, evs, slog.LevelWarn)
	return nil
}
