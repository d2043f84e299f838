package metaserver

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/budget"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/migrations"
)

// events lists every event of volume (or all with ""), oldest first.
func (ts *testServer) events(t *testing.T, volume string) []api.Event {
	t.Helper()
	evs, err := ts.Client.ListEvents(t.Context(), volume, 0, api.MaxEvents)
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	return evs
}

// eventsOf returns the events of kind among evs.
func eventsOf(evs []api.Event, kind string) []api.Event {
	var out []api.Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// clusterSecret reads the secret straight from the cluster row.
func (ts *testServer) clusterSecret(t *testing.T) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(t.Context(), `SELECT secret FROM cluster`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestClusterSecretAndBudgetAtRegistration(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	cfg := Config{DatabaseURL: url, IOTimeout: 2 * time.Second, OfflineAfter: 8 * time.Second, LogPeriod: 30 * time.Second}
	first := startServer(t, cfg)
	ctx := t.Context()
	cs, err := first.Client.RegisterChunkserver(ctx, chunkserverReq("cs-a"))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := hex.DecodeString(cs.ClusterSecret); err != nil || len(b) != 32 {
		t.Fatalf("cluster secret %q is not 32 bytes of hex", cs.ClusterSecret)
	}
	if cs.ClusterSecret != first.clusterSecret(t) {
		t.Errorf("registration secret %q differs from the cluster row's", cs.ClusterSecret)
	}
	if cs.IOTimeoutMS != 2000 || cs.LogPeriodMS != 30000 {
		t.Errorf("chunkserver registration budget: %+v", cs)
	}
	h, err := first.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h1", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil {
		t.Fatal(err)
	}
	if h.IOTimeoutMS != 2000 || h.LogPeriodMS != 30000 {
		t.Errorf("host registration: %+v, want the budget", h)
	}
	c, err := first.Client.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.IOTimeoutMS != 2000 || c.OfflineAfterMS != 8000 || c.LogPeriodMS != 30000 || c.OfflineAfterSeconds != 8 {
		t.Errorf("cluster budget: %+v", c)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	// A restart keeps the secret; a new cluster gets another.
	second := startServer(t, cfg)
	again, err := second.Client.RegisterChunkserver(ctx, chunkserverReq("cs-a"))
	if err != nil {
		t.Fatal(err)
	}
	if again.ClusterSecret != cs.ClusterSecret || again.ID != cs.ID {
		t.Errorf("after a restart: secret %q id %d, want %q id %d", again.ClusterSecret, again.ID, cs.ClusterSecret, cs.ID)
	}
	other := startServer(t, Config{})
	o, err := other.Client.RegisterChunkserver(ctx, chunkserverReq("cs-a"))
	if err != nil {
		t.Fatal(err)
	}
	if o.ClusterSecret == cs.ClusterSecret {
		t.Error("two clusters share a secret")
	}
}

func TestTimeoutBudgetRejected(t *testing.T) {
	const db = "postgres://postgres@127.0.0.1:5432/x"
	tests := []struct {
		name  string
		cfg   Config
		rules []string
	}{
		{"t_io above offline_after", Config{IOTimeout: 30 * time.Second}, []string{"rule t_io < offline_after", "rule T >= 3*t_io"}},
		{"T below 3 t_io", Config{LogPeriod: 12 * time.Second}, []string{"rule T >= 3*t_io"}},
		{"T below offline_after", Config{IOTimeout: time.Second, OfflineAfter: 20 * time.Second, LogPeriod: 15 * time.Second}, []string{"rule T > offline_after"}},
		{"T equal to offline_after", Config{IOTimeout: time.Second, OfflineAfter: 10 * time.Second, LogPeriod: 10 * time.Second}, []string{"rule T > offline_after"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.DatabaseURL = db
			_, err := New(tt.cfg)
			if !errors.Is(err, budget.ErrBudget) {
				t.Fatalf("New = %v, want a budget error", err)
			}
			for _, r := range tt.rules {
				if !strings.Contains(err.Error(), r) {
					t.Errorf("error %q does not name %q", err, r)
				}
			}
		})
	}
	for _, cfg := range []Config{{IOTimeout: -time.Second}, {LogPeriod: -time.Second}} {
		cfg.DatabaseURL = db
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "must not be negative") {
			t.Errorf("New(%+v) = %v", cfg, err)
		}
	}
	s, err := New(Config{DatabaseURL: db})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.IOTimeout != 5*time.Second || s.cfg.LogPeriod != 60*time.Second {
		t.Errorf("defaults: t_io %v, T %v", s.cfg.IOTimeout, s.cfg.LogPeriod)
	}
	if _, err := New(Config{DatabaseURL: db, IOTimeout: 200 * time.Millisecond, OfflineAfter: 2 * time.Second, LogPeriod: 3 * time.Second}); err != nil {
		t.Errorf("a fast test budget is refused: %v", err)
	}
}

func TestBitmapModes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	tests := []struct{ give, want string }{
		{"", api.BitmapRemb},
		{"remb", api.BitmapRemb},
		{"internal", api.BitmapInternal},
		{"none", api.BitmapNone},
	}
	for i, tt := range tests {
		name := "v" + string(rune('0'+i))
		v, err := ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: name, SizeBytes: 1 << 20, Layout: "mirror:2", Bitmap: tt.give})
		if err != nil {
			t.Fatalf("bitmap %q: %v", tt.give, err)
		}
		got, err := ts.Client.GetVolume(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if v.Bitmap != tt.want || got.Bitmap != tt.want {
			t.Errorf("bitmap %q: created %q, read back %q; want %q", tt.give, v.Bitmap, got.Bitmap, tt.want)
		}
	}
	for _, bad := range []string{"raid5", "REMB", " remb"} {
		_, err := ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: "bad", SizeBytes: 1 << 20, Layout: "mirror:2", Bitmap: bad})
		ae := wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
		for _, m := range []string{"remb", "internal", "none", bad} {
			if !strings.Contains(ae.Message, m) {
				t.Errorf("bitmap %q: message %q does not mention %q", bad, ae.Message, m)
			}
		}
	}
	_, err := ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: "ecint", SizeBytes: 1 << 20, Layout: "ec:2+1", Bitmap: "internal"})
	if ae := wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest); !strings.Contains(ae.Message, "for mirror layouts") {
		t.Errorf("ec with bitmap internal: %q", ae.Message)
	}
}

