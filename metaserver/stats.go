package metaserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// volumeStats answers the latest figures the volume's host reported.
func (s *Server) volumeStats(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.volumeStats(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, out)
}

func (st *store) volumeStats(ctx context.Context, name string) (*api.VolumeStatsReport, error) {
	out := &api.VolumeStatsReport{Volume: name}
	err := st.read(ctx, func(tx pgx.Tx) error {
		var host *string
		var at *time.Time
		var stats *api.VolumeStats
		err := tx.QueryRow(ctx, `
			SELECT s.host, s.reported_at, s.stats FROM volumes v LEFT JOIN volume_stats s ON s.volume_id = v.id
			WHERE v.name = $1`, name).Scan(&host, &at, &stats)
		if errors.Is(err, pgx.ErrNoRows) {
			return api.Errorf(api.CodeNotFound, "volume %q does not exist", name)
		}
		if err != nil {
			return fmt.Errorf("volume stats: %w", err)
		}
		if host != nil {
			out.Host, out.ReportedAt, out.Stats = *host, at, stats
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
