package raid

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
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
type ECConfig struct {
	// Members are the K+M chunks of the set, all of the same Size. Member i
	// is member i in the layout drawn on EC.
	Members []Device
	// K is the number of data units per stripe, at least 1 (1+m behaves like
	// an (m+1)-way mirror with a rotating copy order).
	K int
	// M is the number of parity units per stripe, at least 1: the set
	// survives M members that are not in sync. K+M is at most 64.
	M int
	// StripeUnit is S, the bytes of one stripe on one member: a power of two
	// of at least 4096. 0 means DefaultStripeUnit (64 KiB).
	StripeUnit int64
	// WIB is the set's write-intent bitmap over its logical bytes (Size, k
	// times the member size). nil means an in-memory bitmap with 1 MiB
	// regions, forgotten on exit.
	//
	// Regions that need a resync in WIB when NewEC runs — a bitmap reopened
	// after hostd stopped, the LOG bitmaps merged at attach, a whole-set
	// Mark for a lost record — are taken to be where the previous host may
	// have died mid-write: their stripes' parity is not trusted until
	// Resync re-encodes it (see "Crash recovery" on EC). Marks made later
	// (MarkAll, the LOG of a member that comes back after attach) only say
	// that some member missed writes. A member given to the set is taken to
	// hold what it held when the previous host stopped; one known to have
	// missed writes before that must start in Degraded and be rebuilt.
	WIB *bitmap.WIB
	// Degraded lists members that start Failed (unreachable at attach). At
	// most M: with fewer than K members the set cannot serve anything.
	Degraded []int
	// BeforeDegradedWrite, if set, is called once after a member fails and
	// before the first write that the set acknowledges without it; hostd
	// pins the survivors' LOG bitmaps there (DESIGN §2 rule 3). An error is
	// logged and the write proceeds: the WIB still records it.
	BeforeDegradedWrite func(ctx context.Context) error
	// AfterWhole, Pinned and HookTimeout are as in MirrorConfig.
	AfterWhole  func(ctx context.Context) error
	Pinned      bool
	HookTimeout time.Duration
	// ResyncRate limits Resync in logical bytes per second; 0 = unlimited.
	ResyncRate int64
	// Logger receives member failures. nil discards.
	Logger *slog.Logger
	// OnStateChange, if set, is called after a member changes state, once
	// per change, with no lock of the set held. Calls for different members
	// may run concurrently.
	OnStateChange func(member int, st MemberState, err error)
}

