package raid_test

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// TestVerifyEC writes through an EC set, checks that VerifyEC finds every
// stripe consistent, then corrupts one unit on one member behind the set's
// back and checks that VerifyEC names exactly that stripe. It also pins
// VerifyEC's idea of the layout to EC's.
func TestVerifyEC(t *testing.T) {
	for _, l := range []struct{ k, m int }{{2, 1}, {4, 2}} {
		const unit, memberSize = 4096, 256 << 10
		devs := make([]*raidtest.MemDevice, l.k+l.m)
		members := make([]raid.Device, len(devs))
		for i := range devs {
			devs[i] = raidtest.NewMemDevice(memberSize)
			members[i] = devs[i]
		}
		e, err := raid.NewEC(raid.ECConfig{Members: members, K: l.k, M: l.m, StripeUnit: unit})
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(uint64(l.k), 5))
		for i := 0; i < 200; i++ {
			n := int64(rng.IntN(20)+1) * 512
			off := rng.Int64N(e.Size()-n) &^ 511
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if err := e.WriteAt(t.Context(), p, off, false); err != nil {
				t.Fatal(err)
			}
		}
		bad, err := raid.VerifyEC(t.Context(), members, l.k, l.m, unit, nil)
		if err != nil || len(bad) != 0 {
			t.Fatalf("ec:%d+%d after writes through the set: bad stripes %v, %v", l.k, l.m, bad, err)
		}
		// Corrupt member 1's unit of stripe 7.
		if err := devs[1].WriteAt(t.Context(), bytes.Repeat([]byte{0xee}, 100), 7*unit+10, false); err != nil {
			t.Fatal(err)
		}
		bad, err = raid.VerifyEC(t.Context(), members, l.k, l.m, unit, nil)
		if err != nil || !slices.Equal(bad, []int64{7}) {
			t.Fatalf("ec:%d+%d after corrupting stripe 7: bad stripes %v, %v", l.k, l.m, bad, err)
		}
	}
}

func TestVerifyMirror(t *testing.T) {
	a, b := raidtest.NewMemDevice(4<<20), raidtest.NewMemDevice(4<<20)
	m, err := raid.NewMirror(raid.MirrorConfig{Members: []raid.Device{a, b}})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WriteAt(t.Context(), bytes.Repeat([]byte{1}, 3<<20), 4096, false); err != nil {
		t.Fatal(err)
	}
	bad, err := raid.VerifyMirror(t.Context(), []raid.Device{a, b}, 1<<20, nil)
	if err != nil || len(bad) != 0 {
		t.Fatalf("identical members: %v %v", bad, err)
	}
	if err := b.WriteAt(t.Context(), []byte{9}, 2<<20+5, false); err != nil {
		t.Fatal(err)
	}
	bad, err = raid.VerifyMirror(t.Context(), []raid.Device{a, b}, 1<<20, nil)
	if err != nil || !slices.Equal(bad, []int64{2}) {
		t.Fatalf("after corrupting region 2: %v %v", bad, err)
	}
}
