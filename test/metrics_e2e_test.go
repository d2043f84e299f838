package test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestMetricsOfEveryDaemon scrapes the metaserver, every chunkserver (on
// its control port) and the hostd (on --metrics-listen) of a running cluster over TLS with a reader's
// token, after a volume was written through iSCSI, and checks named series
// in each exposition as Prometheus' own parser reads it. Without a token,
// every daemon answers 401.
func TestMetricsOfEveryDaemon(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)
	ctx := t.Context()
	v := createVolume(t, c, "m", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "m", time.Minute); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 4M", "-c", "flush", "-c", "read -P 0x5a 0 4M", c.ISCSIURL("m"))
	reader, err := c.Client().CreateToken(ctx, api.CreateTokenRequest{Name: "prometheus", Role: api.RoleReader})
	if err != nil {
		t.Fatal(err)
	}
	hc := caClient(t, c)
	get := func(url, token string) (int, scrape.Series) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			io.Copy(io.Discard, resp.Body)
			return resp.StatusCode, nil
		}
		s, err := scrape.Parse(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		return resp.StatusCode, s
	}
	check := func(daemon string, s scrape.Series, name string, labels map[string]string, ok func(float64) bool) {
		t.Helper()
		v, found := s.Sum(name, labels)
		if !found || !ok(v) {
			t.Errorf("%s: %s%v = %v (found %v)", daemon, name, labels, v, found)
			return
		}
		t.Logf("%s: %s %v = %v", daemon, name, labels, v)
	}
	positive := func(v float64) bool { return v > 0 }

	urls := map[string]string{"metaserver": c.MetaURL + "/metrics", "hostd": "https://" + c.HostMetrics[c.HostName] + "/metrics"}
	for i, p := range c.CS {
		urls[p.Name] = "https://" + c.ControlAddrs[i] + "/metrics"
	}
	for daemon, url := range urls {
		if code, _ := get(url, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without a token: %d, want 401", daemon, code)
		}
		if code, _ := get(url, "chunkraid_notatoken"); code != http.StatusUnauthorized {
			t.Errorf("%s with an unknown token: %d, want 401", daemon, code)
		}
	}

	code, m := get(urls["metaserver"], reader.Secret)
	if code != http.StatusOK {
		t.Fatalf("metaserver /metrics: %d", code)
	}
	check("metaserver", m, "chunkraid_metaserver_api_requests_total", map[string]string{"route": "/api/v1/hosts/{id}/report", "code": "204"}, positive)
	check("metaserver", m, "chunkraid_metaserver_leader", nil, func(v float64) bool { return v == 1 })
	check("metaserver", m, "chunkraid_members", map[string]string{"state": "in_sync"}, func(n float64) bool { return n == float64(2*len(v.Sets)) })
	check("metaserver", m, "chunkraid_chunkservers", map[string]string{"state": "online"}, func(v float64) bool { return v == float64(len(c.CS)) })

	code, h := get(urls["hostd"], reader.Secret)
	if code != http.StatusOK {
		t.Fatalf("hostd /metrics: %d", code)
	}
	vol := map[string]string{"volume": "m"}
	check("hostd", h, "chunkraid_hostd_volume_ops_total", map[string]string{"volume": "m", "op": "write", "result": "ok"}, positive)
	check("hostd", h, "chunkraid_hostd_volume_bytes_total", map[string]string{"volume": "m", "op": "read"}, func(v float64) bool { return v >= 4<<20 })
	check("hostd", h, "chunkraid_hostd_volume_op_duration_seconds", map[string]string{"volume": "m", "op": "flush"}, positive)
	check("hostd", h, "chunkraid_hostd_member_state", map[string]string{"volume": "m", "state": "in_sync"}, func(n float64) bool { return n == float64(2*len(v.Sets)) })
	check("hostd", h, "chunkraid_hostd_set_dirty_bytes", vol, func(float64) bool { return true })
	check("hostd", h, "chunkraid_hostd_volumes", nil, func(n float64) bool { return n == 1 })
	check("hostd", h, "chunkraid_hostd_member_ops_total", map[string]string{"volume": "m", "set": "0", "member": "1", "op": "write", "result": "ok"}, positive)
	check("hostd", h, "chunkraid_hostd_member_bytes_total", map[string]string{"volume": "m", "op": "write"}, func(n float64) bool { return n >= 2*4<<20 })
	check("hostd", h, "chunkraid_hostd_member_op_duration_seconds", map[string]string{"volume": "m", "op": "flush"}, positive)
	check("hostd", h, "chunkraid_hostd_iscsi_commands_total", map[string]string{"command": "INQUIRY", "status": "GOOD"}, positive)
	check("hostd", h, "chunkraid_hostd_iscsi_commands_total", map[string]string{"command": "SYNCHRONIZE CACHE(10)", "status": "GOOD"}, positive)
	check("hostd", h, "chunkraid_hostd_iscsi_command_duration_seconds", map[string]string{"command": "READ CAPACITY(16)"}, positive)
	check("hostd", h, "chunkraid_hostd_iscsi_sessions", map[string]string{"kind": "normal"}, func(float64) bool { return true })

	all := []scrape.Series{m, h}
	members := map[string]bool{}
	for _, s := range v.Sets {
		for _, mb := range s.Members {
			members[mb.Chunkserver] = true
		}
	}
	for _, p := range c.CS {
		code, s := get(urls[p.Name], reader.Secret)
		if code != http.StatusOK {
			t.Fatalf("%s /metrics: %d", p.Name, code)
		}
		all = append(all, s)
		check(p.Name, s, "chunkraid_chunkserver_disk_bytes", map[string]string{"kind": "capacity"}, positive)
		check(p.Name, s, "go_goroutines", nil, positive)
		if !members[p.Name] {
			continue
		}
		check(p.Name, s, "chunkraid_chunkserver_nbd_requests_total", map[string]string{"cmd": "NBD_CMD_WRITE", "result": "ok"}, positive)
		check(p.Name, s, "chunkraid_chunkserver_nbd_bytes_total", map[string]string{"cmd": "NBD_CMD_WRITE"}, func(v float64) bool { return v >= 4<<20 })
		check(p.Name, s, "chunkraid_chunkserver_nbd_request_duration_seconds", map[string]string{"cmd": "NBD_CMD_FLUSH"}, positive)
		check(p.Name, s, "chunkraid_chunkserver_fdatasync_duration_seconds", map[string]string{"result": "ok"}, positive)
		check(p.Name, s, "chunkraid_chunkserver_chunks", map[string]string{"state": "served"}, positive)
	}

	// The Grafana dashboard asks only for series the daemons export.
	dash, err := os.ReadFile("../docs/grafana/chunkraid.json")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`chunkraid_[a-z0-9_]+`).FindAllString(string(dash), -1)
	asked := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSuffix(n, "_bucket")
		if asked[n] || n == "chunkraid_" {
			continue
		}
		asked[n] = true
		found := false
		for _, s := range all {
			if _, ok := s[n]; ok {
				found = true
			}
		}
		if !found {
			t.Errorf("docs/grafana/chunkraid.json asks for %s, which no daemon exports", n)
		}
	}
	t.Logf("the Grafana dashboard's %d series are all exported", len(asked))

	// Debian's Prometheus scrapes every daemon the same way.
	targets := make([]string, 0, len(urls))
	for _, u := range urls {
		targets = append(targets, strings.TrimSuffix(strings.TrimPrefix(u, "https://"), "/metrics"))
	}
	prometheusScrapes(t, c, reader.Secret, targets)

	// The figures for people: a write load, then `chunkraid volume stats`.
	run(t, "qemu-img", "bench", "-w", "-f", "raw", "-c", "2000", "-s", "4096", "-d", "4", "-t", "none", c.ISCSIURL("m"))
	var st *api.VolumeStatsReport
	waitFor(t, 20*time.Second, "the host to report the load's figures", func() bool {
		st, err = c.Client().VolumeStats(ctx, "m")
		return err == nil && st.Stats != nil && st.Stats.WriteIOPS > 50
	})
	if st.Host != c.HostName || st.Stats.WriteBytesPerSec < 4096*st.Stats.WriteIOPS || st.Stats.WriteLatencyMeanUs <= 0 || st.Stats.WriteLatencyP99Us < st.Stats.WriteLatencyMeanUs/2 {
		t.Errorf("volume stats: %+v %+v", st, st.Stats)
	}
	t.Logf("chunkraid volume stats m:\n%s", cli(t, c, "volume", "stats", "m"))
}

