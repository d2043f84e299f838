package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// fakeAPI answers "METHOD /path" with canned JSON and records request bodies.
type fakeAPI struct {
	mu      sync.Mutex
	answers map[string]any // value to encode; an *api.Error is sent with its status
	bodies  map[string][]string
}

func newFakeAPI(t *testing.T) (*fakeAPI, string) {
	t.Helper()
	f := &fakeAPI{answers: map[string]any{}, bodies: map[string][]string{}}
	hs := httptest.NewServer(f)
	t.Cleanup(hs.Close)
	return f, hs.URL
}

func (f *fakeAPI) answer(route string, v any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[route] = v
}

func (f *fakeAPI) body(route string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[route]
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	route := r.Method + " " + r.URL.Path
	b, _ := io.ReadAll(r.Body)
	f.bodies[route] = append(f.bodies[route], string(b))
	v, ok := f.answers[route]
	if !ok {
		v = api.Errorf(api.CodeNotFound, "no route %s", route)
	}
	status := http.StatusOK
	if e, ok := v.(*api.Error); ok {
		status = api.HTTPStatus(e.Code)
	}
	if v == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// runCmd runs the volume (or cluster) command tree with args against url.
func runCmd(t *testing.T, url, output string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	o := &rootOptions{metaserver: url, output: output, out: &out}
	cmd := newVolumeCmd(o)
	if len(args) > 0 && args[0] == "cluster" {
		cmd, args = newClusterCmd(o), args[1:]
	}
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errb.String(), err
}

// writeSecret writes a secret file with mode perm.
func writeSecret(t *testing.T, content string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // umask may have narrowed it
		t.Fatal(err)
	}
	return p
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		content  *string // nil: no file
		perm     os.FileMode
		want     string
		errHas   string
		warnHas  string
		isDir    bool
		useSpace bool
	}{
		{name: "plain", content: ptr("abcdefghijklmnop"), perm: 0o600, want: "abcdefghijklmnop"},
		{name: "trailing newline", content: ptr("abcdefghijklmnop\n"), perm: 0o600, want: "abcdefghijklmnop"},
		{name: "trailing CRLF", content: ptr("abcdefghijklmnop\r\n"), perm: 0o600, want: "abcdefghijklmnop"},
		{name: "12 bytes", content: ptr("abcdefghijkl"), perm: 0o400, want: "abcdefghijkl"},
		{name: "world-readable warns", content: ptr("abcdefghijklmnop"), perm: 0o644, want: "abcdefghijklmnop", warnHas: "is readable by every user (mode 0644): chmod 600"},
		{name: "missing", errHas: "no such file: write the secret"},
		{name: "empty", content: ptr(""), perm: 0o600, errHas: "is empty: put a secret of 12 to 255 bytes in it"},
		{name: "only a newline", content: ptr("\n"), perm: 0o600, errHas: "is empty"},
		{name: "too short", content: ptr("abcdefghijk\n"), perm: 0o600, errHas: "holds a secret of 11 bytes, too short: CHAP secrets must be 12 to 255 bytes"},
		{name: "too long", content: ptr(strings.Repeat("s", 256)), perm: 0o600, errHas: "holds 256 bytes: CHAP secrets are at most 255 bytes"},
		{name: "two lines", content: ptr("abcdefghijklmnop\nqrstuvwxyz\n"), perm: 0o600, errHas: "more than one line"},
		{name: "huge", content: ptr(strings.Repeat("s", 5000)), perm: 0o600, errHas: "larger than 4096 bytes"},
		{name: "a directory", isDir: true, errHas: "is not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			switch {
			case tt.isDir:
				if err := os.Mkdir(p, 0o700); err != nil {
					t.Fatal(err)
				}
			case tt.content != nil:
				if err := os.WriteFile(p, []byte(*tt.content), tt.perm); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, tt.perm); err != nil {
					t.Fatal(err)
				}
			}
			var warn bytes.Buffer
			got, err := readSecretFile("--secret-file", p, &warn)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) || !strings.Contains(err.Error(), "--secret-file") {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.errHas)
				}
				if tt.content != nil && len(*tt.content) > 4 && strings.Contains(err.Error(), strings.TrimSpace(*tt.content)) {
					t.Errorf("the error quotes the secret: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
			if tt.warnHas == "" && warn.Len() > 0 {
				t.Errorf("unexpected warning %q", warn.String())
			}
			if tt.warnHas != "" && !strings.Contains(warn.String(), tt.warnHas) {
				t.Errorf("warning %q lacks %q", warn.String(), tt.warnHas)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// squeeze collapses runs of spaces, so that table checks do not depend on
// column widths.
func squeeze(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' }), " ")
}

func TestVolumeCHAPCommand(t *testing.T) {
	f, url := newFakeAPI(t)
	const secret, mutual = "one-way-secret-1234", "mutual-secret-5678"
	vol := &api.Volume{Name: "v1", Layout: "mirror:2", Auth: api.VolumeAuth{CHAPUser: "alice", MutualUser: "tgt", AllowedInitiators: []string{}}}
	f.answer("PUT /api/v1/volumes/v1/chap", vol)
	sf := writeSecret(t, secret+"\n", 0o600)
	mf := writeSecret(t, mutual, 0o644)

	out, stderr, err := runCmd(t, url, "table", "chap", "v1", "--user", "alice", "--secret-file", sf, "--mutual-user", "tgt", "--mutual-secret-file", mf)
	if err != nil {
		t.Fatal(err)
	}
	var sent api.SetCHAPRequest
	bodies := f.body("PUT /api/v1/volumes/v1/chap")
	if len(bodies) != 1 || json.Unmarshal([]byte(bodies[0]), &sent) != nil ||
		sent != (api.SetCHAPRequest{User: "alice", Secret: secret, MutualUser: "tgt", MutualSecret: mutual}) {
		t.Fatalf("sent %q", bodies)
	}
	if !strings.Contains(out, "volume v1: CHAP set: user alice, mutual: the target answers as tgt") {
		t.Errorf("output %q", out)
	}
	if !strings.Contains(stderr, "warning: --mutual-secret-file") || strings.Contains(stderr, "--secret-file "+sf) {
		t.Errorf("stderr %q: want a warning about the world-readable mutual secret file only", stderr)
	}
	if strings.Contains(out+stderr, secret) || strings.Contains(out+stderr, mutual) {
		t.Error("the command printed a secret")
	}

	// --clear removes CHAP and shows the volume.
	f.answer("DELETE /api/v1/volumes/v1/chap", nil)
	f.answer("GET /api/v1/volumes/v1", &api.Volume{Name: "v1", Auth: api.VolumeAuth{AllowedInitiators: []string{}}})
	out, _, err = runCmd(t, url, "table", "chap", "v1", "--clear")
	if err != nil || !strings.Contains(out, "volume v1: CHAP cleared") || len(f.body("DELETE /api/v1/volumes/v1/chap")) != 1 {
		t.Errorf("clear: %q, %v", out, err)
	}

	// Flag mistakes are caught before any request.
	for _, args := range [][]string{
		{"chap", "v1"},
		{"chap", "v1", "--user", "alice"},
		{"chap", "v1", "--secret-file", sf},
		{"chap", "v1", "--clear", "--user", "alice"},
		{"chap", "v1", "--user", "alice", "--secret-file", sf, "--mutual-user", "tgt"},
		{"chap", "v1", "--user", "alice", "--secret-file", sf, "--mutual-user", "tgt", "--mutual-secret-file", sf},
		{"chap", "v1", "--user", "alice", "--secret-file", filepath.Join(t.TempDir(), "missing")},
		{"chap", "v1", "--user", "alice", "--secret-file", writeSecret(t, "short", 0o600)},
	} {
		if _, _, err := runCmd(t, url, "table", args...); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if n := len(f.body("PUT /api/v1/volumes/v1/chap")); n != 1 {
		t.Errorf("%d PUTs after flag mistakes, want still 1", n)
	}

	// The server's refusal comes through as the command's error.
	f.answer("PUT /api/v1/volumes/v2/chap", api.Errorf(api.CodeNotFound, `volume "v2" does not exist`))
	if _, _, err := runCmd(t, url, "table", "chap", "v2", "--user", "alice", "--secret-file", sf); !api.IsNotFound(err) {
		t.Errorf("unknown volume: %v", err)
	}
}

func TestVolumeAllowDisallowCommands(t *testing.T) {
	f, url := newFakeAPI(t)
	const a, b = "iqn.1994-05.com.redhat:client1", "eui.02004567A425678D"
	f.answer("POST /api/v1/volumes/v1/initiators", &api.Volume{Name: "v1", Auth: api.VolumeAuth{AllowedInitiators: []string{b, a}}})
	out, _, err := runCmd(t, url, "table", "allow", "v1", a, b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "volume v1: 2 initiators may log in:\n  "+b+"\n  "+a) {
		t.Errorf("allow output %q", out)
	}
	f.answer("POST /api/v1/volumes/v1/initiators", &api.Volume{Name: "v1", Auth: api.VolumeAuth{AllowedInitiators: []string{}}})
	out, _, err = runCmd(t, url, "table", "disallow", "v1", "--all")
	if err != nil || !strings.Contains(out, "the allowlist is empty: every initiator may log in") {
		t.Errorf("disallow --all: %q, %v", out, err)
	}
	if _, _, err = runCmd(t, url, "json", "disallow", "v1", b); err != nil {
		t.Fatal(err)
	}
	bodies := f.body("POST /api/v1/volumes/v1/initiators")
	want := []string{`{"allow":["` + a + `","` + b + `"]}`, `{"clear":true}`, `{"disallow":["` + b + `"]}`}
	if len(bodies) != len(want) {
		t.Fatalf("bodies %q", bodies)
	}
	for i := range want {
		if strings.TrimSpace(bodies[i]) != want[i] {
			t.Errorf("request %d: %s, want %s", i, bodies[i], want[i])
		}
	}
	for _, args := range [][]string{{"allow", "v1"}, {"disallow", "v1"}, {"disallow", "v1", a, "--all"}} {
		if _, _, err := runCmd(t, url, "table", args...); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if n := len(f.body("POST /api/v1/volumes/v1/initiators")); n != 3 {
		t.Errorf("%d requests after argument mistakes, want still 3", n)
	}
}

func TestVolumeCreateECAndCapacityColumns(t *testing.T) {
	f, url := newFakeAPI(t)
	ec := api.Volume{Name: "e", SizeBytes: 1 << 30, RawBytes: 1536 << 20, Layout: "ec:4+2", StripeUnit: 64 << 10, Bitmap: api.BitmapRemb,
		Auth: api.VolumeAuth{AllowedInitiators: []string{}}}
	f.answer("POST /api/v1/volumes", &ec)
	out, stderr, err := runCmd(t, url, "table", "create", "e", "--size", "1GiB", "--layout", "ec:4+2", "--stripe-unit", "64KiB")
	if err != nil {
		t.Fatal(err)
	}
	var req api.CreateVolumeRequest
	if bodies := f.body("POST /api/v1/volumes"); len(bodies) != 1 || json.Unmarshal([]byte(bodies[0]), &req) != nil ||
		req.Layout != "ec:4+2" || req.StripeUnit != 64<<10 || req.SizeBytes != 1<<30 {
		t.Fatalf("sent %q", bodies)
	}
	for _, want := range []string{"ec:4+2 (4 data + 2 parity chunks per set, stripe unit 64 KiB)", "Raw: 1.5 GiB (1610612736 bytes in 0 chunks)", "Efficiency: 66.7 %\n"} {
		if !strings.Contains(squeeze(out), want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	if stderr != "" {
		t.Errorf("stderr %q", stderr)
	}
	// A stripe unit on a mirror is sent but ignored by the server: say so.
	f.answer("POST /api/v1/volumes", &api.Volume{Name: "m", Layout: "mirror:2"})
	if _, stderr, err = runCmd(t, url, "table", "create", "m", "--size", "1GiB", "--stripe-unit", "4KiB"); err != nil || !strings.Contains(stderr, "--stripe-unit is ignored for layout mirror:2") {
		t.Errorf("mirror with a stripe unit: %q, %v", stderr, err)
	}
	if _, _, err = runCmd(t, url, "table", "create", "x", "--size", "1GiB", "--layout", "ec:4+2", "--stripe-unit", "lots"); err == nil {
		t.Error("a bad --stripe-unit was accepted")
	}

	mirror := api.Volume{Name: "m", SizeBytes: 1 << 30, RawBytes: 2 << 30, Layout: "mirror:2", Bitmap: api.BitmapRemb}
	f.answer("GET /api/v1/volumes", []api.Volume{ec, mirror})
	out, _, err = runCmd(t, url, "table", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "RAW") || !strings.Contains(lines[0], "EFFICIENCY") {
		t.Fatalf("list:\n%s", out)
	}
	if f := strings.Fields(lines[1]); f[0] != "e" || f[3] != "ec:4+2" || f[4] != "1.5" || f[6] != "66.7" {
		t.Errorf("ec line %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "m" || f[4] != "2" || f[5] != "GiB" || f[6] != "50.0" {
		t.Errorf("mirror line %q", lines[2])
	}
}

func TestPrintVolumeCapacityAndAuth(t *testing.T) {
	v := &api.Volume{
		Name: "v", SizeBytes: 4096, RawBytes: 6 * 64 << 20, Layout: "ec:4+2", StripeUnit: 4096,
		CreatedAt: time.Now(),
		Auth: api.VolumeAuth{CHAPUser: "alice", MutualUser: "tgt", CHAPSecret: "must-not-print-1", MutualSecret: "must-not-print-2",
			AllowedInitiators: []string{"eui.02004567A425678D", "iqn.1994-05.com.redhat:client1"}},
		Sets: []api.Set{{Index: 0, SizeBytes: 4096, Members: make([]api.Member, 6)}},
	}
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	printVolume(w, v, true)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := squeeze(buf.String())
	for _, want := range []string{
		"Layout: ec:4+2 (4 data + 2 parity chunks per set, stripe unit 4 KiB)",
		"Raw: 384 MiB (402653184 bytes in 6 chunks)",
		"Efficiency: 0.0 % (ec:4+2 stores 66.7 %; the last set is partly used)",
		"CHAP: user alice, mutual: the target answers as tgt",
		"Initiators: eui.02004567A425678D\n iqn.1994-05.com.redhat:client1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("volume show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "must-not-print") {
		t.Errorf("volume show printed a secret:\n%s", out)
	}
	buf.Reset()
	v.Auth = api.VolumeAuth{}
	v.Layout, v.StripeUnit, v.SizeBytes, v.RawBytes = "mirror:3", 0, 64<<20, 3*64<<20
	printVolume(w, v, true)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mirror:3 (3 copies)", "Efficiency: 33.3 %\n", "CHAP: none", "Initiators: any (no allowlist)"} {
		if !strings.Contains(squeeze(buf.String()), want) {
			t.Errorf("mirror volume show lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestClusterCommand(t *testing.T) {
	f, url := newFakeAPI(t)
	f.answer("GET /api/v1/cluster", &api.Cluster{ChunkSize: 64 << 20, RawCapacityBytes: 100 << 30, RawFreeBytes: 80 << 30,
		ProvisionedBytes: 30 * 64 << 20, AllocatedBytes: 512 << 20, Overcommit: 1.5, ProvisionableBytes: 110 << 30, IOTimeoutMS: 5000, OfflineAfterMS: 10000, LogPeriodMS: 60000, SchemaVersion: 3})
	out, _, err := runCmd(t, url, "table", "cluster")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Raw capacity: 100 GiB", "Raw free: 80 GiB", "Provisioned: 1.9 GiB (30 chunks), 1.9 % of the raw capacity", "Allocated: 512 MiB (26.7 % of the provisioned)",
		"Provisionable: 110 GiB (raw, for new volumes, overcommit 1.5)",
		"t_io 5s, offline after 10s, LOG period T 1m0s"} {
		if !strings.Contains(squeeze(out), want) {
			t.Errorf("cluster output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCmd(t, url, "json", "cluster")
	if err != nil || !strings.Contains(out, `"raw_capacity_bytes": 107374182400`) || !strings.Contains(out, `"provisioned_bytes": 2013265920`) {
		t.Errorf("cluster -o json: %s, %v", out, err)
	}
}
