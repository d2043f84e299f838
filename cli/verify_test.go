package cli

import (
	"fmt"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestCheckedMembers: verify reads every member of the layout and an
// in-sync mirror successor (a copy like the others), and skips a successor
// still being rebuilt and any successor of an EC set.
func TestCheckedMembers(t *testing.T) {
	set := func(succState string) api.Set {
		return api.Set{Members: []api.Member{
			{ChunkID: "a", State: api.MemberInSync},
			{ChunkID: "b", State: api.MemberInSync},
			{ChunkID: "c", State: api.MemberInSync},
			{ChunkID: "s", State: succState, Replaces: "b"},
		}}
	}
	mirror := api.Layout{Kind: api.LayoutMirror, Copies: 3}
	ec := api.Layout{Kind: api.LayoutEC, K: 2, M: 1}
	for _, tt := range []struct {
		layout       api.Layout
		state        string
		check, skips string
	}{
		{mirror, api.MemberRebuilding, "[a b c]", "[s]"},
		{mirror, api.MemberInSync, "[a b c s]", "[]"},
		{ec, api.MemberRebuilding, "[a b c]", "[s]"},
		{ec, api.MemberInSync, "[a b c]", "[s]"},
	} {
		check, skipped := checkedMembers(set(tt.state), tt.layout)
		var ids []string
		for _, m := range check {
			ids = append(ids, m.ChunkID)
		}
		if got, gotSkips := fmt.Sprint(ids), fmt.Sprint(skipped); got != tt.check || (gotSkips != tt.skips && !(tt.skips == "[]" && skipped == nil)) {
			t.Errorf("%s, successor %s: checks %s and skips %s, want %s and %s", tt.layout, tt.state, got, gotSkips, tt.check, tt.skips)
		}
	}
}
