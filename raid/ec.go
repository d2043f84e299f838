package raid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
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
	// ecParallelStripes bounds the stripes of one write in flight at once.
	ecParallelStripes = 8
	// ecParallelUnits bounds the unit reads of one read in flight at once.
	ecParallelUnits = 16
)

// ErrParityUnknown is returned by Reencode when a stripe's parity cannot be
// derived again because one of its data units is on a failed member.
var ErrParityUnknown = errors.New("raid: parity cannot be re-derived: a data unit is missing")

// ECConfig configures an erasure-coded set.
type ECConfig struct {
	// Members are the K+M chunks of the set, all of the same Size. Member i
	// is member i in the layout drawn on EC.
	Members []Device
	// K is the number of data units per stripe, at least 1 (1+m behaves like
	// an (m+1)-way mirror with a rotating copy order).
	K int
	// M is the number of parity units per stripe, at least 1: the set
	// survives M failed members. K+M is at most 64.
	M int
	// StripeUnit is S, the bytes of one stripe on one member: a power of two
	// of at least 4096. 0 means DefaultStripeUnit (64 KiB).
	StripeUnit int64
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
	return nil
}

// EC is a Reed-Solomon k+m set (DESIGN §1.2): every stripe holds k data
// units and m parity units of S bytes, one unit on each of the n = k+m
// members, at the same member offset s×S for stripe s. The set survives any
// m failed members. It is a Device of k × (member size rounded down to S)
// bytes; logical byte x lives in stripe x / (k·S), data unit (x mod k·S) / S,
// at byte x mod S of that unit.
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
// Writes to one stripe are serialized by a per-stripe lock (a striped table
// of ecLockSlots locks, so writes to other stripes proceed in parallel, and
// the stripes of one large write run in parallel). Reed-Solomon codes every
// byte column of a stripe independently, so a write touches only the columns
// [c0, c1) of the units it covers:
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
// # Failures
//
// A member that returns an error (other than the caller's cancellation) is
// marked Failed for good and the operation carries on degraded: a read of a
// unit on a failed member reconstructs it from k other units of its stripe
// under the stripe's lock; a write skips the failed member's units but
// updates parity, so the others still determine the data. With more than m
// members failed every operation fails with ErrNoMembers.
//
// # The write hole
//
// Writes to the units of one stripe are not atomic across members: a host
// crash mid-write can leave parity that disagrees with data, and a degraded
// read of such a stripe would reconstruct garbage. The set does not record
// this by itself; recovery (REMB, DESIGN §2) must call Reencode on the
// regions named by the recovered bitmap before it serves degraded reads from
// them, and treat ErrParityUnknown there as a medium error.
type EC struct {
	members  []Device
	k, m, n  int
	unit     int64 // S
	stripes  int64
	size     int64
	code     *rs.Code
	log      *slog.Logger
	onChange func(int, MemberState, error)

	// failed has bit i set once member i failed; bits are never cleared.
	failed atomic.Uint64
	// pending is true while mu.pending may hold failures to report.
	pending atomic.Bool

	locks [ecLockSlots]sync.RWMutex // stripe s: locks[s % ecLockSlots]
	bufs  sync.Pool                 // *stripeBuf

	mu struct {
		sync.Mutex
		pending []memberChange // guarded by mu: not yet passed to onChange
	}
}

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
	stripes := cfg.Members[0].Size() / cfg.StripeUnit
	e := &EC{
		members:  append([]Device(nil), cfg.Members...),
		k:        cfg.K,
		m:        cfg.M,
		n:        n,
		unit:     cfg.StripeUnit,
		stripes:  stripes,
		size:     stripes * int64(cfg.K) * cfg.StripeUnit,
		code:     code,
		log:      log,
		onChange: cfg.OnStateChange,
	}
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

