package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// fakeEvents serves GET /api/v1/events from a list that a test can grow.
type fakeEvents struct {
	mu      sync.Mutex
	events  []api.Event
	queries []string
}

func (f *fakeEvents) add(kind, subject, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := int64(len(f.events) + 1)
	f.events = append(f.events, api.Event{ID: id, Time: time.Date(2026, 11, 21, 12, 0, int(id), 0, time.UTC),
		Kind: kind, Subject: subject, Message: msg})
}

func (f *fakeEvents) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queries = append(f.queries, r.URL.RawQuery)
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	out := []api.Event{}
	for _, e := range f.events {
		if e.ID > after {
			out = append(out, e)
		}
	}
	if after == 0 && limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// runEventsCmd runs "events args..." against the fake until ctx ends or the
// command returns.
func runEventsCmd(ctx context.Context, t *testing.T, url, output string, args ...string) (string, error) {
	t.Helper()
	var buf bytes.Buffer
	o := &rootOptions{metaserver: url, output: output, out: &buf}
	cmd := newEventsCmd(o)
	cmd.SetArgs(args)
	cmd.SetOut(&buf)
	cmd.SetErr(&buf)
	err := cmd.ExecuteContext(ctx)
	return buf.String(), err
}

func TestEventsCommand(t *testing.T) {
	f := &fakeEvents{}
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/events", f)
	hs := httptest.NewServer(mux)
	defer hs.Close()

	out, err := runEventsCmd(t.Context(), t, hs.URL, "table")
	if err != nil || strings.TrimSpace(out) != "no events" {
		t.Fatalf("no events: %q, %v", out, err)
	}
	f.add(api.EventVolumeCreated, "volume/v", "created: 1 GiB, mirror:2, 1 sets, bitmap remb")
	f.add(api.EventMemberDegraded, "volume/v/set/0/member/1", "member 1 of set 0 is degraded: read:\ni/o timeout")
	f.add(api.EventResyncDone, "volume/v/set/0/member/1", "member 1 of set 0 is in sync again")

	out, err = runEventsCmd(t.Context(), t, hs.URL, "table", "--volume", "v", "--limit", "2")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[1], "member_degraded") ||
		!strings.Contains(lines[1], "is degraded: read: i/o timeout") || !strings.Contains(lines[2], "resync_done") {
		t.Errorf("table:\n%s", out)
	}
	if q := f.queries[len(f.queries)-1]; !strings.Contains(q, "volume=v") || !strings.Contains(q, "limit=1000") {
		t.Errorf("query %q: lines summarise events, so the newest lines are made of up to 1000 events", q)
	}
	if _, err := runEventsCmd(t.Context(), t, hs.URL, "table", "--detail", "--limit", "2", "--kind", "resync_done", "--server", "cs1"); err != nil {
		t.Fatal(err)
	}
	if q := f.queries[len(f.queries)-1]; !strings.Contains(q, "limit=2") || !strings.Contains(q, "kind=resync_done") || !strings.Contains(q, "server=cs1") {
		t.Errorf("query %q", q)
	}

	// The members of one chunkserver degraded together are one line.
	for i := range 40 {
		f.mu.Lock()
		id := int64(len(f.events) + 1)
		f.events = append(f.events, api.Event{ID: id, Time: time.Date(2026, 11, 21, 12, 1, 0, i, time.UTC), Kind: api.EventMemberDegraded,
			Server: "cs3", Volume: "v", Subject: fmt.Sprintf("volume/v/set/%d/member/0", i), Message: "member degraded"})
		f.mu.Unlock()
	}
	out, err = runEventsCmd(t.Context(), t, hs.URL, "table")
	if err != nil || !strings.Contains(out, "cs3: 40 members degraded (volume v: 40)") || !strings.Contains(out, "4-43") || strings.Count(out, "\n") != 5 {
		t.Errorf("grouped:\n%s", out)
	}

	out, err = runEventsCmd(t.Context(), t, hs.URL, "json")
	var evs []api.Event
	if err != nil || json.Unmarshal([]byte(out), &evs) != nil || len(evs) != 43 || evs[2].Kind != api.EventResyncDone {
		t.Errorf("json: %q, %v", out, err)
	}

	for _, bad := range []string{"0", "1001"} {
		if _, err := runEventsCmd(t.Context(), t, hs.URL, "table", "--limit", bad); err == nil || !strings.Contains(err.Error(), "--limit") {
			t.Errorf("--limit %s: %v", bad, err)
		}
	}
}

func TestEventsFollow(t *testing.T) {
	f := &fakeEvents{}
	f.add(api.EventVolumeCreated, "volume/v", "created")
	hs := httptest.NewServer(f)
	defer hs.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		// Add events while the command follows, then stop it.
		time.Sleep(200 * time.Millisecond)
		f.add(api.EventChunkserverOffline, "chunkserver/cs1", "chunkserver cs1 is offline")
		f.add(api.EventChunkserverOnline, "chunkserver/cs1", "chunkserver cs1 is online again")
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	var buf bytes.Buffer
	o := &rootOptions{metaserver: hs.URL, output: "json", out: &buf}
	err := runEvents(ctx, o, eventsOptions{limit: 50, follow: true, interval: 20 * time.Millisecond})
	out := buf.String()
	if err != nil {
		t.Fatalf("follow: %v", err)
	}
	var kinds []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e api.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		kinds = append(kinds, e.Kind)
	}
	if strings.Join(kinds, ",") != "volume_created,chunkserver_offline,chunkserver_online" {
		t.Errorf("followed %v", kinds)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if q := f.queries[len(f.queries)-1]; !strings.Contains(q, "after=3") {
		t.Errorf("last follow query %q, want after=3", q)
	}
}

func TestPrintVolume(t *testing.T) {
	v := &api.Volume{
		Name: "v", SizeBytes: 128 << 20, Layout: "mirror:2", Bitmap: api.BitmapRemb, Host: "h1", Epoch: 3,
		IQN: api.IQNPrefix + "v",
		Sets: []api.Set{
			{Index: 0, SizeBytes: 64 << 20, DirtyBytes: 39 << 20, Members: []api.Member{
				{ChunkID: "c0", Chunkserver: "cs-a", State: api.MemberInSync, StateSince: time.Now().Add(-time.Hour)},
				{ChunkID: "c1", Chunkserver: "cs-b", State: api.MemberResyncing, StateSince: time.Now().Add(-12 * time.Second),
					ResyncDoneBytes: 39 << 20, ResyncTotalBytes: 64 << 20},
			}},
			{Index: 1, SizeBytes: 64 << 20, Members: []api.Member{
				{ChunkID: "c2", Chunkserver: "cs-a", State: api.MemberDegraded, Error: "dial tcp: connection refused"},
				{ChunkID: "c3", Chunkserver: "cs-b", State: api.MemberInSync},
			}},
		},
	}
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	printVolume(w, v, true)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"Bitmap:        remb",
		"Clean detach:  no",
		"Health:        1 degraded, 1 resyncing",
		"0    39 MiB  0       cs-a",
		"resyncing [#######.....] 61% 39 MiB/64 MiB",
		"12s ago",
		"1    0 B     0       cs-a",
		"degraded: dial tcp: connection refused",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("volume show lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "in_sync"); n != 2 {
		t.Errorf("%d in_sync in:\n%s", n, out)
	}
}
