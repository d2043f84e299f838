package rs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// gfMul multiplies in GF(2^8) modulo 0x11d, bit by bit, independently of the
// library's tables.
func gfMul(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		hi := a & 0x80
		a <<= 1
		if hi != 0 {
			a ^= 0x1d
		}
		b >>= 1
	}
	return p
}

func gfInv(a byte) byte {
	for x := 1; x < 256; x++ {
		if gfMul(a, byte(x)) == 1 {
			return byte(x)
		}
	}
	panic("gfInv(0)")
}

// referenceParity computes the documented parity format directly.
func referenceParity(k, m int, data [][]byte) [][]byte {
	n := len(data[0])
	par := make([][]byte, m)
	for j := range par {
		par[j] = make([]byte, n)
		r := k + j
		for c := 0; c < k; c++ {
			coef := byte(1)
			if m > 1 {
				coef = gfInv(byte(r ^ c))
			}
			for x := 0; x < n; x++ {
				par[j][x] ^= gfMul(coef, data[c][x])
			}
		}
	}
	return par
}

func randShards(rng *rand.Rand, k, m, n int) [][]byte {
	s := make([][]byte, k+m)
	for i := range s {
		s[i] = make([]byte, n)
		if i < k {
			for j := range s[i] {
				s[i][j] = byte(rng.Uint32())
			}
		}
	}
	return s
}

var layouts = []struct{ k, m int }{{1, 1}, {2, 1}, {4, 1}, {2, 2}, {4, 2}, {8, 3}, {3, 5}}

func TestEncodeMatchesFormat(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, l := range layouts {
		c, err := New(l.k, l.m)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, 63, 4096, 65536 + 17} {
			shards := randShards(rng, l.k, l.m, n)
			if err := c.Encode(shards); err != nil {
				t.Fatalf("%d+%d n=%d: %v", l.k, l.m, n, err)
			}
			want := referenceParity(l.k, l.m, shards[:l.k])
			for j := range want {
				if !bytes.Equal(shards[l.k+j], want[j]) {
					t.Fatalf("%d+%d n=%d: parity %d differs from the documented format", l.k, l.m, n, j)
				}
			}
			ok, err := c.Verify(shards)
			if err != nil || !ok {
				t.Fatalf("%d+%d n=%d: Verify = %v, %v after Encode", l.k, l.m, n, ok, err)
			}
			shards[rng.IntN(l.k+l.m)][rng.IntN(n)] ^= 1 << rng.IntN(8)
			if ok, err := c.Verify(shards); err != nil || ok {
				t.Fatalf("%d+%d n=%d: Verify = %v, %v after flipping a bit", l.k, l.m, n, ok, err)
			}
		}
	}
}

// TestColumnsIndependent checks that coding a column slice gives the same
// slice of the full coding: the EC set updates narrow columns of a stripe.
func TestColumnsIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 3))
	for _, l := range layouts {
		c, err := New(l.k, l.m)
		if err != nil {
			t.Fatal(err)
		}
		const n = 65536
		full := randShards(rng, l.k, l.m, n)
		if err := c.Encode(full); err != nil {
			t.Fatal(err)
		}
		for range 20 {
			a := rng.IntN(n)
			b := a + 1 + rng.IntN(n-a)
			part := make([][]byte, l.k+l.m)
			for i := range part {
				part[i] = make([]byte, b-a)
				if i < l.k {
					copy(part[i], full[i][a:b])
				}
			}
			if err := c.Encode(part); err != nil {
				t.Fatal(err)
			}
			for j := l.k; j < l.k+l.m; j++ {
				if !bytes.Equal(part[j], full[j][a:b]) {
					t.Fatalf("%d+%d: parity of columns [%d,%d) differs from the full encoding", l.k, l.m, a, b)
				}
			}
		}
	}
}

// TestReconstructAnySubset removes every combination of up to m shards and
// rebuilds them, in place into caller buffers.
func TestReconstructAnySubset(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 9))
	for _, l := range layouts {
		c, err := New(l.k, l.m)
		if err != nil {
			t.Fatal(err)
		}
		n := l.k + l.m
		const size = 1000
		orig := randShards(rng, l.k, l.m, size)
		if err := c.Encode(orig); err != nil {
			t.Fatal(err)
		}
		for mask := 0; mask < 1<<n; mask++ {
			missing := 0
			for i := 0; i < n; i++ {
				if mask&(1<<i) != 0 {
					missing++
				}
			}
			if missing > l.m {
				continue
			}
			shards := make([][]byte, n)
			want := make([]bool, n)
			bufs := make([][]byte, n)
			for i := range shards {
				if mask&(1<<i) != 0 {
					bufs[i] = make([]byte, size)
					shards[i] = bufs[i][:0]
					want[i] = true
				} else {
					shards[i] = append([]byte(nil), orig[i]...)
				}
			}
			if err := c.Reconstruct(shards, want); err != nil {
				t.Fatalf("%d+%d missing %b: %v", l.k, l.m, mask, err)
			}
			for i := range shards {
				if !bytes.Equal(shards[i], orig[i]) {
					t.Fatalf("%d+%d missing %b: shard %d wrong after reconstruct", l.k, l.m, mask, i)
				}
				if want[i] && &shards[i][0] != &bufs[i][0] {
					t.Fatalf("%d+%d missing %b: shard %d not rebuilt in the caller's buffer", l.k, l.m, mask, i)
				}
			}
		}
	}
}

