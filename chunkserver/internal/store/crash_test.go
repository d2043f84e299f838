package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

const memDir = "/data"

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock(t time.Time) *clock { return &clock{now: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// openFS opens a store in memDir on fsys with the test geometry.
func openFS(t *testing.T, fsys vfs.FS, clk func() time.Time) *Store {
	t.Helper()
	if clk == nil {
		clk = func() time.Time { return testEpoch }
	}
	s, err := Open(Config{Dir: memDir, FS: fsys, LogRegion: testRegion, LogPeriod: time.Minute, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func readAll(t *testing.T, fsys vfs.FS, name string) []byte {
	t.Helper()
	b, err := vfs.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func regionSet(c *Chunk, off int64) bool {
	snap := c.Log().Snapshot()
	r := off / c.Log().RegionSize()
	return snap[r/8]&(1<<(r%8)) != 0
}

// TestPowerLossUnderLoad: writers write distinct blocks of a chunk,
// some followed by a flush, while the LOG rotates; then the power fails.
// On the crashed filesystem every flushed write reads back, the region of
// every acknowledged write that was not flushed is still in the LOG (so a
// host resyncs it), and the chunk starts pinned.
func TestPowerLossUnderLoad(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			mem := vfs.NewMem()
			clk := newClock(testEpoch)
			s := openFS(t, mem, clk.Now)
			c, err := s.Create("c1", testSize)
			if err != nil {
				t.Fatal(err)
			}
			const block = 4096
			type write struct {
				off     int64
				data    []byte
				flushed bool
			}
			slots := rand.New(rand.NewPCG(seed, 1)).Perm(testSize / block)
			var (
				mu     sync.Mutex
				writes []write
				next   atomic.Int64
				wg     sync.WaitGroup
			)
			for w := range 4 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(seed, uint64(w)+2))
					for range 40 {
						i := next.Add(1) - 1
						off := int64(slots[i]) * block
						p := bytes.Repeat([]byte{byte(rng.Uint32())}, 100+rng.IntN(block-100))
						if err := c.WriteAt(p, off); err != nil {
							t.Error(err)
							return
						}
						wr := write{off: off, data: p}
						if rng.IntN(3) == 0 {
							if err := c.Sync(); err != nil {
								t.Error(err)
								return
							}
							wr.flushed = true
						}
						mu.Lock()
						writes = append(writes, wr)
						mu.Unlock()
					}
				})
			}
			// Rotations run beside the writers: the LOG forgets what is two
			// periods old, which must by then be durable.
			wg.Go(func() {
				for k := range 6 {
					clk.set(testEpoch.Add(time.Duration(k+1) * time.Minute))
					if err := s.RotateLogs(clk.Now()); err != nil {
						t.Error(err)
					}
				}
			})
			wg.Wait()
			if t.Failed() {
				return
			}

			crashed := mem.CrashClone()
			s2 := openFS(t, crashed, clk.Now)
			c2, err := s2.Get("c1")
			if err != nil {
				t.Fatalf("chunk not served after the power loss: %v (files %v)", err, crashed.Names())
			}
			if !c2.Log().Pinned() {
				t.Fatal("chunk not pinned after the power loss")
			}
			for _, w := range writes {
				got := make([]byte, len(w.data))
				if err := c2.ReadAt(got, w.off); err != nil {
					t.Fatal(err)
				}
				switch {
				case w.flushed && !bytes.Equal(got, w.data):
					t.Errorf("flushed write at %d lost by the power loss", w.off)
				case !w.flushed && !bytes.Equal(got, w.data) && !regionSet(c2, w.off):
					t.Errorf("acknowledged write at %d lost by the power loss and its region %d is not in the LOG",
						w.off, w.off/testRegion)
				}
			}
		})
	}
}

