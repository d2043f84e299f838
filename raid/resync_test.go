package raid_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

func newWIBMirror(t *testing.T, n int, size, region int64) (*raid.Mirror, []*raidtest.MemDevice) {
	t.Helper()
	w, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: size, RegionSize: region})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	devs := make([]*raidtest.MemDevice, n)
	members := make([]raid.Device, n)
	for i := range devs {
		devs[i] = raidtest.NewMemDevice(size)
		members[i] = devs[i]
	}
	m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: members, WIB: w}})
	if err != nil {
		t.Fatal(err)
	}
	return m, devs
}

// TestResyncCopiesOnlyDirtyRegions fails a member, writes to a few regions
// while it is away, brings it back and checks that the resync copies exactly
// those regions and that the members end identical.
func TestResyncCopiesOnlyDirtyRegions(t *testing.T) {
	const size, region = 8 << 20, 64 << 10
	m, devs := newWIBMirror(t, 2, size, region)
	ctx := t.Context()
	fill := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	for off := int64(0); off < size; off += 1 << 20 {
		if err := m.WriteAt(ctx, fill(1, 1<<20), off, false); err != nil {
			t.Fatal(err)
		}
	}
	if m.WIB().Count() == 0 {
		t.Fatal("healthy writes cleaned their regions before any flush")
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := m.WIB().Count(); got != 0 {
		t.Fatalf("%d dirty regions after healthy writes and a flush, want 0", got)
	}
	devs[1].SetFailed(true)
	// The first write fails member 1 and is acknowledged degraded.
	if err := m.WriteAt(ctx, fill(2, 4096), 0, false); err != nil {
		t.Fatalf("degraded write: %v", err)
	}
	if st := m.States(); st[1] != raid.Failed {
		t.Fatalf("member 1 is %v, want degraded", st[1])
	}
	dirty := map[int64]bool{0: true}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 20; i++ {
		off := rng.Int64N(size-8192) &^ 511
		if err := m.WriteAt(ctx, fill(byte(3+i), 8192), off, false); err != nil {
			t.Fatal(err)
		}
		for r := off / region; r <= (off+8191)/region; r++ {
			dirty[r] = true
		}
	}
	if _, err := m.Resync(ctx, nil); !errors.Is(err, raid.ErrResyncAborted) {
		t.Fatalf("resync with a degraded member: %v, want ErrResyncAborted", err)
	}
	devs[1].SetFailed(false)
	if err := m.Rejoin(1, devs[1]); err != nil {
		t.Fatal(err)
	}
	var last raid.ResyncProgress
	var throughs []int64
	copied, err := m.Resync(ctx, func(p raid.ResyncProgress) {
		// Through: every dirty region below it is copied, the next one is
		// not yet; it only grows.
		if n := len(throughs); n > 0 && p.Through < throughs[n-1] {
			t.Errorf("through went back from %d to %d", throughs[n-1], p.Through)
		}
		a, b := devs[0].Bytes(), devs[1].Bytes()
		for r := range dirty {
			if (r+1)*region <= p.Through && !bytes.Equal(a[r*region:(r+1)*region], b[r*region:(r+1)*region]) {
				t.Errorf("through %d, but dirty region %d below it is not copied", p.Through, r)
			}
		}
		throughs = append(throughs, p.Through)
		last = p
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(throughs) != len(dirty) || last.Through != size || throughs[0] <= 0 {
		t.Errorf("throughs %v for %d dirty regions, want one per region ending at %d", throughs, len(dirty), size)
	}
	if want := int64(len(dirty)) * region; copied != want {
		t.Fatalf("resync copied %d bytes, want %d (%d dirty regions)", copied, want, len(dirty))
	}
	if last.DoneBytes != copied || last.TotalBytes != copied {
		t.Fatalf("last progress %+v, want done = total = %d", last, copied)
	}
	if !bytes.Equal(devs[0].Bytes(), devs[1].Bytes()) {
		t.Fatal("members differ after resync")
	}
	if st := m.States(); st[1] != raid.InSync {
		t.Fatalf("member 1 is %v after resync", st[1])
	}
	if got := m.WIB().Count(); got != 0 {
		t.Fatalf("%d dirty regions after resync", got)
	}
}

// TestResyncUnderWrites runs writers while a resync copies: rule 4 (writes
// wait only for the region being copied) must keep every member equal to the
// model at the end.
func TestResyncUnderWrites(t *testing.T) {
	for seed := uint64(1); seed <= 5; seed++ {
		const size, region = 4 << 20, 32 << 10
		m, devs := newWIBMirror(t, 3, size, region)
		ctx := t.Context()
		model := make([]byte, size)
		rng := rand.New(rand.NewPCG(seed, 1))
		write := func(rng *rand.Rand, lo, hi int64) {
			n := int64(rng.IntN(16)+1) * 512
			off := lo + rng.Int64N(hi-lo-n)&^511
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if err := m.WriteAt(ctx, p, off, false); err != nil {
				t.Error(err)
				return
			}
			copy(model[off:], p)
		}
		for i := 0; i < 200; i++ {
			write(rng, 0, size)
		}
		devs[2].SetFailed(true)
		for i := 0; i < 200; i++ {
			write(rng, 0, size)
		}
		devs[2].SetFailed(false)
		if err := m.Rejoin(2, devs[2]); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		const writers = 4
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, uint64(w+10)))
				lo := int64(w) * size / writers
				for i := 0; i < 150; i++ {
					write(r, lo, lo+size/writers)
				}
			}()
		}
		if _, err := m.Resync(ctx, nil); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		// Writes that raced the copy may have left regions dirty: a second
		// resync (as hostd runs until clean) must converge.
		if _, err := m.Resync(ctx, nil); err != nil {
			t.Fatal(err)
		}
		for i, d := range devs {
			if !bytes.Equal(d.Bytes(), model) {
				t.Fatalf("seed %d: member %d differs from the model", seed, i)
			}
		}
	}
}

