package hostd

import (
	"bytes"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestEveryMemberFailsAndReturns: a host-side blip (a NIC flap, a pause
// longer than t_io) fails every member of a set during a write; all come
// back. The set has no member to resync from, yet none missed an
// acknowledged write: the host reports them so and attaches the volume
// again from that record, which trusts them and reconciles the regions the
// failed write touched. The volume serves again with every acknowledged
// write, and the members agree. (Before: the members rejoined resyncing
// with no source, were reported resyncing, and every later attach refused
// the volume.)
func TestEveryMemberFailsAndReturns(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	v := testVolume(2)
	v.CleanDetach = true
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	// The fake metaserver assigns the volume with the member states of the
	// last report, as the real one does.
	c.meta.mu.Lock()
	c.meta.volumes = func() []api.Volume {
		cur := testVolume(2)
		reps := c.meta.reports
		if len(reps) > 0 {
			last := reps[len(reps)-1]
			for j := range cur.Sets[0].Members {
				cur.Sets[0].Members[j].State = last.Sets[0].Members[j].State
			}
		}
		return []api.Volume{cur}
	}
	c.meta.mu.Unlock()

	a := s.attached("vol")
	acked := fill(testRegion, 7)
	if err := a.volume.WriteAt(t.Context(), acked, 2*testRegion, false); err != nil {
		t.Fatal(err)
	}
	if err := a.volume.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.setDown("c0", true)
	c.setDown("c1", true)
	if err := a.volume.WriteAt(t.Context(), fill(4096, 9), 5*testRegion, false); err == nil {
		t.Fatal("a write with every member down succeeded")
	}
	waitFor(t, "every member to fail", func() bool { return !a.setList()[0].canServe() })
	c.setDown("c0", false)
	c.setDown("c1", false)
	a.setList()[0].wake()

	var b *attachment
	waitFor(t, "the volume to be attached again and in sync", func() bool {
		b = s.attached("vol")
		return b != nil && b != a && allInSync(b) && b.setList()[0].wib.Count() == 0
	})
	got := make([]byte, testRegion)
	if err := b.volume.ReadAt(t.Context(), got, 2*testRegion); err != nil || !bytes.Equal(got, acked) {
		t.Fatalf("acknowledged write after the recovery: err %v, bytes equal %v", err, err == nil && bytes.Equal(got, acked))
	}
	if err := b.volume.WriteAt(t.Context(), fill(4096, 3), 0, false); err != nil {
		t.Fatalf("write after the recovery: %v", err)
	}
	if err := b.volume.Flush(t.Context()); err != nil {
		t.Fatalf("flush after the recovery: %v", err)
	}
	if !bytes.Equal(c.chunk("c0").data.Bytes(), c.chunk("c1").data.Bytes()) {
		t.Fatal("the members differ after the recovery")
	}
}
