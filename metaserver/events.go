package metaserver

import (
	"context"
	"fmt"
	"net/http"
	"regexp"

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
	Server  string // the chunkserver (or host) it concerns, "" for none
	Bytes   int64  // what a resync or rebuild copied, 0 for none
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
	servers := make([]string, len(evs))
	bytes := make([]int64, len(evs))
	messages := make([]string, len(evs))
	for i, e := range evs {
		kinds[i], subjects[i], volumes[i], servers[i], bytes[i], messages[i] = e.Kind, e.Subject, e.Volume, e.Server, e.Bytes, e.Message
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO events (kind, subject, volume, server, bytes, message)
		SELECT k, s, nullif(v, ''), nullif(sv, ''), nullif(b, 0), m
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
		WITH ORDINALITY AS u(k, s, v, sv, b, m, n) ORDER BY n`, kinds, subjects, volumes, servers, bytes, messages)
	if err != nil {
		return fmt.Errorf("record events: %w", err)
	}
	return nil
}

var eventKindRE = regexp.MustCompile(`^[a-z_]{1,64}$`)

// eventFilter keeps the events of one volume, kind or server (each "" for
// any).
type eventFilter struct{ volume, kind, server string }

// listEvents returns events oldest first: with after > 0 the first limit
// events after that ID, otherwise the newest limit events, of those f
// keeps.
func (st *store) listEvents(ctx context.Context, f eventFilter, after int64, limit int) ([]api.Event, error) {
	var out []api.Event
	const cols = `id, time, kind, subject, coalesce(volume, ''), coalesce(server, ''), coalesce(bytes, 0), message`
	const match = `($1::text = '' OR volume = $1) AND ($2::text = '' OR kind = $2) AND ($3::text = '' OR server = $3)`
	err := st.read(ctx, func(tx pgx.Tx) error {
		var (
			rows pgx.Rows
			err  error
		)
		if after > 0 {
			rows, err = tx.Query(ctx, `
				SELECT `+cols+` FROM events WHERE id > $4 AND `+match+`
				ORDER BY id LIMIT $5`, f.volume, f.kind, f.server, after, limit)
		} else {
			rows, err = tx.Query(ctx, `
				SELECT * FROM (
					SELECT `+cols+` FROM events WHERE `+match+`
					ORDER BY id DESC LIMIT $4) newest
				ORDER BY id`, f.volume, f.kind, f.server, limit)
		}
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Event, error) {
			var e api.Event
			err := row.Scan(&e.ID, &e.Time, &e.Kind, &e.Subject, &e.Volume, &e.Server, &e.Bytes, &e.Message)
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
	f := eventFilter{volume: q.Get("volume"), kind: q.Get("kind"), server: q.Get("server")}
	limit, after, err := parseEventQuery(q.Get("limit"), q.Get("after"), f.volume)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if f.kind != "" && !eventKindRE.MatchString(f.kind) {
		s.writeError(w, r, invalid("kind=%q is not an event kind (lower-case letters and _, e.g. member_degraded)", f.kind))
		return
	}
	if f.server != "" {
		if err := validateServerName("server", f.server); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	out, err := s.st.listEvents(r.Context(), f, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}