func (c *ECConfig) validate() error {
	if c.K < 1 || c.M < 1 {
		return fmt.Errorf("raid: ec %d+%d: k and m must both be at least 1", c.K, c.M)
	}
	if c.K+c.M > ecMaxMembers {
		return fmt.Errorf("raid: ec %d+%d: at most %d members are supported", c.K, c.M, ecMaxMembers)
	}
	if len(c.Members) != c.K+c.M {
		return fmt.Errorf("raid: ec %d+%d needs %d members, got %d", c.K, c.M, c.K+c.M, len(c.Members))
	}
	for i, m := range c.Members {
		if m == nil {
			return fmt.Errorf("raid: ec member %d is nil", i)
		}
	}
	s := c.StripeUnit
	if s < 4096 || s&(s-1) != 0 {
		return fmt.Errorf("raid: ec stripe unit %d must be a power of two of at least 4096", s)
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
	if len(c.Degraded) > c.M {
		return fmt.Errorf("%w: ec %d+%d with %d members degraded: at least %d must be reachable", ErrNoMembers, c.K, c.M, len(c.Degraded), c.K)
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
//   - otherwise the set always reconstruct-writes: it reads columns [c0, c1)
//     of the data units the write does not fully cover, merges the new bytes,
//     encodes those columns of parity and writes the new data bytes and the
//     parity columns. A 4 KiB write to 4+2 reads 3 × 4 KiB and writes 3 ×
//     4 KiB; a write that crosses a unit boundary is done as two such column
//     ranges. Read-modify-write with parity deltas would read 1+m units
//     instead of k−1; reconstruct-write was chosen because it is one code
//     path for healthy and degraded stripes and re-derives parity from data
//     on every write.
//
// Once the set starts writing a stripe's units it finishes them even if the
// caller's context ends, so that cancellation cannot leave a stripe whose
// parity disagrees with its data (members bound their own request time).
//
// # Write-intent bitmap and locks
//
// The WIB covers the set's logical bytes. Every write and trim runs inside
// WIB.Begin/End over its logical range; it ends with allMembersOK only if
// every member that holds one of its units (parity included) got it, and
// then cleans its regions (ClearRange). A write that skipped a Failed
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
//  3. stripe locks (a striped table of ecLockSlots): a stripe write or
//     repair holds its stripe's lock exclusively, a degraded read shares
//     it, so no reconstruction sees half a write. A goroutine holds one
//     stripe lock at a time, except Trim, which takes those of up to
//     ecLockSlots whole stripes in slot order.
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
//     a write that needs a lost unit only to compute parity goes through,
//     and the stripe stays suspect;
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
	k, m, n    int
	unit       int64 // S
	memberSize int64
	stripes    int64
	size       int64
	code       *rs.Code
	log        *slog.Logger
	onChange   func(int, MemberState, error)
	beforeDW   func(context.Context) error
	rate       int64
	wib        *bitmap.WIB
	ownWIB     bool

	// view is the members' current devices and states; it is replaced, never
	// changed, and only under mu.
	view atomic.Pointer[ecView]
	// pending is true while mu.pending may hold failures to report.
	pending atomic.Bool

	// suspect has bit s set while stripe s's parity may disagree with its
	// data (see Crash recovery); bits are set by NewEC only and cleared
	// under the stripe's exclusive lock. nSuspect counts the bits set.
	suspect  []atomic.Uint64
	nSuspect atomic.Int64

	join     sync.RWMutex              // shared by writes and trims, exclusive by Rejoin
	regions  regionLockTable           // region r: regions.of(r)
	locks    [ecLockSlots]sync.RWMutex // stripe s: locks[s % ecLockSlots]
	resyncMu sync.Mutex                // one Resync at a time
	hooks    *setHooks                 // runs BeforeDegradedWrite and AfterWhole for the health machine
	bufs     sync.Pool                 // *stripeBuf
	// staleAtBuild is the set of members that started Failed: whatever
	// they hold in a suspect stripe may predate writes they missed under
	// the previous host, so it never stands in for data.
	staleAtBuild uint64

	mu struct {
		sync.Mutex
		h       *health          // member states and REMB duties; the view mirrors it; guarded by mu
		pending []memberChange   // guarded by mu: not yet passed to onChange
		missed  map[int64]uint64 // suspect stripe → members that missed a write of it; guarded by mu
	}
}

// ecView is an immutable snapshot of the members.
type ecView struct {
	devs      []Device
	gen       []uint64 // bumped by every Rejoin of the member
	failed    uint64   // members Failed
	resyncing uint64   // members Resyncing
}

func (v *ecView) clone() *ecView {
	return &ecView{devs: slices.Clone(v.devs), gen: slices.Clone(v.gen), failed: v.failed, resyncing: v.resyncing}
}

// notInSync is the set of members that must not be read.
func (v *ecView) notInSync() uint64 { return v.failed | v.resyncing }

type memberChange struct {
	member int
	err    error
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

// writeOp is the state one WriteAt or Trim shares across its stripes.
type writeOp struct {
	fua bool
	// partial is set when some member that holds a unit of the write did
	// not get it: it was Failed, or its write failed.
	partial atomic.Bool
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
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
		log:        log,
		onChange:   cfg.OnStateChange,
		beforeDW:   cfg.BeforeDegradedWrite,
		rate:       cfg.ResyncRate,
		wib:        cfg.WIB,
	}
	if e.wib == nil {
		w, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: e.size})
		if err != nil {
			return nil, err
		}
		e.wib, e.ownWIB = w, true
	} else if e.wib.Size() != e.size {
		return nil, fmt.Errorf("raid: WIB covers %d bytes, the ec set has %d", e.wib.Size(), e.size)
	}
	v := &ecView{devs: slices.Clone(cfg.Members), gen: make([]uint64, n)}
	h, err := newHealth(n, cfg.Degraded, cfg.Pinned)
	if err != nil {
		return nil, err
	}
	for _, i := range cfg.Degraded {
		v.failed |= 1 << i
	}
	e.staleAtBuild = v.failed
	e.mu.h = h
	e.hooks = newSetHooks(&e.mu.Mutex, h, cfg.BeforeDegradedWrite, cfg.AfterWhole, cfg.HookTimeout, log)
	e.view.Store(v)
	e.mu.missed = make(map[int64]uint64)
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
	e.mu.Lock()
	delete(e.mu.missed, s)
	e.mu.Unlock()
}

// noteMissed records that the members holding shards of suspect stripe s
// did not get a write of it: their units of s can no longer stand in for
// data when the parity is derived again.
func (e *EC) noteMissed(s int64, shards uint64) {
	if shards == 0 {
		return
	}
	e.mu.Lock()
	e.mu.missed[s] |= e.membersOf(s, shards)
	e.mu.Unlock()
}

// missedShards is the set of shards of stripe s on members that missed a
// write of it while it was suspect.
func (e *EC) missedShards(s int64) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.shardsOf(s, e.mu.missed[s]|e.staleAtBuild)
}

// Size is the capacity of the set: k × the member size rounded down to a
// whole number of stripe units.
func (e *EC) Size() int64 { return e.size }

// WIB is the set's write-intent bitmap.
func (e *EC) WIB() *bitmap.WIB { return e.wib }

// States returns a snapshot of the members' states.
func (e *EC) States() []MemberState {
	v := e.view.Load()
	st := make([]MemberState, e.n)
	for i := range st {
		switch {
		case v.failed&(1<<i) != 0:
			st[i] = Failed
		case v.resyncing&(1<<i) != 0:
			st[i] = Resyncing
		}
	}
	return st
}