// TestRotationAfterCrashKeepsUnsyncedWrite: a write that was never
// flushed must not be forgotten by the LOG while its data is not durable.
// Two rotations forget its bit; the power then fails. Either the data
// survived or its region is still recorded.
func TestRotationAfterCrashKeepsUnsyncedWrite(t *testing.T) {
	mem := vfs.NewMem()
	clk := newClock(testEpoch)
	s := openFS(t, mem, clk.Now)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	p := []byte("not flushed")
	if err := c.WriteAt(p, 2*testRegion); err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= 2; k++ {
		clk.set(testEpoch.Add(time.Duration(k) * time.Minute))
		if err := s.RotateLogs(clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	crashed := mem.CrashClone()
	s2 := openFS(t, crashed, clk.Now)
	c2, err := s2.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := c2.ReadAt(got, 2*testRegion); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) && !regionSet(c2, 2*testRegion) {
		t.Fatal("the rotation forgot region 2 while its write was not durable; the power loss then lost the write")
	}
}

// TestRotationSyncOnlyWhenDirty: the fdatasync before a forgetting
// rotation is skipped when nothing was written since the last sync, and a
// failed one fails the chunk and keeps the bits.
func TestRotationSyncOnlyWhenDirty(t *testing.T) {
	var syncs atomic.Int64
	var failSync atomic.Bool
	efs := vfs.NewErrorFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op, path string) error {
		if op == vfs.OpSync && len(path) > 6 && path[len(path)-6:] == ".chunk" {
			syncs.Add(1)
			if failSync.Load() {
				return &fs.PathError{Op: "sync", Path: path, Err: syscall.EIO}
			}
		}
		return nil
	}))
	clk := newClock(testEpoch)
	s := openFS(t, efs, clk.Now)
	a, err := s.Create("a", testSize)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Create("b", testSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Chunk{a, b} {
		if err := c.WriteAt([]byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	rotate := func(k int) error {
		clk.set(testEpoch.Add(time.Duration(k) * time.Minute))
		return s.RotateLogs(clk.Now())
	}
	before := syncs.Load()
	if err := rotate(1); err != nil {
		t.Fatal(err)
	}
	if got := syncs.Load() - before; got != 1 {
		t.Fatalf("%d data syncs for the first rotation, want 1 (a is dirty, b was flushed)", got)
	}
	// a is written again (region 1) and its next sync fails.
	if err := a.WriteAt([]byte("x"), testRegion); err != nil {
		t.Fatal(err)
	}
	before = syncs.Load()
	failSync.Store(true)
	err = rotate(2)
	if !errors.Is(err, ErrChunkFailed) {
		t.Fatalf("rotation whose sync failed: %v, want ErrChunkFailed", err)
	}
	if got := syncs.Load() - before; got != 1 {
		t.Fatalf("%d data syncs for the forgetting rotation, want 1 (only a, b is clean)", got)
	}
	if !a.Failed() || !regionSet(a, 0) {
		t.Fatalf("a after a failed sync: failed %v, region 0 kept %v; want failed with the bit kept", a.Failed(), regionSet(a, 0))
	}
	if b.Failed() || regionSet(b, 0) {
		t.Fatalf("b (clean): failed %v, region 0 kept %v; want healthy and forgotten", b.Failed(), regionSet(b, 0))
	}
	// Idle chunks cost nothing: more rotations, no more syncs.
	failSync.Store(false)
	before = syncs.Load()
	for k := 3; k <= 5; k++ {
		if err := rotate(k); err != nil {
			t.Fatal(err)
		}
	}
	if got := syncs.Load() - before; got != 0 {
		t.Fatalf("%d data syncs of idle chunks, want 0", got)
	}
}

// TestRestoredLogMeasuresFromLoad: the first period after a restart is
// measured on the monotonic clock from the time the chunk was loaded, not
// from the persisted wall-clock time of the last rotation.
func TestRestoredLogMeasuresFromLoad(t *testing.T) {
	mem := vfs.NewMem()
	T := time.Minute
	// The rotation time persisted before the restart reads, on the wall
	// clock, more than T before now (the server was down, or the clock
	// was stepped forward).
	s := openFS(t, mem, func() time.Time { return time.Now().Add(-3 * T) })
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openFS(t, mem, time.Now)
	loaded := time.Now()
	c, err = s.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	last := c.Log().LastRotation()
	if err := s.RotateLogs(loaded.Add(T / 2)); err != nil {
		t.Fatal(err)
	}
	if got := c.Log().LastRotation(); !got.Equal(last) {
		t.Fatalf("rotated %v after the restart (last rotation %v → %v); the first period must run T from load",
			T/2, last, got)
	}
}

// TestEIOOnSyncFailsChunkForGood: a failed fdatasync (of the data, the
// sidecar or the intent bitmap) fails the chunk, and the chunk is still
// failed after a restart and after a power loss.
func TestEIOOnSyncFailsChunkForGood(t *testing.T) {
	tests := []struct {
		name string
		inj  func() vfs.Injector
		op   func(s *Store, c *Chunk) error
	}{
		{"data fdatasync", func() vfs.Injector { return vfs.OnNth(vfs.OpSync, ".chunk", 1, syscall.EIO) },
			func(s *Store, c *Chunk) error { return c.Sync() }},
		{"sidecar fsync", func() vfs.Injector { return vfs.OnNth(vfs.OpSync, ".meta.tmp", 1, syscall.EIO) },
			func(s *Store, c *Chunk) error { return c.WriteAt([]byte("y"), 3*testRegion) }},
		{"intent fdatasync", func() vfs.Injector { return vfs.OnNth(vfs.OpSync, ".intent", 1, syscall.EIO) },
			func(s *Store, c *Chunk) error { return s.WriteIntent(c, 4096, make([]byte, 32)) }},
	}
	for _, tt := range tests {
		for _, crash := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/powerloss=%v", tt.name, crash), func(t *testing.T) {
				mem := vfs.NewMem()
				efs := vfs.NewErrorFS(mem, nil)
				s := openFS(t, efs, nil)
				c, err := s.Create("c1", testSize)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.WriteAt([]byte("x"), 0); err != nil {
					t.Fatal(err)
				}
				efs.SetInjector(tt.inj())
				if err := tt.op(s, c); !errors.Is(err, ErrChunkFailed) {
					t.Fatalf("operation with an EIO: %v, want ErrChunkFailed", err)
				}
				efs.SetInjector(nil)
				if err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrChunkFailed) {
					t.Fatalf("read of a failed chunk: %v, want ErrChunkFailed", err)
				}
				if err := c.Sync(); !errors.Is(err, ErrChunkFailed) {
					t.Fatalf("a second sync: %v; a failed sync must never be retried and trusted", err)
				}
				s.Close()
				var next vfs.FS = mem
				if crash {
					next = mem.CrashClone()
				}
				s = openFS(t, next, nil)
				if c, err := s.Get("c1"); err == nil {
					err = c.ReadAt(make([]byte, 1), 0)
					if err == nil {
						t.Fatal("after a restart the failed chunk is served again and reads succeed")
					}
				}
				checkFailedAfterRestart(t, s, "c1")
			})
		}
	}
}

