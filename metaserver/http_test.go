package metaserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// rawCall sends a request without the client, through rt (nil: the
// default transport; a test server's Transport verifies its TLS), with
// token as its bearer token unless "", and decodes the error envelope.
func rawCall(t *testing.T, rt http.RoundTripper, token, method, url, body string) (int, api.Error) {
	t.Helper()
	if rt == nil {
		rt = http.DefaultTransport
	}
	hc := &http.Client{Transport: rt}
	if token != "" {
		hc = &http.Client{Transport: bearerTransport{token, rt}}
	}
	return rawCallWith(t, hc, method, url, body)
}

type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// rawCallWith sends a request with hc and decodes the error envelope.
func rawCallWith(t *testing.T, hc *http.Client, method, url, body string) (int, api.Error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e api.Error
	if resp.StatusCode >= 300 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: content type %q", method, url, ct)
		}
		if err := json.Unmarshal(data, &e); err != nil || e.Code == "" || e.Message == "" {
			t.Errorf("%s %s: HTTP %d body %q is not an error envelope", method, url, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, e
}

func TestRequestBodies(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	cs := ts.addChunkserver(t, "cs1", "", 1<<30)
	volumes := ts.URL + "/api/v1/volumes"
	tests := []struct {
		name, method, url, body string
		status                  int
		code, contains          string
	}{
		{"unknown field", "POST", volumes, `{"name":"v","size_bytes":4096,"layout":"mirror:2","colour":"red"}`, 400, api.CodeInvalidArgument, "colour"},
		{"not JSON", "POST", volumes, `name=v`, 400, api.CodeInvalidArgument, "invalid JSON"},
		{"empty body", "POST", volumes, ``, 400, api.CodeInvalidArgument, "empty"},
		{"two values", "POST", volumes, `{"name":"v"} {}`, 400, api.CodeInvalidArgument, "more than one"},
		{"wrong type", "POST", volumes, `{"name":"v","size_bytes":"big"}`, 400, api.CodeInvalidArgument, "size_bytes"},
		{"too large", "POST", volumes, `{"name":"` + strings.Repeat("x", 1<<20) + `"}`, 400, api.CodeInvalidArgument, "exceeds"},
		{"unknown route", "GET", ts.URL + "/api/v1/nothing", ``, 404, api.CodeNotFound, "no route"},
		{"wrong method", "PUT", volumes, `{}`, 400, api.CodeInvalidArgument, "not allowed"},
		{"bad chunkserver id", "POST", ts.URL + "/api/v1/chunkservers/x/heartbeat", `{}`, 400, api.CodeInvalidArgument, "not a positive integer"},
		{"zero host id", "POST", ts.URL + "/api/v1/hosts/0/heartbeat", ``, 400, api.CodeInvalidArgument, "not a positive integer"},
		{"unknown volume", "GET", volumes + "/nope", ``, 404, api.CodeNotFound, `"nope"`},
		{"heartbeat unknown field", "POST", fmt.Sprintf("%s/api/v1/chunkservers/%d/heartbeat", ts.URL, cs), `{"disk":[]}`, 400, api.CodeInvalidArgument, "disk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, e := rawCallWith(t, ts.HTTP, tt.method, tt.url, tt.body)
			if status != tt.status || e.Code != tt.code || !strings.Contains(e.Message, tt.contains) {
				t.Errorf("HTTP %d %s %q; want %d %s containing %q", status, e.Code, e.Message, tt.status, tt.code, tt.contains)
			}
		})
	}
	if err := ts.Client.Health(t.Context()); err != nil {
		t.Errorf("healthz: %v", err)
	}
}

func TestHandlerBeforeRun(t *testing.T) {
	s, err := New(Config{DatabaseURL: "postgres://postgres@127.0.0.1:1/x"})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	defer hs.Close()
	for _, path := range []string{"/healthz", "/api/v1/volumes"} {
		status, e := rawCall(t, nil, "", "GET", hs.URL+path, "")
		if status != http.StatusServiceUnavailable || e.Code != api.CodeUnavailable {
			t.Errorf("%s before Run: HTTP %d %+v", path, status, e)
		}
	}
}

// TestMaxBodyBytes: a body longer than MaxBodyBytes is refused with 400 on
// any route, and the answer says the limit.
func TestMaxBodyBytes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{MaxBodyBytes: 100})
	body := `{"name":"v","size_bytes":4096,"layout":"mirror:2","host":"` + strings.Repeat("h", 200) + `"}`
	status, e := rawCallWith(t, ts.HTTP, "POST", ts.URL+"/api/v1/volumes", body)
	if status != 400 || e.Code != api.CodeInvalidArgument || !strings.Contains(e.Message, "exceeds 100 bytes") {
		t.Errorf("a body of %d bytes: HTTP %d %+v", len(body), status, e)
	}
	if status, e := rawCallWith(t, ts.HTTP, "POST", ts.URL+"/api/v1/volumes", `{"name":"v","size_bytes":4096,"layout":"mirror:2"}`); status == 400 && strings.Contains(e.Message, "exceeds") {
		t.Errorf("a short body refused: %+v", e)
	}
}

