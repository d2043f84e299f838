package hostd

import (
	"bytes"
	"strings"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// replaced is testVolume(2) with member 1 replaced by chunk id, recorded
// rebuilding at generation gen.
func replaced(id string, gen int64) api.Volume {
	v := testVolume(2)
	v.CleanDetach = true
	name := api.ExportName{Chunk: id, Host: "h1", Epoch: 2, Token: "t"}
	v.Sets[0].Members[1] = api.Member{ChunkID: id, Chunkserver: "cs" + id, Addr: "nbd-" + id, ControlAddr: "ctl-" + id,
		Export: name.String(), State: api.MemberRebuilding, StateGen: gen, Error: "replaces chunk c1"}
	return v
}

// TestRebuildOntoNewChunk: the metaserver replaced member 1 (chunk c1) by
// a new chunk c2, recorded rebuilding. The host attaches the new placement
// and rebuilds c2 from c0: every allocated extent is copied and the holes
// are not, c2 is reported rebuilding until the rebuild completes and in
// sync afterwards, and a write made meanwhile is on both copies.
func TestRebuildOntoNewChunk(t *testing.T) {
	c := newFakeCluster(t, 3)
	s := newTestServer(t, c)
	a := attachClean(t, s)
	waitFor(t, "both members in sync", func() bool { return allInSync(a) })
	data := fill(256<<10, 9)
	if err := a.volume.WriteAt(t.Context(), data, 3<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := a.volume.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := len(c.eventList())
	if !s.apply(t.Context(), []api.Volume{replaced("c2", 9)}) {
		t.Fatal("apply failed")
	}
	b := s.attached("vol")
	if b == nil || b == a {
		t.Fatal("the new placement was not attached")
	}
	more := fill(64<<10, 77)
	if err := b.volume.WriteAt(t.Context(), more, 7<<20, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rebuild to complete and be reported", func() bool {
		r := c.meta.reportList()
		return allInSync(b) && len(r) > 0 && reportText(r[len(r)-1].VolumeReport) == "c0=in_sync c2=in_sync"
	})
	c0, c2 := c.chunk("c0").data.Bytes(), c.chunk("c2").data.Bytes()
	if !bytes.Equal(c2[3<<20:3<<20+len(data)], data) || !bytes.Equal(c2[7<<20:7<<20+len(more)], more) {
		t.Fatal("the new chunk misses data written before or during the rebuild")
	}
	if !bytes.Equal(c0, c2) {
		t.Fatal("the copies differ after the rebuild")
	}
	sawRebuilding := false
	for _, r := range c.meta.reportList() {
		if strings.Contains(reportText(r.VolumeReport), "c2=rebuilding") {
			sawRebuilding = true
		}
		if strings.Contains(reportText(r.VolumeReport), "c2=degraded") || strings.Contains(reportText(r.VolumeReport), "c2=resyncing") {
			t.Errorf("the new chunk was reported as a copy that merely missed writes: %s", reportText(r.VolumeReport))
		}
	}
	if !sawRebuilding {
		t.Error("never reported rebuilding")
	}
	if b.setList()[0].members[1].rebuild.Load() {
		t.Error("still flagged rebuilding once in sync")
	}
	t.Logf("after the replacement: %s", strings.Join(c.eventList()[before:], ", "))
}

// TestRebuildCopiesOnlyAllocated: a rebuild copies the regions where the
// source has data and skips its holes.
func TestRebuildCopiesOnlyAllocated(t *testing.T) {
	c := newFakeCluster(t, 3)
	seed(t, c, "c0", 1<<20, fill(128<<10, 5))
	s := newTestServer(t, c)
	if err := s.attach(t.Context(), replaced("c2", 4)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	waitFor(t, "the rebuild", func() bool { return allInSync(a) })
	if !bytes.Equal(c.chunk("c2").data.Bytes()[1<<20:1<<20+128<<10], fill(128<<10, 5)) {
		t.Fatal("the rebuild did not copy the source's data")
	}
	a.setList()[0].mu.Lock()
	copied := a.setList()[0].mu.resyncDone
	a.setList()[0].mu.Unlock()
	if copied <= 0 || copied >= testChunkSize/2 {
		t.Errorf("the rebuild copied %d bytes of a %d-byte chunk holding 128 KiB", copied, testChunkSize)
	}
	t.Logf("rebuild copied %d bytes of a %d-byte chunk holding 128 KiB (WIB region %d)", copied, testChunkSize, a.setList()[0].wib.RegionSize())
}

// TestRebuildResumesFromWatermark: a host that takes a rebuild over begins
// at the recorded watermark: what lies below it is not copied again (it is
// on the new chunk already), what lies above is; its reports carry the
// watermark, which only grows.
func TestRebuildResumesFromWatermark(t *testing.T) {
	c := newFakeCluster(t, 3)
	low, high := fill(64<<10, 21), fill(64<<10, 42)
	seed(t, c, "c0", 1<<20, low)
	seed(t, c, "c0", 5<<20, high)
	s := newTestServer(t, c)
	v := replaced("c2", 4)
	v.Sets[0].Members[1].RebuildWatermark = 4 << 20
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	waitFor(t, "the rebuild", func() bool {
		r := c.meta.reportList()
		return allInSync(a) && len(r) > 0 && reportText(r[len(r)-1].VolumeReport) == "c0=in_sync c2=in_sync"
	})
	c2 := c.chunk("c2").data.Bytes()
	if !bytes.Equal(c2[5<<20:5<<20+len(high)], high) {
		t.Fatal("the part above the watermark was not rebuilt")
	}
	if !bytes.Equal(c2[1<<20:1<<20+len(low)], make([]byte, len(low))) {
		t.Fatal("the part below the watermark was copied again")
	}
	var marks []int64
	for _, r := range c.meta.reportList() {
		if m := r.VolumeReport.Sets[0].Members[1]; m.State == api.MemberRebuilding {
			if n := len(marks); n > 0 && m.RebuildWatermark < marks[n-1] {
				t.Errorf("the watermark went back: %v then %d", marks, m.RebuildWatermark)
			}
			marks = append(marks, m.RebuildWatermark)
		}
	}
	if len(marks) == 0 || marks[0] < 4<<20 {
		t.Errorf("rebuilding reports' watermarks %v, want them from 4 MiB on", marks)
	}
	t.Logf("watermarks reported while rebuilding: %v", marks)
}

// TestRebuildCarriesSnapshots: a member rebuilt onto a new chunk gets the
// volume's two snapshots before it joins the set: afterwards each of the
// new chunk's snapshots holds what the surviving member's does, and its
// live bytes are the survivor's, with writes after each snapshot
// overlapping the ones before and one region written before the first
// snapshot and trimmed since.
func TestRebuildCarriesSnapshots(t *testing.T) {
	c := newFakeCluster(t, 3)
	s := newTestServer(t, c)
	a := attachClean(t, s)
	waitFor(t, "both members in sync", func() bool { return allInSync(a) })
	ctx := t.Context()
	write := func(seed byte, off int64, n int) {
		t.Helper()
		if err := a.volume.WriteAt(ctx, fill(n, seed), off, false); err != nil {
			t.Fatal(err)
		}
	}
	write(1, 1<<20, 512<<10)
	write(2, 6<<20, 128<<10)
	if _, err := a.snapshotOp(ctx, "s1", true); err != nil {
		t.Fatal(err)
	}
	write(3, 1<<20+100<<10, 64<<10)
	write(4, 3<<20, 256<<10)
	if _, err := a.snapshotOp(ctx, "s2", true); err != nil {
		t.Fatal(err)
	}
	write(5, 3<<20+4<<10, 8<<10)
	if err := a.volume.Trim(ctx, 6<<20, 128<<10); err != nil {
		t.Fatal(err)
	}
	if err := a.volume.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	v := replaced("c2", 9)
	v.Snapshots = []api.Snapshot{{Name: "s1", State: api.SnapshotReady}, {Name: "s2", State: api.SnapshotReady}}
	c.meta.mu.Lock()
	c.meta.volumes = func() []api.Volume { return []api.Volume{v} }
	c.meta.mu.Unlock()
	if !s.apply(ctx, []api.Volume{v}) {
		t.Fatal("apply failed")
	}
	b := s.attached("vol")
	waitFor(t, "the rebuild to complete", func() bool { return b != nil && allInSync(b) })
	c0, c2 := c.chunk("c0"), c.chunk("c2")
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, name := range []string{"s1", "s2"} {
		if c2.snaps[name] == nil || !bytes.Equal(c2.snaps[name], c0.snaps[name]) {
			t.Errorf("snapshot %s of the rebuilt chunk differs from the survivor's", name)
		}
	}
	if !bytes.Equal(c0.data.Bytes(), c2.data.Bytes()) {
		t.Error("the live copies differ after the rebuild")
	}
}