// TestENOSPCOnWrite: a write that finds the disk full without a
// reservation (the store did not know it was nearly full) may have written
// part of its range: it fails with an I/O error, not ENOSPC (which the NBD
// server would send as "nothing changed"); the chunk is not failed, its
// region is in the LOG, and from then on writes reserve first.
func TestENOSPCOnWrite(t *testing.T) {
	efs := vfs.NewErrorFS(vfs.NewMem(), nil)
	s := openFS(t, efs, nil)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	old := []byte("old data")
	if err := c.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	efs.SetInjector(vfs.OnOp(vfs.OpWrite, ".chunk", syscall.ENOSPC))
	if err := c.WriteAt([]byte("new"), 5*testRegion); err == nil || errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full disk with no reservation: %v, want an I/O error", err)
	}
	if !s.space.isLow() {
		t.Fatal("ENOSPC did not make the store reserve before writes")
	}
	efs.SetInjector(nil)
	if c.Failed() {
		t.Fatal("ENOSPC failed the chunk")
	}
	got := make([]byte, len(old))
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("earlier data after ENOSPC: %q %v", got, err)
	}
	if !regionSet(c, 5*testRegion) {
		t.Fatal("the failed write's region is not in the LOG")
	}
	if err := c.WriteAt([]byte("new"), 5*testRegion); err != nil {
		t.Fatalf("write after space came back: %v", err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestENOSPCOnSidecar: a disk too full for the new sidecar refuses a write
// to a region not yet in the LOG with ENOSPC and leaves the chunk sound: the
// old sidecar stands, a write to a region already in the LOG still works,
// and so does the refused one once there is space again; after a restart
// the chunk is served and holds every write that succeeded.
func TestENOSPCOnSidecar(t *testing.T) {
	mem := vfs.NewMem()
	efs := vfs.NewErrorFS(mem, nil)
	s := openFS(t, efs, nil)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt([]byte("old"), 0); err != nil {
		t.Fatal(err)
	}
	efs.SetInjector(vfs.OnOp(vfs.OpWrite, ".meta.tmp", &fs.PathError{Op: "write", Path: "c1.meta.tmp", Err: syscall.ENOSPC}))
	if err := c.WriteAt([]byte("new"), 5*testRegion); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to a new region with no room for the sidecar: %v, want ENOSPC", err)
	}
	if c.Failed() {
		t.Fatal("a sidecar refused for lack of space failed the chunk")
	}
	got := make([]byte, 3)
	if err := c.ReadAt(got, 5*testRegion); err != nil || !bytes.Equal(got, make([]byte, 3)) {
		t.Fatalf("the refused write's range reads %q %v, want zeroes", got, err)
	}
	if err := c.WriteAt([]byte("mid"), 1); err != nil {
		t.Fatalf("write to a region already in the LOG on a full disk: %v", err)
	}
	efs.SetInjector(nil)
	if err := c.WriteAt([]byte("new"), 5*testRegion); err != nil {
		t.Fatalf("write after space came back: %v", err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if !regionSet(c, 0) || !regionSet(c, 5*testRegion) {
		t.Fatal("a written region is missing from the LOG")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openFS(t, mem, nil)
	c2, err := s2.Get("c1")
	if err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	for off, want := range map[int64]string{0: "omid", 5 * testRegion: "new"} {
		got := make([]byte, len(want))
		if err := c2.ReadAt(got, off); err != nil || string(got) != want {
			t.Fatalf("after a restart, %d reads %q %v, want %q", off, got, err, want)
		}
	}
}

// TestNearlyFullReservesFirst: on a nearly full filesystem a write reserves
// its range before it changes anything, so a reservation refused for lack
// of space leaves the chunk, its data and its LOG as they were; a write
// that runs out of space after writing part of its range is reported as
// an I/O error, not as ENOSPC (the host must not take it for "nothing
// changed").
func TestNearlyFullReservesFirst(t *testing.T) {
	var allocs atomic.Int64
	var full atomic.Bool
	efs := vfs.NewErrorFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op, path string) error {
		if op == vfs.OpAllocate {
			allocs.Add(1)
			if full.Load() {
				return &fs.PathError{Op: "fallocate", Path: path, Err: syscall.ENOSPC}
			}
		}
		return nil
	}))
	s := openFS(t, efs, nil)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt([]byte("old"), 0); err != nil {
		t.Fatal(err)
	}
	if allocs.Load() != 0 {
		t.Fatal("a write reserved its range with plenty of space")
	}
	s.space.update(1<<40, 100<<20) // 100 MiB free of 1 TiB
	if !s.space.isLow() {
		t.Fatal("100 MiB free of 1 TiB is not nearly full")
	}
	full.Store(true)
	if err := c.WriteAt([]byte("new"), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write with its reservation refused: %v, want ENOSPC", err)
	}
	if err := c.WriteAt([]byte("new"), 7*testRegion); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write with its reservation refused: %v, want ENOSPC", err)
	}
	if !s.OutOfSpace() {
		t.Fatal("a write refused for lack of space does not show as out of space")
	}
	if allocs.Load() != 2 || c.Failed() {
		t.Fatalf("%d reservations, chunk failed %v", allocs.Load(), c.Failed())
	}
	got := make([]byte, 3)
	if err := c.ReadAt(got, 0); err != nil || string(got) != "old" {
		t.Fatalf("after refused writes: %q %v", got, err)
	}
	if regionSet(c, 7*testRegion) {
		t.Fatal("a write refused before it changed anything marked the LOG")
	}
	full.Store(false)
	if err := c.WriteAt([]byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	s.space.update(1<<40, 1<<39)
	if s.space.isLow() || s.OutOfSpace() {
		t.Fatal("half free is nearly full, or out of space")
	}

	// A partial write: ENOSPC after some bytes.
	c.f = shortWriter{File: c.f}
	err = c.WriteAt([]byte("partial"), 0)
	if err == nil || errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a write that ran out of space half way: %v, want an error that is not ENOSPC", err)
	}
	if !s.space.isLow() {
		t.Fatal("ENOSPC did not make the store reserve before writes")
	}
}

