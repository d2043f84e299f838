package bitmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/chunkraid/chunkraid/budget"
)

// The REMB theorems as randomized property tests. Time is the fake clock
// of a synctest bubble, so minutes of rotations run in milliseconds and
// every in-flight delay is exact.

func bitSet(b []byte, r int64) bool { return b[r/8]>>(r%8)&1 == 1 }

// TestTheorem1: current|history of a chunk holds every region written in
// the last T, whatever the phase of the rotations; and it forgets a region
// within two periods (plus the rotation timer's lag) of its last write.
func TestTheorem1(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { theorem1(t, seed) })
		})
	}
}

func theorem1(t *testing.T, seed uint64) {
	const (
		T       = 10 * time.Second
		regions = 64
		rs      = 512
		run     = 20 * T
		maxLag  = T/10 + T/4 // the rotation timer fires at most this far apart
	)
	l, err := NewLog(LogConfig{Size: regions * rs, RegionSize: rs, Period: T})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu        sync.Mutex
		last      [regions]time.Time // newest write per region
		rotations int
	)
	end := time.Now().Add(run)
	var wg sync.WaitGroup
	wg.Go(func() { // writes arrive at random times
		rng := rand.New(rand.NewPCG(seed, 1))
		for {
			time.Sleep(time.Duration(rng.Int64N(int64(T / 4))))
			if !time.Now().Before(end) {
				return
			}
			off, n := rng.Int64N(regions*rs), 1+rng.Int64N(2*rs) // may touch two or three regions
			mu.Lock()
			l.Mark(off, n)
			for r := off / rs; r <= min(off+n-1, regions*rs-1)/rs; r++ {
				last[r] = time.Now()
			}
			mu.Unlock()
		}
	})
	wg.Go(func() { // the owner's rotation timer, with jitter
		rng := rand.New(rand.NewPCG(seed, 2))
		for time.Now().Before(end) {
			time.Sleep(T/10 + time.Duration(rng.Int64N(int64(T/4))))
			mu.Lock()
			if l.MaybeRotate(time.Now()) {
				rotations++
			}
			mu.Unlock()
		}
	})
	var checks, forgotten int
	for time.Now().Before(end) {
		time.Sleep(T / 50)
		mu.Lock()
		now := time.Now()
		snap := l.Snapshot()
		for r := range int64(regions) {
			if last[r].IsZero() {
				continue
			}
			age, set := now.Sub(last[r]), bitSet(snap, r)
			if age < T && !set {
				t.Errorf("at %v region %d, written %v ago, is not in current|history", now.Sub(end.Add(-run)), r, age)
			}
			if age > 2*(T+maxLag) && set {
				t.Errorf("region %d, last written %v ago, is still set: the LOG does not forget", r, age)
			}
			if !set {
				forgotten++
			}
			checks++
		}
		mu.Unlock()
	}
	wg.Wait()
	if forgotten == 0 || rotations < int(run/(T+maxLag))-1 {
		t.Fatalf("%d rotations, %d forgotten regions in %d checks: the test exercised nothing", rotations, forgotten, checks)
	}
}

// simConfig describes one simulated RAID set: a host sends writes to every
// member; each copy arrives after a random delay below t_io or, at a
// failed member, never.
type simConfig struct {
	members  int
	T, tIO   time.Duration
	regions  int64
	run      time.Duration // the host sends writes for this long
	after    time.Duration // checks go on this long after the last write
	fail     bool          // one member fails at a random time
	restarts bool          // chunkservers restart from their persisted LOG now and then
}

type simWrite struct {
	region int64
	sent   time.Time
	got    []time.Time // per member; zero until the copy arrived
	missed []bool      // per member: the copy never arrives
}

type simMember struct {
	log      *Log
	disk     []byte    // the persisted LOG state (the chunk sidecar)
	failAt   time.Time // zero: never fails
	detected bool      // the host has failed this member
}

type simResult struct {
	checks, differ, violations int
	first                      string
	members                    []*simMember
	failing                    int
}

