package metaserver

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// scrapeMetrics GETs /metrics with token and parses the exposition.
func scrapeMetrics(t *testing.T, ts *testServer, token string) (int, scrape.Series) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, ts.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: ts.Transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	series, err := scrape.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, series
}

// TestMetrics: /metrics needs a token (any: a reader's), and exposes the
// API requests by route pattern and status, the leader state and the
// cluster's capacity and members by state, as the library's parser reads
// them.
func TestMetrics(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{ChunkSize: 64 << 20})
	ctx := t.Context()
	for _, n := range []string{"cs-a", "cs-b"} {
		ts.addChunkserver(t, n, "", 10*gib)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "m1", SizeBytes: 128 << 20, Layout: "mirror:2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Client.GetVolume(ctx, "nosuch"); err == nil {
		t.Fatal("a volume that does not exist was found")
	}
	if code, _ := scrapeMetrics(t, ts, ""); code != http.StatusUnauthorized {
		t.Fatalf("/metrics without a token: %d, want 401", code)
	}
	reader, err := ts.Client.CreateToken(ctx, api.CreateTokenRequest{Name: "prometheus", Role: api.RoleReader})
	if err != nil {
		t.Fatal(err)
	}
	plain := api.NewClient(ts.URL, &http.Client{Transport: ts.Transport}).WithToken(ts.Token)
	if p, err := plain.As(reader.Secret).Whoami(ctx); err != nil || p.Name != "prometheus" || p.Role != api.RoleReader {
		t.Fatalf("whoami with the reader's token: %+v %v", p, err)
	}
	if _, err := plain.As("chunkraid_notatoken").Whoami(ctx); !api.IsUnauthenticated(err) {
		t.Fatalf("whoami with an unknown token: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); !ts.leading.Load(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the metaserver never leads")
		}
	}
	code, m := scrapeMetrics(t, ts, reader.Secret)
	if code != http.StatusOK {
		t.Fatalf("/metrics with a reader's token: %d", code)
	}
	checks := []struct {
		name   string
		labels map[string]string
		ok     func(float64) bool
	}{
		{"chunkraid_metaserver_api_requests_total", map[string]string{"method": "POST", "route": "/api/v1/volumes", "code": "201"}, func(v float64) bool { return v == 1 }},
		{"chunkraid_metaserver_api_requests_total", map[string]string{"method": "GET", "route": "/api/v1/volumes/{name}", "code": "404"}, func(v float64) bool { return v == 1 }},
		{"chunkraid_metaserver_api_requests_total", map[string]string{"route": "/metrics", "code": "401"}, func(v float64) bool { return v >= 1 }},
		{"chunkraid_metaserver_api_request_duration_seconds", map[string]string{"method": "POST", "route": "/api/v1/volumes"}, func(v float64) bool { return v == 1 }},
		{"chunkraid_metaserver_leader", nil, func(v float64) bool { return v == 1 }},
		{"chunkraid_metaserver_database_up", nil, func(v float64) bool { return v == 1 }},
		{"chunkraid_cluster_bytes", map[string]string{"kind": "raw"}, func(v float64) bool { return v == float64(20*gib) }},
		{"chunkraid_cluster_bytes", map[string]string{"kind": "provisioned"}, func(v float64) bool { return v == 4*(64<<20) }},
		{"chunkraid_members", map[string]string{"state": "in_sync"}, func(v float64) bool { return v == 4 }},
		{"chunkraid_chunkservers", map[string]string{"state": "online"}, func(v float64) bool { return v == 2 }},
		{"chunkraid_volumes", nil, func(v float64) bool { return v == 1 }},
		{"go_goroutines", nil, func(v float64) bool { return v > 0 }},
	}
	for _, c := range checks {
		v, ok := m.Sum(c.name, c.labels)
		if !ok || !c.ok(v) {
			t.Errorf("%s%v = %v (found %v)", c.name, c.labels, v, ok)
		}
	}
	for _, smp := range m["chunkraid_metaserver_api_requests_total"] {
		if strings.Contains(smp.Labels["route"], "m1") || strings.Contains(smp.Labels["route"], "nosuch") {
			t.Errorf("a route label holds a path: %v", smp.Labels)
		}
	}
}

// TestHostMetricsCertificate: a host that serves metrics gets a certificate
// of the cluster CA for the role host, valid for its metrics address; a
// metrics address without a request, or a request without an address, is
// refused.
func TestHostMetricsCertificate(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	csr, _, err := pki.NewRequest("hostd h1 metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h1", ISCSIAddr: "127.0.0.1:3260",
		MetricsAddr: "127.0.0.1:9300", MetricsCSR: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.Verify([]byte(resp.ClusterCA), []byte(resp.MetricsCert), pki.Host)
	if err != nil || c.VerifyHostname("127.0.0.1") != nil {
		t.Fatalf("metrics certificate: %v", err)
	}
	if _, err := pki.Verify([]byte(resp.ClusterCA), []byte(resp.MetricsCert), pki.Metaserver); err == nil {
		t.Fatal("a host's metrics certificate passes for the metaserver's")
	}
	for _, req := range []api.RegisterHostRequest{
		{Name: "h2", ISCSIAddr: "127.0.0.1:3261", MetricsAddr: "127.0.0.1:9301"},
		{Name: "h2", ISCSIAddr: "127.0.0.1:3261", MetricsCSR: string(csr)},
		{Name: "h2", ISCSIAddr: "127.0.0.1:3261", MetricsAddr: "127.0.0.1:9301", MetricsCSR: "not a request"},
	} {
		_, err := ts.Client.RegisterHost(ctx, req)
		wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	}
}
