package metaserver

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestVolumeSnapshots: a snapshot request waits for the volume's host to
// take it and records it ready with its pause; a failed take drops it
// with an event saying why; names clash, bad names, detached volumes and
// reports from another host are refused.
// playHost plays the host of v: it reports op on snapshot name once it
// sees the snapshot in state.
func playHost(f *authFixture, v *api.Volume, name, state, op, failure string) chan error {
	ts, ctx := f.ts, context.Background()
	hid := f.h1
	if v.Host == "h2" {
		hid = f.h2
	}
	done := make(chan error, 1)
	go func() {
		for range 500 {
			hv, err := ts.Client.HostVolumes(ctx, hid, 0, 0)
			if err != nil {
				done <- err
				return
			}
			for _, hvv := range hv.Volumes {
				for _, sn := range hvv.Snapshots {
					if hvv.Name == v.Name && sn.Name == name && sn.State == state {
						done <- ts.Client.ReportSnapshot(ctx, hid, api.SnapshotReport{Volume: v.Name, Epoch: v.Epoch, Name: name, Op: op,
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

// takeSnapshot takes snapshot name of v, playing its host.
func takeSnapshot(t *testing.T, f *authFixture, v *api.Volume, name string) {
	t.Helper()
	h := playHost(f, v, name, api.SnapshotPending, api.SnapshotOpCreate, "")
	if _, err := f.ts.Client.CreateSnapshot(t.Context(), v.Name, name); err != nil {
		t.Fatal(err)
	}
	if err := <-h; err != nil {
		t.Fatal(err)
	}
}

func TestVolumeSnapshots(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	v1, err := ts.Client.GetVolume(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	host := func(name, state, op, failure string) chan error {
		return playHost(f, v1, name, state, op, failure)
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
	wantEvents(t, ts, api.EventSnapshotCreated, 1)
	wantEvents(t, ts, api.EventSnapshotDeleted, 1)
}

// TestSnapshotAttach: a ready snapshot is served read-only by the host it
// is attached to, under an IQN of its own, with read-only export names of
// the snapshot for that host; other hosts redirect to it; a snapshot
// attached cannot be deleted; names whose IQNs clash, unknown hosts and
// snapshots are refused; detach ends it.
func TestSnapshotAttach(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	v1, err := ts.Client.GetVolume(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, f, v1, "Before_Up")
	takeSnapshot(t, f, v1, "before-up")

	// The volume's host gets export names of a snapshot for itself, to
	// copy it onto a member being rebuilt; another host does not.
	ev, err := ts.Client.HostSnapshotExports(ctx, f.h1, "v1", "Before_Up")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ev.Sets[0].Members {
		if en, err := api.ParseExportName(m.Export); err != nil || en.Snapshot != "Before_Up" || en.Host != "h1" || !en.ReadOnly {
			t.Errorf("the host's snapshot export %q: %+v, %v", m.Export, en, err)
		}
	}
	if _, err := ts.Client.HostSnapshotExports(ctx, f.h2, "v1", "Before_Up"); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("another host's request: %v", err)
	}
	if _, err := ts.Client.HostSnapshotExports(ctx, f.h1, "v1", "nosuch"); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("an unknown snapshot: %v", err)
	}

	sn, err := ts.Client.AttachSnapshot(ctx, "v1", "Before_Up", "h2")
	if err != nil {
		t.Fatal(err)
	}
	wantIQN := api.IQNPrefix + "v1:snap:before-up"
	if sn.Host != "h2" || sn.IQN != wantIQN || sn.SizeBytes != 4096 {
		t.Errorf("attached: %+v", sn)
	}
	hv, err := ts.Client.HostVolumes(ctx, f.h2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hv.SnapshotTargets) != 1 {
		t.Fatalf("h2 serves %d snapshots", len(hv.SnapshotTargets))
	}
	tg := hv.SnapshotTargets[0]
	if tg.IQN != wantIQN || tg.Volume != "v1" || tg.Snapshot != "Before_Up" || tg.SizeBytes != 4096 || len(tg.Sets) != 1 || len(tg.Sets[0].Members) != 2 {
		t.Fatalf("target %+v", tg)
	}
	for _, m := range tg.Sets[0].Members {
		en, err := api.ParseExportName(m.Export)
		if err != nil || !en.ReadOnly || en.Snapshot != "Before_Up" || en.Host != "h2" || en.Chunk != m.ChunkID {
			t.Errorf("member export %q: %+v, %v", m.Export, en, err)
		}
	}
	hv1, err := ts.Client.HostVolumes(ctx, f.h1, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hv1.SnapshotTargets) != 0 || !slices.ContainsFunc(hv1.Elsewhere, func(e api.ServedElsewhere) bool {
		return e.IQN == wantIQN && e.Host == "h2" && e.Snapshot == "Before_Up"
	}) {
		t.Errorf("h1: targets %+v, elsewhere %+v", hv1.SnapshotTargets, hv1.Elsewhere)
	}
	if err := ts.Client.DeleteSnapshot(ctx, "v1", "Before_Up"); api.ErrorCode(err) != api.CodeConflict ||
		!strings.Contains(err.Error(), "chunkraid snapshot detach v1 Before_Up") {
		t.Errorf("deleting an attached snapshot: %v", err)
	}
	if _, err := ts.Client.AttachSnapshot(ctx, "v1", "before-up", "h1"); api.ErrorCode(err) != api.CodeConflict || !strings.Contains(err.Error(), wantIQN) {
		t.Errorf("a snapshot whose IQN clashes: %v", err)
	}
	for what, c := range map[string]struct {
		vol, snap, host string
		code            string
	}{
		"unknown host":     {"v1", "Before_Up", "nosuch", api.CodeNotFound},
		"no host":          {"v1", "Before_Up", "", api.CodeInvalidArgument},
		"unknown snapshot": {"v1", "nosuch", "h1", api.CodeNotFound},
		"unknown volume":   {"nosuch", "Before_Up", "h1", api.CodeNotFound},
	} {
		if _, err := ts.Client.AttachSnapshot(ctx, c.vol, c.snap, c.host); api.ErrorCode(err) != c.code {
			t.Errorf("%s: %v, want %s", what, err, c.code)
		}
	}
	if err := ts.Client.DetachSnapshot(ctx, "v1", "Before_Up"); err != nil {
		t.Fatal(err)
	}
	if err := ts.Client.DetachSnapshot(ctx, "v1", "Before_Up"); api.ErrorCode(err) != api.CodeConflict {
		t.Errorf("detaching it again: %v", err)
	}
	if hv, err = ts.Client.HostVolumes(ctx, f.h2, 0, 0); err != nil || len(hv.SnapshotTargets) != 0 {
		t.Errorf("h2 after the detach: %+v, %v", hv, err)
	}
	if sn, err := ts.Client.AttachSnapshot(ctx, "v1", "before-up", "h1"); err != nil || sn.IQN != wantIQN {
		t.Errorf("the other snapshot once the first is detached: %+v, %v", sn, err)
	}
	wantEvents(t, ts, api.EventSnapshotAttached, 2)
	wantEvents(t, ts, api.EventSnapshotDetached, 1)
}

// TestCloneVolume: a clone of a ready snapshot is a new volume of the
// snapshot's size whose every member chunk is on the chunkserver of the
// parent's matching member and is assigned there as a clone of the
// snapshot of that chunk; the snapshot and the parent cannot be deleted
// while the clone exists, and the refusals name it; bad requests are
// refused.
func TestCloneVolume(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	v1, err := ts.Client.GetVolume(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, f, v1, "gold")
	cl, err := ts.Client.CloneVolume(ctx, "v1", "gold", "vm1", "h2")
	if err != nil {
		t.Fatal(err)
	}
	if cl.CloneOf != "v1@gold" || cl.SizeBytes != v1.SizeBytes || cl.Layout != v1.Layout || cl.Host != "h2" || len(cl.Sets) != len(v1.Sets) {
		t.Fatalf("clone %+v", cl)
	}
	servers, err := ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int64{}
	for _, s := range servers {
		ids[s.Name] = s.ID
	}
	for i, m := range cl.Sets[0].Members {
		pm := v1.Sets[0].Members[i]
		if m.Chunkserver != pm.Chunkserver || m.ChunkID == pm.ChunkID {
			t.Errorf("member %d: on %s (chunk %s), the parent's on %s (chunk %s)", i, m.Chunkserver, m.ChunkID, pm.Chunkserver, pm.ChunkID)
		}
		as, err := ts.Client.ChunkAssignments(ctx, ids[m.Chunkserver], 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range as.Chunks {
			if a.ID == m.ChunkID {
				found = a.Base == pm.ChunkID && a.BaseSnapshot == "gold"
			}
		}
		if !found {
			t.Errorf("member %d is not assigned to %s as a clone of chunk %s's snapshot gold", i, m.Chunkserver, pm.ChunkID)
		}
	}
	if err := ts.Client.DeleteSnapshot(ctx, "v1", "gold"); api.ErrorCode(err) != api.CodeConflict || !strings.Contains(err.Error(), "vm1") {
		t.Errorf("deleting the clone's snapshot: %v", err)
	}
	if err := ts.Client.DeleteVolume(ctx, "v1"); api.ErrorCode(err) != api.CodeConflict || !strings.Contains(err.Error(), "vm1") {
		t.Errorf("deleting the clone's parent: %v", err)
	}
	for what, c := range map[string]struct {
		parent, snap, name string
		code               string
	}{
		"name taken":       {"v1", "gold", "v2", api.CodeAlreadyExists},
		"bad name":         {"v1", "gold", "Bad_Name", api.CodeInvalidArgument},
		"unknown snapshot": {"v1", "nosuch", "vm2", api.CodeNotFound},
		"unknown parent":   {"nosuch", "gold", "vm2", api.CodeNotFound},
	} {
		if _, err := ts.Client.CloneVolume(ctx, c.parent, c.snap, c.name, ""); api.ErrorCode(err) != c.code {
			t.Errorf("%s: %v, want %s", what, err, c.code)
		}
	}
	wantEvents(t, ts, api.EventVolumeCloned, 1)
	if err := ts.Client.DeleteVolume(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	h := playHost(f, v1, "gold", api.SnapshotDeleting, api.SnapshotOpDelete, "")
	if err := ts.Client.DeleteSnapshot(ctx, "v1", "gold"); err != nil {
		t.Fatalf("deleting the snapshot once the clone is gone: %v", err)
	}
	if err := <-h; err != nil {
		t.Fatal(err)
	}
}

// wantEvents fails t unless ts recorded n events of kind.
func wantEvents(t *testing.T, ts *testServer, kind string, n int) {
	t.Helper()
	if got := len(eventsOf(ts.events(t, ""), kind)); got != n {
		t.Errorf("%d %s events, want %d", got, kind, n)
	}
}
