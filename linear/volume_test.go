package linear_test

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/chunkraid/chunkraid/linear"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

func newVolume(t *testing.T, sizes ...int64) (*linear.Volume, []*raidtest.MemDevice) {
	t.Helper()
	var sets []raid.Device
	var devs []*raidtest.MemDevice
	for _, s := range sizes {
		d := raidtest.NewMemDevice(s)
		devs = append(devs, d)
		sets = append(sets, d)
	}
	v, err := linear.New(sets)
	if err != nil {
		t.Fatal(err)
	}
	return v, devs
}

func TestVolumeConformance(t *testing.T) {
	raidtest.TestDevice(t, func(t *testing.T) raid.Device {
		v, _ := newVolume(t, 1<<20, 3<<19, 1<<20, 2<<20)
		return v
	})
}

func TestVolumeRejectsEmpty(t *testing.T) {
	if _, err := linear.New(nil); err == nil {
		t.Fatal("New(nil) succeeded")
	}
}

// TestVolumeCrossBoundary checks that a write across a set boundary lands in
// both sets at the right offsets.
func TestVolumeCrossBoundary(t *testing.T) {
	v, devs := newVolume(t, 1<<20, 1<<20)
	ctx := t.Context()
	p := bytes.Repeat([]byte{0xcd}, 8192)
	if err := v.WriteAt(ctx, p, 1<<20-4096, false); err != nil {
		t.Fatal(err)
	}
	a, b := devs[0].Bytes(), devs[1].Bytes()
	if !bytes.Equal(a[1<<20-4096:], p[:4096]) || !bytes.Equal(b[:4096], p[4096:]) {
		t.Fatal("cross-boundary write did not land in both sets")
	}
	if v.Size() != 2<<20 {
		t.Fatalf("size %d, want %d", v.Size(), 2<<20)
	}
}

// TestVolumeRandomModel runs seeded random I/O over a volume of mirrors of
// unequal sets against a flat model and then checks each mirror member.
func TestVolumeRandomModel(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		var sets []raid.Device
		var members [][]*raidtest.MemDevice
		var size int64
		for i := 0; i < 1+rng.IntN(4); i++ {
			s := int64(1+rng.IntN(4)) << 18
			a, b := raidtest.NewMemDevice(s), raidtest.NewMemDevice(s)
			m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: []raid.Device{a, b}}})
			if err != nil {
				t.Fatal(err)
			}
			sets = append(sets, m)
			members = append(members, []*raidtest.MemDevice{a, b})
			size += s
		}
		v, err := linear.New(sets)
		if err != nil {
			t.Fatal(err)
		}
		model := make([]byte, size)
		ctx := t.Context()
		for i := 0; i < 300; i++ {
			l := int64(rng.IntN(256)+1) * 512
			l = min(l, size)
			off := rng.Int64N(size-l+1) &^ 511
			switch rng.IntN(4) {
			case 0:
				got := make([]byte, l)
				if err := v.ReadAt(ctx, got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, model[off:off+l]) {
					t.Fatalf("seed %d op %d: read at %d+%d differs", seed, i, off, l)
				}
			case 1:
				if err := v.Trim(ctx, off, l); err != nil {
					t.Fatal(err)
				}
				clear(model[off : off+l])
			default:
				p := make([]byte, l)
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
				if err := v.WriteAt(ctx, p, off, false); err != nil {
					t.Fatal(err)
				}
				copy(model[off:], p)
			}
		}
		var pos int64
		for i, ms := range members {
			for j, d := range ms {
				b := d.Bytes()
				if !bytes.Equal(b, model[pos:pos+int64(len(b))]) {
					t.Fatalf("seed %d: set %d member %d differs from model", seed, i, j)
				}
			}
			pos += int64(len(ms[0].Bytes()))
		}
	}
}

// TestVolumeGrowOnline grows a volume while writers keep writing to it:
// every write before and during the growth lands, the new sets serve the
// range past the old end, and a write past the end fails before the growth
// and succeeds after.
func TestVolumeGrowOnline(t *testing.T) {
	v, devs := newVolume(t, 1<<20, 1<<20)
	ctx := t.Context()
	if err := v.WriteAt(ctx, []byte{1}, 2<<20, false); err == nil {
		t.Fatal("a write past the end succeeded")
	}
	stop := make(chan struct{})
	done := make(chan error)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if err := v.WriteAt(ctx, []byte{byte(i)}, int64(i%(2<<20)), false); err != nil {
				done <- err
				return
			}
		}
	}()
	grown := raidtest.NewMemDevice(3 << 19)
	if err := v.Grow(grown); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("a write during the growth: %v", err)
	}
	if v.Size() != 2<<20+3<<19 || len(v.Sets()) != 3 {
		t.Fatalf("grown to %d bytes in %d sets", v.Size(), len(v.Sets()))
	}
	p := bytes.Repeat([]byte{0xee}, 8192)
	if err := v.WriteAt(ctx, p, 2<<20-4096, false); err != nil {
		t.Fatalf("a write across the old end: %v", err)
	}
	if !bytes.Equal(devs[1].Bytes()[1<<20-4096:], p[:4096]) || !bytes.Equal(grown.Bytes()[:4096], p[4096:]) {
		t.Fatal("the write across the old end did not land in both sets")
	}
	if err := v.Grow(raidtest.NewMemDevice(0)); err == nil {
		t.Fatal("grew by an empty set")
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}