// MemberError returns the error that failed member i, if any.
func (e *EC) MemberError(i int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i < 0 || i >= e.n {
		return nil
	}
	return e.mu.h.errs[i]
}

// Degraded reports whether any member is not InSync.
func (e *EC) Degraded() bool { return e.view.Load().notInSync() != 0 }

// MarkAll marks the whole set as needing resync: bitmap mode none, or a
// lost record (DESIGN §2 rule 3). Resync then repairs every stripe. It does
// not make parity suspect: that is decided when the set is built.
func (e *EC) MarkAll() { e.wib.Mark(0, e.size) }

// Close stops a running BeforeDegradedWrite and waits for it, then releases
// an in-memory WIB the set created itself. The set must not be used after.
func (e *EC) Close() error {
	e.hooks.close()
	if e.ownWIB {
		return e.wib.Close()
	}
	return nil
}

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

// usable returns ErrNoMembers when fewer than k members are in sync.
func (e *EC) usable(v *ecView) error {
	out := bits.OnesCount64(v.notInSync())
	if out <= e.m {
		return nil
	}
	return fmt.Errorf("%w: ec %d+%d has %d members in sync, it needs %d (%d failed, %d resyncing)",
		ErrNoMembers, e.k, e.m, e.n-out, e.k, bits.OnesCount64(v.failed), bits.OnesCount64(v.resyncing))
}

// fail marks member i Failed if v still names its current connection. The
// change is reported by notify.
func (e *EC) fail(i int, v *ecView, err error) {
	bit := uint64(1) << i
	e.mu.Lock()
	cur := e.view.Load()
	if cur.gen[i] != v.gen[i] || !e.mu.h.fail(i, v.gen[i], err) {
		// Already failed, or replaced by a rejoin since the I/O started.
		e.mu.Unlock()
		return
	}
	nv := cur.clone()
	nv.failed |= bit
	nv.resyncing &^= bit
	e.view.Store(nv)
	// What the member acknowledged but did not flush may be gone with it.
	e.wib.MarkDirty()
	e.hooks.pumpLocked()
	if e.onChange != nil {
		e.mu.pending = append(e.mu.pending, memberChange{member: i, err: err})
		e.pending.Store(true)
	}
	e.mu.Unlock()
	e.log.Error("ec member failed; set degraded", "member", i, "failed_members", bits.OnesCount64(nv.failed), "err", err)
}

// notify passes queued failures to OnStateChange. Every exported method
// defers it, so it runs after the method released its locks.
func (e *EC) notify() {
	if !e.pending.Load() {
		return
	}
	e.mu.Lock()
	p := e.mu.pending
	e.mu.pending = nil
	e.pending.Store(false)
	e.mu.Unlock()
	for _, c := range p {
		e.onChange(c.member, Failed, c.err)
	}
}

func (e *EC) getBuf() *stripeBuf { return e.bufs.Get().(*stripeBuf) }

func (e *EC) putBuf(b *stripeBuf) {
	clear(b.shards) // drop references to callers' buffers
	clear(b.errs)
	e.bufs.Put(b)
}

func (e *EC) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > e.size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, e.size)
	}
	return nil
}

// fanOut runs op(i) for every index i in set, in parallel, into errs[i].
func fanOut(set uint64, errs []error, op func(i int) error) {
	if set == 0 {
		return
	}
	var wg sync.WaitGroup
	for {
		i := bits.TrailingZeros64(set)
		set &^= 1 << i
		if set == 0 {
			errs[i] = op(i) // the last one runs here
			break
		}
		wg.Go(func() { errs[i] = op(i) })
	}
	wg.Wait()
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

// ReadAt reads the data units covering [off, off+len(p)) straight into p,
// in parallel. A unit on a member that is not in sync, or whose member
// fails now, is reconstructed from k in-sync units of its stripe — unless
// the stripe is suspect (see Crash recovery on EC): then the read fails
// with ErrUnrecoverable.
func (e *EC) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := e.check(off, int64(len(p))); err != nil {
		return err
	}
	defer e.notify()
	if err := e.usable(e.view.Load()); err != nil {
		return err
	}
	if len(p) == 0 {
		return ctx.Err()
	}
	S := e.unit
	end := off + int64(len(p))
	first := off / S // logical unit numbers
	return each((end-1)/S-first+1, ecParallelUnits, func(j int64) error {
		u := first + j
		lo, hi := max(off, u*S), min(end, (u+1)*S)
		return e.readUnit(ctx, p[lo-off:hi-off], u/int64(e.k), int(u%int64(e.k)), lo-u*S)
	})
}

// readUnit reads bytes [c0, c0+len(p)) of data unit d of stripe s.
func (e *EC) readUnit(ctx context.Context, p []byte, s int64, d int, c0 int64) error {
	v := e.view.Load()
	mem := e.shardMember(s, d)
	if v.notInSync()&(1<<mem) == 0 {
		err := v.devs[mem].ReadAt(ctx, p, s*e.unit+c0)
		if err == nil {
			return nil
		}
		if !memberErr(ctx, err) {
			return err
		}
		e.fail(mem, v, err)
	}
	return e.readDegraded(ctx, p, s, d, c0)
}

