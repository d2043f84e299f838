// This file holds the EC set's suspect-stripe tracking: stripes whose
// parity may disagree with their data after a crash (see Crash recovery on
// EC).

package raid

import (
	"sync/atomic"
)

// loadSuspects marks suspect every stripe that overlaps a region needing a
// resync in the WIB the set was built with.
func (e *EC) loadSuspects() {
	rs, sd := e.wib.RegionSize(), int64(e.k)*e.unit
	for from := int64(0); ; {
		r, ok := e.wib.NextDirty(from)
		if !ok {
			return
		}
		for off := r.Off; off < r.Off+r.Len; off += rs {
			if !e.wib.NeedsResync(off / rs) {
				continue
			}
			if e.suspect == nil {
				e.suspect = make([]atomic.Uint64, (e.stripes+63)/64)
			}
			end := min(off+rs, r.Off+r.Len)
			for s := off / sd; s <= (end-1)/sd; s++ {
				w, bit := &e.suspect[s/64], uint64(1)<<(s%64)
				if w.Load()&bit == 0 {
					w.Or(bit)
					e.nSuspect.Add(1)
				}
			}
		}
		from = r.Off + r.Len
	}
}

// isSuspect reports whether stripe s's parity may disagree with its data.
func (e *EC) isSuspect(s int64) bool {
	if e.nSuspect.Load() == 0 {
		return false
	}
	return e.suspect[s/64].Load()&(1<<(s%64)) != 0
}

// clearSuspect records that stripe s's parity was derived from its data
// again. The stripe's lock is held exclusively.
func (e *EC) clearSuspect(s int64) {
	if !e.isSuspect(s) {
		return
	}
	e.suspect[s/64].And(^(uint64(1) << (s % 64)))
	e.nSuspect.Add(-1)
	e.missed.Lock()
	delete(e.missed.m, s)
	e.missed.Unlock()
}

// noteMissed records that the members holding shards of suspect stripe s
// did not get a write of it: their units of s can no longer stand in for
// data when the parity is derived again.
func (e *EC) noteMissed(s int64, shards uint64) {
	if shards == 0 {
		return
	}
	e.missed.Lock()
	e.missed.m[s] |= e.membersOf(s, shards)
	e.missed.Unlock()
}

// missedShards is the set of shards of stripe s on members that missed a
// write of it while it was suspect.
func (e *EC) missedShards(s int64) uint64 {
	e.missed.Lock()
	defer e.missed.Unlock()
	return e.shardsOf(s, e.missed.m[s]|e.staleAtBuild)
}
