package hostd

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

func TestAttachAllMembers(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setLog("c1", 2)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	if got := states(a); !slices.Equal(got, []raid.MemberState{raid.InSync, raid.InSync}) {
		t.Fatalf("states %v, want both in sync", got)
	}
	if got := s.target.Targets(); len(got) != 1 {
		t.Fatalf("targets %v, want the volume's", got)
	}
	if p := c.pinnedChunks(); len(p) != 0 {
		t.Errorf("pinned %v after a whole attach", p)
	}
	// The unclean stop's LOG bits were merged and resynced.
	waitFor(t, "the merged LOG region to be resynced", func() bool { return allInSync(a) })
	ev := c.eventList()
	for _, id := range []string{"c0", "c1"} {
		fence, dial := slices.Index(ev, "fence "+id), slices.Index(ev, "dial "+id)
		if fence < 0 || dial < fence {
			t.Errorf("%s: fence at %d, dial at %d in %v: want fence before dial", id, fence, dial, ev)
		}
	}
	data := fill(64<<10, 7)
	if err := a.volume.WriteAt(t.Context(), data, 3<<20, false); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c0", "c1"} {
		if !bytes.Equal(c.chunk(id).data.Bytes()[3<<20:3<<20+len(data)], data) {
			t.Errorf("%s does not hold the write", id)
		}
	}
}

func TestAttachMemberUnreachable(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setDown("c1", true)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	if got := states(a); !slices.Equal(got, []raid.MemberState{raid.InSync, raid.Failed}) {
		t.Fatalf("states %v, want c1 failed", got)
	}
	if p := c.pinnedChunks(); !slices.Equal(p, []string{"c0"}) {
		t.Errorf("pinned %v, want the survivor c0", p)
	}
	reps := c.meta.reportList()
	if len(reps) == 0 || reps[0].serving || reportText(reps[0].VolumeReport) != "c0=in_sync c1=degraded" {
		t.Fatalf("first report %+v: want c1 recorded degraded before the target serves", reps)
	}
}

func TestAttachRecordedDegraded(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	good, stale := fill(testRegion, 1), fill(testRegion, 99)
	seed(t, c, "c0", testRegion, good)
	seed(t, c, "c1", testRegion, stale)
	// c0's pinned LOG names the region c1 missed while the previous holder
	// ran degraded.
	c.setLog("c0", 1)
	v := testVolume(2)
	v.Sets[0].Members[1].State = api.MemberDegraded
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	// The state right after attach races with the resync the supervisor
	// starts at once; the report made before the target serves does not.
	if reps := c.meta.reportList(); len(reps) == 0 || strings.Contains(reportText(reps[0].VolumeReport), "c1=in_sync") {
		t.Fatalf("first report %+v: the recorded-degraded member started in sync", reps)
	}
	got := make([]byte, testRegion)
	for range 4 {
		if err := a.volume.ReadAt(t.Context(), got, testRegion); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, good) {
			t.Fatal("read returned the stale member's data")
		}
	}
	waitFor(t, "c1 to be resynced", func() bool { return allInSync(a) })
	if !bytes.Equal(c.chunk("c0").data.Bytes()[testRegion:2*testRegion], good) {
		t.Fatal("the resync copied from the stale member")
	}
	if !bytes.Equal(c.chunk("c1").data.Bytes()[testRegion:2*testRegion], good) {
		t.Fatal("the resync did not repair the stale member")
	}
}

func TestRejoinAfterMemberReturns(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setDown("c1", true)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	data := fill(128<<10, 3)
	if err := a.volume.WriteAt(t.Context(), data, 5<<20, false); err != nil {
		t.Fatal(err)
	}
	c.setDown("c1", false)
	a.setList()[0].wake()
	waitFor(t, "c1 to rejoin and resync", func() bool { return allInSync(a) })
	if !bytes.Equal(c.chunk("c1").data.Bytes()[5<<20:5<<20+len(data)], data) {
		t.Fatal("c1 misses the write made while it was away")
	}
	waitFor(t, "the LOGs to be unpinned", func() bool { return len(c.pinnedChunks()) == 0 })
	waitFor(t, "a report of both members in sync", func() bool {
		r := c.meta.reportList()
		return len(r) > 0 && reportText(r[len(r)-1].VolumeReport) == "c0=in_sync c1=in_sync"
	})
}

