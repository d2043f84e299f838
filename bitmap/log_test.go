package bitmap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for Logs in tests that do not run in a
// synctest bubble.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

func newTestLog(t *testing.T, cfg LogConfig) *Log {
	t.Helper()
	l, err := NewLog(cfg)
	if err != nil {
		t.Fatalf("NewLog(%+v): %v", cfg, err)
	}
	return l
}

// logRegions lists the regions set in a Snapshot-style bitmap.
func logRegions(b []byte) []int64 {
	var out []int64
	for i, c := range b {
		for j := range 8 {
			if c>>j&1 == 1 {
				out = append(out, int64(i*8+j))
			}
		}
	}
	return out
}

// halves returns the regions set in current and in history.
func halves(l *Log) (cur, hist []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for r := range l.regions {
		if l.mu.current[r>>6]>>(r&63)&1 == 1 {
			cur = append(cur, r)
		}
		if l.mu.history[r>>6]>>(r&63)&1 == 1 {
			hist = append(hist, r)
		}
	}
	return cur, hist
}

// nopPersist accepts every state.
func nopPersist([]byte) error { return nil }

func TestNewLogConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  LogConfig
	}{
		{"zero size", LogConfig{}},
		{"negative size", LogConfig{Size: -1}},
		{"region not power of two", LogConfig{Size: mib, RegionSize: 3 * mib}},
		{"region too small", LogConfig{Size: mib, RegionSize: 128}},
		{"negative period", LogConfig{Size: mib, Period: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewLog(tt.cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("NewLog(%+v) = %v, want ErrConfig", tt.cfg, err)
			}
		})
	}
	l := newTestLog(t, LogConfig{Size: 10 << 30})
	if l.RegionSize() != 64*mib || l.Regions() != 160 || l.Period() != time.Minute || l.Size() != 10<<30 {
		t.Fatalf("defaults: region %d regions %d period %v", l.RegionSize(), l.Regions(), l.Period())
	}
	if time.Since(l.LastRotation()) > time.Minute {
		t.Fatalf("a new Log's rotation time %v is not now", l.LastRotation())
	}
}

