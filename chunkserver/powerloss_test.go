package chunkserver

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// TestPowerLossMidLoad: a real chunkserver serves a chunk over NBD from the
// crashable memory filesystem; four writers pipeline writes of distinct
// blocks on one connection, flushing now and then, and the power fails in
// the middle of the load (the filesystem keeps only what was synced). A new
// chunkserver starts from what survived. Every write that a flush answered
// before the power failed reads back; every other acknowledged write either
// survived or its region is in the chunk's LOG bitmap (pinned after the
// restart), the durable record a host resyncs the member from: a mirror
// whose other member holds every acknowledged write resyncs it from those
// regions alone, after which the two agree byte for byte.
func TestPowerLossMidLoad(t *testing.T) {
	for seed := range uint64(3) {
		t.Run("seed"+string(rune('0'+seed)), func(t *testing.T) { powerLossMidLoad(t, seed) })
	}
}

func powerLossMidLoad(t *testing.T, seed uint64) {
	const block = 4096
	meta := newFakeMeta(t, "c1")
	mem := vfs.NewMem()
	dir := "/data"
	cs := startCS(t, meta, dir, func(c *Config) { c.FS = mem })
	c, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: cs.nbdAddr, Export: exportName("c1", "h1", 1), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	type write struct {
		off  int64
		data []byte
		seq  int64 // order of completion
	}
	var (
		completed atomic.Int64 // writes completed so far
		mu        sync.Mutex
		writes    []write
		flushedTo int64 // every write with seq <= flushedTo is durable; guarded by mu
		crashed   bool  // guarded by mu
		crash     *vfs.MemFS
	)
	// Distinct blocks of the chunk's first half: the LOG should name no
	// region of the second.
	slots := rand.New(rand.NewPCG(seed, 9)).Perm(testChunkSize / 2 / block)
	var next atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)+100))
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := next.Add(1) - 1
				if int(i) >= len(slots) {
					return
				}
				off := int64(slots[i]) * block
				p := bytes.Repeat([]byte{byte(rng.Uint32()) | 1}, block)
				if err := c.WriteAt(t.Context(), p, off, false); err != nil {
					return // the connection ends with the old server
				}
				seq := completed.Add(1)
				mu.Lock()
				if !crashed {
					writes = append(writes, write{off: off, data: p, seq: seq})
				}
				mu.Unlock()
				if rng.IntN(4) == 0 {
					upTo := completed.Load()
					if err := c.Flush(t.Context()); err != nil {
						return
					}
					mu.Lock()
					if !crashed {
						flushedTo = max(flushedTo, upTo)
					}
					mu.Unlock()
				}
			}
		})
	}
	waitFor(t, "the load to get going", func() bool { return completed.Load() >= 200 })
	mu.Lock()
	crashed = true
	crash = mem.CrashClone() // the power fails here
	acked := append([]write(nil), writes...)
	durable := flushedTo
	mu.Unlock()
	close(stop)
	c.Close()
	wg.Wait()
	cs.stop(t)

	cs2 := startCS(t, meta, dir, func(c *Config) { c.FS = crash })
	lb := cs2.logBits(t, "c1", 1)
	if !lb.Pinned {
		t.Fatal("the chunk's LOG is not pinned after the power loss")
	}
	inLog := map[int64]bool{}
	for _, r := range dirty(lb.Bits) {
		inLog[int64(r)] = true
	}
	r, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: cs2.nbdAddr, Export: exportName("c1", "h1", 1), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var flushed, survived, logged int
	got := make([]byte, block)
	for _, w := range acked {
		if err := r.ReadAt(t.Context(), got, w.off); err != nil {
			t.Fatal(err)
		}
		same := bytes.Equal(got, w.data)
		switch {
		case w.seq <= durable:
			flushed++
			if !same {
				t.Errorf("a write at %d answered by a flush before the power failed is lost", w.off)
			}
		case same:
			survived++
		case inLog[w.off/lb.RegionSize]:
			logged++
		default:
			t.Errorf("an acknowledged write at %d is lost and its region %d is not in the LOG", w.off, w.off/lb.RegionSize)
		}
	}
	t.Logf("power failed after %d acknowledged writes: %d answered by a flush read back, %d others survived, %d lost with their region in the LOG (%d regions)",
		len(acked), flushed, survived, logged, len(inLog))
	if flushed == 0 {
		t.Fatal("no write was flushed before the power failed: the test proved nothing")
	}

	// The member returns to its set: a mirror whose other member holds
	// every acknowledged write resyncs it from the durable record, the
	// regions its LOG names, and nothing else.
	survivor := raidtest.NewMemDevice(testChunkSize)
	for _, w := range acked {
		if err := survivor.WriteAt(t.Context(), w.data, w.off, false); err != nil {
			t.Fatal(err)
		}
	}
	wib, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: testChunkSize, RegionSize: lb.RegionSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := wib.Merge(lb.Bits, lb.RegionSize); err != nil {
		t.Fatal(err)
	}
	set, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: []raid.Device{survivor, r}, WIB: wib, Degraded: []int{1}}})
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if err := set.Rejoin(1, r); err != nil {
		t.Fatal(err)
	}
	copied, err := set.Resync(t.Context(), nil)
	if err != nil {
		t.Fatalf("resyncing the returning member: %v", err)
	}
	if want := int64(len(inLog)) * lb.RegionSize; copied != want || copied > testChunkSize/2 {
		t.Errorf("the resync copied %d bytes, the LOG names %d of the %d written to", copied, want, testChunkSize/2)
	}
	whole := make([]byte, testChunkSize)
	if err := r.ReadAt(t.Context(), whole, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(whole, survivor.Bytes()) {
		t.Error("after the resync from its LOG the member differs from the one that holds every acknowledged write")
	}
	t.Logf("the resync from the LOG copied %d bytes; the member now holds all %d acknowledged writes", copied, len(acked))
}