// runSim runs one simulated set in the current synctest bubble. At every
// check it asserts Theorem 2 — the OR of all members' LOG bitmaps contains
// every region in which the members may differ (a write arrived at some
// member and not, or not yet, at another) — and, when a member failed, that
// the OR of the survivors' LOG bitmaps still contains every region the
// failed member missed. With strict, a violation fails the test; otherwise
// violations are only counted (for the counterexamples).
func runSim(t *testing.T, cfg simConfig, seed uint64, strict bool) simResult {
	const rs = 512
	size := cfg.regions * rs
	newLog := func() *Log {
		l, err := NewLog(LogConfig{Size: size, RegionSize: rs, Period: cfg.T})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	var (
		mu      sync.Mutex // guards everything below and serializes the simulation's events
		members = make([]*simMember, cfg.members)
		writes  []*simWrite
		res     = simResult{failing: -1}
		wg      sync.WaitGroup
		ctx     = t.Context()
	)
	for m := range members {
		members[m] = &simMember{log: newLog()}
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	start := time.Now()
	end := start.Add(cfg.run)
	stop := end.Add(cfg.after)
	if cfg.fail {
		res.failing = rng.IntN(cfg.members)
		members[res.failing].failAt = start.Add(cfg.run/8 + time.Duration(rng.Int64N(int64(cfg.run/2))))
	}
	// syncLog persists a member's LOG before what needs it proceeds, as the
	// chunkserver does. Called with mu held.
	syncLog := func(mem *simMember, gen uint64) {
		err := mem.log.Sync(ctx, gen, func(b []byte) error { mem.disk = b; return nil })
		if err != nil {
			t.Error(err)
		}
	}
	arrive := func(w *simWrite, m int, d time.Duration) {
		time.Sleep(d)
		mu.Lock()
		defer mu.Unlock()
		mem := members[m]
		gen, _ := mem.log.Mark(w.region*rs, rs)
		syncLog(mem, gen) // durable before the data write
		w.got[m] = time.Now()
	}
	pin := func(m int, d time.Duration) {
		time.Sleep(d)
		mu.Lock()
		defer mu.Unlock()
		syncLog(members[m], members[m].log.Pin())
	}
	// detect: the host fails member m t_io after sending it a write that
	// did not complete, and pins the others (each pin in flight below t_io).
	detect := func(m int, pinDelays []time.Duration) {
		time.Sleep(cfg.tIO)
		mu.Lock()
		defer mu.Unlock()
		if members[m].detected {
			return
		}
		members[m].detected = true
		for o := range members {
			if o != m && !members[o].detected {
				wg.Go(func() { pin(o, pinDelays[o]) })
			}
		}
	}
	wg.Go(func() { // the host
		hrng := rand.New(rand.NewPCG(seed, 1))
		for {
			time.Sleep(1 + time.Duration(hrng.Int64N(int64(cfg.tIO/2))))
			now := time.Now()
			if !now.Before(end) {
				return
			}
			mu.Lock()
			w := &simWrite{region: hrng.Int64N(cfg.regions), sent: now,
				got: make([]time.Time, cfg.members), missed: make([]bool, cfg.members)}
			writes = append(writes, w)
			pinDelays := make([]time.Duration, cfg.members)
			for m := range pinDelays {
				pinDelays[m] = time.Duration(hrng.Int64N(int64(cfg.tIO)))
			}
			for m, mem := range members {
				d := time.Duration(hrng.Int64N(int64(cfg.tIO))) // in flight for less than t_io
				switch {
				case mem.detected: // failed by the host: not sent
					w.missed[m] = true
				case !mem.failAt.IsZero() && !now.Add(d).Before(mem.failAt): // lost
					w.missed[m] = true
					wg.Go(func() { detect(m, pinDelays) })
				default:
					wg.Go(func() { arrive(w, m, d) })
				}
			}
			mu.Unlock()
		}
	})
	for m := range members {
		wg.Go(func() { // the chunkserver's rotation timer
			rrng := rand.New(rand.NewPCG(seed, uint64(10+m)))
			for time.Now().Before(stop) {
				time.Sleep(cfg.T/10 + time.Duration(rrng.Int64N(int64(cfg.T/4))))
				mu.Lock()
				members[m].log.MaybeRotate(time.Now())
				mu.Unlock()
			}
		})
		if cfg.restarts {
			wg.Go(func() { // the chunkserver restarts and reloads its sidecar
				rrng := rand.New(rand.NewPCG(seed, uint64(20+m)))
				for time.Now().Before(stop) {
					time.Sleep(cfg.T/2 + time.Duration(rrng.Int64N(int64(2*cfg.T))))
					mu.Lock()
					mem := members[m]
					fresh := newLog()
					if mem.disk != nil {
						if err := fresh.UnmarshalBinary(mem.disk); err != nil {
							t.Error(err)
						}
					}
					mem.log = fresh
					mu.Unlock()
				}
			})
		}
	}

	violation := func(format string, args ...any) {
		res.violations++
		msg := fmt.Sprintf(format, args...)
		if res.first == "" {
			res.first = msg
		}
		if strict {
			t.Error(msg)
		}
	}
	nbytes := (cfg.regions + 7) / 8
	for time.Now().Before(stop) {
		time.Sleep(cfg.T / 50)
		mu.Lock()
		now := time.Now()
		all, surv := make([]byte, nbytes), make([]byte, nbytes)
		for m, mem := range members {
			for i, c := range mem.log.Snapshot() {
				all[i] |= c
				if m != res.failing {
					surv[i] |= c
				}
			}
		}
		keep := writes[:0]
		for _, w := range writes {
			received, missing, survivorGot := false, false, false
			for m := range members {
				if w.got[m].IsZero() {
					missing = true
				} else {
					received = true
					survivorGot = survivorGot || m != res.failing
				}
			}
			if !missing {
				continue // on every member: can no longer differ
			}
			keep = append(keep, w)
			if !received {
				continue // on no member yet: nothing differs
			}
			res.differ++
			at := now.Sub(start)
			if !bitSet(all, w.region) {
				violation("at %v members differ in region %d (write sent at %v, arrivals %v) but no LOG bitmap has it",
					at, w.region, w.sent.Sub(start), arrivals(w, start))
			}
			if res.failing >= 0 && w.missed[res.failing] && survivorGot && !bitSet(surv, w.region) {
				violation("at %v the survivors' LOG bitmaps forgot region %d, which failed member %d missed (write sent at %v)",
					at, w.region, res.failing, w.sent.Sub(start))
			}
		}
		writes = keep
		res.checks++
		mu.Unlock()
	}
	wg.Wait()
	res.members = members
	return res
}

func arrivals(w *simWrite, start time.Time) string {
	var parts []string
	for m, g := range w.got {
		switch {
		case !g.IsZero():
			parts = append(parts, fmt.Sprintf("m%d@%v", m, g.Sub(start)))
		case w.missed[m]:
			parts = append(parts, fmt.Sprintf("m%d:lost", m))
		default:
			parts = append(parts, fmt.Sprintf("m%d:in flight", m))
		}
	}
	return strings.Join(parts, " ")
}

// TestTheorem2: with T = 3·t_io (the smallest T the budget allows), the OR
// of the members' LOG bitmaps covers every region in which they may differ,
// at every instant: with writes in flight to every member, with a member
// that fails and is failed by the host t_io later (the survivors pinned),
// and with chunkservers restarting from their persisted LOG state.
func TestTheorem2(t *testing.T) {
	const tIO = 5 * time.Second
	if err := budget.Validate(tIO, 2*tIO, 3*tIO); err != nil {
		t.Fatalf("the tested budget is not valid: %v", err)
	}
	variants := []struct {
		name string
		cfg  simConfig
	}{
		{"mirror2", simConfig{members: 2}},
		{"mirror3 restarts", simConfig{members: 3, restarts: true}},
		{"mirror2 failed member", simConfig{members: 2, fail: true}},
		{"mirror3 failed member restarts", simConfig{members: 3, fail: true, restarts: true}},
	}
	for _, v := range variants {
		for seed := range uint64(5) {
			t.Run(fmt.Sprintf("%s/seed=%d", v.name, seed), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					cfg := v.cfg
					cfg.T, cfg.tIO = 3*tIO, tIO
					cfg.regions = 24
					cfg.run = 10 * cfg.T
					cfg.after = 3 * cfg.T
					res := runSim(t, cfg, seed, true)
					if res.differ == 0 {
						t.Fatalf("members never differed in %d checks: the test exercised nothing", res.checks)
					}
					t.Logf("%d checks, %d (write, instant) pairs where members differed", res.checks, res.differ)
				})
			})
		}
	}
}

