package api

import (
	"fmt"
	"testing"
	"time"
)

// TestGroupEvents: the members of one chunkserver degraded together are one
// group with one line, so are their resyncs (with the bytes and the time),
// another server's and another kind's events are groups of their own, and
// a gap longer than GroupGap starts a new group.
func TestGroupEvents(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	var evs []Event
	id := int64(0)
	add := func(kind, server, volume string, at time.Duration, bytes int64) {
		id++
		evs = append(evs, Event{ID: id, Time: t0.Add(at), Kind: kind, Server: server, Volume: volume, Bytes: bytes,
			Subject: fmt.Sprintf("volume/%s/set/%d/member/1", volume, id), Message: fmt.Sprintf("event %d", id)})
	}
	add(EventChunkserverOffline, "cs3", "", 0, 0)
	for i := range 213 {
		v := "demo"
		if i%3 == 0 {
			v = "db"
		}
		add(EventMemberDegraded, "cs3", v, time.Duration(i)*time.Millisecond, 0)
	}
	add(EventMemberDegraded, "cs1", "demo", time.Second, 0)
	for i := range 196 {
		add(EventResyncDone, "cs3", "demo", 10*time.Second+time.Duration(i)*15*time.Millisecond, 20<<10)
	}
	add(EventMemberDegraded, "cs3", "demo", 5*time.Minute, 0) // a later cause
	gs := GroupEvents(evs)
	if len(gs) != 5 {
		for _, g := range gs {
			t.Logf("%s %s %d: %s", g.Kind, g.Server, len(g.Events), g.Summary())
		}
		t.Fatalf("%d groups, want 5", len(gs))
	}
	want := []string{
		"event 1",
		"cs3: 213 members degraded (volume demo: 142, volume db: 71)",
		"event 215",
		"cs3: 196 members resynced, 3.8 MiB copied in 3s (volume demo: 196)",
		"event 412",
	}
	for i, g := range gs {
		if got := g.Summary(); got != want[i] {
			t.Errorf("group %d: %q, want %q", i, got, want[i])
		}
	}
	if gs[1].FirstID != 2 || gs[1].LastID != 214 || len(gs[1].Events) != 213 {
		t.Errorf("the degraded group: ids %d-%d, %d events", gs[1].FirstID, gs[1].LastID, len(gs[1].Events))
	}
}
