package metaserver

import (
	"net/http"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestChunkserverRegistrationIsIdempotent(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	req := api.RegisterChunkserverRequest{
		Name: "cs-1", Addr: "127.0.0.1:10809",
		Disks: []api.DiskInfo{
			{Path: "/d1", CapacityBytes: 10 * gib, FreeBytes: 9 * gib},
			{Path: "/d2", CapacityBytes: 20 * gib, FreeBytes: 20 * gib},
		},
	}
	r1, err := ts.Client.RegisterChunkserver(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID <= 0 || r1.ChunkSize != 64<<20 {
		t.Fatalf("response %+v", r1)
	}
	other := ts.addChunkserver(t, "cs-2", "", gib)
	if other == r1.ID {
		t.Fatal("two chunkservers share an ID")
	}

	// Again under the same name: same ID, new address and fault domain, and
	// the disk list replaced (d1 gone, d2 updated, d3 new).
	req.Addr = "127.0.0.1:20809"
	req.FaultDomain = "rack-7"
	req.Disks = []api.DiskInfo{
		{Path: "/d2", CapacityBytes: 20 * gib, FreeBytes: 5 * gib},
		{Path: "/d3", CapacityBytes: 30 * gib, FreeBytes: 30 * gib},
	}
	r2, err := ts.Client.RegisterChunkserver(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r2.ID != r1.ID {
		t.Fatalf("re-registration changed the ID from %d to %d", r1.ID, r2.ID)
	}
	list, err := ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d chunkservers, want 2", len(list))
	}
	cs := list[0]
	if cs.Name != "cs-1" || cs.ID != r1.ID || cs.Addr != "127.0.0.1:20809" || cs.FaultDomain != "rack-7" ||
		cs.State != api.StateOnline || cs.CapacityBytes != 50*gib || cs.FreeBytes != 35*gib || cs.Chunks != 0 {
		t.Errorf("chunkserver = %+v", cs)
	}
	if list[1].FaultDomain != "cs-2" {
		t.Errorf("default fault domain = %q, want the name", list[1].FaultDomain)
	}
	disks, err := ts.Client.ListDisks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range disks {
		if d.Chunkserver == "cs-1" {
			paths = append(paths, d.Path)
			if d.Path == "/d2" && (d.CapacityBytes != 20*gib || d.FreeBytes != 5*gib) {
				t.Errorf("d2 = %+v", d)
			}
		}
	}
	if len(paths) != 2 || paths[0] != "/d2" || paths[1] != "/d3" {
		t.Errorf("cs-1 disks = %v, want [/d2 /d3]", paths)
	}
}

func TestDiskWithChunksSurvivesReregistration(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	ts.addChunkserver(t, "a", "", 10*gib)
	ts.addChunkserver(t, "b", "", 10*gib)
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 1 << 20, Layout: "mirror:2"}); err != nil {
		t.Fatal(err)
	}
	// a comes back with another disk: its old disk holds a chunk and stays,
	// with no capacity so that placement avoids it.
	_, err := ts.Client.RegisterChunkserver(ctx, api.RegisterChunkserverRequest{
		Name: "a", Addr: "127.0.0.1:1", Disks: []api.DiskInfo{{Path: "/new", CapacityBytes: gib, FreeBytes: gib}},
	})
	if err != nil {
		t.Fatal(err)
	}
	disks, err := ts.Client.ListDisks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]api.Disk{}
	for _, d := range disks {
		if d.Chunkserver == "a" {
			found[d.Path] = d
		}
	}
	if old, ok := found["/srv/a"]; !ok || old.CapacityBytes != 0 || len(found) != 2 {
		t.Errorf("disks of a = %+v", found)
	}
	chunks, err := ts.Client.ListChunks(ctx, "v")
	if err != nil || len(chunks) != 2 {
		t.Fatalf("chunks = %v, %v", chunks, err)
	}
}