// caClient is an HTTPS client that trusts the cluster CA only.
func caClient(t *testing.T, c *localcluster.Cluster) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in the cluster CA file")
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
}

// prometheusScrapes runs Debian's prometheus with one scrape job over
// targets (TLS against the cluster CA, token as the bearer credential),
// waits until it reports every target up, and asks it for a series of each
// daemon.
func prometheusScrapes(t *testing.T, c *localcluster.Cluster, token string, targets []string) {
	t.Helper()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, scrape_timeout: 1s}
scrape_configs:
  - job_name: chunkraid
    scheme: https
    tls_config: {ca_file: %q}
    authorization: {credentials_file: %q}
    static_configs:
      - targets: [%s]
`, c.CAFile(), tokenFile, strings.Join(quoted, ", "))
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	port, err := localcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	web := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command("prometheus", "--config.file="+cfgFile, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+web, "--log.level=warn")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting prometheus (make deps installs it): %v", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	type target struct {
		ScrapeURL string `json:"scrapeUrl"`
		Health    string `json:"health"`
		LastError string `json:"lastError"`
	}
	var last []target
	up := func() bool {
		var r struct {
			Data struct {
				ActiveTargets []target `json:"activeTargets"`
			} `json:"data"`
		}
		if promGet(t, web, "/api/v1/targets", &r) != nil {
			return false
		}
		last = r.Data.ActiveTargets
		if len(last) != len(targets) {
			return false
		}
		for _, tg := range last {
			if tg.Health != "up" {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(45 * time.Second)
	for !up() {
		if time.Now().After(deadline) {
			t.Fatalf("prometheus never had every target up: %+v\n%s", last, logs.String())
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("prometheus scrapes all %d daemons: %+v", len(last), last)
	for _, q := range []string{"chunkraid_metaserver_leader", "chunkraid_chunkserver_chunks", "chunkraid_hostd_volume_ops_total"} {
		var r struct {
			Data struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		if err := promGet(t, web, "/api/v1/query?query="+q, &r); err != nil || len(r.Data.Result) == 0 {
			t.Errorf("prometheus query %s: %d results, %v", q, len(r.Data.Result), err)
		}
	}
}

func promGet(t *testing.T, web, path string, out any) error {
	resp, err := http.Get("http://" + web + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
