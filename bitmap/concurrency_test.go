package bitmap

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWIBConcurrentClear runs writers, markers and lazy cleaners on one
// small bitmap (many regions per 64-bit word) and checks that a region is
// dirty whenever a write to it is in flight, that marks and failed writes
// survive every Clear, and that Count agrees with the bits at the end.
func TestWIBConcurrentClear(t *testing.T) {
	const (
		regions = 192 // three words
		rs      = 512
		writers = 6
		ops     = 3000
	)
	w := openTestWIB(t, WIBConfig{Size: regions * rs, RegionSize: rs})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var stale [regions]atomic.Bool // regions that must stay dirty: marked or failed
	deadline := time.Now().Add(10 * time.Second)

	for i := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for n := 0; n < ops && time.Now().Before(deadline); n++ {
				r := rng.Int64N(regions)
				switch rng.IntN(8) {
				case 0: // a write that missed a member
					tok := w.Begin(r*rs, rs)
					stale[r].Store(true)
					w.End(tok, false)
				case 1: // a region known to differ
					stale[r].Store(true)
					w.Mark(r*rs+1, 1)
				default: // a write that reached every member, maybe two regions
					n := rs + rng.Int64N(rs)
					tok := w.Begin(r*rs, n)
					last := min(r*rs+n, regions*rs) - 1
					if !w.IsDirty(r*rs, 1) || !w.IsDirty(last, 1) {
						t.Errorf("region of an in-flight write at %d+%d is clean", r*rs, n)
					}
					if rng.IntN(2) == 0 {
						runtime.Gosched() // let a cleaner run while the write is in flight
					}
					if !w.IsDirty(r*rs, n) {
						t.Errorf("in-flight write at %d+%d lost its bit before End", r*rs, n)
					}
					w.End(tok, true)
				}
			}
		})
	}
	var cleaners sync.WaitGroup
	for i := range 2 {
		cleaners.Go(func() {
			for !stop.Load() {
				for r := int64(i); r < regions; r += 2 {
					w.Clear(r)
				}
				w.ClearRange(0, regions*rs)
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	cleaners.Wait()

	for r := range int64(regions) {
		if stale[r].Load() && (!w.IsDirty(r*rs, 1) || !w.NeedsResync(r)) {
			t.Errorf("region %d was marked or had a failed write but is clean", r)
		}
		if !stale[r].Load() && !w.Clear(r) {
			t.Errorf("region %d had only successful writes, all ended, but cannot be cleaned", r)
		}
	}
	var want int64
	for r := range int64(regions) {
		if w.bit(r) {
			want++
		}
	}
	if w.Count() != want {
		t.Fatalf("Count %d, bits %d", w.Count(), want)
	}
}

// TestWIBMirrorModel runs a two-member mirror model: writers write to both
// members (sometimes only to the first, as when the second failed), a
// resync copies dirty regions — stale or not — from the first member to the
// second, and a cleaner clears regions lazily, all at once. Each writer
// owns one block of every region, so the members can differ only through a
// write that missed the second member or a copy that overwrote a concurrent
// write. A checker that briefly keeps writers out of one region asserts,
// again and again, that a region whose bit is clear holds the same data on
// both members.
func TestWIBMirrorModel(t *testing.T) {
	const (
		regions = 32
		rs      = 512
		writers = 4
		ops     = 4000
	)
	w := openTestWIB(t, WIBConfig{Size: regions * rs, RegionSize: rs})
	var a, b [regions][writers]atomic.Int64 // the members' blocks
	var quiet [regions]sync.RWMutex         // writers share it; the checker takes it alone
	check := func(r int64) {
		quiet[r].Lock()
		defer quiet[r].Unlock()
		if w.IsDirty(r*rs, 1) {
			return
		}
		for i := range writers {
			if x, y := a[r][i].Load(), b[r][i].Load(); x != y {
				t.Errorf("region %d is clean but block %d differs: %d vs %d", r, i, x, y)
			}
		}
	}
	var stop atomic.Bool
	var wg, background sync.WaitGroup
	var copies, resynced, cleaned, checks atomic.Int64
	background.Go(func() { // resync: copy any dirty region, stale or not
		for !stop.Load() {
			for r := range int64(regions) {
				if !w.IsDirty(r*rs, 1) {
					continue
				}
				tk := w.ResyncStart(r)
				for i := range writers {
					v := a[r][i].Load()
					runtime.Gosched()
					b[r][i].Store(v)
				}
				copies.Add(1)
				if w.ResyncDone(tk) {
					resynced.Add(1)
				}
			}
		}
	})
	background.Go(func() { // lazy cleaner
		for !stop.Load() {
			for r := range int64(regions) {
				if w.IsDirty(r*rs, 1) && w.Clear(r) {
					cleaned.Add(1)
				}
			}
			runtime.Gosched()
		}
	})
	background.Go(func() { // checker
		for !stop.Load() {
			for r := range int64(regions) {
				check(r)
				checks.Add(1)
			}
		}
	})
	for i := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 9))
			for n := range int64(ops) {
				r := rng.Int64N(regions)
				ok := rng.IntN(10) != 0
				quiet[r].RLock()
				tok := w.Begin(r*rs, 1)
				a[r][i].Store(n + 1)
				runtime.Gosched()
				if ok {
					b[r][i].Store(n + 1)
				}
				w.End(tok, ok)
				quiet[r].RUnlock()
			}
		})
	}
	wg.Wait()
	stop.Store(true)
	background.Wait()
	for r := range int64(regions) {
		check(r)
	}
	t.Logf("%d copies, %d resyncs succeeded, %d lazy clears, %d checks, %d regions dirty at the end",
		copies.Load(), resynced.Load(), cleaned.Load(), checks.Load(), w.Count())
	if resynced.Load() == 0 || cleaned.Load() == 0 || copies.Load() == resynced.Load() {
		t.Fatal("the model never resynced, never cleared or never raced a copy: it proves nothing")
	}
	// Quiet now: one resync pass makes the members equal and the bitmap clean.
	for r := range int64(regions) {
		tk := w.ResyncStart(r)
		for i := range writers {
			b[r][i].Store(a[r][i].Load())
		}
		if !w.ResyncDone(tk) {
			t.Fatalf("quiet resync of region %d refused", r)
		}
	}
	w.FlushDone(w.FlushStart()) // every member flushed
	if w.Count() != 0 {
		t.Fatalf("%d regions dirty after resyncing and flushing all", w.Count())
	}
}

