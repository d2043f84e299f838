package chunkserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/control"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

const (
	testSecret    = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7"
	testChunkSize = 8 << 20
	testRegion    = 1 << 20
)

// fakeMeta is the part of the metaserver's API a chunkserver uses:
// registration, heartbeats, chunk assignments (long-polled) and the
// cluster settings.
type fakeMeta struct {
	t    *testing.T
	srv  *httptest.Server
	resp api.RegisterChunkserverResponse
	// ca and caKey are the test cluster's CA, which signs the control API's
	// certificate at registration.
	ca, caKey []byte
	// offlineAfter is the cluster's offline_after in seconds.
	offlineAfter float64

	mu struct {
		sync.Mutex
		gen        int64
		chunks     []api.ChunkAssignment
		changed    chan struct{}
		registered []api.RegisterChunkserverRequest
		heartbeat  api.ChunkserverHeartbeat // the last one
	}
}

func newFakeMeta(t *testing.T, chunks ...string) *fakeMeta {
	m := &fakeMeta{t: t, resp: api.RegisterChunkserverResponse{
		ID: 1, ChunkSize: testChunkSize, ClusterSecret: testSecret, IOTimeoutMS: 5000, LogPeriodMS: 60000,
	}, offlineAfter: 10}
	m.mu.gen = 1
	m.mu.changed = make(chan struct{})
	var err error
	if m.ca, m.caKey, err = pki.NewCA("test cluster", time.Now()); err != nil {
		t.Fatal(err)
	}
	m.resp.ClusterCA = string(m.ca)
	for _, c := range chunks {
		m.mu.chunks = append(m.mu.chunks, api.ChunkAssignment{ID: c, SizeBytes: testChunkSize, State: api.ChunkActive})
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/chunkservers", func(w http.ResponseWriter, r *http.Request) {
		var req api.RegisterChunkserverRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		host, _, _ := net.SplitHostPort(req.ControlAddr)
		cert, err := pki.Sign(m.ca, m.caKey, []byte(req.ControlCSR), pki.Chunkserver, []string{host}, time.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		m.mu.Lock()
		m.mu.registered = append(m.mu.registered, req)
		resp := m.resp
		m.mu.Unlock()
		resp.ControlCert = string(cert)
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST /api/v1/chunkservers/{id}/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		var hb api.ChunkserverHeartbeat
		if err := json.NewDecoder(r.Body).Decode(&hb); err != nil {
			t.Errorf("heartbeat body: %v", err)
		}
		m.mu.Lock()
		m.mu.heartbeat = hb
		m.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /api/v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.Cluster{ChunkSize: testChunkSize, OfflineAfterSeconds: m.offlineAfter})
	})
	mux.HandleFunc("GET /api/v1/chunkservers/{id}/chunks", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
		m.mu.Lock()
		gen, changed := m.mu.gen, m.mu.changed
		m.mu.Unlock()
		if after == gen && r.URL.Query().Get("wait") != "" {
			select {
			case <-changed:
			case <-r.Context().Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
		m.mu.Lock()
		out := api.ChunkAssignments{Generation: m.mu.gen, ChunkSize: testChunkSize,
			Chunks: append([]api.ChunkAssignment(nil), m.mu.chunks...)}
		m.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /api/v1/chunkservers/{id}/chunks/{chunk}", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		kept := m.mu.chunks[:0]
		for _, c := range m.mu.chunks {
			if c.ID != r.PathValue("chunk") {
				kept = append(kept, c)
			}
		}
		m.mu.chunks = kept
		w.WriteHeader(http.StatusNoContent)
	})
	m.srv = httptest.NewServer(mux)
	t.Cleanup(m.srv.Close)
	return m
}

// setChunks replaces the assignments and wakes the long polls.
func (m *fakeMeta) setChunks(chunks []api.ChunkAssignment) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mu.chunks = chunks
	m.mu.gen++
	close(m.mu.changed)
	m.mu.changed = make(chan struct{})
}

func (m *fakeMeta) lastRegistration() api.RegisterChunkserverRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.mu.registered) == 0 {
		m.t.Fatal("no registration")
	}
	return m.mu.registered[len(m.mu.registered)-1]
}

