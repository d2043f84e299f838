package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestClientErrors(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"code":"not_found","message":"volume \"` + r.PathValue("name") + `\" does not exist"}`))
	})
	mux.HandleFunc("POST /api/v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		w.Write([]byte("<html>" + strings.Repeat("proxy error ", 50) + "</html>"))
	})
	mux.HandleFunc("DELETE /api/v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	})
	mux.HandleFunc("GET /api/v1/hosts", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`[{"id":1,"name":"h"`)) // truncated
	})
	hs := httptest.NewServer(mux)
	defer hs.Close()
	c := NewClient(hs.URL+"/", nil)
	ctx := t.Context()

	_, err := c.GetVolume(ctx, "a b")
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeNotFound || e.Status != 404 || e.Message != `volume "a b" does not exist` {
		t.Fatalf("GetVolume: %#v", err)
	}
	if !IsNotFound(err) || IsConflict(err) || !IsClientError(err) || ErrorCode(err) != CodeNotFound {
		t.Errorf("helpers disagree on %v", err)
	}
	if err.Error() != `not_found: volume "a b" does not exist` {
		t.Errorf("Error() = %q", err.Error())
	}

	_, err = c.CreateVolume(ctx, CreateVolumeRequest{Name: "v"})
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusBadGateway || len(se.Body) > 210 || !strings.HasPrefix(se.Body, "<html>proxy error") {
		t.Fatalf("CreateVolume: %#v", err)
	}
	if !strings.Contains(err.Error(), "HTTP 502 Bad Gateway") || ErrorCode(err) != "" || IsClientError(err) {
		t.Errorf("non-envelope error: %v", err)
	}

	err = c.DeleteVolume(ctx, "v")
	if !errors.As(err, &se) || se.Status != 500 || !strings.Contains(err.Error(), "(empty body)") {
		t.Errorf("empty 500: %v", err)
	}

	hosts, err := c.ListHosts(ctx)
	if err == nil || hosts != nil || !strings.Contains(err.Error(), "decode response") {
		t.Errorf("truncated JSON: %v, %v", hosts, err)
	}
}

func TestClientLongPollAndRequests(t *testing.T) {
	var gotQuery, gotBody, gotType string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = r.URL.RawQuery
		gotType = r.Header.Get("Content-Type")
		b := make([]byte, 512)
		n, _ := r.Body.Read(b)
		gotBody = string(b[:n])
		switch r.URL.Path {
		case "/api/v1/chunkservers/7/chunks":
			w.Write([]byte(`{"generation":9,"chunk_size":1048576,"chunks":[{"id":"x","size_bytes":1,"state":"active"}]}`))
		case "/api/v1/chunkservers/7/heartbeat", "/api/v1/chunkservers/7/chunks/c1":
			w.WriteHeader(http.StatusNoContent)
		case "/api/v1/disks":
			w.Write([]byte(`null`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer hs.Close()
	c := NewClient(hs.URL, nil)
	ctx := t.Context()

	as, err := c.ChunkAssignments(ctx, 7, 8, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if as.Generation != 9 || len(as.Chunks) != 1 || as.Chunks[0].State != ChunkActive {
		t.Errorf("assignments %+v", as)
	}
	if gotQuery != "after=8&wait=1m0s" {
		t.Errorf("query %q: the wait must be capped at MaxWait", gotQuery)
	}
	if _, err := c.ChunkAssignments(ctx, 7, 0, 0); err != nil || gotQuery != "after=0" {
		t.Errorf("no wait: query %q, %v", gotQuery, err)
	}
	if err := c.ChunkserverHeartbeat(ctx, 7, ChunkserverHeartbeat{Disks: []DiskInfo{{Path: "/d", CapacityBytes: 2, FreeBytes: 1}}}); err != nil {
		t.Fatal(err)
	}
	if gotType != "application/json" || gotBody != `{"disks":[{"path":"/d","capacity_bytes":2,"free_bytes":1}]}` {
		t.Errorf("heartbeat sent %q %q", gotType, gotBody)
	}
	if err := c.AckChunkDeleted(ctx, 7, "c1"); err != nil {
		t.Fatal(err)
	}
	disks, err := c.ListDisks(ctx)
	if err != nil || disks == nil || len(disks) != 0 {
		t.Errorf("null list: %#v, %v", disks, err)
	}
	// Unknown routes of a non-metaserver: a plain error with the status.
	if err := c.Health(ctx); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("health against a stranger: %v", err)
	}
}

func TestClientHonoursContext(t *testing.T) {
	release := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hs.Close()
	defer close(release)
	c := NewClient(hs.URL, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.HostVolumes(ctx, 1, 0, 30*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("err %v after %v", err, time.Since(start))
	}
}

func TestHTTPStatus(t *testing.T) {
	for code, want := range map[string]int{
		CodeInvalidArgument: 400, CodeNotFound: 404, CodeAlreadyExists: 409, CodeUnsatisfiable: 409,
		CodeConflict: 409, CodeInternal: 500, CodeUnavailable: 503, "something_new": 500,
	} {
		if got := HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%q) = %d, want %d", code, got, want)
		}
	}
}

// TestClientFailsOver: a client of several metaservers sends a call to the
// one that answered last and fails over to the next when one is down (the
// dial fails), a read gets no answer, or one answers 503; a write that
// may have been applied is not sent twice.
func TestClientFailsOver(t *testing.T) {
	type server struct {
		*httptest.Server
		mode   atomic.Value // "ok", "503" or "drop"
		served atomic.Int32
	}
	start := func(name string) *server {
		s := &server{}
		s.mode.Store("ok")
		s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.served.Add(1)
			switch s.mode.Load() {
			case "503":
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte(`{"code":"unavailable","message":"the database is unreachable"}`))
			case "drop":
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
			default:
				if r.Method == http.MethodGet {
					w.Write([]byte(`[{"id":1,"name":"` + name + `"}]`))
				} else {
					w.WriteHeader(http.StatusNoContent)
				}
			}
		}))
		t.Cleanup(s.Close)
		return s
	}
	down := start("down")
	down.Close() // refuses connections
	a, b := start("a"), start("b")
	c := NewClient(down.URL+", "+a.URL+"/,"+b.URL, nil)
	ctx := t.Context()
	name := func() string {
		t.Helper()
		hs, err := c.ListHosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return hs[0].Name
	}
	if got := name(); got != "a" || c.URLs()[0] != a.URL {
		t.Fatalf("with the first metaserver down: answered by %s, URLs %v", got, c.URLs())
	}
	if got := name(); got != "a" || a.served.Load() != 2 {
		t.Fatalf("the next call: answered by %s, a served %d", got, a.served.Load())
	}
	// a answers 503 (its database is away): b takes the call and the
	// next ones.
	a.mode.Store("503")
	if got := name(); got != "b" {
		t.Fatalf("after a 503: answered by %s", got)
	}
	if err := c.HostHeartbeat(ctx, 1); err != nil || b.served.Load() != 2 {
		t.Fatalf("a write after the failover: %v, b served %d", err, b.served.Load())
	}
	// A write answered 503 is not sent elsewhere: it may have reached the
	// database before its connection broke.
	b.mode.Store("503")
	if err := c.HostHeartbeat(ctx, 1); ErrorCode(err) != "unavailable" || a.served.Load() != 3 {
		t.Fatalf("a write answered 503: %v, a served %d", err, a.served.Load())
	}
	b.mode.Store("ok")
	// b drops its connections without an answer: a write is not
	// repeated; a read goes on to the next (down, then a, which answers
	// 503, the last error).
	b.mode.Store("drop")
	before := b.served.Load()
	if err := c.HostHeartbeat(ctx, 1); err == nil || b.served.Load() != before+1 {
		t.Fatalf("a write that got no answer: %v, b served %d times (want once more)", err, b.served.Load()-before)
	}
	if _, err := c.ListHosts(ctx); ErrorCode(err) != "unavailable" {
		t.Fatalf("a read with every metaserver failing: %v", err)
	}
}
