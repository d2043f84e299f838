package raid

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/chunkraid/chunkraid/raid/internal/rs"
)

// DefaultStripeUnit is the stripe unit S of an EC set when ECConfig leaves it
// zero: the bytes one member holds of one stripe.
const DefaultStripeUnit = 64 << 10

const (
	// ecMaxMembers bounds k+m so that member and shard sets fit a uint64.
	ecMaxMembers = 64
	// ecLockSlots is the size of the striped lock table: stripe s is guarded
	// by slot s mod ecLockSlots, so consecutive stripes never share a lock.
	ecLockSlots = 1024
	// ecColBlock is the width in columns (bytes of a unit) of one column
	// lock, and ecColSlots the size of the column lock table.
	ecColBlock = 4096
	ecColSlots = 4096
	// ecMaxUnit is the largest stripe unit: a stripe's column locks fit
	// the table.
	ecMaxUnit = ecColBlock * ecColSlots
	// ecParallelStripes bounds the stripes of one write in flight at once.
	ecParallelStripes = 8
	// ecParallelUnits bounds the unit reads of one read in flight at once.
	ecParallelUnits = 16
)

// ErrParityUnknown is returned by Reencode when a stripe's parity cannot be
// derived again because one of its data units is on a member that is not
// in sync.
var ErrParityUnknown = errors.New("raid: parity cannot be re-derived: a data unit is missing")

// ErrUnrecoverable is returned by an EC set for bytes it cannot produce
// truthfully: a data unit is on a member that is not in sync, and the
// stripe's parity may disagree with its data because a write was in flight
// when the previous host stopped. Rebuilding the unit from that parity
// could return bytes that were never written, so the set refuses; the iSCSI
// target reports it as a MEDIUM ERROR.
var ErrUnrecoverable = errors.New("raid: data unrecoverable: a unit is missing and its stripe's parity may be stale")

// ECConfig configures an erasure-coded set.
//
// SetConfig's Members are the K+M chunks of the set; member i is member i
// in the layout drawn on EC. Its Degraded holds at most M members: with
// fewer than K the set cannot serve anything. Its ResyncRate counts logical
// bytes.
//
// Its WIB covers the set's logical bytes (Size, K times the member size).
// Regions that need a resync in the WIB when NewEC runs — a bitmap reopened
// after hostd stopped, the LOG bitmaps merged at attach, a whole-set Mark
// for a lost record — are taken to be where the previous host may have died
// mid-write: their stripes' parity is not trusted until Resync re-encodes
// it (see "Crash recovery" on EC). Marks made later (MarkAll, the LOG of a
// member that comes back after attach) only say that some member missed
// writes. A member given to the set is taken to hold what it held when the
// previous host stopped; one known to have missed writes before that must
// start in Degraded and be rebuilt.
type ECConfig struct {
	SetConfig
	// K is the number of data units per stripe, at least 1 (1+m behaves like
	// an (m+1)-way mirror with a rotating copy order).
	K int
	// M is the number of parity units per stripe, at least 1: the set
	// survives M members that are not in sync. K+M is at most 64.
	M int
	// StripeUnit is S, the bytes of one stripe on one member: a power of two
	// from 4096 to 16 MiB. 0 means DefaultStripeUnit (64 KiB).
	StripeUnit int64
	// Successors names the members beyond the K+M of the layout, each the
	// successor of one of them (a drain moves that member to a new chunk):
	// Successors[j] = i, with K+M ≤ j, says member j gets every write and
	// trim member i gets and, while it is Resyncing, Resync copies it
	// member i's units. It is never read nor counted among the K members
	// the set needs; its owner puts it in member i's place once it is in
	// sync. At most one successor per member.
	Successors map[int]int
	// Stale lists the members of Degraded known to have missed writes (the
	// previous host recorded them degraded): what they hold in a suspect
	// stripe never stands in for data. A member in Degraded but not in
	// Stale was merely unreachable while recorded in sync: it holds every
	// acknowledged write, and only the stripes named by the LOGs need their
	// parity derived again once it is back.
	Stale []int
}