// testCS is a chunkserver running in the test.
type testCS struct {
	s       *Server
	nbdAddr string
	ctlAddr string
	ctl     *control.Client
	hc      *http.Client // trusts the test cluster's CA
	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

// startCS runs a chunkserver against meta on dir and waits until it holds
// every chunk meta assigns.
func startCS(t *testing.T, meta *fakeMeta, dir string, tweak func(*Config)) *testCS {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Name: "cs1", DataDir: dir, Listener: ln, ControlListener: cln, Metaserver: meta.srv.URL,
		HeartbeatInterval: 100 * time.Millisecond, LogRegion: testRegion, Logger: testLogger(t),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cs := &testCS{s: s, nbdAddr: ln.Addr().String(), ctlAddr: cln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	hc, err := control.HTTPClient(meta.ca)
	if err != nil {
		t.Fatal(err)
	}
	cs.ctl, cs.hc = control.NewClient(cs.ctlAddr, hc), hc
	go func() { cs.done <- s.Run(ctx) }()
	t.Cleanup(func() { cs.stop(t) })
	select {
	case <-s.ready:
	case err := <-cs.done:
		t.Fatalf("chunkserver stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("chunkserver not ready")
	}
	meta.mu.Lock()
	want := append([]api.ChunkAssignment(nil), meta.mu.chunks...)
	meta.mu.Unlock()
	for _, a := range want {
		waitFor(t, "chunk "+a.ID+" created", func() bool { _, err := s.store.Get(a.ID); return err == nil })
	}
	return cs
}

func (cs *testCS) stop(t *testing.T) {
	t.Helper()
	if cs.stopped {
		return
	}
	cs.stopped = true
	cs.cancel()
	select {
	case err := <-cs.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("chunkserver did not stop")
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exportName(chunk, host string, epoch int64) string {
	return api.ExportName{Chunk: chunk, Host: host, Epoch: epoch, Token: api.ExportToken(testSecret, chunk, host, epoch)}.String()
}

func cred(chunk, host string, epoch int64) api.ControlRequest {
	return api.ControlRequest{Host: host, Epoch: epoch, Token: api.ExportToken(testSecret, chunk, host, epoch)}
}

func (cs *testCS) dial(t *testing.T, name string, tweak func(*nbd.ClientConfig)) *nbd.Client {
	t.Helper()
	cfg := nbd.ClientConfig{Addr: cs.nbdAddr, Export: name, DialTimeout: 5 * time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := nbd.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// logBits reads chunk's LOG bitmap through the control API.
func (cs *testCS) logBits(t *testing.T, chunk string, epoch int64) *api.LogBitmap {
	t.Helper()
	lb, err := cs.ctl.Log(t.Context(), chunk, cred(chunk, "h1", epoch))
	if err != nil {
		t.Fatalf("log of %s: %v", chunk, err)
	}
	return lb
}

// dirty lists the regions set in a LOG bitmap.
func dirty(bits []byte) []int {
	var out []int
	for i := range len(bits) * 8 {
		if bits[i/8]&(1<<(i%8)) != 0 {
			out = append(out, i)
		}
	}
	return out
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// tool finds a client binary; a missing one fails the test.
func tool(t *testing.T, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real process: not in -short (make test runs it)")
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run make deps", name)
	}
	return p
}

// runTool runs a client binary with a deadline and returns its combined
// output and whether it succeeded.
func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return runToolEnv(t, nil, name, args...)
}

// runToolEnv is runTool with extra environment variables.
func runToolEnv(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(t, name), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// proxy forwards one TCP connection to target until cut, which drops
// both sides at once like a failed link.
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// apiError returns the *api.Error in err's chain, failing the test if there is none.
func apiError(t *testing.T, err error) *api.Error {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an API error", err)
	}
	return e
}

type mapLine struct {
	off, length int64
	flags       uint32
}

// mapLines parses `nbdinfo --map` output: offset, length, flags and a
// description per line.
func mapLines(t *testing.T, out string) []mapLine {
	t.Helper()
	var ls []mapLine
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		off, err1 := strconv.ParseInt(f[0], 10, 64)
		n, err2 := strconv.ParseInt(f[1], 10, 64)
		fl, err3 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("unexpected --map line %q", line)
		}
		ls = append(ls, mapLine{off, n, uint32(fl)})
	}
	if len(ls) == 0 {
		t.Fatalf("no map lines in %q", out)
	}
	return ls
}
