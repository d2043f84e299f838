package raid

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"sync/atomic"
)

// MirrorConfig configures a mirror set.
type MirrorConfig struct {
	// SetConfig's Members are the copies: 1 to 3, and a fourth while a
	// drain moves one of three onto a new chunk (its successor).
	SetConfig
	// IntentHook, if set, is called synchronously before the data of a
	// write that dirties a region that was clean: bitmap mode internal
	// persists the bitmap on every member there, as MD's internal bitmap
	// does. An error fails the write.
	IntentHook func(ctx context.Context) error
	// LazyClear leaves regions dirty after a successful write; the owner
	// clears them in batches (ClearClean), as MD's bitmap daemon does.
	LazyClear bool
}

// Mirror is a RAID-1 set with a write-intent bitmap.
//
// Writes go to every InSync and Resyncing member in parallel, inside
// WIB.Begin/End, so the bitmap names every region where members may differ.
// Reads go to one InSync member, round-robin; a region that needs resync is
// read from one fixed source member so that a reader never sees two
// versions. A member that returns an error is marked Failed; the set keeps
// serving from the others and the regions it misses stay dirty. When the
// member is back, Rejoin makes it Resyncing and Resync copies only the
// dirty regions, each under a region lock that makes user writes to that
// region (and only that region) wait.
type Mirror struct {
	members
	size int64
	lazy bool
	next atomic.Uint32 // round-robin read cursor
}

// NewMirror builds a mirror set over cfg.Members.
func NewMirror(cfg MirrorConfig) (*Mirror, error) {
	if n := len(cfg.Members); n < 1 || n > 4 {
		return nil, fmt.Errorf("raid: mirror needs 1 to 4 members, got %d", n)
	}
	size := cfg.Members[0].Size()
	for i, m := range cfg.Members {
		if m.Size() != size {
			return nil, fmt.Errorf("raid: mirror member %d has size %d, member 0 has %d: members must be equal", i, m.Size(), size)
		}
	}
	m := &Mirror{size: size, lazy: cfg.LazyClear}
	m.intent = cfg.IntentHook
	if err := m.init("mirror", cfg.SetConfig, 1, size); err != nil {
		return nil, err
	}
	return m, nil
}

// Size is the capacity of the set, the size of one member.
func (m *Mirror) Size() int64 { return m.size }

func (m *Mirror) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > m.size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, m.size)
	}
	return nil
}

// ReadAt reads from one in-sync member, trying the others if it fails.
func (m *Mirror) ReadAt(ctx context.Context, p []byte, off int64) error {
	m.fg.Add(1)
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	defer m.notify()
	var lastErr error
	for {
		v := m.view.Load()
		inSync := v.all() &^ v.notInSync()
		if inSync == 0 {
			if lastErr != nil {
				return fmt.Errorf("%w: last error: %w", ErrNoMembers, lastErr)
			}
			return ErrNoMembers
		}
		i := nthMember(inSync, int(m.next.Add(1))%bits.OnesCount64(inSync))
		if m.needsResync(off, int64(len(p))) {
			// Members may hold different versions here: always read the
			// resync source so that every reader sees the same bytes.
			i = bits.TrailingZeros64(inSync)
		}
		err := v.devs[i].ReadAt(ctx, p, off)
		if err == nil {
			return nil
		}
		if !memberErr(ctx, err) {
			return err
		}
		lastErr = err
		m.fail(i, v, err)
	}
}

// nthMember is the index of the nth (from 0) member in set.
func nthMember(set uint64, n int) int {
	for ; n > 0; n-- {
		set &= set - 1
	}
	return bits.TrailingZeros64(set)
}

func (m *Mirror) needsResync(off, n int64) bool {
	rs := m.wib.RegionSize()
	for r := off / rs; r <= (off+max(n, 1)-1)/rs; r++ {
		if m.wib.NeedsResync(r) {
			return true
		}
	}
	return false
}

// sendFunc sends one request to each of the devices in set, in parallel,
// into errs.
type sendFunc func(ctx context.Context, devs []Device, set uint64, errs []error)