func TestLogMarkGenerations(t *testing.T) {
	l := newTestLog(t, LogConfig{Size: 8 * mib, RegionSize: mib})
	ctx := t.Context()

	g1, flipped := l.Mark(0, 10)
	if !flipped || g1 == 0 {
		t.Fatalf("first Mark = %d, %v; want a generation and a flip", g1, flipped)
	}
	// A second writer to the same region: no flip, but the bit is not
	// durable yet, so it must wait for the same generation.
	g2, flipped := l.Mark(100, 10)
	if flipped || g2 != g1 {
		t.Fatalf("second Mark = %d, %v; want %d, false", g2, flipped, g1)
	}
	if l.Durable(g1) {
		t.Fatal("generation durable before any persist")
	}
	var persisted [][]byte
	persist := func(b []byte) error { persisted = append(persisted, b); return nil }
	if err := l.Sync(ctx, g2, persist); err != nil {
		t.Fatal(err)
	}
	if !l.Durable(g1) || len(persisted) != 1 {
		t.Fatalf("after Sync: durable %v, %d persists", l.Durable(g1), len(persisted))
	}
	if err := l.Sync(ctx, g1, persist); err != nil || len(persisted) != 1 {
		t.Fatalf("Sync of a durable generation persisted again (%d) or failed: %v", len(persisted), err)
	}
	// Durable bits need nothing.
	if g, flipped := l.Mark(5, 1); g != 0 || flipped {
		t.Fatalf("Mark of a durable bit = %d, %v; want 0, false", g, flipped)
	}
	// A range that is partly durable and partly new.
	g3, flipped := l.Mark(mib-1, 2)
	if !flipped || g3 <= g1 {
		t.Fatalf("Mark flipping region 1 = %d, %v", g3, flipped)
	}
	if err := l.Sync(ctx, g3, persist); err != nil {
		t.Fatal(err)
	}
	var back Log
	if err := back.UnmarshalBinary(persisted[len(persisted)-1]); err != nil {
		t.Fatal(err)
	}
	if got := logRegions(back.Snapshot()); !slices.Equal(got, []int64{0, 1}) {
		t.Fatalf("persisted regions %v, want [0 1]", got)
	}
	// Nothing inside the chunk: nothing to do.
	for _, r := range [][2]int64{{8 * mib, 1}, {-10, 5}, {0, 0}, {3, -1}} {
		if g, flipped := l.Mark(r[0], r[1]); g != 0 || flipped {
			t.Errorf("Mark(%d, %d) = %d, %v", r[0], r[1], g, flipped)
		}
	}
	if err := l.Sync(ctx, 0, func([]byte) error { t.Fatal("persist for generation 0"); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestLogSyncGroupCommit(t *testing.T) {
	l := newTestLog(t, LogConfig{Size: 8 * mib, RegionSize: mib})
	ctx := t.Context()

	var calls, running, overlap atomic.Int32
	var disk atomic.Pointer[[]byte]
	release := make(chan struct{})
	entered := make(chan struct{}, 8)
	persist := func(b []byte) error {
		if running.Add(1) > 1 {
			overlap.Add(1)
		}
		calls.Add(1)
		entered <- struct{}{}
		<-release
		disk.Store(&b)
		running.Add(-1)
		return nil
	}

	gA, _ := l.Mark(0, 1)
	errA := make(chan error, 1)
	go func() { errA <- l.Sync(ctx, gA, persist) }()
	<-entered // A is persisting generation gA

	// B waits on A's persist: its bit was set in the same generation.
	gB, flippedB := l.Mark(1, 1)
	if flippedB || gB != gA {
		t.Fatalf("B: Mark = %d, %v", gB, flippedB)
	}
	// C flips a bit after A's persist took its snapshot: it needs a second one.
	gC, flippedC := l.Mark(3*mib, 1)
	if !flippedC || gC <= gA {
		t.Fatalf("C: Mark = %d, %v", gC, flippedC)
	}
	errB, errC := make(chan error, 1), make(chan error, 1)
	go func() { errB <- l.Sync(ctx, gB, persist) }()
	go func() { errC <- l.Sync(ctx, gC, persist) }()

	// A waiter whose context ends stops waiting.
	cctx, cancel := context.WithCancel(ctx)
	errD := make(chan error, 1)
	go func() { errD <- l.Sync(cctx, gC, persist) }()
	cancel()
	if err := <-errD; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Sync = %v", err)
	}

	release <- struct{}{} // A's persist ends
	if err := <-errA; err != nil {
		t.Fatal(err)
	}
	if err := <-errB; err != nil {
		t.Fatal(err)
	}
	<-entered // the second persist, for C
	if l.Durable(gC) {
		t.Fatal("C durable before its persist ended")
	}
	release <- struct{}{}
	if err := <-errC; err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d persists, want 2 (A's, shared by B, then C's)", n)
	}
	if overlap.Load() != 0 {
		t.Fatal("persists overlapped")
	}
	var back Log
	if err := back.UnmarshalBinary(*disk.Load()); err != nil {
		t.Fatal(err)
	}
	if got := logRegions(back.Snapshot()); !slices.Equal(got, []int64{0, 3}) {
		t.Fatalf("state on disk has regions %v, want [0 3]", got)
	}
}

func TestLogSyncFailureIsPermanent(t *testing.T) {
	l := newTestLog(t, LogConfig{Size: 8 * mib, RegionSize: mib})
	ctx := t.Context()
	boom := errors.New("fdatasync: input/output error")
	g, _ := l.Mark(0, 1)
	err := l.Sync(ctx, g, func([]byte) error { return boom })
	if !errors.Is(err, ErrLogFailed) || !errors.Is(err, boom) {
		t.Fatalf("Sync with a failing persist = %v", err)
	}
	g2, _ := l.Mark(mib, 1)
	err = l.Sync(ctx, g2, func([]byte) error { t.Fatal("persist retried after a failure"); return nil })
	if !errors.Is(err, ErrLogFailed) {
		t.Fatalf("Sync after a failure = %v", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	l2 := newTestLog(t, LogConfig{Size: mib})
	g3, _ := l2.Mark(0, 1)
	if err := l2.Sync(done, g3, nopPersist); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync with an ended context = %v", err)
	}
}

// TestLogSyncNotPersisted: a persist that says nothing reached the disk
// fails that Sync only; the next Sync persists a state with every bit.
func TestLogSyncNotPersisted(t *testing.T) {
	l := newTestLog(t, LogConfig{Size: 8 * mib, RegionSize: mib})
	ctx := t.Context()
	full := fmt.Errorf("writing sidecar: no space left on device: %w", ErrNotPersisted)
	g, _ := l.Mark(0, 1)
	if err := l.Sync(ctx, g, func([]byte) error { return full }); !errors.Is(err, ErrNotPersisted) || errors.Is(err, ErrLogFailed) {
		t.Fatalf("Sync with a refused persist = %v", err)
	}
	if l.Durable(g) {
		t.Fatal("a refused persist counted as durable")
	}
	g2, _ := l.Mark(2*mib, 1)
	var disk []byte
	if err := l.Sync(ctx, g2, func(b []byte) error { disk = slices.Clone(b); return nil }); err != nil {
		t.Fatalf("Sync after a refused persist = %v", err)
	}
	if !l.Durable(g) || !l.Durable(g2) {
		t.Fatal("the later persist did not cover both generations")
	}
	var back Log
	if err := back.UnmarshalBinary(disk); err != nil {
		t.Fatal(err)
	}
	if got := logRegions(back.Snapshot()); !slices.Equal(got, []int64{0, 2}) {
		t.Fatalf("state on disk has regions %v, want [0 2]", got)
	}
}

func TestLogRotate(t *testing.T) {
	clk := newFakeClock()
	l := newTestLog(t, LogConfig{Size: 8 * mib, RegionSize: mib, Period: 10 * time.Second, Clock: clk.Now})
	start := l.LastRotation()

	l.Mark(0, 1)
	if l.MaybeRotate(clk.Add(9 * time.Second)) {
		t.Fatal("rotated before the period")
	}
	if l.MaybeRotate(start.Add(-time.Hour)) {
		t.Fatal("rotated on a clock that went backwards")
	}
	now := clk.Add(time.Second)
	if !l.MaybeRotate(now) {
		t.Fatal("did not rotate after the period")
	}
	if !l.LastRotation().Equal(now) {
		t.Fatalf("rotation time %v, want %v", l.LastRotation(), now)
	}
	cur, hist := halves(l)
	if len(cur) != 0 || !slices.Equal(hist, []int64{0}) {
		t.Fatalf("after one rotation current %v history %v", cur, hist)
	}
	// After the rotation the bit is no longer in current: a new write
	// flips it again (one persist per region per period).
	if _, flipped := l.Mark(0, 1); !flipped {
		t.Fatal("a write after a rotation did not flip current")
	}
	l.Mark(2*mib, 1)
	if got := logRegions(l.Snapshot()); !slices.Equal(got, []int64{0, 2}) {
		t.Fatalf("Snapshot %v", got)
	}
	l.Rotate()
	l.Rotate()
	if got := logRegions(l.Snapshot()); len(got) != 0 {
		t.Fatalf("two rotations without writes left %v", got)
	}
	if !l.LastRotation().Equal(clk.Now()) {
		t.Fatal("Rotate did not take its time from the Clock")
	}
}

func TestLogPin(t *testing.T) {
	ctx := t.Context()
	l := newTestLog(t, LogConfig{Size: 8 * mib, RegionSize: mib})
	l.Mark(0, 1)
	g := l.Pin()
	if g == 0 || !l.Pinned() {
		t.Fatalf("Pin = %d, pinned %v", g, l.Pinned())
	}
	if g2 := l.Pin(); g2 != g {
		t.Fatalf("a repeated Pin before the persist = %d, want %d", g2, g)
	}
	var disk []byte
	if err := l.Sync(ctx, g, func(b []byte) error { disk = b; return nil }); err != nil {
		t.Fatal(err)
	}
	if g := l.Pin(); g != 0 {
		t.Fatalf("Pin of a durably pinned Log = %d, want 0", g)
	}
	for i := range 50 {
		l.Mark(int64(i%8)*mib, 1)
		l.Rotate()
	}
	want := []int64{0, 1, 2, 3, 4, 5, 6, 7}
	if got := logRegions(l.Snapshot()); !slices.Equal(got, want) {
		t.Fatalf("pinned Log after 50 rotations has %v, want %v", got, want)
	}
	var back Log
	if err := back.UnmarshalBinary(disk); err != nil || !back.Pinned() {
		t.Fatalf("persisted pin: %v, pinned %v", err, back.Pinned())
	}

	l.Unpin()
	if l.Pinned() {
		t.Fatal("still pinned")
	}
	l.Mark(5*mib, 1)
	l.Rotate()
	if got := logRegions(l.Snapshot()); !slices.Equal(got, []int64{5}) {
		t.Fatalf("first rotation after Unpin left %v, want [5]", got)
	}
	l.Rotate()
	if got := logRegions(l.Snapshot()); len(got) != 0 {
		t.Fatalf("second rotation after Unpin left %v", got)
	}
}

func TestLogSnapshotLayout(t *testing.T) {
	l := newTestLog(t, LogConfig{Size: 20 * 512, RegionSize: 512})
	for _, r := range []int64{0, 9, 19} {
		l.Mark(r*512, 1)
	}
	want := []byte{0b0000_0001, 0b0000_0010, 0b0000_1000}
	if got := l.Snapshot(); !bytes.Equal(got, want) {
		t.Fatalf("Snapshot = %08b, want %08b", got, want)
	}
}

func TestLogMarshalFormat(t *testing.T) {
	clk := newFakeClock()
	l := newTestLog(t, LogConfig{Size: 12 * 512, RegionSize: 512, Clock: clk.Now})
	l.Mark(1*512, 1)
	l.Rotate() // region 1 in history
	l.Mark(10*512, 1)
	l.Pin()
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if len(b) != 40+2*2+4 || string(b[:8]) != "CRLOGBM\x00" || le.Uint16(b[8:]) != 1 || le.Uint16(b[10:]) != 1 ||
		le.Uint64(b[16:]) != 12*512 || le.Uint64(b[24:]) != 512 || int64(le.Uint64(b[32:])) != clk.Now().UnixNano() {
		t.Fatalf("fixed fields wrong: % x", b)
	}
	if !bytes.Equal(b[40:44], []byte{0, 0b100, 0b10, 0}) {
		t.Fatalf("halves % x, want current=00 04 history=02 00", b[40:44])
	}
	if le.Uint32(b[44:]) != crc32.Checksum(b[:44], crc32.MakeTable(crc32.Castagnoli)) {
		t.Fatal("bad crc")
	}
}

func TestLogUnmarshal(t *testing.T) {
	clk := newFakeClock()
	cfg := LogConfig{Size: 100 * mib, RegionSize: mib, Period: 7 * time.Second, Clock: clk.Now}
	l := newTestLog(t, cfg)
	l.Mark(3*mib, 1)
	l.Rotate()
	l.Mark(99*mib, 1)
	l.Mark(64*mib, 1)
	l.Pin()
	b, _ := l.MarshalBinary()

	t.Run("round trip into a zero Log", func(t *testing.T) {
		var back Log
		if err := back.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		b2, _ := back.MarshalBinary()
		if !bytes.Equal(b, b2) {
			t.Fatal("round trip changed the bytes")
		}
		if back.Size() != cfg.Size || back.RegionSize() != mib || back.Period() != time.Minute || !back.Pinned() {
			t.Fatalf("zero Log took size %d region %d period %v pinned %v", back.Size(), back.RegionSize(), back.Period(), back.Pinned())
		}
		if !back.LastRotation().Equal(l.LastRotation()) {
			t.Fatalf("rotation time %v, want %v", back.LastRotation(), l.LastRotation())
		}
		c1, h1 := halves(l)
		c2, h2 := halves(&back)
		if !slices.Equal(c1, c2) || !slices.Equal(h1, h2) {
			t.Fatalf("halves %v/%v, want %v/%v", c2, h2, c1, h1)
		}
		// What was restored is durable: no persist needed to rewrite it.
		if g, flipped := back.Mark(99*mib, 1); g != 0 || flipped {
			t.Fatalf("Mark of a restored bit = %d, %v", g, flipped)
		}
		if g := back.Pin(); g != 0 {
			t.Fatalf("Pin of a restored pinned Log = %d", g)
		}
	})
	t.Run("into a configured Log", func(t *testing.T) {
		l2 := newTestLog(t, cfg)
		if err := l2.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if l2.Period() != 7*time.Second {
			t.Fatal("UnmarshalBinary replaced the configured period")
		}
		if got := logRegions(l2.Snapshot()); !slices.Equal(got, []int64{3, 64, 99}) {
			t.Fatalf("restored regions %v", got)
		}
	})
	t.Run("geometry mismatch", func(t *testing.T) {
		for _, c := range []LogConfig{{Size: 200 * mib, RegionSize: mib}, {Size: 100 * mib, RegionSize: 2 * mib}} {
			l2 := newTestLog(t, c)
			l2.Mark(0, 1)
			err := l2.UnmarshalBinary(b)
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("UnmarshalBinary into %+v = %v, want ErrMismatch", c, err)
			}
			if got := logRegions(l2.Snapshot()); !slices.Equal(got, []int64{0}) {
				t.Fatal("a refused UnmarshalBinary changed the Log")
			}
		}
	})

	sealed := func(patch func(b []byte)) []byte {
		c := bytes.Clone(b)
		patch(c)
		binary.LittleEndian.PutUint32(c[len(c)-4:], crc32.Checksum(c[:len(c)-4], castagnoli))
		return c
	}
	corrupt := []struct {
		name  string
		data  []byte
		err   error
		field string
	}{
		{"empty", nil, ErrCorrupt, "length"},
		{"short", b[:20], ErrCorrupt, "length"},
		{"magic", sealed(func(c []byte) { c[0] = 'x' }), ErrCorrupt, "magic"},
		{"version", sealed(func(c []byte) { c[8] = 9 }), ErrVersion, "version"},
		{"crc", func() []byte { c := bytes.Clone(b); c[45] ^= 0x10; return c }(), ErrCorrupt, "crc"},
		{"flags", sealed(func(c []byte) { c[10] |= 2 }), ErrCorrupt, "flags"},
		{"reserved", sealed(func(c []byte) { c[13] = 1 }), ErrCorrupt, "reserved bytes"},
		{"zero size", sealed(func(c []byte) { clear(c[16:24]) }), ErrCorrupt, "size"},
		{"region size", sealed(func(c []byte) { c[24] = 3 }), ErrCorrupt, "region size"},
		{"length for geometry", sealed(func(c []byte) { c[19] = 0x7f }), ErrCorrupt, "length"},
		{"padding bits", sealed(func(c []byte) { c[40+12] |= 0x80 }), ErrCorrupt, "padding bits"},
	}
	for _, tt := range corrupt {
		t.Run(tt.name, func(t *testing.T) {
			l2 := newTestLog(t, cfg)
			err := l2.UnmarshalBinary(tt.data)
			var he *HeaderError
			if !errors.Is(err, tt.err) || !errors.As(err, &he) || he.Field != tt.field {
				t.Fatalf("UnmarshalBinary = %v, want %v for field %q", err, tt.err, tt.field)
			}
		})
	}
}

func FuzzLogUnmarshal(f *testing.F) {
	for _, c := range []LogConfig{
		{Size: 10 << 30},
		{Size: 12 * 512, RegionSize: 512},
		{Size: 64*512 + 1, RegionSize: 512},
	} {
		l, err := NewLog(c)
		if err != nil {
			f.Fatal(err)
		}
		l.Mark(0, 1)
		l.Rotate()
		l.Mark(c.Size-1, 1)
		l.Pin()
		b, _ := l.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte("CRLOGBM\x00"))
	f.Add(make([]byte, 44))
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(data []byte) {
			var l Log
			if err := l.UnmarshalBinary(data); err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
					t.Fatalf("error %v is neither ErrCorrupt nor ErrVersion", err)
				}
				return
			}
			out, err := l.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, data) {
				t.Fatalf("accepted state does not re-encode to itself:\n% x\n% x", data, out)
			}
			if got := len(l.Snapshot()); int64(got) != (l.Regions()+7)/8 {
				t.Fatalf("Snapshot of %d bytes for %d regions", got, l.Regions())
			}
			l.Mark(0, l.Size())
			l.Rotate()
		}
		check(data)
		if len(data) >= 4 { // and past the CRC, to reach the field checks
			sealed := bytes.Clone(data)
			binary.LittleEndian.PutUint32(sealed[len(sealed)-4:], crc32.Checksum(sealed[:len(sealed)-4], castagnoli))
			check(sealed)
		}
	})
}

