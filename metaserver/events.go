package metaserver

import (
	"context"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// The event log: one row per state change of the cluster, written in the
// transaction that makes the change, so an event exists exactly when its
// change committed.

const (
	// defaultEventLimit is the number of events a listing returns without
	// ?limit=.
	defaultEventLimit = 100
	// keptEvents is how many of the newest events the leader keeps; older
	// ones are pruned.
	keptEvents = 100_000
)

// event is an event row before it is written.
type event struct {
	Kind    string
	Subject string // e.g. volume/v1/set/0/member/1, chunkserver/cs1
	Volume  string // the volume it is about, "" for none
	Message string
}

// addEvents writes events in tx, in order.
func addEvents(ctx context.Context, tx pgx.Tx, evs ...event) error {
	if len(evs) == 0 {
		return nil
	}
	kinds := make([]string, len(evs))
	subjects := make([]string, len(evs))
	volumes := make([]string, len(evs))
	messages := make([]string, len(evs))
	for i, e := range evs {
		kinds[i], subjects[i], volumes[i], messages[i] = e.Kind, e.Subject, e.Volume, e.Message
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO events (kind, subject, volume, message)
		SELECT k, s, nullif(v, ''), m FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
		WITH ORDINALITY AS u(k, s, v, m, n) ORDER BY n`, kinds, subjects, volumes, messages)
	if err != nil {
		return fmt.Errorf("record events: %w", err)
	}
	return nil
}

// listEvents returns events oldest first: with after > 0 the first limit
// events after that ID, otherwise the newest limit events. volume != ""
// keeps that volume's events.
func (st *store) listEvents(ctx context.Context, volume string, after int64, limit int) ([]api.Event, error) {
	var out []api.Event
	err := st.read(ctx, func(tx pgx.Tx) error {
		var (
			rows pgx.Rows
			err  error
		)
		if after > 0 {
			rows, err = tx.Query(ctx, `
				SELECT id, time, kind, subject, message FROM events
				WHERE id > $1 AND ($2::text = '' OR volume = $2)
				ORDER BY id LIMIT $3`, after, volume, limit)
		} else {
			rows, err = tx.Query(ctx, `
				SELECT * FROM (
					SELECT id, time, kind, subject, message FROM events
					WHERE $1::text = '' OR volume = $1
					ORDER BY id DESC LIMIT $2) newest
				ORDER BY id`, volume, limit)
		}
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Event, error) {
			var e api.Event
			err := row.Scan(&e.ID, &e.Time, &e.Kind, &e.Subject, &e.Message)
			return e, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

// pruneEvents deletes all but about the newest keep events.
func pruneEvents(ctx context.Context, conn *pgx.Conn, keep int64) error {
	_, err := conn.Exec(ctx, `DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - $1`, keep)
	return err
}

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	volume := q.Get("volume")
	limit, after, err := parseEventQuery(q.Get("limit"), q.Get("after"), volume)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := s.st.listEvents(r.Context(), volume, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}
