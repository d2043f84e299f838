// This file holds the EC set's write path: WriteAt, the reconstruct-write
// of stripe columns with parity encoding, Flush and Trim.

package raid

import (
	"bytes"
	"context"
	"fmt"
	"math/bits"
	"sync"
)

// WriteAt writes p at off, stripe by stripe, several stripes in parallel.
// With fua every member write is FUA. The write succeeds while at least k
// members are in sync; Failed members' units are skipped, Resyncing members
// get theirs.
func (e *EC) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	e.fg.Add(1)
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

// writeStripe writes p at offset a of stripe s's data (0 ≤ a < k·S) as
// one or two column ranges. A suspect stripe is written under its
// exclusive lock; another under its shared lock and the exclusive locks of
// the columns written, so that writes to other columns of it go on at once.
func (e *EC) writeStripe(ctx context.Context, s int64, p []byte, a int64, op *writeOp) error {
	// Stripes only stop being suspect: one that is not now never becomes so.
	exclusive := e.isSuspect(s)
	l := &e.locks[s%ecLockSlots]
	if exclusive {
		l.Lock()
		defer l.Unlock()
	} else {
		l.RLock()
		defer l.RUnlock()
	}
	columns := func(c0, c1 int64) error {
		if !exclusive {
			defer e.lockColumns(s, c0, c1, true).unlock()
		}
		return e.writeColumns(ctx, s, p, a, c0, c1, op)
	}
	S, n := e.unit, int64(len(p))
	switch {
	case n >= S:
		return columns(0, S)
	case a/S == (a+n-1)/S:
		return columns(a%S, a%S+n)
	default:
		// Shorter than a unit but across a unit boundary: the end of one
		// unit and the start of the next are disjoint column ranges.
		if err := columns(a%S, S); err != nil {
			return err
		}
		return columns(0, (a+n)%S)
	}
}

// lockColumns takes the column locks of columns [c0, c1) of stripe s,
// exclusively if write, in ascending slot order, and returns them for
// unlock. The stripe's lock is held (shared). The blocks of one stripe
// have consecutive slots that never wrap round the table: a stripe has
// S/ecColBlock blocks, a power of two that divides ecColSlots.
func (e *EC) lockColumns(s, c0, c1 int64, write bool) colLocks {
	b0, b1 := c0/ecColBlock, (c1-1)/ecColBlock
	l := colLocks{cols: &e.cols, first: e.colSlot(s, b0), n: int(b1 - b0 + 1), write: write}
	l.each(func(m *sync.RWMutex) {
		if write {
			m.Lock()
		} else {
			m.RLock()
		}
	})
	return l
}

// colLocks is a range of column locks held: n slots from first.
type colLocks struct {
	cols  *[ecColSlots]sync.RWMutex
	first int
	n     int
	write bool
}

// each calls f on the locks of l in ascending slot order.
func (l colLocks) each(f func(*sync.RWMutex)) {
	for i := l.first; i < l.first+l.n; i++ {
		f(&l.cols[i])
	}
}

func (l colLocks) unlock() {
	l.each(func(m *sync.RWMutex) {
		if l.write {
			m.Unlock()
		} else {
			m.RUnlock()
		}
	})
}

// colSlot is the column lock of block b of stripe s.
func (e *EC) colSlot(s, b int64) int {
	return int((s*(e.unit/ecColBlock) + b) % ecColSlots)
}

// cover is the part of data unit d's columns [c0, c1) that a write of
// stripe bytes [a, end) covers, in stripe data offsets [lo, hi).
func (e *EC) cover(d int, c0, c1, a, end int64) (lo, hi int64) {
	base := int64(d) * e.unit
	return max(base+c0, a), min(base+c1, end)
}

