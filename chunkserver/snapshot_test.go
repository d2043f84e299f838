package chunkserver

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestSnapshotControlAndExport: a snapshot taken through the control API
// (one call for the chunks of the server) reads back over NBD through its
// own read-only export name while the chunk moves on; the call may be
// repeated; the snapshot lists, and once deleted is gone; bad names and
// credentials are refused.
func TestSnapshotControlAndExport(t *testing.T) {
	meta := newFakeMeta(t, "c1", "c2")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	live := cs.dial(t, exportName("c1", "h1", 1), nil)
	before := bytes.Repeat([]byte("before the snapshot "), 10000)
	if err := live.WriteAt(ctx, before, 4096, false); err != nil {
		t.Fatal(err)
	}
	req := api.SnapshotRequest{Name: "s1", Chunks: []api.ChunkPin{
		{Chunk: "c1", ControlRequest: cred("c1", "h1", 1)}, {Chunk: "c2", ControlRequest: cred("c2", "h1", 1)}}}
	resp, err := cs.ctl.Snapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the chunkserver took %d µs for a snapshot of 2 chunks", resp.TookMicros)
	if _, err := cs.ctl.Snapshot(ctx, req); err != nil {
		t.Fatalf("repeating the call: %v", err)
	}
	after := bytes.Repeat([]byte("AFTER"), 40000)
	if err := live.WriteAt(ctx, after, 0, true); err != nil {
		t.Fatal(err)
	}

	snapName := api.ExportName{Chunk: "c1", Host: "h1", Epoch: 1, ReadOnly: true, Snapshot: "s1",
		Token: api.SnapshotExportToken(testSecret, "c1", "h1", 1, "s1")}.String()
	snap := cs.dial(t, snapName, nil)
	got := make([]byte, len(before))
	if err := snap.ReadAt(ctx, got, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, before) {
		t.Fatal("the snapshot export reads other bytes than were there when it was taken")
	}
	if err := live.ReadAt(ctx, got, 4096); err != nil || bytes.Equal(got, before) {
		t.Fatalf("the chunk reads the old bytes (%v)", err)
	}
	if err := snap.WriteAt(ctx, []byte("x"), 0, false); err == nil {
		t.Fatal("a write through the snapshot's export succeeded")
	}
	list, err := cs.ctl.Snapshots(ctx, "c1", cred("c1", "h1", 1))
	if err != nil || len(list.Snapshots) != 1 || list.Snapshots[0].Name != "s1" {
		t.Fatalf("list: %+v, %v", list, err)
	}

	for name, bad := range map[string]api.SnapshotRequest{
		"bad name":  {Name: "no spaces", Chunks: req.Chunks},
		"no chunks": {Name: "s2"},
		"bad token": {Name: "s2", Chunks: []api.ChunkPin{{Chunk: "c1", ControlRequest: cred("c1", "h2", 1)}}},
	} {
		bad.Chunks = append([]api.ChunkPin(nil), bad.Chunks...)
		if name == "bad token" {
			bad.Chunks[0].Token = cred("c1", "h1", 1).Token
		}
		if _, err := cs.ctl.Snapshot(ctx, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	nope := api.ExportName{Chunk: "c1", Host: "h1", Epoch: 1, ReadOnly: true, Snapshot: "nope",
		Token: api.SnapshotExportToken(testSecret, "c1", "h1", 1, "nope")}.String()
	if _, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: cs.nbdAddr, Export: nope}); err == nil || !strings.Contains(err.Error(), `no snapshot "nope"`) {
		t.Errorf("an unknown snapshot's export: %v", err)
	}

	// Roll c1 back: it reads as the snapshot again.
	if _, err := cs.ctl.RollbackSnapshot(ctx, api.SnapshotRequest{Name: "s1", Chunks: req.Chunks[:1]}); err != nil {
		t.Fatal(err)
	}
	if err := live.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("after the rollback the chunk does not read as the snapshot (%v)", err)
	}
	if _, err := cs.ctl.RollbackSnapshot(ctx, api.SnapshotRequest{Name: "nope", Chunks: req.Chunks[:1]}); err == nil {
		t.Error("a rollback to an unknown snapshot succeeded")
	}
	snap.Close()
	if _, err := cs.ctl.DeleteSnapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.ctl.DeleteSnapshot(ctx, req); err != nil {
		t.Fatalf("repeating the delete: %v", err)
	}
	if list, err := cs.ctl.Snapshots(ctx, "c2", cred("c2", "h1", 1)); err != nil || len(list.Snapshots) != 0 {
		t.Fatalf("after the delete: %+v, %v", list, err)
	}
	if _, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: cs.nbdAddr, Export: snapName}); err == nil {
		t.Error("a deleted snapshot's export opens")
	}
}