func TestExportNamesAndAttach(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	for i, n := range []string{"cs-a", "cs-b"} {
		req := chunkserverReq(n)
		req.Addr = fmt.Sprintf("127.0.0.1:1080%d", i)
		req.ControlAddr = fmt.Sprintf("127.0.0.1:1180%d", i)
		csr, _, err := pki.NewRequest("chunkserver " + n)
		if err != nil {
			t.Fatal(err)
		}
		req.ControlCSR = string(csr)
		resp, err := ts.Client.RegisterChunkserver(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		// The control API's certificate: the cluster CA's, for a
		// chunkserver, valid for the control address's host.
		c, err := pki.Verify([]byte(resp.ClusterCA), []byte(resp.ControlCert), pki.Chunkserver)
		if err != nil || c.VerifyHostname("127.0.0.1") != nil || c.Subject.CommonName != "chunkserver "+n {
			t.Fatalf("control certificate of %s: %v", n, err)
		}
	}
	h1 := ts.addHost(t, "h1")
	h2 := ts.addHost(t, "h2")
	secret := ts.clusterSecret(t)

	// checkExports checks every member's export name of v against the
	// volume's host and epoch and returns them.
	checkExports := func(v *api.Volume, host string, epoch int64) []string {
		t.Helper()
		var out []string
		for _, s := range v.Sets {
			for _, m := range s.Members {
				if host == "" {
					if m.Export != "" {
						t.Errorf("unattached volume has export %q", m.Export)
					}
					continue
				}
				e, err := api.ParseExportName(m.Export)
				if err != nil {
					t.Fatalf("export %q: %v", m.Export, err)
				}
				if e.Chunk != m.ChunkID || e.Host != host || e.Epoch != epoch {
					t.Errorf("export %q: want chunk %s host %s epoch %d", m.Export, m.ChunkID, host, epoch)
				}
				if !e.ValidToken(secret) {
					t.Errorf("export %q: token does not validate with the cluster secret", m.Export)
				}
				if e.ValidToken(strings.Repeat("00", 32)) {
					t.Errorf("export %q validates with another secret", m.Export)
				}
				if m.ControlAddr == "" || !strings.HasPrefix(m.ControlAddr, "127.0.0.1:1180") {
					t.Errorf("member control addr %q", m.ControlAddr)
				}
				out = append(out, m.Export)
			}
		}
		return out
	}

	free, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "free", SizeBytes: 1 << 20, Layout: "mirror:2"})
	if err != nil {
		t.Fatal(err)
	}
	checkExports(free, "", 1)

	// The operator's answers carry no export name: only the host's do.
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "vol", SizeBytes: 100 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	checkExports(v, "", 1)
	hostView := func(id int64) *api.Volume {
		t.Helper()
		hv, err := ts.Client.HostVolumes(ctx, id, 0, 0)
		if err != nil || len(hv.Volumes) != 1 {
			t.Fatalf("host volumes: %+v, %v", hv, err)
		}
		return &hv.Volumes[0]
	}
	first := checkExports(hostView(h1), "h1", 1)
	for _, path := range []string{"/api/v1/volumes", "/api/v1/volumes/vol"} {
		if b := ts.rawGet(t, path); strings.Contains(string(b), "token=") || strings.Contains(string(b), `"export"`) {
			t.Errorf("GET %s carries export names: %s", path, b)
		}
	}

	// Read-only names for volume verify: their own token, the epoch's.
	ro, err := ts.Client.ReadExports(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ro.Sets[0].Members {
		e, err := api.ParseExportName(m.Export)
		if err != nil || !e.ReadOnly || e.Epoch != 1 || !e.ValidToken(secret) || slices.Contains(first, m.Export) {
			t.Errorf("read-only export %q: %+v, %v", m.Export, e, err)
		}
	}

	// Attach to h2: the epoch moves, every export name changes.
	v, err = ts.Client.AttachVolume(ctx, "vol", "h2")
	if err != nil {
		t.Fatal(err)
	}
	if v.Epoch != 2 || v.Host != "h2" || v.CleanDetach {
		t.Fatalf("after attach: %+v", v)
	}
	checkExports(v, "", 2)
	second := checkExports(hostView(h2), "h2", 2)
	for i := range second {
		if second[i] == first[i] {
			t.Errorf("export %q did not change with the epoch", second[i])
		}
	}
	if hv, err := ts.Client.HostVolumes(ctx, h1, 0, 0); err != nil || len(hv.Volumes) != 0 {
		t.Errorf("h1 still holds %+v, %v", hv, err)
	}

	// h2 detaches cleanly; moving back to h1 says so and resets the flag.
	report := api.HostReport{Volumes: []api.VolumeReport{{Name: "vol", Epoch: 2, CleanDetach: true}}}
	if err := ts.Client.HostReport(ctx, h2, report); err != nil {
		t.Fatal(err)
	}
	if got, _ := ts.Client.GetVolume(ctx, "vol"); !got.CleanDetach {
		t.Errorf("clean detach not recorded: %+v", got)
	}
	v, err = ts.Client.AttachVolume(ctx, "vol", "h1")
	if err != nil {
		t.Fatal(err)
	}
	if v.Epoch != 3 || v.CleanDetach {
		t.Errorf("after the third attach: epoch %d clean %v", v.Epoch, v.CleanDetach)
	}
	checkExports(v, "", 3)
	checkExports(hostView(h1), "h1", 3)

	var msgs []string
	for _, e := range eventsOf(ts.events(t, "vol"), api.EventVolumeAttached) {
		if e.Subject != "volume/vol" {
			t.Errorf("attach event subject %q", e.Subject)
		}
		msgs = append(msgs, e.Message)
	}
	want := []string{
		"attached to host h1 at epoch 1",
		"attached to host h2 at epoch 2; moved from host h1, which did not detach cleanly: the new host recovers from the LOG bitmaps",
		"attached to host h1 at epoch 3; moved from host h2, which detached cleanly",
	}
	if strings.Join(msgs, "\n") != strings.Join(want, "\n") {
		t.Errorf("attach events:\n%s\nwant:\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
	if n := len(eventsOf(ts.events(t, "vol"), api.EventVolumeDetached)); n != 1 {
		t.Errorf("%d volume_detached events, want 1", n)
	}

	list, err := ts.Client.ListChunkservers(ctx)
	if err != nil || len(list) != 2 || list[0].ControlAddr != "127.0.0.1:11800" || list[1].ControlAddr != "127.0.0.1:11801" {
		t.Errorf("chunkservers: %+v, %v", list, err)
	}
	csr, _, err := pki.NewRequest("x")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ addr, csr, want string }{
		{"0.0.0.0:9", string(csr), "control_addr"},
		{"127.0.0.1:9", "", "control_csr"},
		{"127.0.0.1:9", "junk", "control_csr"},
		{"127.0.0.1:9", strings.Repeat("A", pki.MaxRequestBytes+1), "control_csr"},
		{"", string(csr), "control_csr"},
	} {
		bad := chunkserverReq("cs-c")
		bad.ControlAddr, bad.ControlCSR = tt.addr, tt.csr
		_, err = ts.Client.RegisterChunkserver(ctx, bad)
		if ae := wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest); !strings.Contains(ae.Message, tt.want) {
			t.Errorf("message %q does not name %s", ae.Message, tt.want)
		}
	}
}

// reportFixture is a volume of two mirror:2 sets attached to host h1.
type reportFixture struct {
	ts     *testServer
	host   int64
	vol    *api.Volume
	member [2][2]string // chunk IDs by set and member
}

func newReportFixture(t *testing.T) *reportFixture {
	t.Helper()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	f := &reportFixture{ts: ts, host: ts.addHost(t, "h1")}
	ts.addHost(t, "h2")
	v, err := ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: "vol", SizeBytes: 100 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	f.vol = v
	for i := range 2 {
		for j := range 2 {
			f.member[i][j] = v.Sets[i].Members[j].ChunkID
		}
	}
	return f
}

// report builds a report of the fixture's volume at epoch with one set's
// members.
func (f *reportFixture) report(epoch int64, set int, dirty int64, members ...api.MemberReport) api.HostReport {
	return api.HostReport{Volumes: []api.VolumeReport{{Name: "vol", Epoch: epoch,
		Sets: []api.SetReport{{Index: set, DirtyBytes: dirty, Members: members}}}}}
}

