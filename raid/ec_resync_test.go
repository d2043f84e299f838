package raid_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/internal/rs"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// hostSet is the method set hostd drives a set through: Mirror and EC must
// both satisfy it with the same names and signatures.
type hostSet interface {
	raid.Device
	States() []raid.MemberState
	MemberError(i int) error
	Degraded() bool
	Rejoin(i int, d raid.Device) error
	Resync(ctx context.Context, progress func(raid.ResyncProgress)) (int64, error)
	MarkAll()
	WIB() *bitmap.WIB
	Close() error
}

var (
	_ hostSet = (*raid.Mirror)(nil)
	_ hostSet = (*raid.EC)(nil)
)

func newTestWIB(t *testing.T, size, region int64) *bitmap.WIB {
	t.Helper()
	w, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: size, RegionSize: region})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// withWIB gives the set w as its write-intent bitmap.
func withWIB(w *bitmap.WIB) func(*raid.ECConfig) {
	return func(c *raid.ECConfig) { c.WIB = w }
}

// newWIBEC builds a k+m set of stripes stripes of unit bytes with a WIB of
// region bytes.
func newWIBEC(t *testing.T, k, m int, unit, stripes, region int64, opts ...func(*raid.ECConfig)) (ecFixture, *bitmap.WIB) {
	t.Helper()
	w := newTestWIB(t, int64(k)*stripes*unit, region)
	return newEC(t, k, m, unit, stripes*unit, append([]func(*raid.ECConfig){withWIB(w)}, opts...)...), w
}

// resyncBytes is what a resync of w's regions that need one covers.
func resyncBytes(w *bitmap.WIB) int64 {
	var n int64
	rs := w.RegionSize()
	for r := int64(0); r < w.Regions(); r++ {
		if w.NeedsResync(r) {
			n += min(rs, w.Size()-r*rs)
		}
	}
	return n
}

// parityVerifies reports whether stripe s's parity matches its data on the
// member images.
func parityVerifies(t *testing.T, g geom, imgs [][]byte, s int64) bool {
	t.Helper()
	code, err := rs.New(g.k, g.m)
	if err != nil {
		t.Fatal(err)
	}
	shards := make([][]byte, g.n)
	for i := range shards {
		shards[i] = g.shardBytes(imgs, s, i)
	}
	ok, err := code.Verify(shards)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func allInSync(n int) []raid.MemberState { return make([]raid.MemberState, n) }

// failDetected breaks member i and has the set notice it.
func failDetected(t *testing.T, f ecFixture, i int) {
	t.Helper()
	f.devs[i].SetFailed(true)
	if err := f.ec.Flush(t.Context()); err != nil {
		t.Fatalf("flush that fails member %d: %v", i, err)
	}
	if st := f.ec.States(); st[i] != raid.Failed {
		t.Fatalf("member %d is %v after a failed flush", i, st[i])
	}
}

// rejoin repairs member i's device and hands it back to the set.
func rejoin(t *testing.T, f ecFixture, i int) {
	t.Helper()
	f.devs[i].SetFailed(false)
	if err := f.ec.Rejoin(i, f.devs[i]); err != nil {
		t.Fatalf("Rejoin(%d): %v", i, err)
	}
	if st := f.ec.States(); st[i] != raid.Resyncing {
		t.Fatalf("member %d is %v after Rejoin", i, st[i])
	}
}

// recDev records the member ranges written while on is set.
type recDev struct {
	*raidtest.MemDevice
	on     atomic.Bool
	mu     sync.Mutex
	writes [][2]int64
}

func (d *recDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if d.on.Load() {
		d.mu.Lock()
		d.writes = append(d.writes, [2]int64{off, int64(len(p))})
		d.mu.Unlock()
	}
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

// TestECResyncRepairsOnlyDirtyRegions fails a member, writes to a few
// regions while it is away, brings it back and checks that the resync
// covers exactly those regions — by its count and by the member writes it
// makes — and leaves every stripe consistent. Layouts include stripes that
// straddle regions (3+2: 12 KiB stripes, 16 KiB regions) and regions
// smaller than a stripe.
func TestECResyncRepairsOnlyDirtyRegions(t *testing.T) {
	tests := []struct {
		k, m           int
		stripes, rsize int64
	}{
		{4, 2, 24, 16 << 10},
		{3, 2, 32, 16 << 10},
		{2, 1, 32, 4 << 10},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d+%d/region%d", tt.k, tt.m, tt.rsize), func(t *testing.T) {
			const unit = 4096
			recs := make([]*recDev, tt.k+tt.m)
			f, w := newWIBEC(t, tt.k, tt.m, unit, tt.stripes, tt.rsize, func(c *raid.ECConfig) {
				for i, d := range c.Members {
					recs[i] = &recDev{MemDevice: d.(*raidtest.MemDevice)}
					c.Members[i] = recs[i]
				}
			})
			e, ctx, g := f.ec, t.Context(), f.g
			rng := rand.New(rand.NewPCG(uint64(tt.k), 11))
			model := randBytes(rng, e.Size())
			if err := e.WriteAt(ctx, model, 0, false); err != nil {
				t.Fatal(err)
			}
			if w.Count() == 0 {
				t.Fatal("healthy writes cleaned their regions before any flush")
			}
			if err := e.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if n := w.Count(); n != 0 {
				t.Fatalf("%d dirty regions after healthy writes and a flush", n)
			}
			const away = 1
			failDetected(t, f, away)
			sd := int64(g.k) * unit
			dirtyStripes := map[int64]bool{}
			for range 6 {
				n := 1 + rng.Int64N(3000)
				off := rng.Int64N(e.Size() - n)
				p := randBytes(rng, n)
				if err := e.WriteAt(ctx, p, off, false); err != nil {
					t.Fatal(err)
				}
				copy(model[off:], p)
			}
			want := resyncBytes(w)
			if want == 0 || want >= e.Size()/2 {
				t.Fatalf("%d bytes need resync after 6 small degraded writes to %d", want, e.Size())
			}
			for r := int64(0); r < w.Regions(); r++ {
				if w.NeedsResync(r) {
					lo, hi := r*tt.rsize, min((r+1)*tt.rsize, e.Size())
					for s := lo / sd; s <= (hi-1)/sd; s++ {
						dirtyStripes[s] = true
					}
				}
			}
			if _, err := e.Resync(ctx, nil); !errors.Is(err, raid.ErrResyncAborted) {
				t.Fatalf("Resync with a failed member: %v, want ErrResyncAborted", err)
			}
			if got := resyncBytes(w); got != want {
				t.Fatalf("a refused resync changed the dirty bytes from %d to %d", want, got)
			}
			f.devs[away].SetFailed(false)
			if err := e.Rejoin(away, recs[away]); err != nil {
				t.Fatal(err)
			}
			if !e.Degraded() {
				t.Fatal("Degraded() is false with a member resyncing")
			}
			for _, r := range recs {
				r.on.Store(true)
			}
			var last raid.ResyncProgress
			copied, err := e.Resync(ctx, func(p raid.ResyncProgress) { last = p })
			if err != nil {
				t.Fatal(err)
			}
			if copied != want {
				t.Fatalf("resync covered %d bytes, want the %d bytes of the dirty regions", copied, want)
			}
			if last.DoneBytes != copied || last.TotalBytes != copied {
				t.Fatalf("last progress %+v, want done = total = %d", last, copied)
			}
			for i, r := range recs {
				for _, wr := range r.writes {
					s := wr[0] / unit
					if (wr[0]+wr[1]-1)/unit != s || !dirtyStripes[s] {
						t.Fatalf("member %d: resync wrote [%d, %d), outside the stripes of the dirty regions", i, wr[0], wr[0]+wr[1])
					}
				}
			}
			if len(recs[away].writes) == 0 {
				t.Fatal("resync wrote nothing to the returning member")
			}
			if e.Degraded() || e.States()[away] != raid.InSync {
				t.Fatalf("states after resync: %v", e.States())
			}
			if err := e.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if n := w.Count(); n != 0 {
				t.Fatalf("%d dirty regions after resync", n)
			}
			checkStripes(t, g, f.devs, e.States(), model)
		})
	}
}

