package metaserver

import (
	"context"
	"fmt"
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
	s.log.Info("leading: running the failure detector")
	for tick := 0; ; tick++ {
		if err := s.detectFailures(ctx, conn); err != nil {
			return err
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
// change.
func (s *Server) detectFailures(ctx context.Context, conn *pgx.Conn) error {
	var evs []event
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		evs = nil
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
		_, err = pgx.ForEachRow(rows, []any{&name, &offline, &silent, &members}, func() error {
			e := event{Subject: "chunkserver/" + name}
			if offline {
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
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return err
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
