// This file holds the EC set's read path: ReadAt, plain unit reads and
// degraded reads that reconstruct a unit from k in-sync units.

package raid

import (
	"context"
	"fmt"
	"math/bits"
)

// ReadAt reads the data units covering [off, off+len(p)) straight into p,
// in parallel. A unit on a member that is not in sync, or whose member
// fails now, is reconstructed from k in-sync units of its stripe — unless
// the stripe is suspect (see Crash recovery on EC): then the read fails
// with ErrUnrecoverable.
func (e *EC) ReadAt(ctx context.Context, p []byte, off int64) error {
	e.fg.Add(1)
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
// the stripe's and the columns' shared locks, so that no write of those
// columns is half done: from
// d's member if it is in sync by now, else reconstructed from the same
// columns of k in-sync units.
func (e *EC) readDegraded(ctx context.Context, p []byte, s int64, d int, c0 int64) error {
	l := &e.locks[s%ecLockSlots]
	l.RLock()
	defer l.RUnlock()
	defer e.lockColumns(s, c0, c0+int64(len(p)), false).unlock()
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
			return fmt.Errorf("%w: stripe %d unit D%d is on member %d, which is %v", ErrUnrecoverable, s, d, mem, v.state(mem))
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

// settleReads looks at the errors of reads of the shards in set of stripe
// s, made through v. An error that is the caller's (cancellation) is
// returned; members that failed are marked and retry is true.
func (e *EC) settleReads(ctx context.Context, s int64, v *memberView, set uint64, errs []error) (retry bool, err error) {
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
