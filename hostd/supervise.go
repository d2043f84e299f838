package hostd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/remb"
)

// supervise reconnects failed members with backoff and resyncs until the
// set is clean, then unpins the LOG bitmaps. It runs until ctx ends.
func (st *setState) supervise(ctx context.Context) {
	s := st.a.s
	backoff := s.cfg.ReconnectMin
	lastProbe := time.Now()
	for {
		if time.Since(lastProbe) >= s.cfg.ProbeInterval {
			// An idle set learns of a member that went away without
			// waiting for the next write.
			pctx, cancel := context.WithTimeout(ctx, s.cfg.IOTimeout)
			st.mirror.Probe(pctx)
			cancel()
			lastProbe = time.Now()
		}
		failed := false
		for i, ms := range st.mirror.States() {
			if ms != raid.Failed {
				continue
			}
			if err := st.rejoin(ctx, i); err != nil {
				failed = true
				st.log.Debug("member still unreachable", "member", i, "err", err)
			}
		}
		if !failed && !st.canServe() {
			// Every member it could serve from failed and all are back:
			// nothing to resync from. The volume is attached again from the
			// metaserver's record, which trusts the members that missed no
			// acknowledged write and reconciles their LOG regions.
			st.a.reattach()
		} else if !failed && st.needsResync() {
			st.resync(ctx)
		}
		if !failed && !st.mirror.Degraded() && !st.needsResync() {
			st.unpinIfPinned(ctx)
			backoff = s.cfg.ReconnectMin
		}
		wait := time.Duration(0)
		if failed || st.needsResync() {
			wait = backoff
			backoff = min(backoff*2, s.cfg.ReconnectMax)
		} else if st.wib.Count() > 0 {
			// Written since the last flush: flush (and clean) again soon,
			// so a member's failure resyncs little.
			wait = cleanInterval
		}
		if wait == 0 || wait > s.cfg.ProbeInterval {
			wait = s.cfg.ProbeInterval
		}
		select {
		case <-ctx.Done():
			return
		case <-st.kick:
		case <-time.After(wait):
		}
	}
}

// cleanInterval is how often a set whose WIB has regions written since the
// last flush flushes its members to clean them: one fdatasync per member
// per interval, however many writes.
const cleanInterval = time.Second

// canServe reports whether enough members are in sync to serve reads and
// be resynced from.
func (st *setState) canServe() bool {
	n := 0
	for _, ms := range st.mirror.States() {
		if ms == raid.InSync {
			n++
		}
	}
	return n >= max(st.need, 1)
}

func (st *setState) needsResync() bool {
	for _, ms := range st.mirror.States() {
		if ms == raid.Resyncing {
			return true
		}
	}
	for r := int64(0); r < st.wib.Regions(); r++ {
		if st.wib.NeedsResync(r) {
			return true
		}
	}
	return false
}

