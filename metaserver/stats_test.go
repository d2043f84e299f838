package metaserver

import (
	"net/http"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestVolumeStats: the figures a host reports with a volume are what GET
// /api/v1/volumes/{name}/stats answers, with the host and the time; bad
// figures are refused; a volume without any answers none.
func TestVolumeStats(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	hostID := ts.addHost(t, "h1")
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "s1", SizeBytes: 64 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := ts.Client.VolumeStats(ctx, "s1")
	if err != nil || r.Stats != nil || r.Volume != "s1" {
		t.Fatalf("before any report: %+v %v", r, err)
	}
	want := api.VolumeStats{WindowSeconds: 5, ReadIOPS: 120, WriteIOPS: 340.5, ReadBytesPerSec: 491520, WriteBytesPerSec: 1394688,
		ReadLatencyMeanUs: 310, ReadLatencyP99Us: 800, WriteLatencyMeanUs: 720, WriteLatencyP99Us: 1600, Errors: 2}
	report := func(st *api.VolumeStats) error {
		return ts.Client.HostReport(ctx, hostID, api.HostReport{Volumes: []api.VolumeReport{{Name: "s1", Epoch: v.Epoch, Stats: st}}})
	}
	if err := report(&want); err != nil {
		t.Fatal(err)
	}
	r, err = ts.Client.VolumeStats(ctx, "s1")
	if err != nil || r.Stats == nil || *r.Stats != want || r.Host != "h1" || r.ReportedAt == nil {
		t.Fatalf("after a report: %+v %v", r, err)
	}
	bad := want
	bad.WriteIOPS = -1
	wantCode(t, report(&bad), api.CodeInvalidArgument, http.StatusBadRequest)
	bad = want
	bad.WindowSeconds = 0
	wantCode(t, report(&bad), api.CodeInvalidArgument, http.StatusBadRequest)
	_, err = ts.Client.VolumeStats(ctx, "nosuch")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
}

// TestEventFilters: events carry the server they concern and the bytes a
// resync copied, and are filtered by kind and server as well as volume;
// a bad kind or server name is refused.
func TestEventFilters(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	hostID := ts.addHost(t, "h1")
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "e1", SizeBytes: 64 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	m := v.Sets[0].Members[1]
	report := func(state string, done int64) {
		t.Helper()
		r := api.VolumeReport{Name: "e1", Epoch: v.Epoch, Sets: []api.SetReport{{Index: 0, Members: []api.MemberReport{
			{ChunkID: v.Sets[0].Members[0].ChunkID, State: api.MemberInSync},
			{ChunkID: m.ChunkID, State: state, ResyncDoneBytes: done, ResyncTotalBytes: done}}}}}
		if err := ts.Client.HostReport(ctx, hostID, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil {
			t.Fatal(err)
		}
	}
	report(api.MemberDegraded, 0)
	report(api.MemberResyncing, 0)
	report(api.MemberInSync, 3<<20)
	evs, err := ts.Client.FindEvents(ctx, api.EventFilter{Server: m.Chunkserver}, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
		if e.Server != m.Chunkserver || e.Volume != "e1" {
			t.Errorf("event %+v", e)
		}
	}
	if len(kinds) != 3 || kinds[0] != api.EventMemberDegraded || kinds[2] != api.EventResyncDone || evs[2].Bytes != 3<<20 {
		t.Fatalf("events of %s: %v %+v", m.Chunkserver, kinds, evs)
	}
	evs, err = ts.Client.FindEvents(ctx, api.EventFilter{Kind: api.EventVolumeAttached, Volume: "e1"}, 0, 100)
	if err != nil || len(evs) != 1 || evs[0].Server != "h1" {
		t.Fatalf("volume_attached of e1: %+v %v", evs, err)
	}
	_, err = ts.Client.FindEvents(ctx, api.EventFilter{Kind: "Bad-Kind"}, 0, 10)
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	_, err = ts.Client.FindEvents(ctx, api.EventFilter{Server: "no such/server"}, 0, 10)
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
}

// TestChanges: the change version moves with an event or a placement change;
// a long poll on it returns at the change, or after its wait with the same
// version.
func TestChanges(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	c0, err := ts.Client.Changes(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	same, err := ts.Client.Changes(ctx, c0.Version, 300*time.Millisecond)
	if err != nil || same.Version != c0.Version || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("a poll with no change: %+v %v after %v", same, err, time.Since(start))
	}
	got := make(chan *api.Changes, 1)
	go func() {
		c, err := ts.Client.Changes(ctx, c0.Version, 20*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(200 * time.Millisecond)
	start = time.Now()
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "ch", SizeBytes: 64 << 20, Layout: "mirror:2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-got:
		if c == nil || c.Version == c0.Version {
			t.Fatalf("after a change: %+v", c)
		}
		t.Logf("the long poll returned %v after the change", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not return at the change")
	}
}