// States returns a snapshot of the members' states.
func (e *EC) States() []MemberState {
	f := e.failed.Load()
	st := make([]MemberState, e.n)
	for i := range st {
		if f&(1<<i) != 0 {
			st[i] = Failed
		}
	}
	return st
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

// failedShards is the set of shards of stripe s on failed members: the
// failed-member set rotated left by s mod n within n bits.
func (e *EC) failedShards(s int64) uint64 {
	f := e.failed.Load()
	r := uint(s % int64(e.n))
	if r == 0 {
		return f
	}
	return (f<<r | f>>(uint(e.n)-r)) & e.allShards()
}

func (e *EC) tooManyFailed() error {
	f := bits.OnesCount64(e.failed.Load())
	if f <= e.m {
		return nil
	}
	return fmt.Errorf("%w: ec %d+%d has %d failed members, it survives %d", ErrNoMembers, e.k, e.m, f, e.m)
}

// fail marks member i Failed. The change is reported by notify.
func (e *EC) fail(i int, err error) {
	bit := uint64(1) << i
	if e.failed.Or(bit)&bit != 0 {
		return
	}
	e.log.Error("ec member failed", "member", i, "failed_members", bits.OnesCount64(e.failed.Load()), "err", err)
	if e.onChange == nil {
		return
	}
	e.mu.Lock()
	e.mu.pending = append(e.mu.pending, memberChange{member: i, err: err})
	e.mu.Unlock()
	e.pending.Store(true)
}

// notify passes queued failures to OnStateChange. Every exported method
// defers it, so it runs after the method released its stripe locks.
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

// ReadAt reads the data units covering [off, off+len(p)) straight into p,
// in parallel. A unit on a failed member, or whose member fails now, is
// reconstructed from k other units of its stripe.
func (e *EC) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := e.check(off, int64(len(p))); err != nil {
		return err
	}
	defer e.notify()
	if err := e.tooManyFailed(); err != nil {
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
	mem := e.shardMember(s, d)
	if e.failed.Load()&(1<<mem) == 0 {
		err := e.members[mem].ReadAt(ctx, p, s*e.unit+c0)
		if err == nil {
			return nil
		}
		if !memberErr(ctx, err) {
			return err
		}
		e.fail(mem, err)
	}
	return e.readDegraded(ctx, p, s, d, c0)
}

// readDegraded reconstructs bytes [c0, c0+len(p)) of data unit d of stripe s
// from the same columns of k other units, under the stripe's read lock so
// that no write of the stripe is half done.
func (e *EC) readDegraded(ctx context.Context, p []byte, s int64, d int, c0 int64) error {
	l := &e.locks[s%ecLockSlots]
	l.RLock()
	defer l.RUnlock()
	b := e.getBuf()
	defer e.putBuf(b)
	w := int64(len(p))
	for {
		if err := e.tooManyFailed(); err != nil {
			return err
		}
		fs := e.failedShards(s)
		if fs&(1<<d) == 0 {
			// Failures are permanent, so d's member failed before this was
			// called; reaching here means that invariant broke.
			panic(fmt.Sprintf("raid: ec degraded read of stripe %d unit %d whose member is in sync", s, d))
		}
		// Any k in-sync shards; the lowest indices are the data shards,
		// which are the cheapest to combine.
		avail := e.allShards() &^ fs
		var read uint64
		for range e.k {
			i := bits.TrailingZeros64(avail)
			avail &^= 1 << i
			read |= 1 << i
		}
		fanOut(read, b.errs, func(i int) error {
			return e.members[e.shardMember(s, i)].ReadAt(ctx, b.col(i, w), s*e.unit+c0)
		})
		retry, err := e.settleReads(ctx, s, read, b.errs)
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

// settleReads looks at the errors of reads of the shards in set. An error
// that is the caller's (cancellation) is returned; members that failed are
// marked and retry is true.
func (e *EC) settleReads(ctx context.Context, s int64, set uint64, errs []error) (retry bool, err error) {
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
		e.fail(e.shardMember(s, i), rerr)
		retry = true
	}
	return retry, err
}

// WriteAt writes p at off, stripe by stripe, several stripes in parallel.
// With fua every member write is FUA. The write succeeds while at most m
// members are failed; a failed member's units are skipped.
func (e *EC) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := e.check(off, int64(len(p))); err != nil {
		return err
	}
	defer e.notify()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.tooManyFailed(); err != nil {
		return err
	}
	return e.writeRange(ctx, p, off, fua)
}

func (e *EC) writeRange(ctx context.Context, p []byte, off int64, fua bool) error {
	if len(p) == 0 {
		return nil
	}
	sd := int64(e.k) * e.unit
	end := off + int64(len(p))
	first := off / sd
	return each((end-1)/sd-first+1, ecParallelStripes, func(j int64) error {
		s := first + j
		lo, hi := max(off, s*sd), min(end, (s+1)*sd)
		return e.writeStripe(ctx, s, p[lo-off:hi-off], lo-s*sd, fua)
	})
}

// writeStripe writes p at offset a of stripe s's data (0 ≤ a < k·S) under
// the stripe's lock, as one or two column ranges.
func (e *EC) writeStripe(ctx context.Context, s int64, p []byte, a int64, fua bool) error {
	l := &e.locks[s%ecLockSlots]
	l.Lock()
	defer l.Unlock()
	S, n := e.unit, int64(len(p))
	switch {
	case n >= S:
		return e.writeColumns(ctx, s, p, a, 0, S, fua)
	case a/S == (a+n-1)/S:
		return e.writeColumns(ctx, s, p, a, a%S, a%S+n, fua)
	default:
		// Shorter than a unit but across a unit boundary: the end of one
		// unit and the start of the next are disjoint column ranges.
		if err := e.writeColumns(ctx, s, p, a, a%S, S, fua); err != nil {
			return err
		}
		return e.writeColumns(ctx, s, p, a, 0, (a+n)%S, fua)
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
func (e *EC) writeColumns(ctx context.Context, s int64, p []byte, a, c0, c1 int64, fua bool) error {
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
	need := (uint64(1)<<e.k - 1) &^ full // data shards whose current bytes are needed

	// Read what the write does not replace; on a member failure, start over
	// with the new set of failed members.
	for need != 0 {
		if err := e.tooManyFailed(); err != nil {
			return err
		}
		fs := e.failedShards(s)
		missing := need & fs
		read := need &^ fs
		if missing != 0 {
			// Some needed unit is lost: read k units in all so the lost
			// ones can be rebuilt (their old bytes still count for parity).
			avail := e.allShards() &^ fs &^ read
			for bits.OnesCount64(read) < e.k {
				i := bits.TrailingZeros64(avail)
				avail &^= 1 << i
				read |= 1 << i
			}
		}
		fanOut(read, b.errs, func(i int) error {
			return e.members[e.shardMember(s, i)].ReadAt(ctx, b.col(i, w), s*S+c0)
		})
		retry, err := e.settleReads(ctx, s, read, b.errs)
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
	parity := e.allShards() &^ (uint64(1)<<e.k - 1)
	write := (touched | parity) &^ e.failedShards(s)
	fanOut(write, b.errs, func(i int) error {
		dev := e.members[e.shardMember(s, i)]
		if i >= e.k {
			return dev.WriteAt(wctx, b.shards[i], s*S+c0, fua)
		}
		lo, hi := e.cover(i, c0, c1, a, end)
		return dev.WriteAt(wctx, p[lo-a:hi-a], s*S+lo-int64(i)*S, fua)
	})
	return e.settleWrites(s, write, b.errs)
}

// settleWrites fails every member whose write (or trim) of stripe s failed
// and reports whether the set still holds its data.
func (e *EC) settleWrites(s int64, set uint64, errs []error) error {
	var first error
	for ; set != 0; set &= set - 1 {
		i := bits.TrailingZeros64(set)
		if err := errs[i]; err != nil {
			errs[i] = nil
			e.fail(e.shardMember(s, i), err)
			if first == nil {
				first = err
			}
		}
	}
	if err := e.tooManyFailed(); err != nil {
		if first != nil {
			return fmt.Errorf("%w: %w", err, first)
		}
		return err
	}
	return nil
}

// Flush flushes every member that has not failed, in parallel. A member
// whose flush fails is failed: its durability is unknown.
func (e *EC) Flush(ctx context.Context) error {
	defer e.notify()
	if err := e.tooManyFailed(); err != nil {
		return err
	}
	b := e.getBuf()
	defer e.putBuf(b)
	set := e.allShards() &^ e.failed.Load()
	fanOut(set, b.errs, func(i int) error { return e.members[i].Flush(ctx) })
	var first error
	for ; set != 0; set &= set - 1 {
		i := bits.TrailingZeros64(set)
		err := b.errs[i]
		switch {
		case err == nil:
		case memberErr(ctx, err):
			e.fail(i, err)
		case first == nil:
			first = err
		}
	}
	if first != nil {
		return first
	}
	return e.tooManyFailed()
}

// Trim deallocates [off, off+length). Whole stripes are trimmed on every
// member, parity included (the parity of zeroes is zeroes); the partial
// stripes at either end are written with zeroes through the normal write
// path, so parity stays consistent.
func (e *EC) Trim(ctx context.Context, off, length int64) error {
	if err := e.check(off, length); err != nil {
		return err
	}
	defer e.notify()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.tooManyFailed(); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	sd := int64(e.k) * e.unit
	end := off + length
	s0, s1 := (off+sd-1)/sd, end/sd // whole stripes [s0, s1)
	if s0 >= s1 {
		return e.writeZeroes(ctx, off, end)
	}
	if err := e.writeZeroes(ctx, off, s0*sd); err != nil {
		return err
	}
	for s := s0; s < s1; s += ecLockSlots {
		if err := e.trimStripes(ctx, s, min(s1, s+ecLockSlots)); err != nil {
			return err
		}
	}
	return e.writeZeroes(ctx, s1*sd, end)
}

// writeZeroes writes zeroes over [from, to) through the write path.
func (e *EC) writeZeroes(ctx context.Context, from, to int64) error {
	if from >= to {
		return nil
	}
	z := e.getBuf()
	defer e.putBuf(z)
	clear(z.mem)
	for from < to {
		n := min(to-from, int64(len(z.mem)))
		if err := e.writeRange(ctx, z.mem[:n], from, false); err != nil {
			return err
		}
		from += n
	}
	return nil
}

// trimStripes trims stripes [s0, s1), at most ecLockSlots of them, on every
// in-sync member: they occupy member bytes [s0·S, s1·S) on each. It holds
// the stripes' locks, taken in slot order.
func (e *EC) trimStripes(ctx context.Context, s0, s1 int64) error {
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
	if err := e.tooManyFailed(); err != nil {
		return err
	}
	b := e.getBuf()
	defer e.putBuf(b)
	// Like a stripe write, a trim once begun is finished on every member.
	wctx := context.WithoutCancel(ctx)
	set := e.allShards() &^ e.failed.Load() // member indices
	fanOut(set, b.errs, func(i int) error {
		return e.members[i].Trim(wctx, s0*e.unit, count*e.unit)
	})
	// Member i is shard i of stripe 0: settle in that frame.
	return e.settleWrites(0, set, b.errs)
}

// Reencode rewrites the parity of every stripe that overlaps
// [off, off+length) from its data units, under each stripe's lock. Recovery
// after a host crash calls it for the regions that may have been written
// when the host died (the write hole). If a data unit of such a stripe is on
// a failed member, its parity cannot be re-derived and the error wraps
// ErrParityUnknown: data in that stripe's lost unit is unknown.
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
	if err := e.tooManyFailed(); err != nil {
		return err
	}
	data := uint64(1)<<e.k - 1
	S := e.unit
	b := e.getBuf()
	defer e.putBuf(b)
	if lost := data & e.failedShards(s); lost != 0 {
		i := bits.TrailingZeros64(lost)
		return fmt.Errorf("%w: stripe %d unit D%d is on failed member %d", ErrParityUnknown, s, i, e.shardMember(s, i))
	}
	fanOut(data, b.errs, func(i int) error {
		return e.members[e.shardMember(s, i)].ReadAt(ctx, b.col(i, S), s*S)
	})
	retry, err := e.settleReads(ctx, s, data, b.errs)
	if err != nil {
		return err
	}
	if retry {
		if err := e.tooManyFailed(); err != nil {
			return err
		}
		return fmt.Errorf("%w: stripe %d: a data member failed while being read", ErrParityUnknown, s)
	}
	for i := range b.shards {
		b.shards[i] = b.col(i, S)
	}
	if err := e.code.Encode(b.shards); err != nil {
		return fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	wctx := context.WithoutCancel(ctx)
	write := (e.allShards() &^ data) &^ e.failedShards(s)
	fanOut(write, b.errs, func(i int) error {
		return e.members[e.shardMember(s, i)].WriteAt(wctx, b.shards[i], s*S, false)
	})
	return e.settleWrites(s, write, b.errs)
}