// rejoin reconnects failed member i as remb.PlanRejoin says: it fences at
// the current epoch, which drains any request of the dead connection still
// running on the chunkserver, reconnects, merges its LOG if it was absent at
// an attach after an unclean stop (or marks everything in bitmap mode none),
// and hands the new connection to the set.
func (st *setState) rejoin(ctx context.Context, i int) error {
	s := st.a.s
	m := st.members[i]
	plan := remb.PlanRejoin(remb.RejoinInput{Mode: remb.Mode(st.a.vol.Bitmap), MergeOnReturn: m.needLog, Rebuild: m.rebuild.Load()})
	rctx, cancel := context.WithTimeout(ctx, 2*s.cfg.IOTimeout)
	defer cancel()
	if plan.Fence {
		if _, err := m.ctl.Fence(rctx, m.api.ChunkID, m.req()); err != nil {
			return fmt.Errorf("fence: %w", err)
		}
	}
	c, err := s.cfg.Dial(rctx, memberClientConfig(m, s.cfg.IOTimeout))
	if err != nil {
		return err
	}
	c = s.metrics.meter(c, st.a.vol.Name, st.idx, i)
	if plan.MergeLog {
		if err := st.mergeLog(rctx, m); err != nil {
			c.Close()
			return fmt.Errorf("reading its LOG bitmap: %w", err)
		}
		m.needLog = false
	}
	if plan.MarkAll {
		st.mirror.MarkAll()
	}
	if plan.MarkAllocated {
		// The snapshots' layers first, while the set does not write the
		// new chunk (seed.go); it takes as long as it takes.
		seeded, err := st.seedSnapshots(ctx, i, c)
		if err != nil {
			c.Close()
			return fmt.Errorf("rebuild: copying the snapshots onto the new chunk: %w", err)
		}
		mctx, mcancel := context.WithTimeout(ctx, 2*s.cfg.IOTimeout)
		defer mcancel()
		from := m.rebuiltThrough.Load()
		n, err := st.markAllocated(mctx, from)
		if err != nil {
			c.Close()
			return fmt.Errorf("rebuild: reading what the in-sync members hold: %w", err)
		}
		if seeded {
			// What the snapshots left on the new chunk where the live
			// volume has holes must be copied too.
			if _, err := st.markExtents(mctx, c, from); err != nil {
				c.Close()
				return fmt.Errorf("rebuild: reading what the new chunk holds: %w", err)
			}
		}
		st.log.Info("rebuilding a member onto a new chunk", "member", i, "chunk", m.api.ChunkID,
			"chunkserver", m.api.Chunkserver, "source_allocated_bytes", n, "from", from)
	}
	if err := st.mirror.Rejoin(i, c); err != nil {
		c.Close()
		return err
	}
	if old := m.setClient(c); old != nil {
		old.Close()
	}
	return nil
}

// resync runs one resync of the set with progress reports. One that starts
// with every member in sync reconciles them (the regions an unclean stop
// left dirty) and is reported as the set's own.
func (st *setState) resync(ctx context.Context) {
	reconcile := !st.mirror.Degraded()
	st.log.Info("resync started", "dirty_regions", st.wib.Count(), "reconcile", reconcile)
	if reconcile {
		st.mu.Lock()
		st.mu.reconciling = true
		st.mu.resyncDone, st.mu.resyncTotal = 0, st.wib.Count()*st.wib.RegionSize()
		st.mu.Unlock()
		st.a.report()
	}
	start := time.Now()
	lastReport := time.Now()
	rebuilding := st.rebuildingResyncs()
	pauses := 0
	copied, err := st.mirror.Resync(ctx, func(p raid.ResyncProgress) {
		pauses = p.BackedOff
		st.mu.Lock()
		st.mu.resyncDone, st.mu.resyncTotal = p.DoneBytes, p.TotalBytes
		st.mu.Unlock()
		for _, m := range rebuilding {
			// Every region below p.Through that this resync had to copy is
			// on the new chunk durably; what it had not to copy below the
			// recorded watermark was there already.
			for {
				old := m.rebuiltThrough.Load()
				if p.Through <= old || m.rebuiltThrough.CompareAndSwap(old, p.Through) {
					break
				}
			}
		}
		if time.Since(lastReport) > time.Second {
			lastReport = time.Now()
			st.a.report()
		}
	})
	st.mu.Lock()
	st.mu.resyncDone = copied
	if err == nil {
		st.mu.resyncTotal = copied
	}
	if reconcile {
		st.mu.reconciling = false
		if err == nil {
			st.mu.reconciles++
		}
	}
	st.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			st.log.Warn("resync interrupted", "copied", copied, "err", err)
		}
		return
	}
	st.log.Info("resync done", "copied_bytes", copied, "took", time.Since(start).Round(time.Millisecond),
		"pauses_for_foreground_io", pauses)
	for i, ms := range st.mirror.States() {
		if ms == raid.InSync && st.members[i].rebuild.CompareAndSwap(true, false) {
			st.log.Info("rebuild done: the new chunk is in sync", "member", i, "chunk", st.members[i].api.ChunkID)
		}
	}
	st.a.report()
}

// report asks the reporter to send the volume's state to the metaserver.
func (a *attachment) report() {
	select {
	case a.reportC <- struct{}{}:
	default: // a report is already pending; it will carry the newest state
	}
}

