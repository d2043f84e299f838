package raid_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"slices"
	"sync"
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
		e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members}, K: l.k, M: l.m, StripeUnit: unit})
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
	m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: []raid.Device{a, b}}})
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

// allocDevice is a memory device that knows which 4 KiB blocks were
// written (a raid.Allocator) and counts the bytes read from it.
type allocDevice struct {
	*raidtest.MemDevice
	mu      sync.Mutex
	written map[int64]bool
	read    int64
}

func newAllocDevice(size int64) *allocDevice {
	return &allocDevice{MemDevice: raidtest.NewMemDevice(size), written: map[int64]bool{}}
}

func (d *allocDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.mu.Lock()
	for b := off / 4096; b*4096 < off+int64(len(p)); b++ {
		d.written[b] = true
	}
	d.mu.Unlock()
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

func (d *allocDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.mu.Lock()
	d.read += int64(len(p))
	d.mu.Unlock()
	return d.MemDevice.ReadAt(ctx, p, off)
}

func (d *allocDevice) Allocated(_ context.Context, off, length int64) ([]raid.Range, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []raid.Range
	for b := off / 4096; b*4096 < off+length; b++ {
		if d.written[b] {
			out = append(out, raid.Range{Off: b * 4096, Len: 4096})
		}
	}
	return out, nil
}

// TestVerifyReadsOnlyAllocated: with members that report their allocation,
// verification reads only the units that hold data on some member, still
// finds a unit written on one member only, and reports progress against
// the allocated bytes.
func TestVerifyReadsOnlyAllocated(t *testing.T) {
	t.Run("mirror", func(t *testing.T) {
		const region = 1 << 20
		a, b := newAllocDevice(8<<20), newAllocDevice(8<<20)
		for _, d := range []*allocDevice{a, b} {
			if err := d.WriteAt(t.Context(), bytes.Repeat([]byte{7}, 8192), 2*region+4096, false); err != nil {
				t.Fatal(err)
			}
		}
		var done, total int64
		bad, err := raid.VerifyMirror(t.Context(), []raid.Device{a, b}, region, func(d, tot int64) { done, total = d, tot })
		if err != nil || len(bad) != 0 {
			t.Fatalf("identical members: %v %v", bad, err)
		}
		if a.read != region || b.read != region || done != region || total != region {
			t.Fatalf("read %d and %d bytes, progress %d of %d; want one region of %d each", a.read, b.read, done, total, region)
		}
		// Written on b only: a reads zeroes there, b does not.
		if err := b.WriteAt(t.Context(), []byte{9}, 5*region+100, false); err != nil {
			t.Fatal(err)
		}
		bad, err = raid.VerifyMirror(t.Context(), []raid.Device{a, b}, region, nil)
		if err != nil || !slices.Equal(bad, []int64{5}) {
			t.Fatalf("after a write to one member's hole: %v %v", bad, err)
		}
	})
	t.Run("ec", func(t *testing.T) {
		const unit, memberSize = 4096, 1 << 20
		devs := make([]*allocDevice, 3)
		members := make([]raid.Device, 3)
		for i := range devs {
			devs[i] = newAllocDevice(memberSize)
			members[i] = devs[i]
		}
		e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members}, K: 2, M: 1, StripeUnit: unit})
		if err != nil {
			t.Fatal(err)
		}
		// Stripes 10 and 11 (two data units each).
		if err := e.WriteAt(t.Context(), bytes.Repeat([]byte{3}, 4*unit), 20*unit, false); err != nil {
			t.Fatal(err)
		}
		for _, d := range devs {
			d.read = 0
		}
		bad, err := raid.VerifyEC(t.Context(), members, 2, 1, unit, nil)
		if err != nil || len(bad) != 0 {
			t.Fatalf("after writes through the set: %v %v", bad, err)
		}
		for j, d := range devs {
			if d.read != 2*unit {
				t.Fatalf("member %d: read %d bytes, want the 2 allocated stripes' units (%d)", j, d.read, 2*unit)
			}
		}
		// A unit written behind the set's back on one member, in a stripe
		// that is a hole everywhere else.
		if err := devs[2].WriteAt(t.Context(), []byte{1}, 100*unit+7, false); err != nil {
			t.Fatal(err)
		}
		bad, err = raid.VerifyEC(t.Context(), members, 2, 1, unit, nil)
		if err != nil || !slices.Equal(bad, []int64{100}) {
			t.Fatalf("after a write to one member's hole: %v %v", bad, err)
		}
	})
}