// TestLogConcurrentMarkSync has many writers mark and sync one Log while
// persists are slow; after Sync returns, the state on "disk" holds the
// writer's region, and persists never overlap.
func TestLogConcurrentMarkSync(t *testing.T) {
	const regions, rs = 100, 512
	l := newTestLog(t, LogConfig{Size: regions * rs, RegionSize: rs})
	ctx := t.Context()
	var (
		diskMu  sync.Mutex
		disk    []byte
		running atomic.Int32
		persist = func(b []byte) error {
			if running.Add(1) != 1 {
				t.Error("persists overlap")
			}
			time.Sleep(50 * time.Microsecond)
			diskMu.Lock()
			disk = b
			diskMu.Unlock()
			running.Add(-1)
			return nil
		}
		flips, waits atomic.Int64
	)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 3))
			for range 300 {
				r := rng.Int64N(regions)
				gen, flipped := l.Mark(r*rs, 1)
				if flipped {
					flips.Add(1)
				} else if gen != 0 {
					waits.Add(1)
				}
				if err := l.Sync(ctx, gen, persist); err != nil {
					t.Error(err)
					return
				}
				diskMu.Lock()
				state := disk
				diskMu.Unlock()
				var onDisk Log
				if err := onDisk.UnmarshalBinary(state); err != nil {
					t.Error(err)
					return
				}
				if s := onDisk.Snapshot(); s[r/8]>>(r%8)&1 == 0 {
					t.Errorf("region %d written before its bit was on disk", r)
				}
			}
		})
	}
	wg.Wait()
	if flips.Load() != regions {
		t.Fatalf("%d flips for %d regions", flips.Load(), regions)
	}
	t.Logf("%d flips, %d writes waited on another writer's persist", flips.Load(), waits.Load())
}

// TestLogConcurrentRotate races marks, pins and rotations under -race.
func TestLogConcurrentRotate(t *testing.T) {
	l := newTestLog(t, LogConfig{Size: 64 * 512, RegionSize: 512})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 5))
			for range 2000 {
				l.Mark(rng.Int64N(64*512), 600)
				_ = l.Snapshot()
			}
		})
	}
	wg.Go(func() {
		for i := range 500 {
			if i%50 == 0 {
				l.Pin()
			}
			if i%50 == 25 {
				l.Unpin()
			}
			l.Rotate()
			_, _ = l.MarshalBinary()
		}
	})
	wg.Wait()
	// Every region written after the last rotation is in current.
	l.Rotate()
	l.Mark(0, 64*512)
	if got := len(logRegions(l.Snapshot())); got != 64 {
		t.Fatalf("%d regions set after marking all 64", got)
	}
}
