package hostd

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
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
				// Each writer has blocks of its own: concurrent writes to one
				// block may land in either order on each member.
				off := (rng.Int64N(testChunkSize/4096/4-4)*4 + int64(w)) * 4096
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
		i := 0
		for s0[i] == s1[i] {
			i++
		}
		live0, live1 := c.chunk("c0").data.Bytes(), c.chunk("c1").data.Bytes()
		t.Fatalf("the members' snapshots differ at %d (block %d): %#x and %#x; now the members hold %#x and %#x",
			i, i/4096, s0[i], s1[i], live0[i], live1[i])
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

// TestSnapshotsFromAssignment: a pending snapshot in the volume's
// assignment is taken once however often the assignment repeats it, and
// reported with its pause; a deleting one is deleted and reported.
func TestSnapshotsFromAssignment(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	v := testVolume(2)
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	meta := c.meta
	reports := func() []api.SnapshotReport {
		meta.mu.Lock()
		defer meta.mu.Unlock()
		return append([]api.SnapshotReport(nil), meta.snapReports...)
	}
	v.Snapshots = []api.Snapshot{{Name: "s1", Volume: "vol", State: api.SnapshotPending}}
	a.applySnapshots(v)
	a.applySnapshots(v)
	waitFor(t, "the snapshot report", func() bool { return len(reports()) > 0 })
	// The assignment may still show it pending until the metaserver has
	// applied the report: it is not taken again.
	a.applySnapshots(v)
	time.Sleep(50 * time.Millisecond)
	r := reports()
	if len(r) != 1 || r[0].Op != api.SnapshotOpCreate || r[0].Error != "" || r[0].Name != "s1" || r[0].Epoch != v.Epoch || r[0].PauseMicros <= 0 {
		t.Fatalf("reports %+v, want one successful create with its pause", r)
	}
	c.mu.Lock()
	calls := c.snapshotCalls["ctl-c0"]
	_, has := c.chunks["c1"].snaps["s1"]
	c.mu.Unlock()
	if calls != 1 || !has {
		t.Fatalf("%d snapshot calls to c0's chunkserver, c1 has it: %v", calls, has)
	}
	v.Snapshots[0].State = api.SnapshotDeleting
	a.applySnapshots(v)
	waitFor(t, "the delete report", func() bool { return len(reports()) == 2 })
	if r := reports()[1]; r.Op != api.SnapshotOpDelete || r.Error != "" {
		t.Fatalf("delete report %+v", r)
	}
	c.mu.Lock()
	_, has = c.chunks["c0"].snaps["s1"]
	c.mu.Unlock()
	if has {
		t.Fatal("the snapshot is still on c0")
	}
}