// TestECResyncRandomModel runs seeded rounds of random writes, trims and
// reads while members fail; the failed members come back (SetFailed(false)
// and Rejoin) and Resync runs concurrently with writers, one of which may
// break another member midway. After each round the resync is finished with
// no writer running: it must cover exactly the bytes of the regions that
// need it, and then every stripe's parity verifies and the data equals the
// model.
func TestECResyncRandomModel(t *testing.T) {
	layouts := []struct{ k, m int }{{2, 1}, {4, 2}, {3, 2}}
	for _, l := range layouts {
		for seed := uint64(1); seed <= 3; seed++ {
			t.Run(fmt.Sprintf("%d+%d/seed%d", l.k, l.m, seed), func(t *testing.T) {
				runECResyncModel(t, l.k, l.m, seed)
			})
		}
	}
}

func runECResyncModel(t *testing.T, k, m int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(k*10+m)))
	const unit = 4096
	stripes := int64(24 + rng.IntN(16))
	region := int64(4096) << rng.IntN(4)
	var changes sync.Map // member → last state reported
	f, w := newWIBEC(t, k, m, unit, stripes, region, withJitter, func(c *raid.ECConfig) {
		c.OnStateChange = func(i int, st raid.MemberState, _ error) { changes.Store(i, st) }
	})
	e, ctx, n := f.ec, t.Context(), k+m
	size := e.Size()
	model := make([]byte, size)
	span := func(r *rand.Rand, lo, hi int64) (off, l int64) {
		l = 1 + r.Int64N(min(hi-lo, int64(k)*unit*2))
		return lo + r.Int64N(hi-lo-l+1), l
	}
	// op runs one random write, trim or checked read inside [lo, hi).
	op := func(r *rand.Rand, lo, hi int64) error {
		off, l := span(r, lo, hi)
		switch x := r.IntN(10); {
		case x < 3:
			got := make([]byte, l)
			if err := e.ReadAt(ctx, got, off); err != nil {
				return fmt.Errorf("ReadAt(%d, %d): %w", off, l, err)
			}
			if !bytes.Equal(got, model[off:off+l]) {
				return fmt.Errorf("ReadAt(%d, %d) differs from the model (states %v)", off, l, e.States())
			}
		case x < 9:
			p := randBytes(r, l)
			if err := e.WriteAt(ctx, p, off, false); err != nil {
				return fmt.Errorf("WriteAt(%d, %d): %w", off, l, err)
			}
			copy(model[off:], p)
		default:
			if err := e.Trim(ctx, off, l); err != nil {
				return fmt.Errorf("Trim(%d, %d): %w", off, l, err)
			}
			clear(model[off : off+l])
		}
		return nil
	}
	for round := range 3 {
		// Degraded phase: up to m members break at random moments.
		broken := rng.Perm(n)[:1+rng.IntN(m)]
		for i := range 120 {
			if i%40 == 0 && len(broken) > i/40 {
				f.devs[broken[i/40]].SetFailed(true)
			}
			if err := op(rng, 0, size); err != nil {
				t.Fatalf("round %d op %d: %v", round, i, err)
			}
		}
		if err := e.Flush(ctx); err != nil { // the set notices every broken member
			t.Fatal(err)
		}
		// Recovery phase: the broken members return; writers run while the
		// resync repairs, and one of them may break another member.
		for i, st := range e.States() {
			if st == raid.Failed {
				rejoin(t, f, i)
			}
		}
		// A victim keeps at least k members in sync: another member while
		// fewer than m are resyncing, else one of the resyncing ones.
		victim := -1
		if rng.IntN(2) == 0 {
			if len(broken) < m {
				victim = rng.IntN(n)
			} else {
				victim = broken[rng.IntN(len(broken))]
			}
		}
		const writers = 3
		var wg sync.WaitGroup
		for wi := range writers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(round*writers+wi+100)))
				lo, hi := int64(wi)*size/writers, int64(wi+1)*size/writers
				for i := range 40 {
					if wi == 0 && i == 20 && victim >= 0 {
						f.devs[victim].SetFailed(true)
					}
					if err := op(r, lo, hi); err != nil {
						t.Errorf("round %d writer %d op %d: %v", round, wi, i, err)
						return
					}
				}
			})
		}
		_, rerr := e.Resync(ctx, nil)
		wg.Wait()
		if t.Failed() {
			return
		}
		if rerr != nil && !errors.Is(rerr, raid.ErrResyncAborted) {
			t.Fatalf("round %d: concurrent resync: %v", round, rerr)
		}
		if victim >= 0 {
			f.devs[victim].SetFailed(false)
			if e.States()[victim] == raid.Failed {
				if err := e.Rejoin(victim, f.devs[victim]); err != nil {
					t.Fatal(err)
				}
			}
		}
		want := resyncBytes(w)
		copied, err := e.Resync(ctx, nil)
		if err != nil {
			t.Fatalf("round %d: resync with every member back: %v", round, err)
		}
		if copied != want {
			t.Fatalf("round %d: resync covered %d bytes, the regions needing it hold %d", round, copied, want)
		}
		if err := e.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if e.Degraded() || w.Count() != 0 {
			t.Fatalf("round %d: after resync and a flush states %v, %d dirty regions", round, e.States(), w.Count())
		}
		for i := range n {
			if st, ok := changes.Load(i); ok && st != raid.InSync {
				t.Fatalf("round %d: last state reported for member %d is %v", round, i, st)
			}
		}
		got := make([]byte, size)
		if err := e.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("round %d: contents differ from the model", round)
		}
		imgs := images(f.devs)
		for s := range stripes {
			if !parityVerifies(t, f.g, imgs, s) {
				t.Fatalf("round %d: stripe %d parity does not verify after resync", round, s)
			}
		}
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// tornSet is an EC set rebuilt over members in which the previous set's
// host "died" mid-write of one stripe: a data unit was written, the parity
// was not, and the stripe's region is dirty in the WIB the new set starts
// with.
type tornSet struct {
	ecFixture
	wib   *bitmap.WIB
	model []byte
	s     int64 // the torn stripe
}

// tearStripe writes new bytes to unit D1 of stripe s directly on its member,
// bypassing the set, as a host that dies before writing the parity leaves
// them. The bytes count as written: a plain read may return them.
func tearStripe(t *testing.T, f ecFixture, model []byte, s int64) {
	t.Helper()
	g := f.g
	sd := int64(g.k) * g.unit
	p := randBytes(rand.New(rand.NewPCG(uint64(s), 1)), 1000)
	if err := f.devs[g.member(s, 1)].WriteAt(t.Context(), p, s*g.unit+300, false); err != nil {
		t.Fatal(err)
	}
	copy(model[s*sd+g.unit+300:], p)
	if parityVerifies(t, g, images(f.devs), s) {
		t.Fatal("the torn stripe's parity still verifies")
	}
}