// readDegraded reads bytes [c0, c0+len(p)) of data unit d of stripe s under
// the stripe's read lock, so that no write of the stripe is half done: from
// d's member if it is in sync by now, else reconstructed from the same
// columns of k in-sync units.
func (e *EC) readDegraded(ctx context.Context, p []byte, s int64, d int, c0 int64) error {
	l := &e.locks[s%ecLockSlots]
	l.RLock()
	defer l.RUnlock()
	b := e.getBuf()
	defer e.putBuf(b)
	w := int64(len(p))
	for {
		v := e.view.Load()
		if err := e.usable(v); err != nil {
			return err
		}
		mem := e.shardMember(s, d)
		if v.notInSync()&(1<<mem) == 0 {
			// A resync finished meanwhile.
			err := v.devs[mem].ReadAt(ctx, p, s*e.unit+c0)
			if err == nil || !memberErr(ctx, err) {
				return err
			}
			e.fail(mem, v, err)
			continue
		}
		if e.isSuspect(s) {
			return fmt.Errorf("%w: stripe %d unit D%d is on member %d, which is %v", ErrUnrecoverable, s, d, mem, e.stateOf(v, mem))
		}
		unread := e.shardsOf(s, v.notInSync())
		read := e.pickInSync(0, unread)
		fanOut(read, b.errs, func(i int) error {
			return v.devs[e.shardMember(s, i)].ReadAt(ctx, b.col(i, w), s*e.unit+c0)
		})
		retry, err := e.settleReads(ctx, s, v, read, b.errs)
		if err != nil {
			return err
		}
		if retry {
			continue
		}
		for i := range b.shards {
			b.shards[i], b.want[i] = nil, false
			if read&(1<<i) != 0 {
				b.shards[i] = b.col(i, w)
			}
		}
		b.shards[d], b.want[d] = p[:0:w], true
		if err := e.code.Reconstruct(b.shards, b.want); err != nil {
			return fmt.Errorf("raid: ec stripe %d: %w", s, err)
		}
		return nil
	}
}

func (e *EC) stateOf(v *ecView, mem int) MemberState {
	switch {
	case v.failed&(1<<mem) != 0:
		return Failed
	case v.resyncing&(1<<mem) != 0:
		return Resyncing
	}
	return InSync
}

// settleReads looks at the errors of reads of the shards in set of stripe
// s, made through v. An error that is the caller's (cancellation) is
// returned; members that failed are marked and retry is true.
func (e *EC) settleReads(ctx context.Context, s int64, v *ecView, set uint64, errs []error) (retry bool, err error) {
	for ; set != 0; set &= set - 1 {
		i := bits.TrailingZeros64(set)
		rerr := errs[i]
		errs[i] = nil
		if rerr == nil {
			continue
		}
		if !memberErr(ctx, rerr) {
			if err == nil {
				err = rerr
			}
			continue
		}
		e.fail(e.shardMember(s, i), v, rerr)
		retry = true
	}
	return retry, err
}

// WriteAt writes p at off, stripe by stripe, several stripes in parallel.
// With fua every member write is FUA. The write succeeds while at least k
// members are in sync; Failed members' units are skipped, Resyncing members
// get theirs.
func (e *EC) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := e.check(off, int64(len(p))); err != nil {
		return err
	}
	defer e.notify()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.usable(e.view.Load()); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	return e.modify(ctx, off, int64(len(p)), fua, func(op *writeOp) error {
		return e.writeRange(ctx, p, off, op)
	})
}

// modify runs a write or trim of [off, off+n) under the join lock and the
// regions' shared locks, inside WIB.Begin/End.
func (e *EC) modify(ctx context.Context, off, n int64, fua bool, do func(op *writeOp) error) error {
	e.join.RLock()
	unlock := e.lockRegions(off, n)
	tok := e.wib.Begin(off, n)
	op := &writeOp{fua: fua}
	err := do(op)
	allOK := err == nil && !op.partial.Load()
	e.wib.End(tok, allOK)
	if allOK && fua {
		// Durable on every member that holds it: nothing to remember. Other
		// writes' regions are cleaned by a Flush of every member.
		e.wib.ClearRange(off, n)
	}
	unlock()
	e.join.RUnlock()
	if err != nil {
		return err
	}
	if !allOK {
		return e.hooks.awaitRecord(ctx)
	}
	return nil
}

// lockRegions takes the shared region locks of [off, off+n) in ascending
// slot order and returns the function that releases them.
func (e *EC) lockRegions(off, n int64) func() {
	return e.regions.rlockRange(e.wib.RegionSize(), off, n)
}

func (e *EC) writeRange(ctx context.Context, p []byte, off int64, op *writeOp) error {
	if len(p) == 0 {
		return nil
	}
	sd := int64(e.k) * e.unit
	end := off + int64(len(p))
	first := off / sd
	return each((end-1)/sd-first+1, ecParallelStripes, func(j int64) error {
		s := first + j
		lo, hi := max(off, s*sd), min(end, (s+1)*sd)
		return e.writeStripe(ctx, s, p[lo-off:hi-off], lo-s*sd, op)
	})
}