func TestReconstructOnlyWanted(t *testing.T) {
	c, err := New(4, 2)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(2, 2))
	orig := randShards(rng, 4, 2, 512)
	if err := c.Encode(orig); err != nil {
		t.Fatal(err)
	}
	shards := append([][]byte(nil), orig...)
	shards[1], shards[4] = nil, nil
	want := []bool{false, true, false, false, false, false}
	if err := c.Reconstruct(shards, want); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shards[1], orig[1]) {
		t.Fatal("wanted shard 1 not rebuilt correctly")
	}
	if len(shards[4]) != 0 {
		t.Fatal("unwanted parity shard 4 was rebuilt")
	}
}

func TestErrors(t *testing.T) {
	for _, tt := range []struct{ k, m int }{{0, 1}, {2, 0}, {-1, 2}, {200, 57}} {
		if _, err := New(tt.k, tt.m); err == nil {
			t.Errorf("New(%d, %d) accepted", tt.k, tt.m)
		}
	}
	c, err := New(4, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Encode(make([][]byte, 5)); err == nil {
		t.Error("Encode accepted 5 shards for 4+2")
	}
	uneven := randShards(rand.New(rand.NewPCG(1, 1)), 4, 2, 16)
	uneven[2] = uneven[2][:8]
	if err := c.Encode(uneven); err == nil {
		t.Error("Encode accepted shards of different lengths")
	}
	if _, err := c.Verify(make([][]byte, 7)); err == nil {
		t.Error("Verify accepted 7 shards for 4+2")
	}
	shards := randShards(rand.New(rand.NewPCG(1, 1)), 4, 2, 16)
	shards[0], shards[1], shards[5] = nil, nil, nil
	err = c.Reconstruct(shards, []bool{true, true, false, false, false, true})
	if !errors.Is(err, ErrTooFewShards) {
		t.Errorf("Reconstruct with 3 of 6 shards: got %v, want ErrTooFewShards", err)
	}
	if err := c.Reconstruct(make([][]byte, 6), []bool{true}); err == nil {
		t.Error("Reconstruct accepted a want list of the wrong length")
	}
}

// TestUpdateMatchesEncode: parity updated from the old bytes of the changed
// data shards and the old parity equals the parity encoded from the new
// data, for every geometry the EC sets use (m = 1 takes the XOR matrix).
func TestUpdateMatchesEncode(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for _, g := range [][2]int{{1, 1}, {2, 1}, {4, 1}, {4, 2}, {8, 2}, {6, 3}, {10, 4}} {
		k, m := g[0], g[1]
		c, err := New(k, m)
		if err != nil {
			t.Fatal(err)
		}
		for trial := range 20 {
			const w = 512
			old := make([][]byte, k+m)
			for i := range old {
				old[i] = make([]byte, w)
				if i < k {
					for j := range old[i] {
						old[i][j] = byte(rng.Uint32())
					}
				}
			}
			if err := c.Encode(old); err != nil {
				t.Fatal(err)
			}
			// Change a random subset of the data shards.
			newData := make([][]byte, k)
			shards := make([][]byte, k+m)
			want := make([][]byte, k+m)
			for i := range k {
				want[i] = old[i]
				if rng.IntN(3) == 0 || i == trial%k {
					newData[i] = make([]byte, w)
					for j := range newData[i] {
						newData[i][j] = byte(rng.Uint32())
					}
					shards[i] = bytes.Clone(old[i])
					want[i] = newData[i]
				}
			}
			for i := k; i < k+m; i++ {
				shards[i] = bytes.Clone(old[i])
				want[i] = make([]byte, w)
			}
			if err := c.Update(shards, newData); err != nil {
				t.Fatal(err)
			}
			if err := c.Encode(want); err != nil {
				t.Fatal(err)
			}
			for i := k; i < k+m; i++ {
				if !bytes.Equal(shards[i], want[i]) {
					t.Fatalf("%d+%d trial %d: updated parity %d differs from the encoded one", k, m, trial, i-k)
				}
			}
		}
	}
}
