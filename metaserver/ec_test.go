package metaserver

import (
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/migrations"
)

func TestParseLayout(t *testing.T) {
	t.Parallel()
	const forms = "use mirror:2, mirror:3 or ec:K+M such as ec:4+2"
	tests := []struct {
		in              string
		width, data     int
		efficiency      float64
		wantErrContains string
	}{
		{in: "mirror:2", width: 2, data: 1, efficiency: 0.5},
		{in: "mirror:3", width: 3, data: 1, efficiency: 1.0 / 3},
		{in: "ec:2+1", width: 3, data: 2, efficiency: 2.0 / 3},
		{in: "ec:4+2", width: 6, data: 4, efficiency: 4.0 / 6},
		{in: "ec:8+3", width: 11, data: 8, efficiency: 8.0 / 11},
		{in: "ec:2+18", width: 20, data: 2, efficiency: 0.1},
		{in: "ec:19+1", width: 20, data: 19, efficiency: 0.95},
		{in: "", wantErrContains: `unknown layout ""`},
		{in: "mirror:1", wantErrContains: "unknown layout"},
		{in: "mirror:4", wantErrContains: "unknown layout"},
		{in: "ec:1+1", wantErrContains: "K = 1 data shards is too few"},
		{in: "ec:4+0", wantErrContains: "unknown layout"},
		{in: "ec:0+2", wantErrContains: "unknown layout"},
		{in: "ec:04+2", wantErrContains: "unknown layout"},
		{in: "ec:4+2 ", wantErrContains: "unknown layout"},
		{in: "EC:4+2", wantErrContains: "unknown layout"},
		{in: "ec:4-2", wantErrContains: "unknown layout"},
		{in: "ec:4+", wantErrContains: "unknown layout"},
		{in: "ec:100+2", wantErrContains: "unknown layout"},
		{in: "ec:19+2", wantErrContains: "21 members per set, at most 20"},
		{in: "ec:10+10", width: 20, data: 10, efficiency: 0.5},
		{in: "ec:11+10", wantErrContains: "21 members per set"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			l, err := api.ParseLayout(tt.in)
			if tt.wantErrContains != "" {
				if !api.IsInvalidArgument(err) || !strings.Contains(err.Error(), tt.wantErrContains) || !strings.Contains(err.Error(), forms) {
					t.Fatalf("ParseLayout(%q) = %+v, %v; want invalid_argument containing %q and %q", tt.in, l, err, tt.wantErrContains, forms)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.String() != tt.in || l.Width() != tt.width || l.DataChunks() != tt.data || math.Abs(l.Efficiency()-tt.efficiency) > 1e-9 {
				t.Errorf("ParseLayout(%q) = %+v: %s, width %d, data %d, efficiency %v", tt.in, l, l, l.Width(), l.DataChunks(), l.Efficiency())
			}
		})
	}
}

func TestECVolumeValidation(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for i := range 6 {
		ts.addChunkserver(t, fmt.Sprintf("cs-%d", i), "", 100*gib)
	}
	const forms = "use mirror:2, mirror:3 or ec:K+M such as ec:4+2"
	tests := []struct {
		name     string
		req      api.CreateVolumeRequest
		contains string
	}{
		{"one data shard", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:1+2"}, forms},
		{"no parity", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+0"}, forms},
		{"too wide", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:16+5"}, forms},
		{"raid5 spelling", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "raid5"}, forms},
		{"stripe unit not a power of two", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+2", StripeUnit: 96 << 10},
			"stripe_unit 98304 must be a power of two from 4096 (4 KiB) to 1048576 (1 MiB)"},
		{"stripe unit too small", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+2", StripeUnit: 2048}, "must be a power of two"},
		{"stripe unit too large", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+2", StripeUnit: 2 << 20}, "must be a power of two"},
		{"negative stripe unit", api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+2", StripeUnit: -65536}, "must be a power of two"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ts.Client.CreateVolume(ctx, tt.req)
			ae := wantCode(t, err, api.CodeInvalidArgument, 400)
			if !strings.Contains(ae.Message, tt.contains) {
				t.Errorf("message %q does not contain %q", ae.Message, tt.contains)
			}
		})
	}

	// More members than fault domains: refused with the exact message.
	for _, tt := range []struct{ layout, msg string }{
		{"ec:4+3", "ec:4+3 needs 7 chunkservers in distinct fault domains; 6 are online"},
		{"ec:8+3", "ec:8+3 needs 11 chunkservers in distinct fault domains; 6 are online"},
	} {
		_, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: tt.layout})
		if ae := wantCode(t, err, api.CodeUnsatisfiable, 409); ae.Message != tt.msg {
			t.Errorf("message %q, want %q", ae.Message, tt.msg)
		}
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM volumes`); n != 0 {
		t.Errorf("%d volumes after refusals, want 0", n)
	}
	// 4+2 fits on exactly six.
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "ec:4+2"})
	if err != nil {
		t.Fatal(err)
	}
	if v.StripeUnit != api.DefaultStripeUnit || len(v.Sets) != 1 || len(v.Sets[0].Members) != 6 || v.Sets[0].SizeBytes != 4096 {
		t.Errorf("volume = %+v", v)
	}
}

func TestECPlacementExactMessageWithThreeOnline(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ts.addChunkserver(t, n, "", 100*gib)
	}
	_, err := ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: "v", SizeBytes: 1 << 30, Layout: "ec:4+2"})
	const want = "ec:4+2 needs 6 chunkservers in distinct fault domains; 3 are online"
	if ae := wantCode(t, err, api.CodeUnsatisfiable, 409); ae.Message != want {
		t.Errorf("message %q, want %q", ae.Message, want)
	}
	// Servers beyond the fault domains do not count as domains.
	for _, n := range []string{"cs-d", "cs-e", "cs-f"} {
		ts.addChunkserver(t, n, "cs-a", 100*gib)
	}
	_, err = ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: "v", SizeBytes: 1 << 30, Layout: "ec:4+2"})
	const want2 = "ec:4+2 needs 6 chunkservers in distinct fault domains; 6 are online in 3 fault domains"
	if ae := wantCode(t, err, api.CodeUnsatisfiable, 409); ae.Message != want2 {
		t.Errorf("message %q, want %q", ae.Message, want2)
	}
}

// TestECSetsSizesAndPlacement creates volumes of 2+1, 4+2 and 8+3 on twelve
// chunkservers in six and twelve fault domains and checks the sets, their
// sizes, the members' shard order and fault domains, and the raw bytes.
func TestECSetsSizesAndPlacement(t *testing.T) {
	t.Parallel()
	const chunk = 64 << 20
	ts := startServer(t, Config{ChunkSize: chunk})
	ctx := t.Context()
	domainOf := map[string]string{}
	for i := range 12 {
		name, domain := fmt.Sprintf("cs-%02d", i), fmt.Sprintf("rack-%d", i%6)
		if i >= 6 {
			// The second six are their own domains, so 8+3 has 12 domains
			// in all: racks 0-5 and cs-06..cs-11.
			domain = name
		}
		ts.addChunkserver(t, name, domain, 100*gib)
		domainOf[name] = domain
	}
	tests := []struct {
		layout     string
		size       int64
		stripeUnit int64
		wantUnit   int64
		wantSets   []int64 // set sizes
	}{
		// 2+1 holds 128 MiB per set.
		{layout: "ec:2+1", size: 300 << 20, wantUnit: 64 << 10, wantSets: []int64{128 << 20, 128 << 20, 44 << 20}},
		// 4+2 holds 256 MiB per set.
		{layout: "ec:4+2", size: 1 << 30, stripeUnit: 4096, wantUnit: 4096, wantSets: []int64{256 << 20, 256 << 20, 256 << 20, 256 << 20}},
		// 8+3 holds 512 MiB per set.
		{layout: "ec:8+3", size: 600 << 20, stripeUnit: 1 << 20, wantUnit: 1 << 20, wantSets: []int64{512 << 20, 88 << 20}},
		// One set, partly used.
		{layout: "ec:4+2", size: 4096, wantUnit: 64 << 10, wantSets: []int64{4096}},
		// Mirrors ignore the stripe unit.
		{layout: "mirror:2", size: 100 << 20, stripeUnit: 4096, wantUnit: 0, wantSets: []int64{64 << 20, 36 << 20}},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s_%d", tt.layout, tt.size), func(t *testing.T) {
			name := fmt.Sprintf("vol-%d", i)
			l, err := api.ParseLayout(tt.layout)
			if err != nil {
				t.Fatal(err)
			}
			v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: name, SizeBytes: tt.size, Layout: tt.layout, StripeUnit: tt.stripeUnit})
			if err != nil {
				t.Fatal(err)
			}
			wantRaw := int64(len(tt.wantSets)) * int64(l.Width()) * chunk
			if v.Layout != tt.layout || v.StripeUnit != tt.wantUnit || v.SizeBytes != tt.size || v.RawBytes != wantRaw {
				t.Errorf("volume: layout %s stripe unit %d size %d raw %d; want %s, %d, %d, %d",
					v.Layout, v.StripeUnit, v.SizeBytes, v.RawBytes, tt.layout, tt.wantUnit, tt.size, wantRaw)
			}
			if len(v.Sets) != len(tt.wantSets) {
				t.Fatalf("%d sets, want %d", len(v.Sets), len(tt.wantSets))
			}
			var total int64
			for j, s := range v.Sets {
				total += s.SizeBytes
				if s.Index != j || s.SizeBytes != tt.wantSets[j] {
					t.Errorf("set %d: index %d size %d, want %d", j, s.Index, s.SizeBytes, tt.wantSets[j])
				}
				if len(s.Members) != l.Width() {
					t.Fatalf("set %d has %d members, want %d", j, len(s.Members), l.Width())
				}
				domains := map[string]bool{}
				for _, m := range s.Members {
					d := domainOf[m.Chunkserver]
					if domains[d] {
						t.Errorf("set %d: two members in fault domain %s", j, d)
					}
					domains[d] = true
				}
			}
			if total != tt.size {
				t.Errorf("set sizes add up to %d, want %d", total, tt.size)
			}
			// Member indexes are the shard indexes 0..K+M-1 of each set, in
			// the order the volume lists them.
			chunks, err := ts.Client.ListChunks(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if len(chunks) != len(tt.wantSets)*l.Width() {
				t.Fatalf("%d chunks, want %d", len(chunks), len(tt.wantSets)*l.Width())
			}
			for _, c := range chunks {
				m := v.Sets[c.SetIndex].Members[c.MemberIndex]
				if m.ChunkID != c.ID || c.SizeBytes != chunk {
					t.Errorf("chunk %s is member %d of set %d of size %d; the volume lists %s there", c.ID, c.MemberIndex, c.SetIndex, c.SizeBytes, m.ChunkID)
				}
			}
			got, err := ts.Client.GetVolume(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if got.RawBytes != wantRaw || got.StripeUnit != tt.wantUnit || got.Layout != tt.layout {
				t.Errorf("GetVolume: raw %d stripe unit %d layout %s", got.RawBytes, got.StripeUnit, got.Layout)
			}
			created := eventsOf(ts.events(t, name), api.EventVolumeCreated)
			if len(created) != 1 || !strings.Contains(created[0].Message, tt.layout) ||
				!strings.Contains(created[0].Message, fmt.Sprintf("%d sets of %d chunks", len(tt.wantSets), l.Width())) {
				t.Errorf("volume_created events %+v", created)
			}
		})
	}
	// 4+2 of 1 GiB stores its data at two thirds efficiency.
	v, err := ts.Client.GetVolume(ctx, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	if v.RawBytes != 1536<<20 || math.Abs(float64(v.SizeBytes)/float64(v.RawBytes)-2.0/3) > 1e-9 {
		t.Errorf("4+2 of 1 GiB: raw %d", v.RawBytes)
	}
	list, err := ts.Client.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(tests) {
		t.Errorf("%d volumes listed, want %d", len(list), len(tests))
	}
}

func TestECWidestLayoutAndReport(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for i := range api.MaxECWidth {
		ts.addChunkserver(t, fmt.Sprintf("cs-%02d", i), "", 100*gib)
	}
	hostID := ts.addHost(t, "h1")
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "wide", SizeBytes: 1 << 30, Layout: "ec:17+3", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Sets) != 1 || len(v.Sets[0].Members) != 20 || v.Sets[0].SizeBytes != 1<<30 || v.RawBytes != 20*64<<20 {
		t.Fatalf("volume: %d sets, raw %d", len(v.Sets), v.RawBytes)
	}
	// The host reports all 20 members of the set.
	var members []api.MemberReport
	for _, m := range v.Sets[0].Members {
		members = append(members, api.MemberReport{ChunkID: m.ChunkID, State: api.MemberInSync})
	}
	members[19].State = api.MemberDegraded
	rep := api.HostReport{Volumes: []api.VolumeReport{{Name: "wide", Epoch: v.Epoch,
		Sets: []api.SetReport{{Index: 0, Members: members}}}}}
	if err := ts.Client.HostReport(ctx, hostID, rep); err != nil {
		t.Fatal(err)
	}
	got, err := ts.Client.GetVolume(ctx, "wide")
	if err != nil {
		t.Fatal(err)
	}
	if got.Sets[0].Members[19].State != api.MemberDegraded || got.Sets[0].Members[0].State != api.MemberInSync {
		t.Errorf("member states after the report: %+v", got.Sets[0].Members)
	}
}

func TestClusterCapacity(t *testing.T) {
	t.Parallel()
	const chunk = 64 << 20
	ts := startServer(t, Config{ChunkSize: chunk})
	ctx := t.Context()
	c, err := ts.Client.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.RawCapacityBytes != 0 || c.RawFreeBytes != 0 || c.ProvisionedBytes != 0 || c.AllocatedBytes != 0 || c.ProvisionableBytes != 0 {
		t.Errorf("empty cluster: %+v", c)
	}
	for i := range 6 {
		_, err := ts.Client.RegisterChunkserver(ctx, api.RegisterChunkserverRequest{
			Name: fmt.Sprintf("cs-%d", i), Addr: "127.0.0.1:10809",
			Disks: []api.DiskInfo{
				{Path: "/a", CapacityBytes: 10 * gib, FreeBytes: 8 * gib},
				{Path: "/b", CapacityBytes: 5 * gib, FreeBytes: 5 * gib},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// A seventh server is offline: its disks do not count.
	ts.addChunkserver(t, "cs-offline", "", 100*gib)
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = 'cs-offline'`); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "ec", SizeBytes: 1 << 30, Layout: "ec:4+2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "m", SizeBytes: 100 << 20, Layout: "mirror:3"}); err != nil {
		t.Fatal(err)
	}
	c, err = ts.Client.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// ec: 4 sets × 6 chunks; m: 2 sets × 3 chunks.
	wantAlloc := int64(4*6+2*3) * chunk
	if c.RawCapacityBytes != 6*15*gib || c.RawFreeBytes != 6*13*gib || c.ProvisionedBytes != wantAlloc {
		t.Errorf("cluster capacity %d free %d provisioned %d; want %d, %d, %d",
			c.RawCapacityBytes, c.RawFreeBytes, c.ProvisionedBytes, 6*15*gib, 6*13*gib, wantAlloc)
	}
	// A deleted volume's chunks stay allocated until their chunkservers
	// acknowledge the deletion.
	if err := ts.Client.DeleteVolume(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	if c, err = ts.Client.Cluster(ctx); err != nil || c.ProvisionedBytes != wantAlloc {
		t.Errorf("after the delete: %+v, %v; want provisioned %d", c, err, wantAlloc)
	}
	chunks, err := ts.Client.ListChunks(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	acked := 0
	for _, ch := range chunks {
		if ch.State != api.ChunkDeleting {
			continue
		}
		var id int64
		for _, s := range mustServers(t, ts) {
			if s.Name == ch.Chunkserver {
				id = s.ID
			}
		}
		if err := ts.Client.AckChunkDeleted(ctx, id, ch.ID); err != nil {
			t.Fatal(err)
		}
		acked++
	}
	if acked != 6 {
		t.Fatalf("acknowledged %d deletions, want 6", acked)
	}
	if c, err = ts.Client.Cluster(ctx); err != nil || c.ProvisionedBytes != 24*chunk {
		t.Errorf("after the acknowledgements: %+v, %v; want provisioned %d", c, err, 24*chunk)
	}

	// What the chunks take on disk, as heartbeats report it.
	cs0 := mustServers(t, ts)[0]
	if err := ts.Client.ChunkserverHeartbeat(ctx, cs0.ID, api.ChunkserverHeartbeat{Disks: []api.DiskInfo{
		{Path: "/a", CapacityBytes: 10 * gib, FreeBytes: 8 * gib, AllocatedBytes: gib},
		{Path: "/b", CapacityBytes: 5 * gib, FreeBytes: 5 * gib},
	}}); err != nil {
		t.Fatal(err)
	}
	// Provisionable: 1 × 78 GiB free − (1.5 GiB provisioned − 1 GiB written).
	if c, err = ts.Client.Cluster(ctx); err != nil || c.AllocatedBytes != gib || c.Overcommit != 1 || c.ProvisionableBytes != 78*gib-gib/2 {
		t.Fatalf("after a heartbeat with allocated bytes: %+v, %v", c, err)
	}

	// The capacity guard.
	_, err = ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "big", SizeBytes: 1 << 40, Layout: "mirror:2"})
	ae := wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict)
	for _, want := range []string{`"big" needs 2.00 TiB of raw space`, "32768 chunks of 64 MiB", "only 77.5 GiB more can be provisioned",
		"78.0 GiB free", "overcommit 1,", "512 MiB promised", "--overcommit"} {
		if !strings.Contains(ae.Message, want) {
			t.Errorf("refusal %q does not say %q", ae.Message, want)
		}
	}
	t.Logf("1 TiB refused: %s", ae.Message)
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "fits", SizeBytes: 30 * gib, Layout: "mirror:2"}); err != nil {
		t.Fatalf("60 GiB raw of 77.5 GiB provisionable: %v", err)
	}
	_, err = ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "more", SizeBytes: 10 * gib, Layout: "mirror:2"})
	wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict)
	if vs, err := ts.Client.ListVolumes(ctx); err != nil || len(vs) != 2 {
		t.Errorf("volumes after the refusals: %+v, %v", vs, err)
	}
	// A metaserver with --overcommit 2 allows it.
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	ts2 := startServer(t, Config{DatabaseURL: ts.DBURL, ChunkSize: chunk, Overcommit: 2})
	if _, err := ts2.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "more", SizeBytes: 10 * gib, Layout: "mirror:2"}); err != nil {
		t.Fatalf("with overcommit 2: %v", err)
	}
	for _, bad := range []float64{-1, 0.01, 1000, math.NaN()} {
		if _, err := New(Config{DatabaseURL: ts.DBURL, Overcommit: bad}); err == nil || !strings.Contains(err.Error(), "--overcommit") {
			t.Errorf("overcommit %g: %v", bad, err)
		}
	}
}

