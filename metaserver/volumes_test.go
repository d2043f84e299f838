package metaserver

import (
	"net/http"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestVolumeCreateListShowDelete(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ts.addChunkserver(t, n, "", 100*gib)
	}

	// 150 MiB with 64 MiB chunks: three sets of 64, 64 and 22 MiB.
	const size = 150 << 20
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "vol-1", SizeBytes: size, Layout: "mirror:2"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Name != "vol-1" || v.SizeBytes != size || v.Layout != "mirror:2" || v.Epoch != 1 || v.Host != "" {
		t.Fatalf("volume = %+v", v)
	}
	if v.IQN != api.IQNPrefix+"vol-1" {
		t.Errorf("IQN = %q", v.IQN)
	}
	if v.CreatedAt.IsZero() {
		t.Error("created_at is zero")
	}
	wantSizes := []int64{64 << 20, 64 << 20, 22 << 20}
	if len(v.Sets) != len(wantSizes) {
		t.Fatalf("%d sets, want %d", len(v.Sets), len(wantSizes))
	}
	var total int64
	chunkIDs := map[string]bool{}
	for i, s := range v.Sets {
		if s.Index != i || s.SizeBytes != wantSizes[i] {
			t.Errorf("set %d: index %d size %d, want size %d", i, s.Index, s.SizeBytes, wantSizes[i])
		}
		total += s.SizeBytes
		if len(s.Members) != 2 {
			t.Fatalf("set %d has %d members", i, len(s.Members))
		}
		if s.Members[0].Chunkserver == s.Members[1].Chunkserver {
			t.Errorf("set %d: both members on %s", i, s.Members[0].Chunkserver)
		}
		for _, m := range s.Members {
			if m.Export != m.ChunkID || m.State != api.MemberInSync || m.Addr == "" || chunkIDs[m.ChunkID] {
				t.Errorf("set %d: bad member %+v", i, m)
			}
			chunkIDs[m.ChunkID] = true
		}
	}
	if total != size {
		t.Errorf("set sizes add up to %d, want %d", total, size)
	}

	got, err := ts.Client.GetVolume(ctx, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != v.Name || len(got.Sets) != 3 || got.Sets[2].Members[1].ChunkID != v.Sets[2].Members[1].ChunkID {
		t.Errorf("GetVolume = %+v, want %+v", got, v)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "vol-0", SizeBytes: 4096, Layout: "mirror:3"}); err != nil {
		t.Fatal(err)
	}
	list, err := ts.Client.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "vol-0" || list[1].Name != "vol-1" || len(list[0].Sets) != 1 || len(list[0].Sets[0].Members) != 3 {
		t.Fatalf("ListVolumes = %+v", list)
	}
	chunks, err := ts.Client.ListChunks(ctx, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 6 {
		t.Fatalf("vol-1 has %d chunks, want 6", len(chunks))
	}
	for _, c := range chunks {
		if !chunkIDs[c.ID] || c.Volume != "vol-1" || c.State != api.ChunkActive || c.SizeBytes != 64<<20 {
			t.Errorf("chunk %+v", c)
		}
	}
	all, err := ts.Client.ListChunks(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 9 {
		t.Errorf("%d chunks in all, want 9", len(all))
	}

	if err := ts.Client.DeleteVolume(ctx, "vol-1"); err != nil {
		t.Fatal(err)
	}
	_, err = ts.Client.GetVolume(ctx, "vol-1")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
	wantCode(t, ts.Client.DeleteVolume(ctx, "vol-1"), api.CodeNotFound, http.StatusNotFound)
	_, err = ts.Client.ListChunks(ctx, "vol-1")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
	all, err = ts.Client.ListChunks(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	deleting := 0
	for _, c := range all {
		if chunkIDs[c.ID] {
			deleting++
			if c.State != api.ChunkDeleting || c.Volume != "" {
				t.Errorf("chunk of a deleted volume: %+v", c)
			}
		} else if c.State != api.ChunkActive || c.Volume != "vol-0" {
			t.Errorf("chunk of vol-0: %+v", c)
		}
	}
	if deleting != 6 {
		t.Errorf("%d deleting chunks, want 6", deleting)
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM sets`); n != 1 {
		t.Errorf("%d sets left, want vol-0's 1", n)
	}
}