func TestHeartbeatsAndOffline(t *testing.T) {
	t.Parallel()
	const offline = 700 * time.Millisecond
	ts := startServer(t, Config{OfflineAfter: offline, IOTimeout: 200 * time.Millisecond, LogPeriod: 2 * time.Second})
	ctx := t.Context()
	cs := ts.addChunkserver(t, "cs", "", 10*gib)
	host := ts.addHost(t, "h1")

	states := func() (string, string) {
		t.Helper()
		servers, err := ts.Client.ListChunkservers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		hosts, err := ts.Client.ListHosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return servers[0].State, hosts[0].State
	}
	if c, h := states(); c != api.StateOnline || h != api.StateOnline {
		t.Fatalf("after registration: chunkserver %s, host %s", c, h)
	}
	time.Sleep(offline + 300*time.Millisecond)
	if c, h := states(); c != api.StateOffline || h != api.StateOffline {
		t.Fatalf("after %v without heartbeat: chunkserver %s, host %s", offline, c, h)
	}
	before, err := ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = ts.Client.ChunkserverHeartbeat(ctx, cs, api.ChunkserverHeartbeat{
		Disks: []api.DiskInfo{{Path: "/srv/cs", CapacityBytes: 10 * gib, FreeBytes: 4 * gib}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.Client.HostHeartbeat(ctx, host); err != nil {
		t.Fatal(err)
	}
	if c, h := states(); c != api.StateOnline || h != api.StateOnline {
		t.Fatalf("after heartbeat: chunkserver %s, host %s", c, h)
	}
	after, err := ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !after[0].LastHeartbeat.After(before[0].LastHeartbeat) || after[0].FreeBytes != 4*gib {
		t.Errorf("heartbeat not recorded: before %+v after %+v", before[0], after[0])
	}

	// An offline chunkserver takes no new chunks.
	ts.addChunkserver(t, "cs-2", "", 10*gib)
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = 'cs'`); err != nil {
		t.Fatal(err)
	}
	_, err = ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:2"})
	ae := wantCode(t, err, api.CodeUnsatisfiable, http.StatusConflict)
	if ae.Message != "mirror:2 needs 2 chunkservers in distinct fault domains; 1 is online" {
		t.Errorf("message = %q", ae.Message)
	}
}

func TestHeartbeatErrors(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	cs := ts.addChunkserver(t, "cs", "", gib)
	// Another server's routes take only its credential.
	wantCode(t, ts.Client.ChunkserverHeartbeat(ctx, cs+100, api.ChunkserverHeartbeat{}), api.CodePermissionDenied, http.StatusForbidden)
	wantCode(t, ts.Client.HostHeartbeat(ctx, 12345), api.CodePermissionDenied, http.StatusForbidden)
	err := ts.Client.ChunkserverHeartbeat(ctx, cs, api.ChunkserverHeartbeat{
		Disks: []api.DiskInfo{{Path: "/elsewhere", CapacityBytes: gib, FreeBytes: gib}},
	})
	wantCode(t, err, api.CodeConflict, http.StatusConflict)
	err = ts.Client.ChunkserverHeartbeat(ctx, cs, api.ChunkserverHeartbeat{
		Disks: []api.DiskInfo{{Path: "/srv/cs", CapacityBytes: gib, FreeBytes: 2 * gib}},
	})
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	_, err = ts.Client.ChunkAssignments(ctx, cs+100, 0, 0)
	wantCode(t, err, api.CodePermissionDenied, http.StatusForbidden)
	_, err = ts.Client.HostVolumes(ctx, 12345, 0, 0)
	wantCode(t, err, api.CodePermissionDenied, http.StatusForbidden)
}

func TestHostRegistrationIsIdempotent(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	r1, err := ts.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h1", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := ts.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h1", ISCSIAddr: "127.0.0.1:3261"})
	if err != nil {
		t.Fatal(err)
	}
	r3, err := ts.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h2", ISCSIAddr: "127.0.0.1:3262"})
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID != r2.ID || r3.ID == r1.ID {
		t.Fatalf("IDs %d %d %d", r1.ID, r2.ID, r3.ID)
	}
	hosts, err := ts.Client.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 2 || hosts[0].Name != "h1" || hosts[0].ISCSIAddr != "127.0.0.1:3261" || hosts[0].State != api.StateOnline {
		t.Errorf("hosts = %+v", hosts)
	}
}

func TestRegistrationValidation(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	disk := []api.DiskInfo{{Path: "/d", CapacityBytes: gib, FreeBytes: gib}}
	chunkservers := []struct {
		name string
		req  api.RegisterChunkserverRequest
	}{
		{"empty name", api.RegisterChunkserverRequest{Addr: "127.0.0.1:1", Disks: disk}},
		{"name with a slash", api.RegisterChunkserverRequest{Name: "a/b", Addr: "127.0.0.1:1", Disks: disk}},
		{"addr without port", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1", Disks: disk}},
		{"addr port zero", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:0", Disks: disk}},
		{"wildcard addr", api.RegisterChunkserverRequest{Name: "a", Addr: "0.0.0.0:10809", Disks: disk}},
		{"addr without host", api.RegisterChunkserverRequest{Name: "a", Addr: ":10809", Disks: disk}},
		{"bad fault domain", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:1", FaultDomain: "rack 1", Disks: disk}},
		{"no disks", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:1"}},
		{"free above capacity", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:1",
			Disks: []api.DiskInfo{{Path: "/d", CapacityBytes: 1, FreeBytes: 2}}}},
		{"negative capacity", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:1",
			Disks: []api.DiskInfo{{Path: "/d", CapacityBytes: -1}}}},
		{"duplicate disk", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:1", Disks: append(disk, disk...)}},
		{"empty disk path", api.RegisterChunkserverRequest{Name: "a", Addr: "127.0.0.1:1",
			Disks: []api.DiskInfo{{CapacityBytes: 1, FreeBytes: 1}}}},
	}
	for _, tt := range chunkservers {
		t.Run("chunkserver/"+tt.name, func(t *testing.T) {
			_, err := ts.Client.RegisterChunkserver(ctx, tt.req)
			wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
		})
	}
	hosts := []struct {
		name string
		req  api.RegisterHostRequest
	}{
		{"empty name", api.RegisterHostRequest{ISCSIAddr: "127.0.0.1:3260"}},
		{"long name", api.RegisterHostRequest{Name: string(make([]byte, 64)), ISCSIAddr: "127.0.0.1:3260"}},
		{"no addr", api.RegisterHostRequest{Name: "h"}},
		{"wildcard addr", api.RegisterHostRequest{Name: "h", ISCSIAddr: "[::]:3260"}},
	}
	for _, tt := range hosts {
		t.Run("host/"+tt.name, func(t *testing.T) {
			_, err := ts.Client.RegisterHost(ctx, tt.req)
			wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
		})
	}
	if list, err := ts.Client.ListChunkservers(ctx); err != nil || len(list) != 0 {
		t.Errorf("chunkservers after refused registrations: %v, %v", list, err)
	}
}
