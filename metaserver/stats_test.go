package metaserver

import (
	"net/http"
	"testing"

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
