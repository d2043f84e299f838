package raid

import (
	"slices"
	"sync"
)

// regionLockTable serializes a resync copy of a region (exclusive) against
// user writes to it (shared). Regions hash onto regionLocks striped locks.
type regionLockTable [regionLocks]sync.RWMutex

// rlockRange takes the shared locks of every region that [off, off+n)
// touches, regions of rs bytes, in ascending slot order (so two writes
// cannot deadlock), and returns the function that releases them.
func (t *regionLockTable) rlockRange(rs, off, n int64) func() {
	first, last := off/rs, (off+max(n, 1)-1)/rs
	if last-first+1 >= regionLocks {
		first, last = 0, regionLocks-1
	}
	idx := make([]int, 0, last-first+1)
	for r := first; r <= last; r++ {
		idx = append(idx, int(r%regionLocks))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		t[i].RLock()
	}
	return func() {
		for _, i := range idx {
			t[i].RUnlock()
		}
	}
}

// of returns the lock of region r.
func (t *regionLockTable) of(r int64) *sync.RWMutex { return &t[r%regionLocks] }
