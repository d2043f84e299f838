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

// VerifyMirror compares the members of a mirror region by region (regions
// of region bytes) and returns the indexes of the regions that differ.
// progress, if set, is called with the bytes of one member checked.
func VerifyMirror(ctx context.Context, members []Device, region int64, progress func(done, total int64)) ([]int64, error) {
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
	for off := int64(0); off < size; off += region {
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
			bad = append(bad, off/region)
		}
		if progress != nil {
			progress(off+n, size)
		}
	}
	return bad, nil
}

// VerifyEC reads every stripe of an ec:k+m set with stripe unit S from its
// members and returns the stripes whose parity does not match their data.
// The layout is EC's: member j holds shard (j+s) mod (k+m) of stripe s.
func VerifyEC(ctx context.Context, members []Device, k, m int, stripeUnit int64, progress func(done, total int64)) ([]int64, error) {
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
	size := members[0].Size()
	for i, d := range members {
		if d.Size() != size {
			return nil, fmt.Errorf("raid: member %d has %d bytes, member 0 has %d", i, d.Size(), size)
		}
	}
	stripes := size / stripeUnit
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
	for s0 := int64(0); s0 < stripes; s0 += per {
		cnt := min(per, stripes-s0)
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
		if progress != nil {
			progress((s0+cnt)*stripeUnit, stripes*stripeUnit)
		}
	}
	return bad, nil
}
