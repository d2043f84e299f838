package metaserver

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// maxMovesPerServer bounds the members of one draining chunkserver being
// moved at once: each is a rebuild its volume's host runs.
const maxMovesPerServer = 4

// drainMembers moves the set members of draining chunkservers, without
// ever lowering a set's redundancy: a member gets a successor, a new chunk
// on another online chunkserver in a fault domain the rest of the set does
// not use, added to the set as an extra member being rebuilt (the serving
// host copies the data onto it while writes go to every member). Once the
// successor is in sync it takes the member's place and the old chunk is
// deleted. Only sets whose members are all in sync start a move; a
// draining chunkserver that holds no member any more is said drained once.
func (s *Server) drainMembers(ctx context.Context, conn *pgx.Conn) error {
	var evs []event
	var gen int64
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		evs, gen = nil, 0
		bump := func() error {
			if gen != 0 {
				return nil
			}
			var err error
			gen, _, err = bumpGeneration(ctx, tx)
			return err
		}
		// Successors in sync take their member's place.
		type done struct {
			newID, oldID, volume, from, to string
			set, member                    int
		}
		rows, err := tx.Query(ctx, `
			SELECT n.id::text, o.id::text, v.name, ocs.name, ncs.name, o.set_idx, o.member_idx
			FROM chunks n JOIN chunks o ON o.id = n.replaces AND o.volume_id = n.volume_id AND o.set_idx = n.set_idx
			JOIN volumes v ON v.id = n.volume_id
			JOIN chunkservers ocs ON ocs.id = o.chunkserver_id JOIN chunkservers ncs ON ncs.id = n.chunkserver_id
			WHERE n.member_state = 'in_sync'
			FOR UPDATE OF n, o`)
		if err != nil {
			return fmt.Errorf("moved members: %w", err)
		}
		var dones []done
		var d done
		if _, err := pgx.ForEachRow(rows, []any{&d.newID, &d.oldID, &d.volume, &d.from, &d.to, &d.set, &d.member}, func() error {
			dones = append(dones, d)
			return nil
		}); err != nil {
			return fmt.Errorf("moved members: %w", err)
		}
		for _, d := range dones {
			if err := bump(); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `
				UPDATE chunks SET state = 'deleting', volume_id = NULL, set_idx = NULL, member_idx = NULL WHERE id = $1::uuid`, d.oldID); err != nil {
				return fmt.Errorf("retire a moved member: %w", err)
			}
			if _, err := tx.Exec(ctx, `
				UPDATE chunks SET member_idx = $2, replaces = NULL, member_error = '', member_state_gen = $3 WHERE id = $1::uuid`,
				d.newID, d.member, gen); err != nil {
				return fmt.Errorf("seat a successor: %w", err)
			}
			evs = append(evs, event{Kind: api.EventMemberMoved, Subject: fmt.Sprintf("volume/%s/set/%d/member/%d", d.volume, d.set, d.member),
				Volume: d.volume, Server: d.from,
				Message: fmt.Sprintf("member %d of set %d moved off draining chunkserver %s: chunk %s on %s, rebuilt and in sync, takes the place of chunk %s, which is deleted",
					d.member, d.set, d.from, d.newID, d.to, d.oldID)})
		}

		// Members to move: on a draining chunkserver, in a set whose members
		// are all in sync, without a successor yet.
		type move struct {
			chunk, volume, server string
			volumeID, size        int64
			set, member, next     int
		}
		rows, err = tx.Query(ctx, `
			SELECT c.id::text, v.name, cs.name, c.volume_id, c.size_bytes, c.set_idx, c.member_idx,
			       (SELECT max(m.member_idx) + 1 FROM chunks m WHERE m.volume_id = c.volume_id AND m.set_idx = c.set_idx)
			FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id JOIN volumes v ON v.id = c.volume_id
			WHERE cs.draining
			  AND NOT EXISTS (SELECT 1 FROM chunks s WHERE s.replaces = c.id AND s.volume_id IS NOT NULL)
			  AND NOT EXISTS (SELECT 1 FROM chunks m WHERE m.volume_id = c.volume_id AND m.set_idx = c.set_idx AND m.member_state <> 'in_sync')
			ORDER BY cs.name, v.name, c.set_idx
			FOR UPDATE OF c`)
		if err != nil {
			return fmt.Errorf("members to move: %w", err)
		}
		var moves []move
		var m move
		if _, err := pgx.ForEachRow(rows, []any{&m.chunk, &m.volume, &m.server, &m.volumeID, &m.size, &m.set, &m.member, &m.next}, func() error {
			moves = append(moves, m)
			return nil
		}); err != nil {
			return fmt.Errorf("members to move: %w", err)
		}
		if len(moves) > 0 {
			moving := map[string]int{}
			mrows, err := tx.Query(ctx, `
				SELECT cs.name, count(*)::int FROM chunks n JOIN chunks o ON o.id = n.replaces JOIN chunkservers cs ON cs.id = o.chunkserver_id
				WHERE n.volume_id IS NOT NULL GROUP BY cs.name`)
			if err != nil {
				return fmt.Errorf("members moving: %w", err)
			}
			var name string
			var n int
			if _, err := pgx.ForEachRow(mrows, []any{&name, &n}, func() error { moving[name] = n; return nil }); err != nil {
				return fmt.Errorf("members moving: %w", err)
			}
			cands, err := s.st.candidates(ctx, tx)
			if err != nil {
				return err
			}
			for _, m := range moves {
				if moving[m.server] >= maxMovesPerServer {
					continue
				}
				used, err := setDomains(ctx, tx, m.volumeID, m.set, m.chunk)
				if err != nil {
					return fmt.Errorf("fault domains: %w", err)
				}
				p, ok := placeReplacement(m.size, cands, used)
				if !ok {
					continue // no room now: tried again next tick
				}
				if err := bump(); err != nil {
					return err
				}
				var newChunk, newServer string
				err = tx.QueryRow(ctx, `
					INSERT INTO chunks (chunkserver_id, disk_id, volume_id, set_idx, member_idx, size_bytes,
					                    member_state, member_state_gen, member_error, replaces)
					VALUES ($1, $2, $3, $4, $5, $6, 'rebuilding', $7, $8, $9::uuid)
					RETURNING id::text, (SELECT name FROM chunkservers WHERE id = $1)`,
					p.ChunkserverID, p.DiskID, m.volumeID, m.set, m.next, m.size, gen,
					fmt.Sprintf("takes the place of chunk %s on draining chunkserver %s once rebuilt", m.chunk, m.server), m.chunk).Scan(&newChunk, &newServer)
				if err != nil {
					return fmt.Errorf("place a successor: %w", err)
				}
				takeDisk(cands, p.DiskID)
				moving[m.server]++
				evs = append(evs, event{Kind: api.EventMemberMoving, Subject: fmt.Sprintf("volume/%s/set/%d/member/%d", m.volume, m.set, m.member),
					Volume: m.volume, Server: m.server,
					Message: fmt.Sprintf("member %d of set %d (chunk %s) moves off draining chunkserver %s: chunk %s on %s is being rebuilt beside it",
						m.member, m.set, m.chunk, m.server, newChunk, newServer)})
			}
		}

		// Drained: draining, and no member left.
		drows, err := tx.Query(ctx, `
			UPDATE chunkservers cs SET drain_done = true
			WHERE cs.draining AND NOT cs.drain_done
			  AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.chunkserver_id = cs.id AND c.volume_id IS NOT NULL)
			RETURNING cs.name`)
		if err != nil {
			return fmt.Errorf("drained chunkservers: %w", err)
		}
		drained, err := pgx.CollectRows(drows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("drained chunkservers: %w", err)
		}
		for _, name := range drained {
			evs = append(evs, event{Kind: api.EventChunkserverDrained, Subject: "chunkserver/" + name, Server: name,
				Message: fmt.Sprintf("chunkserver %s is drained: it holds no set member; stop it and remove it (chunkraid server remove %s)", name, name)})
		}
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	s.loopDone(gen, evs, slog.LevelInfo)
	return nil
}
