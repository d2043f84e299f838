package metaserver

import (
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestVolumeSnapshots: a snapshot request waits for the volume's host to
// take it and records it ready with its pause; a failed take drops it
// with an event saying why; names clash, bad names, detached volumes and
// reports from another host are refused.
func TestVolumeSnapshots(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	v1, err := ts.Client.GetVolume(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	// host plays v1's host: it reports op on name once it sees state.
	host := func(name, state, op, failure string) chan error {
		done := make(chan error, 1)
		go func() {
			for range 500 {
				hv, err := ts.Client.HostVolumes(ctx, f.h1, 0, 0)
				if err != nil {
					done <- err
					return
				}
				for _, v := range hv.Volumes {
					for _, sn := range v.Snapshots {
						if v.Name == "v1" && sn.Name == name && sn.State == state {
							done <- ts.Client.ReportSnapshot(ctx, f.h1, api.SnapshotReport{Volume: "v1", Epoch: v1.Epoch, Name: name, Op: op,
								Error: failure, PauseMicros: 2500})
							return
						}
					}
				}
				time.Sleep(10 * time.Millisecond)
			}
			done <- nil
		}()
		return done
	}
	h := host("before-upgrade", api.SnapshotPending, api.SnapshotOpCreate, "")
	sn, err := ts.Client.CreateSnapshot(ctx, "v1", "before-upgrade")
	if err != nil {
		t.Fatal(err)
	}
	if err := <-h; err != nil {
		t.Fatal(err)
	}
	if sn.State != api.SnapshotReady || sn.PauseMicros != 2500 || sn.Volume != "v1" {
		t.Errorf("created %+v", sn)
	}
	if _, err := ts.Client.CreateSnapshot(ctx, "v1", "before-upgrade"); api.ErrorCode(err) != api.CodeAlreadyExists {
		t.Errorf("the same name again: %v", err)
	}
	for _, bad := range []string{"", "has space", "-dash", strings.Repeat("x", 64)} {
		if _, err := ts.Client.CreateSnapshot(ctx, "v1", bad); !api.IsInvalidArgument(err) {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	if _, err := ts.Client.CreateSnapshot(ctx, "v3", "s"); api.ErrorCode(err) != api.CodeConflict || !strings.Contains(err.Error(), "not attached") {
		t.Errorf("a detached volume: %v", err)
	}
	if _, err := ts.Client.CreateSnapshot(ctx, "nosuch", "s"); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("an unknown volume: %v", err)
	}
	if err := ts.Client.ReportSnapshot(ctx, f.h2, api.SnapshotReport{Volume: "v1", Epoch: v1.Epoch, Name: "x", Op: api.SnapshotOpCreate}); api.ErrorCode(err) != api.CodeConflict {
		t.Errorf("a report from another host: %v", err)
	}

	// A take that fails on the host.
	h = host("doomed", api.SnapshotPending, api.SnapshotOpCreate, "chunkserver ctl-x: disk on fire")
	if _, err := ts.Client.CreateSnapshot(ctx, "v1", "doomed"); err == nil || !strings.Contains(err.Error(), "failed on its host") {
		t.Errorf("a failed take: %v", err)
	}
	if err := <-h; err != nil {
		t.Fatal(err)
	}
	list, err := ts.Client.ListSnapshots(ctx, "v1")
	if err != nil || len(list) != 1 || list[0].Name != "before-upgrade" {
		t.Fatalf("list: %+v, %v", list, err)
	}
	evs := eventsOf(ts.events(t, ""), api.EventSnapshotFailed)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "disk on fire") {
		t.Errorf("failure events: %+v", evs)
	}

	h = host("before-upgrade", api.SnapshotDeleting, api.SnapshotOpDelete, "")
	if err := ts.Client.DeleteSnapshot(ctx, "v1", "before-upgrade"); err != nil {
		t.Fatal(err)
	}
	if err := <-h; err != nil {
		t.Fatal(err)
	}
	if err := ts.Client.DeleteSnapshot(ctx, "v1", "before-upgrade"); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("deleting it again: %v", err)
	}
	if n := len(eventsOf(ts.events(t, ""), api.EventSnapshotCreated)); n != 1 {
		t.Errorf("%d snapshot_created events", n)
	}
	if n := len(eventsOf(ts.events(t, ""), api.EventSnapshotDeleted)); n != 1 {
		t.Errorf("%d snapshot_deleted events", n)
	}
}
