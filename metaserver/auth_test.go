package metaserver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestCanonicalISCSIName(t *testing.T) {
	t.Parallel()
	good := map[string]string{
		"iqn.1994-05.com.redhat:client1":                      "iqn.1994-05.com.redhat:client1",
		"iqn.2005-03.org.open-iscsi:9f1d2c3b4a5":              "iqn.2005-03.org.open-iscsi:9f1d2c3b4a5",
		"iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test": "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test",
		"iqn.1991-05.com.microsoft:Host-7.Example.COM":        "iqn.1991-05.com.microsoft:host-7.example.com",
		"IQN.2026-11.IO.Chunkraid":                            "iqn.2026-11.io.chunkraid",
		"iqn.2026-12.x":                                       "iqn.2026-12.x",
		"iqn.2026-01.com.example:a_b/c,d":                     "iqn.2026-01.com.example:a_b/c,d",
		"eui.02004567a425678d":                                "eui.02004567A425678D",
		"EUI.02004567A425678D":                                "eui.02004567A425678D",
		"naa.52004567ba64678d":                                "naa.52004567BA64678D",
		"naa.62004567BA64678D0123456789ABCDEF":                "naa.62004567BA64678D0123456789ABCDEF",
	}
	for in, want := range good {
		got, err := canonicalISCSIName(in)
		if err != nil || got != want {
			t.Errorf("canonicalISCSIName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := []string{
		"", "iqn", "iqn.", "iqn.2026-11", "iqn.2026-11.", "iqn.2026-13.com.x", "iqn.2026-00.com.x", "iqn.26-11.com.x",
		"iqn.2026-1.com.x", "iqn.2026-11.-com.x", "iqn.2026-11.com-.x", "iqn.2026-11.com..x", "iqn.2026-11.com.x:",
		"iqn.2026-11.com.x:a b", "iqn.2026-11.com.x:tab\there", "iqn.2026-11.com_x", " iqn.2026-11.com.x", "iqn.2026-11.com.x ",
		"iqn.2026-11.com.x\n", "eui.0200456", "eui.02004567A425678DA", "eui.02004567A425678G", "naa.1234", "naa.52004567ba64678d0",
		"foo.2026-11.com.x", "host1", "iqn.2026-11.com.x:" + strings.Repeat("a", 210),
	}
	for _, in := range bad {
		if got, err := canonicalISCSIName(in); !api.IsInvalidArgument(err) {
			t.Errorf("canonicalISCSIName(%q) = %q, %v; want invalid_argument", in, got, err)
		}
	}
	// 223 bytes is the limit.
	name := "iqn.2026-11.com.x:" + strings.Repeat("a", api.MaxISCSINameLen-len("iqn.2026-11.com.x:"))
	if _, err := canonicalISCSIName(name); err != nil {
		t.Errorf("a 223-byte name: %v", err)
	}
}

func TestValidateSetCHAP(t *testing.T) {
	t.Parallel()
	const (
		s12 = "abcdefghijkl"
		m12 = "mnopqrstuvwx"
	)
	tests := []struct {
		name     string
		req      api.SetCHAPRequest
		contains string // "" means valid
	}{
		{"one-way", api.SetCHAPRequest{User: "alice", Secret: s12}, ""},
		{"mutual", api.SetCHAPRequest{User: "iqn.1994-05.com.redhat:client1", Secret: s12, MutualUser: "target", MutualSecret: m12}, ""},
		{"255-byte secret", api.SetCHAPRequest{User: "u", Secret: strings.Repeat("s", 255)}, ""},
		{"punctuation and spaces in a secret", api.SetCHAPRequest{User: "u", Secret: "a b c d e f !@#"}, ""},
		{"no user", api.SetCHAPRequest{Secret: s12}, "user must be a CHAP name"},
		{"user with a space", api.SetCHAPRequest{User: "a b", Secret: s12}, "visible ASCII"},
		{"user too long", api.SetCHAPRequest{User: strings.Repeat("u", 256), Secret: s12}, "1 to 255"},
		{"no secret", api.SetCHAPRequest{User: "u"}, "secret is 0 bytes"},
		{"11-byte secret", api.SetCHAPRequest{User: "u", Secret: "abcdefghijk"}, "secret is 11 bytes: CHAP secrets must be 12 to 255 bytes"},
		{"256-byte secret", api.SetCHAPRequest{User: "u", Secret: strings.Repeat("s", 256)}, "secret is 256 bytes"},
		{"secret with a line break", api.SetCHAPRequest{User: "u", Secret: "abcdefghijkl\nmn"}, "control character at byte 12"},
		{"mutual secret without user", api.SetCHAPRequest{User: "u", Secret: s12, MutualSecret: m12}, "mutual_secret needs mutual_user"},
		{"mutual user without secret", api.SetCHAPRequest{User: "u", Secret: s12, MutualUser: "t"}, "mutual_user needs mutual_secret"},
		{"short mutual secret", api.SetCHAPRequest{User: "u", Secret: s12, MutualUser: "t", MutualSecret: "short"}, "mutual_secret is 5 bytes"},
		{"same secret both ways", api.SetCHAPRequest{User: "u", Secret: s12, MutualUser: "t", MutualSecret: s12}, "mutual_secret equals secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateSetCHAP(tt.req)
			if tt.contains == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !api.IsInvalidArgument(err) || !strings.Contains(err.Error(), tt.contains) {
				t.Fatalf("got %v, want invalid_argument containing %q", err, tt.contains)
			}
			for _, secret := range []string{tt.req.Secret, tt.req.MutualSecret} {
				if len(secret) >= 4 && strings.Contains(err.Error(), secret) {
					t.Errorf("the message %q quotes a secret", err)
				}
			}
		})
	}
}

func TestChangeAllowlist(t *testing.T) {
	t.Parallel()
	const (
		a = "iqn.2026-01.com.example:a"
		b = "iqn.2026-01.com.example:b"
		c = "eui.02004567A425678D"
	)
	tests := []struct {
		name             string
		old              []string
		allow, disallow  []string
		clear            bool
		want             []string
		changed          bool
		wantCode, errHas string
	}{
		{name: "allow into an empty list", allow: []string{b, a}, want: []string{a, b}, changed: true},
		{name: "allow what is listed", old: []string{a}, allow: []string{a}, want: []string{a}},
		{name: "allow one more", old: []string{a}, allow: []string{c, a}, want: []string{c, a}, changed: true},
		{name: "disallow", old: []string{a, b}, disallow: []string{a}, want: []string{b}, changed: true},
		{name: "swap", old: []string{a}, disallow: []string{a}, allow: []string{b}, want: []string{b}, changed: true},
		{name: "disallow what is not listed", old: []string{a}, disallow: []string{b}, wantCode: api.CodeNotFound, errHas: b + " is not in the allowlist"},
		{name: "disallow from an empty list", disallow: []string{a}, wantCode: api.CodeNotFound, errHas: "it is empty: every initiator may log in"},
		{name: "disallow the last", old: []string{a}, disallow: []string{a}, wantCode: api.CodeConflict, errHas: "an empty allowlist admits every initiator"},
		{name: "clear", old: []string{a, b}, clear: true, want: []string{}, changed: true},
		{name: "clear an empty list", clear: true, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			list, msg, err := changeAllowlist("v", tt.old, tt.allow, tt.disallow, tt.clear)
			if tt.wantCode != "" {
				if api.ErrorCode(err) != tt.wantCode || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("got %v, want %s containing %q", err, tt.wantCode, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(list, tt.want) || (msg != "") != tt.changed {
				t.Errorf("got %q, %q; want %q, changed %v", list, msg, tt.want, tt.changed)
			}
		})
	}
}

// authFixture is a server with two hosts and three volumes: v1 attached to
// h1, v2 to h2, v3 to none. Its log goes to a buffer as well, to be
// searched for secrets.
type authFixture struct {
	ts     *testServer
	h1, h2 int64
	log    *syncBuffer
}

func newAuthFixture(t *testing.T) *authFixture {
	t.Helper()
	buf := &syncBuffer{}
	ts := startServer(t, Config{ChunkSize: 64 << 20,
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(buf, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	for _, n := range []string{"cs-a", "cs-b", "cs-c"} {
		ts.addChunkserver(t, n, "", 100*gib)
	}
	f := &authFixture{ts: ts, h1: ts.addHost(t, "h1"), h2: ts.addHost(t, "h2"), log: buf}
	for _, v := range []struct{ name, host string }{{"v1", "h1"}, {"v2", "h2"}, {"v3", ""}} {
		if _, err := ts.Client.CreateVolume(t.Context(), api.CreateVolumeRequest{Name: v.name, SizeBytes: 4096, Layout: "mirror:2", Host: v.host}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// rawGet returns the body of a GET of the API.
func (ts *testServer) rawGet(t *testing.T, path string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, ts.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d %s, %v", path, resp.StatusCode, b, err)
	}
	return b
}

// dump returns the volumes table as text, as a dump would show it.
func (ts *testServer) dump(t *testing.T) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(t.Context(), `SELECT coalesce(string_agg(v::text, E'\n'), '') FROM volumes v`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// generation returns the cluster's generation.
func (ts *testServer) generation(t *testing.T) int64 {
	t.Helper()
	return ts.queryInt(t, `SELECT generation FROM cluster`)
}

// noSecrets fails the test if any of the secrets appears in what.
func noSecrets(t *testing.T, where string, what []byte, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if bytes.Contains(what, []byte(s)) {
			t.Errorf("%s shows the secret %q", where, s)
		}
	}
}

func TestVolumeCHAPSecretsReachOnlyTheAttachedHost(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	const (
		secret       = "s3cret-one-way-9Xq"
		mutualSecret = "s3cret-mutual-7Kw"
	)

	// h1 long-polls its volumes; setting CHAP wakes it with the secrets.
	hv, err := ts.Client.HostVolumes(ctx, f.h1, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hv.Volumes) != 1 || hv.Volumes[0].Auth.CHAPUser != "" || hv.Volumes[0].Auth.CHAPSecret != "" {
		t.Fatalf("h1 before CHAP: %+v", hv.Volumes)
	}
	woken := poll(func() (*api.HostVolumes, error) {
		return ts.Client.HostVolumes(ctx, f.h1, hv.Generation, 20*time.Second)
	})
	gen := ts.generation(t)
	start := time.Now()
	v, err := ts.Client.SetVolumeCHAP(ctx, "v1", api.SetCHAPRequest{User: "alice", Secret: secret, MutualUser: "target-v1", MutualSecret: mutualSecret})
	if err != nil {
		t.Fatal(err)
	}
	if v.Auth.CHAPUser != "alice" || v.Auth.MutualUser != "target-v1" || v.Auth.CHAPSecret != "" || v.Auth.MutualSecret != "" {
		t.Errorf("SetVolumeCHAP answered %+v", v.Auth)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("generation %d -> %d, want one bump", gen, g)
	}
	r := recv(t, woken, 5*time.Second)
	if r.err != nil {
		t.Fatal(r.err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("the long poll took %v to see the change", time.Since(start))
	}
	got := r.v.Volumes[0].Auth
	if got.CHAPUser != "alice" || got.CHAPSecret != secret || got.MutualUser != "target-v1" || got.MutualSecret != mutualSecret {
		t.Errorf("h1's HostVolumes auth = %+v", got)
	}

	// h2 sees its own volume only, without secrets; v1 is nowhere else.
	hv2, err := ts.Client.HostVolumes(ctx, f.h2, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(hv2.Volumes) != 1 || hv2.Volumes[0].Name != "v2" || hv2.Volumes[0].Auth.CHAPSecret != "" {
		t.Errorf("h2's volumes %+v", hv2.Volumes)
	}
	noSecrets(t, "h2's HostVolumes", ts.rawGet(t, fmt.Sprintf("/api/v1/hosts/%d/volumes", f.h2)), secret, mutualSecret)
	if b := ts.rawGet(t, fmt.Sprintf("/api/v1/hosts/%d/volumes", f.h1)); !bytes.Contains(b, []byte(`"chap_secret":"`+secret+`"`)) ||
		!bytes.Contains(b, []byte(`"mutual_secret":"`+mutualSecret+`"`)) {
		t.Errorf("h1's HostVolumes JSON lacks the secrets: %s", b)
	}

	// No volume endpoint shows them.
	for _, path := range []string{"/api/v1/volumes", "/api/v1/volumes/v1", "/api/v1/events?limit=1000", "/api/v1/chunks", "/api/v1/cluster"} {
		b := ts.rawGet(t, path)
		noSecrets(t, "GET "+path, b, secret, mutualSecret)
		if path == "/api/v1/volumes/v1" && (!bytes.Contains(b, []byte(`"chap_user":"alice"`)) || bytes.Contains(b, []byte("chap_secret"))) {
			t.Errorf("GET %s: %s", path, b)
		}
	}
	av, err := ts.Client.AttachVolume(ctx, "v1", "h1")
	if err != nil {
		t.Fatal(err)
	}
	if av.Auth.CHAPSecret != "" || av.Auth.MutualSecret != "" || av.Auth.CHAPUser != "alice" {
		t.Errorf("attach answered %+v", av.Auth)
	}
	noSecrets(t, "the log", []byte(f.log.String()), secret, mutualSecret)

	// Stored sealed: neither the columns nor a dump of the table show them.
	noSecrets(t, "the volumes table", []byte(ts.dump(t)), secret, mutualSecret)
	conn, err := pgx.Connect(ctx, ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var chapCol, mutualCol []byte
	if err := conn.QueryRow(ctx, `SELECT chap_secret, mutual_secret FROM volumes WHERE name = 'v1'`).Scan(&chapCol, &mutualCol); err != nil {
		t.Fatal(err)
	}
	if len(chapCol) != sealOverhead+len(secret) || chapCol[0] != sealVersion || len(mutualCol) != sealOverhead+len(mutualSecret) {
		t.Errorf("sealed columns of %d and %d bytes", len(chapCol), len(mutualCol))
	}
	noSecrets(t, "chap_secret", chapCol, secret, secret[:8])
	noSecrets(t, "mutual_secret", mutualCol, mutualSecret, mutualSecret[:8])
	box := mustSealer(t, ts.clusterSecret(t))
	if p, err := box.open(chapCol, secretPurpose("v1", colCHAPSecret)); err != nil || string(p) != secret {
		t.Errorf("the column opens to %q, %v", p, err)
	}

	// Events record the change by user name only.
	evs := eventsOf(ts.events(t, "v1"), api.EventVolumeAuthChanged)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "alice") || !strings.Contains(evs[0].Message, "target-v1") || evs[0].Subject != "volume/v1" {
		t.Errorf("auth events %+v", evs)
	}

	// Moving v1 to h2 moves its secrets with it.
	if _, err := ts.Client.AttachVolume(ctx, "v1", "h2"); err != nil {
		t.Fatal(err)
	}
	hv1, err := ts.Client.HostVolumes(ctx, f.h1, 0, 0)
	if err != nil || len(hv1.Volumes) != 0 {
		t.Errorf("h1 after the move: %+v, %v", hv1, err)
	}
	hv2, err = ts.Client.HostVolumes(ctx, f.h2, 0, 0)
	if err != nil || len(hv2.Volumes) != 2 || hv2.Volumes[0].Name != "v1" || hv2.Volumes[0].Auth.CHAPSecret != secret ||
		hv2.Volumes[1].Auth.CHAPSecret != "" {
		t.Errorf("h2 after the move: %+v, %v", hv2, err)
	}

	// One-way CHAP replaces mutual.
	if v, err = ts.Client.SetVolumeCHAP(ctx, "v1", api.SetCHAPRequest{User: "bob", Secret: "another-secret-12"}); err != nil {
		t.Fatal(err)
	}
	if v.Auth.CHAPUser != "bob" || v.Auth.MutualUser != "" {
		t.Errorf("after one-way CHAP: %+v", v.Auth)
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM volumes WHERE name = 'v1' AND mutual_secret IS NULL AND mutual_user = ''`); n != 1 {
		t.Error("the mutual secret was kept")
	}

	// Clearing removes it everywhere and bumps the generation once; a
	// second clear changes nothing and records nothing.
	gen = ts.generation(t)
	if err := ts.Client.ClearVolumeCHAP(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("clear: generation %d -> %d", gen, g)
	}
	if err := ts.Client.ClearVolumeCHAP(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("a second clear moved the generation to %d", g)
	}
	evs = eventsOf(ts.events(t, "v1"), api.EventVolumeAuthChanged)
	if len(evs) != 3 || !strings.Contains(evs[2].Message, "CHAP cleared") {
		t.Errorf("auth events after clearing: %+v", evs)
	}
	hv2, err = ts.Client.HostVolumes(ctx, f.h2, 0, 0)
	if au := hv2.Volumes[0].Auth; err != nil || au.CHAPUser != "" || au.CHAPSecret != "" || au.MutualUser != "" || au.MutualSecret != "" {
		t.Errorf("h2 after the clear: %+v, %v", hv2.Volumes[0].Auth, err)
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM volumes WHERE chap_secret IS NOT NULL OR chap_user <> ''`); n != 0 {
		t.Errorf("%d volumes keep CHAP after the clear", n)
	}
	noSecrets(t, "the events", ts.rawGet(t, "/api/v1/events?limit=1000"), secret, mutualSecret, "another-secret-12")
	noSecrets(t, "the log", []byte(f.log.String()), secret, mutualSecret, "another-secret-12")

	// Unknown volumes.
	_, err = ts.Client.SetVolumeCHAP(ctx, "nope", api.SetCHAPRequest{User: "u", Secret: secret})
	wantCode(t, err, api.CodeNotFound, 404)
	wantCode(t, ts.Client.ClearVolumeCHAP(ctx, "nope"), api.CodeNotFound, 404)
}

func TestVolumeCHAPValidationOverHTTP(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	gen := ts.generation(t)
	for _, req := range []api.SetCHAPRequest{
		{User: "u", Secret: "short-11-by"},
		{User: "u", Secret: "long-enough-secret", MutualUser: "t", MutualSecret: "long-enough-secret"},
		{User: "u", Secret: "long-enough-secret", MutualSecret: "other-long-secret"},
		{User: "", Secret: "long-enough-secret"},
	} {
		_, err := ts.Client.SetVolumeCHAP(ctx, "v1", req)
		ae := wantCode(t, err, api.CodeInvalidArgument, 400)
		noSecrets(t, "the message "+ae.Message, []byte(ae.Message), "short-11-by", "long-enough-secret", "other-long-secret")
	}
	code, e := rawCall(t, ts.Transport, ts.Token, http.MethodPut, ts.URL+"/api/v1/volumes/v1/chap", `{"user":"u","secret":"long-enough-secret","colour":"red"}`)
	if code != 400 || !strings.Contains(e.Message, "colour") {
		t.Errorf("unknown field: HTTP %d %+v", code, e)
	}
	if g := ts.generation(t); g != gen {
		t.Errorf("refused requests moved the generation %d -> %d", gen, g)
	}
	if n := len(eventsOf(ts.events(t, ""), api.EventVolumeAuthChanged)); n != 0 {
		t.Errorf("%d auth events after refusals", n)
	}
	noSecrets(t, "the log", []byte(f.log.String()), "short-11-by", "long-enough-secret", "other-long-secret")
}

func TestVolumeInitiatorAllowlist(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	const (
		a = "iqn.1994-05.com.redhat:client1"
		b = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"
		e = "eui.02004567A425678D"
	)
	v, err := ts.Client.GetVolume(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if v.Auth.AllowedInitiators == nil || len(v.Auth.AllowedInitiators) != 0 {
		t.Errorf("a new volume's allowlist is %#v, want empty", v.Auth.AllowedInitiators)
	}
	if b := ts.rawGet(t, "/api/v1/volumes/v1"); !bytes.Contains(b, []byte(`"auth":{"allowed_initiators":[]}`)) {
		t.Errorf("a new volume's auth JSON: %s", b)
	}

	gen := ts.generation(t)
	v, err = ts.Client.AllowInitiators(ctx, "v1", "IQN.1994-05.com.RedHat:Client1", b, "eui.02004567a425678d", a)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{e, a, b}
	if !slices.Equal(v.Auth.AllowedInitiators, want) {
		t.Errorf("allowlist %q, want %q", v.Auth.AllowedInitiators, want)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("allow: generation %d -> %d", gen, g)
	}
	hv, err := ts.Client.HostVolumes(ctx, f.h1, 0, 0)
	if err != nil || !slices.Equal(hv.Volumes[0].Auth.AllowedInitiators, want) {
		t.Errorf("h1 sees %+v, %v", hv, err)
	}
	// Allowing what is listed changes nothing.
	if v, err = ts.Client.AllowInitiators(ctx, "v1", a); err != nil || !slices.Equal(v.Auth.AllowedInitiators, want) {
		t.Errorf("allow again: %+v, %v", v, err)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("a no-op allow moved the generation to %d", g)
	}

	// Refusals change nothing.
	for _, tt := range []struct {
		req    api.InitiatorsRequest
		code   string
		status int
	}{
		{api.InitiatorsRequest{Allow: []string{"iqn.2026-13.com.example:x"}}, api.CodeInvalidArgument, 400},
		{api.InitiatorsRequest{Allow: []string{"client1"}}, api.CodeInvalidArgument, 400},
		{api.InitiatorsRequest{Allow: []string{a, "eui.12"}}, api.CodeInvalidArgument, 400},
		{api.InitiatorsRequest{}, api.CodeInvalidArgument, 400},
		{api.InitiatorsRequest{Allow: []string{a}, Disallow: []string{a}}, api.CodeInvalidArgument, 400},
		{api.InitiatorsRequest{Clear: true, Allow: []string{a}}, api.CodeInvalidArgument, 400},
		{api.InitiatorsRequest{Disallow: []string{"iqn.2026-01.com.example:stranger"}}, api.CodeNotFound, 404},
		{api.InitiatorsRequest{Disallow: []string{a, b, e}}, api.CodeConflict, 409},
	} {
		_, err := ts.Client.UpdateInitiators(ctx, "v1", tt.req)
		wantCode(t, err, tt.code, tt.status)
	}
	_, err = ts.Client.AllowInitiators(ctx, "nope", a)
	wantCode(t, err, api.CodeNotFound, 404)
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("refusals moved the generation to %d", g)
	}
	if v, err = ts.Client.GetVolume(ctx, "v1"); err != nil || !slices.Equal(v.Auth.AllowedInitiators, want) {
		t.Errorf("after refusals: %+v, %v", v, err)
	}

	// Disallow, case-insensitively.
	if v, err = ts.Client.DisallowInitiators(ctx, "v1", "EUI.02004567a425678D", b); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v.Auth.AllowedInitiators, []string{a}) {
		t.Errorf("after disallow: %q", v.Auth.AllowedInitiators)
	}
	// Clear on purpose.
	if v, err = ts.Client.UpdateInitiators(ctx, "v1", api.InitiatorsRequest{Clear: true}); err != nil || len(v.Auth.AllowedInitiators) != 0 {
		t.Errorf("clear: %+v, %v", v, err)
	}
	if g := ts.generation(t); g != gen+3 {
		t.Errorf("generation %d after allow, disallow and clear from %d", g, gen)
	}
	evs := eventsOf(ts.events(t, "v1"), api.EventVolumeAuthChanged)
	if len(evs) != 3 {
		t.Fatalf("auth events %+v", evs)
	}
	for i, want := range []string{"allowed " + e + ", " + a + ", " + b + "; 3 initiators may log in", "disallowed " + e + ", " + b + "; only " + a + " may log in", "cleared"} {
		if !strings.Contains(evs[i].Message, want) {
			t.Errorf("event %d %q does not contain %q", i, evs[i].Message, want)
		}
	}
	// Other volumes are untouched.
	if v, err = ts.Client.GetVolume(ctx, "v2"); err != nil || len(v.Auth.AllowedInitiators) != 0 {
		t.Errorf("v2: %+v, %v", v, err)
	}
	// An allowlist holds at most 256 names.
	many := make([]string, api.MaxAllowedInitiators+1)
	for i := range many {
		many[i] = fmt.Sprintf("iqn.2026-01.com.example:h%d", i)
	}
	_, err = ts.Client.AllowInitiators(ctx, "v3", many...)
	wantCode(t, err, api.CodeInvalidArgument, 400)
	if v, err = ts.Client.AllowInitiators(ctx, "v3", many[:api.MaxAllowedInitiators]...); err != nil || len(v.Auth.AllowedInitiators) != api.MaxAllowedInitiators {
		t.Fatalf("256 initiators: %v", err)
	}
	_, err = ts.Client.AllowInitiators(ctx, "v3", many[api.MaxAllowedInitiators])
	wantCode(t, err, api.CodeInvalidArgument, 400)
}

// FuzzInitiatorsRequest feeds arbitrary bodies through the decoder and the
// validation of an allowlist change: nothing panics, refusals are
// invalid_argument, and accepted names are canonical iSCSI names that
// canonicalize to themselves.
func FuzzInitiatorsRequest(f *testing.F) {
	for _, s := range []string{
		`{"allow":["iqn.1994-05.com.redhat:client1","EUI.02004567a425678d"]}`,
		`{"disallow":["naa.52004567BA64678D"],"allow":["iqn.2026-11.x"]}`,
		`{"clear":true}`, `{"clear":true,"allow":["iqn.2026-11.x"]}`,
		`{"allow":["iqn.2026-13.x","iqn.2026-11.-x"]}`, `{}`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.InitiatorsRequest
		if err := decodeBytes(body, &req); err != nil {
			return
		}
		allow, disallow, err := validateInitiatorsRequest(req)
		if err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("validation error %v is not invalid_argument", err)
			}
			return
		}
		for _, n := range slices.Concat(allow, disallow) {
			c, err := canonicalISCSIName(n)
			if err != nil || c != n || len(n) > api.MaxISCSINameLen || !(iqnRE.MatchString(n) || euiRE.MatchString(n) || naaRE.MatchString(n)) {
				t.Fatalf("accepted %q (canonical %q, %v)", n, c, err)
			}
		}
		if req.Clear && (len(allow) > 0 || len(disallow) > 0) {
			t.Fatalf("accepted clear with names: %+v", req)
		}
	})
}