// shortWriter writes the first byte of every write and then reports ENOSPC.
type shortWriter struct{ vfs.File }

func (w shortWriter) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.File.WriteAt(p[:1], off)
	if err != nil {
		return n, err
	}
	return n, syscall.ENOSPC
}

// TestRottedSidecarQuarantined: a sidecar with a rotted byte keeps its
// chunk out of service; the data file is never changed and Create does
// not re-create the chunk over it.
func TestRottedSidecarQuarantined(t *testing.T) {
	tests := []struct {
		name string
		rot  func(t *testing.T, fsys vfs.FS)
	}{
		{"header byte", func(t *testing.T, fsys vfs.FS) { flipByte(t, fsys, memDir+"/c1.meta", 50) }},
		{"LOG state byte", func(t *testing.T, fsys vfs.FS) { flipByte(t, fsys, memDir+"/c1.meta", headerLen+40) }},
		{"truncated sidecar", func(t *testing.T, fsys vfs.FS) { truncateFile(t, fsys, memDir+"/c1.meta", 100) }},
		{"sidecar lost", func(t *testing.T, fsys vfs.FS) {
			if err := fsys.Remove(memDir + "/c1.meta"); err != nil {
				t.Fatal(err)
			}
		}},
		{"data file short", func(t *testing.T, fsys vfs.FS) { truncateFile(t, fsys, memDir+"/c1.chunk", testSize/2) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := vfs.NewMem()
			s := openFS(t, mem, nil)
			c, err := s.Create("c1", testSize)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.WriteAt(bytes.Repeat([]byte("precious"), 512), testRegion); err != nil {
				t.Fatal(err)
			}
			if err := c.Sync(); err != nil {
				t.Fatal(err)
			}
			s.Close()
			tt.rot(t, mem)
			data := readAll(t, mem, memDir+"/c1.chunk")

			s = openFS(t, mem, nil)
			if _, err := s.Get("c1"); err == nil {
				t.Fatal("chunk with a damaged sidecar or data file is served")
			}
			if _, err := s.Create("c1", testSize); err == nil {
				t.Fatal("Create re-created a chunk whose sidecar or data file is damaged")
			}
			if got := readAll(t, mem, memDir+"/c1.chunk"); !bytes.Equal(got, data) {
				t.Fatalf("data file changed: %d bytes, was %d", len(got), len(data))
			}
			checkQuarantined(t, s, "c1")
		})
	}
}

