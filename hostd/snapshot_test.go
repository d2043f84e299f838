package hostd

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestSnapshotQuiesces: a snapshot taken while writes stream in finds both
// members of the mirror holding the same bytes, with one call per
// chunkserver; the writes acknowledged before it are in it; writes go on
// after it; a degraded volume refuses one.
func TestSnapshotQuiesces(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	ctx := t.Context()
	acked := fill(64<<10, 3)
	if err := a.lu.WriteAt(ctx, acked, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		written atomic.Int64
	)
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; !stop.Load(); i++ {
				off := rng.Int64N(testChunkSize/4096-16) * 4096
				if off >= 1<<20 && off < 1<<20+64<<10 {
					continue
				}
				if err := a.lu.WriteAt(ctx, fill(4096, byte(i)), off, false); err != nil {
					t.Error(err)
					return
				}
				written.Add(1)
			}
		})
	}
	for written.Load() < 200 {
		if t.Failed() {
			t.FailNow()
		}
	}
	pause, err := a.takeSnapshot(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	after := written.Load()
	waitFor(t, "writes after the snapshot", func() bool { return written.Load() > after+100 })
	stop.Store(true)
	wg.Wait()
	t.Logf("the volume was held %s; %d writes in all", pause, written.Load())

	c.mu.Lock()
	s0, s1 := c.chunks["c0"].snaps["s1"], c.chunks["c1"].snaps["s1"]
	calls := c.snapshotCalls
	c.mu.Unlock()
	if s0 == nil || s1 == nil {
		t.Fatal("a member has no snapshot")
	}
	if !bytes.Equal(s0, s1) {
		t.Fatal("the members' snapshots differ: writes ran while they were taken")
	}
	if !bytes.Equal(s0[1<<20:1<<20+len(acked)], acked) {
		t.Fatal("a write acknowledged before the snapshot is not in it")
	}
	if calls["ctl-c0"] != 1 || calls["ctl-c1"] != 1 {
		t.Errorf("snapshot calls by chunkserver: %v, want one each", calls)
	}
	if _, err := a.takeSnapshot(ctx, "bad name"); err == nil {
		t.Error("a bad name was taken")
	}

	c.setDown("c1", true)
	waitFor(t, "member 1 to fail", func() bool { return a.setList()[0].mirror.Degraded() })
	if _, err := a.takeSnapshot(ctx, "s2"); !errors.Is(err, errSnapshotDegraded) {
		t.Fatalf("a snapshot of a degraded volume: %v, want errSnapshotDegraded", err)
	}
}
