package metaserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// A volume's I/O limits (api.QoS) are one JSON column of its row. Setting
// them bumps the generation like any change of a volume, so its host's
// long poll returns and the host applies them to the running volume
// without a detach; a volume_qos_changed event records each change.

func qosEvent(volume, msg string) event {
	return event{Kind: api.EventVolumeQoSChanged, Subject: "volume/" + volume, Volume: volume, Message: msg}
}

func (s *Server) setVolumeQoS(w http.ResponseWriter, r *http.Request) {
	var q api.QoS
	if err := decode(w, r, &q); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := q.Normalize(); err != nil {
		s.writeError(w, r, err)
		return
	}
	if q.IsZero() {
		s.writeError(w, r, invalid("no limit given: to remove a volume's limits, DELETE its qos (chunkraid volume qos NAME --clear)"))
		return
	}
	name := chi.URLParam(r, "name")
	v, err := s.st.setQoS(r.Context(), name, q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume qos set", "name", name, "qos", q.String())
	s.writeJSON(w, http.StatusOK, v)
}

func (s *Server) clearVolumeQoS(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if _, err := s.st.setQoS(r.Context(), name, api.QoS{}); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume qos cleared", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

// setQoS replaces the I/O limits of a volume by q (normalized; zero
// removes them). Setting the limits it has changes nothing.
func (st *store) setQoS(ctx context.Context, name string, q api.QoS) (*api.Volume, error) {
	var out *api.Volume
	load := func(tx pgx.Tx, id int64) (err error) {
		out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name})
		return err
	}
	err := st.mutate(ctx, func(tx pgx.Tx, _ int64) error {
		var (
			id  int64
			old api.QoS
		)
		err := tx.QueryRow(ctx, `SELECT id, qos FROM volumes WHERE name = $1 FOR UPDATE`, name).Scan(&id, &old)
		if err != nil {
			return notFound(err, "volume %q does not exist", name)
		}
		if old == q {
			if err := load(tx, id); err != nil {
				return err
			}
			return errUnchanged
		}
		if _, err := tx.Exec(ctx, `UPDATE volumes SET qos = $2 WHERE id = $1`, id, q); err != nil {
			return fmt.Errorf("store qos: %w", err)
		}
		if err := load(tx, id); err != nil {
			return err
		}
		msg := fmt.Sprintf("I/O limits set: %s (were %s)", q, old)
		if q.IsZero() {
			msg = fmt.Sprintf("I/O limits removed (were %s)", old)
		}
		return addEvents(ctx, tx, qosEvent(name, msg))
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return nil, err
	}
	return out, nil
}