// TestDirtyRegionsReadFromSource: after a crash the WIB names regions where
// members may differ; reads there must always come from the same member.
func TestDirtyRegionsReadFromSource(t *testing.T) {
	const size, region = 1 << 20, 64 << 10
	m, devs := newWIBMirror(t, 2, size, region)
	ctx := t.Context()
	// Members differ in region 0, as after a host died mid-write.
	if err := devs[1].WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	m.WIB().Mark(0, 4096)
	first := make([]byte, 4096)
	if err := m.ReadAt(ctx, first, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		got := make([]byte, 4096)
		if err := m.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, first) {
			t.Fatal("reads of a dirty region returned two versions")
		}
	}
	if _, err := m.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(devs[0].Bytes(), devs[1].Bytes()) {
		t.Fatal("members differ after resync")
	}
}

// TestMirrorDegradeGate: a degraded write waits for BeforeDegradedWrite and
// fails if it fails; the next degraded write tries again.
func TestMirrorDegradeGate(t *testing.T) {
	const size = 1 << 20
	a, b := raidtest.NewMemDevice(size), raidtest.NewMemDevice(size)
	var recording atomic.Bool // the metaserver is reachable
	var calls atomic.Int32
	m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{
		Members: []raid.Device{a, b},
		BeforeDegradedWrite: func(context.Context) error {
			calls.Add(1)
			if !recording.Load() {
				return errors.New("metaserver unreachable")
			}
			return nil
		},
	},
	})
	if err != nil {
		t.Fatal(err)
	}
	b.SetFailed(true)
	if err := m.WriteAt(t.Context(), make([]byte, 4096), 0, false); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("degraded write with an unrecorded degradation: %v", err)
	}
	recording.Store(true)
	for i := 0; i < 3; i++ {
		if err := m.WriteAt(t.Context(), make([]byte, 4096), 8192, false); err != nil {
			t.Fatalf("degraded write after the retry: %v", err)
		}
	}
	n := calls.Load()
	if err := m.WriteAt(t.Context(), make([]byte, 4096), 8192, false); err != nil {
		t.Fatal(err)
	}
	if n < 2 || calls.Load() != n {
		t.Fatalf("BeforeDegradedWrite ran %d times (then %d): want a retry, then none once recorded", n, calls.Load())
	}
}

// TestResyncFailedCopyStaysDirty: a copy that fails to reach the returning
// member leaves its region needing resync.
func TestResyncFailedCopyStaysDirty(t *testing.T) {
	const size, region = 1 << 20, 64 << 10
	m, devs := newWIBMirror(t, 2, size, region)
	ctx := t.Context()
	devs[1].SetFailed(true)
	if err := m.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := m.Rejoin(1, devs[1]); err != nil { // still failing
		t.Fatal(err)
	}
	if _, err := m.Resync(ctx, nil); !errors.Is(err, raid.ErrResyncAborted) {
		t.Fatalf("resync onto a failing member: %v", err)
	}
	if !m.WIB().NeedsResync(0) {
		t.Fatal("a failed copy cleaned its region")
	}
}