// TestLogFineSnapshot: the fine copy records a write at its own
// granularity, forgets it with the LOG's rotations (not while pinned), and
// after a restore stands for the restored LOG regions whole until they
// are rotated out.
func TestLogFineSnapshot(t *testing.T) {
	clk := newFakeClock()
	cfg := LogConfig{Size: 1 << 20, RegionSize: 64 << 10, FineRegion: 4096, Period: time.Minute, Clock: clk.Now}
	l := newTestLog(t, cfg)
	fine := func() []int64 {
		rs, b := l.FineSnapshot()
		if rs != 4096 {
			t.Fatalf("fine region %d, want 4096", rs)
		}
		return logRegions(b)
	}
	l.Mark(70000, 100) // fine region 17, LOG region 1
	if got := fmt.Sprint(fine()); got != "[17]" {
		t.Fatalf("fine regions after one write: %s, want [17]", got)
	}
	l.Rotate()
	if got := fmt.Sprint(fine()); got != "[17]" {
		t.Fatalf("after one rotation: %s, want [17] (in history)", got)
	}
	l.Rotate()
	if got := fine(); len(got) != 0 {
		t.Fatalf("after two rotations: %v, want nothing", got)
	}
	l.Mark(4096*40, 8192) // fine 40 and 41
	l.Pin()
	l.Rotate()
	l.Rotate()
	if got := fmt.Sprint(fine()); got != "[40 41]" {
		t.Fatalf("pinned, after two rotations: %s, want [40 41]", got)
	}

	// A restart: the restored LOG region 2 (fine 32..47) stands whole.
	l = restarted(t, l, cfg)
	if got := fine(); len(got) != 16 || got[0] != 32 || got[15] != 47 {
		t.Fatalf("after a restore: %v, want 32..47", got)
	}
	l.Mark(4096*3, 1) // fine 3, LOG region 0
	if got := fine(); len(got) != 17 || got[0] != 3 {
		t.Fatalf("after a restore and a write: %v, want 3 and 32..47", got)
	}
	l.Unpin()
	l.Rotate()
	l.Rotate()
	if got := fine(); len(got) != 0 {
		t.Fatalf("unpinned, two rotations after the restore: %v, want nothing", got)
	}

	// Without a fine copy (FineRegion not below RegionSize), it is the LOG.
	cfg.FineRegion = 64 << 10
	l = newTestLog(t, cfg)
	l.Mark(70000, 100)
	if rs, b := l.FineSnapshot(); rs != 64<<10 || fmt.Sprint(logRegions(b)) != "[1]" {
		t.Fatalf("no fine copy: region %d, regions %v", rs, logRegions(b))
	}
}

