// Package rs is the Reed-Solomon code of raid's EC sets: it computes m parity
// shards from k data shards and rebuilds missing shards from any k others. It
// wraps github.com/klauspost/reedsolomon and pins the parts of it that decide
// bytes written to disk.
//
// # Parity format
//
// Shards 0..k-1 are data, k..k+m-1 parity. Arithmetic is in GF(2^8) with the
// field polynomial x^8+x^4+x^3+x^2+1 (0x11d). Parity byte x of shard r
// (k ≤ r < k+m) is
//
//	m = 1:  P[x] = D0[x] ^ D1[x] ^ … ^ Dk-1[x]           (plain XOR, as RAID-5)
//	m > 1:  Pr[x] = Σc inv(r ^ c) · Dc[x],  c = 0..k-1    (Cauchy matrix)
//
// Every byte position (column) is coded on its own: parity of bytes [a, b) of
// the data shards is bytes [a, b) of the parity. The EC set relies on this to
// update a narrow column range of a stripe without touching the rest. The
// format is fixed by this package's tests against an independent encoder, so
// a library upgrade that changed it would fail the build's tests rather than
// the disks.
package rs

import (
	"errors"
	"fmt"

	"github.com/klauspost/reedsolomon"
)

// MaxShards is the largest k+m the code supports: beyond 256 shards the
// library switches to a different field whose columns are not independent.
const MaxShards = 256

// ErrTooFewShards is returned when fewer than k shards are present to
// reconstruct from.
var ErrTooFewShards = errors.New("rs: too few shards to reconstruct")

// Code encodes and decodes one k+m layout. It is safe for concurrent use.
type Code struct {
	enc  reedsolomon.Encoder
	k, m int
}

// New returns the code for k data and m parity shards.
func New(k, m int) (*Code, error) {
	if k < 1 || m < 1 || k+m > MaxShards {
		return nil, fmt.Errorf("rs: k=%d m=%d: need k ≥ 1, m ≥ 1 and k+m ≤ %d", k, m, MaxShards)
	}
	enc, err := reedsolomon.New(k, m,
		reedsolomon.WithCauchyMatrix(),
		reedsolomon.WithFastOneParityMatrix(), // takes precedence when m = 1
		// Callers run many stripes at once; splitting one stripe's coding
		// across goroutines only adds scheduling and allocation.
		reedsolomon.WithMaxGoroutines(1),
	)
	if err != nil {
		return nil, fmt.Errorf("rs: %d+%d: %w", k, m, err)
	}
	return &Code{enc: enc, k: k, m: m}, nil
}

// K is the number of data shards.
func (c *Code) K() int { return c.k }

// M is the number of parity shards.
func (c *Code) M() int { return c.m }

func (c *Code) checkLen(shards [][]byte) error {
	if len(shards) != c.k+c.m {
		return fmt.Errorf("rs: %d shards given, %d+%d expected", len(shards), c.k, c.m)
	}
	return nil
}

// Encode overwrites shards[k:] with the parity of shards[:k]. All k+m shards
// must be present and of one length; data shards are not modified.
func (c *Code) Encode(shards [][]byte) error {
	if err := c.checkLen(shards); err != nil {
		return err
	}
	if err := c.enc.Encode(shards); err != nil {
		return fmt.Errorf("rs: encode: %w", err)
	}
	return nil
}

// Update rewrites the parity in shards[k:] for a change of some data
// shards, from their old bytes and the old parity alone (parity deltas):
// newData[i] is the new bytes of data shard i, nil where it does not
// change; shards holds the old bytes of every data shard that changes
// (the others may be nil) and the old parity. The data shards in shards
// are not modified. The parity is what Encode of the new data gives.
func (c *Code) Update(shards, newData [][]byte) error {
	if err := c.checkLen(shards); err != nil {
		return err
	}
	if len(newData) != c.k {
		return fmt.Errorf("rs: update with %d data shards, %d expected", len(newData), c.k)
	}
	if err := c.enc.Update(shards, newData); err != nil {
		return fmt.Errorf("rs: update: %w", err)
	}
	return nil
}

// Verify reports whether the parity shards match the data shards. All k+m
// shards must be present and of one length.
func (c *Code) Verify(shards [][]byte) (bool, error) {
	if err := c.checkLen(shards); err != nil {
		return false, err
	}
	ok, err := c.enc.Verify(shards)
	if err != nil {
		return false, fmt.Errorf("rs: verify: %w", err)
	}
	return ok, nil
}

// Reconstruct fills the shards marked in want from the present ones. A shard
// is absent when its length is zero; an absent shard with enough capacity is
// rebuilt in place (s[:0:n] hands over a caller's buffer of n bytes), one
// without is allocated. want has k+m entries; present shards are left alone
// whatever want says. At least k shards must be present.
func (c *Code) Reconstruct(shards [][]byte, want []bool) error {
	if err := c.checkLen(shards); err != nil {
		return err
	}
	if len(want) != c.k+c.m {
		return fmt.Errorf("rs: want has %d entries, %d+%d expected", len(want), c.k, c.m)
	}
	present := 0
	for _, s := range shards {
		if len(s) > 0 {
			present++
		}
	}
	if present < c.k {
		return fmt.Errorf("%w: %d present, %d needed", ErrTooFewShards, present, c.k)
	}
	if err := c.enc.ReconstructSome(shards, want); err != nil {
		return fmt.Errorf("rs: reconstruct: %w", err)
	}
	return nil
}
