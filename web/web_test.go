package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestHandler: the page and its assets are served with their types and a
// strict content security policy; nothing else is.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		code         int
		ctype, body  string
	}{
		{"GET", "/", 200, "text/html", `<script type="module" src="/static/app.js">`},
		{"GET", "/static/app.js", 200, "text/javascript", "export function parseSize"},
		{"GET", "/static/style.css", 200, "text/css", "--bad"},
		{"GET", "/static/nosuch.js", 404, "", ""},
		{"POST", "/", 405, "", ""},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) || !strings.Contains(string(b), tc.body) {
			t.Errorf("%s %s: %d %q, body %.80q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s %s: CSP %q", tc.method, tc.path, csp)
		}
	}
	for _, p := range []string{"/", "/static/app.js"} {
		if !Owns(p) {
			t.Errorf("Owns(%q) = false", p)
		}
	}
	for _, p := range []string{"/api/v1/volumes", "/metrics", "/healthz", "/static"} {
		if Owns(p) {
			t.Errorf("Owns(%q) = true", p)
		}
	}
}