// TestLogFineMatchesCoarse: under random marks, rotations, pins and
// restores, the fine snapshot coarsened to LOG regions is exactly the LOG's
// snapshot: it never misses a region the LOG holds and never claims one it
// does not.
func TestLogFineMatchesCoarse(t *testing.T) {
	clk := newFakeClock()
	cfg := LogConfig{Size: 3<<20 + 12345, RegionSize: 256 << 10, FineRegion: 8192, Period: time.Minute, Clock: clk.Now}
	l := newTestLog(t, cfg)
	rng := rand.New(rand.NewPCG(7, 7))
	for step := range 3000 {
		switch op := rng.IntN(20); {
		case op < 14:
			off := rng.Int64N(cfg.Size)
			l.Mark(off, 1+rng.Int64N(300<<10))
		case op < 17:
			l.Rotate()
		case op == 17:
			l.Pin()
		case op == 18:
			l.Unpin()
		default:
			l = restarted(t, l, cfg)
		}
		rs, fb := l.FineSnapshot()
		per := cfg.RegionSize / rs
		coarse := make([]byte, len(l.Snapshot()))
		for _, f := range logRegions(fb) {
			r := f / per
			coarse[r/8] |= 1 << (r % 8)
		}
		if want := l.Snapshot(); !bytes.Equal(coarse, want) {
			t.Fatalf("step %d: fine coarsened %v, LOG %v", step, logRegions(coarse), logRegions(want))
		}
	}
}

// restarted is l as a chunkserver restart finds it: a new Log of cfg
// restored from l's persisted form.
func restarted(t *testing.T, l *Log, cfg LogConfig) *Log {
	t.Helper()
	state, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	r := newTestLog(t, cfg)
	if err := r.UnmarshalBinary(state); err != nil {
		t.Fatal(err)
	}
	return r
}