// TestLongResyncCleansAsItGoes: a resync that runs for a while (throttled)
// flushes the members every few seconds, so the WIB sheds the regions
// already copied before the resync ends: a host that dies mid-resync
// leaves a WIB naming what is left, not everything.
func TestLongResyncCleansAsItGoes(t *testing.T) {
	const size, region = 8 << 20, 256 << 10
	w, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: size, RegionSize: region})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	a, b := raidtest.NewMemDevice(size), raidtest.NewMemDevice(size)
	m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: []raid.Device{a, b}, WIB: w, ResyncRate: 2 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	b.SetFailed(true)
	if err := m.WriteAt(ctx, bytes.Repeat([]byte{7}, size), 0, false); err != nil {
		t.Fatal(err)
	}
	b.SetFailed(false)
	if err := m.Rejoin(1, b); err != nil {
		t.Fatal(err)
	}
	all := w.Count()
	least := all
	if _, err := m.Resync(ctx, func(p raid.ResyncProgress) { least = min(least, w.Count()) }); err != nil {
		t.Fatal(err)
	}
	if least >= all {
		t.Errorf("during a 4 s resync the WIB never shed any of its %d regions", all)
	}
	t.Logf("WIB regions: %d at the start, as few as %d during the resync", all, least)
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("members differ")
	}
}

// TestResyncYieldsToForegroundIO: a resync of an idle set never pauses; one
// that competes with foreground writes pauses after the copies during which
// the set served them (the pace is measured by make bench, not here).
func TestResyncYieldsToForegroundIO(t *testing.T) {
	const size, region = 4 << 20, 64 << 10
	run := func(busy bool) int {
		m, devs := newWIBMirror(t, 2, size, region)
		ctx := t.Context()
		devs[1].SetFailed(true)
		if err := m.WriteAt(ctx, bytes.Repeat([]byte{1}, size), 0, false); err != nil {
			t.Fatal(err)
		}
		devs[1].SetFailed(false)
		if err := m.Rejoin(1, devs[1]); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		started := make(chan struct{})
		go func() {
			defer close(done)
			start := sync.OnceFunc(func() { close(started) })
			defer start()
			for i := 0; busy; i++ {
				if i == 1 {
					start() // the load runs before the resync starts
				}
				select {
				case <-stop:
					return
				default:
				}
				if err := m.WriteAt(ctx, []byte{byte(i)}, int64(i%size), false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		<-started
		var last raid.ResyncProgress
		if _, err := m.Resync(ctx, func(p raid.ResyncProgress) { last = p }); err != nil && !errors.Is(err, raid.ErrResyncAborted) {
			t.Fatal(err)
		}
		close(stop)
		<-done
		return last.BackedOff
	}
	if n := run(false); n != 0 {
		t.Errorf("an idle resync paused %d times", n)
	}
	if n := run(true); n == 0 {
		t.Error("a resync under foreground writes never paused")
	} else {
		t.Logf("under foreground writes: %d pauses for %d regions", n, size/region)
	}
}

// TestResyncCopyKeepsHolesSparse: a resync writes a member only the
// granules of a region that hold data on the source; granules of zeroes are
// trimmed, so a copy onto a new chunk stays as sparse as its source, and a
// stale member's old data where the source now holds zeroes is cleared.
func TestResyncCopyKeepsHolesSparse(t *testing.T) {
	const size, region = 4 << 20, 1 << 20
	ctx := t.Context()
	m, devs := newWIBMirror(t, 2, size, region)
	// Member 1 holds old data everywhere in region 2.
	if err := m.WriteAt(ctx, bytes.Repeat([]byte{9}, region), 2*region, false); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	devs[1].SetFailed(true)
	// While it is away: 4 KiB of data in region 0, region 2 zeroed but for
	// 100 bytes in its last granule.
	if err := m.WriteAt(ctx, bytes.Repeat([]byte{7}, 4096), 8192, false); err != nil {
		t.Fatal(err)
	}
	if err := m.Trim(ctx, 2*region, region); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteAt(ctx, bytes.Repeat([]byte{5}, 100), 3*region-200, false); err != nil {
		t.Fatal(err)
	}
	devs[1].SetFailed(false)
	if err := m.Rejoin(1, devs[1]); err != nil {
		t.Fatal(err)
	}
	before := devs[1].WrittenBytes()
	if _, err := m.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(devs[0].Bytes(), devs[1].Bytes()) {
		t.Fatal("members differ after the resync")
	}
	if got := devs[1].WrittenBytes() - before; got != 2*64<<10 {
		t.Fatalf("the resync wrote %d bytes to the member, want two 64 KiB granules", got)
	}
	if st := m.States(); st[1] != raid.InSync {
		t.Fatalf("states after the resync: %v", st)
	}
}