// TestTLS: the API answers a client that trusts the cluster CA (written to
// CAFile) by every name the certificate carries, and refuses a client that
// trusts another CA and one that speaks plain HTTP; a restart keeps the
// same CA; --insecure-http serves plain HTTP.
func TestTLS(t *testing.T) {
	t.Parallel()
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	url := newSchema(t)
	ts := startServer(t, Config{DatabaseURL: url, TLSNames: []string{"127.0.0.1", "meta.test"}, CAFile: caFile})
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	base := ts.URL
	client := func(caPEM []byte) *api.Client {
		ccfg, err := pki.ClientConfig(caPEM, pki.Metaserver)
		if err != nil {
			t.Fatal(err)
		}
		return api.NewClient(base, &http.Client{Transport: &http.Transport{TLSClientConfig: ccfg}}).WithToken(ts.Token)
	}
	if _, err := client(ca).ListVolumes(t.Context()); err != nil {
		t.Fatalf("over TLS with the cluster CA: %v", err)
	}
	other, _, err := pki.NewCA("other", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client(other).ListVolumes(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a client trusting another CA: %v", err)
	}
	if _, err := api.NewClient(strings.Replace(base, "https://", "http://", 1), nil).WithToken(ts.Token).ListVolumes(t.Context()); err == nil {
		t.Fatal("plain HTTP to the TLS API succeeded")
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	caFile2 := filepath.Join(t.TempDir(), "ca.crt")
	plain := startServer(t, Config{DatabaseURL: url, CAFile: caFile2, InsecureHTTP: true})
	if again, err := os.ReadFile(caFile2); err != nil || !bytes.Equal(again, ca) {
		t.Fatalf("the CA after a restart differs (%v)", err)
	}
	if !strings.HasPrefix(plain.URL, "http://") {
		t.Fatalf("URL %s", plain.URL)
	}
	if _, err := plain.Client.ListVolumes(t.Context()); err != nil {
		t.Fatalf("plain HTTP with --insecure-http: %v", err)
	}
}

// TestIssueCertificate: an admin has the cluster CA sign a metaserver
// certificate for several names (the key never leaves the caller); a
// metaserver started with it (TLSCertFile) is verified by each name, a
// reader may not issue, bad requests are refused, and a metaserver given
// a certificate of another CA, or a chunkserver's, does not start.
func TestIssueCertificate(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	ts := startServer(t, Config{DatabaseURL: url})
	ctx := t.Context()
	csr, key, err := pki.NewRequest("metaserver")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"meta-a.test", "meta-b.test", "127.0.0.1"}
	c, err := ts.Client.IssueCertificate(ctx, api.IssueCertificateRequest{Role: api.RoleMetaserverCert, Names: names, CSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Verify([]byte(c.ClusterCA), []byte(c.Certificate), pki.Metaserver); err != nil {
		t.Fatal(err)
	}
	if time.Until(c.NotAfter) < 365*24*time.Hour {
		t.Errorf("not after %v", c.NotAfter)
	}
	reader, err := ts.Client.CreateToken(ctx, api.CreateTokenRequest{Name: "ro", Role: api.RoleReader})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.NewClient(reader.Secret).IssueCertificate(ctx, api.IssueCertificateRequest{Role: api.RoleMetaserverCert, Names: names, CSR: string(csr)}); !api.IsPermissionDenied(err) {
		t.Errorf("a reader issued a certificate: %v", err)
	}
	for _, bad := range []api.IssueCertificateRequest{
		{Role: "chunkserver", Names: names, CSR: string(csr)},
		{Role: api.RoleMetaserverCert, CSR: string(csr)},
		{Role: api.RoleMetaserverCert, Names: []string{"*.test"}, CSR: string(csr)},
		{Role: api.RoleMetaserverCert, Names: []string{"a b"}, CSR: string(csr)},
		{Role: api.RoleMetaserverCert, Names: names},
		{Role: api.RoleMetaserverCert, Names: names, CSR: "junk"},
	} {
		_, err := ts.Client.IssueCertificate(ctx, bad)
		ae := wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
		t.Logf("%+v: %s", bad.Names, ae.Message)
	}

	// A second metaserver of the cluster serves the issued certificate.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "meta.crt"), filepath.Join(dir, "meta.key")
	if err := os.WriteFile(certFile, []byte(c.Certificate), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	second := startServer(t, Config{DatabaseURL: url, TLSCertFile: certFile, TLSKeyFile: keyFile})
	for _, name := range []string{"meta-a.test", "meta-b.test"} {
		tc, err := pki.ClientConfig([]byte(c.ClusterCA), pki.Metaserver)
		if err != nil {
			t.Fatal(err)
		}
		tc.ServerName = name
		if _, err := api.NewTLSClient(second.URL, tc).WithToken(ts.Token).ListVolumes(ctx); err != nil {
			t.Errorf("by %s: %v", name, err)
		}
	}
	if _, err := second.Client.ListVolumes(ctx); err != nil {
		t.Errorf("by 127.0.0.1: %v", err)
	}

	// Certificates that are not the cluster's metaserver's.
	now := time.Now()
	otherCA, otherKey, err := pki.NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	for name, issue := range map[string]func() ([]byte, []byte, error){
		"another CA's": func() ([]byte, []byte, error) {
			return pki.Issue(otherCA, otherKey, pki.Metaserver, "m", []string{"127.0.0.1"}, now)
		},
		"a chunkserver's": func() ([]byte, []byte, error) {
			csr, key, err := pki.NewRequest("cs")
			if err != nil {
				return nil, nil, err
			}
			req := chunkserverReq("cs-x")
			req.ControlAddr, req.ControlCSR = "127.0.0.1:9", string(csr)
			resp, err := ts.Client.RegisterChunkserver(ctx, req)
			if err != nil {
				return nil, nil, err
			}
			return []byte(resp.ControlCert), key, nil
		},
	} {
		cert, key, err := issue()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile, cert, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, key, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := New(Config{DatabaseURL: url, TLSCertFile: certFile, TLSKeyFile: keyFile, Listen: "127.0.0.1:0", Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "not a metaserver certificate of this cluster's CA") {
			t.Errorf("%s certificate: Run: %v", name, err)
		}
		t.Logf("%s certificate: %v", name, err)
	}
}
