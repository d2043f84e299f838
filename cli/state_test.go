package cli

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestProgressBar(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		done, total int64
		want        string
	}{
		{39 * mib, 64 * mib, "[#######.....] 61% 39 MiB/64 MiB"},
		{0, 64 * mib, "[............] 0% 0 B/64 MiB"},
		{64*mib - 1, 64 * mib, "[###########.] 99% 64.0 MiB/64 MiB"},
		{64 * mib, 64 * mib, "[############] 100% 64 MiB/64 MiB"},
		{80 * mib, 64 * mib, "[############] 100% 64 MiB/64 MiB"},
		{-5, 4096, "[............] 0% 0 B/4 KiB"},
		{0, 0, "[............] 0% 0 B/0 B"},
		{1 << 61, 1 << 62, "[######......] 50% 2097152 TiB/4194304 TiB"},
	}
	for _, tt := range tests {
		if got := progressBar(tt.done, tt.total); got != tt.want {
			t.Errorf("progressBar(%d, %d) = %q, want %q", tt.done, tt.total, got, tt.want)
		}
	}
}

func TestMemberStateAndHealth(t *testing.T) {
	v := &api.Volume{Sets: []api.Set{
		{Members: []api.Member{
			{State: api.MemberInSync},
			{State: api.MemberResyncing, ResyncDoneBytes: 3 << 20, ResyncTotalBytes: 4 << 20},
		}},
		{Members: []api.Member{
			{State: api.MemberDegraded, Error: "read: i/o timeout\n\tat member 1"},
			{State: api.MemberDegraded},
		}},
	}}
	want := []string{
		"in_sync",
		"resyncing [#########...] 75% 3 MiB/4 MiB",
		"degraded: read: i/o timeout  at member 1",
		"degraded",
	}
	var got []string
	for _, s := range v.Sets {
		for _, m := range s.Members {
			got = append(got, memberState(m))
		}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("member states %q, want %q", got, want)
	}
	if h := volumeHealth(v); h != "2 degraded, 1 resyncing" {
		t.Errorf("health %q", h)
	}
	if h := volumeHealth(&api.Volume{Sets: []api.Set{{Members: []api.Member{{State: api.MemberInSync}}}}}); h != "healthy" {
		t.Errorf("health %q", h)
	}
}

// TestVolumeShowSummarisesManySets: a volume of hundreds of sets shows
// counts by state and only the sets that are not healthy; --sets (allSets)
// shows every one.
func TestVolumeShowSummarisesManySets(t *testing.T) {
	v := &api.Volume{Name: "big", Layout: "mirror:2", IQN: api.IQNPrefix + "big"}
	for i := range 320 {
		s := api.Set{Index: i, Members: []api.Member{
			{ChunkID: fmt.Sprintf("a%d", i), Chunkserver: "cs1", State: api.MemberInSync},
			{ChunkID: fmt.Sprintf("b%d", i), Chunkserver: "cs2", State: api.MemberInSync},
		}}
		switch i {
		case 17, 200:
			s.Members[1].State = api.MemberDegraded
		case 42:
			s.Members[0].State, s.Members[0].ResyncTotalBytes = api.MemberResyncing, 1<<20
		}
		v.Sets = append(v.Sets, s)
	}
	show := func(all bool) string {
		var buf bytes.Buffer
		w := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
		printVolume(w, v, all)
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return buf.String()
	}
	out := show(false)
	if !strings.Contains(out, "320: 317 healthy, 2 degraded, 1 resyncing") ||
		!strings.Contains(out, "The 3 sets that are not healthy (--sets lists all 320)") {
		t.Errorf("summary:\n%s", out)
	}
	if rows := strings.Count(out, "cs2"); rows != 3 {
		t.Errorf("summary lists %d member rows of cs2, want the 3 sets that are not healthy:\n%s", rows, out)
	}
	if rows := strings.Count(show(true), "cs2"); rows != 320 {
		t.Errorf("--sets lists %d member rows of cs2, want 320", rows)
	}
	for i := range v.Sets {
		for j := range v.Sets[i].Members {
			v.Sets[i].Members[j].State = api.MemberInSync
		}
	}
	if out := show(false); !strings.Contains(out, "Every set is healthy (--sets lists all 320).") || strings.Contains(out, "cs2") {
		t.Errorf("all healthy:\n%s", out)
	}
}

// TestRebuildingShown: a rebuilding member shows its progress, rate, ETA
// and what it replaces; its set and volume say rebuilding.
func TestRebuildingShown(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	m := api.Member{State: api.MemberRebuilding, StateSince: now.Add(-10 * time.Second), ResyncDoneBytes: 100 << 20,
		ResyncTotalBytes: 400 << 20, Error: "replaces chunk c1 on chunkserver cs2, offline for 10m0s"}
	want := "rebuilding [###.........] 25% 100 MiB/400 MiB 10 MiB/s, ETA 30s (replaces chunk c1 on chunkserver cs2, offline for 10m0s)"
	if got := memberStateAt(m, now); got != want {
		t.Errorf("memberStateAt:\n got %q\nwant %q", got, want)
	}
	v := &api.Volume{Sets: []api.Set{{Members: []api.Member{{State: api.MemberInSync}, m}},
		{Members: []api.Member{{State: api.MemberInSync}, {State: api.MemberResyncing}}}}}
	if got := volumeHealth(v); got != "1 rebuilding, 1 resyncing" {
		t.Errorf("volumeHealth = %q", got)
	}
	if got := setSummary(v.Sets); got != "2: 0 healthy, 1 rebuilding, 1 resyncing" {
		t.Errorf("setSummary = %q", got)
	}
}