// onEach is the sendFunc that runs op on each device, in parallel.
func onEach(op func(d Device, ctx context.Context) error) sendFunc {
	return func(ctx context.Context, devs []Device, set uint64, errs []error) {
		fanOut(set, errs, func(i int) error { return op(devs[i], ctx) })
	}
}

// fanOut sends a request to every member of v that is not Failed. It
// succeeds when some in-sync member acknowledged and every member that did
// not acknowledge has been failed; allOK reports whether every member of
// the set now holds the change, and got which members acknowledged.
//
// For a write (write true) that every member refused for lack of space,
// no member is failed and the error wraps ErrNoSpace: nothing changed.
func (m *Mirror) fanOut(ctx context.Context, v *memberView, write bool, send sendFunc) (allOK bool, got uint64, err error) {
	if err := m.usable(v); err != nil {
		return false, 0, err
	}
	set := v.all() &^ v.failed
	errs := make([]error, len(v.devs))
	send(ctx, v.devs, set, errs)
	if write {
		var sent []error
		for j := set; j != 0; j &= j - 1 {
			sent = append(sent, errs[bits.TrailingZeros64(j)])
		}
		if noSpace(sent) {
			return false, 0, fmt.Errorf("%w: every member refused the write: %w", ErrNoSpace, sent[0])
		}
	}
	got, firstErr, callerErr := m.settle(ctx, v, set, errs)
	if callerErr != nil {
		// The caller's context ended or the request was invalid: the
		// member is not at fault, and the operation failed.
		return false, 0, callerErr
	}
	if got&^v.resyncing == 0 {
		return false, 0, fmt.Errorf("%w: %d of %d members acknowledged, none of them in sync: %w", ErrNoMembers, bits.OnesCount64(got), bits.OnesCount64(set), firstErr)
	}
	return got == v.all(), got, nil
}

// write sends a modifying op on [off, off+n) to every member that is not
// Failed, in the write skeleton (modify).
func (m *Mirror) write(ctx context.Context, off, n int64, send sendFunc) error {
	if err := m.check(off, n); err != nil {
		return err
	}
	return m.modify(ctx, off, n, false, func(wop *writeOp) error {
		allOK, _, err := m.fanOut(context.WithoutCancel(ctx), m.view.Load(), true, send)
		if err == nil && !allOK {
			wop.partial.Store(true)
		}
		return err
	})
}

// ClearClean clears every region that has no write in flight and needs no
// resync, and reports how many regions it cleared (LazyClear mode).
func (m *Mirror) ClearClean() int64 {
	defer m.notify()
	if m.wib.Count() == 0 || m.Degraded() {
		return 0
	}
	// Clean only what every member holds durably.
	t := m.wib.FlushStart()
	allOK, _, err := m.fanOut(context.Background(), m.view.Load(), false, onEach(Device.Flush))
	if err != nil || !allOK {
		return 0
	}
	return int64(m.wib.FlushDone(t))
}

// WriteAt writes p to every usable member in parallel.
func (m *Mirror) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	m.fg.Add(1)
	defer m.notify()
	return m.write(ctx, off, int64(len(p)), func(ctx context.Context, devs []Device, set uint64, errs []error) {
		fanOutWrites(ctx, set, errs, fua, func(i int) (Device, []byte, int64) { return devs[i], p, off })
	})
}

// Trim deallocates a range on every usable member.
func (m *Mirror) Trim(ctx context.Context, off, length int64) error {
	m.fg.Add(1)
	defer m.notify()
	return m.write(ctx, off, length, onEach(func(d Device, ctx context.Context) error { return d.Trim(ctx, off, length) }))
}

// Flush flushes every usable member. A member whose flush fails is failed:
// its durability is unknown, so it must not be trusted again without a
// resync. When every member of the set flushed, the regions whose writes
// all ended before the flush began are cleaned in the WIB (with LazyClear
// that is left to ClearClean).
//
// A flush that some member did not take part in is a promise made without
// it, as a degraded write is: it is acknowledged only once the degradation
// is recorded, and the member counts as having missed it.
func (m *Mirror) Flush(ctx context.Context) error {
	defer m.notify()
	return m.flush(ctx)
}

