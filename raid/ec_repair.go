// This file holds the EC set's repair paths: Reencode, parity
// re-derivation, rebuilding of units, rebuildVerified, Rejoin and Resync.

package raid

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"sync"
)

// Reencode rewrites the parity of every stripe that overlaps
// [off, off+length) from its data units, under each stripe's lock, on every
// parity member that is not Failed; the stripes are no longer suspect. If a
// data unit of such a stripe is on a member that is not in sync, its parity
// cannot be re-derived and the error wraps ErrParityUnknown. Resync does
// this for the regions that need it; Reencode is for a caller that knows
// more (a scrub, a test).
func (e *EC) Reencode(ctx context.Context, off, length int64) error {
	if err := e.check(off, length); err != nil {
		return err
	}
	defer e.notify()
	if length == 0 {
		return nil
	}
	sd := int64(e.k) * e.unit
	first, last := off/sd, (off+length-1)/sd
	for s := first; s <= last; s++ {
		if err := e.reencodeStripe(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

func (e *EC) reencodeStripe(ctx context.Context, s int64) error {
	l := &e.locks[s%ecLockSlots]
	l.Lock()
	defer l.Unlock()
	v := e.view.Load()
	if err := e.usable(v); err != nil {
		return err
	}
	if lost := e.dataShards() & e.shardsOf(s, v.notInSync()); lost != 0 {
		i := bits.TrailingZeros64(lost)
		mem := e.shardMember(s, i)
		return fmt.Errorf("%w: stripe %d unit D%d is on member %d, which is %v", ErrParityUnknown, s, i, mem, v.state(mem))
	}
	retry, failed, err := e.encodeParity(ctx, s, v)
	if failed != 0 {
		// That member may hold half a parity unit now: rebuild it when it
		// comes back.
		sd := int64(e.k) * e.unit
		e.wib.Mark(s*sd, sd)
	}
	if err != nil {
		return err
	}
	if retry {
		if err := e.usable(e.view.Load()); err != nil {
			return err
		}
		return fmt.Errorf("%w: stripe %d: a data member failed while being read", ErrParityUnknown, s)
	}
	return nil
}

// encodeParity reads stripe s's k data units from the members v names
// (none of them Failed), encodes the parity and writes it to every parity
// member that is not Failed. The stripe's lock is held exclusively. retry
// reports that a member failed a read; nothing was written then. failed is
// the set of parity shards whose write failed: the other members agree.
func (e *EC) encodeParity(ctx context.Context, s int64, v *memberView) (retry bool, failed uint64, err error) {
	S, data := e.unit, e.dataShards()
	b := e.getBuf()
	defer e.putBuf(b)
	fanOut(data, b.errs, func(i int) error {
		return v.devs[e.shardMember(s, i)].ReadAt(ctx, b.col(i, S), s*S)
	})
	if retry, err := e.settleReads(ctx, s, v, data, b.errs); err != nil || retry {
		return retry, 0, err
	}
	for i := range b.shards {
		b.shards[i] = b.col(i, S)
	}
	if err := e.code.Encode(b.shards); err != nil {
		return false, 0, fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return false, 0, err
	}
	wctx := context.WithoutCancel(ctx)
	suspect := e.isSuspect(s)
	parity := e.allShards() &^ data
	skipped := parity & e.shardsOf(s, v.failed)
	write := parity &^ skipped
	if suspect {
		e.noteMissed(s, skipped)
	}
	fanOut(write, b.errs, func(i int) error {
		return e.dev(v, e.shardMember(s, i), nil).WriteAt(wctx, b.shards[i], s*S, true)
	})
	failed, err = e.settleWrites(s, v, write, b.errs, nil, suspect)
	if err != nil {
		return false, failed, err
	}
	e.clearSuspect(s)
	return false, failed, nil
}

// rebuildShards reconstructs the shards in targets of stripe s from k
// in-sync units and writes them whole to their members. The stripe's lock
// is held exclusively. retry reports that a member failed a read; failed
// is the set of targets whose write failed.
func (e *EC) rebuildShards(ctx context.Context, s int64, v *memberView, targets uint64) (retry bool, failed uint64, err error) {
	S := e.unit
	b := e.getBuf()
	defer e.putBuf(b)
	read := e.pickInSync(0, e.shardsOf(s, v.notInSync()))
	fanOut(read, b.errs, func(i int) error {
		return v.devs[e.shardMember(s, i)].ReadAt(ctx, b.col(i, S), s*S)
	})
	if retry, err := e.settleReads(ctx, s, v, read, b.errs); err != nil || retry {
		return retry, 0, err
	}
	for i := range b.shards {
		b.shards[i], b.want[i] = nil, false
		switch {
		case read&(1<<i) != 0:
			b.shards[i] = b.col(i, S)
		case targets&(1<<i) != 0:
			b.shards[i], b.want[i] = b.col(i, S)[:0], true
		}
	}
	if err := e.code.Reconstruct(b.shards, b.want); err != nil {
		return false, 0, fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return false, 0, err
	}
	wctx := context.WithoutCancel(ctx)
	fanOut(targets, b.errs, func(i int) error {
		return e.dev(v, e.shardMember(s, i), nil).WriteAt(wctx, b.shards[i], s*S, true)
	})
	failed, err = e.settleWrites(s, v, targets, b.errs, nil, false)
	return false, failed, err
}

// rebuildVerified repairs suspect stripe s whose shards in missed (some
// data among them) are on members that may have missed writes of it: their
// units cannot stand in for data, and the stripe's parity may be torn. The
// other shards are read; if there are more than k of them, the missed ones
// are reconstructed from them, the parity encoded from the resulting data
// is compared with every parity unit read, and only if all agree — the
// units present lie on one codeword, so the parity is not torn — are the
// missed shards written and the stripe cleared. Otherwise lost reports the
// stripe as unrepairable: it stays suspect and its region dirty. The
// stripe's lock is held exclusively.
func (e *EC) rebuildVerified(ctx context.Context, s int64, v *memberView, missed uint64) (lost, retry bool, failed uint64, err error) {
	S := e.unit
	avail := e.allShards() &^ missed
	if bits.OnesCount64(avail) <= e.k {
		return true, false, 0, nil // nothing to check the parity against
	}
	b := e.getBuf()
	defer e.putBuf(b)
	fanOut(avail, b.errs, func(i int) error {
		return v.devs[e.shardMember(s, i)].ReadAt(ctx, b.col(i, S), s*S)
	})
	if retry, err := e.settleReads(ctx, s, v, avail, b.errs); err != nil || retry {
		return false, retry, 0, err
	}
	for i := range b.shards {
		b.shards[i], b.want[i] = b.col(i, S), false
		if missed&(1<<i) != 0 {
			b.shards[i], b.want[i] = b.col(i, S)[:0], true
		}
	}
	if err := e.code.Reconstruct(b.shards, b.want); err != nil {
		return false, false, 0, fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	torn, err := e.parityDisagrees(s, b, avail, S)
	if err != nil {
		return false, false, 0, err
	}
	if torn >= 0 {
		e.log.Error("ec stripe torn: its parity disagrees with its data and a data unit is stale", "stripe", s, "parity", torn)
		return true, false, 0, nil
	}
	if err := ctx.Err(); err != nil {
		return false, false, 0, err
	}
	wctx := context.WithoutCancel(ctx)
	fanOut(missed, b.errs, func(i int) error {
		return e.dev(v, e.shardMember(s, i), nil).WriteAt(wctx, b.shards[i], s*S, true)
	})
	failed, err = e.settleWrites(s, v, missed, b.errs, nil, false)
	if err == nil && failed == 0 {
		e.clearSuspect(s)
	}
	return false, false, failed, err
}

// Rejoin replaces Failed member i by d (a new connection to the same chunk)
// and makes it Resyncing: it gets every new write from now on, and Resync
// repairs the units it missed. Rejoin first waits for the writes in flight,
// which may have skipped the member, so that their regions are marked by
// the time it returns.
func (e *EC) Rejoin(i int, d Device) error {
	if n := len(e.view.Load().devs); i < 0 || i >= n {
		return fmt.Errorf("raid: ec member %d out of range [0, %d)", i, n)
	}
	if d != nil && d.Size() != e.memberSize {
		return fmt.Errorf("raid: rejoining ec member %d has size %d, the members have %d", i, d.Size(), e.memberSize)
	}
	defer e.notify()
	return e.rejoin(i, d)
}

// Resync repairs every region that needs a resync, one region at a time
// under that region's exclusive lock and the stripes' locks: for each stripe
// that overlaps the region it rebuilds the Resyncing members' units from k
// in-sync units, or, if the stripe has no Resyncing member or is suspect,
// derives its parity again from its data (see Crash recovery on EC). Then
// it makes the Resyncing members InSync. It returns the logical bytes of
// the regions it repaired; progress is called after every region.
//
// Resync needs every member: with one Failed it does nothing and returns
// ErrResyncAborted, and a member that fails during the run aborts it the
// same way (the regions not yet repaired stay dirty). If suspect stripes
// could not be repaired, their regions stay dirty, the Resyncing members
// stay Resyncing and the error wraps ErrUnrecoverable.
func (e *EC) Resync(ctx context.Context, progress func(ResyncProgress)) (int64, error) {
	defer e.notify()
	return e.resync(ctx, e.size, e.repairRegion, e.flush, progress)
}

// repairRegion repairs every stripe that overlaps [off, off+n), region
// region, several at a time (the driver holds the region's lock). It
// returns the suspect stripes it could not repair.
func (e *EC) repairRegion(ctx context.Context, region, off, n int64, v *memberView) (lost []int64, err error) {
	sd := int64(e.k) * e.unit
	s0, s1 := off/sd, (off+n-1)/sd
	var mu sync.Mutex
	trimmed := false
	err = each(s1-s0+1, ecParallelStripes, func(j int64) error {
		s := s0 + j
		unrepairable, trim, err := e.resyncStripe(ctx, s, v)
		mu.Lock()
		if unrepairable {
			lost = append(lost, s)
		}
		trimmed = trimmed || trim
		mu.Unlock()
		return err
	})
	if err == nil && trimmed {
		// The successors' trims are durable only once flushed.
		err = e.flushSuccessors(ctx, v)
	}
	return lost, err
}

// flushSuccessors flushes the Resyncing successors of v.
func (e *EC) flushSuccessors(ctx context.Context, v *memberView) error {
	for set := v.resyncing &^ e.allShards(); set != 0; set &= set - 1 {
		j := bits.TrailingZeros64(set)
		if err := v.devs[j].Flush(ctx); err != nil {
			if memberErr(ctx, err) {
				e.fail(j, v, err)
			}
			return fmt.Errorf("%w: flushing successor %d: %w", ErrResyncAborted, j, err)
		}
	}
	return nil
}

// resyncStripe repairs stripe s under its exclusive lock, then copies its
// units to the Resyncing successors. lost reports a suspect stripe with a
// data unit on a member that missed a write of it; trimmed, that a
// successor's unit was trimmed (it wants a flush).
func (e *EC) resyncStripe(ctx context.Context, s int64, start *memberView) (lost, trimmed bool, err error) {
	l := &e.locks[s%ecLockSlots]
	l.Lock()
	defer l.Unlock()
	v := e.view.Load()
	if err := sameMembers(start, v); err != nil {
		return false, false, err
	}
	if err := e.usable(v); err != nil {
		return false, false, err
	}
	resyncing := e.shardsOf(s, v.resyncing)
	var (
		retry  bool
		failed uint64
	)
	switch {
	case e.isSuspect(s):
		// Crash recovery: the data units are what the previous host left
		// (or acknowledged since), on in-sync and Resyncing members alike,
		// unless their member missed a write of the stripe since.
		if missed := e.missedShards(s); e.dataShards()&missed != 0 {
			// A data unit may be stale: rebuild it from the others, but
			// only if they agree with each other (see rebuildVerified).
			lost, retry, failed, err = e.rebuildVerified(ctx, s, v, missed)
			if lost {
				return true, false, nil
			}
			break
		}
		retry, failed, err = e.encodeParity(ctx, s, v)
	case resyncing == 0:
		// Nothing to rebuild, but the region was marked: make sure parity
		// agrees with data.
		retry, failed, err = e.encodeParity(ctx, s, v)
	default:
		retry, failed, err = e.rebuildShards(ctx, s, v, resyncing)
	}
	switch {
	case err != nil:
	case retry:
		err = errors.New("a member failed a read")
	case failed != 0:
		// The member missed the repair: the region must stay dirty.
		err = fmt.Errorf("member %d failed a write", e.shardMember(s, bits.TrailingZeros64(failed)))
	}
	if succ := v.resyncing &^ e.allShards(); err == nil && succ != 0 {
		var sfailed uint64
		trimmed, retry, sfailed, err = e.copySuccessors(ctx, s, v, succ)
		switch {
		case err != nil:
		case retry:
			err = errors.New("a member failed a read")
		case sfailed != 0:
			err = fmt.Errorf("successor %d failed a write", bits.TrailingZeros64(sfailed))
		}
	}
	if err != nil {
		return false, false, fmt.Errorf("%w: stripe %d: %w", ErrResyncAborted, s, err)
	}
	return false, trimmed, nil
}
