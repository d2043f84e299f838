package metaserver

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

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
			if m.Export != "" || m.State != api.MemberInSync || m.StateSince.IsZero() || m.Addr == "" || chunkIDs[m.ChunkID] {
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

func TestVolumeValidation(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	for _, n := range []string{"a", "b", "c"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	ts.addHost(t, "h1")
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "taken", SizeBytes: 4096, Layout: "mirror:2"}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", 64)
	tests := []struct {
		name    string
		req     api.CreateVolumeRequest
		code    string
		status  int
		message string // exact, if set
	}{
		{name: "empty name", req: api.CreateVolumeRequest{SizeBytes: 4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "upper case", req: api.CreateVolumeRequest{Name: "Vol", SizeBytes: 4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "leading dash", req: api.CreateVolumeRequest{Name: "-v", SizeBytes: 4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "underscore", req: api.CreateVolumeRequest{Name: "a_b", SizeBytes: 4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "colon", req: api.CreateVolumeRequest{Name: "a:b", SizeBytes: 4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "64 characters", req: api.CreateVolumeRequest{Name: long, SizeBytes: 4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "zero size", req: api.CreateVolumeRequest{Name: "v", Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "negative size", req: api.CreateVolumeRequest{Name: "v", SizeBytes: -4096, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "size not 4K aligned", req: api.CreateVolumeRequest{Name: "v", SizeBytes: 4097, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400,
			message: "size_bytes 4097 is not a multiple of 4096: round it up to 8192"},
		{name: "empty layout", req: api.CreateVolumeRequest{Name: "v", SizeBytes: 4096}, code: api.CodeInvalidArgument, status: 400,
			message: `unknown layout "": use mirror:2, mirror:3 or ec:K+M such as ec:4+2 (K >= 2, M >= 1, K+M <= 20)`},
		{name: "mirror:4", req: api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:4"}, code: api.CodeInvalidArgument, status: 400,
			message: `unknown layout "mirror:4": use mirror:2, mirror:3 or ec:K+M such as ec:4+2 (K >= 2, M >= 1, K+M <= 20)`},
		{name: "ec beyond the online servers", req: api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+2"}, code: api.CodeUnsatisfiable, status: 409,
			message: `ec:4+2 needs 6 chunkservers in distinct fault domains; 3 are online`},
		{name: "too many sets", req: api.CreateVolumeRequest{Name: "v", SizeBytes: (maxSets + 1) << 20 * 64, Layout: "mirror:2"}, code: api.CodeInvalidArgument, status: 400},
		{name: "duplicate name", req: api.CreateVolumeRequest{Name: "taken", SizeBytes: 4096, Layout: "mirror:3"}, code: api.CodeAlreadyExists, status: 409,
			message: `volume "taken" already exists: choose another name or delete it first`},
		{name: "unknown host", req: api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:2", Host: "nohost"}, code: api.CodeNotFound, status: 404,
			message: `host "nohost" is not registered (chunkraid host list shows the registered hosts)`},
		{name: "invalid host", req: api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:2", Host: "no host"}, code: api.CodeInvalidArgument, status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ts.Client.CreateVolume(ctx, tt.req)
			ae := wantCode(t, err, tt.code, tt.status)
			if tt.message != "" && ae.Message != tt.message {
				t.Errorf("message = %q, want %q", ae.Message, tt.message)
			}
			if ae.Message == "" {
				t.Error("empty message")
			}
		})
	}
	// A refused volume leaves nothing behind.
	if n := ts.queryInt(t, `SELECT count(*) FROM volumes`); n != 1 {
		t.Errorf("%d volumes, want 1", n)
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM chunks`); n != 2 {
		t.Errorf("%d chunks, want 2", n)
	}
	// Names at the limits are fine.
	for _, name := range []string{"a", "0", strings.Repeat("z", 63), "a.b-c"} {
		if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: name, SizeBytes: 4096, Layout: "mirror:2"}); err != nil {
			t.Errorf("name %q: %v", name, err)
		}
	}
}

func TestPlacementAcrossThreeServers(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 1 << 20})
	ctx := t.Context()
	for _, n := range []string{"a", "b", "c"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	for _, tt := range []struct {
		layout string
		width  int
	}{{"mirror:2", 2}, {"mirror:3", 3}} {
		const sets = 12
		name := strings.ReplaceAll(tt.layout, ":", "-")
		v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: name, SizeBytes: sets << 20, Layout: tt.layout})
		if err != nil {
			t.Fatal(err)
		}
		perServer := map[string]int{}
		for _, s := range v.Sets {
			if len(s.Members) != tt.width {
				t.Fatalf("%s set %d: %d members", tt.layout, s.Index, len(s.Members))
			}
			seen := map[string]bool{}
			for _, m := range s.Members {
				if seen[m.Chunkserver] {
					t.Fatalf("%s set %d: two members on %s", tt.layout, s.Index, m.Chunkserver)
				}
				seen[m.Chunkserver] = true
				perServer[m.Chunkserver]++
			}
		}
		for srv, n := range perServer {
			if n != sets*tt.width/3 {
				t.Errorf("%s: %s holds %d chunks, want %d (%v)", tt.layout, srv, n, sets*tt.width/3, perServer)
			}
		}
	}
	servers, err := ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if s.Chunks != (12*2+12*3)/3 {
			t.Errorf("%s lists %d chunks", s.Name, s.Chunks)
		}
	}

	// The database itself refuses a second member of a set on one chunkserver.
	err = ts.exec(t, `
		INSERT INTO chunks (chunkserver_id, disk_id, volume_id, set_idx, member_idx, size_bytes)
		SELECT chunkserver_id, disk_id, volume_id, set_idx, 7, size_bytes
		FROM chunks WHERE volume_id IS NOT NULL LIMIT 1`)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || pgErr.ConstraintName != "chunks_one_member_per_chunkserver" {
		t.Fatalf("duplicate member INSERT: %v, want a unique violation of chunks_one_member_per_chunkserver", err)
	}
	// And a chunk on another server's disk.
	err = ts.exec(t, `
		INSERT INTO chunks (chunkserver_id, disk_id, size_bytes, state)
		SELECT (SELECT min(id) FROM chunkservers), (SELECT max(id) FROM disks), 1048576, 'deleting'`)
	if !errors.As(err, &pgErr) || pgErr.Code != "23503" {
		t.Fatalf("chunk on a foreign disk: %v, want a foreign key violation", err)
	}

	// mirror:3 needs a third fault domain.
	ts2 := startServer(t, Config{})
	ts2.addChunkserver(t, "x", "", 10*gib)
	ts2.addChunkserver(t, "y", "", 10*gib)
	_, err = ts2.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:3"})
	ae := wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict)
	if ae.Message != "mirror:3 needs 3 chunkservers in distinct fault domains; 2 are online" {
		t.Errorf("message = %q", ae.Message)
	}
	ts2.addChunkserver(t, "z", "y", 10*gib) // the same fault domain as y
	_, err = ts2.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:3"})
	ae = wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict)
	if ae.Message != "mirror:3 needs 3 chunkservers in distinct fault domains; 3 are online in 2 fault domains" {
		t.Errorf("message = %q", ae.Message)
	}
	if _, err := ts2.Client.GetVolume(ctx, "v"); !api.IsNotFound(err) {
		t.Errorf("an unsatisfiable volume was kept: %v", err)
	}
}

func TestAttachAndHostVolumes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	ts.addChunkserver(t, "a", "", 10*gib)
	ts.addChunkserver(t, "b", "", 10*gib)
	h1 := ts.addHost(t, "h1")
	h2 := ts.addHost(t, "h2")

	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v1", SizeBytes: 1 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Host != "h1" || v.Epoch != 1 {
		t.Fatalf("created %+v", v)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v2", SizeBytes: 1 << 20, Layout: "mirror:2"}); err != nil {
		t.Fatal(err)
	}
	hv, err := ts.Client.HostVolumes(ctx, h1, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hv.Volumes) != 1 || hv.Volumes[0].Name != "v1" || len(hv.Volumes[0].Sets) != 1 ||
		len(hv.Volumes[0].Sets[0].Members) != 2 || hv.Volumes[0].Sets[0].Members[0].Addr == "" || hv.Generation <= 0 {
		t.Fatalf("h1 volumes = %+v", hv)
	}
	hv2, err := ts.Client.HostVolumes(ctx, h2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hv2.Volumes) != 0 || hv2.Volumes == nil {
		t.Fatalf("h2 volumes = %+v", hv2)
	}

	// Attaching moves the volume and bumps its epoch, every time.
	v, err = ts.Client.AttachVolume(ctx, "v1", "h2")
	if err != nil {
		t.Fatal(err)
	}
	if v.Host != "h2" || v.Epoch != 2 {
		t.Fatalf("after attach to h2: %+v", v)
	}
	v, err = ts.Client.AttachVolume(ctx, "v1", "h2")
	if err != nil {
		t.Fatal(err)
	}
	if v.Epoch != 3 {
		t.Fatalf("reattach: epoch %d, want 3", v.Epoch)
	}
	if got, err := ts.Client.GetVolume(ctx, "v1"); err != nil || got.Epoch != 3 || got.Host != "h2" {
		t.Fatalf("GetVolume = %+v, %v", got, err)
	}
	hv, err = ts.Client.HostVolumes(ctx, h1, 0, 0)
	if err != nil || len(hv.Volumes) != 0 {
		t.Fatalf("h1 after move: %+v, %v", hv, err)
	}
	hv2, err = ts.Client.HostVolumes(ctx, h2, 0, 0)
	if err != nil || len(hv2.Volumes) != 1 || hv2.Volumes[0].Epoch != 3 {
		t.Fatalf("h2 after move: %+v, %v", hv2, err)
	}

	_, err = ts.Client.AttachVolume(ctx, "nope", "h1")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
	_, err = ts.Client.AttachVolume(ctx, "v1", "nohost")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
	_, err = ts.Client.AttachVolume(ctx, "v1", "")
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	if got, _ := ts.Client.GetVolume(ctx, "v1"); got.Epoch != 3 {
		t.Errorf("failed attaches changed the epoch to %d", got.Epoch)
	}
}

func TestChunkDeletionAck(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	a := ts.addChunkserver(t, "a", "", 10*gib)
	b := ts.addChunkserver(t, "b", "", 10*gib)
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 1 << 20, Layout: "mirror:2"})
	if err != nil {
		t.Fatal(err)
	}
	assignments := func(id int64) map[string]string {
		t.Helper()
		as, err := ts.Client.ChunkAssignments(ctx, id, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if as.ChunkSize != 64<<20 {
			t.Errorf("chunk size %d", as.ChunkSize)
		}
		out := map[string]string{}
		for _, c := range as.Chunks {
			if c.SizeBytes != 64<<20 {
				t.Errorf("chunk %s size %d", c.ID, c.SizeBytes)
			}
			out[c.ID] = c.State
		}
		return out
	}
	for _, m := range v.Sets[0].Members {
		id := a
		if m.Chunkserver == "b" {
			id = b
		}
		if st := assignments(id)[m.ChunkID]; st != api.ChunkActive {
			t.Fatalf("chunk %s on %s: state %q, want active", m.ChunkID, m.Chunkserver, st)
		}
	}
	chunkA, chunkB := v.Sets[0].Members[0].ChunkID, v.Sets[0].Members[1].ChunkID
	if v.Sets[0].Members[0].Chunkserver != "a" {
		chunkA, chunkB = chunkB, chunkA
	}

	// An active chunk cannot be acknowledged as deleted.
	ae := wantCode(t, ts.Client.AckChunkDeleted(ctx, a, chunkA), api.CodeConflict, http.StatusConflict)
	if !strings.Contains(ae.Message, "active") {
		t.Errorf("message %q", ae.Message)
	}
	if err := ts.Client.DeleteVolume(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if st := assignments(a)[chunkA]; st != api.ChunkDeleting {
		t.Fatalf("after volume delete: %q, want deleting", st)
	}
	// Only the chunk's own server may acknowledge it, and only a UUID is a chunk ID.
	wantCode(t, ts.Client.AckChunkDeleted(ctx, b, chunkA), api.CodeNotFound, http.StatusNotFound)
	wantCode(t, ts.Client.AckChunkDeleted(ctx, a, "not-a-uuid"), api.CodeInvalidArgument, http.StatusBadRequest)
	if err := ts.Client.AckChunkDeleted(ctx, a, chunkA); err != nil {
		t.Fatal(err)
	}
	if got := assignments(a); len(got) != 0 {
		t.Errorf("a still has %v", got)
	}
	if got := assignments(b); got[chunkB] != api.ChunkDeleting || len(got) != 1 {
		t.Errorf("b has %v", got)
	}
	// A second acknowledgement finds nothing.
	wantCode(t, ts.Client.AckChunkDeleted(ctx, a, chunkA), api.CodeNotFound, http.StatusNotFound)
	if err := ts.Client.AckChunkDeleted(ctx, b, chunkB); err != nil {
		t.Fatal(err)
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM chunks`); n != 0 {
		t.Errorf("%d chunks left", n)
	}
}
