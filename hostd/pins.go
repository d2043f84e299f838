package hostd

import (
	"context"
	"errors"
	"fmt"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// recordDegraded runs before the set acknowledges its first write without
// a member: the volume's recorder pins the survivors' LOG bitmaps and
// records the member's state with the metaserver, so that a host taking
// the volume over after a crash neither forgets what the member missed nor
// trusts it. Sets degraded together are recorded together.
func (st *setState) recordDegraded(ctx context.Context) error {
	return st.a.rec.record(ctx, st)
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
	st.mu.logIncomplete = false // whole: nothing differs between the members
	st.mu.Unlock()
	st.log.Info("unpinned the members' LOG bitmaps")
	return nil
}

// startPinned reports whether the members' LOGs start pinned: as the plan
// says (after an unclean stop the chunkservers pinned them; attaching
// degraded, the survivors are pinned before serving), or pinned since.
func (st *setState) startPinned(p setPlan) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.mu.pinned || p.StartPinned
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
