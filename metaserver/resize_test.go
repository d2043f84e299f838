package metaserver

import (
	"net/http"
	"strings"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestResizeVolume: a volume grows within its last set and then by new
// sets placed as for a new volume, with an event; it never shrinks, and the
// capacity guard applies to the new sets.
func TestResizeVolume(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "g", SizeBytes: 100 << 20, Layout: "mirror:2"})
	if err != nil {
		t.Fatal(err)
	}
	sizes := func(v *api.Volume) []int64 {
		var out []int64
		for _, s := range v.Sets {
			out = append(out, s.SizeBytes>>20)
			if len(s.Members) != 2 || s.Members[0].Chunkserver == s.Members[1].Chunkserver {
				t.Errorf("set %d placed %+v", s.Index, s.Members)
			}
		}
		return out
	}
	if got := sizes(v); len(got) != 2 || got[1] != 36 {
		t.Fatalf("created with sets of %v MiB", got)
	}
	keep := v.Sets[0].Members[0].ChunkID
	v, err = ts.Client.ResizeVolume(ctx, "g", 120<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := sizes(v); v.SizeBytes != 120<<20 || len(got) != 2 || got[1] != 56 {
		t.Fatalf("grown within the last set: %d bytes, sets of %v MiB", v.SizeBytes, got)
	}
	v, err = ts.Client.ResizeVolume(ctx, "g", 200<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := sizes(v); v.SizeBytes != 200<<20 || len(got) != 4 || got[1] != 64 || got[3] != 8 {
		t.Fatalf("grown by new sets: %d bytes, sets of %v MiB", v.SizeBytes, got)
	}
	if v.Sets[0].Members[0].ChunkID != keep || v.Epoch != 0 && v.Epoch != 1 {
		t.Fatalf("the first set changed or the epoch moved: %+v", v)
	}
	_, err = ts.Client.ResizeVolume(ctx, "g", 64<<20)
	if e := wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest); e != nil && !strings.Contains(e.Message, "shrinking is not supported") {
		t.Errorf("shrink refused with %q", e.Message)
	}
	_, err = ts.Client.ResizeVolume(ctx, "g", 200<<20+1)
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	_, err = ts.Client.ResizeVolume(ctx, "nosuch", 1<<30)
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
	_, err = ts.Client.ResizeVolume(ctx, "g", 100<<30)
	if e := wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict); e != nil {
		t.Logf("refused: %s", e.Message)
	}
	evs, err := ts.Client.ListEvents(ctx, "g", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var resized []string
	for _, e := range evs {
		if e.Kind == api.EventVolumeResized {
			resized = append(resized, e.Message)
		}
	}
	if len(resized) != 2 {
		t.Fatalf("volume_resized events: %q", resized)
	}
	t.Logf("events: %q", resized)
}