func (c *ECConfig) validate() error {
	if c.K < 1 || c.M < 1 {
		return fmt.Errorf("raid: ec %d+%d: k and m must both be at least 1", c.K, c.M)
	}
	if c.K+c.M > ecMaxMembers {
		return fmt.Errorf("raid: ec %d+%d: at most %d members are supported", c.K, c.M, ecMaxMembers)
	}
	if len(c.Members) != c.K+c.M+len(c.Successors) {
		return fmt.Errorf("raid: ec %d+%d with %d successors needs %d members, got %d", c.K, c.M, len(c.Successors), c.K+c.M+len(c.Successors), len(c.Members))
	}
	if len(c.Members) > ecMaxMembers {
		return fmt.Errorf("raid: ec %d+%d with %d successors: at most %d members are supported", c.K, c.M, len(c.Successors), ecMaxMembers)
	}
	succeeded := map[int]bool{}
	for j, i := range c.Successors {
		if j < c.K+c.M || j >= len(c.Members) || i < 0 || i >= c.K+c.M {
			return fmt.Errorf("raid: ec successor %d of member %d: successors are members %d to %d, of members 0 to %d", j, i, c.K+c.M, len(c.Members)-1, c.K+c.M-1)
		}
		if succeeded[i] {
			return fmt.Errorf("raid: ec member %d has two successors", i)
		}
		succeeded[i] = true
	}
	for i, m := range c.Members {
		if m == nil {
			return fmt.Errorf("raid: ec member %d is nil", i)
		}
	}
	s := c.StripeUnit
	if s < 4096 || s > ecMaxUnit || s&(s-1) != 0 {
		return fmt.Errorf("raid: ec stripe unit %d must be a power of two from 4096 to %d", s, ecMaxUnit)
	}
	size := c.Members[0].Size()
	for i, m := range c.Members {
		if m.Size() != size {
			return fmt.Errorf("raid: ec member %d has size %d, member 0 has %d: members must be equal", i, m.Size(), size)
		}
	}
	if size < s {
		return fmt.Errorf("raid: ec members of %d bytes cannot hold one stripe unit of %d bytes", size, s)
	}
	seen := make([]bool, len(c.Members))
	for _, i := range c.Degraded {
		if i < 0 || i >= len(c.Members) {
			return fmt.Errorf("raid: ec degraded member %d out of range [0, %d)", i, len(c.Members))
		}
		if seen[i] {
			return fmt.Errorf("raid: ec degraded member %d listed twice", i)
		}
		seen[i] = true
	}
	for _, i := range c.Stale {
		if i < 0 || i >= len(c.Members) || !seen[i] {
			return fmt.Errorf("raid: ec stale member %d is not one of the degraded members %v", i, c.Degraded)
		}
	}
	if out := len(slices.DeleteFunc(slices.Clone(c.Degraded), func(i int) bool { return i >= c.K+c.M })); out > c.M {
		return fmt.Errorf("%w: ec %d+%d with %d members degraded: at least %d must be reachable", ErrNoMembers, c.K, c.M, out, c.K)
	}
	if c.ResyncRate < 0 {
		return fmt.Errorf("raid: ec resync rate %d must not be negative", c.ResyncRate)
	}
	return nil
}

