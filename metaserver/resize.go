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

// resizeVolume grows a volume to req.SizeBytes online: the last set takes
// what fits in its chunks, and new sets, placed as for a new volume (and
// under the same capacity guard), are appended for the rest. The serving
// host picks the new size and sets up at its next assignment. A volume
// never shrinks: its data would go.
func (s *Server) resizeVolume(w http.ResponseWriter, r *http.Request) {
	var req api.ResizeVolumeRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateVolumeSize(req.SizeBytes); err != nil {
		s.writeError(w, r, err)
		return
	}
	name := chi.URLParam(r, "name")
	v, err := s.st.resizeVolume(r.Context(), name, req.SizeBytes)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume resized", "name", name, "size", v.SizeBytes, "sets", len(v.Sets))
	s.writeJSON(w, http.StatusOK, v)
}

func (st *store) resizeVolume(ctx context.Context, name string, size int64) (*api.Volume, error) {
	var out *api.Volume
	err := st.mutate(ctx, func(tx pgx.Tx, chunkSize int64) error {
		var id, old int64
		var layout string
		var sets int64
		err := tx.QueryRow(ctx, `
			SELECT v.id, v.size_bytes, v.layout, (SELECT count(*) FROM sets WHERE volume_id = v.id)
			FROM volumes v WHERE v.name = $1 FOR UPDATE`, name).Scan(&id, &old, &layout, &sets)
		if errors.Is(err, pgx.ErrNoRows) {
			return api.Errorf(api.CodeNotFound, "volume %q does not exist", name)
		}
		if err != nil {
			return fmt.Errorf("resize: %w", err)
		}
		switch {
		case size < old:
			return invalid("volume %q is %s: shrinking is not supported (the data past %s would be lost); create a smaller volume and copy what it needs",
				name, describeSize(old), describeSize(size))
		case size == old:
			out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name})
			return err
		}
		l, err := api.ParseLayout(layout)
		if err != nil {
			return err
		}
		setSize := int64(l.DataChunks()) * chunkSize
		want := setCount(size, setSize)
		if want > maxSets {
			return invalid("a volume of %s needs %d sets of %s: at most %d are allowed", describeSize(size), want, describeSize(setSize), maxSets)
		}
		add := want - sets
		if add > 0 {
			cp, err := st.capacity(ctx, tx)
			if err != nil {
				return err
			}
			if need, avail := add*int64(l.Width())*chunkSize, cp.provisionable(st.overcommit); need > avail {
				return api.Errorf(api.CodeUnsatisfiable,
					"growing volume %q to %s needs %d more sets: %s of raw space, but only %s more can be provisioned "+
						"(%s free on the online chunkservers × overcommit %g, less %s promised to existing chunks and not yet written); "+
						"add chunkservers, delete volumes, or start the metaserver with a higher --overcommit",
					name, describeSize(size), add, approxSize(need), approxSize(avail), approxSize(cp.free), st.overcommit,
					approxSize(max(0, cp.provisioned-cp.allocated)))
			}
			cands, err := st.candidates(ctx, tx)
			if err != nil {
				return err
			}
			plan, err := place(l, int(add), chunkSize, cands)
			if err != nil {
				return err
			}
			if err := insertSets(ctx, tx, id, int(sets), plan, chunkSize, setSize, size); err != nil {
				return err
			}
		}
		// Every set holds setSize but the last, which holds the rest.
		_, err = tx.Exec(ctx, `UPDATE sets SET size_bytes = least($2::bigint, $3::bigint - idx::bigint * $2::bigint) WHERE volume_id = $1`,
			id, setSize, size)
		if err != nil {
			return fmt.Errorf("resize sets: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE volumes SET size_bytes = $2 WHERE id = $1`, id, size); err != nil {
			return fmt.Errorf("resize volume: %w", err)
		}
		out, err = st.loadVolume(ctx, tx, volumeFilter{id: id, name: name})
		if err != nil {
			return err
		}
		return addEvents(ctx, tx, event{Kind: api.EventVolumeResized, Subject: "volume/" + name, Volume: name,
			Message: fmt.Sprintf("resized from %s to %s: %d sets (%d new)", describeSize(old), describeSize(size), want, max(add, 0))})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
