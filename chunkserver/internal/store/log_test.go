package store

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

const (
	testSize   = 1 << 20
	testRegion = 64 << 10
)

var testEpoch = time.Unix(1_800_000_000, 0)

// sidecarSpy wraps WriteFileAtomic: it counts sidecar writes, runs a check
// before each and can be told to fail.
type sidecarSpy struct {
	writes atomic.Int64
	fail   atomic.Bool
	mu     sync.Mutex
	before func() // runs before each write, under mu
}

func (s *sidecarSpy) write(path string, data []byte) error {
	s.mu.Lock()
	if s.before != nil {
		s.before()
	}
	s.mu.Unlock()
	if s.fail.Load() {
		return errors.New("injected sidecar write failure")
	}
	s.writes.Add(1)
	return WriteFileAtomic(vfs.OS{}, path, data)
}

func (s *sidecarSpy) setBefore(f func()) {
	s.mu.Lock()
	s.before = f
	s.mu.Unlock()
}

func openTest(t *testing.T, dir string, spy *sidecarSpy) *Store {
	t.Helper()
	cfg := Config{Dir: dir, LogRegion: testRegion, LogPeriod: time.Minute, Clock: func() time.Time { return testEpoch }}
	if spy != nil {
		cfg.WriteSidecar = spy.write
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// readSidecar decodes the chunk's sidecar on disk and its LOG state.
func readSidecar(t *testing.T, s *Store, id string) (Header, *bitmap.Log) {
	t.Helper()
	b, err := os.ReadFile(s.metaPath(id))
	if err != nil {
		t.Fatal(err)
	}
	var h Header
	if err := h.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	var l bitmap.Log
	if h.Log != nil {
		if err := l.UnmarshalBinary(h.Log); err != nil {
			t.Fatal(err)
		}
	}
	return h, &l
}

// regions lists the set bits of a LOG snapshot.
func regions(snap []byte) []int {
	var out []int
	for i := range len(snap) * 8 {
		if snap[i/8]&(1<<(i%8)) != 0 {
			out = append(out, i)
		}
	}
	return out
}

func fileBytes(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLogPersistedBeforeData checks the durability order: when a write,
// trim or write-zeroes flips a LOG bit, the sidecar is rewritten before the
// data changes, and not again for the same region in the same period.
func TestLogPersistedBeforeData(t *testing.T) {
	spy := &sidecarSpy{}
	s := openTest(t, t.TempDir(), spy)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	data := s.dataPath("c1")
	base := spy.writes.Load() // the sidecar written by Create

	// Before each sidecar write, the bytes the operation will change must
	// still hold their old contents, and the region must be marked in the
	// state being written.
	var wantOld []byte
	var at int64
	checks := 0
	spy.setBefore(func() {
		checks++
		if got := fileBytes(t, data, at, int64(len(wantOld))); !bytes.Equal(got, wantOld) {
			t.Errorf("data at %d changed before its LOG bit was persisted", at)
		}
	})

	steps := []struct {
		name         string
		off          int64
		old          []byte
		op           func() error
		wantPersists int64
	}{
		{"write flips region 0", 100, make([]byte, 4), func() error { return c.WriteAt([]byte("abcd"), 100) }, 1},
		{"second write to region 0", 200, nil, func() error { return c.WriteAt([]byte("efgh"), 200) }, 0},
		{"write spanning regions 0 and 1", testRegion - 2, make([]byte, 4), func() error { return c.WriteAt([]byte("wxyz"), testRegion-2) }, 1},
		{"write inside region 1", testRegion + 10, nil, func() error { return c.WriteAt([]byte("1"), testRegion+10) }, 0},
		{"trim flips region 2", 2 * testRegion, []byte("keep"), func() error { return c.Trim(2*testRegion, testRegion) }, 1},
		{"write zeroes flips region 3", 3 * testRegion, []byte("kept"), func() error { return c.WriteZeroes(3*testRegion, 4096, true) }, 1},
		{"trim of region 2 again", 2 * testRegion, nil, func() error { return c.Trim(2*testRegion, 4096) }, 0},
	}
	for _, st := range steps {
		if st.old != nil && !bytes.Equal(st.old, make([]byte, len(st.old))) {
			// Put bytes in the file behind the store's back, so that the
			// check can see whether the operation touched them too early.
			f, err := os.OpenFile(data, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(st.old, st.off); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		wantOld, at = st.old, st.off
		before := spy.writes.Load()
		if err := st.op(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := spy.writes.Load() - before; got != st.wantPersists {
			t.Fatalf("%s: %d sidecar writes, want %d", st.name, got, st.wantPersists)
		}
	}
	if checks != int(spy.writes.Load()-base) {
		t.Fatalf("%d checks for %d sidecar writes", checks, spy.writes.Load()-base)
	}
	_, l := readSidecar(t, s, "c1")
	if got := regions(l.Snapshot()); !equalInts(got, []int{0, 1, 2, 3}) {
		t.Fatalf("persisted LOG regions %v, want [0 1 2 3]", got)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLogGroupCommit: concurrent writes to one fresh region share one
// sidecar write, and none of them reaches the data before it is done.
func TestLogGroupCommit(t *testing.T) {
	spy := &sidecarSpy{}
	s := openTest(t, t.TempDir(), spy)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	data := s.dataPath("c1")
	base := spy.writes.Load()
	spy.setBefore(func() {
		time.Sleep(20 * time.Millisecond) // let the other writers pile up
		if got := fileBytes(t, data, 5*testRegion, 16*512); !bytes.Equal(got, make([]byte, len(got))) {
			t.Error("a write reached the data before the LOG bit was durable")
		}
	})
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if err := c.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 512), 5*testRegion+int64(i)*512); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := spy.writes.Load() - base; got != 1 {
		t.Fatalf("%d sidecar writes for 16 concurrent writes to one region, want 1", got)
	}
}

// TestPersistFailureFailsChunk: a failed sidecar write fails the chunk:
// the write that needed it does not reach the data, and every later call
// errors.
func TestPersistFailureFailsChunk(t *testing.T) {
	spy := &sidecarSpy{}
	s := openTest(t, t.TempDir(), spy)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt([]byte("ok"), 0); err != nil {
		t.Fatal(err)
	}
	spy.fail.Store(true)
	if err := c.WriteAt([]byte("lost"), testRegion); !errors.Is(err, ErrChunkFailed) {
		t.Fatalf("write needing a failed persist: %v, want ErrChunkFailed", err)
	}
	if got := fileBytes(t, s.dataPath("c1"), testRegion, 4); !bytes.Equal(got, make([]byte, 4)) {
		t.Fatalf("data %q written although its LOG bit was not persisted", got)
	}
	if !c.Failed() {
		t.Fatal("chunk not failed")
	}
	spy.fail.Store(false)
	buf := make([]byte, 2)
	ops := map[string]func() error{
		"read":               func() error { return c.ReadAt(buf, 0) },
		"write, same region": func() error { return c.WriteAt([]byte("x"), 1) },
		"write, new region":  func() error { return c.WriteAt([]byte("x"), 3*testRegion) },
		"sync":               c.Sync,
		"trim":               func() error { return c.Trim(0, 4096) },
		"write zeroes":       func() error { return c.WriteZeroes(0, 4096, false) },
		"pin":                func() error { return c.Pin(t.Context()) },
		"raise min epoch":    func() error { _, err := c.RaiseMinEpoch(9); return err },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, ErrChunkFailed) {
			t.Errorf("%s after failure: %v, want ErrChunkFailed", name, err)
		}
	}
}

// TestRaiseMinEpoch: the minimum epoch only grows, is persisted before the
// call returns and survives a restart; a failed write leaves it unchanged
// and fails the chunk.
func TestRaiseMinEpoch(t *testing.T) {
	dir := t.TempDir()
	spy := &sidecarSpy{}
	s := openTest(t, dir, spy)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt([]byte("a"), 0); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ raise, want int64 }{{5, 5}, {3, 5}, {5, 5}, {6, 6}} {
		got, err := c.RaiseMinEpoch(tt.raise)
		if err != nil || got != tt.want || c.MinEpoch() != tt.want {
			t.Fatalf("RaiseMinEpoch(%d) = %d, %v; MinEpoch %d; want %d", tt.raise, got, err, c.MinEpoch(), tt.want)
		}
		if h, l := readSidecar(t, s, "c1"); h.MinEpoch != tt.want || !equalInts(regions(l.Snapshot()), []int{0}) {
			t.Fatalf("sidecar min epoch %d regions %v after raising to %d", h.MinEpoch, regions(l.Snapshot()), tt.raise)
		}
	}
	spy.fail.Store(true)
	if got, err := c.RaiseMinEpoch(7); !errors.Is(err, ErrChunkFailed) || got != 6 || c.MinEpoch() != 6 {
		t.Fatalf("failing RaiseMinEpoch(7) = %d, %v; MinEpoch %d", got, err, c.MinEpoch())
	}
	s.Close()
	// The failed chunk stays failed (quarantined) after a restart; its
	// sidecar keeps the last epoch that was persisted.
	s = openTest(t, dir, nil)
	if _, err := s.Get("c1"); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("failed chunk after restart: %v, want ErrQuarantined", err)
	}
	if h, _ := readSidecar(t, s, "c1"); h.MinEpoch != 6 {
		t.Fatalf("after restart min epoch %d, want 6", h.MinEpoch)
	}
}

// TestRotationAndPinning: an unpinned LOG forgets a write two periods
// after it (and the sidecar follows); a pinned one never does; a restart
// pins every chunk; Unpin lets it forget again.
func TestRotationAndPinning(t *testing.T) {
	dir := t.TempDir()
	spy := &sidecarSpy{}
	s := openTest(t, dir, spy)
	a, err := s.Create("a", testSize)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create("b", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if a.Log().Pinned() || b.Log().Pinned() {
		t.Fatal("a new chunk starts pinned")
	}
	if err := b.Pin(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, l := readSidecar(t, s, "b"); !l.Pinned() {
		t.Fatal("pin not persisted")
	}
	for _, c := range []*Chunk{a, b} {
		if err := c.WriteAt([]byte("x"), 2*testRegion); err != nil {
			t.Fatal(err)
		}
	}
	T := time.Minute
	rotate := func(at time.Time) {
		t.Helper()
		if err := s.RotateLogs(at); err != nil {
			t.Fatal(err)
		}
	}
	rotate(testEpoch.Add(T / 2)) // too early: no rotation
	rotate(testEpoch.Add(T))
	if got := regions(a.Log().Snapshot()); !equalInts(got, []int{2}) {
		t.Fatalf("after one period: %v, want [2] (in history)", got)
	}
	writes := spy.writes.Load()
	rotate(testEpoch.Add(2 * T))
	if got := regions(a.Log().Snapshot()); got != nil {
		t.Fatalf("unpinned LOG after two periods: %v, want empty", got)
	}
	if got := regions(b.Log().Snapshot()); !equalInts(got, []int{2}) {
		t.Fatalf("pinned LOG after two periods: %v, want [2]", got)
	}
	if spy.writes.Load() != writes+1 {
		t.Fatalf("%d sidecar writes for the rotation that forgot a bit, want 1", spy.writes.Load()-writes)
	}
	if _, l := readSidecar(t, s, "a"); regions(l.Snapshot()) != nil {
		t.Fatal("sidecar of a still holds a forgotten bit")
	}
	if err := a.WriteAt([]byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart: every chunk comes back pinned with its bits.
	s = openTest(t, dir, nil)
	a, _ = s.Get("a")
	b, _ = s.Get("b")
	if a == nil || b == nil {
		t.Fatal("chunks not served after restart")
	}
	for name, tt := range map[string]struct {
		c    *Chunk
		want []int
	}{"a": {a, []int{0}}, "b": {b, []int{2}}} {
		if !tt.c.Log().Pinned() || !equalInts(regions(tt.c.Log().Snapshot()), tt.want) {
			t.Fatalf("%s after restart: pinned %v regions %v, want pinned %v", name, tt.c.Log().Pinned(),
				regions(tt.c.Log().Snapshot()), tt.want)
		}
	}
	last := a.Log().LastRotation()
	rotate(last.Add(T))
	rotate(last.Add(2 * T))
	rotate(last.Add(3 * T))
	if got := regions(a.Log().Snapshot()); !equalInts(got, []int{0}) {
		t.Fatalf("pinned after restart, three periods: %v, want [0]", got)
	}
	if err := a.Unpin(); err != nil {
		t.Fatal(err)
	}
	rotate(last.Add(4 * T))
	rotate(last.Add(5 * T))
	if got := regions(a.Log().Snapshot()); got != nil {
		t.Fatalf("unpinned, two periods: %v, want empty", got)
	}
	if got := regions(b.Log().Snapshot()); !equalInts(got, []int{2}) {
		t.Fatalf("b still pinned: %v, want [2]", got)
	}
}

// TestUpgradeVersion1: a chunk with a version-1 sidecar is served with an
// empty, pinned LOG and its epoch, and the sidecar is rewritten as
// version 2.
func TestUpgradeVersion1(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, nil)
	if err := os.WriteFile(s.metaPath("old"), v1Sidecar("old", testSize, 4, 77), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.dataPath("old"), make([]byte, testSize), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTest(t, dir, nil)
	c, err := s.Get("old")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Log().Pinned() || regions(c.Log().Snapshot()) != nil || c.MinEpoch() != 4 || c.Log().RegionSize() != testRegion {
		t.Fatalf("upgraded chunk: pinned %v regions %v min epoch %d region %d", c.Log().Pinned(),
			regions(c.Log().Snapshot()), c.MinEpoch(), c.Log().RegionSize())
	}
	h, l := readSidecar(t, s, "old")
	if h.Version != headerVersion || h.MinEpoch != 4 || h.Created != 77 || !l.Pinned() || l.Size() != testSize {
		t.Fatalf("rewritten sidecar %+v, LOG pinned %v size %d", h, l.Pinned(), l.Size())
	}
	if err := c.WriteAt([]byte("z"), testRegion); err != nil {
		t.Fatal(err)
	}
	if _, l := readSidecar(t, s, "old"); !equalInts(regions(l.Snapshot()), []int{1}) {
		t.Fatalf("LOG after a write: %v", regions(l.Snapshot()))
	}
}

// TestCorruptSidecarRefused: a sidecar whose LOG state or header is damaged
// keeps its chunk out of service; the data file stays.
func TestCorruptSidecarRefused(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, nil)
	for _, id := range []string{"loglen", "logbits", "good"} {
		c, err := s.Create(id, testSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteAt([]byte("d"), 0); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	damage := func(id string, f func(b []byte) []byte) {
		b, err := os.ReadFile(s.metaPath(id))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.metaPath(id), f(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	damage("loglen", func(b []byte) []byte { return b[:len(b)-3] })
	damage("logbits", func(b []byte) []byte { b[headerLen+40] ^= 1; return b })
	s = openTest(t, dir, nil)
	if got := s.List(); len(got) != 1 || got[0] != "good" {
		t.Fatalf("served %v, want only good", got)
	}
	for _, id := range []string{"loglen", "logbits"} {
		if _, err := os.Stat(s.dataPath(id)); err != nil {
			t.Fatalf("data of %s removed: %v", id, err)
		}
	}
}

// TestDeleteDuringPersist: a sidecar write that races with Delete cannot
// bring the sidecar back.
func TestDeleteDuringPersist(t *testing.T) {
	spy := &sidecarSpy{}
	s := openTest(t, t.TempDir(), spy)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	release := make(chan struct{})
	spy.setBefore(func() {
		close(entered)
		<-release
	})
	done := make(chan error, 1)
	go func() { done <- c.WriteAt([]byte("w"), 0) }()
	<-entered
	deleted := make(chan error, 1)
	go func() { deleted <- s.Delete("c1") }()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	<-done
	if _, err := os.Stat(s.metaPath("c1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sidecar after delete: %v", err)
	}
	if _, err := c.RaiseMinEpoch(3); err == nil {
		t.Fatal("sidecar write on a deleted chunk succeeded")
	}
	if _, err := os.Stat(s.metaPath("c1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sidecar came back: %v", err)
	}
}