func TestHostReportStatesProgressEvents(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	a, b := f.member[0][0], f.member[0][1]
	inSync := func(c string) api.MemberReport { return api.MemberReport{ChunkID: c, State: api.MemberInSync} }
	steps := []struct {
		name    string
		report  api.HostReport
		state   string // of member 1 of set 0 afterwards
		done    int64
		total   int64
		errText string
		dirty   int64
		kinds   []string // new events
		message string   // a fragment of the last new event
	}{
		{"degraded", f.report(1, 0, 3<<20, inSync(a), api.MemberReport{ChunkID: b, State: api.MemberDegraded, Error: "read tcp: i/o timeout"}),
			api.MemberDegraded, 0, 0, "read tcp: i/o timeout", 3 << 20, []string{api.EventMemberDegraded},
			"member 1 of set 0 (chunk " + b + " on chunkserver cs-"},
		{"still degraded", f.report(1, 0, 5<<20, inSync(a), api.MemberReport{ChunkID: b, State: api.MemberDegraded, Error: "read tcp: i/o timeout"}),
			api.MemberDegraded, 0, 0, "read tcp: i/o timeout", 5 << 20, nil, ""},
		{"resync starts", f.report(1, 0, 5<<20, inSync(a), api.MemberReport{ChunkID: b, State: api.MemberResyncing, ResyncDoneBytes: 1 << 20, ResyncTotalBytes: 5 << 20}),
			api.MemberResyncing, 1 << 20, 5 << 20, "", 5 << 20, []string{api.EventResyncStarted}, "is resyncing: 5.0 MiB (5242880 bytes) to copy"},
		{"resync progresses", f.report(1, 0, 2<<20, inSync(a), api.MemberReport{ChunkID: b, State: api.MemberResyncing, ResyncDoneBytes: 3 << 20, ResyncTotalBytes: 5 << 20}),
			api.MemberResyncing, 3 << 20, 5 << 20, "", 2 << 20, nil, ""},
		{"resync done", f.report(1, 0, 0, inSync(a), api.MemberReport{ChunkID: b, State: api.MemberInSync, ResyncDoneBytes: 5 << 20, ResyncTotalBytes: 5 << 20}),
			api.MemberInSync, 5 << 20, 5 << 20, "", 0, []string{api.EventResyncDone}, "in sync again: the resync copied 5.0 MiB (5242880 bytes)"},
		{"degraded again", f.report(1, 0, 4096, inSync(a), api.MemberReport{ChunkID: b, State: api.MemberDegraded, Error: "connection refused"}),
			api.MemberDegraded, 0, 0, "connection refused", 4096, []string{api.EventMemberDegraded}, ": connection refused"},
		{"back without resync", f.report(1, 0, 0, inSync(a), inSync(b)),
			api.MemberInSync, 0, 0, "", 0, []string{api.EventMemberInSync}, "in sync again without a resync"},
	}
	var seen int
	var since time.Time
	prevState := api.MemberInSync
	for _, st := range steps {
		before := time.Now()
		if err := f.ts.Client.HostReport(ctx, f.host, st.report); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		v, err := f.ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		m, other := v.Sets[0].Members[1], v.Sets[0].Members[0]
		if m.ChunkID != b || m.State != st.state || m.ResyncDoneBytes != st.done || m.ResyncTotalBytes != st.total || m.Error != st.errText {
			t.Errorf("%s: member %+v, want state %s done %d total %d error %q", st.name, m, st.state, st.done, st.total, st.errText)
		}
		if v.Sets[0].DirtyBytes != st.dirty || v.Sets[1].DirtyBytes != 0 {
			t.Errorf("%s: dirty bytes %d/%d, want %d/0", st.name, v.Sets[0].DirtyBytes, v.Sets[1].DirtyBytes, st.dirty)
		}
		if other.State != api.MemberInSync {
			t.Errorf("%s: member 0 is %s", st.name, other.State)
		}
		// StateSince moves with the state and only then.
		if st.state != prevState {
			if m.StateSince.Before(before.Add(-time.Second)) {
				t.Errorf("%s: state since %v, before the report at %v", st.name, m.StateSince, before)
			}
			since = m.StateSince
		} else if !since.IsZero() && !m.StateSince.Equal(since) {
			t.Errorf("%s: state since moved from %v to %v without a state change", st.name, since, m.StateSince)
		}
		prevState = st.state

		var evs []api.Event
		for _, e := range f.ts.events(t, "vol") {
			if strings.HasPrefix(e.Subject, "volume/vol/set/") {
				evs = append(evs, e)
			}
		}
		fresh := evs[seen:]
		seen = len(evs)
		var kinds []string
		for _, e := range fresh {
			kinds = append(kinds, e.Kind)
			if e.Subject != "volume/vol/set/0/member/1" {
				t.Errorf("%s: event subject %q", st.name, e.Subject)
			}
		}
		if strings.Join(kinds, ",") != strings.Join(st.kinds, ",") {
			t.Errorf("%s: new events %v, want %v", st.name, kinds, st.kinds)
		}
		if st.message != "" && (len(fresh) == 0 || !strings.Contains(fresh[len(fresh)-1].Message, st.message)) {
			t.Errorf("%s: events %+v, want a message containing %q", st.name, fresh, st.message)
		}
	}

	// A long error is stored cut at a character boundary.
	long := strings.Repeat("é", maxErrorLen)
	if err := f.ts.Client.HostReport(ctx, f.host, f.report(1, 1, 0, api.MemberReport{ChunkID: f.member[1][0], State: api.MemberDegraded, Error: long})); err != nil {
		t.Fatal(err)
	}
	v, _ := f.ts.Client.GetVolume(ctx, "vol")
	if e := v.Sets[1].Members[0].Error; len(e) > maxErrorLen || len(e) < maxErrorLen-1 || !strings.HasPrefix(long, e) {
		t.Errorf("long error stored as %d bytes", len(e))
	}
}