// writeColumns updates columns [c0, c1) of stripe s with the bytes of p (at
// stripe data offset a) that fall in them. The stripe's lock is held
// exclusively, or shared with the columns' locks held exclusively.
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
	if !suspect {
		if done, err := e.writeDelta(ctx, s, p, a, c0, c1, touched, need, op, b); done {
			return err
		}
	}

	// Read what the write does not replace from in-sync members; on a member
	// failure, start over with the new view.
	var (
		v     *memberView
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
		verify := suspect && missing != 0
		switch {
		case verify:
			// The parity may be torn, and the missing units are rebuilt from
			// it: read every unit that can vouch for them (see
			// checkCodeword), so that parity encoded from a rebuild of torn
			// parity never overwrites the evidence that it was torn.
			read = e.allShards() &^ e.shardsOf(s, v.failed) &^ e.missedShards(s)
			missing = e.dataShards() &^ read
		case missing != 0:
			// Some needed unit cannot be read: read k units in all so the
			// missing ones can be rebuilt (their old bytes still count for
			// parity).
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
		if verify && missing != 0 {
			if err := e.checkCodeword(s, b, read, w); err != nil {
				return err
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
	e.sendColumns(wctx, s, v, write, b, p, a, c0, c1, op)
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

// writeDelta updates columns [c0, c1) of stripe s by read-modify-write
// with parity deltas: it reads the old bytes of the data units the write
// touches (touched) and of the parity, and writes the new data and the
// parity updated from the difference (rs.Code.Update). It does so only
// where that reads fewer units than the reconstruct-write, which reads the
// units the write does not replace (need) — 1+m against k−1 for a write
// inside one unit, so for k > m+2 — and only when every unit it reads is
// on an in-sync member of a stripe that is not suspect. Otherwise, and
// after a member failed a read, done is false and the caller
// reconstruct-writes. The stripe's lock is held, exclusively or shared
// with the columns' locks held exclusively.
func (e *EC) writeDelta(ctx context.Context, s int64, p []byte, a, c0, c1 int64, touched, need uint64, op *writeOp, b *stripeBuf) (done bool, err error) {
	read := touched | e.allShards()&^e.dataShards()
	if bits.OnesCount64(read) >= bits.OnesCount64(need) {
		return false, nil
	}
	v := e.view.Load()
	if e.usable(v) != nil || e.shardsOf(s, v.notInSync())&read != 0 {
		return false, nil
	}
	S, w, end := e.unit, c1-c0, a+int64(len(p))
	fanOut(read, b.errs, func(i int) error {
		return v.devs[e.shardMember(s, i)].ReadAt(ctx, b.col(i, w), s*S+c0)
	})
	retry, err := e.settleReads(ctx, s, v, read, b.errs)
	if err != nil {
		return true, err
	}
	if retry {
		return false, nil // around the member that failed
	}
	// The new bytes of each touched unit: the write's where it covers the
	// columns, the old ones around them.
	nb := e.getBuf()
	defer e.putBuf(nb)
	newData := nb.shards[:e.k]
	for d := range e.k {
		newData[d] = nil
		if touched&(1<<d) == 0 {
			continue
		}
		lo, hi := e.cover(d, c0, c1, a, end)
		nd := nb.col(d, w)
		copy(nd, b.col(d, w))
		copy(nd[lo-int64(d)*S-c0:], p[lo-a:hi-a])
		newData[d] = nd
	}
	for i := range b.shards {
		b.shards[i] = nil
		if read&(1<<i) != 0 {
			b.shards[i] = b.col(i, w)
		}
	}
	if err := e.code.Update(b.shards, newData); err != nil {
		return true, fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return true, err // nothing written yet
	}
	// From here on the stripe is finished whatever the caller's context
	// does (see writeColumns).
	e.sendColumns(context.WithoutCancel(ctx), s, v, read, b, p, a, c0, c1, op)
	_, err = e.settleWrites(s, v, read, b.errs, op, false)
	return true, err
}

// sendColumns writes columns [c0, c1) of the shards in set of stripe s, in
// parallel, into b.errs: a data shard's new bytes from p (at stripe data
// offset a), a parity shard's from b.shards.
func (e *EC) sendColumns(wctx context.Context, s int64, v *memberView, set uint64, b *stripeBuf, p []byte, a, c0, c1 int64, op *writeOp) {
	S, end := e.unit, a+int64(len(p))
	fanOutWrites(wctx, set, b.errs, op.fua, func(i int) (Device, []byte, int64) {
		dev := e.dev(v, e.shardMember(s, i), op)
		if i >= e.k {
			return dev, b.shards[i], s*S + c0
		}
		lo, hi := e.cover(i, c0, c1, a, end)
		return dev, p[lo-a : hi-a], s*S + lo - int64(i)*S
	})
}

// checkCodeword is the write path's guard against laundering a torn
// suspect stripe. b holds columns of width w of stripe s: the shards in
// read as read, the other data shards rebuilt from some k of them. If more
// than k shards were read, every parity shard read must equal the parity
// encoded from the data; otherwise the stripe's parity is torn and the
// rebuilt units are not what any member holds. Encoding the write's parity
// from them would make every unit present agree on those wrong bytes, and a
// later resync would take them for data (ErrUnrecoverable is the honest
// answer instead). With k shards read there is nothing to check, and
// nothing to overwrite: no unit present disagrees with the rebuild.
func (e *EC) checkCodeword(s int64, b *stripeBuf, read uint64, w int64) error {
	if bits.OnesCount64(read) <= e.k {
		return nil
	}
	torn, err := e.parityDisagrees(s, b, read, w)
	if err != nil {
		return err
	}
	if torn >= 0 {
		d := bits.TrailingZeros64(e.dataShards() &^ read)
		return fmt.Errorf("%w: stripe %d's parity disagrees with its data and unit D%d is missing", ErrUnrecoverable, s, d)
	}
	return nil
}

// parityDisagrees encodes parity from the k data shards of b (columns of
// width w of stripe s) and compares it with the parity shards in present:
// it returns the index (from 0) of the first parity that differs, or -1 if
// every one present agrees.
func (e *EC) parityDisagrees(s int64, b *stripeBuf, present uint64, w int64) (int, error) {
	c := e.getBuf()
	defer e.putBuf(c)
	for i := range c.shards {
		c.shards[i] = c.col(i, w)
		if i < e.k {
			c.shards[i] = b.shards[i]
		}
	}
	if err := e.code.Encode(c.shards); err != nil {
		return 0, fmt.Errorf("raid: ec stripe %d: %w", s, err)
	}
	for i := e.k; i < e.n; i++ {
		if present&(1<<i) != 0 && !bytes.Equal(c.shards[i], b.shards[i]) {
			return i - e.k, nil
		}
	}
	return -1, nil
}

// settleWrites fails every member whose write (or trim) of stripe s, made
// through v, failed, returns the shards whose write failed, and reports
// whether the set still holds its data.
//
// A write or trim (op not nil) of the stripe that every member refused
// for lack of space changed nothing: no member is failed, and the error
// wraps ErrNoSpace.
func (e *EC) settleWrites(s int64, v *memberView, set uint64, errs []error, op *writeOp, suspect bool) (failed uint64, err error) {
	if op != nil {
		var refused []error
		for b := set; b != 0; b &= b - 1 {
			refused = append(refused, errs[bits.TrailingZeros64(b)])
		}
		if noSpace(refused) {
			for b := set; b != 0; b &= b - 1 {
				errs[bits.TrailingZeros64(b)] = nil
			}
			return 0, fmt.Errorf("%w: every member refused stripe %d: %w", ErrNoSpace, s, refused[0])
		}
	}
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
	return e.flush(ctx)
}

func (e *EC) flush(ctx context.Context) error { return e.flushMembers(ctx, false) }

// Trim deallocates [off, off+length). Whole stripes are trimmed on every
// member that is not Failed, parity included (the parity of zeroes is
// zeroes); the partial stripes at either end are written with zeroes
// through the normal write path, so parity stays consistent.
func (e *EC) Trim(ctx context.Context, off, length int64) error {
	e.fg.Add(1)
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
		return e.dev(v, i, op).Trim(wctx, s0*e.unit, count*e.unit)
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
