package cli

import (
	"strings"
	"testing"

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