// TestTheorem2DegradedPinned: a member is gone for most of the run (many
// periods T); the host pins the survivors, which then keep every region the
// absent member missed for as long as they stay pinned; after the resync
// the host unpins them, and two periods later they have forgotten it all.
func TestTheorem2DegradedPinned(t *testing.T) {
	const tIO = 5 * time.Second
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := simConfig{members: 3, fail: true, T: 3 * tIO, tIO: tIO, regions: 40, restarts: true}
				cfg.run = 25 * cfg.T
				cfg.after = 5 * cfg.T
				res := runSim(t, cfg, seed, true)
				for m, mem := range res.members {
					if m == res.failing {
						continue
					}
					if !mem.log.Pinned() {
						t.Fatalf("survivor %d is not pinned", m)
					}
					if len(logRegions(mem.log.Snapshot())) == 0 {
						t.Fatalf("survivor %d remembers nothing after a long degradation", m)
					}
				}
				// Resync done: unpin, and the survivors forget within two
				// periods (no writes any more).
				for m, mem := range res.members {
					if m != res.failing {
						mem.log.Unpin()
					}
				}
				for range 3 {
					time.Sleep(cfg.T)
					for _, mem := range res.members {
						mem.log.MaybeRotate(time.Now())
					}
				}
				for m, mem := range res.members {
					if m != res.failing && len(logRegions(mem.log.Snapshot())) != 0 {
						t.Fatalf("unpinned survivor %d still holds %v", m, logRegions(mem.log.Snapshot()))
					}
				}
				if res.differ == 0 {
					t.Fatal("members never differed: the test exercised nothing")
				}
			})
		})
	}
}