func flipByte(t *testing.T, fsys vfs.FS, name string, off int64) {
	t.Helper()
	f, err := fsys.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func truncateFile(t *testing.T, fsys vfs.FS, name string, size int64) {
	t.Helper()
	f, err := fsys.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// TestSyncWaitsForSyncInProgress: a Sync must not return before the
// writes its caller saw complete are durable, even when another Sync's
// fdatasync is already running. Two writes complete; one caller's Sync
// starts and its fdatasync is held before it reaches the file; the other
// caller syncs meanwhile. When that second Sync returns, a power loss must
// keep both writes.
func TestSyncWaitsForSyncInProgress(t *testing.T) {
	mem := vfs.NewMem()
	hold, held := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	efs := vfs.NewErrorFS(mem, nil)
	s := openFS(t, efs, nil)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	a, b := bytes.Repeat([]byte{0xa}, 4096), bytes.Repeat([]byte{0xb}, 4096)
	if err := c.WriteAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(b, 8192); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	efs.SetInjector(vfs.InjectorFunc(func(op vfs.Op, path string) error {
		if op == vfs.OpSync && strings.HasSuffix(path, "c1"+suffixData) && armed.CompareAndSwap(true, false) {
			close(held)
			<-hold
		}
		return nil
	}))
	firstDone := make(chan error, 1)
	go func() { firstDone <- c.Sync() }()
	<-held // the first fdatasync has started and not yet reached the file

	second := make(chan *vfs.MemFS, 1)
	go func() {
		if err := c.Sync(); err != nil {
			t.Error(err)
		}
		second <- mem.CrashClone() // the power fails the moment it returns
	}()
	var crashed *vfs.MemFS
	select {
	case crashed = <-second:
		close(hold)
	case <-time.After(200 * time.Millisecond): // it waits, as it should
		close(hold)
		crashed = <-second
	}
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	got := readAll(t, crashed, memDir+"/c1"+suffixData)
	if !bytes.Equal(got[8192:8192+4096], b) {
		t.Fatal("a Sync returned while another Sync's fdatasync was in progress, and its caller's write was lost by the power loss")
	}
}

// stallFS holds up the data write of a chunk file while stall is set:
// the write has marked the LOG and not yet written its data.
type stallFS struct {
	vfs.FS
	stall   atomic.Bool
	stalled chan struct{} // receives when a write is held up
	release chan struct{} // closed to let it go on
}

type stallFile struct {
	vfs.File
	fs *stallFS
}

func (s *stallFS) OpenFile(name string, flag int, perm fs.FileMode) (vfs.File, error) {
	f, err := s.FS.OpenFile(name, flag, perm)
	if err != nil || !strings.HasSuffix(name, suffixData) {
		return f, err
	}
	return stallFile{File: f, fs: s}, nil
}

func (f stallFile) WriteAt(p []byte, off int64) (int, error) {
	if f.fs.stall.CompareAndSwap(true, false) {
		f.fs.stalled <- struct{}{}
		<-f.fs.release
	}
	return f.File.WriteAt(p, off)
}

// TestRotationWaitsForStalledWrite: a write marks its LOG bit and is then
// held up before its data reaches the file, while two periods pass. The
// rotations must not forget its bit before its data is durable: after a
// power loss either the data is there or its region is in the LOG.
func TestRotationWaitsForStalledWrite(t *testing.T) {
	mem := vfs.NewMem()
	sfs := &stallFS{FS: mem, stalled: make(chan struct{}), release: make(chan struct{})}
	clk := newClock(testEpoch)
	s := openFS(t, sfs, clk.Now)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x7e}, 4096)
	const off = 5 * testRegion
	sfs.stall.Store(true)
	wrote := make(chan error, 1)
	go func() { wrote <- c.WriteAt(data, off) }()
	<-sfs.stalled
	rotated := make(chan error, 1)
	go func() {
		for k := range 2 {
			clk.set(testEpoch.Add(time.Duration(k+1) * time.Minute))
			if err := s.RotateLogs(clk.Now()); err != nil {
				rotated <- err
				return
			}
		}
		rotated <- nil
	}()
	// Let the rotations run as far as they can while the write is held up.
	select {
	case err := <-rotated:
		t.Logf("two rotations ran while the write was held up (%v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(sfs.release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	crashed := mem.CrashClone()
	s2 := openFS(t, crashed, clk.Now)
	c2, err := s2.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := c2.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) && !regionSet(c2, off) {
		t.Fatal("an acknowledged write held up across two rotations was lost by the power loss and its region is not in the LOG")
	}
}