func TestZombieAndInvalidReports(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	ts := f.ts
	h2 := ts.queryInt(t, `SELECT id FROM hosts WHERE name = 'h2'`)
	degrade := api.MemberReport{ChunkID: f.member[0][1], State: api.MemberDegraded, Error: "gone"}
	if _, err := ts.Client.AttachVolume(ctx, "vol", "h2"); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "other", SizeBytes: 1 << 20, Layout: "mirror:2", Host: "h2"}); err != nil {
		t.Fatal(err)
	}
	other, _ := ts.Client.GetVolume(ctx, "other")

	conflicts := []struct {
		name     string
		host     int64
		report   api.HostReport
		contains string
	}{
		{"old host", f.host, f.report(1, 0, 1, degrade), "attached to host h2 at epoch 2"},
		{"old epoch", h2, f.report(1, 0, 1, degrade), "it is at epoch 2, the report is for epoch 1"},
		{"future epoch", h2, f.report(3, 0, 1, degrade), "epoch 2, the report is for epoch 3"},
		{"no such set", h2, f.report(2, 5, 1), "has no set 5"},
		{"member of another set", h2, f.report(2, 1, 1, degrade), "set 1 of volume \"vol\" has no member chunk"},
		{"member of another volume", h2, f.report(2, 0, 1, api.MemberReport{ChunkID: other.Sets[0].Members[0].ChunkID, State: api.MemberDegraded}), "has no member chunk"},
		{"deleted volume", h2, api.HostReport{Volumes: []api.VolumeReport{{Name: "gone", Epoch: 1}}}, `volume "gone" does not exist any more`},
	}
	for _, c := range conflicts {
		err := ts.Client.HostReport(ctx, c.host, c.report)
		if ae := wantCode(t, err, api.CodeConflict, http.StatusConflict); !strings.Contains(ae.Message, c.contains) ||
			!strings.Contains(ae.Message, "no longer holds") {
			t.Errorf("%s: message %q, want %q", c.name, ae.Message, c.contains)
		}
	}
	v, _ := ts.Client.GetVolume(ctx, "vol")
	for _, s := range v.Sets {
		for _, m := range s.Members {
			if m.State != api.MemberInSync || s.DirtyBytes != 0 {
				t.Fatalf("a refused report changed the volume: %+v", v)
			}
		}
	}
	if n := len(eventsOf(ts.events(t, "vol"), api.EventMemberDegraded)); n != 0 {
		t.Errorf("a refused report recorded %d events", n)
	}

	// A report with a current and a stale volume stores the current one
	// and still tells the host what it lost.
	mixed := api.HostReport{Volumes: []api.VolumeReport{
		{Name: "vol", Epoch: 1, Sets: []api.SetReport{{Index: 0, Members: []api.MemberReport{degrade}}}},
		{Name: "other", Epoch: 1, Sets: []api.SetReport{{Index: 0, DirtyBytes: 8192,
			Members: []api.MemberReport{{ChunkID: strings.ToUpper(other.Sets[0].Members[1].ChunkID), State: api.MemberDegraded, Error: "gone"}}}}},
	}}
	err := ts.Client.HostReport(ctx, h2, mixed)
	if ae := wantCode(t, err, api.CodeConflict, http.StatusConflict); !strings.Contains(ae.Message, `volume "vol"`) ||
		strings.Contains(ae.Message, `volume "other"`) || !strings.Contains(ae.Message, "rest of the report was stored") {
		t.Errorf("mixed report: %q", ae.Message)
	}
	o, _ := ts.Client.GetVolume(ctx, "other")
	if o.Sets[0].DirtyBytes != 8192 || o.Sets[0].Members[1].State != api.MemberDegraded {
		t.Errorf("the current part of a mixed report was not stored: %+v", o.Sets[0])
	}

	err = ts.Client.HostReport(ctx, 999, api.HostReport{})
	wantCode(t, err, api.CodePermissionDenied, http.StatusForbidden)

	invalids := []struct {
		name     string
		report   api.HostReport
		contains string
	}{
		{"unknown state", f.report(2, 0, 0, api.MemberReport{ChunkID: f.member[0][0], State: "sleeping"}), "unknown state"},
		{"negative dirty", f.report(2, 0, -1), "negative"},
		{"done above total", f.report(2, 0, 0, api.MemberReport{ChunkID: f.member[0][0], State: api.MemberResyncing, ResyncDoneBytes: 2, ResyncTotalBytes: 1}), "resync_done_bytes"},
		{"bad chunk", f.report(2, 0, 0, api.MemberReport{ChunkID: "x", State: api.MemberInSync}), "not a UUID"},
		{"chunk twice", f.report(2, 0, 0, api.MemberReport{ChunkID: f.member[0][0], State: api.MemberInSync}, api.MemberReport{ChunkID: f.member[0][0], State: api.MemberInSync}), "twice"},
		{"epoch 0", f.report(0, 0, 0), "epoch"},
		{"bad name", api.HostReport{Volumes: []api.VolumeReport{{Name: "Vol", Epoch: 1}}}, "invalid volume name"},
		{"volume twice", api.HostReport{Volumes: []api.VolumeReport{{Name: "vol", Epoch: 2}, {Name: "vol", Epoch: 2}}}, "twice"},
		{"negative set", f.report(2, -1, 0), "out of range"},
	}
	for _, c := range invalids {
		err := ts.Client.HostReport(ctx, h2, c.report)
		if ae := wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest); !strings.Contains(ae.Message, c.contains) {
			t.Errorf("%s: message %q, want %q", c.name, ae.Message, c.contains)
		}
	}
}

