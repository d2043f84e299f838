// This file holds the EC set's address arithmetic: which member holds
// which shard of a stripe, conversions between member and shard sets, and
// range checks of logical offsets.

package raid

import (
	"fmt"
	"math/bits"
)

// shardMember is the member holding shard i of stripe s.
func (e *EC) shardMember(s int64, i int) int {
	return (i - int(s%int64(e.n)) + e.n) % e.n
}

// allShards is the set of every shard (or member) index.
func (e *EC) allShards() uint64 {
	if e.n == 64 {
		return ^uint64(0)
	}
	return 1<<e.n - 1
}

// dataShards is the set of the data shards 0..k-1.
func (e *EC) dataShards() uint64 { return uint64(1)<<e.k - 1 }

// shardsOf converts a set of members to the set of the shards of stripe s
// they hold: member j holds shard (j + s) mod n, so the set rotates left by
// s mod n within n bits.
func (e *EC) shardsOf(s int64, members uint64) uint64 {
	members &= e.allShards() // successors hold no shard of their own
	r := uint(s % int64(e.n))
	if r == 0 {
		return members
	}
	return (members<<r | members>>(uint(e.n)-r)) & e.allShards()
}

// membersOf converts a set of shards of stripe s to the members holding them.
func (e *EC) membersOf(s int64, shards uint64) uint64 {
	r := uint(s % int64(e.n))
	if r == 0 {
		return shards
	}
	return (shards>>r | shards<<(uint(e.n)-r)) & e.allShards()
}

func (e *EC) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > e.size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, e.size)
	}
	return nil
}

// pickInSync adds to read in-sync shards of stripe s, lowest index first
// (data shards are the cheapest to combine), until it holds k of them.
func (e *EC) pickInSync(read, unread uint64) uint64 {
	avail := e.allShards() &^ unread &^ read
	for bits.OnesCount64(read) < e.k && avail != 0 {
		i := bits.TrailingZeros64(avail)
		avail &^= 1 << i
		read |= 1 << i
	}
	return read
}