func TestCleanDetach(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	if err := a.volume.WriteAt(t.Context(), fill(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := a.volume.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the WIB to be clean", func() bool { return allInSync(a) })
	s.detach("vol", true)
	reps := c.meta.reportList()
	if len(reps) == 0 || !reps[len(reps)-1].CleanDetach {
		t.Fatalf("last report %+v: want a clean detach", reps)
	}
	if _, err := os.Stat(s.wibPath("vol", 0)); !os.IsNotExist(err) {
		t.Errorf("WIB file after a clean detach: %v", err)
	}
	if n := c.openConns(); n != 0 {
		t.Errorf("%d connections open after detach", n)
	}
	if got := s.target.Targets(); len(got) != 0 {
		t.Errorf("targets %v after detach", got)
	}
}

// TestPlanSetStaleVersusUnreachable: a member the previous host recorded
// degraded missed writes whether or not it is reachable now (raid's Stale);
// a member recorded in sync that is merely unreachable starts degraded but
// holds every acknowledged write.
func TestPlanSetStaleVersusUnreachable(t *testing.T) {
	states := []string{api.MemberInSync, api.MemberInSync, api.MemberDegraded, api.MemberDegraded, api.MemberInSync}
	reachable := []bool{true, true, true, false, false}
	c := newFakeCluster(t, len(states))
	var members []*member
	for i, st := range states {
		m := &member{api: api.Member{ChunkID: fmt.Sprintf("c%d", i), State: st}}
		if reachable[i] {
			m.setClient(&fakeConn{Conn: c.chunk(m.api.ChunkID).data.Conn()})
		}
		members = append(members, m)
	}
	p, err := planSet(members, reachable, 2, api.Volume{Bitmap: api.BitmapRemb, Epoch: 2}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Degraded, []int{2, 3, 4}) || !slices.Equal(p.Stale, []int{2}) || !slices.Equal(p.Missed, []int{2, 3}) || p.Usable != 2 {
		t.Fatalf("plan: degraded %v stale %v missed %v usable %d; want degraded [2 3 4], stale [2], missed [2 3], usable 2",
			p.Degraded, p.Stale, p.Missed, p.Usable)
	}
	if !slices.Equal(p.MergeNow, []int{0, 1, 2}) || !slices.Equal(p.MergeOnReturn, []int{3, 4}) || len(p.devs) != 5 {
		t.Fatalf("plan: merge now %v, on return %v, %d devices", p.MergeNow, p.MergeOnReturn, len(p.devs))
	}
}

// TestIdleMemberLossNoticed: a member's chunkserver goes away under an idle
// volume. The set's probe fails it within ProbeInterval + t_io, without a
// write: the survivor's LOG is pinned and the metaserver hears the member
// degraded. When it returns it rejoins, and the volume is whole again.
func TestIdleMemberLossNoticed(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	a := attachClean(t, s)
	waitFor(t, "both members in sync", func() bool { return allInSync(a) })
	start := time.Now()
	c.setDown("c1", true)
	waitFor(t, "the idle member's loss to be reported", func() bool {
		r := c.meta.reportList()
		return len(r) > 0 && reportText(r[len(r)-1].VolumeReport) == "c0=in_sync c1=degraded"
	})
	took := time.Since(start)
	t.Logf("idle member's loss reported after %v (probe every %v, t_io %v)", took.Round(time.Millisecond), s.cfg.ProbeInterval, s.cfg.IOTimeout)
	// The state change's own report may reach the metaserver before the
	// degradation's record (pin, then report) has finished.
	waitFor(t, "the survivor's LOG, and only it, to be pinned", func() bool {
		p := c.pinnedChunks()
		return len(p) == 1 && p[0] == "c0"
	})
	c.setDown("c1", false)
	waitFor(t, "c1 to rejoin", func() bool { return allInSync(a) })
}

// TestMetaserverMarkFailsMember: the metaserver marks an in-sync member
// degraded (its chunkserver missed heartbeats) while this host still
// reaches it. The host fails it, reports the mark's generation seen, and
// promotes it only through a rejoin and resync; a mark it has seen is not
// acted on twice, and an attach takes the generation from the record.
func TestMetaserverMarkFailsMember(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	a := attachClean(t, s)
	waitFor(t, "both members in sync", func() bool { return allInSync(a) })
	v := testVolume(2)
	v.CleanDetach = true
	v.Sets[0].Members[1].State, v.Sets[0].Members[1].StateGen = api.MemberDegraded, 7
	v.Sets[0].Members[1].Error = "chunkserver csc1 offline"
	before := len(c.eventList())
	if !s.apply(t.Context(), []api.Volume{v}) {
		t.Fatal("apply failed")
	}
	waitFor(t, "the marked member to be resynced and reported in sync with the generation seen", func() bool {
		r := c.meta.reportList()
		if len(r) == 0 {
			return false
		}
		m := r[len(r)-1].VolumeReport.Sets[0].Members[1]
		return allInSync(a) && m.State == api.MemberInSync && m.SeenGen == 7
	})
	// It was failed and rejoined: fenced and dialled again.
	after := strings.Join(c.eventList()[before:], ", ")
	if !strings.Contains(after, "fence c1") || !strings.Contains(after, "dial c1") {
		t.Errorf("the marked member was not failed and rejoined: %s", after)
	}
	t.Logf("after the mark: %s", after)
	if err := a.setList()[0].mirror.MemberError(1); err != nil {
		t.Errorf("member error after the resync: %v", err)
	}
	// The same mark again changes nothing.
	n := len(c.meta.reportList())
	if !s.apply(t.Context(), []api.Volume{v}) {
		t.Fatal("apply failed")
	}
	if got := states(a); got[1] != raid.InSync {
		t.Errorf("a mark already seen failed the member again: %v", got)
	}
	t.Logf("%d reports before the repeated mark, %d after", n, len(c.meta.reportList()))
}
