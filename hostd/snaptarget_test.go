package hostd

import (
	"bytes"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestSnapshotTargetFailover: a snapshot target reads from its first
// member, from the next while that one is away, from the first again once
// it is back (connecting anew); it is served read-only, a member dropped
// from the assignment loses its connection, and a target no longer
// assigned is removed.
func TestSnapshotTargetFailover(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	ctx := t.Context()
	// The two copies differ only so that the test sees which one answered.
	for id, b := range map[string]byte{"c0": 'a', "c1": 'b'} {
		if err := c.chunk(id).data.Conn().WriteAt(ctx, bytes.Repeat([]byte{b}, 4096), 0, true); err != nil {
			t.Fatal(err)
		}
	}
	set := api.Set{Index: 0, SizeBytes: testChunkSize}
	for _, id := range []string{"c0", "c1"} {
		set.Members = append(set.Members, api.Member{ChunkID: id, Chunkserver: "cs" + id, Addr: "nbd-" + id, Export: id + ";snap", State: api.MemberInSync})
	}
	tg := api.SnapshotTarget{Volume: "vol", Snapshot: "s1", IQN: api.SnapshotIQN("vol", "s1"), SizeBytes: 1 << 20, Layout: "mirror:2", ChunkBytes: testChunkSize, Sets: []api.Set{set}}
	if !s.applySnapshotTargets([]api.SnapshotTarget{tg}) {
		t.Fatal("the snapshot target was not served")
	}
	s.mu.Lock()
	st := s.mu.snapTargets[tg.IQN]
	s.mu.Unlock()
	if st == nil || st.lu.Size() != 1<<20 {
		t.Fatalf("target %+v", st)
	}
	read := func() byte {
		t.Helper()
		p := make([]byte, 4096)
		if err := st.lu.ReadAt(ctx, p, 0); err != nil {
			t.Fatal(err)
		}
		return p[0]
	}
	if got := read(); got != 'a' {
		t.Fatalf("read %q, want the first member's", got)
	}
	c.setDown("c0", true)
	if got := read(); got != 'b' {
		t.Fatalf("read %q with the first member away, want the second's", got)
	}
	c.setDown("c0", false)
	if got := read(); got != 'a' {
		t.Fatalf("read %q with the first member back, want it again", got)
	}
	if err := st.lu.WriteAt(ctx, []byte("x"), 0, false); err == nil {
		t.Error("a write to a snapshot target succeeded")
	}

	before := c.openConns()
	tg.Sets[0].Members = tg.Sets[0].Members[1:]
	if !s.applySnapshotTargets([]api.SnapshotTarget{tg}) {
		t.Fatal("the new assignment was not applied")
	}
	if after := c.openConns(); after != before-1 {
		t.Errorf("%d connections open after a member left the assignment, %d before", after, before)
	}
	if got := read(); got != 'b' {
		t.Fatalf("read %q, want the remaining member's", got)
	}
	s.applySnapshotTargets(nil)
	if len(s.target.Targets()) != 0 || c.openConns() != 0 {
		t.Errorf("after the snapshot was detached: targets %v, %d connections open", s.target.Targets(), c.openConns())
	}
}
