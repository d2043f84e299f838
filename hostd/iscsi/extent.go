package iscsi

import "sync"

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
	extentStripes     = 64
	extentRegionShift = 20
)

// stripeSet returns the stripes covering [off, off+n), ascending.
func stripeSet(off, n int64) []int {
	if n <= 0 {
		n = 1
	}
	first := off >> extentRegionShift
	last := (off + n - 1) >> extentRegionShift
	if last-first+1 >= extentStripes {
		all := make([]int, extentStripes)
		for i := range all {
			all[i] = i
		}
		return all
	}
	var set [extentStripes]bool
	for r := first; r <= last; r++ {
		set[r%extentStripes] = true
	}
	out := make([]int, 0, last-first+1)
	for i, on := range set {
		if on {
			out = append(out, i)
		}
	}
	return out
}

// shared locks the range for a write and returns the unlock function.
func (l *extentLocks) shared(off, n int64) func() {
	s := stripeSet(off, n)
	for _, i := range s {
		l.stripes[i].RLock()
	}
	return func() {
		for _, i := range s {
			l.stripes[i].RUnlock()
		}
	}
}

// exclusive locks the range against all writes and returns the unlock
// function.
func (l *extentLocks) exclusive(off, n int64) func() {
	s := stripeSet(off, n)
	for _, i := range s {
		l.stripes[i].Lock()
	}
	return func() {
		for _, i := range s {
			l.stripes[i].Unlock()
		}
	}
}
