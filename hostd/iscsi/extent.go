package iscsi

import (
	"math/bits"
	"sync"
)

// extentLocks serialise commands that must be atomic against concurrent
// writes (COMPARE AND WRITE, ORWRITE) without serialising ordinary I/O.
// The byte space is cut into 1 MiB regions hashed onto a fixed set of
// stripes; writes take the stripes of their range shared, atomic commands
// take them exclusive. Stripes are always taken in ascending order, so two
// commands cannot deadlock.
type extentLocks struct {
	stripes [extentStripes]sync.RWMutex
}

const (
	extentStripes     = 64 // one bit each in a stripeMask
	extentRegionShift = 20
)

// stripeMask is a set of stripes, bit i for stripe i.
type stripeMask uint64

// stripeSet returns the stripes covering [off, off+n).
func stripeSet(off, n int64) stripeMask {
	if n <= 0 {
		n = 1
	}
	first := off >> extentRegionShift
	last := (off + n - 1) >> extentRegionShift
	if last-first+1 >= extentStripes {
		return ^stripeMask(0)
	}
	var m stripeMask
	for r := first; r <= last; r++ {
		m |= 1 << (r % extentStripes)
	}
	return m
}

// heldStripes is a set of stripes locked by one command; unlock releases
// them.
type heldStripes struct {
	l         *extentLocks
	m         stripeMask
	exclusive bool
}

func (h heldStripes) unlock() {
	for m := h.m; m != 0; m &= m - 1 {
		i := bits.TrailingZeros64(uint64(m))
		if h.exclusive {
			h.l.stripes[i].Unlock()
		} else {
			h.l.stripes[i].RUnlock()
		}
	}
}

// shared locks the range for a write; the caller unlocks what it returns.
func (l *extentLocks) shared(off, n int64) heldStripes {
	m := stripeSet(off, n)
	for x := m; x != 0; x &= x - 1 {
		l.stripes[bits.TrailingZeros64(uint64(x))].RLock()
	}
	return heldStripes{l: l, m: m}
}

// exclusive locks the range against all writes; the caller unlocks what
// it returns.
func (l *extentLocks) exclusive(off, n int64) heldStripes {
	m := stripeSet(off, n)
	for x := m; x != 0; x &= x - 1 {
		l.stripes[bits.TrailingZeros64(uint64(x))].Lock()
	}
	return heldStripes{l: l, m: m, exclusive: true}
}