func mustServers(t *testing.T, ts *testServer) []api.Chunkserver {
	t.Helper()
	ss, err := ts.Client.ListChunkservers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return ss
}

// TestMigrationKeepsMirrorVolumes applies migration 0003 to a schema that
// already holds a mirror volume: it keeps its layout, gets no stripe unit
// and no access control.
func TestMigrationKeepsMirrorVolumes(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	db := newPool(t, url)
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	all, err := loadMigrations(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	old := fstest.MapFS{}
	for _, m := range all {
		if m.Version < 3 {
			old[m.Name] = &fstest.MapFile{Data: []byte(m.SQL)}
		}
	}
	if v, err := migrate(ctx, db, old, log); err != nil || v != 2 {
		t.Fatalf("migrate to 2: %d, %v", v, err)
	}
	if _, err := db.Exec(ctx, `
		INSERT INTO cluster (chunk_size, secret) VALUES (67108864, repeat('ab', 32));
		INSERT INTO volumes (name, size_bytes, layout) VALUES ('old', 4096, 'mirror:2')`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate(ctx, db, migrations.FS, log); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{DatabaseURL: url})
	v, err := ts.Client.GetVolume(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if v.Layout != "mirror:2" || v.StripeUnit != 0 || v.Auth.CHAPUser != "" || v.Auth.AllowedInitiators == nil || len(v.Auth.AllowedInitiators) != 0 {
		t.Errorf("migrated volume %+v", v)
	}
	// The schema refuses what the API would refuse.
	for _, bad := range []string{
		`UPDATE volumes SET layout = 'ec:4+2' WHERE name = 'old'`,   // ec without a stripe unit
		`UPDATE volumes SET stripe_unit = 65536 WHERE name = 'old'`, // a mirror with one
		`UPDATE volumes SET layout = 'ec:4+2', stripe_unit = 3000 WHERE name = 'old'`,
		`UPDATE volumes SET layout = 'raid5' WHERE name = 'old'`,
		`UPDATE volumes SET chap_user = 'u' WHERE name = 'old'`,                           // a user without a secret
		`UPDATE volumes SET mutual_user = 'm', mutual_secret = '\x01' WHERE name = 'old'`, // mutual without one-way
	} {
		if err := ts.exec(t, bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

// TestFullChunkserver: a chunkserver whose disks are nearly full is listed
// full and receives no new chunk; one with room again is used again.
func TestFullChunkserver(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	ids := map[string]int64{}
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ids[n] = ts.addChunkserver(t, n, "", 10*gib)
	}
	beat := func(name string, free int64, refused bool) {
		t.Helper()
		if err := ts.Client.ChunkserverHeartbeat(ctx, ids[name], api.ChunkserverHeartbeat{
			Disks: []api.DiskInfo{{Path: "/srv/" + name, CapacityBytes: 10 * gib, FreeBytes: free, OutOfSpace: refused}}}); err != nil {
			t.Fatal(err)
		}
	}
	checkFull := func(full string) {
		t.Helper()
		list, err := ts.Client.ListChunkservers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list {
			if s.Full != (s.Name == full) || s.State != api.StateOnline {
				t.Errorf("%s: state %s full %v", s.Name, s.State, s.Full)
			}
		}
	}
	// A chunkserver that refused a write for lack of space is full
	// whatever it has left.
	beat("cs-b", 2*gib, true)
	checkFull("cs-b")
	beat("cs-b", 2*gib, false)
	beat("cs-c", 50<<20, false) // below 1% of 10 GiB
	checkFull("cs-c")
	for i := range 4 {
		v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: fmt.Sprintf("v%d", i), SizeBytes: 64 << 20, Layout: "mirror:2"})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range v.Sets[0].Members {
			if m.Chunkserver == "cs-c" {
				t.Fatalf("a new chunk went to the full chunkserver: %+v", v.Sets[0].Members)
			}
		}
	}
	_, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "three", SizeBytes: 64 << 20, Layout: "mirror:3"})
	wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict)
	beat("cs-c", 5*gib, false)
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "three", SizeBytes: 64 << 20, Layout: "mirror:3"}); err != nil {
		t.Fatalf("with room again: %v", err)
	}
}