// EC is a Reed-Solomon k+m set (DESIGN §1.2): every stripe holds k data
// units and m parity units of S bytes, one unit on each of the n = k+m
// members, at the same member offset s×S for stripe s. The set survives any
// m members that are not in sync. It is a Device of k × (member size
// rounded down to S) bytes; logical byte x lives in stripe x / (k·S), data
// unit (x mod k·S) / S, at byte x mod S of that unit.
//
// # Layout
//
// Parity rotates left-symmetrically, as in RAID-5/6, so no member is a hot
// parity disk: stripe s puts shard i (data units D0..Dk-1 are shards 0..k-1,
// parity units P0..Pm-1 are shards k..k+m-1) on member (i − s) mod n. For 4+2:
//
//	member:      0    1    2    3    4    5     member offset
//	stripe 0:   D0   D1   D2   D3   P0   P1     [0,  S)
//	stripe 1:   D1   D2   D3   P0   P1   D0     [S,  2S)
//	stripe 2:   D2   D3   P0   P1   D0   D1     [2S, 3S)
//	stripe 3:   D3   P0   P1   D0   D1   D2     [3S, 4S)
//	stripe 4:   P0   P1   D0   D1   D2   D3     [4S, 5S)
//	stripe 5:   P1   D0   D1   D2   D3   P0     [5S, 6S)
//	stripe 6:   like stripe 0
//
// Logical bytes [s·k·S + d·S, s·k·S + (d+1)·S) are unit Dd of stripe s. The
// parity format is that of package raid/internal/rs.
//
// # Writes
//
// Reed-Solomon codes every byte column of a stripe independently, so a
// write touches only the columns [c0, c1) of the units it covers:
//
//   - a full stripe is encoded once from the caller's buffer and its k+m
//     units written in parallel, without reading anything;
//   - otherwise, where it reads fewer units, it read-modify-writes with
//     parity deltas: it reads columns [c0, c1) of the data units the write
//     touches and of the parity, and writes the new data and the parity
//     updated from the difference (1+m reads for a write inside one unit);
//     it needs every unit it reads on an in-sync member and a stripe that
//     is not suspect;
//   - else it reconstruct-writes: it reads columns [c0, c1) of the data
//     units the write does not fully cover, merges the new bytes, encodes
//     those columns of parity and writes the new data bytes and the parity
//     columns. A 4 KiB write to 4+2 reads 3 × 4 KiB either way and takes
//     this path, writing 3 × 4 KiB; to 8+2 it reads 3 units by deltas
//     rather than 7. Reconstruct-write is the one path for degraded and
//     suspect stripes. A write that crosses a unit boundary is done as two
//     column ranges.
//
// Once the set starts writing a stripe's units it finishes them even if the
// caller's context ends, so that cancellation cannot leave a stripe whose
// parity disagrees with its data (members bound their own request time).
//
// # Write-intent bitmap and locks
//
// The WIB covers the set's logical bytes. Every write and trim runs inside
// WIB.Begin/End over its logical range; it ends with allMembersOK only if
// every member that holds one of its units (parity included) got it; its
// regions stay dirty until a flush of every member. A write that skipped a Failed
// member, or whose member write failed, leaves its regions needing a resync.
//
// Locks, always taken in this order, never the other way round:
//
//  1. join: shared by every write and trim for its whole run, exclusive by
//     Rejoin, which so waits for the writes that may have skipped the
//     member before it gets new writes;
//  2. region locks (a striped table of regionLocks), shared by a write or
//     trim for every region its range touches, taken in ascending slot
//     order; exclusive by Resync for the one region it is repairing, so
//     user writes wait only for that region (DESIGN §2 rule 4). Resync
//     never takes the join lock: Rejoin may wait for writes that wait for
//     Resync's region;
//  3. stripe locks (a striped table of ecLockSlots): a repair, a trim and
//     a write of a suspect stripe hold its stripe's lock exclusively; other
//     writes and degraded reads share it. A goroutine holds one stripe lock
//     at a time, except Trim, which takes those of up to ecLockSlots whole
//     stripes in slot order;
//  4. column locks (a striped table of ecColSlots, one per ecColBlock
//     columns of a stripe): a write that shares its stripe's lock holds
//     those of the columns it changes exclusively, a degraded read shares
//     those of the columns it reconstructs from, so no reconstruction sees
//     half a write, while writes to other columns of the stripe (the next
//     4 KiB of a sequential stream) proceed in parallel: Reed-Solomon codes
//     every byte column on its own. A goroutine takes the column locks of
//     one range at once, in ascending slot order.
//
// Every path goes down this list and a holder of several locks of one level
// took them in one global order, so the locks cannot deadlock. Reads of
// units on in-sync members take no lock at all.
//
// # Failures, rejoin and resync
//
// A member that returns an error (other than the caller's cancellation) is
// marked Failed and the operation carries on degraded: a read of a unit on a
// member that is not in sync reconstructs it from k in-sync units of its
// stripe; a write skips Failed members' units but updates parity, so the
// others still determine the data. With fewer than k members in sync every
// operation fails with ErrNoMembers.
//
// Rejoin gives a Failed member a new connection and makes it Resyncing: it
// gets every new write, but is never read. Resync then repairs every region
// that needs it, under the region's lock, stripe by stripe: it rebuilds the
// Resyncing members' units of every stripe that overlaps the region from k
// in-sync units (a stripe that crosses a region boundary is rebuilt whole),
// and re-derives parity from data for stripes with no Resyncing member.
// When no region needs a resync the Resyncing members become InSync.
//
// # Crash recovery and the write hole
//
// Writes to the units of one stripe are not atomic across members: a host
// that dies mid-write can leave parity that disagrees with data, and
// rebuilding a lost unit from it would produce bytes nobody wrote. The set
// therefore treats the stripes of every region that needs a resync when it
// is built (see ECConfig.WIB) as suspect, and on a suspect stripe:
//
//   - a read of a unit on an in-sync member is a plain read: its data is
//     what was written, or a write that was never acknowledged;
//   - a read of a unit that would need reconstructing fails with
//     ErrUnrecoverable;
//   - a write fails with ErrUnrecoverable if its new bytes for a unit would
//     live only in that parity: the unit's member is Failed, or fails the
//     write, and the write does not derive the whole stripe's parity (every
//     column of it) from data it read from in-sync members or was given;
//     a write that needs a lost unit only to compute parity rebuilds it
//     from every unit that can vouch for it and goes through if they agree
//     (the stripe stays suspect), but fails with ErrUnrecoverable if the
//     parities disagree: parity encoded from a rebuild of torn parity would
//     make every unit present agree on bytes the lost unit never held;
//   - Resync (which needs every member present) reads the k data units —
//     from Resyncing members too, whose units are as the previous host left
//     them unless they missed a write of that stripe since — re-encodes the
//     parity and writes it to every parity member. A stripe whose data unit
//     is on a member that missed a write of it while suspect cannot be
//     repaired: its region stays dirty, that member stays Resyncing and
//     Resync returns ErrUnrecoverable.
//
// A stripe stops being suspect once its parity was derived again from its
// whole data: by Resync, Reencode, a write spanning whole units (columns
// [0, S)) that covers every data unit it cannot read, or a trim of the
// whole stripe. Until then a degraded read there is a medium error, never
// reconstructed garbage. A partial-parity log would close the hole instead;
// the set does not keep one.
type EC struct {
	members
	k, m, n    int
	unit       int64 // S
	memberSize int64
	stripes    int64
	size       int64
	code       *rs.Code

	// suspect has bit s set while stripe s's parity may disagree with its
	// data (see Crash recovery); bits are set by NewEC only and cleared
	// under the stripe's exclusive lock. nSuspect counts the bits set.
	suspect  []atomic.Uint64
	nSuspect atomic.Int64

	locks [ecLockSlots]sync.RWMutex // stripe s: locks[s % ecLockSlots]
	// cols are the column locks: block b (ecColBlock columns) of stripe s
	// is cols[colSlot(s, b)]. A write of columns [c0, c1) of a stripe that
	// is not suspect holds them exclusively, under the stripe's shared lock;
	// a degraded read shares them.
	cols [ecColSlots]sync.RWMutex
	bufs sync.Pool // *stripeBuf
	// staleAtBuild is the set of members that started Failed having
	// missed writes (ECConfig.Stale): whatever they hold in a suspect stripe
	// may predate writes they missed under the previous host, so it never
	// stands in for data.
	staleAtBuild uint64

	// succ[i] is the successor of member i (ECConfig.Successors), or -1;
	// nil when there is none.
	succ []int

	missed struct {
		sync.Mutex
		m map[int64]uint64 // suspect stripe → members that missed a write of it
	}
}