// writeStripe writes p at offset a of stripe s's data (0 ≤ a < k·S) under
// the stripe's lock, as one or two column ranges.
func (e *EC) writeStripe(ctx context.Context, s int64, p []byte, a int64, op *writeOp) error {
	l := &e.locks[s%ecLockSlots]
	l.Lock()
	defer l.Unlock()
	S, n := e.unit, int64(len(p))
	switch {
	case n >= S:
		return e.writeColumns(ctx, s, p, a, 0, S, op)
	case a/S == (a+n-1)/S:
		return e.writeColumns(ctx, s, p, a, a%S, a%S+n, op)
	default:
		// Shorter than a unit but across a unit boundary: the end of one
		// unit and the start of the next are disjoint column ranges.
		if err := e.writeColumns(ctx, s, p, a, a%S, S, op); err != nil {
			return err
		}
		return e.writeColumns(ctx, s, p, a, 0, (a+n)%S, op)
	}
}

// cover is the part of data unit d's columns [c0, c1) that a write of
// stripe bytes [a, end) covers, in stripe data offsets [lo, hi).
func (e *EC) cover(d int, c0, c1, a, end int64) (lo, hi int64) {
	base := int64(d) * e.unit
	return max(base+c0, a), min(base+c1, end)
}

// writeColumns updates columns [c0, c1) of stripe s with the bytes of p (at
// stripe data offset a) that fall in them. The stripe's lock is held.
func (e *EC) writeColumns(ctx context.Context, s int64, p []byte, a, c0, c1 int64, op *writeOp) error {
	b := e.getBuf()
	defer e.putBuf(b)
	S, w, end := e.unit, c1-c0, a+int64(len(p))

	var touched, full uint64 // data shards the write reaches / covers in [c0, c1)
	for d := range e.k {
		lo, hi := e.cover(d, c0, c1, a, end)
		if lo >= hi {
			continue
		}
		touched |= 1 << d
		if hi-lo == w {
			full |= 1 << d
		}
	}
	need := e.dataShards() &^ full // data shards whose current bytes are needed
	suspect := e.isSuspect(s)

	// Read what the write does not replace from in-sync members; on a member
	// failure, start over with the new view.
	var (
		v     *ecView
		heals bool // the write derives the whole stripe's parity from data
	)
	for {
		v = e.view.Load()
		if err := e.usable(v); err != nil {
			return err
		}
		unread := e.shardsOf(s, v.notInSync())
		missing := need & unread
		heals = c0 == 0 && c1 == S && missing == 0
		if lost := touched & e.shardsOf(s, v.failed); suspect && !heals && lost != 0 {
			// The new bytes of the lost unit would live only in parity that
			// cannot be trusted: they could never be read back.
			d := bits.TrailingZeros64(lost)
			return fmt.Errorf("%w: stripe %d unit D%d is on failed member %d", ErrUnrecoverable, s, d, e.shardMember(s, d))
		}
		read := need &^ unread
		if missing != 0 {
			// Some needed unit cannot be read: read k units in all so the
			// missing ones can be rebuilt (their old bytes still count for
			// parity). In a suspect stripe the rebuilt bytes may be wrong;
			// they only feed parity, which stays suspect.
			read = e.pickInSync(read, unread)
		}
		if read == 0 {
			break
		}
		fanOut(read, b.errs, func(i int) error {
			return v.devs[e.shardMember(s, i)].ReadAt(ctx, b.col(i, w), s*S+c0)
		})
		retry, err := e.settleReads(ctx, s, v, read, b.errs)
		if err != nil {
			return err
		}
		if retry {
			continue
		}
		if missing != 0 {
			for i := range b.shards {
				b.shards[i], b.want[i] = nil, false
				switch {
				case read&(1<<i) != 0:
					b.shards[i] = b.col(i, w)
				case missing&(1<<i) != 0:
					b.shards[i], b.want[i] = b.col(i, w)[:0], true
				}
			}
			if err := e.code.Reconstruct(b.shards, b.want); err != nil {
				return fmt.Errorf("raid: ec stripe %d: %w", s, err)
			}
		}
		break
	}

	// Merge: fully covered units come straight from p, partly covered ones
	// get the new bytes over the old.
	for d := range e.k {
		lo, hi := e.cover(d, c0, c1, a, end)
		switch {
		case full&(1<<d) != 0:
			b.shards[d] = p[lo-a : hi-a]
		default:
			b.shards[d] = b.col(d, w)
			if touched&(1<<d) != 0 {
				copy(b.shards[d][lo-int64(d)*S-c0:], p[lo-a:hi-a])
			}
		}
	}
	for i := e.k; i < e.n; i++ {
		b.shards[i] = b.col(i, w)
	}
	if err := e.code.Encode(b.shards); err != nil {
		return fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return err // nothing written yet
	}

	// From here on the stripe is finished whatever the caller's context
	// does: a half-written stripe would have parity that lies.
	wctx := context.WithoutCancel(ctx)
	targets := touched | e.allShards()&^e.dataShards()
	skipped := targets & e.shardsOf(s, v.failed)
	write := targets &^ skipped
	if skipped != 0 {
		op.partial.Store(true)
		if suspect {
			e.noteMissed(s, skipped)
		}
	}
	fanOut(write, b.errs, func(i int) error {
		dev := v.devs[e.shardMember(s, i)]
		if i >= e.k {
			return dev.WriteAt(wctx, b.shards[i], s*S+c0, op.fua)
		}
		lo, hi := e.cover(i, c0, c1, a, end)
		return dev.WriteAt(wctx, p[lo-a:hi-a], s*S+lo-int64(i)*S, op.fua)
	})
	failed, err := e.settleWrites(s, v, write, b.errs, op, suspect)
	if err != nil {
		return err
	}
	switch {
	case !suspect:
	case heals:
		e.clearSuspect(s)
	case failed&touched != 0:
		// The new bytes of that unit are now only in parity that cannot be
		// trusted: the write is not readable back.
		d := bits.TrailingZeros64(failed & touched)
		return fmt.Errorf("%w: stripe %d unit D%d: member %d failed the write", ErrUnrecoverable, s, d, e.shardMember(s, d))
	}
	return nil
}