// TestTheorem2Counterexamples shows why the budget rule exists: with T
// shorter than t_io, a member forgets a write while its copy is still in
// flight to another member, so the OR of the LOG bitmaps misses a region
// in which the members differ; with T = 1.2·t_io — longer than any write
// is in flight, but shorter than the up to 2·t_io it takes the host to fail
// a member and pin the survivors — a survivor can forget what the failed
// member missed before the pin arrives. budget.Validate refuses both.
func TestTheorem2Counterexamples(t *testing.T) {
	const tIO = 5 * time.Second
	tests := []struct {
		name  string
		cfg   simConfig
		seeds uint64
	}{
		{"T < t_io", simConfig{members: 2, T: 2 * time.Second}, 6},
		{"T = 1.2 t_io with a failed member", simConfig{members: 2, T: tIO * 6 / 5, fail: true}, 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := budget.Validate(tIO, 2*tIO, tt.cfg.T); !errors.Is(err, budget.ErrBudget) {
				t.Fatalf("budget.Validate accepted T=%v with t_io=%v", tt.cfg.T, tIO)
			}
			var total int
			var example string
			for seed := range tt.seeds {
				synctest.Test(t, func(t *testing.T) {
					cfg := tt.cfg
					cfg.tIO, cfg.regions = tIO, 24
					cfg.run, cfg.after = 40*tIO, 4*tIO
					res := runSim(t, cfg, seed, false)
					total += res.violations
					if example == "" {
						example = res.first
					}
				})
			}
			if total == 0 {
				t.Fatal("no region was lost: the counterexample did not show")
			}
			t.Logf("%d violations; e.g. %s", total, example)
		})
	}
}

// TestTheorem2CounterexampleByHand is the smallest case of the above, step
// by step: member A gets a write at once, member B's copy takes 4.5 s (t_io
// is 5 s, so B is not failed), A rotates twice with T = 2 s, and at 4 s the
// members differ in a region that no LOG bitmap holds. With T = 3·t_io the
// same schedule keeps the region.
func TestTheorem2CounterexampleByHand(t *testing.T) {
	const tIO, rs = 5 * time.Second, 512
	for _, T := range []time.Duration{2 * time.Second, 3 * tIO} {
		t.Run(fmt.Sprint("T=", T), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, err := NewLog(LogConfig{Size: 8 * rs, RegionSize: rs, Period: T})
				if err != nil {
					t.Fatal(err)
				}
				b, _ := NewLog(LogConfig{Size: 8 * rs, RegionSize: rs, Period: T})
				a.Mark(3*rs, 1) // the write reaches A at t=0; B's copy is in flight until 4.5 s
				for range 4 {
					time.Sleep(time.Second)
					a.MaybeRotate(time.Now())
					b.MaybeRotate(time.Now())
				}
				// t = 4 s: A holds the write, B does not yet.
				held := bitSet(a.Snapshot(), 3) || bitSet(b.Snapshot(), 3)
				if T < tIO && held {
					t.Fatal("T < t_io: expected the LOG bitmaps to have lost region 3")
				}
				if T >= 3*tIO && !held {
					t.Fatal("T = 3·t_io: region 3 lost while the members differ")
				}
				time.Sleep(500 * time.Millisecond)
				b.Mark(3*rs, 1) // B's copy arrives: the members agree again
			})
		})
	}
}