func (m *Mirror) flush(ctx context.Context) error { return m.flushMembers(ctx, m.lazy) }

// Rejoin replaces failed member i by d (a new connection to the same chunk)
// and makes it Resyncing: it gets every new write from now on, and Resync
// copies it the regions it missed.
func (m *Mirror) Rejoin(i int, d Device) error {
	defer m.notify()
	if d != nil && d.Size() != m.size {
		return fmt.Errorf("raid: rejoining member %d has size %d, the set has %d", i, d.Size(), m.size)
	}
	return m.rejoin(i, d)
}

// Resync copies every region that needs resync from the first InSync member
// to every other member (the resync driver, resync), then makes Resyncing
// members InSync. It returns the bytes copied. A failure of a member aborts
// with ErrResyncAborted (the regions not yet copied stay dirty); progress
// is called after every region.
func (m *Mirror) Resync(ctx context.Context, progress func(ResyncProgress)) (int64, error) {
	defer m.notify()
	buf := make([]byte, m.wib.RegionSize())
	copyRegion := func(ctx context.Context, region, off, n int64, v *memberView) ([]int64, error) {
		return nil, m.copyRegion(ctx, region, off, buf[:n], v)
	}
	return m.resync(ctx, m.size, copyRegion, m.flush, progress)
}

// copyRegion copies region region, p's length of bytes at off, from the
// first in-sync member of v to every other member, durably.
func (m *Mirror) copyRegion(ctx context.Context, region, off int64, p []byte, v *memberView) error {
	inSync := v.all() &^ v.notInSync()
	if inSync == 0 {
		return fmt.Errorf("%w: no in-sync member to copy from", ErrNoMembers)
	}
	src := bits.TrailingZeros64(inSync)
	if err := v.devs[src].ReadAt(ctx, p, off); err != nil {
		if memberErr(ctx, err) {
			m.fail(src, v, err)
		}
		return fmt.Errorf("%w: reading region %d from member %d: %w", ErrResyncAborted, region, src, err)
	}
	var firstErr error
	for j := v.all() &^ (1 << src); j != 0; j &= j - 1 {
		i := bits.TrailingZeros64(j)
		// Durable: the region is cleaned and the member promoted only once
		// the copy is durable on it.
		if err := writeCopy(ctx, v.devs[i], p, off); err != nil {
			if memberErr(ctx, err) {
				m.fail(i, v, err)
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr != nil {
		return fmt.Errorf("%w: writing region %d: %w", ErrResyncAborted, region, firstErr)
	}
	return nil
}

// copyGranule is the unit in which a copy skips zeroes (writeCopy).
const copyGranule = 64 << 10

var zeroGranule [copyGranule]byte

// writeCopy writes p, a copy of [off, off+len(p)) from another member, to
// d durably. Runs of whole granules of zeroes are trimmed instead of
// written (a trim reads back as zeroes), so a copy onto a new, sparse chunk
// allocates only the granules the source holds data in; such a copy ends
// with a flush of d, which makes its writes and trims durable. A copy
// without zeroes is one FUA write.
func writeCopy(ctx context.Context, d Device, p []byte, off int64) error {
	zero := func(i int) bool {
		g := p[i:min(i+copyGranule, len(p))]
		return bytes.Equal(g, zeroGranule[:len(g)])
	}
	for i := 0; i < len(p); {
		z := zero(i)
		j := i + copyGranule
		for j < len(p) && zero(j) == z {
			j += copyGranule
		}
		j = min(j, len(p))
		if !z && i == 0 && j == len(p) {
			return d.WriteAt(ctx, p, off, true)
		}
		var err error
		if z {
			err = d.Trim(ctx, off+int64(i), int64(j-i))
		} else {
			err = d.WriteAt(ctx, p[i:j], off+int64(i), false)
		}
		if err != nil {
			return err
		}
		i = j
	}
	return d.Flush(ctx)
}
