package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/control"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// recorder is a fake control server that records the last request and
// answers with a fixed status and body.
type recorder struct {
	method, path, query string
	body                api.ControlRequest
	status              int
	answer              string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.method, r.path, r.query = req.Method, req.URL.EscapedPath(), req.URL.RawQuery
	r.body = api.ControlRequest{}
	if req.Body != nil {
		_ = json.NewDecoder(req.Body).Decode(&r.body)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(r.status)
	_, _ = w.Write([]byte(r.answer))
}

func TestClientCalls(t *testing.T) {
	cred := api.ControlRequest{Host: "h1", Epoch: 3, Token: "abcd"}
	tests := []struct {
		name     string
		call     func(c *control.Client) (any, error)
		answer   string
		method   string
		path     string
		query    string
		wantBody bool
		want     any
	}{
		{
			name:   "fence",
			call:   func(c *control.Client) (any, error) { return c.Fence(t.Context(), "c/1", cred) },
			answer: `{"min_epoch":3,"pinned":true}`, method: "POST", path: "/v1/chunks/c%2F1/fence", wantBody: true,
			want: &api.ControlResponse{MinEpoch: 3, Pinned: true},
		},
		{
			name:   "pin",
			call:   func(c *control.Client) (any, error) { return c.Pin(t.Context(), "c1", cred) },
			answer: `{"min_epoch":2,"pinned":true}`, method: "POST", path: "/v1/chunks/c1/pin", wantBody: true,
			want: &api.ControlResponse{MinEpoch: 2, Pinned: true},
		},
		{
			name:   "unpin",
			call:   func(c *control.Client) (any, error) { return c.Unpin(t.Context(), "c1", cred) },
			answer: `{"min_epoch":2,"pinned":false}`, method: "POST", path: "/v1/chunks/c1/unpin", wantBody: true,
			want: &api.ControlResponse{MinEpoch: 2},
		},
		{
			name:   "log",
			call:   func(c *control.Client) (any, error) { return c.Log(t.Context(), "c1", cred) },
			answer: `{"region_size":1024,"size":4096,"bits":"BQ==","pinned":true}`, method: "GET",
			path: "/v1/chunks/c1/log", query: "epoch=3&host=h1&token=abcd",
			want: &api.LogBitmap{RegionSize: 1024, Size: 4096, Bits: []byte{5}, Pinned: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{status: http.StatusOK, answer: tt.answer}
			srv := httptest.NewTLSServer(rec)
			defer srv.Close()
			for _, addr := range []string{strings.TrimPrefix(srv.URL, "https://"), srv.URL + "/"} {
				got, err := tt.call(control.NewClient(addr, srv.Client()))
				if err != nil {
					t.Fatalf("addr %q: %v", addr, err)
				}
				if rec.method != tt.method || rec.path != tt.path || rec.query != tt.query {
					t.Fatalf("request %s %s?%s, want %s %s?%s", rec.method, rec.path, rec.query, tt.method, tt.path, tt.query)
				}
				if tt.wantBody && rec.body != cred {
					t.Fatalf("body %+v, want %+v", rec.body, cred)
				}
				gj, _ := json.Marshal(got)
				wj, _ := json.Marshal(tt.want)
				if string(gj) != string(wj) {
					t.Fatalf("answer %s, want %s", gj, wj)
				}
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		answer     string
		code       string
		fenced     bool
		unauth     bool
		notFound   bool
		statusOnly bool
	}{
		{name: "unauthenticated", status: 401, answer: `{"code":"unauthenticated","message":"bad access token for chunk c1"}`, code: control.CodeUnauthenticated, unauth: true},
		{name: "fenced", status: 403, answer: `{"code":"fenced","message":"chunk c1 is fenced at epoch 5"}`, code: control.CodeFenced, fenced: true},
		{name: "not found", status: 404, answer: `{"code":"not_found","message":"no chunk c1"}`, code: api.CodeNotFound, notFound: true},
		{name: "not an envelope", status: 502, answer: `<html>bad gateway</html>`, statusOnly: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(&recorder{status: tt.status, answer: tt.answer})
			defer srv.Close()
			_, err := control.NewClient(srv.URL, nil).Pin(t.Context(), "c1", api.ControlRequest{Host: "h", Epoch: 1, Token: "t"})
			if err == nil {
				t.Fatal("no error")
			}
			if tt.statusOnly {
				var se *api.StatusError
				if !errors.As(err, &se) || se.Status != tt.status {
					t.Fatalf("err %v, want *api.StatusError with status %d", err, tt.status)
				}
				return
			}
			var e *api.Error
			if !errors.As(err, &e) || e.Code != tt.code || e.Status != tt.status {
				t.Fatalf("err %#v, want code %q status %d", err, tt.code, tt.status)
			}
			if control.IsFenced(err) != tt.fenced || control.IsUnauthenticated(err) != tt.unauth || api.IsNotFound(err) != tt.notFound {
				t.Fatalf("predicates wrong for %v", err)
			}
			if control.HTTPStatus(tt.code) != tt.status {
				t.Fatalf("HTTPStatus(%q) = %d, want %d", tt.code, control.HTTPStatus(tt.code), tt.status)
			}
		})
	}
}

func TestClientContextCancel(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := control.NewClient(srv.URL, nil).Fence(ctx, "c1", api.ControlRequest{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

// TestHTTPClientVerifies: HTTPClient reaches a control API whose certificate
// the cluster CA signed for a chunkserver, and refuses one another CA signed
// and one the cluster CA signed for the metaserver.
func TestHTTPClientVerifies(t *testing.T) {
	now := time.Now()
	ca, caKey, err := pki.NewCA("cluster", now)
	if err != nil {
		t.Fatal(err)
	}
	other, otherKey, err := pki.NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := control.HTTPClient(ca)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		ca, caKey []byte
		role      pki.Role
		wantErr   string
	}{
		{"the cluster's chunkserver", ca, caKey, pki.Chunkserver, ""},
		{"another CA's chunkserver", other, otherKey, pki.Chunkserver, "certificate signed by unknown authority"},
		{"the cluster's metaserver", ca, caKey, pki.Metaserver, "not a chunkserver certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cert, key, err := pki.Issue(tt.ca, tt.caKey, tt.role, "x", []string{"127.0.0.1"}, now)
			if err != nil {
				t.Fatal(err)
			}
			scfg, err := pki.ServerConfig(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewUnstartedServer(&recorder{status: http.StatusOK, answer: `{"min_epoch":1}`})
			srv.TLS = scfg
			srv.StartTLS()
			defer srv.Close()
			_, err = control.NewClient(strings.TrimPrefix(srv.URL, "https://"), hc).Fence(t.Context(), "c1", api.ControlRequest{Host: "h", Epoch: 1, Token: "t"})
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			t.Logf("%s: %v", tt.name, err)
		})
	}
}