// TestSnapshotReaderOutlivesFence: a snapshot's reader is not a writer a
// fence must stop. Its connection keeps reading after the chunk is fenced
// at a higher epoch, its export name still opens, and a fence that found
// only such a reader does not pin the LOG; the old epoch's live export is
// fenced as before.
func TestSnapshotReaderOutlivesFence(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	live := cs.dial(t, exportName("c1", "h1", 1), nil)
	before := bytes.Repeat([]byte("snapshot"), 512)
	if err := live.WriteAt(ctx, before, 0, true); err != nil {
		t.Fatal(err)
	}
	req := api.SnapshotRequest{Name: "s1", Chunks: []api.ChunkPin{{Chunk: "c1", ControlRequest: cred("c1", "h1", 1)}}}
	if _, err := cs.ctl.Snapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	snapName := api.ExportName{Chunk: "c1", Host: "h3", Epoch: 1, ReadOnly: true, Snapshot: "s1",
		Token: api.SnapshotExportToken(testSecret, "c1", "h3", 1, "s1")}.String()
	snap := cs.dial(t, snapName, nil)
	if _, err := cs.ctl.Fence(ctx, "c1", cred("c1", "h2", 2)); err != nil {
		t.Fatal(err)
	}
	if cs.logBits(t, "c1", 2).Pinned {
		t.Error("a fence that found only a snapshot's reader pinned the LOG")
	}
	next := cs.dial(t, exportName("c1", "h2", 2), nil)
	if err := next.WriteAt(ctx, bytes.Repeat([]byte("x"), len(before)), 0, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(before))
	if err := snap.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("the snapshot's reader after the fence: %v, same bytes %v", err, bytes.Equal(got, before))
	}
	again := cs.dial(t, snapName, nil)
	if err := again.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("a snapshot export of the fenced epoch: %v, same bytes %v", err, bytes.Equal(got, before))
	}
	if _, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: cs.nbdAddr, Export: exportName("c1", "h1", 1)}); err == nil || !strings.Contains(err.Error(), "fenced") {
		t.Errorf("the fenced epoch's live export: %v", err)
	}
}

// TestCloneChunkAssignment: a chunk assigned as a clone of a snapshot of a
// chunk the server holds reads the snapshot over NBD, takes writes that
// the base never shows, and keeps its base from being deleted.
func TestCloneChunkAssignment(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	live := cs.dial(t, exportName("c1", "h1", 1), nil)
	gold := bytes.Repeat([]byte("golden image "), 5000)
	if err := live.WriteAt(ctx, gold, 0, true); err != nil {
		t.Fatal(err)
	}
	req := api.SnapshotRequest{Name: "gold", Chunks: []api.ChunkPin{{Chunk: "c1", ControlRequest: cred("c1", "h1", 1)}}}
	if _, err := cs.ctl.Snapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := live.WriteAt(ctx, bytes.Repeat([]byte("B"), 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	base := api.ChunkAssignment{ID: "c1", SizeBytes: testChunkSize, State: api.ChunkActive}
	meta.setChunks([]api.ChunkAssignment{base,
		{ID: "k1", SizeBytes: testChunkSize, State: api.ChunkActive, Base: "c1", BaseSnapshot: "gold"}})
	var clone *nbd.Client
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: cs.nbdAddr, Export: exportName("k1", "h2", 1)})
		if err == nil {
			clone = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the clone chunk was not created: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer clone.Close()
	got := make([]byte, len(gold))
	if err := clone.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, gold) {
		t.Fatalf("the clone does not read the snapshot: %v", err)
	}
	if err := clone.WriteAt(ctx, bytes.Repeat([]byte("K"), 100), 10, true); err != nil {
		t.Fatal(err)
	}
	if err := live.ReadAt(ctx, got[:4096], 0); err != nil || !bytes.Equal(got[:4096], bytes.Repeat([]byte("B"), 4096)) {
		t.Fatalf("the base after a write to the clone: %v", err)
	}
	if err := clone.ReadAt(ctx, got[:200], 0); err != nil || !bytes.Equal(got[10:110], bytes.Repeat([]byte("K"), 100)) || !bytes.Equal(got[110:200], gold[110:200]) {
		t.Fatalf("the clone after its write: %v", err)
	}
	// Its base cannot be deleted while it exists.
	live.Close()
	meta.setChunks([]api.ChunkAssignment{{ID: "c1", SizeBytes: testChunkSize, State: api.ChunkDeleting},
		{ID: "k1", SizeBytes: testChunkSize, State: api.ChunkActive, Base: "c1", BaseSnapshot: "gold"}})
	time.Sleep(500 * time.Millisecond)
	if _, err := cs.s.store.Get("c1"); err != nil {
		t.Fatalf("the clone's base was deleted: %v", err)
	}
}

// TestSnapshotMaps: the control API lists, with changed=1, each snapshot
// with the map of the blocks the chunk changed after it.
func TestSnapshotMaps(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	live := cs.dial(t, exportName("c1", "h1", 1), nil)
	req := api.SnapshotRequest{Name: "s1", Chunks: []api.ChunkPin{{Chunk: "c1", ControlRequest: cred("c1", "h1", 1)}}}
	if _, err := cs.ctl.Snapshot(ctx, req); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{100, 5*64<<10 + 7} {
		if err := live.WriteAt(ctx, []byte("changed"), off, true); err != nil {
			t.Fatal(err)
		}
	}
	list, err := cs.ctl.SnapshotMaps(ctx, "c1", cred("c1", "h1", 1))
	if err != nil || len(list.Snapshots) != 1 {
		t.Fatalf("maps: %+v, %v", list, err)
	}
	sn := list.Snapshots[0]
	if sn.Block != 64<<10 || len(sn.Changed) == 0 || sn.Changed[0] != 1|1<<5 {
		t.Fatalf("snapshot s1's map: block %d, %x; want blocks 0 and 5", sn.Block, sn.Changed)
	}
	for _, b := range sn.Changed[1:] {
		if b != 0 {
			t.Fatalf("snapshot s1's map marks more blocks: %x", sn.Changed)
		}
	}
	if plain, err := cs.ctl.Snapshots(ctx, "c1", cred("c1", "h1", 1)); err != nil || plain.Snapshots[0].Changed != nil {
		t.Fatalf("a plain list carries maps: %+v, %v", plain, err)
	}
}