// newTornSet builds the first set, fills it, tears stripe s and records the
// tear in a WIB as recovery finds it (record), then builds the set hostd
// would attach, over the same members.
func newTornSet(t *testing.T, k, m int, record string) tornSet {
	t.Helper()
	const unit, stripes, region = 4096, 24, 16 << 10
	size := int64(k) * stripes * unit
	sd := int64(k) * unit
	s := int64(5)
	var w *bitmap.WIB
	path := filepath.Join(t.TempDir(), "set.wib")
	open := func() *bitmap.WIB {
		cfg := bitmap.WIBConfig{Size: size, RegionSize: region}
		if record == "reopened WIB" {
			cfg.Path, cfg.Volume = path, "vol"
		}
		w, err := bitmap.OpenWIB(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	w = open()
	first := newEC(t, k, m, unit, stripes*unit, withWIB(w))
	model := randBytes(rand.New(rand.NewPCG(7, uint64(k))), size)
	if err := first.ec.WriteAt(t.Context(), model, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := first.ec.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	switch record {
	case "reopened WIB":
		// The old host began the write and died: the region is dirty in
		// the file it leaves behind.
		w.Begin(s*sd, sd)
		tearStripe(t, first, model, s)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		w = open()
	case "merged LOG":
		// A new host rebuilds its WIB from the LOG bitmap of the member
		// that took the write: a LOG region of R member bytes holds R/S
		// stripes, k·R logical bytes.
		tearStripe(t, first, model, s)
		const logRegion = 2 * unit
		l, err := bitmap.NewLog(bitmap.LogConfig{Size: stripes * unit, RegionSize: logRegion})
		if err != nil {
			t.Fatal(err)
		}
		l.Mark(s*unit+300, 1000)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		w = open()
		if err := w.Merge(l.Snapshot(), int64(k)*logRegion); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown record %q", record)
	}
	t.Cleanup(func() { w.Close() })
	if !w.IsDirty(s*sd, sd) {
		t.Fatal("the torn stripe's region is not dirty in the recovered WIB")
	}
	devs := make([]raid.Device, len(first.devs))
	for i, d := range first.devs {
		devs[i] = d
	}
	e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: devs, WIB: w}, K: k, M: m, StripeUnit: unit})
	if err != nil {
		t.Fatal(err)
	}
	return tornSet{ecFixture: ecFixture{ec: e, devs: first.devs, g: first.g}, wib: w, model: model, s: s}
}

// readUnit reads unit d of stripe s through the set.
func (ts tornSet) readUnit(ctx context.Context, s int64, d int) ([]byte, error) {
	g := ts.g
	p := make([]byte, g.unit)
	err := ts.ec.ReadAt(ctx, p, s*int64(g.k)*g.unit+int64(d)*g.unit)
	return p, err
}

func (ts tornSet) modelUnit(s int64, d int) []byte {
	g := ts.g
	o := s*int64(g.k)*g.unit + int64(d)*g.unit
	return ts.model[o : o+g.unit]
}

// TestECCrashRecovery: after a host crash, a degraded read of a stripe
// whose parity may be stale fails with ErrUnrecoverable instead of
// returning reconstructed garbage, while plain reads still work; Resync
// with every member present re-encodes the parity, after which the same
// degraded read reconstructs the right bytes.
func TestECCrashRecovery(t *testing.T) {
	for _, record := range []string{"merged LOG", "reopened WIB"} {
		for _, l := range []struct{ k, m int }{{4, 2}, {2, 1}, {3, 2}} {
			t.Run(fmt.Sprintf("%s/%d+%d", record, l.k, l.m), func(t *testing.T) {
				ts := newTornSet(t, l.k, l.m, record)
				e, ctx, g, s := ts.ec, t.Context(), ts.g, ts.s
				d0 := g.member(s, 0)

				// All members present: plain reads return what was written.
				for d := range g.k {
					got, err := ts.readUnit(ctx, s, d)
					if err != nil || !bytes.Equal(got, ts.modelUnit(s, d)) {
						t.Fatalf("plain read of D%d of the torn stripe: err %v, equal %v", d, err, err == nil && bytes.Equal(got, ts.modelUnit(s, d)))
					}
				}

				// D0's member fails: its unit would be rebuilt from stale
				// parity, so the read must fail, never return bytes.
				failDetected(t, ts.ecFixture, d0)
				if _, err := ts.readUnit(ctx, s, 0); !errors.Is(err, raid.ErrUnrecoverable) {
					t.Fatalf("degraded read of the torn stripe: %v, want ErrUnrecoverable", err)
				}
				if got, err := ts.readUnit(ctx, s, 1); err != nil || !bytes.Equal(got, ts.modelUnit(s, 1)) {
					t.Fatalf("plain read of the torn unit with a member down: %v", err)
				}
				// A stripe outside the dirty region reconstructs as usual.
				other := (s + int64(g.n) + 1) % g.stripes
				dOther := (d0 + int(other%int64(g.n))) % g.n // the shard of other on member d0
				if dOther < g.k {
					if got, err := ts.readUnit(ctx, other, dOther); err != nil || !bytes.Equal(got, ts.modelUnit(other, dOther)) {
						t.Fatalf("degraded read of clean stripe %d: %v", other, err)
					}
				}
				// Resync needs every member: refused, the region stays dirty.
				if _, err := e.Resync(ctx, nil); !errors.Is(err, raid.ErrResyncAborted) {
					t.Fatalf("Resync with a member failed: %v, want ErrResyncAborted", err)
				}
				if !ts.wib.IsDirty(s*int64(g.k)*g.unit, 1) {
					t.Fatal("the torn stripe's region was cleaned without its parity")
				}

				// The member comes back: Resync re-derives the parity from the
				// data units, its own included.
				rejoin(t, ts.ecFixture, d0)
				if _, err := ts.readUnit(ctx, s, 0); !errors.Is(err, raid.ErrUnrecoverable) {
					t.Fatalf("read of the resyncing member's unit before the resync: %v, want ErrUnrecoverable", err)
				}
				want := resyncBytes(ts.wib)
				copied, err := e.Resync(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if copied != want {
					t.Fatalf("resync covered %d bytes, want %d", copied, want)
				}
				if e.Degraded() || ts.wib.Count() != 0 {
					t.Fatalf("after resync: states %v, %d dirty regions", e.States(), ts.wib.Count())
				}
				if !parityVerifies(t, g, images(ts.devs), s) {
					t.Fatal("the torn stripe's parity does not verify after the resync")
				}
				checkStripes(t, g, ts.devs, e.States(), ts.model)

				// Now a degraded read of the stripe reconstructs right.
				failDetected(t, ts.ecFixture, d0)
				if got, err := ts.readUnit(ctx, s, 0); err != nil || !bytes.Equal(got, ts.modelUnit(s, 0)) {
					t.Fatalf("degraded read after recovery: err %v, right bytes %v", err, err == nil && bytes.Equal(got, ts.modelUnit(s, 0)))
				}
			})
		}
	}
}

// TestECCrashRecoveryAllPresent: with every member there from the start,
// the first Resync re-encodes the torn stripe (no member is resyncing) and
// cleans the WIB.
func TestECCrashRecoveryAllPresent(t *testing.T) {
	ts := newTornSet(t, 4, 2, "merged LOG")
	e, ctx, g, s := ts.ec, t.Context(), ts.g, ts.s
	want := resyncBytes(ts.wib)
	copied, err := e.Resync(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if copied != want || ts.wib.Count() != 0 {
		t.Fatalf("resync covered %d bytes (want %d), %d regions left dirty", copied, want, ts.wib.Count())
	}
	if !parityVerifies(t, g, images(ts.devs), s) {
		t.Fatal("parity does not verify after crash recovery")
	}
	checkStripes(t, g, ts.devs, e.States(), ts.model)
	for d := range g.k { // every unit of the stripe, each read degraded
		mem := g.member(s, d)
		ts.devs[mem].SetFailed(true)
		got, err := ts.readUnit(ctx, s, d)
		if err != nil || !bytes.Equal(got, ts.modelUnit(s, d)) {
			t.Fatalf("D%d rebuilt after recovery: err %v", d, err)
		}
		ts.devs[mem].SetFailed(false)
		if err := e.Rejoin(mem, ts.devs[mem]); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Resync(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// flakyDev fails writes (not reads) while failWrites is set.
type flakyDev struct {
	*raidtest.MemDevice
	failWrites atomic.Bool
}

func (d *flakyDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if d.failWrites.Load() {
		return raidtest.ErrInjected
	}
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

// TestECSuspectStripeWrites: while a torn stripe's parity is untrusted and
// a data member is down, a write whose new bytes would live only in that
// parity is refused; one that only needs the lost unit for parity goes
// through; a member that misses a write of the stripe makes it unrepairable
// by Resync until the stripe is written whole, which heals it.
func TestECSuspectStripeWrites(t *testing.T) {
	ts := newTornSet(t, 4, 2, "merged LOG")
	e, ctx, g, s := ts.ec, t.Context(), ts.g, ts.s
	sd, S := int64(g.k)*g.unit, g.unit
	base := s * sd
	d0 := g.member(s, 0)
	failDetected(t, ts.ecFixture, d0)

	// A partial write into D0: its bytes would be only in stale parity.
	if err := e.WriteAt(ctx, make([]byte, 100), base+10, false); !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("partial write to a lost unit of a suspect stripe: %v, want ErrUnrecoverable", err)
	}
	// A partial write into D2 needs D0 only for parity: it succeeds and its
	// bytes read back; D0 stays unreadable.
	p := bytes.Repeat([]byte{0x5a}, 200)
	if err := e.WriteAt(ctx, p, base+2*S+50, false); err != nil {
		t.Fatalf("write to a present unit of a suspect stripe: %v", err)
	}
	copy(ts.model[base+2*S+50:], p)
	if got, err := ts.readUnit(ctx, s, 2); err != nil || !bytes.Equal(got, ts.modelUnit(s, 2)) {
		t.Fatalf("read back of the present unit: %v", err)
	}
	if _, err := ts.readUnit(ctx, s, 0); !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("lost unit after a write to its stripe: %v, want ErrUnrecoverable", err)
	}

	// D0's member comes back but, as a writer of the stripe, D1's member
	// fails mid-write: D1's member missed a write of a suspect stripe.
	rejoin(t, ts.ecFixture, d0)
	d1 := g.member(s, 1)
	flaky := &flakyDev{MemDevice: ts.devs[d1]}
	// Swap D1's member for one whose writes fail: fail it, rejoin the flaky
	// connection, and let a resync refuse the stripe.
	failDetected(t, ts.ecFixture, d1)
	ts.devs[d1].SetFailed(false)
	if err := e.Rejoin(d1, flaky); err != nil {
		t.Fatal(err)
	}
	flaky.failWrites.Store(true)
	q := bytes.Repeat([]byte{0x77}, 300)
	// The write's bytes for D1 now exist only in untrusted parity: the
	// write reports it.
	if err := e.WriteAt(ctx, q, base+S+700, false); !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("write whose data member fails in a suspect stripe: %v, want ErrUnrecoverable", err)
	}
	if st := e.States()[d1]; st != raid.Failed {
		t.Fatalf("member %d is %v after its write failed", d1, st)
	}
	flaky.failWrites.Store(false)
	if err := e.Rejoin(d1, flaky); err != nil {
		t.Fatal(err)
	}
	// D1's unit cannot stand in for data, and the parity may be torn; but
	// with two parities and one unit missed the five units left can be
	// checked against each other. Here both parities agree (the tear was in
	// data, never acknowledged), so Resync rebuilds D1 from them: the bytes
	// before the tear, with q, whose parity was written.
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatalf("Resync of a suspect stripe whose data member missed a write, parities agreeing: %v", err)
	}
	if st := e.States()[d1]; st != raid.InSync {
		t.Fatalf("member %d is %v after the verified rebuild, want in_sync", d1, st)
	}
	pre := randBytes(rand.New(rand.NewPCG(7, uint64(g.k))), int64(len(ts.model)))
	copy(ts.model[base+S:base+2*S], pre[base+S:base+2*S])
	copy(ts.model[base+S+700:], q)
	if !parityVerifies(t, g, images(ts.devs), s) {
		t.Fatal("the rebuilt stripe's parity does not verify")
	}
	if got, err := ts.readUnit(ctx, s, 1); err != nil || !bytes.Equal(got, ts.modelUnit(s, 1)) {
		t.Fatalf("read of the rebuilt unit: err %v", err)
	}

	// Writing the whole stripe derives its parity from data again: healed.
	whole := randBytes(rand.New(rand.NewPCG(3, 3)), sd)
	if err := e.WriteAt(ctx, whole, base, false); err != nil {
		t.Fatalf("full-stripe write of a suspect stripe: %v", err)
	}
	copy(ts.model[base:], whole)
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatalf("Resync after the stripe was rewritten: %v", err)
	}
	if err := e.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Degraded() || ts.wib.Count() != 0 {
		t.Fatalf("after resync and a flush: states %v, %d dirty regions", e.States(), ts.wib.Count())
	}
	checkStripes(t, g, ts.devs, e.States(), ts.model)
}

// TestECTrimHealsSuspectStripes: trimming whole suspect stripes leaves
// them zero on every member, so a degraded read there is served again.
func TestECTrimHealsSuspectStripes(t *testing.T) {
	ts := newTornSet(t, 2, 1, "merged LOG")
	e, ctx, g, s := ts.ec, t.Context(), ts.g, ts.s
	sd := int64(g.k) * g.unit
	failDetected(t, ts.ecFixture, g.member(s, 0))
	if _, err := ts.readUnit(ctx, s, 0); !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("degraded read before the trim: %v", err)
	}
	if err := e.Trim(ctx, s*sd, sd); err != nil {
		t.Fatal(err)
	}
	got, err := ts.readUnit(ctx, s, 0)
	if err != nil || !bytes.Equal(got, make([]byte, g.unit)) {
		t.Fatalf("degraded read of a trimmed stripe: %v", err)
	}
}