// settleWrites fails every member whose write (or trim) of stripe s, made
// through v, failed, returns the shards whose write failed, and reports
// whether the set still holds its data.
func (e *EC) settleWrites(s int64, v *ecView, set uint64, errs []error, op *writeOp, suspect bool) (failed uint64, err error) {
	var first error
	for ; set != 0; set &= set - 1 {
		i := bits.TrailingZeros64(set)
		if err := errs[i]; err != nil {
			errs[i] = nil
			failed |= 1 << i
			e.fail(e.shardMember(s, i), v, err)
			if op != nil {
				op.partial.Store(true)
			}
			if suspect {
				e.noteMissed(s, 1<<i)
			}
			if first == nil {
				first = err
			}
		}
	}
	if err := e.usable(e.view.Load()); err != nil {
		if first != nil {
			return failed, fmt.Errorf("%w: %w", err, first)
		}
		return failed, err
	}
	return failed, nil
}

// Flush flushes every member that is not Failed, in parallel. A member
// whose flush fails is failed: its durability is unknown.
func (e *EC) Flush(ctx context.Context) error {
	defer e.notify()
	v := e.view.Load()
	if err := e.usable(v); err != nil {
		return err
	}
	b := e.getBuf()
	defer e.putBuf(b)
	t := e.wib.FlushStart()
	set := e.allShards() &^ v.failed
	fanOut(set, b.errs, func(i int) error { return v.devs[i].Flush(ctx) })
	allOK := v.failed == 0
	for j := set; j != 0; j &= j - 1 {
		if b.errs[bits.TrailingZeros64(j)] != nil {
			allOK = false
		}
	}
	if allOK {
		e.wib.FlushDone(t)
	}
	var first error
	for ; set != 0; set &= set - 1 {
		i := bits.TrailingZeros64(set)
		err := b.errs[i]
		switch {
		case err == nil:
		case memberErr(ctx, err):
			e.fail(i, v, err)
		case first == nil:
			first = err
		}
	}
	if first != nil {
		return first
	}
	return e.usable(e.view.Load())
}

// Trim deallocates [off, off+length). Whole stripes are trimmed on every
// member that is not Failed, parity included (the parity of zeroes is
// zeroes); the partial stripes at either end are written with zeroes
// through the normal write path, so parity stays consistent.
func (e *EC) Trim(ctx context.Context, off, length int64) error {
	if err := e.check(off, length); err != nil {
		return err
	}
	defer e.notify()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.usable(e.view.Load()); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	return e.modify(ctx, off, length, false, func(op *writeOp) error {
		sd := int64(e.k) * e.unit
		end := off + length
		s0, s1 := (off+sd-1)/sd, end/sd // whole stripes [s0, s1)
		if s0 >= s1 {
			return e.writeZeroes(ctx, off, end, op)
		}
		if err := e.writeZeroes(ctx, off, s0*sd, op); err != nil {
			return err
		}
		for s := s0; s < s1; s += ecLockSlots {
			if err := e.trimStripes(ctx, s, min(s1, s+ecLockSlots), op); err != nil {
				return err
			}
		}
		return e.writeZeroes(ctx, s1*sd, end, op)
	})
}

// writeZeroes writes zeroes over [from, to) through the write path.
func (e *EC) writeZeroes(ctx context.Context, from, to int64, op *writeOp) error {
	if from >= to {
		return nil
	}
	z := e.getBuf()
	defer e.putBuf(z)
	clear(z.mem)
	for from < to {
		n := min(to-from, int64(len(z.mem)))
		if err := e.writeRange(ctx, z.mem[:n], from, op); err != nil {
			return err
		}
		from += n
	}
	return nil
}

