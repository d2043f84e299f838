package raid_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
)

// TestECReader: a reader over the members of an EC set reads what the set
// wrote, with every member, with any m of them failing (rebuilt from the
// others), and fails with ErrNoMembers when more are gone; it writes
// nothing.
func TestECReader(t *testing.T) {
	for _, km := range [][2]int{{2, 1}, {4, 2}} {
		k, m := km[0], km[1]
		f := newEC(t, k, m, 4096, 64<<10)
		rng := rand.New(rand.NewPCG(uint64(k), uint64(m)))
		want := randBytes(rng, f.ec.Size())
		if err := f.ec.WriteAt(t.Context(), want, 0, true); err != nil {
			t.Fatal(err)
		}
		members := make([]raid.Device, len(f.devs))
		for i, d := range f.devs {
			members[i] = d
		}
		r, err := raid.NewECReader(members, k, m, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if r.Size() != f.ec.Size() {
			t.Fatalf("ec:%d+%d reader size %d, set %d", k, m, r.Size(), f.ec.Size())
		}
		check := func(what string) {
			t.Helper()
			// Whole, and in odd pieces that cross units and stripes.
			got := make([]byte, len(want))
			if err := r.ReadAt(t.Context(), got, 0); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("ec:%d+%d %s: read of the whole set: %v, equal %v", k, m, what, err, bytes.Equal(got, want))
			}
			for range 50 {
				off := rng.Int64N(r.Size() - 1)
				n := 1 + rng.Int64N(min(r.Size()-off, 3*4096))
				p := make([]byte, n)
				if err := r.ReadAt(t.Context(), p, off); err != nil || !bytes.Equal(p, want[off:off+n]) {
					t.Fatalf("ec:%d+%d %s: read of %d at %d: %v", k, m, what, n, off, err)
				}
			}
		}
		check("every member")
		// Every member's bytes rebuilt from the others.
		for j, d := range f.devs {
			img := d.Bytes()
			d.SetFailed(true) // never read
			got := make([]byte, len(img))
			if err := r.ReadMember(t.Context(), got, j, 0); err != nil || !bytes.Equal(got, img) {
				t.Fatalf("ec:%d+%d: member %d rebuilt from the others: %v, equal %v", k, m, j, err, bytes.Equal(got, img))
			}
			off := 4096 + rng.Int64N(int64(len(img))/2)
			piece := make([]byte, 5000)
			if err := r.ReadMember(t.Context(), piece, j, off); err != nil || !bytes.Equal(piece, img[off:off+5000]) {
				t.Fatalf("ec:%d+%d: member %d at %d: %v", k, m, j, off, err)
			}
			d.SetFailed(false)
		}
		for i := range m {
			f.devs[i*k%len(f.devs)].SetFailed(true)
		}
		check("m members failing")
		f.devs[len(f.devs)-1].SetFailed(true)
		if err := r.ReadAt(t.Context(), make([]byte, len(want)), 0); !errors.Is(err, raid.ErrNoMembers) {
			t.Fatalf("ec:%d+%d with m+1 members failing: %v", k, m, err)
		}
		if err := r.WriteAt(t.Context(), []byte{1}, 0, false); !errors.Is(err, raid.ErrReadOnly) {
			t.Errorf("a write: %v", err)
		}
	}
}
