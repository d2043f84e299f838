package hostd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// recordBudget is how long the record of a degradation may take, retries
// included, while the writes that need it wait: three times t_io. With the
// t_io it took to fail the member, a degraded write waits at most 4·t_io
// (20 s with the default 5 s) before it is acknowledged or fails with a
// status the initiator retries, well inside the usual 30 s SCSI command
// timeout (DESIGN §5).
func recordBudget(tIO time.Duration) time.Duration { return 3 * tIO }

// recordDegraded runs before the set acknowledges its first write without
// a member: it pins the survivors' LOG bitmaps and records the member's
// state with the metaserver, so that a host taking the volume over after
// a crash neither forgets what the member missed nor trusts it. A failed
// attempt (a metaserver or chunkserver slow for a moment) is retried, each
// attempt bounded by t_io, until ctx (the record budget) ends; a refusal
// (the volume is no longer this host's) is not retried.
func (st *setState) recordDegraded(ctx context.Context) error {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, st.a.s.cfg.IOTimeout)
		err := st.recordOnce(actx)
		cancel()
		if err == nil {
			if attempt > 1 {
				st.log.Info("degradation recorded after retries", "attempts", attempt)
			}
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
			return err
		}
		st.log.Warn("recording the degradation failed; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d attempts: %w", attempt, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// recordOnce makes one attempt at recording a degradation.
func (st *setState) recordOnce(ctx context.Context) error {
	if err := st.pinSurvivors(ctx); err != nil {
		return err
	}
	r := st.a.snapshot(false)
	if err := st.a.s.meta.HostReport(ctx, st.a.s.id, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil {
		return fmt.Errorf("recording the degraded member with the metaserver: %w", err)
	}
	return nil
}

// pinSurvivors pins the LOG bitmaps of every member the set still uses.
func (st *setState) pinSurvivors(ctx context.Context) error {
	states := st.mirror.States()
	var errs []error
	for i, m := range st.members {
		if states[i] == raid.Failed {
			continue
		}
		if _, err := m.ctl.Pin(ctx, m.api.ChunkID, st.a.s.pinReq(m)); err != nil {
			errs = append(errs, fmt.Errorf("member %d: %w", i, err))
		}
	}
	st.mu.Lock()
	st.mu.pinned = true
	st.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	st.log.Info("pinned the survivors' LOG bitmaps")
	return nil
}

// pinReq is the control request of a pin or unpin of member m, numbered in
// this host's order: the incarnation the metaserver issued in the high 32
// bits, so that the calls of a restarted hostd order after the ones before,
// and a counter below (api.ControlRequest.PinGen).
func (s *Server) pinReq(m *member) api.ControlRequest {
	r := m.req()
	r.PinGen = uint64(s.incarnation.Load())<<32 | s.pinSeq.Add(1)&(1<<32-1)
	return r
}

// unpinAll lets every member's LOG forget again once the set is whole: the
// set's AfterWhole hook, run by its health machine after any pin it asked
// for, never concurrently with one. An error leaves the LOGs pinned (the
// machine asks again the next time the set is found whole).
func (st *setState) unpinAll(ctx context.Context) error {
	var errs []error
	for i, m := range st.members {
		if _, err := m.ctl.Unpin(ctx, m.api.ChunkID, st.a.s.pinReq(m)); err != nil {
			errs = append(errs, fmt.Errorf("member %d: %w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	st.mu.Lock()
	st.mu.pinned = false
	st.mu.Unlock()
	st.log.Info("unpinned the members' LOG bitmaps")
	return nil
}

// startPinned reports whether the members' LOGs start pinned: after an
// unclean stop (the chunkservers pinned them), or when attaching degraded
// (the survivors are pinned before serving).
func (st *setState) startPinned(p setPlan) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.mu.pinned || len(p.degraded) > 0
}

// unpinIfPinned settles a set that is in sync: it flushes every member, so
// the WIB can clean what they all hold durably, and lets the set's health
// machine see it whole (a resync with nothing to copy), which unpins the
// LOGs through AfterWhole if they may be pinned. supervise calls it when no
// member is failed and nothing needs a resync.
func (st *setState) unpinIfPinned(ctx context.Context) {
	if st.wib.Count() > 0 {
		fctx, cancel := context.WithTimeout(ctx, 2*st.a.s.cfg.IOTimeout)
		err := st.mirror.Flush(fctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			st.log.Warn("flushing the set to clean its write-intent bitmap", "err", err)
			return
		}
	}
	if _, err := st.mirror.Resync(ctx, nil); err != nil && ctx.Err() == nil {
		st.log.Debug("settling the set", "err", err)
	}
}
