package metaserver

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestHostFailover: the volumes of a host without heartbeat for
// host_failover_after are attached by the leader to the live hosts with
// the fewest volumes, at a new epoch, with an event naming both hosts; a
// host that is only late keeps its volumes. With no live host left the
// volume stays and that is said once. host_failover_after must exceed
// offline_after.
func TestHostFailover(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{DatabaseURL: "postgres://x", OfflineAfter: 10 * time.Second, HostFailoverAfter: 10 * time.Second}); err == nil ||
		!strings.Contains(err.Error(), "rule offline_after < host_failover_after") {
		t.Errorf("host_failover_after = offline_after accepted: %v", err)
	}
	ts := startServer(t, Config{ChunkSize: 64 << 20, HostFailoverAfter: 20 * time.Second})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	for _, h := range []string{"h1", "h2", "h3"} {
		ts.addHost(t, h)
	}
	create := func(name, host string) *api.Volume {
		t.Helper()
		v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: name, SizeBytes: 64 << 20, Layout: "mirror:2", Host: host})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	create("a", "h1")
	create("b", "h1")
	create("c", "h2")
	// h1 is late, not lost: it keeps its volumes.
	if err := ts.exec(t, `UPDATE hosts SET last_heartbeat = now() - interval '15 seconds' WHERE name = 'h1'`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // two ticks of the leader
	if v, err := ts.Client.GetVolume(ctx, "a"); err != nil || v.Host != "h1" || v.Epoch != 1 {
		t.Fatalf("volume a of a host silent for 15 s (failover after 20 s): %+v %v", v, err)
	}

	// h1 is lost: a goes to h3 (no volumes), b to h2 (one volume, as h3
	// now has, and first by name).
	if err := ts.exec(t, `UPDATE hosts SET last_heartbeat = now() - interval '1 hour' WHERE name = 'h1'`); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "h3", "b": "h2", "c": "h2"}
	for deadline := time.Now().Add(15 * time.Second); ; {
		got := map[string]string{}
		epochs := map[string]int64{}
		for name := range want {
			v, err := ts.Client.GetVolume(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			got[name], epochs[name] = v.Host, v.Epoch
		}
		if got["a"] == want["a"] && got["b"] == want["b"] && got["c"] == want["c"] {
			if epochs["a"] != 2 || epochs["b"] != 2 || epochs["c"] != 1 {
				t.Fatalf("epochs after the failover %v, want a and b at 2, c at 1", epochs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosts %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, host := range map[string]string{"a": "h3", "b": "h2"} {
		evs := eventsOf(ts.events(t, name), api.EventHostFailover)
		if len(evs) != 1 || evs[0].Server != host || !strings.Contains(evs[0].Message, "host h1 has had no heartbeat for 1h0m") ||
			!strings.Contains(evs[0].Message, "(failover after 20s): volume "+name+" is attached to host "+host+" at epoch 2") {
			t.Fatalf("host_failover events of %s: %+v", name, evs)
		}
		t.Logf("%s", evs[0].Message)
	}

	// Every host lost: c stays on h2, said once.
	if err := ts.exec(t, `UPDATE hosts SET last_heartbeat = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3500 * time.Millisecond)
	if v, err := ts.Client.GetVolume(ctx, "c"); err != nil || v.Host != "h2" || v.Epoch != 1 {
		t.Fatalf("volume c with no live host: %+v %v", v, err)
	}
	evs := eventsOf(ts.events(t, "c"), api.EventHostFailoverBlocked)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "no live host can take volume c; retrying") {
		t.Fatalf("host_failover_blocked events of c: %+v", evs)
	}
	// A host comes back: c moves to it.
	if err := ts.exec(t, `UPDATE hosts SET last_heartbeat = now() WHERE name = 'h1'`); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		v, err := ts.Client.GetVolume(ctx, "c")
		if err != nil {
			t.Fatal(err)
		}
		if v.Host == "h1" && v.Epoch == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("volume c after h1 returned: host %s epoch %d", v.Host, v.Epoch)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDetectorWaitsAfterOutage: a leader that finds the failure detector
// idle for long (the database or every metaserver was away, so heartbeats
// could not be recorded) gives the daemons offline_after to heartbeat
// before it judges them: a chunkserver that heartbeats again within it is
// not declared offline; one that does not is, after it.
func TestDetectorWaitsAfterOutage(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20, IOTimeout: time.Second, OfflineAfter: 3 * time.Second, LogPeriod: 4 * time.Second})
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	offline := func() []string {
		t.Helper()
		var out []string
		for _, e := range eventsOf(ts.events(t, ""), api.EventChunkserverOffline) {
			out = append(out, e.Server)
		}
		return out
	}
	// An outage: the leader's session ends, the detector last ran an hour
	// ago and no heartbeat was recorded since.
	// This cluster's leader session only: other tests' share the server.
	if err := ts.exec(t, `
		WITH t AS (
			SELECT pg_terminate_backend(l.pid) FROM pg_locks l
			WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND l.pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = '`+leaderAppName+`')
			  AND (l.classid::bigint << 32 | l.objid::bigint) = `+leaderLockKey+`)
		UPDATE cluster SET detector_at = now() - interval '1 hour' FROM (SELECT count(*) FROM t) AS n`); err != nil {
		t.Fatal(err)
	}
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(2 * time.Second) // the new lead begins within a tick
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() WHERE name = 'cs-a'`); err != nil {
		t.Fatal(err)
	}
	if got := offline(); len(got) != 0 {
		t.Fatalf("within offline_after of the new lead, declared offline: %v", got)
	}
	for deadline := time.Now().Add(15 * time.Second); len(offline()) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("cs-b, silent, never declared offline")
		}
		if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() WHERE name = 'cs-a'`); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	t.Logf("cs-b declared offline %v after the outage ended (offline after 3s)", took.Round(100*time.Millisecond))
	if took < 3*time.Second {
		t.Errorf("cs-b judged %v after the new lead, before offline_after", took)
	}
	if got := offline(); len(got) != 1 || got[0] != "cs-b" {
		t.Errorf("declared offline: %v, want cs-b alone", got)
	}
}

// TestRemoveChunkserver: a chunkserver is forgotten only when it is offline
// and holds no set member; the refusals say why, with the count.
func TestRemoveChunkserver(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "vol", SizeBytes: 64 << 20, Layout: "mirror:2"})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]int{}
	for _, st := range v.Sets {
		for _, m := range st.Members {
			used[m.Chunkserver]++
		}
	}
	var busy, spare string
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		if used[n] > 0 && busy == "" {
			busy = n
		}
		if used[n] == 0 {
			spare = n
		}
	}
	if busy == "" || spare == "" {
		t.Fatalf("placement %v: want a chunkserver with members and one without", used)
	}
	err = ts.Client.RemoveChunkserver(ctx, spare)
	if !api.IsConflict(err) || !strings.Contains(err.Error(), "chunkserver "+spare+" is online") {
		t.Fatalf("removing an online chunkserver: %v", err)
	}
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	err = ts.Client.RemoveChunkserver(ctx, busy)
	if !api.IsConflict(err) || !strings.Contains(err.Error(), fmt.Sprintf("chunkserver %s still holds %d set members (volumes vol)", busy, used[busy])) {
		t.Fatalf("removing a chunkserver with members: %v", err)
	}
	if err := ts.Client.RemoveChunkserver(ctx, spare); err != nil {
		t.Fatalf("removing an offline chunkserver without members: %v", err)
	}
	cs, err := ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Name == spare {
			t.Fatalf("%s is still listed after its removal", spare)
		}
	}
	if err := ts.Client.RemoveChunkserver(ctx, spare); !api.IsNotFound(err) {
		t.Fatalf("removing it again: %v", err)
	}
	if evs := eventsOf(ts.events(t, ""), api.EventChunkserverRemoved); len(evs) != 1 || evs[0].Server != spare {
		t.Fatalf("chunkserver_removed events: %+v", evs)
	}
}