func TestECBeforeDegradedWrite(t *testing.T) {
	var calls atomic.Int32
	var done, recording atomic.Bool
	f, _ := newWIBEC(t, 2, 1, 4096, 16, 8192, func(c *raid.ECConfig) {
		c.BeforeDegradedWrite = func(ctx context.Context) error {
			calls.Add(1)
			time.Sleep(20 * time.Millisecond)
			done.Store(true)
			if !recording.Load() {
				return errors.New("pin refused") // the degraded write fails; the next one tries again
			}
			return nil
		}
	})
	e, ctx := f.ec, t.Context()
	if err := e.WriteAt(ctx, make([]byte, 5000), 0, false); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 0 {
		t.Fatal("BeforeDegradedWrite called for a healthy write")
	}
	f.devs[2].SetFailed(true)
	if err := e.WriteAt(ctx, make([]byte, 5000), 100, false); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("degraded write whose degradation could not be recorded: %v, want ErrNoMembers", err)
	}
	if !done.Load() {
		t.Fatal("the first degraded write returned before BeforeDegradedWrite did")
	}
	recording.Store(true)
	for range 5 {
		if err := e.WriteAt(ctx, make([]byte, 100), 9000, false); err != nil {
			t.Fatal(err)
		}
	}
	first := calls.Load()
	if first < 2 {
		t.Fatalf("BeforeDegradedWrite called %d times for one degradation with a failed attempt, want a retry", first)
	}
	rejoin(t, f, 2)
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	failDetected(t, f, 0)
	if err := e.WriteAt(ctx, make([]byte, 100), 0, false); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != first+1 {
		t.Fatalf("BeforeDegradedWrite called %d times after the second degradation, want %d", n, first+1)
	}

	// A set attached degraded was pinned by its caller: no call.
	var attached atomic.Int32
	g, _ := newWIBEC(t, 2, 1, 4096, 16, 8192, func(c *raid.ECConfig) {
		c.Degraded = []int{1}
		c.BeforeDegradedWrite = func(context.Context) error { attached.Add(1); return nil }
	})
	if err := g.ec.WriteAt(ctx, make([]byte, 100), 0, false); err != nil {
		t.Fatal(err)
	}
	if attached.Load() != 0 {
		t.Fatal("BeforeDegradedWrite called for a set attached degraded")
	}
	if st := g.ec.States(); st[1] != raid.Failed || g.ec.MemberError(1) == nil {
		t.Fatalf("member 1 attached degraded: state %v, error %v", st[1], g.ec.MemberError(1))
	}
}