// stripeBuf is scratch space for one stripe operation: n units of S bytes.
type stripeBuf struct {
	mem    []byte
	unit   int64
	shards [][]byte
	want   []bool
	errs   []error
}

// col returns the first w bytes of shard i's scratch unit.
func (b *stripeBuf) col(i int, w int64) []byte {
	o := int64(i) * b.unit
	return b.mem[o : o+w : o+b.unit]
}

// NewEC builds an erasure-coded set over cfg.Members.
func NewEC(cfg ECConfig) (*EC, error) {
	if cfg.StripeUnit == 0 {
		cfg.StripeUnit = DefaultStripeUnit
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	code, err := rs.New(cfg.K, cfg.M)
	if err != nil {
		return nil, fmt.Errorf("raid: ec %d+%d: %w", cfg.K, cfg.M, err)
	}
	n := cfg.K + cfg.M
	memberSize := cfg.Members[0].Size()
	stripes := memberSize / cfg.StripeUnit
	e := &EC{
		k:          cfg.K,
		m:          cfg.M,
		n:          n,
		unit:       cfg.StripeUnit,
		memberSize: memberSize,
		stripes:    stripes,
		size:       stripes * int64(cfg.K) * cfg.StripeUnit,
		code:       code,
	}
	if err := e.init("ec", cfg.SetConfig, cfg.K, e.size); err != nil {
		return nil, err
	}
	// Successors do not count among the members the set needs.
	e.slots = e.allShards()
	if len(cfg.Successors) > 0 {
		e.succ = make([]int, n)
		for i := range e.succ {
			e.succ[i] = -1
		}
		for j, i := range cfg.Successors {
			e.succ[i] = j
		}
	}
	for _, i := range cfg.Stale {
		e.staleAtBuild |= 1 << i
	}
	e.missed.m = make(map[int64]uint64)
	e.loadSuspects()
	unit := cfg.StripeUnit
	e.bufs.New = func() any {
		return &stripeBuf{
			mem:    make([]byte, int64(n)*unit),
			unit:   unit,
			shards: make([][]byte, n),
			want:   make([]bool, n),
			errs:   make([]error, n),
		}
	}
	return e, nil
}

// Size is the capacity of the set: k × the member size rounded down to a
// whole number of stripe units.
func (e *EC) Size() int64 { return e.size }

func (e *EC) getBuf() *stripeBuf { return e.bufs.Get().(*stripeBuf) }

func (e *EC) putBuf(b *stripeBuf) {
	clear(b.shards) // drop references to callers' buffers
	clear(b.errs)
	e.bufs.Put(b)
}

// each runs fn(0..count-1) with at most limit calls at once and returns the
// first error; after an error it starts no further calls.
func each(count int64, limit int, fn func(j int64) error) error {
	if count == 1 {
		return fn(0)
	}
	var (
		wg    sync.WaitGroup
		sem   = make(chan struct{}, limit)
		errMu sync.Mutex
		first error
	)
	for j := int64(0); j < count; j++ {
		sem <- struct{}{}
		errMu.Lock()
		stop := first != nil
		errMu.Unlock()
		if stop {
			<-sem
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(j); err != nil {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}
