// This file holds the EC set's successors (ECConfig.Successors): members
// beyond the layout that shadow one member each while a drain moves it.

package raid

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"sync"
)

// dev is the device that member mem's writes and trims go to: the member
// itself, or, while it has a successor that is not Failed, both (tee). A
// write that its Failed successor misses is partial (op), so that its
// regions need a resync. Reads never go through dev.
func (e *EC) dev(v *memberView, mem int, op *writeOp) Device {
	if e.succ == nil || e.succ[mem] < 0 {
		return v.devs[mem]
	}
	j := e.succ[mem]
	if v.failed&(1<<j) != 0 {
		if op != nil {
			op.partial.Store(true)
		}
		return v.devs[mem]
	}
	return &tee{Device: v.devs[mem], succ: v.devs[j], failSucc: func(ctx context.Context, err error) {
		if memberErr(ctx, err) {
			e.fail(j, v, err)
		}
		if op != nil {
			op.partial.Store(true)
		}
	}}
}

// tee writes to a member and to its successor in parallel. The member's
// error is the caller's; the successor's fails the successor only.
type tee struct {
	Device
	succ     Device
	failSucc func(ctx context.Context, err error)
}

func (t *tee) both(ctx context.Context, op func(d Device) error) error {
	var wg sync.WaitGroup
	var serr error
	wg.Go(func() { serr = op(t.succ) })
	err := op(t.Device)
	wg.Wait()
	if serr != nil {
		t.failSucc(ctx, serr)
	}
	return err
}

func (t *tee) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return t.both(ctx, func(d Device) error { return d.WriteAt(ctx, p, off, fua) })
}

func (t *tee) Trim(ctx context.Context, off, length int64) error {
	return t.both(ctx, func(d Device) error { return d.Trim(ctx, off, length) })
}

// copySuccessors copies stripe s's units to the successors in succ (all
// Resyncing) from the members they succeed, which the stripe's repair has
// just made right. A unit of zeroes is trimmed instead (trimmed is then
// true: the caller flushes the successors before the region counts as
// copied); the others are written durably (FUA). The stripe's lock is held
// exclusively. retry reports that a member failed a read; failed is the
// set of successors whose write failed.
func (e *EC) copySuccessors(ctx context.Context, s int64, v *memberView, succ uint64) (trimmed, retry bool, failed uint64, err error) {
	S := e.unit
	b := e.getBuf()
	defer e.putBuf(b)
	for set := succ; set != 0; set &= set - 1 {
		j := bits.TrailingZeros64(set)
		i := e.succeeds(j)
		p := b.col(0, S)
		if rerr := v.devs[i].ReadAt(ctx, p, s*S); rerr != nil {
			if !memberErr(ctx, rerr) {
				return trimmed, false, failed, rerr
			}
			e.fail(i, v, rerr)
			return trimmed, true, failed, nil
		}
		if err := ctx.Err(); err != nil {
			return trimmed, false, failed, err
		}
		wctx := context.WithoutCancel(ctx)
		var werr error
		if isZero(p) {
			werr = v.devs[j].Trim(wctx, s*S, S)
			trimmed = true
		} else {
			werr = v.devs[j].WriteAt(wctx, p, s*S, true)
		}
		if werr != nil {
			if memberErr(wctx, werr) {
				e.fail(j, v, werr)
			}
			failed |= 1 << j
		}
	}
	return trimmed, false, failed, nil
}

// succeeds is the member that successor j succeeds.
func (e *EC) succeeds(j int) int {
	for i, sj := range e.succ {
		if sj == j {
			return i
		}
	}
	panic(fmt.Sprintf("raid: ec member %d is no successor", j))
}

// isZero reports whether p holds only zeroes.
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), copyGranule)
		if !bytes.Equal(p[:n], zeroGranule[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