func TestEventsListing(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	ts.addHost(t, "h1")
	for _, name := range []string{"a", "b", "c"} {
		if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: name, SizeBytes: 1 << 20, Layout: "mirror:2"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ts.Client.AttachVolume(ctx, "b", "h1"); err != nil {
		t.Fatal(err)
	}
	if err := ts.Client.DeleteVolume(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	every := ts.events(t, "")
	var kinds []string
	var all []api.Event // the volumes' events
	for i, e := range every {
		if strings.HasPrefix(e.Kind, "volume_") {
			all = append(all, e)
		}
		kinds = append(kinds, e.Kind+" "+e.Subject)
		if i > 0 && e.ID <= every[i-1].ID {
			t.Errorf("events out of order: %d after %d", e.ID, every[i-1].ID)
		}
		if e.Time.IsZero() || e.Message == "" {
			t.Errorf("event %+v lacks time or message", e)
		}
	}
	want := "token_created token/admin,credential_issued chunkserver/cs-a,credential_issued chunkserver/cs-b,credential_issued host/h1,volume_created volume/a,volume_created volume/b,volume_created volume/c,volume_attached volume/b,volume_deleted volume/c"
	if strings.Join(kinds, ",") != want {
		t.Fatalf("events %v, want %s", kinds, want)
	}

	tests := []struct {
		name   string
		volume string
		after  int64
		limit  int
		want   []int64
	}{
		{"newest two", "", 0, 2, []int64{all[3].ID, all[4].ID}},
		{"after the second", "", all[1].ID, 0, []int64{all[2].ID, all[3].ID, all[4].ID}},
		{"after, limited", "", all[1].ID, 1, []int64{all[2].ID}},
		{"after the last", "", all[4].ID, 10, nil},
		{"one volume", "b", 0, 0, []int64{all[1].ID, all[3].ID}},
		{"one volume after", "b", all[1].ID, 0, []int64{all[3].ID}},
		{"deleted volume keeps its events", "c", 0, 0, []int64{all[2].ID, all[4].ID}},
		{"unknown volume", "zzz", 0, 0, nil},
		{"limit above the cap", "", 0, 5000, []int64{every[0].ID, every[1].ID, every[2].ID, every[3].ID, all[0].ID, all[1].ID, all[2].ID, all[3].ID, all[4].ID}},
	}
	for _, tt := range tests {
		got, err := ts.Client.ListEvents(ctx, tt.volume, tt.after, tt.limit)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var ids []int64
		for _, e := range got {
			ids = append(ids, e.ID)
		}
		if !slices.Equal(ids, tt.want) {
			t.Errorf("%s: ids %v, want %v", tt.name, ids, tt.want)
		}
	}
	for _, q := range []string{"limit=0", "limit=x", "after=-1", "after=y", "volume=Bad_Name"} {
		status, e := rawCall(t, ts.Transport, ts.Token, "GET", ts.URL+"/api/v1/events?"+q, "")
		if status != http.StatusBadRequest || e.Code != api.CodeInvalidArgument {
			t.Errorf("?%s: HTTP %d %+v", q, status, e)
		}
	}
}

func TestFailureDetectorRunsOnOneLeader(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	servers := []*testServer{startServer(t, Config{DatabaseURL: url}), startServer(t, Config{DatabaseURL: url})}
	leader := func() int {
		n, who := 0, -1
		for i, s := range servers {
			if s.leading.Load() {
				n, who = n+1, i
			}
		}
		if n > 1 {
			t.Fatalf("%d metaservers lead at once", n)
		}
		return who
	}
	waitFor(t, 5*time.Second, "a leader", func() bool { return leader() >= 0 })
	first := leader()
	ts := servers[first]
	id := ts.addChunkserver(t, "cs-a", "", 10*gib)
	count := func(kind string) int { return len(eventsOf(ts.events(t, ""), kind)) }
	silence := func() {
		if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = 'cs-a'`); err != nil {
			t.Fatal(err)
		}
	}

	silence()
	waitFor(t, 5*time.Second, "chunkserver_offline", func() bool { return count(api.EventChunkserverOffline) == 1 })
	e := eventsOf(ts.events(t, ""), api.EventChunkserverOffline)[0]
	if e.Subject != "chunkserver/cs-a" || !strings.Contains(e.Message, "chunkserver cs-a is offline: no heartbeat for 1h0m") {
		t.Errorf("offline event %+v", e)
	}
	if err := ts.Client.ChunkserverHeartbeat(t.Context(), id, api.ChunkserverHeartbeat{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "chunkserver_online", func() bool { return count(api.EventChunkserverOnline) == 1 })
	// Several more ticks of both instances add nothing.
	time.Sleep(2500 * time.Millisecond)
	if off, on := count(api.EventChunkserverOffline), count(api.EventChunkserverOnline); off != 1 || on != 1 {
		t.Errorf("%d offline and %d online events, want one each", off, on)
	}
	if leader() != first {
		t.Errorf("leadership moved from %d to %d without a failure", first, leader())
	}

	// The leader goes away: the other takes over and detects failures.
	if err := servers[first].Stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a new leader", func() bool { return leader() == 1-first })
	ts = servers[1-first]
	silence()
	waitFor(t, 5*time.Second, "chunkserver_offline from the new leader", func() bool { return count(api.EventChunkserverOffline) == 2 })
	if n := count(api.EventChunkserverOnline); n != 1 {
		t.Errorf("%d online events, want 1", n)
	}

	// The leader's session dies under it: it stops leading, reconnects
	// and takes the lock again (it is the only instance left).
	n := ts.queryInt(t, `
		SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
		WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = $1)
		  AND (l.classid::bigint << 32 | l.objid::bigint) = `+leaderLockKey, leaderAppName)
	if n != 1 {
		t.Fatalf("terminated %d leader sessions, want 1", n)
	}
	waitFor(t, 5*time.Second, "leadership lost", func() bool { return leader() < 0 })
	waitFor(t, 5*time.Second, "leadership regained", func() bool { return leader() == 1-first })
	if err := ts.Client.ChunkserverHeartbeat(t.Context(), id, api.ChunkserverHeartbeat{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "chunkserver_online after the reconnect", func() bool { return count(api.EventChunkserverOnline) == 2 })
}

func TestMigrationGivesAnOldClusterASecret(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	db := newPool(t, url)
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	all, err := loadMigrations(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	v1 := fstest.MapFS{all[0].Name: &fstest.MapFile{Data: []byte(all[0].SQL)}}
	if _, err := migrate(ctx, db, v1, log); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO cluster (chunk_size) VALUES (67108864)`); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate(ctx, db, migrations.FS, log); err != nil {
		t.Fatal(err)
	}
	var secret string
	if err := db.QueryRow(ctx, `SELECT secret FROM cluster`).Scan(&secret); err != nil {
		t.Fatal(err)
	}
	if b, err := hex.DecodeString(secret); err != nil || len(b) != 32 {
		t.Fatalf("backfilled secret %q", secret)
	}
	// The server keeps that secret.
	ts := startServer(t, Config{DatabaseURL: url})
	resp, err := ts.Client.RegisterChunkserver(ctx, chunkserverReq("cs-a"))
	if err != nil || resp.ClusterSecret != secret {
		t.Errorf("registration: %+v, %v; want the secret %q", resp, err, secret)
	}
}

// FuzzHostReport feeds arbitrary bodies through the decoder and validation:
// nothing panics, refusals are invalid_argument, accepted reports are within
// the limits the store relies on.
func FuzzHostReport(f *testing.F) {
	for _, s := range []string{
		`{"volumes":[{"name":"v","epoch":1,"sets":[{"index":0,"dirty_bytes":4096,"members":[{"chunk_id":"0b9f6c52-1f0e-4c52-9d2e-5f3b8e7a6c10","state":"degraded","error":"x"}]}]}]}`,
		`{"volumes":[{"name":"v","epoch":2,"clean_detach":true}]}`,
		`{"volumes":[{"name":"v","epoch":1,"sets":[{"index":-1}]}]}`,
		`{"volumes":[{"name":"v","epoch":1,"sets":[{"index":0,"members":[{"chunk_id":"0b9f6c52-1f0e-4c52-9d2e-5f3b8e7a6c10","state":"resyncing","resync_done_bytes":9,"resync_total_bytes":3}]}]}]}`,
		`{"volumes":null}`, `{}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var r api.HostReport
		if err := decodeBytes(body, &r); err != nil {
			return
		}
		if err := validateHostReport(&r); err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("validation error %v is not invalid_argument", err)
			}
			return
		}
		names := map[string]bool{}
		for _, v := range r.Volumes {
			if !volumeNameRE.MatchString(v.Name) || v.Epoch < 1 || names[v.Name] {
				t.Fatalf("accepted volume %+v", v)
			}
			names[v.Name] = true
			for _, s := range v.Sets {
				if s.Index < 0 || s.DirtyBytes < 0 || len(s.Members) > maxSetMembers {
					t.Fatalf("accepted set %+v", s)
				}
				for _, m := range s.Members {
					if !uuidRE.MatchString(m.ChunkID) || m.ChunkID != strings.ToLower(m.ChunkID) || len(m.Error) > maxErrorLen ||
						m.ResyncDoneBytes < 0 || m.ResyncDoneBytes > m.ResyncTotalBytes {
						t.Fatalf("accepted member %+v", m)
					}
				}
			}
		}
	})
}

// Reports of one volume carry increasing sequence numbers; one that
// arrives after a newer one was applied is ignored, so the synchronous
// report of a degradation and a periodic report cannot commit out of order.
func TestHostReportSequence(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	a, b := f.member[0][0], f.member[0][1]
	inSync := api.MemberReport{ChunkID: a, State: api.MemberInSync}
	seq := func(seq int64, state string, dirty int64) api.HostReport {
		r := f.report(1, 0, dirty, inSync, api.MemberReport{ChunkID: b, State: state})
		r.Volumes[0].Seq = seq
		return r
	}
	seq0 := func(s int64, state string) api.HostReport { return seq(s, state, 0) }
	steps := []struct {
		name   string
		report api.HostReport
		state  string // of member 1 of set 0 afterwards
		dirty  int64
	}{
		{"degraded", seq(100, api.MemberDegraded, 4096), api.MemberDegraded, 4096},
		{"older in sync arrives late", seq(99, api.MemberInSync, 0), api.MemberDegraded, 4096},
		{"same number again", seq(100, api.MemberInSync, 0), api.MemberDegraded, 4096},
		{"newer", seq(101, api.MemberResyncing, 2048), api.MemberResyncing, 2048},
		{"unnumbered always applies", seq(0, api.MemberInSync, 0), api.MemberInSync, 0},
		{"numbering goes on", seq(50, api.MemberDegraded, 1), api.MemberInSync, 0},
		{"above the last", seq(102, api.MemberDegraded, 1), api.MemberDegraded, 1},
	}
	for _, st := range steps {
		if err := f.ts.Client.HostReport(ctx, f.host, st.report); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		v, err := f.ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if m := v.Sets[0].Members[1]; m.State != st.state || v.Sets[0].DirtyBytes != st.dirty {
			t.Errorf("%s: member %s dirty %d, want %s dirty %d", st.name, m.State, v.Sets[0].DirtyBytes, st.state, st.dirty)
		}
	}

	// The host restarts: its registration is a new incarnation, issued
	// here, and its reports, numbered from 1 again, order after every
	// report of the one before (a clock that went back cannot drop them);
	// a late report of the earlier incarnation is ignored, and a report of
	// an incarnation never issued is refused.
	reg, err := f.ts.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h1", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil {
		t.Fatal(err)
	}
	if reg.Incarnation != 2 {
		t.Fatalf("second registration of h1: incarnation %d, want 2", reg.Incarnation)
	}
	numbered := func(inc, seq int64, state string) api.HostReport {
		r := seq0(seq, state)
		r.Volumes[0].Incarnation = inc
		return r
	}
	for _, st := range []struct {
		name   string
		report api.HostReport
		state  string
	}{
		{"first report of the new incarnation", numbered(2, 1, api.MemberInSync), api.MemberInSync},
		{"late report of the earlier incarnation", numbered(1, 500, api.MemberDegraded), api.MemberInSync},
		{"next report of the new incarnation", numbered(2, 2, api.MemberResyncing), api.MemberResyncing},
	} {
		if err := f.ts.Client.HostReport(ctx, f.host, st.report); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		v, err := f.ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if m := v.Sets[0].Members[1]; m.State != st.state {
			t.Errorf("%s: member %s, want %s", st.name, m.State, st.state)
		}
	}
	if err := f.ts.Client.HostReport(ctx, f.host, numbered(3, 1, api.MemberInSync)); err == nil || !strings.Contains(err.Error(), "incarnation 3") {
		t.Errorf("a report of an incarnation never issued: %v, want a refusal naming it", err)
	}

	// A new epoch starts the numbering again.
	if _, err := f.ts.Client.AttachVolume(ctx, "vol", "h1"); err != nil {
		t.Fatal(err)
	}
	r := seq(7, api.MemberInSync, 0)
	r.Volumes[0].Epoch = 2
	if err := f.ts.Client.HostReport(ctx, f.host, r); err != nil {
		t.Fatal(err)
	}
	v, err := f.ts.Client.GetVolume(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if m := v.Sets[0].Members[1]; m.State != api.MemberInSync {
		t.Errorf("first report at epoch 2: member %s, want in_sync", m.State)
	}
}

// TestFailedChunksReported: a chunkserver's heartbeat names a chunk that
// failed after a durability error; the metaserver records an event once,
// shows the failure on the chunk, the volume's member and the disk, and
// forgets it when the chunkserver no longer reports it.
func TestFailedChunksReported(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	chunk := f.member[1][0]
	var server string
	var serverID int64
	servers, err := f.ts.Client.ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if s.Name == f.vol.Sets[1].Members[0].Chunkserver {
			server, serverID = s.Name, s.ID
		}
	}
	hb := api.ChunkserverHeartbeat{Disks: []api.DiskInfo{{Path: "/srv/" + server, CapacityBytes: 10 * gib, FreeBytes: 10 * gib}},
		FailedChunks: []api.FailedChunk{{ID: chunk, Reason: "fdatasync: input/output error"}, {ID: "not-its-chunk", Reason: "x"}}}
	for range 2 {
		if err := f.ts.Client.ChunkserverHeartbeat(ctx, serverID, hb); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := f.ts.Client.ListEvents(ctx, "vol", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var failedEvents []string
	for _, e := range evs {
		if e.Kind == api.EventChunkFailed {
			failedEvents = append(failedEvents, e.Message)
		}
	}
	want := fmt.Sprintf("chunk %s (member 0 of set 1 of volume vol) on chunkserver %s failed: fdatasync: input/output error", chunk, server)
	if len(failedEvents) != 1 || failedEvents[0] != want {
		t.Fatalf("chunk_failed events %q, want one: %q", failedEvents, want)
	}
	v, err := f.ts.Client.GetVolume(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Sets[1].Members[0].ChunkFailed; got != "fdatasync: input/output error" {
		t.Errorf("member's chunk_failed %q", got)
	}
	if got := v.Sets[0].Members[0].ChunkFailed; got != "" {
		t.Errorf("a healthy member's chunk_failed %q", got)
	}
	disks, err := f.ts.Client.ListDisks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if want := map[bool]int{true: 1, false: 0}[d.Chunkserver == server]; d.FailedChunks != want || d.Chunks == 0 {
			t.Errorf("disk %s of %s: %d chunks, %d failed; want %d failed", d.Path, d.Chunkserver, d.Chunks, d.FailedChunks, want)
		}
	}
	hb.FailedChunks = nil
	if err := f.ts.Client.ChunkserverHeartbeat(ctx, serverID, hb); err != nil {
		t.Fatal(err)
	}
	chunks, err := f.ts.Client.ListChunks(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if c.Failed != "" {
			t.Errorf("chunk %s still failed (%q) after its chunkserver stopped reporting it", c.ID, c.Failed)
		}
	}
}

// TestSetReconcileEvents: a resync of a set whose members are all in sync
// (after a host crash) is reported like any other: resync_started while it
// runs, resync_done with its bytes when it finished, the set shown
// resyncing meanwhile; one that started and finished between two reports
// still gets both events, and a repeated report adds none.
func TestSetReconcileEvents(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	a, b := f.member[0][0], f.member[0][1]
	inSync := []api.MemberReport{{ChunkID: a, State: api.MemberInSync}, {ChunkID: b, State: api.MemberInSync}}
	report := func(seq int64, set int, rc *api.SetReconcile) {
		t.Helper()
		members := inSync
		if set == 1 {
			members = []api.MemberReport{{ChunkID: f.member[1][0], State: api.MemberInSync}, {ChunkID: f.member[1][1], State: api.MemberInSync}}
		}
		r := f.report(1, set, 0, members...)
		r.Volumes[0].Seq = seq
		r.Volumes[0].Sets[0].Reconcile = rc
		if err := f.ts.Client.HostReport(ctx, f.host, r); err != nil {
			t.Fatal(err)
		}
	}
	events := func() []string {
		t.Helper()
		evs, err := f.ts.Client.ListEvents(ctx, "vol", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			if e.Kind == api.EventResyncStarted || e.Kind == api.EventResyncDone {
				out = append(out, e.Kind+" "+e.Subject+": "+e.Message)
			}
		}
		return out
	}
	report(1, 0, &api.SetReconcile{Running: true, DoneBytes: 1 << 20, TotalBytes: 4 << 20})
	v, err := f.ts.Client.GetVolume(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if s := v.Sets[0]; !s.Reconciling || s.ReconcileDoneBytes != 1<<20 || s.ReconcileTotalBytes != 4<<20 {
		t.Fatalf("set 0 while reconciling: %+v", s)
	}
	report(2, 0, &api.SetReconcile{DoneBytes: 4 << 20, TotalBytes: 4 << 20, Finished: 1})
	report(3, 0, &api.SetReconcile{DoneBytes: 4 << 20, TotalBytes: 4 << 20, Finished: 1})
	report(4, 1, &api.SetReconcile{DoneBytes: 2 << 20, TotalBytes: 2 << 20, Finished: 1})
	want := []string{
		"resync_started volume/vol/set/0: set 0, every member in sync, is resyncing the regions an unclean stop left dirty: 4.0 MiB (4194304 bytes) to copy",
		"resync_done volume/vol/set/0: set 0, every member in sync, is consistent again: the resync copied 4.0 MiB (4194304 bytes)",
		"resync_started volume/vol/set/1: set 1, every member in sync, is resyncing the regions an unclean stop left dirty: 2.0 MiB (2097152 bytes) to copy",
		"resync_done volume/vol/set/1: set 1, every member in sync, is consistent again: the resync copied 2.0 MiB (2097152 bytes)",
	}
	if got := events(); !slices.Equal(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	v, err = f.ts.Client.GetVolume(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if v.Sets[0].Reconciling || v.Sets[1].Reconciling {
		t.Fatalf("sets still reconciling after they finished: %+v", v.Sets)
	}
}

// TestSetFullResyncStored: a host's report that a set's LOG record is not
// complete is stored and handed to the next attach; a later report clears it.
func TestSetFullResyncStored(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	members := []api.MemberReport{{ChunkID: f.member[0][0], State: api.MemberInSync}, {ChunkID: f.member[0][1], State: api.MemberDegraded}}
	for _, full := range []bool{true, false} {
		r := f.report(1, 0, 0, members...)
		r.Volumes[0].Sets[0].FullResync = full
		if err := f.ts.Client.HostReport(ctx, f.host, r); err != nil {
			t.Fatal(err)
		}
		v, err := f.ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if v.Sets[0].FullResync != full || v.Sets[1].FullResync {
			t.Fatalf("after a report with full_resync=%v: sets %v, %v", full, v.Sets[0].FullResync, v.Sets[1].FullResync)
		}
	}
}

// TestOfflineChunkserverMarksMembers: the failure detector marks every
// in-sync member of a chunkserver that went offline degraded, attached
// volume or not, at a new generation that hosts see (StateGen) and with an
// event each. A host report that still says in_sync without having seen the
// mark does not undo it; once the host has seen it, the member goes through
// a resync back to in_sync.
func TestOfflineChunkserverMarksMembers(t *testing.T) {
	t.Parallel()
	f := newReportFixture(t)
	ctx := t.Context()
	if _, err := f.ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "idle", SizeBytes: 64 << 20, Layout: "mirror:2"}); err != nil {
		t.Fatal(err)
	}
	before := f.ts.generation(t)
	if err := f.ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = 'cs-a'`); err != nil {
		t.Fatal(err)
	}
	var onA []api.Member // vol's members on cs-a, by set
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := f.ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		onA = nil
		for _, s := range v.Sets {
			for _, m := range s.Members {
				if m.Chunkserver == "cs-a" && m.State == api.MemberDegraded {
					onA = append(onA, m)
				}
			}
		}
		if len(onA) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members on the offline chunkserver not marked: %+v", v.Sets)
		}
		time.Sleep(50 * time.Millisecond)
	}
	gen := onA[0].StateGen
	if gen <= before || onA[1].StateGen != gen || !strings.Contains(onA[0].Error, "chunkserver cs-a offline") {
		t.Fatalf("marks %+v (generation before %d)", onA, before)
	}
	idle, err := f.ts.Client.GetVolume(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range idle.Sets[0].Members {
		if want := map[bool]string{true: api.MemberDegraded, false: api.MemberInSync}[m.Chunkserver == "cs-a"]; m.State != want {
			t.Errorf("unattached volume's member on %s: %s, want %s", m.Chunkserver, m.State, want)
		}
	}
	evs := eventsOf(f.ts.events(t, "vol"), api.EventMemberDegraded)
	if len(evs) != 2 || !strings.Contains(evs[0].Message, "its chunkserver is offline") {
		t.Errorf("member_degraded events: %+v", evs)
	}
	t.Logf("%s", evs[0].Message)
	// The host sees the marks in its assignments.
	hv, err := f.ts.Client.HostVolumes(ctx, f.host, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m := memberOf(hv.Volumes[0], onA[0].ChunkID); m == nil || m.StateGen != gen || m.State != api.MemberDegraded {
		t.Errorf("the host's view of the marked member: %+v", m)
	}

	// Set 0 of vol: reports of a host that has not seen the mark.
	a := onA[0].ChunkID
	set := 0
	if memberOf(api.Volume{Sets: hv.Volumes[0].Sets[:1]}, a) == nil {
		set = 1
	}
	other := f.member[set][0]
	if other == a {
		other = f.member[set][1]
	}
	state := func() string {
		v, err := f.ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		return memberOf(*v, a).State
	}
	report := func(members ...api.MemberReport) {
		t.Helper()
		if err := f.ts.Client.HostReport(ctx, f.host, f.report(1, set, 0, members...)); err != nil {
			t.Fatal(err)
		}
	}
	inSync := api.MemberReport{ChunkID: other, State: api.MemberInSync}
	report(inSync, api.MemberReport{ChunkID: a, State: api.MemberInSync})
	if got := state(); got != api.MemberDegraded {
		t.Fatalf("an in_sync report that predates the mark undid it: %s", got)
	}
	report(inSync, api.MemberReport{ChunkID: a, State: api.MemberInSync, SeenGen: gen - 1})
	if got := state(); got != api.MemberDegraded {
		t.Fatalf("an in_sync report of an older generation undid the mark: %s", got)
	}
	// The host has seen the mark: it failed the member and resyncs it.
	report(inSync, api.MemberReport{ChunkID: a, State: api.MemberDegraded, SeenGen: gen, Error: "marked by the metaserver"})
	report(inSync, api.MemberReport{ChunkID: a, State: api.MemberResyncing, SeenGen: gen, ResyncTotalBytes: 1 << 20})
	report(inSync, api.MemberReport{ChunkID: a, State: api.MemberInSync, SeenGen: gen, ResyncDoneBytes: 1 << 20, ResyncTotalBytes: 1 << 20})
	if got := state(); got != api.MemberInSync {
		t.Fatalf("after a resync: %s", got)
	}
	if n := len(eventsOf(f.ts.events(t, "vol"), api.EventResyncDone)); n != 1 {
		t.Errorf("%d resync_done events, want 1", n)
	}
	// Online again: nothing is promoted by that alone.
	if err := f.ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() WHERE name = 'cs-a'`); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); len(eventsOf(f.ts.events(t, ""), api.EventChunkserverOnline)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("cs-a not seen online again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if idle, err = f.ts.Client.GetVolume(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
	for _, m := range idle.Sets[0].Members {
		if m.Chunkserver == "cs-a" && m.State != api.MemberDegraded {
			t.Errorf("the unattached volume's member is %s once its chunkserver returned, want degraded until a resync", m.State)
		}
	}
}

// memberOf finds chunk's member in v.
func memberOf(v api.Volume, chunk string) *api.Member {
	for i := range v.Sets {
		for j := range v.Sets[i].Members {
			if v.Sets[i].Members[j].ChunkID == chunk {
				return &v.Sets[i].Members[j]
			}
		}
	}
	return nil
}

// TestOfflineNeverMarksTheLastCopies: members that a set cannot acknowledge
// a write without are never marked: not when both copies' chunkservers go
// offline together, nor the survivor when the second one goes after the
// first (it holds every acknowledged write: marking it would leave the
// volume with no copy a host may trust).
func TestOfflineNeverMarksTheLastCopies(t *testing.T) {
	t.Parallel()
	states := func(f *reportFixture) map[string]string {
		v, err := f.ts.Client.GetVolume(t.Context(), "vol")
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, s := range v.Sets {
			for _, m := range s.Members {
				out[fmt.Sprintf("set%d/%s", s.Index, m.Chunkserver)] = m.State
			}
		}
		return out
	}
	offline := func(f *reportFixture, names string, events int) {
		t.Helper()
		if err := f.ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = ANY(string_to_array($1, ','))`, names); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); len(eventsOf(f.ts.events(t, ""), api.EventChunkserverOffline)) < events; {
			if time.Now().After(deadline) {
				t.Fatalf("%s not seen offline", names)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	together := newReportFixture(t)
	offline(together, "cs-a,cs-b", 2)
	if got := fmt.Sprint(states(together)); got != "map[set0/cs-a:in_sync set0/cs-b:in_sync set1/cs-a:in_sync set1/cs-b:in_sync]" {
		t.Errorf("both copies offline together: %s", got)
	}
	oneByOne := newReportFixture(t)
	offline(oneByOne, "cs-a", 1)
	offline(oneByOne, "cs-b", 2)
	if got := fmt.Sprint(states(oneByOne)); got != "map[set0/cs-a:degraded set0/cs-b:in_sync set1/cs-a:degraded set1/cs-b:in_sync]" {
		t.Errorf("one copy after the other: %s", got)
	}
}

// TestReplaceAfter: a member whose chunkserver stayed offline for
// replace_after is replaced by a new chunk in a fault domain its set does
// not use, recorded rebuilding (at a generation the host sees) with an
// event; the old chunk is left to be deleted. The host's reports keep it
// rebuilding until it says in_sync, having seen the replacement. Without
// a spare fault domain the member is not replaced and that is said once.
func TestReplaceAfter(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{DatabaseURL: "postgres://x", ReplaceAfter: time.Minute, LogPeriod: time.Minute}); err == nil ||
		!strings.Contains(err.Error(), "--replace-after") {
		t.Errorf("replace_after = T accepted: %v", err)
	}
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	host := ts.addHost(t, "h1")
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "vol", SizeBytes: 64 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	lost := v.Sets[0].Members[1]
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = $1`, lost.Chunkserver); err != nil {
		t.Fatal(err)
	}
	var m *api.Member
	for deadline := time.Now().Add(15 * time.Second); ; {
		got, err := ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if m = &got.Sets[0].Members[1]; m.ChunkID != lost.ChunkID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member not replaced: %+v", got.Sets[0].Members)
		}
		time.Sleep(50 * time.Millisecond)
	}
	used := map[string]bool{v.Sets[0].Members[0].Chunkserver: true, lost.Chunkserver: true}
	if used[m.Chunkserver] || m.State != api.MemberRebuilding || m.StateGen == 0 || !strings.Contains(m.Error, "replaces chunk "+lost.ChunkID) {
		t.Fatalf("the replacement: %+v", m)
	}
	evs := eventsOf(ts.events(t, "vol"), api.EventMemberReplaced)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "is replaced by chunk "+m.ChunkID) {
		t.Fatalf("member_replaced events: %+v", evs)
	}
	t.Logf("%s", evs[0].Message)
	chunks, err := ts.Client.ListChunks(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if c.ID == lost.ChunkID && c.State != api.ChunkDeleting {
			t.Errorf("the replaced chunk is %s, want deleting", c.State)
		}
	}
	hv, err := ts.Client.HostVolumes(ctx, host, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if hm := memberOf(hv.Volumes[0], m.ChunkID); hm == nil || hm.Export == "" || hm.State != api.MemberRebuilding {
		t.Fatalf("the host's view of the replacement: %+v", hm)
	}

	// Reports: rebuilding sticks until in_sync.
	keep := v.Sets[0].Members[0].ChunkID
	report := func(mr api.MemberReport) string {
		t.Helper()
		rep := api.HostReport{Volumes: []api.VolumeReport{{Name: "vol", Epoch: 1, Sets: []api.SetReport{{Index: 0,
			Members: []api.MemberReport{{ChunkID: keep, State: api.MemberInSync}, mr}}}}}}
		if err := ts.Client.HostReport(ctx, host, rep); err != nil {
			t.Fatal(err)
		}
		got, err := ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		return got.Sets[0].Members[1].State
	}
	if got := report(api.MemberReport{ChunkID: m.ChunkID, State: api.MemberResyncing, SeenGen: m.StateGen, ResyncTotalBytes: 1 << 20,
		RebuildWatermark: 8 << 20}); got != api.MemberRebuilding {
		t.Errorf("after a resyncing report: %s", got)
	}
	// The watermark only grows, and the host sees it.
	report(api.MemberReport{ChunkID: m.ChunkID, State: api.MemberRebuilding, SeenGen: m.StateGen, RebuildWatermark: 4 << 20})
	if hv, err := ts.Client.HostVolumes(ctx, host, 0, 0); err != nil {
		t.Fatal(err)
	} else if hm := memberOf(hv.Volumes[0], m.ChunkID); hm.RebuildWatermark != 8<<20 {
		t.Errorf("watermark %d after reports of 8 MiB then 4 MiB, want 8 MiB", hm.RebuildWatermark)
	}
	if got := report(api.MemberReport{ChunkID: m.ChunkID, State: api.MemberInSync}); got != api.MemberRebuilding {
		t.Errorf("an in_sync report that had not seen the replacement: %s", got)
	}
	if got := report(api.MemberReport{ChunkID: m.ChunkID, State: api.MemberInSync, SeenGen: m.StateGen, ResyncDoneBytes: 1 << 20, ResyncTotalBytes: 1 << 20}); got != api.MemberInSync {
		t.Errorf("after the rebuild: %s", got)
	}
	if got, err := ts.Client.GetVolume(ctx, "vol"); err != nil || got.Sets[0].Members[1].RebuildWatermark != 0 {
		t.Errorf("an in-sync member keeps a rebuild watermark: %v", err)
	}
	if evs := eventsOf(ts.events(t, "vol"), api.EventRebuildDone); len(evs) != 1 || !strings.Contains(evs[0].Message, "the rebuild copied 1.0 MiB") {
		t.Errorf("rebuild_done events: %+v", evs)
	}

	// The other member's chunkserver goes too: no fault domain is left for
	// its replacement (two of three are gone, the third holds the set).
	if err := ts.exec(t, `UPDATE chunkservers SET last_heartbeat = now() - interval '1 hour' WHERE name = $1`, v.Sets[0].Members[0].Chunkserver); err != nil {
		t.Fatal(err)
	}
	if err := ts.Client.HostReport(ctx, host, api.HostReport{Volumes: []api.VolumeReport{{Name: "vol", Epoch: 1, Sets: []api.SetReport{{Index: 0,
		Members: []api.MemberReport{{ChunkID: keep, State: api.MemberDegraded, Error: "gone"}, {ChunkID: m.ChunkID, State: api.MemberInSync, SeenGen: m.StateGen}}}}}}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); len(eventsOf(ts.events(t, "vol"), api.EventReplaceBlocked)) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no replace_blocked event")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond) // two more ticks of the leader
	if evs := eventsOf(ts.events(t, "vol"), api.EventReplaceBlocked); len(evs) != 1 {
		t.Errorf("%d replace_blocked events, want 1 (said once)", len(evs))
	} else {
		t.Logf("%s", evs[0].Message)
	}
}

// TestFailedChunkReplacedAtOnce: a member whose chunk its (online)
// chunkserver reports failed — a durability error, for good — is replaced
// without waiting for replace_after, and not onto the disk that failed it.
func TestFailedChunkReplacedAtOnce(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	ids := map[string]int64{}
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ids[n] = ts.addChunkserver(t, n, "", 10*gib)
	}
	host := ts.addHost(t, "h1")
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "vol", SizeBytes: 64 << 20, Layout: "mirror:2", Host: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	bad, good := v.Sets[0].Members[1], v.Sets[0].Members[0]
	if err := ts.Client.ChunkserverHeartbeat(ctx, ids[bad.Chunkserver], api.ChunkserverHeartbeat{
		Disks:        []api.DiskInfo{{Path: "/srv/" + bad.Chunkserver, CapacityBytes: 10 * gib, FreeBytes: 10 * gib}},
		FailedChunks: []api.FailedChunk{{ID: bad.ChunkID, Reason: "fdatasync: input/output error"}},
	}); err != nil {
		t.Fatal(err)
	}
	rep := api.HostReport{Volumes: []api.VolumeReport{{Name: "vol", Epoch: 1, Sets: []api.SetReport{{Index: 0, Members: []api.MemberReport{
		{ChunkID: good.ChunkID, State: api.MemberInSync}, {ChunkID: bad.ChunkID, State: api.MemberDegraded, Error: "nbd: EIO"}}}}}}}
	if err := ts.Client.HostReport(ctx, host, rep); err != nil {
		t.Fatal(err)
	}
	var m api.Member
	for deadline := time.Now().Add(10 * time.Second); ; {
		got, err := ts.Client.GetVolume(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if m = got.Sets[0].Members[1]; m.ChunkID != bad.ChunkID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the member with a failed chunk was not replaced: %+v", got.Sets[0].Members)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m.State != api.MemberRebuilding || m.Chunkserver == bad.Chunkserver || m.Chunkserver == good.Chunkserver ||
		!strings.Contains(m.Error, "its chunk failed: fdatasync: input/output error") {
		t.Fatalf("the replacement: %+v", m)
	}
	evs := eventsOf(ts.events(t, "vol"), api.EventMemberReplaced)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "its chunk failed on its chunkserver") {
		t.Fatalf("member_replaced events: %+v", evs)
	}
	t.Logf("%s", evs[0].Message)
}