// trimStripes trims stripes [s0, s1), at most ecLockSlots of them, on every
// member that is not Failed: they occupy member bytes [s0·S, s1·S) on each.
// It holds the stripes' locks, taken in slot order. The stripes are then
// zero on every member that holds them, so none is suspect any more.
func (e *EC) trimStripes(ctx context.Context, s0, s1 int64, op *writeOp) error {
	count := s1 - s0
	first := s0 % ecLockSlots
	inBatch := func(slot int64) bool { return (slot-first+ecLockSlots)%ecLockSlots < count }
	for slot := int64(0); slot < ecLockSlots; slot++ {
		if inBatch(slot) {
			e.locks[slot].Lock()
		}
	}
	defer func() {
		for slot := int64(0); slot < ecLockSlots; slot++ {
			if inBatch(slot) {
				e.locks[slot].Unlock()
			}
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	v := e.view.Load()
	if err := e.usable(v); err != nil {
		return err
	}
	if v.failed != 0 {
		op.partial.Store(true)
	}
	b := e.getBuf()
	defer e.putBuf(b)
	// Like a stripe write, a trim once begun is finished on every member.
	wctx := context.WithoutCancel(ctx)
	set := e.allShards() &^ v.failed // member indices
	fanOut(set, b.errs, func(i int) error {
		return v.devs[i].Trim(wctx, s0*e.unit, count*e.unit)
	})
	// Member i is shard i of stripe 0: settle in that frame.
	if _, err := e.settleWrites(0, v, set, b.errs, op, false); err != nil {
		return err
	}
	if e.nSuspect.Load() != 0 {
		for s := s0; s < s1; s++ {
			e.clearSuspect(s)
		}
	}
	return nil
}

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
		return fmt.Errorf("%w: stripe %d unit D%d is on member %d, which is %v", ErrParityUnknown, s, i, mem, e.stateOf(v, mem))
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
func (e *EC) encodeParity(ctx context.Context, s int64, v *ecView) (retry bool, failed uint64, err error) {
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
		return v.devs[e.shardMember(s, i)].WriteAt(wctx, b.shards[i], s*S, true)
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
func (e *EC) rebuildShards(ctx context.Context, s int64, v *ecView, targets uint64) (retry bool, failed uint64, err error) {
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
		return v.devs[e.shardMember(s, i)].WriteAt(wctx, b.shards[i], s*S, true)
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
func (e *EC) rebuildVerified(ctx context.Context, s int64, v *ecView, missed uint64) (lost, retry bool, failed uint64, err error) {
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
	c := e.getBuf()
	defer e.putBuf(c)
	for i := range c.shards {
		c.shards[i] = c.col(i, S)
		if i < e.k {
			c.shards[i] = b.shards[i]
		}
	}
	if err := e.code.Encode(c.shards); err != nil {
		return false, false, 0, fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	for i := e.k; i < e.n; i++ {
		if avail&(1<<i) != 0 && !bytes.Equal(c.shards[i], b.shards[i]) {
			e.log.Error("ec stripe torn: its parity disagrees with its data and a data unit is stale", "stripe", s, "parity", i-e.k)
			return true, false, 0, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return false, false, 0, err
	}
	wctx := context.WithoutCancel(ctx)
	fanOut(missed, b.errs, func(i int) error {
		return v.devs[e.shardMember(s, i)].WriteAt(wctx, b.shards[i], s*S, true)
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
	if i < 0 || i >= e.n {
		return fmt.Errorf("raid: ec member %d out of range [0, %d)", i, e.n)
	}
	if d == nil {
		return fmt.Errorf("raid: ec rejoining member %d is nil", i)
	}
	if d.Size() != e.memberSize {
		return fmt.Errorf("raid: rejoining ec member %d has size %d, the members have %d", i, d.Size(), e.memberSize)
	}
	e.join.Lock()
	e.mu.Lock()
	cur := e.view.Load()
	conn, err := e.mu.h.rejoin(i)
	if err != nil {
		e.mu.Unlock()
		e.join.Unlock()
		return fmt.Errorf("raid: ec member %d is %v, not failed", i, e.stateOf(cur, i))
	}
	nv := cur.clone()
	nv.devs[i] = d
	nv.gen[i] = conn
	nv.failed &^= 1 << i
	nv.resyncing |= 1 << i
	e.view.Store(nv)
	e.mu.Unlock()
	e.join.Unlock()
	e.log.Info("ec member rejoined; resyncing", "member", i)
	if e.onChange != nil {
		e.onChange(i, Resyncing, nil)
	}
	return nil
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
	defer e.notify() // after the unlock: OnStateChange may call Resync
	e.resyncMu.Lock()
	defer e.resyncMu.Unlock()
	start := e.view.Load()
	if start.failed != 0 {
		return 0, fmt.Errorf("%w: member %d is still degraded", ErrResyncAborted, bits.TrailingZeros64(start.failed))
	}
	rs := e.wib.RegionSize()
	var copied int64
	lostRegions := map[int64]bool{}
	lostStripes := map[int64]bool{}
	began := time.Now()
	for pass := 0; ; pass++ {
		var todo []int64
		var todoBytes int64
		for from := int64(0); ; {
			r, ok := e.wib.NextDirty(from)
			if !ok {
				break
			}
			for off := r.Off; off < r.Off+r.Len; off += rs {
				if region := off / rs; e.wib.NeedsResync(region) && !lostRegions[region] {
					todo = append(todo, region)
					todoBytes += min(rs, e.size-off)
				}
			}
			from = r.Off + r.Len
		}
		if len(todo) == 0 {
			break
		}
		if pass > 100 {
			return copied, fmt.Errorf("%w: regions keep getting dirty under the resync", ErrResyncAborted)
		}
		total := copied + todoBytes
		for _, region := range todo {
			if err := ctx.Err(); err != nil {
				return copied, err
			}
			n, lost, err := e.resyncRegion(ctx, region, start)
			if err != nil {
				return copied, err
			}
			copied += n
			if len(lost) > 0 {
				lostRegions[region] = true
				for _, s := range lost {
					lostStripes[s] = true
				}
			}
			if progress != nil {
				progress(ResyncProgress{DoneBytes: copied, TotalBytes: total})
			}
			if e.rate > 0 {
				// Throttle: stay at or below rate bytes per second overall.
				want := time.Duration(float64(copied) / float64(e.rate) * float64(time.Second))
				if d := want - time.Since(began); d > 0 {
					select {
					case <-ctx.Done():
						return copied, ctx.Err()
					case <-time.After(d):
					}
				}
			}
		}
	}
	if len(lostStripes) > 0 {
		e.log.Error("ec resync left stripes whose parity may be stale and whose data unit is on a member that missed writes",
			"stripes", len(lostStripes), "regions", len(lostRegions))
		return copied, fmt.Errorf("%w: %d stripes in %d regions keep a data unit on a member that missed writes since the set was built; it stays resyncing",
			ErrUnrecoverable, len(lostStripes), len(lostRegions))
	}
	// Every region is repaired: Resyncing members join the readers.
	e.mu.Lock()
	cur := e.view.Load()
	if err := e.sameMembers(start, cur); err != nil {
		e.mu.Unlock()
		return copied, err
	}
	var joined uint64
	for _, i := range e.mu.h.resynced(start.gen, !wibNeedsResync(e.wib)) {
		joined |= 1 << i
	}
	if joined != 0 {
		nv := cur.clone()
		nv.resyncing &^= joined
		e.view.Store(nv)
	}
	e.hooks.pumpLocked()
	e.mu.Unlock()
	for set := joined; set != 0; set &= set - 1 {
		i := bits.TrailingZeros64(set)
		e.log.Info("ec member in sync", "member", i, "resynced", copied)
		if e.onChange != nil {
			e.onChange(i, InSync, nil)
		}
	}
	return copied, nil
}

// sameMembers returns ErrResyncAborted if a member failed or rejoined since
// the view start.
func (e *EC) sameMembers(start, cur *ecView) error {
	if cur.failed != 0 {
		return fmt.Errorf("%w: member %d failed", ErrResyncAborted, bits.TrailingZeros64(cur.failed))
	}
	for i := range cur.gen {
		if cur.gen[i] != start.gen[i] {
			return fmt.Errorf("%w: member %d rejoined during the resync", ErrResyncAborted, i)
		}
	}
	return nil
}

// resyncRegion repairs every stripe that overlaps region under the
// region's exclusive lock. It returns the region's logical bytes and the
// suspect stripes it could not repair; then, or on an error, the region
// stays dirty.
func (e *EC) resyncRegion(ctx context.Context, region int64, start *ecView) (n int64, lost []int64, err error) {
	rs, sd := e.wib.RegionSize(), int64(e.k)*e.unit
	off := region * rs
	n = min(rs, e.size-off)
	lk := e.regions.of(region)
	lk.Lock()
	defer lk.Unlock()
	ticket := e.wib.ResyncStart(region)
	s0, s1 := off/sd, (off+n-1)/sd
	var lostMu sync.Mutex
	err = each(s1-s0+1, ecParallelStripes, func(j int64) error {
		s := s0 + j
		unrepairable, err := e.resyncStripe(ctx, s, start)
		if unrepairable {
			lostMu.Lock()
			lost = append(lost, s)
			lostMu.Unlock()
		}
		return err
	})
	if err != nil || len(lost) > 0 {
		// Not repaired: a Mark between ResyncStart and ResyncDone keeps the
		// region dirty and needing a resync.
		e.wib.Mark(off, n)
	}
	e.wib.ResyncDone(ticket)
	if err != nil {
		return 0, nil, err
	}
	return n, lost, nil
}

// resyncStripe repairs stripe s under its exclusive lock. lost reports a
// suspect stripe with a data unit on a member that missed a write of it.
func (e *EC) resyncStripe(ctx context.Context, s int64, start *ecView) (lost bool, err error) {
	l := &e.locks[s%ecLockSlots]
	l.Lock()
	defer l.Unlock()
	v := e.view.Load()
	if err := e.sameMembers(start, v); err != nil {
		return false, err
	}
	if err := e.usable(v); err != nil {
		return false, err
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
				return true, nil
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
	if err != nil {
		return false, fmt.Errorf("%w: stripe %d: %w", ErrResyncAborted, s, err)
	}
	return false, nil
}
