package raid

import (
	"context"
	"errors"
	"fmt"

	"github.com/chunkraid/chunkraid/raid/internal/rs"
)

// ErrReadOnly fails a write to a read-only device (ECReader).
var ErrReadOnly = errors.New("raid: read-only device")

// ECReader reads the data of an erasure-coded set from its members and
// writes nothing: a view of members whose bytes do not change (a
// snapshot). It has no health machine and keeps no state between reads:
// a read goes to the member holding the data unit and, when that member
// fails it, is rebuilt from the same columns of k other members. The
// layout is EC's (member j holds shard (j+s) mod n of stripe s).
type ECReader struct {
	members []Device
	k, n    int
	unit    int64
	size    int64
	code    *rs.Code
}

var _ Device = (*ECReader)(nil)

// NewECReader returns a reader of the ec:k+m set whose members, in member
// order, are members; stripeUnit 0 means DefaultStripeUnit.
func NewECReader(members []Device, k, m int, stripeUnit int64) (*ECReader, error) {
	if stripeUnit == 0 {
		stripeUnit = DefaultStripeUnit
	}
	if len(members) != k+m {
		return nil, fmt.Errorf("raid: ec:%d+%d has %d members, got %d", k, m, k+m, len(members))
	}
	if stripeUnit <= 0 {
		return nil, fmt.Errorf("raid: stripe unit %d", stripeUnit)
	}
	code, err := rs.New(k, m)
	if err != nil {
		return nil, err
	}
	size, err := memberSize(members)
	if err != nil {
		return nil, err
	}
	return &ECReader{members: members, k: k, n: k + m, unit: stripeUnit, size: int64(k) * (size / stripeUnit * stripeUnit), code: code}, nil
}

// Size is the set's logical size: k stripe units per stripe.
func (r *ECReader) Size() int64 { return r.size }

// ReadAt reads the set's logical bytes [off, off+len(p)).
func (r *ECReader) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > r.size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, len(p), r.size)
	}
	end := off + int64(len(p))
	for pos := off; pos < end; {
		u := pos / r.unit
		hi := min(end, (u+1)*r.unit)
		if err := r.readUnit(ctx, p[pos-off:hi-off], u/int64(r.k), int(u%int64(r.k)), pos-u*r.unit); err != nil {
			return err
		}
		pos = hi
	}
	return nil
}

// readUnit reads bytes [c0, c0+len(p)) of data shard d of stripe s.
func (r *ECReader) readUnit(ctx context.Context, p []byte, s int64, d int, c0 int64) error {
	rot := int(s % int64(r.n))
	mem := (d - rot + r.n) % r.n
	at := s*r.unit + c0
	err := r.members[mem].ReadAt(ctx, p, at)
	if err == nil || ctx.Err() != nil {
		return err
	}
	return r.rebuild(ctx, p, s, mem, c0, []error{fmt.Errorf("member %d: %w", mem, err)})
}

func (r *ECReader) ReadMember(ctx context.Context, p []byte, j int, off int64) error {
	if j < 0 || j >= r.n {
		return fmt.Errorf("raid: no member %d in ec:%d+%d", j, r.k, r.n-r.k)
	}
	if off < 0 || off+int64(len(p)) > r.size/int64(r.k) {
		return fmt.Errorf("%w: member offset %d length %d member size %d", ErrOutOfRange, off, len(p), r.size/int64(r.k))
	}
	end := off + int64(len(p))
	for pos := off; pos < end; {
		s := pos / r.unit
		hi := min(end, (s+1)*r.unit)
		if err := r.rebuild(ctx, p[pos-off:hi-off], s, j, pos-s*r.unit, nil); err != nil {
			return err
		}
		pos = hi
	}
	return nil
}

// rebuild fills p with bytes [c0, c0+len(p)) of member mem's shard of
// stripe s from k other members; errs are the errors that led here.
func (r *ECReader) rebuild(ctx context.Context, p []byte, s int64, mem int, c0 int64, errs []error) error {
	rot := int(s % int64(r.n))
	at := s*r.unit + c0
	shards := make([][]byte, r.n)
	have := 0
	for j := 0; j < r.n && have < r.k; j++ {
		if j == mem {
			continue
		}
		buf := make([]byte, len(p))
		if err := r.members[j].ReadAt(ctx, buf, at); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			errs = append(errs, fmt.Errorf("member %d: %w", j, err))
			continue
		}
		shards[(j+rot)%r.n] = buf
		have++
	}
	if have < r.k {
		return fmt.Errorf("%w: stripe %d has %d of the %d members it needs: %w", ErrNoMembers, s, have, r.k, errors.Join(errs...))
	}
	want := make([]bool, r.n)
	shard := (mem + rot) % r.n
	want[shard] = true
	shards[shard] = p[:0:len(p)]
	if err := r.code.Reconstruct(shards, want); err != nil {
		return err
	}
	if len(p) > 0 && &shards[shard][0] != &p[0] {
		copy(p, shards[shard])
	}
	return nil
}

func (r *ECReader) WriteAt(context.Context, []byte, int64, bool) error { return ErrReadOnly }
func (r *ECReader) Trim(context.Context, int64, int64) error           { return ErrReadOnly }
func (r *ECReader) Flush(context.Context) error                        { return nil }
