package raid

import (
	"bytes"
	"context"
	"fmt"

	"github.com/chunkraid/chunkraid/raid/internal/rs"
)

// Verification reads a set's members directly (normally over NBD, beside
// the host that serves the set) and reports where they disagree: for a
// mirror the regions whose copies differ, for an EC set the stripes whose
// parity does not match their data. A write in flight while it reads can
// show up as a mismatch; the verifier reads a mismatching range a second
// time and reports it only if it still disagrees, so run it on a quiet
// volume for an exact answer.

// verifyBatch is how many bytes of each member one read covers.
const verifyBatch = 1 << 20

// An Allocator is a Device that knows which of its ranges may hold data (NBD
// base:allocation). When every member of a set is one, verification reads
// only the units that may hold data on some member: a unit that is a hole on
// every member reads as zeroes on all of them, so the copies agree and the
// parity (zero, as Reed-Solomon is linear) matches.
type Allocator interface {
	// Allocated returns the ranges within [off, off+length) that may hold
	// data, in order. Reporting more than is allocated is allowed.
	Allocated(ctx context.Context, off, length int64) ([]Range, error)
}

// Range is a byte range of a device.
type Range struct{ Off, Len int64 }

// VerifyProgress is called as verification goes, with the bytes of one
// member checked so far and the bytes it will check in all (the allocated
// units when the members are Allocators, else the whole member).
type VerifyProgress func(done, total int64)

// unitsToCheck returns, for units of unit bytes over size bytes, which may
// hold data on some member, and how many do. Without allocation data every
// unit is checked.
func unitsToCheck(ctx context.Context, members []Device, size, unit int64) ([]bool, int64, error) {
	n := (size + unit - 1) / unit
	want := make([]bool, n)
	for _, m := range members {
		if _, ok := m.(Allocator); !ok {
			for i := range want {
				want[i] = true
			}
			return want, n, nil
		}
	}
	for j, m := range members {
		rs, err := m.(Allocator).Allocated(ctx, 0, size)
		if err != nil {
			return nil, 0, fmt.Errorf("raid: allocation of member %d: %w", j, err)
		}
		for _, r := range rs {
			if r.Len <= 0 {
				continue
			}
			for u := max(r.Off, 0) / unit; u < n && u*unit < r.Off+r.Len; u++ {
				want[u] = true
			}
		}
	}
	count := int64(0)
	for _, w := range want {
		if w {
			count++
		}
	}
	return want, count, nil
}

// VerifyMirror compares the members of a mirror region by region (regions
// of region bytes) and returns the indexes of the regions that differ.
// Regions that are holes on every member are not read (see Allocator).
func VerifyMirror(ctx context.Context, members []Device, region int64, progress VerifyProgress) ([]int64, error) {
	if len(members) < 2 {
		return nil, nil
	}
	size := members[0].Size()
	for i, m := range members {
		if m.Size() != size {
			return nil, fmt.Errorf("raid: member %d has %d bytes, member 0 has %d", i, m.Size(), size)
		}
	}
	if region <= 0 {
		region = verifyBatch
	}
	want, count, err := unitsToCheck(ctx, members, size, region)
	if err != nil {
		return nil, err
	}
	total := min(count*region, size)
	bufs := make([][]byte, len(members))
	for i := range bufs {
		bufs[i] = make([]byte, region)
	}
	read := func(off, n int64) (bool, error) {
		for i, m := range members {
			if err := m.ReadAt(ctx, bufs[i][:n], off); err != nil {
				return false, fmt.Errorf("raid: reading member %d at %d: %w", i, off, err)
			}
		}
		for i := 1; i < len(members); i++ {
			if !bytes.Equal(bufs[0][:n], bufs[i][:n]) {
				return false, nil
			}
		}
		return true, nil
	}
	var bad []int64
	done := int64(0)
	for r, off := int64(0), int64(0); off < size; r, off = r+1, off+region {
		if !want[r] {
			continue
		}
		n := min(region, size-off)
		same, err := read(off, n)
		if err != nil {
			return bad, err
		}
		if !same {
			if same, err = read(off, n); err != nil {
				return bad, err
			}
		}
		if !same {
			bad = append(bad, r)
		}
		done += n
		if progress != nil {
			progress(done, total)
		}
	}
	return bad, nil
}

// memberSize is the size every one of members has, or an error naming
// one that differs.
func memberSize(members []Device) (int64, error) {
	size := members[0].Size()
	for i, d := range members {
		if d.Size() != size {
			return 0, fmt.Errorf("raid: member %d has %d bytes, member 0 has %d", i, d.Size(), size)
		}
	}
	return size, nil
}

// VerifyEC reads every stripe of an ec:k+m set with stripe unit S from its
// members and returns the stripes whose parity does not match their data.
// The layout is EC's: member j holds shard (j+s) mod (k+m) of stripe s.
// Stripes whose units are holes on every member are not read (see
// Allocator).
func VerifyEC(ctx context.Context, members []Device, k, m int, stripeUnit int64, progress VerifyProgress) ([]int64, error) {
	n := k + m
	if len(members) != n {
		return nil, fmt.Errorf("raid: ec:%d+%d has %d members, got %d", k, m, n, len(members))
	}
	if stripeUnit == 0 {
		stripeUnit = DefaultStripeUnit
	}
	code, err := rs.New(k, m)
	if err != nil {
		return nil, err
	}
	size, err := memberSize(members)
	if err != nil {
		return nil, err
	}
	stripes := size / stripeUnit
	want, count, err := unitsToCheck(ctx, members, stripes*stripeUnit, stripeUnit)
	if err != nil {
		return nil, err
	}
	per := max(verifyBatch/stripeUnit, 1) // stripes per read
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, per*stripeUnit)
	}
	shards := make([][]byte, n)
	readBatch := func(s0, cnt int64) error {
		for j, d := range members {
			if err := d.ReadAt(ctx, bufs[j][:cnt*stripeUnit], s0*stripeUnit); err != nil {
				return fmt.Errorf("raid: reading member %d at stripe %d: %w", j, s0, err)
			}
		}
		return nil
	}
	check := func(s0, s int64) (bool, error) {
		o := (s - s0) * stripeUnit
		for j := range members {
			shards[(j+int(s%int64(n)))%n] = bufs[j][o : o+stripeUnit]
		}
		return code.Verify(shards)
	}
	var bad []int64
	done := int64(0)
	for s0 := int64(0); s0 < stripes; {
		if !want[s0] {
			s0++
			continue
		}
		// A run of stripes to check, at most one batch long.
		cnt := int64(1)
		for cnt < per && s0+cnt < stripes && want[s0+cnt] {
			cnt++
		}
		if err := readBatch(s0, cnt); err != nil {
			return bad, err
		}
		var suspect []int64
		for s := s0; s < s0+cnt; s++ {
			ok, err := check(s0, s)
			if err != nil {
				return bad, err
			}
			if !ok {
				suspect = append(suspect, s)
			}
		}
		if len(suspect) > 0 {
			// Read again: a write in flight can look like a mismatch.
			if err := readBatch(s0, cnt); err != nil {
				return bad, err
			}
			for _, s := range suspect {
				ok, err := check(s0, s)
				if err != nil {
					return bad, err
				}
				if !ok {
					bad = append(bad, s)
				}
			}
		}
		done += cnt * stripeUnit
		if progress != nil {
			progress(done, count*stripeUnit)
		}
		s0 += cnt
	}
	return bad, nil
}