// reporter sends state reports one at a time (best effort), and again every
// few seconds so a lost report is repaired.
func (a *attachment) reporter(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		periodic := false
		select {
		case <-ctx.Done():
			return
		case <-a.reportC:
		case <-t.C:
			periodic = true
		}
		r := a.snapshot(false)
		if periodic && a.stats != nil {
			// The periodic report carries the volume's figures since the
			// previous one.
			r.Stats = a.stats.window(time.Now())
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := a.s.meta.HostReport(rctx, a.s.id, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil && ctx.Err() == nil {
			a.log.Debug("reporting volume state", "err", err)
		}
		cancel()
	}
}

func (a *attachment) snapshot(clean bool) api.VolumeReport {
	// Numbered when the state is read: the metaserver applies a later
	// snapshot's report over an earlier one's whatever order they arrive in.
	r := api.VolumeReport{Name: a.vol.Name, Epoch: a.vol.Epoch, CleanDetach: clean,
		Incarnation: a.s.incarnation.Load(), Seq: a.s.reportSeq.Add(1)}
	for _, st := range a.setList() {
		if st.mirror == nil {
			continue
		}
		sr := api.SetReport{Index: st.idx, DirtyBytes: st.wib.Count() * st.wib.RegionSize()}
		st.mu.Lock()
		done, total := st.mu.resyncDone, st.mu.resyncTotal
		if st.mu.reconciling || st.mu.reconciles > 0 {
			sr.Reconcile = &api.SetReconcile{Running: st.mu.reconciling, DoneBytes: done, TotalBytes: total, Finished: st.mu.reconciles}
		}
		sr.FullResync = st.mu.logIncomplete
		st.mu.Unlock()
		// The generations seen are read before the states: applyMarks fails
		// a member before it stores the generation, so a report that
		// carries a mark's generation shows the member failed (or resynced
		// since), never in sync from before the mark.
		seen := make([]int64, len(st.members))
		rebuilding := make([]bool, len(st.members))
		through := make([]int64, len(st.members))
		for i, m := range st.members {
			seen[i] = m.seenGen.Load()
			rebuilding[i] = m.rebuild.Load()
			through[i] = m.rebuiltThrough.Load()
		}
		untrusted := st.mirror.Untrusted()
		for i, ms := range st.mirror.States() {
			mr := api.MemberReport{ChunkID: st.members[i].api.ChunkID, SeenGen: seen[i]}
			switch {
			case rebuilding[i] && ms == raid.Resyncing:
				mr.State = api.MemberRebuilding
				mr.ResyncDoneBytes, mr.ResyncTotalBytes = done, total
				mr.RebuildWatermark = through[i]
			case rebuilding[i]:
				// Not yet given the set's data: never a copy to trust.
				mr.State = api.MemberRebuilding
				mr.RebuildWatermark = through[i]
				if err := st.mirror.MemberError(i); err != nil {
					mr.Error = err.Error()
				}
			case ms == raid.InSync:
				mr.State = api.MemberInSync
				mr.ResyncDoneBytes, mr.ResyncTotalBytes = done, total // the last resync's totals
			case ms == raid.Failed && !untrusted[i]:
				// Failed, but no write was acknowledged without it (the last
				// copy): the next host must still trust it.
				mr.State = api.MemberInSync
				if err := st.mirror.MemberError(i); err != nil {
					mr.Error = "unreachable, holds every acknowledged write: " + err.Error()
				}
			case ms == raid.Failed:
				mr.State = api.MemberDegraded
				if err := st.mirror.MemberError(i); err != nil {
					mr.Error = err.Error()
				}
			case ms == raid.Resyncing && !untrusted[i]:
				// Back after every member failed (the set cannot serve),
				// having missed no acknowledged write: a copy the next
				// attach must trust (raid's untrusted).
				mr.State = api.MemberInSync
				mr.Error = "back after every member failed; holds every acknowledged write"
			case ms == raid.Resyncing:
				mr.State = api.MemberResyncing
				mr.ResyncDoneBytes, mr.ResyncTotalBytes = done, total
			}
			sr.Members = append(sr.Members, mr)
		}
		r.Sets = append(r.Sets, sr)
	}
	return r
}

// applyMarks acts on the metaserver's own marks of the volume's members
// (api.Member.StateGen above the one the host has seen): a member it marked
// not in sync (its chunkserver went offline) is failed if the set still has
// it in sync, so that it is resynced before it is trusted again. The next
// report carries the generation seen.
func (a *attachment) applyMarks(v api.Volume) {
	changed := false
	sets := a.setList()
	for si, vs := range v.Sets {
		if si >= len(sets) || sets[si].mirror == nil {
			continue
		}
		st := sets[si]
		for i, am := range vs.Members {
			if i >= len(st.members) || am.StateGen <= st.members[i].seenGen.Load() {
				continue
			}
			if am.State != api.MemberInSync {
				st.log.Warn("the metaserver marked a member not in sync: failing it until a resync", "member", i,
					"state", am.State, "reason", am.Error, "generation", am.StateGen)
				st.mirror.Fail(i, fmt.Errorf("marked %s by the metaserver: %s", am.State, am.Error))
				st.wake()
			}
			st.members[i].seenGen.Store(am.StateGen)
			changed = true
		}
	}
	if changed {
		a.report()
	}
}

// rebuildingResyncs are the members being rebuilt that take part in the
// next resync (Resyncing: rejoined, their allocated extents marked).
func (st *setState) rebuildingResyncs() []*member {
	var out []*member
	for i, ms := range st.mirror.States() {
		if ms == raid.Resyncing && st.members[i].rebuild.Load() {
			out = append(out, st.members[i])
		}
	}
	return out
}

// markExtents marks in the WIB the parts of the set that c, a member,
// has allocated, nothing below set offset from, and returns how many
// bytes c has allocated.
func (st *setState) markExtents(ctx context.Context, c memberConn, from int64) (int64, error) {
	unit, k := int64(4096), max(st.logUnit, 1) // a mirror's member offsets are the set's
	if k > 1 {
		unit = st.a.vol.StripeUnit
		if unit == 0 {
			unit = raid.DefaultStripeUnit
		}
	}
	size := c.Size()
	var allocated int64
	for off := int64(0); off < size; {
		ext, err := c.BlockStatus(ctx, nbdAllocation, off, min(size-off, 1<<30))
		if err != nil {
			return 0, err
		}
		if len(ext) == 0 {
			return 0, fmt.Errorf("no extent at %d", off)
		}
		for _, e := range ext {
			if e.Length <= 0 {
				return 0, fmt.Errorf("an empty extent at %d", off)
			}
			if e.Flags&nbd.StateHole == 0 {
				allocated += e.Length
				lo := max(off/unit*unit*k, from)
				hi := min((off+e.Length+unit-1)/unit*unit*k, st.mirror.Size())
				if hi > lo {
					st.wib.Mark(lo, hi-lo)
				}
			}
			off += e.Length
		}
	}
	return allocated, nil
}

// markAllocated marks in the WIB every part of the set that an in-sync
// member has allocated (NBD base:allocation), the union over the in-sync
// members: what a rebuild must copy onto a new chunk, whose holes read as
// zeroes like theirs. A member extent maps to whole stripes of an EC set.
// Nothing below from (a set offset the rebuild has already got through) is
// marked. It returns the most bytes one in-sync member has allocated.
func (st *setState) markAllocated(ctx context.Context, from int64) (int64, error) {
	var most int64
	asked := 0
	for i, ms := range st.mirror.States() {
		c := st.members[i].conn()
		if ms != raid.InSync || c == nil {
			continue
		}
		allocated, err := st.markExtents(ctx, c, from)
		if err != nil {
			return 0, fmt.Errorf("member %d: %w", i, err)
		}
		asked++
		most = max(most, allocated)
	}
	if asked == 0 {
		return 0, errors.New("no in-sync member is connected")
	}
	return most, nil
}
