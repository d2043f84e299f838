package raid

import (
	"context"
	"fmt"
	"math/bits"
	"time"
)

// repairFunc is what a set kind tells the resync driver: make [off, off+n),
// region region of the set's logical bytes, the same on every member of v —
// a mirror copies it from an in-sync member, an EC set rebuilds the
// resyncing members' units or derives parity again. The driver holds the
// region's exclusive lock and its resync ticket, and has checked that v's
// members are those the resync started with. An error, or units it could
// not repair (lost: an EC set's torn suspect stripes), leave the region
// dirty.
type repairFunc func(ctx context.Context, region, off, n int64, v *memberView) (lost []int64, err error)

// resync is the one resync of both kinds. It repairs every region that
// needs it in the WIB, one at a time under the region's exclusive lock
// (user writes wait for that region only), paced (pacer) and reporting
// progress after each; every resyncCleanEvery it flushes every member so
// the WIB cleans what is repaired; it passes over again the regions that
// writes dirtied meanwhile; then one last flush, and the Resyncing members
// become InSync (promote). size is the set's logical size.
//
// Every member must be present: with one Failed it returns ErrResyncAborted
// at once, and a member that fails or rejoins during the run aborts it the
// same way (the regions not yet repaired stay dirty). Regions with lost
// units are skipped after their first attempt; the run then ends with
// ErrUnrecoverable and the Resyncing members stay Resyncing.
func (ms *members) resync(ctx context.Context, size int64, repair repairFunc, flush func(context.Context) error, progress func(ResyncProgress)) (int64, error) {
	ms.resyncMu.Lock()
	defer ms.resyncMu.Unlock()
	start := ms.view.Load()
	if start.failed != 0 {
		return 0, fmt.Errorf("%w: member %d is still degraded", ErrResyncAborted, bits.TrailingZeros64(start.failed))
	}
	rs := ms.wib.RegionSize()
	var copied, through int64
	stuck := false // a region could not be repaired: Through stops below it
	lostRegions := map[int64]bool{}
	lostUnits := map[int64]bool{}
	pace := newPacer(ms.rate, &ms.fg)
	lastClean := time.Now()
	for pass := 0; ; pass++ {
		var due []int64
		var dueBytes int64
		for from := int64(0); ; {
			r, ok := ms.wib.NextDirty(from)
			if !ok {
				break
			}
			for off := r.Off; off < r.Off+r.Len; off += rs {
				if region := off / rs; ms.wib.NeedsResync(region) && !lostRegions[region] {
					due = append(due, region)
					dueBytes += min(rs, size-off)
				}
			}
			from = r.Off + r.Len
		}
		if len(due) == 0 {
			break
		}
		if pass > 100 {
			return copied, fmt.Errorf("%w: regions keep getting dirty under the resync", ErrResyncAborted)
		}
		total := copied + dueBytes
		for j, region := range due {
			if err := ctx.Err(); err != nil {
				return copied, err
			}
			began := time.Now()
			n, lost, err := ms.repairRegion(ctx, region, size, start, repair)
			if err != nil {
				return copied, err
			}
			copied += n
			took := time.Since(began)
			if len(lost) > 0 {
				lostRegions[region] = true
				for _, u := range lost {
					lostUnits[u] = true
				}
				stuck = true
			}
			if pass == 0 && !stuck {
				through = size
				if j+1 < len(due) {
					through = due[j+1] * rs
				}
			}
			if err := pace.after(ctx, copied, took); err != nil {
				return copied, err
			}
			if progress != nil {
				progress(ResyncProgress{DoneBytes: copied, TotalBytes: total, Through: through, BackedOff: pace.backoffs})
			}
			if time.Since(lastClean) >= resyncCleanEvery {
				// Clean what is repaired as it goes: the WIB a host leaves
				// when it dies then names only what is left to repair.
				if err := flush(ctx); err != nil {
					return copied, fmt.Errorf("%w: flushing the members during the resync: %w", ErrResyncAborted, err)
				}
				lastClean = time.Now()
			}
		}
	}
	if len(lostUnits) > 0 {
		ms.log.Error(ms.kind+" resync left stripes whose parity may be stale and whose data unit is on a member that missed writes",
			"stripes", len(lostUnits), "regions", len(lostRegions))
		return copied, fmt.Errorf("%w: %d stripes in %d regions keep a data unit on a member that missed writes since the set was built; it stays resyncing",
			ErrUnrecoverable, len(lostUnits), len(lostRegions))
	}
	// The repairs are durable on their targets (FUA), the sources' bytes
	// may not be: one flush of every member lets the WIB clean them.
	if ms.wib.Count() > 0 {
		if err := flush(ctx); err != nil {
			return copied, fmt.Errorf("%w: flushing the members after the resync: %w", ErrResyncAborted, err)
		}
	}
	// Every region is in sync: Resyncing members join the readers.
	return copied, ms.promote(start, copied)
}

// repairRegion repairs region under its exclusive lock and resync ticket.
// It returns the region's bytes and the units it could not repair; then, or
// on an error, the region stays dirty and needing a resync.
func (ms *members) repairRegion(ctx context.Context, region, size int64, start *memberView, repair repairFunc) (n int64, lost []int64, err error) {
	rs := ms.wib.RegionSize()
	off := region * rs
	n = min(rs, size-off)
	lk := ms.regions.of(region)
	lk.Lock()
	defer lk.Unlock()
	v := ms.view.Load()
	if err := sameMembers(start, v); err != nil {
		return 0, nil, err
	}
	ticket := ms.wib.ResyncStart(region)
	lost, err = repair(ctx, region, off, n, v)
	if err != nil || len(lost) > 0 {
		// Not repaired: a Mark between ResyncStart and ResyncDone keeps the
		// region dirty and needing a resync. (A write that raced the repair
		// keeps it dirty too: the next pass repairs it again.)
		ms.wib.Mark(off, n)
	}
	ms.wib.ResyncDone(ticket)
	if err != nil {
		return 0, nil, err
	}
	return n, lost, nil
}
