package cli

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
)

// TestUnreachableMetaserver: a CLI command against a metaserver that is
// not there fails with one line that names the URL it tried and how to set
// it, not with a Go transport error.
func TestUnreachableMetaserver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	root := NewRoot()
	root.SetArgs([]string{"--metaserver", url, "volume", "list"})
	err = root.ExecuteContext(t.Context())
	if err == nil {
		t.Fatal("volume list against a closed port succeeded")
	}
	msg := explain(err).Error()
	for _, want := range []string{"cannot reach the metaserver at " + url, "connection refused", "--metaserver", EnvMetaserver} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "/api/v1") || strings.Contains(msg, "\n") {
		t.Errorf("message %q names an API route or spans lines", msg)
	}
}

// TestToken: the CLI sends the token of --token-file, or else of
// CHUNKRAID_TOKEN, as its bearer token; refused, it fails with one line
// that names both.
func TestToken(t *testing.T) {
	var got []string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		got = append(got, h)
		w.Header().Set("Content-Type", "application/json")
		if h != "Bearer chunkraid_good" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"code":"unauthenticated","message":"GET /api/v1/volumes needs a token"}`)
			return
		}
		fmt.Fprint(w, `[]`)
	}))
	defer hs.Close()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("chunkraid_good\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runCLI := func(args ...string) error {
		root := NewRoot()
		root.SetOut(io.Discard)
		root.SetArgs(append([]string{"--metaserver", hs.URL}, args...))
		return root.ExecuteContext(t.Context())
	}
	t.Setenv(EnvToken, "chunkraid_wrong")
	if err := runCLI("--token-file", file, "volume", "list", "-o", "json"); err != nil {
		t.Fatalf("with --token-file: %v", err)
	}
	t.Setenv(EnvToken, "chunkraid_good")
	if err := runCLI("volume", "list", "-o", "json"); err != nil {
		t.Fatalf("with %s: %v", EnvToken, err)
	}
	t.Setenv(EnvToken, "")
	err := runCLI("volume", "list")
	if err == nil {
		t.Fatal("volume list without a token succeeded")
	}
	msg := explain(err).Error()
	if !strings.Contains(msg, EnvToken) || !strings.Contains(msg, "--token-file") || strings.Contains(msg, "\n") {
		t.Errorf("without a token: %q, want one line naming %s and --token-file", msg, EnvToken)
	}
	if want := []string{"Bearer chunkraid_good", "Bearer chunkraid_good", ""}; !slices.Equal(got, want) {
		t.Errorf("Authorization headers %q, want %q", got, want)
	}
	if err := runCLI("--token-file", filepath.Join(t.TempDir(), "none"), "volume", "list"); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("a missing token file: %v", err)
	}
}

// TestCAFile: against an https:// metaserver the CLI trusts the CA of
// --ca-file (or CHUNKRAID_CA) and no other; without it, it fails with one
// line that says where the CA goes.
func TestCAFile(t *testing.T) {
	now := time.Now()
	ca, caKey, err := pki.NewCA("cluster", now)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := pki.Issue(ca, caKey, pki.Metaserver, "metaserver", []string{"127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := pki.ServerConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `[]`)
	}))
	hs.TLS = scfg
	hs.StartTLS()
	defer hs.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	other, _, err := pki.NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(dir, "other.crt")
	if err := os.WriteFile(otherFile, other, 0o644); err != nil {
		t.Fatal(err)
	}
	runCLI := func(args ...string) error {
		root := NewRoot()
		root.SetArgs(append([]string{"--metaserver", hs.URL, "-o", "json"}, args...))
		return root.ExecuteContext(t.Context())
	}
	t.Setenv(EnvCA, "")
	if err := runCLI("--ca-file", caFile, "volume", "list"); err != nil {
		t.Fatalf("with the cluster CA: %v", err)
	}
	for name, args := range map[string][]string{"no CA": {"volume", "list"}, "another CA": {"--ca-file", otherFile, "volume", "list"}} {
		err := runCLI(args...)
		if err == nil {
			t.Fatalf("%s: succeeded", name)
		}
		if msg := explain(err).Error(); !strings.Contains(msg, "--ca-file") || !strings.Contains(msg, EnvCA) || strings.Contains(msg, "\n") {
			t.Errorf("%s: %q, want one line naming --ca-file and %s", name, msg, EnvCA)
		}
	}
	t.Setenv(EnvCA, caFile)
	if err := runCLI("volume", "list"); err != nil {
		t.Fatalf("with %s: %v", EnvCA, err)
	}
}

// TestDemoChunkserversFlag: the demo refuses a chunkserver count its
// mirror:2 volume cannot live with, before it starts anything.
func TestDemoChunkserversFlag(t *testing.T) {
	for _, n := range []string{"1", "0", "33"} {
		root := NewRoot()
		dir := t.TempDir()
		root.SetArgs([]string{"demo", "--dir", dir, "--chunkservers", n})
		root.SetOut(io.Discard)
		err := root.ExecuteContext(t.Context())
		if err == nil || !strings.Contains(err.Error(), "--chunkservers "+n) {
			t.Errorf("--chunkservers %s: %v", n, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("--chunkservers %s left %d entries in the demo directory", n, len(entries))
		}
	}
}

// TestDemoReplaceAfterFlag: a replace_after the demo's T forbids is refused
// before anything starts.
func TestDemoReplaceAfterFlag(t *testing.T) {
	root := NewRoot()
	dir := t.TempDir()
	root.SetArgs([]string{"demo", "--dir", dir, "--replace-after", "30s"})
	root.SetOut(io.Discard)
	if err := root.ExecuteContext(t.Context()); err == nil || !strings.Contains(err.Error(), "--replace-after 30s") {
		t.Errorf("--replace-after 30s: %v", err)
	}
}