// TestECDegradedAtAttach: members unreachable at attach start Failed; the
// set serves reads and writes and, once they return, resyncs only what
// they missed.
func TestECDegradedAtAttach(t *testing.T) {
	const unit = 4096
	f, w := newWIBEC(t, 4, 2, unit, 16, 16<<10, func(c *raid.ECConfig) { c.Degraded = []int{0, 3} })
	e, ctx := f.ec, t.Context()
	if st := e.States(); st[0] != raid.Failed || st[3] != raid.Failed || !e.Degraded() {
		t.Fatalf("states at attach: %v", st)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	model := make([]byte, e.Size())
	p := randBytes(rng, 3*unit)
	if err := e.WriteAt(ctx, p, 5*unit, false); err != nil {
		t.Fatal(err)
	}
	copy(model[5*unit:], p)
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("read with two members absent: %v", err)
	}
	want := resyncBytes(w)
	rejoin(t, f, 0)
	rejoin(t, f, 3)
	copied, err := e.Resync(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if copied != want || want == 0 {
		t.Fatalf("resync covered %d bytes, want %d", copied, want)
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// TestECMarkAllRebuildsBlankMember: with no record of what a member missed
// (bitmap mode none) it is rebuilt whole — here onto a blank device.
func TestECMarkAllRebuildsBlankMember(t *testing.T) {
	const unit, stripes = 4096, 16
	f, w := newWIBEC(t, 3, 2, unit, stripes, 8192)
	e, ctx := f.ec, t.Context()
	model := randBytes(rand.New(rand.NewPCG(8, 1)), e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	failDetected(t, f, 4)
	blank := raidtest.NewMemDevice(stripes * unit)
	e.MarkAll()
	if err := e.Rejoin(4, blank); err != nil {
		t.Fatal(err)
	}
	copied, err := e.Resync(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if copied != e.Size() || w.Count() != 0 {
		t.Fatalf("MarkAll resync covered %d of %d bytes, %d regions dirty", copied, e.Size(), w.Count())
	}
	f.devs[4] = blank
	checkStripes(t, f.g, f.devs, e.States(), model)
	// MarkAll does not make parity suspect: a degraded read is served.
	e.MarkAll()
	failDetected(t, f, 1)
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("degraded read after MarkAll: %v", err)
	}
}

// TestECResyncAbortsWhenAMemberFails: a member that fails under the resync
// aborts it with ErrResyncAborted and leaves the regions not repaired dirty;
// once it is back a resync completes.
func TestECResyncAbortsWhenAMemberFails(t *testing.T) {
	const unit = 4096
	f, w := newWIBEC(t, 4, 2, unit, 16, 16<<10)
	e, ctx := f.ec, t.Context()
	model := randBytes(rand.New(rand.NewPCG(1, 9)), e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	failDetected(t, f, 2)
	p := randBytes(rand.New(rand.NewPCG(2, 9)), e.Size())
	if err := e.WriteAt(ctx, p, 0, false); err != nil {
		t.Fatal(err)
	}
	copy(model, p)
	rejoin(t, f, 2)
	f.devs[5].SetFailed(true) // not yet noticed: the resync finds it
	if _, err := e.Resync(ctx, nil); !errors.Is(err, raid.ErrResyncAborted) {
		t.Fatalf("resync with a member failing: %v, want ErrResyncAborted", err)
	}
	if st := e.States(); st[5] != raid.Failed || st[2] != raid.Resyncing {
		t.Fatalf("states after an aborted resync: %v", st)
	}
	if w.Count() == 0 {
		t.Fatal("an aborted resync left no region dirty")
	}
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("read after an aborted resync: %v", err)
	}
	rejoin(t, f, 5)
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	checkStripes(t, f.g, f.devs, allInSync(6), model)
}

func TestECRejoinRejects(t *testing.T) {
	f, _ := newWIBEC(t, 2, 1, 4096, 8, 8192)
	e := f.ec
	tests := []struct {
		name string
		i    int
		d    raid.Device
	}{
		{"member in sync", 1, f.devs[1]},
		{"out of range", 3, f.devs[0]},
		{"negative", -1, f.devs[0]},
		{"wrong size", 2, raidtest.NewMemDevice(4096)},
		{"nil device", 2, nil},
	}
	failDetected(t, f, 2)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := e.Rejoin(tt.i, tt.d); err == nil {
				t.Fatal("Rejoin accepted")
			}
		})
	}
	if st := e.States(); st[2] != raid.Failed {
		t.Fatalf("a refused rejoin changed member 2 to %v", st[2])
	}
}

func TestNewECRejectsRound2(t *testing.T) {
	mk := func(n int) []raid.Device {
		d := make([]raid.Device, n)
		for i := range d {
			d[i] = raidtest.NewMemDevice(1 << 16)
		}
		return d
	}
	wrongWIB := newTestWIB(t, 1<<16, 0) // a member's size, not the set's
	tests := []struct {
		name string
		cfg  raid.ECConfig
	}{
		{"degraded out of range", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3), Degraded: []int{3}}, K: 2, M: 1, StripeUnit: 4096}},
		{"degraded twice", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(6), Degraded: []int{1, 1}}, K: 4, M: 2, StripeUnit: 4096}},
		{"more degraded than m", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(6), Degraded: []int{0, 1, 2}}, K: 4, M: 2, StripeUnit: 4096}},
		{"WIB of another size", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3), WIB: wrongWIB}, K: 2, M: 1, StripeUnit: 4096}},
		{"negative resync rate", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3), ResyncRate: -1}, K: 2, M: 1, StripeUnit: 4096}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := raid.NewEC(tt.cfg); err == nil {
				t.Fatal("NewEC accepted an invalid config")
			}
		})
	}
	if _, err := raid.NewEC(tests[2].cfg); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("more than m degraded: %v, want ErrNoMembers", err)
	}
}

// TestECStateChanges: OnStateChange reports failed, resyncing and in_sync
// in that order, with no lock held.
func TestECStateChanges(t *testing.T) {
	var mu sync.Mutex
	var got []raid.MemberState
	var f ecFixture
	f, _ = newWIBEC(t, 2, 1, 4096, 8, 8192, func(c *raid.ECConfig) {
		c.OnStateChange = func(i int, st raid.MemberState, err error) {
			_ = f.ec.States() // the set is usable from the callback
			mu.Lock()
			got = append(got, st)
			mu.Unlock()
		}
	})
	failDetected(t, f, 1)
	if !errors.Is(f.ec.MemberError(1), raidtest.ErrInjected) {
		t.Fatalf("MemberError(1) = %v", f.ec.MemberError(1))
	}
	rejoin(t, f, 1)
	if f.ec.MemberError(1) != nil {
		t.Fatal("MemberError kept after Rejoin")
	}
	if _, err := f.ec.Resync(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []raid.MemberState{raid.Failed, raid.Resyncing, raid.InSync}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("state changes %v, want %v", got, want)
	}
}

