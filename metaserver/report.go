package metaserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Host reports: a host tells the metaserver how the members of the volumes
// it serves are doing. The metaserver stores what it is told and records an
// event for every member state change; it does not judge the states itself.

func (s *Server) hostReport(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("host", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var rep api.HostReport
	if err := decode(w, r, &rep); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateHostReport(&rep); err != nil {
		s.writeError(w, r, err)
		return
	}
	stale, evs, err := s.st.hostReport(r.Context(), id, rep)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	for _, e := range evs {
		s.log.Info("event", "kind", e.Kind, "subject", e.Subject, "message", e.Message)
	}
	if len(stale) > 0 {
		msg := strings.Join(stale, "; ") + ": this host no longer holds it, stop serving it"
		if len(stale) < len(rep.Volumes) {
			msg += " (the rest of the report was stored)"
		}
		s.log.Warn("report from a host about volumes it no longer holds", "host_id", id, "stale", stale)
		s.writeError(w, r, api.Errorf(api.CodeConflict, "%s", msg))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// hostReport stores the report of host id in one transaction. A volume the
// host does not hold at the reported epoch is left alone and described in
// stale; the others are stored. It returns the events it recorded.
func (st *store) hostReport(ctx context.Context, id int64, rep api.HostReport) (stale []string, evs []event, err error) {
	vols := slices.Clone(rep.Volumes)
	// Lock volumes in name order, as every report does: two reports never
	// wait on each other in a cycle.
	slices.SortFunc(vols, func(a, b api.VolumeReport) int { return cmp.Compare(a.Name, b.Name) })
	err = pgx.BeginTxFunc(ctx, st.db, pgx.TxOptions{}, func(tx pgx.Tx) error {
		stale, evs = nil, nil
		var host string
		if err := tx.QueryRow(ctx, `SELECT name FROM hosts WHERE id = $1`, id).Scan(&host); err != nil {
			return notFound(err, "host %d is not registered: register again", id)
		}
		for _, vr := range vols {
			reason, ve, err := applyVolumeReport(ctx, tx, id, host, vr)
			if err != nil {
				return err
			}
			if reason != "" {
				stale = append(stale, reason)
				continue
			}
			evs = append(evs, ve...)
		}
		return addEvents(ctx, tx, evs...)
	})
	if err != nil {
		return nil, nil, err
	}
	return stale, evs, nil
}

// reportedMember is a member's row as a report finds it.
type reportedMember struct {
	Set, Index  int
	Chunkserver string
	State       string
	DoneBytes   int64
	StateGen    int64     // the metaserver's own mark (chunks.member_state_gen)
	Since       time.Time // in State since
}

// reportAfter reports whether report (inc, seq) is newer than the stored
// (lastInc, lastSeq).
func reportAfter(inc, seq, lastInc, lastSeq int64) bool {
	if inc != lastInc {
		return inc > lastInc
	}
	return seq > lastSeq
}

// applyVolumeReport stores the report of one volume of host hostID (named
// host). If the host does not hold the volume at the reported epoch, or the
// report names members the volume does not have, it changes nothing and
// returns why. A report numbered no higher than the last one applied for
// the volume at this epoch is older than the stored state: it changes
// nothing and is not refused.
func applyVolumeReport(ctx context.Context, tx pgx.Tx, hostID int64, host string, vr api.VolumeReport) (string, []event, error) {
	var (
		volumeID int64
		holderID *int64
		holder   string
		epoch    int64
		clean    bool
		repEpoch int64
		repInc   int64
		repSeq   int64
		hostInc  int64
	)
	err := tx.QueryRow(ctx, `
		SELECT v.id, v.host_id, coalesce(h.name, ''), v.epoch, v.clean_detach, v.report_epoch,
			v.report_incarnation, v.report_seq, coalesce(h.incarnation, 0)
		FROM volumes v LEFT JOIN hosts h ON h.id = v.host_id
		WHERE v.name = $1 FOR UPDATE OF v`, vr.Name).Scan(&volumeID, &holderID, &holder, &epoch, &clean, &repEpoch,
		&repInc, &repSeq, &hostInc)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Sprintf("volume %q does not exist any more", vr.Name), nil, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("load volume %q: %w", vr.Name, err)
	}
	switch {
	case holderID == nil:
		return fmt.Sprintf("volume %q is attached to no host", vr.Name), nil, nil
	case *holderID != hostID:
		return fmt.Sprintf("volume %q is attached to host %s at epoch %d", vr.Name, holder, epoch), nil, nil
	case epoch != vr.Epoch:
		return fmt.Sprintf("volume %q was attached again: it is at epoch %d, the report is for epoch %d", vr.Name, epoch, vr.Epoch), nil, nil
	case vr.Incarnation > hostInc:
		return fmt.Sprintf("volume %q: the report is of incarnation %d of host %s, which has only registered %d times",
			vr.Name, vr.Incarnation, holder, hostInc), nil, nil
	case vr.Seq != 0 && vr.Incarnation != 0 && vr.Incarnation < hostInc:
		// A late report of an earlier start of the host: the current one
		// reports its own state.
		return "", nil, nil
	case vr.Seq != 0 && repEpoch == epoch && !reportAfter(vr.Incarnation, vr.Seq, repInc, repSeq):
		// Older than the state stored (two reports of the host crossed):
		// not applied, and not an error, the host holds the volume.
		return "", nil, nil
	}
	if vr.Seq != 0 {
		if _, err := tx.Exec(ctx, `UPDATE volumes SET report_epoch = $2, report_incarnation = $3, report_seq = $4 WHERE id = $1`,
			volumeID, epoch, vr.Incarnation, vr.Seq); err != nil {
			return "", nil, fmt.Errorf("store report sequence of %q: %w", vr.Name, err)
		}
	}
	if vr.Stats != nil {
		_, err := tx.Exec(ctx, `
			INSERT INTO volume_stats (volume_id, host, reported_at, stats) VALUES ($1, $2, now(), $3)
			ON CONFLICT (volume_id) DO UPDATE SET host = EXCLUDED.host, reported_at = now(), stats = EXCLUDED.stats`,
			volumeID, host, vr.Stats)
		if err != nil {
			return "", nil, fmt.Errorf("store the figures of %q: %w", vr.Name, err)
		}
	}

	var sets int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM sets WHERE volume_id = $1`, volumeID).Scan(&sets); err != nil {
		return "", nil, fmt.Errorf("load sets of %q: %w", vr.Name, err)
	}
	rows, err := tx.Query(ctx, `
		SELECT c.id::text, c.set_idx, c.member_idx, cs.name, c.member_state, c.resync_done_bytes, c.member_state_gen,
		       c.member_state_since
		FROM chunks c JOIN chunkservers cs ON cs.id = c.chunkserver_id
		WHERE c.volume_id = $1`, volumeID)
	if err != nil {
		return "", nil, fmt.Errorf("load members of %q: %w", vr.Name, err)
	}
	members := map[string]reportedMember{}
	var chunk string
	var m reportedMember
	_, err = pgx.ForEachRow(rows, []any{&chunk, &m.Set, &m.Index, &m.Chunkserver, &m.State, &m.DoneBytes, &m.StateGen, &m.Since}, func() error {
		members[chunk] = m
		return nil
	})
	if err != nil {
		return "", nil, fmt.Errorf("load members of %q: %w", vr.Name, err)
	}

	recs, err := loadReconciles(ctx, tx, volumeID, epoch, vr.Incarnation)
	if err != nil {
		return "", nil, fmt.Errorf("load sets of %q: %w", vr.Name, err)
	}

	var (
		setIdx            []int32
		dirty             []int64
		ids, states, errs []string
		watermarks        []int64
		dones, totals     []int64
		evs               []event
		recRunning        []bool
		recDone, recTotal []int64
		recFinished       []int64
		fullResync        []bool
	)
	for _, sr := range vr.Sets {
		if sr.Index >= sets {
			return fmt.Sprintf("volume %q has no set %d: the host's layout is out of date", vr.Name, sr.Index), nil, nil
		}
		setIdx = append(setIdx, int32(sr.Index))
		dirty = append(dirty, sr.DirtyBytes)
		fullResync = append(fullResync, sr.FullResync)
		rc := api.SetReconcile{}
		if sr.Reconcile != nil {
			rc = *sr.Reconcile
		}
		recRunning, recDone, recTotal, recFinished = append(recRunning, rc.Running), append(recDone, rc.DoneBytes),
			append(recTotal, rc.TotalBytes), append(recFinished, rc.Finished)
		evs = append(evs, reconcileEvents(vr.Name, sr.Index, recs[sr.Index], rc)...)
		for _, mr := range sr.Members {
			old, ok := members[mr.ChunkID]
			if !ok || old.Set != sr.Index {
				return fmt.Sprintf("set %d of volume %q has no member chunk %s: the host's layout is out of date", sr.Index, vr.Name, mr.ChunkID), nil, nil
			}
			if old.State == api.MemberRebuilding && (mr.State == api.MemberDegraded || mr.State == api.MemberResyncing) {
				// A new chunk stays rebuilding until a rebuild completes: a
				// next host must rebuild it, not merely resync it.
				mr.State = api.MemberRebuilding
			}
			if old.State != api.MemberRebuilding && mr.State == api.MemberRebuilding {
				continue // only a replacement is rebuilding: a report of older assignments
			}
			if mr.State == api.MemberInSync && old.State != api.MemberInSync && old.StateGen > mr.SeenGen {
				// The metaserver marked the member at a generation the host
				// had not seen: its in_sync predates the mark. It fails the
				// member once it sees the mark, and promotes it only after
				// a resync.
				continue
			}
			ids = append(ids, mr.ChunkID)
			states = append(states, mr.State)
			watermarks = append(watermarks, mr.RebuildWatermark)
			dones = append(dones, mr.ResyncDoneBytes)
			totals = append(totals, mr.ResyncTotalBytes)
			errs = append(errs, mr.Error)
			if e, ok := memberEvent(vr.Name, old, mr); ok {
				evs = append(evs, e)
			}
		}
	}
	if len(ids) > 0 {
		_, err = tx.Exec(ctx, `
			UPDATE chunks c SET
				member_state_since = CASE WHEN c.member_state = u.state THEN c.member_state_since ELSE now() END,
				member_state = u.state, resync_done_bytes = u.done, resync_total_bytes = u.total, member_error = u.err,
				rebuild_watermark = CASE WHEN u.state = 'rebuilding' THEN GREATEST(c.rebuild_watermark, u.wm) ELSE 0 END
			FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[]) AS u(id, state, done, total, err, wm)
			WHERE c.id = u.id`, ids, states, dones, totals, errs, watermarks)
		if err != nil {
			return "", nil, fmt.Errorf("store member states of %q: %w", vr.Name, err)
		}
	}
	if len(setIdx) > 0 {
		_, err = tx.Exec(ctx, `
			UPDATE sets s SET dirty_bytes = u.dirty, reconciling = u.running, reconcile_done_bytes = u.done,
				reconcile_total_bytes = u.total, reconciles = u.finished, reconcile_epoch = $8, reconcile_incarnation = $9,
				full_resync = u.fr
			FROM unnest($2::int[], $3::bigint[], $4::bool[], $5::bigint[], $6::bigint[], $7::bigint[], $10::bool[])
				AS u(idx, dirty, running, done, total, finished, fr)
			WHERE s.volume_id = $1 AND s.idx = u.idx`, volumeID, setIdx, dirty, recRunning, recDone, recTotal, recFinished,
			epoch, vr.Incarnation, fullResync)
		if err != nil {
			return "", nil, fmt.Errorf("store dirty bytes of %q: %w", vr.Name, err)
		}
	}
	if vr.CleanDetach != clean {
		if _, err := tx.Exec(ctx, `UPDATE volumes SET clean_detach = $2 WHERE id = $1`, volumeID, vr.CleanDetach); err != nil {
			return "", nil, fmt.Errorf("store clean detach of %q: %w", vr.Name, err)
		}
		if vr.CleanDetach {
			evs = append(evs, event{Kind: api.EventVolumeDetached, Subject: "volume/" + vr.Name, Volume: vr.Name,
				Message: fmt.Sprintf("host %s detached cleanly at epoch %d: every write is on every member", host, epoch)})
		}
	}
	return "", evs, nil
}

// storedReconcile is what the metaserver last stored of a set's reconciles
// by the host run (epoch and incarnation) that reports now: nothing if the
// last report came from another.
type storedReconcile struct {
	running  bool
	finished int64
}

// loadReconciles returns the stored reconcile state of each set of a volume
// for the host run (epoch, incarnation).
func loadReconciles(ctx context.Context, tx pgx.Tx, volumeID, epoch, incarnation int64) (map[int]storedReconcile, error) {
	rows, err := tx.Query(ctx, `
		SELECT idx, reconciling, reconciles FROM sets
		WHERE volume_id = $1 AND reconcile_epoch = $2 AND reconcile_incarnation = $3`, volumeID, epoch, incarnation)
	if err != nil {
		return nil, err
	}
	out := map[int]storedReconcile{}
	var idx int
	var r storedReconcile
	_, err = pgx.ForEachRow(rows, []any{&idx, &r.running, &r.finished}, func() error {
		out[idx] = r
		return nil
	})
	return out, err
}

// reconcileEvents returns the events of a set's reconciles between what was
// stored and what the host reports: resync_started when one starts, and
// resync_done with its bytes when one finished (with a resync_started first
// if none was seen running: it ran between two reports).
func reconcileEvents(volume string, set int, old storedReconcile, rc api.SetReconcile) []event {
	subject := fmt.Sprintf("volume/%s/set/%d", volume, set)
	who := fmt.Sprintf("set %d, every member in sync,", set)
	started := event{Kind: api.EventResyncStarted, Subject: subject, Volume: volume,
		Message: fmt.Sprintf("%s is resyncing the regions an unclean stop left dirty: %s to copy", who, bytesText(rc.TotalBytes))}
	var evs []event
	switch {
	case rc.Finished > old.finished:
		if !old.running {
			evs = append(evs, started)
		}
		evs = append(evs, event{Kind: api.EventResyncDone, Subject: subject, Volume: volume,
			Message: fmt.Sprintf("%s is consistent again: the resync copied %s", who, bytesText(rc.DoneBytes))})
		if rc.Running {
			evs = append(evs, started)
		}
	case rc.Running && !old.running:
		evs = append(evs, started)
	}
	return evs
}

// memberEvent returns the event of a member's state change from old to the
// reported state, if its state changed.
func memberEvent(volume string, old reportedMember, mr api.MemberReport) (event, bool) {
	if mr.State == old.State {
		return event{}, false
	}
	e := event{
		Subject: fmt.Sprintf("volume/%s/set/%d/member/%d", volume, old.Set, old.Index),
		Volume:  volume,
		Server:  old.Chunkserver,
	}
	who := fmt.Sprintf("member %d of set %d (chunk %s on chunkserver %s)", old.Index, old.Set, mr.ChunkID, old.Chunkserver)
	switch mr.State {
	case api.MemberDegraded:
		e.Kind = api.EventMemberDegraded
		e.Message = who + " is degraded"
		if old.State == api.MemberResyncing {
			e.Message += " during its resync"
		}
		if mr.Error != "" {
			e.Message += ": " + mr.Error
		}
	case api.MemberResyncing:
		e.Kind = api.EventResyncStarted
		e.Message = who + " is resyncing"
		if mr.ResyncTotalBytes > 0 {
			e.Message += fmt.Sprintf(": %s to copy", bytesText(mr.ResyncTotalBytes))
		}
	case api.MemberRebuilding:
		return event{}, false // announced by the replacement (member_replaced)
	case api.MemberInSync:
		if old.State == api.MemberRebuilding {
			copied := mr.ResyncDoneBytes
			if copied == 0 {
				copied = old.DoneBytes
			}
			e.Kind, e.Bytes = api.EventRebuildDone, copied
			e.Message = fmt.Sprintf("%s is in sync: the rebuild copied %s", who, bytesText(copied))
			if took := time.Since(old.Since); !old.Since.IsZero() && took >= time.Second {
				e.Message += fmt.Sprintf(" in %v (%s/s)", took.Round(time.Second), approxSize(int64(float64(copied)/took.Seconds())))
			}
			break
		}
		if old.State != api.MemberResyncing {
			e.Kind = api.EventMemberInSync
			e.Message = who + " is in sync again without a resync"
			break
		}
		copied := mr.ResyncDoneBytes
		if copied == 0 {
			copied = old.DoneBytes
		}
		e.Kind, e.Bytes = api.EventResyncDone, copied
		e.Message = fmt.Sprintf("%s is in sync again: the resync copied %s", who, bytesText(copied))
	}
	return e, true
}

// bytesText formats a byte count for event messages: "39 MiB (40894464
// bytes)" or "4096 bytes".
func bytesText(n int64) string {
	const mib = 1 << 20
	if n < mib {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%.1f MiB (%d bytes)", float64(n)/mib, n)
}