// TestECResyncRate: a throttled resync takes at least the time its rate
// allows.
func TestECResyncRate(t *testing.T) {
	const unit = 4096
	f, _ := newWIBEC(t, 2, 1, unit, 16, 8192, func(c *raid.ECConfig) { c.ResyncRate = 1 << 20 })
	f.ec.MarkAll()
	start := time.Now()
	copied, err := f.ec.Resync(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if least := time.Duration(float64(copied) / (1 << 20) * float64(time.Second)); time.Since(start) < least*9/10 {
		t.Fatalf("resync of %d bytes at 1 MiB/s took %v", copied, time.Since(start))
	}
}

// gateDev holds reads or writes, while their switch is on, until release
// is closed; entered receives once per held call. With holdAt ≥ 0 only
// calls at that member offset are held.
type gateDev struct {
	*raidtest.MemDevice
	holdReads, holdWrites atomic.Bool
	holdAt                atomic.Int64
	entered               chan struct{}
	release               chan struct{}
}

func (d *gateDev) hold(on *atomic.Bool, off int64) {
	if at := d.holdAt.Load(); on.Load() && (at < 0 || at == off) {
		d.entered <- struct{}{}
		<-d.release
	}
}

func (d *gateDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.hold(&d.holdReads, off)
	return d.MemDevice.ReadAt(ctx, p, off)
}

func (d *gateDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.hold(&d.holdWrites, off)
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

func newGatedEC(t *testing.T, k, m int, unit, stripes, region int64) (ecFixture, []*gateDev, *bitmap.WIB) {
	t.Helper()
	gates := make([]*gateDev, k+m)
	f, w := newWIBEC(t, k, m, unit, stripes, region, func(c *raid.ECConfig) {
		for i, d := range c.Members {
			gates[i] = &gateDev{MemDevice: d.(*raidtest.MemDevice), entered: make(chan struct{}, 16), release: make(chan struct{})}
			gates[i].holdAt.Store(-1)
			c.Members[i] = gates[i]
		}
	})
	return f, gates, w
}

// TestECRejoinWaitsForSkippingWrites: a write that skipped a failed member
// is still in flight when the member rejoins; Rejoin returns only after
// that write ended, so its region is marked for the resync by then.
func TestECRejoinWaitsForSkippingWrites(t *testing.T) {
	const unit = 4096
	f, gates, w := newGatedEC(t, 2, 1, unit, 8, 8192)
	e, ctx := f.ec, t.Context()
	failDetected(t, f, 2)
	gates[0].holdWrites.Store(true)
	wrote := make(chan error, 1)
	go func() { wrote <- e.WriteAt(ctx, make([]byte, 100), 10, false) }() // D0 of stripe 0, on member 0
	<-gates[0].entered
	f.devs[2].SetFailed(false)
	joined := make(chan error, 1)
	go func() { joined <- e.Rejoin(2, gates[2]) }()
	select {
	case err := <-joined:
		t.Fatalf("Rejoin returned (%v) while a write that skipped the member was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	gates[0].holdWrites.Store(false)
	close(gates[0].release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	if !w.NeedsResync(0) {
		t.Fatal("the region of the write that skipped the member does not need a resync")
	}
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	model := make([]byte, e.Size())
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// TestECResyncBlocksOnlyItsRegion: while Resync repairs one region, writes
// to other regions and reads go on; a write to another stripe of that
// region waits for the region (DESIGN §2 rule 4), not only for its stripe.
func TestECResyncBlocksOnlyItsRegion(t *testing.T) {
	const unit = 4096
	const sd = 2 * unit // 2+1: stripes 2 and 3 make region 1
	f, gates, w := newGatedEC(t, 2, 1, unit, 16, 2*sd)
	e, ctx := f.ec, t.Context()
	rng := rand.New(rand.NewPCG(4, 2))
	model := randBytes(rng, e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := e.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	failDetected(t, f, 2)
	p := randBytes(rng, 100)
	if err := e.WriteAt(ctx, p, 3*sd+50, false); err != nil {
		t.Fatal(err)
	}
	copy(model[3*sd+50:], p)
	if w.Count() != 1 || !w.NeedsResync(1) {
		t.Fatalf("dirty regions %v, want region 1 only", w.Dirty())
	}
	f.devs[2].SetFailed(false)
	if err := e.Rejoin(2, gates[2]); err != nil {
		t.Fatal(err)
	}
	// The rebuild of member 2's unit of stripe 2 reads member 0's unit of
	// it (P); hold that read, and nothing of stripe 3.
	gates[0].holdAt.Store(2 * unit)
	gates[0].holdReads.Store(true)
	resynced := make(chan error, 1)
	go func() {
		_, err := e.Resync(ctx, nil)
		resynced <- err
	}()
	<-gates[0].entered

	other := randBytes(rng, sd)
	if err := e.WriteAt(ctx, other, 5*sd, false); err != nil { // region 2, no reads
		t.Fatal(err)
	}
	copy(model[5*sd:], other)
	got := make([]byte, 100)
	if err := e.ReadAt(ctx, got, 3*sd+unit); err != nil || !bytes.Equal(got, model[3*sd+unit:3*sd+unit+100]) {
		t.Fatalf("read of the region under resync: %v", err)
	}
	same := randBytes(rng, sd)
	wrote := make(chan error, 1)
	go func() { wrote <- e.WriteAt(ctx, same, 3*sd, false) }() // stripe 3, region 1
	select {
	case err := <-wrote:
		t.Fatalf("a write to the region under resync finished (%v) before the resync of it", err)
	case <-time.After(50 * time.Millisecond):
	}
	gates[0].holdReads.Store(false)
	close(gates[0].release)
	if err := <-resynced; err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	copy(model[3*sd:], same)
	if err := e.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Degraded() || w.Count() != 0 {
		t.Fatalf("after resync: states %v, dirty %v", e.States(), w.Dirty())
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// TestECResyncWriteFailureKeepsRegionsDirty: a returning member that fails
// the resync's writes to it has missed the repair, so the regions must stay
// dirty for the next resync — with at least k members still in sync, which
// would let the set carry on without it.
func TestECResyncWriteFailureKeepsRegionsDirty(t *testing.T) {
	const unit = 4096
	f, w := newWIBEC(t, 2, 1, unit, 16, 8192)
	e, ctx := f.ec, t.Context()
	model := randBytes(rand.New(rand.NewPCG(6, 1)), e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	failDetected(t, f, 1)
	p := randBytes(rand.New(rand.NewPCG(6, 2)), 3000)
	if err := e.WriteAt(ctx, p, 20000, false); err != nil {
		t.Fatal(err)
	}
	copy(model[20000:], p)
	dirty := w.Dirty()
	f.devs[1].SetFailed(false)
	flaky := &flakyDev{MemDevice: f.devs[1]}
	flaky.failWrites.Store(true)
	if err := e.Rejoin(1, flaky); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resync(ctx, nil); !errors.Is(err, raid.ErrResyncAborted) {
		t.Fatalf("resync whose writes to the returning member fail: %v, want ErrResyncAborted", err)
	}
	if got := w.Dirty(); fmt.Sprint(got) != fmt.Sprint(dirty) {
		t.Fatalf("dirty regions %v after the failed resync, want %v", got, dirty)
	}
	flaky.failWrites.Store(false)
	if err := e.Rejoin(1, flaky); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// TestECReencodeWriteFailureMarksStripe: a parity member that fails
// Reencode's write may hold half a unit; the stripe's region is marked so
// that its return rebuilds it.
func TestECReencodeWriteFailureMarksStripe(t *testing.T) {
	const unit = 4096
	var flaky *flakyDev
	f, w := newWIBEC(t, 2, 1, unit, 8, 8192, func(c *raid.ECConfig) {
		flaky = &flakyDev{MemDevice: c.Members[2].(*raidtest.MemDevice)}
		c.Members[2] = flaky // holds P of stripe 0
	})
	e, ctx := f.ec, t.Context()
	model := randBytes(rand.New(rand.NewPCG(2, 2)), e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	flaky.failWrites.Store(true)
	if err := e.Reencode(ctx, 0, 1); err != nil {
		t.Fatalf("Reencode losing a parity member: %v", err)
	}
	if st := e.States(); st[2] != raid.Failed || !w.NeedsResync(0) {
		t.Fatalf("states %v, region 0 needs resync %v: want member 2 failed and region 0 marked", st, w.NeedsResync(0))
	}
	flaky.failWrites.Store(false)
	if err := e.Rejoin(2, flaky); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Resync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// TestECCrashModel tears random stripes as a dying host would (data units
// written or not, a random subset of parity units updated), rebuilds the
// set over the members with those stripes marked, and runs random reads and
// writes while members fail. A read returns the bytes on the data units or
// fails with ErrUnrecoverable — the latter only in a torn stripe — never
// other bytes. When every member is back, Resync re-encodes the torn
// stripes and every stripe verifies.
func TestECCrashModel(t *testing.T) {
	for _, l := range []struct{ k, m int }{{2, 1}, {4, 2}, {3, 2}} {
		for seed := uint64(1); seed <= 4; seed++ {
			t.Run(fmt.Sprintf("%d+%d/seed%d", l.k, l.m, seed), func(t *testing.T) {
				runECCrashModel(t, l.k, l.m, seed)
			})
		}
	}
}

func runECCrashModel(t *testing.T, k, m int, seed uint64) {
	const unit, stripes = 4096, 24
	rng := rand.New(rand.NewPCG(seed, uint64(k*10+m+1000)))
	n := k + m
	sd := int64(k) * unit
	size := stripes * sd
	devs := make([]*raidtest.MemDevice, n)
	members := make([]raid.Device, n)
	for i := range devs {
		devs[i] = raidtest.NewMemDevice(stripes * unit)
		members[i] = devs[i]
	}
	g := geom{k: k, m: m, n: n, unit: unit, stripes: stripes}
	code, err := rs.New(k, m)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	// A consistent starting image.
	for s := range int64(stripes) {
		shards := make([][]byte, n)
		for i := range shards {
			shards[i] = make([]byte, unit)
			if i < k {
				copy(shards[i], randBytes(rng, unit))
			}
		}
		if err := code.Encode(shards); err != nil {
			t.Fatal(err)
		}
		for i, sh := range shards {
			if err := devs[g.member(s, i)].WriteAt(ctx, sh, s*unit, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Tear a few stripes: the new bytes of one data unit land or not, and
	// each parity unit gets the new parity or keeps the old.
	torn := map[int64]bool{}
	for len(torn) < 4 {
		s := rng.Int64N(stripes)
		torn[s] = true
		imgs := images(devs)
		shards := make([][]byte, n)
		for i := range shards {
			shards[i] = bytes.Clone(g.shardBytes(imgs, s, i))
		}
		d := rng.IntN(k)
		c0 := rng.Int64N(unit)
		c1 := c0 + 1 + rng.Int64N(unit-c0)
		copy(shards[d][c0:c1], randBytes(rng, c1-c0))
		if err := code.Encode(shards); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(4) != 0 {
			if err := devs[g.member(s, d)].WriteAt(ctx, shards[d][c0:c1], s*unit+c0, false); err != nil {
				t.Fatal(err)
			}
		}
		for i := k; i < n; i++ {
			if rng.IntN(2) == 0 {
				if err := devs[g.member(s, i)].WriteAt(ctx, shards[i][c0:c1], s*unit+c0, false); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The model is what the data units hold.
	model := make([]byte, size)
	imgs := images(devs)
	for s := range int64(stripes) {
		for d := range k {
			copy(model[s*sd+int64(d)*unit:], g.shardBytes(imgs, s, d))
		}
	}
	known := make([]bool, size)
	for i := range known {
		known[i] = true
	}
	w := newTestWIB(t, size, unit) // stripes are whole regions: the suspect ones are the torn ones
	for s := range torn {
		w.Mark(s*sd, sd) // as the merged LOG bitmaps name them
	}
	e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members, WIB: w}, K: k, M: m, StripeUnit: unit})
	if err != nil {
		t.Fatal(err)
	}
	overlapsTorn := func(off, l int64) bool {
		for s := off / sd; s <= (off+l-1)/sd; s++ {
			if torn[s] {
				return true
			}
		}
		return false
	}
	check := func(what string, got []byte, off int64) {
		t.Helper()
		for i := range got {
			if known[off+int64(i)] && got[i] != model[off+int64(i)] {
				t.Fatalf("%s: byte %d differs from what the data units hold (states %v)", what, off+int64(i), e.States())
			}
		}
	}
	broken := rng.Perm(n)[:1+rng.IntN(m)]
	unrecoverable := 0
	for i := range 300 {
		if i%100 == 0 && len(broken) > i/100 {
			devs[broken[i/100]].SetFailed(true)
		}
		l := 1 + rng.Int64N(2*sd)
		off := rng.Int64N(size - l + 1)
		if rng.IntN(3) == 0 {
			p := randBytes(rng, l)
			err := e.WriteAt(ctx, p, off, false)
			switch {
			case err == nil:
				copy(model[off:], p)
				for j := off; j < off+l; j++ {
					known[j] = true
				}
			case errors.Is(err, raid.ErrUnrecoverable) && overlapsTorn(off, l):
				// Partly applied, maybe: those bytes are unknown now.
				for j := off; j < off+l; j++ {
					known[j] = false
				}
			default:
				t.Fatalf("op %d WriteAt(%d, %d): %v", i, off, l, err)
			}
			continue
		}
		got := make([]byte, l)
		err := e.ReadAt(ctx, got, off)
		switch {
		case err == nil:
			check(fmt.Sprintf("op %d ReadAt(%d, %d)", i, off, l), got, off)
		case errors.Is(err, raid.ErrUnrecoverable) && overlapsTorn(off, l):
			unrecoverable++
		default:
			t.Fatalf("op %d ReadAt(%d, %d): %v", i, off, l, err)
		}
	}
	if unrecoverable == 0 {
		t.Log("no read met a torn stripe on a failed member")
	}
	// Every member back; a stripe a member missed a write of while torn is
	// healed by writing it whole.
	if err := e.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, st := range e.States() {
		devs[i].SetFailed(false)
		if st == raid.Failed {
			if err := e.Rejoin(i, devs[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, err = e.Resync(ctx, nil)
	if errors.Is(err, raid.ErrUnrecoverable) {
		for s := range torn {
			p := randBytes(rng, sd)
			if err := e.WriteAt(ctx, p, s*sd, false); err != nil {
				t.Fatal(err)
			}
			copy(model[s*sd:], p)
			for j := s * sd; j < (s+1)*sd; j++ {
				known[j] = true
			}
		}
		_, err = e.Resync(ctx, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if e.Degraded() || w.Count() != 0 {
		t.Fatalf("after recovery: states %v, dirty %v", e.States(), w.Dirty())
	}
	imgs = images(devs)
	for s := range int64(stripes) {
		if !parityVerifies(t, g, imgs, s) {
			t.Fatalf("stripe %d (torn %v) does not verify after recovery", s, torn[s])
		}
	}
	// Degraded reads now rebuild the right bytes.
	down := rng.Perm(n)[:m]
	for _, i := range down {
		devs[i].SetFailed(true)
	}
	got := make([]byte, size)
	if err := e.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("degraded read after recovery: %v", err)
	}
	check("degraded read after recovery", got, 0)
}

// TestECStaleMemberAtAttach (finding 1): the previous host wrote degraded
// to a member's unit (the bytes live only in parity) and died; the new host
// attaches with that member recorded as not in sync (it starts Degraded)
// and the stripe suspect (named by the LOGs). When the member returns, the
// resync must not re-encode parity from its stale unit, which would undo
// the acknowledged degraded write. With two parities the units present are
// checked against each other and the stale unit is rebuilt; with one there
// is nothing to check against, and the stripe stays unrecoverable with its
// parity untouched. On the old code the resync re-encoded parity from the
// stale unit: "read of the unit the previous host wrote degraded: bytes
// differ".
func TestECStaleMemberAtAttach(t *testing.T) {
	for _, l := range []struct{ k, m int }{{4, 2}, {3, 2}, {2, 1}} {
		t.Run(fmt.Sprintf("%d+%d", l.k, l.m), func(t *testing.T) {
			const unit, stripes, region = 4096, 24, 16 << 10
			ctx := t.Context()
			first := newEC(t, l.k, l.m, unit, stripes*unit)
			g := first.g
			sd := int64(g.k) * unit
			size := sd * stripes
			rng := rand.New(rand.NewPCG(uint64(l.k), uint64(l.m)))
			model := randBytes(rng, size)
			if err := first.ec.WriteAt(ctx, model, 0, false); err != nil {
				t.Fatal(err)
			}
			if err := first.ec.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			const s = 5
			x := g.member(s, 1) // holds D1 of stripe s
			failDetected(t, first, x)
			p := randBytes(rng, 700)
			off := s*sd + unit + 300
			if err := first.ec.WriteAt(ctx, p, off, false); err != nil {
				t.Fatalf("degraded write: %v", err)
			}
			if err := first.ec.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
			parityBefore := bytes.Clone(g.shardBytes(images(first.devs), s, g.k))

			// The new host: the stripe's region comes from the LOGs, member x
			// is recorded as degraded and starts so.
			w := newTestWIB(t, size, region)
			w.Mark(s*sd, sd)
			first.devs[x].SetFailed(false)
			e := attachWithout(t, first, w, x, true)
			_, err := e.Resync(ctx, nil)
			got := make([]byte, unit)
			if l.m == 1 {
				if !errors.Is(err, raid.ErrUnrecoverable) {
					t.Fatalf("Resync with one parity and a stale unit in a suspect stripe: %v, want ErrUnrecoverable", err)
				}
				if !bytes.Equal(g.shardBytes(images(first.devs), s, g.k), parityBefore) {
					t.Fatal("the parity that holds the degraded write was rewritten")
				}
				if err := e.ReadAt(ctx, got, s*sd+unit); !errors.Is(err, raid.ErrUnrecoverable) {
					t.Fatalf("read of the stale unit: %v, want ErrUnrecoverable", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resync: %v", err)
			}
			if err := e.ReadAt(ctx, got, s*sd+unit); err != nil || !bytes.Equal(got, model[s*sd+unit:s*sd+2*unit]) {
				t.Fatalf("read of the unit the previous host wrote degraded: err %v, bytes differ", err)
			}
			if err := e.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			checkStripes(t, g, first.devs, e.States(), model)
		})
	}
}

// TestECRejoinDuringRecordCountsAsMissed: a member that fails a degraded
// write and rejoins while the write waits for the record of the
// degradation has still missed that write: once the write is
// acknowledged, the set must not call the member trusted (a host that
// attaches next would re-encode parity from its stale unit).
func TestECRejoinDuringRecordCountsAsMissed(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{}, 1)
	f, _ := newWIBEC(t, 2, 1, 4096, 16, 8192, func(c *raid.ECConfig) {
		c.BeforeDegradedWrite = func(ctx context.Context) error {
			entered <- struct{}{}
			<-release
			return nil
		}
	})
	e, ctx := f.ec, t.Context()
	f.devs[2].SetFailed(true)
	done := make(chan error, 1)
	go func() { done <- e.WriteAt(ctx, bytes.Repeat([]byte{7}, 3*4096), 0, false) }()
	<-entered // the write failed member 2 and waits for the record
	rejoin(t, f, 2)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if u := e.Untrusted(); !u[2] {
		t.Fatalf("member 2 failed an acknowledged write and rejoined while it was being recorded, yet Untrusted = %v", u)
	}
}

// TestECUnreachableInSyncMemberAtAttach: the previous host died with every
// write flushed, one member merely unreachable and recorded in sync; the
// new host attaches without it (it starts Degraded, not Stale) with the
// stripes the LOGs name suspect. When the member comes back, its units
// stand in for data: the resync re-encodes the suspect stripes, the member
// is in sync and every acknowledged byte reads back, on ec:2+1 too, where
// no spare shard exists to check a unit against. (Before ECConfig.Stale
// every member absent at attach counted as stale: on ec:2+1 it stayed
// Resyncing for good and its units in the LOG regions were medium errors.)
func TestECUnreachableInSyncMemberAtAttach(t *testing.T) {
	for _, l := range []struct{ k, m int }{{2, 1}, {4, 2}} {
		t.Run(fmt.Sprintf("%d+%d", l.k, l.m), func(t *testing.T) {
			const unit, stripes, region = 4096, 24, 16 << 10
			ctx := t.Context()
			first := newEC(t, l.k, l.m, unit, stripes*unit)
			g := first.g
			sd := int64(g.k) * unit
			size := sd * stripes
			rng := rand.New(rand.NewPCG(uint64(l.k), 77))
			model := randBytes(rng, size)
			if err := first.ec.WriteAt(ctx, model, 0, false); err != nil {
				t.Fatal(err)
			}
			if err := first.ec.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			const s = 5
			x := g.member(s, 1) // holds D1 of stripe s

			// The new host: the LOGs name stripe s's region; member x is
			// unreachable, recorded in sync.
			w := newTestWIB(t, size, region)
			w.Mark(s*sd, sd)
			e := attachWithout(t, first, w, x, false)
			if _, err := e.Resync(ctx, nil); err != nil {
				t.Fatalf("Resync after the unreachable in-sync member came back: %v", err)
			}
			if st := e.States(); st[x] != raid.InSync {
				t.Fatalf("member %d is %v after the resync, want in sync", x, st[x])
			}
			got := make([]byte, size)
			if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
				t.Fatalf("read back after the resync: err %v, bytes equal %v", err, err == nil && bytes.Equal(got, model))
			}
			checkStripes(t, g, first.devs, e.States(), model)
		})
	}
}

// attachWithout builds the EC set a new host attaches over first's devices
// and WIB w, member x absent at the attach (Stale when stale: the previous
// host recorded it degraded), then hands x back as it returns.
func attachWithout(t *testing.T, first ecFixture, w *bitmap.WIB, x int, stale bool) *raid.EC {
	t.Helper()
	var staleMembers []int
	if stale {
		staleMembers = []int{x}
	}
	e := newECOver(t, first, w, []int{x}, staleMembers)
	if err := e.Rejoin(x, first.devs[x]); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestECTornParityWriteKeepsEvidence: after a host crash a suspect
// stripe's two parities disagree (one was torn), and the member holding D1
// is lost. A write to D0 needs D1 only for parity, and D1 can only be
// rebuilt from the torn parity. Encoding the write's parity from that
// rebuild would make D0, P and Q agree on bytes D1 never held, and a later
// resync that must rebuild D1 (its member missed writes) would take them for
// data. The write is refused instead, leaving the disagreement in place,
// and that resync refuses the stripe: D1 reads as a medium error, never as
// invented bytes. (Found by TestSetDataModel, ec2+2 seed 146.)
func TestECTornParityWriteKeepsEvidence(t *testing.T) {
	const k, m, unit, stripes, region = 2, 2, 4096, 24, 16 << 10
	ctx := t.Context()
	first := newEC(t, k, m, unit, stripes*unit)
	g := first.g
	sd := int64(k) * unit
	size := sd * stripes
	model := randBytes(rand.New(rand.NewPCG(11, 12)), size)
	if err := first.ec.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := first.ec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	const s = 5
	// Tear parity P of stripe s as a dying host leaves it.
	if err := first.devs[g.member(s, k)].WriteAt(ctx, bytes.Repeat([]byte{0xa5}, 512), s*unit+1024, false); err != nil {
		t.Fatal(err)
	}
	x := g.member(s, 1) // holds D1

	// The new host: stripe s's region comes from the LOGs; member x is lost.
	w := newTestWIB(t, size, region)
	w.Mark(s*sd, sd)
	e := newECOver(t, first, w, []int{x}, nil)
	parity := func() [][]byte {
		imgs := images(first.devs)
		return [][]byte{bytes.Clone(g.shardBytes(imgs, s, k)), bytes.Clone(g.shardBytes(imgs, s, k+1))}
	}
	before := parity()
	err := e.WriteAt(ctx, bytes.Repeat([]byte{7}, 2048), s*sd+512, false)
	if !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("write to D0 of a torn suspect stripe whose D1 is lost: %v, want ErrUnrecoverable", err)
	}
	if after := parity(); !bytes.Equal(after[0], before[0]) || !bytes.Equal(after[1], before[1]) {
		t.Fatal("the refused write rewrote the torn stripe's parity")
	}
	e.Close()

	// Another host attaches, member x recorded as having missed writes.
	w2 := newTestWIB(t, size, region)
	w2.Mark(s*sd, sd)
	e2 := attachWithout(t, first, w2, x, true)
	if _, err := e2.Resync(ctx, nil); !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("Resync of the torn stripe with D1 stale: %v, want ErrUnrecoverable", err)
	}
	got := make([]byte, unit)
	if err := e2.ReadAt(ctx, got, s*sd+unit); !errors.Is(err, raid.ErrUnrecoverable) {
		t.Fatalf("read of D1: %v (bytes equal to what was written: %v), want ErrUnrecoverable", err, bytes.Equal(got, model[s*sd+unit:s*sd+2*unit]))
	}
	if err := e2.ReadAt(ctx, got, s*sd); err != nil || !bytes.Equal(got, model[s*sd:s*sd+unit]) {
		t.Fatalf("read of D0, on an in-sync member: %v", err)
	}
}

// newECOver builds an EC set over first's devices with WIB w, degraded and
// stale members as given.
func newECOver(t *testing.T, first ecFixture, w *bitmap.WIB, degraded, stale []int) *raid.EC {
	t.Helper()
	g := first.g
	members := make([]raid.Device, g.n)
	for i, d := range first.devs {
		members[i] = d
	}
	e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members, WIB: w, Degraded: degraded}, K: g.k, M: g.m, StripeUnit: g.unit, Stale: stale})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}
