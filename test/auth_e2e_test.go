package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/control"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestAttacksRefused runs the attacks an unauthenticated API allowed
// against a real cluster, each now refused, and checks that the cluster
// secret reaches no host and no operator, and that the volume still serves:
//   - registering a chunkserver or a host to obtain the cluster secret;
//   - reading export names (with their tokens) or CHAP secrets of volumes;
//   - re-registering an existing chunkserver name at another address;
//   - a fence at epoch 2^63-1 with a forged token, to brick a chunk;
//   - a forged host report setting clean_detach.
func TestAttacksRefused(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-io")
	c := startCluster(t, testChunk)
	ctx := t.Context()
	admin := c.Client()
	if _, err := admin.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v1", SizeBytes: testChunk, Layout: "mirror:2", Host: c.HostName}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTarget(ctx, "v1", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x61 0 1M", c.ISCSIURL("v1"))
	hosts, err := admin.ListHosts(ctx)
	if err != nil || len(hosts) != 1 {
		t.Fatalf("hosts %+v, %v", hosts, err)
	}
	cs, err := admin.ListChunkservers(ctx)
	if err != nil || len(cs) != 3 {
		t.Fatalf("chunkservers %+v, %v", cs, err)
	}
	chunks, err := admin.ListChunks(ctx, "v1")
	if err != nil || len(chunks) == 0 {
		t.Fatalf("chunks %+v, %v", chunks, err)
	}
	tc, err := c.TLS()
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	var secret string
	if data, err := os.ReadFile(c.JoinTokenFile()); err != nil {
		t.Fatal(err)
	} else {
		join := strings.TrimSpace(string(data))
		// A chunkserver that joins gets the secret (it verifies tokens with
		// it); this one is the test's own, admitted by the join token.
		r, err := api.NewTLSClient(c.MetaURL, tc).WithToken(join).RegisterChunkserver(ctx, api.RegisterChunkserverRequest{
			Name: "probe", Addr: "127.0.0.1:1", Disks: []api.DiskInfo{{Path: "/x", CapacityBytes: 1 << 30, FreeBytes: 1 << 30}}})
		if err != nil {
			t.Fatal(err)
		}
		secret = r.ClusterSecret
	}

	type attack struct {
		what, method, url, token, body string
		status                         int
	}
	u := c.MetaURL + "/api/v1"
	hostID := hosts[0].ID
	attacks := []attack{
		{"register a chunkserver for the cluster secret", "POST", u + "/chunkservers", "", `{"name":"evil","addr":"127.0.0.1:9","disks":[{"path":"/x","capacity_bytes":1,"free_bytes":1}]}`, 401},
		{"register a host", "POST", u + "/hosts", "", `{"name":"evil","iscsi_addr":"127.0.0.1:9"}`, 401},
		{"re-register cs1 at another address with the admin token", "POST", u + "/chunkservers", c.Token, `{"name":"cs1","addr":"127.0.0.1:6666","disks":[{"path":"/x","capacity_bytes":1,"free_bytes":1}]}`, 403},
		{"list volumes (export names)", "GET", u + "/volumes", "", "", 401},
		{"read a host's volumes (CHAP secrets)", "GET", fmt.Sprintf("%s/hosts/%d/volumes", u, hostID), "", "", 401},
		{"read a host's volumes as an operator", "GET", fmt.Sprintf("%s/hosts/%d/volumes", u, hostID), c.Token, "", 403},
		{"forge a clean-detach report", "POST", fmt.Sprintf("%s/hosts/%d/report", u, hostID), "", `{"volumes":[{"name":"v1","epoch":1,"clean_detach":true}]}`, 401},
	}
	for _, a := range attacks {
		req, err := http.NewRequestWithContext(ctx, a.method, a.url, strings.NewReader(a.body))
		if err != nil {
			t.Fatal(err)
		}
		if a.token != "" {
			req.Header.Set("Authorization", "Bearer "+a.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e api.Error
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != a.status {
			t.Errorf("%s: HTTP %d %s, want %d", a.what, resp.StatusCode, body, a.status)
		}
		if secret != "" && bytes.Contains(body, []byte(secret)) || bytes.Contains(body, []byte("token=")) {
			t.Errorf("%s: the answer carries the cluster secret or an export token: %s", a.what, body)
		}
		t.Logf("%s: HTTP %d %s: %s", a.what, resp.StatusCode, e.Code, e.Message)
	}

	// The fence: epoch 2^63-1 with a token nobody could sign without the
	// cluster secret.
	m := chunks[0]
	var ctl string
	for _, s := range cs {
		if s.Name == m.Chunkserver {
			ctl = s.ControlAddr
		}
	}
	body := fmt.Sprintf(`{"host":"evil","epoch":%d,"token":"%s"}`, int64(1<<63-1), strings.Repeat("ab", 32))
	ca, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	ctlHC, err := control.HTTPClient(ca)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ctlHC.Post("https://"+ctl+"/v1/chunks/"+m.ID+"/fence", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	fb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("forged fence at epoch 2^63-1: HTTP %d %s, want 401", resp.StatusCode, fb)
	}
	t.Logf("forged fence at epoch 2^63-1: HTTP %d %s", resp.StatusCode, strings.TrimSpace(string(fb)))

	// No answer to the host or an operator carries the secret.
	for _, path := range []string{"/cluster", "/volumes", "/volumes/v1", "/chunkservers", "/hosts", "/chunks", "/events?limit=1000", "/tokens"} {
		req, _ := http.NewRequestWithContext(ctx, "GET", u+path, nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || bytes.Contains(b, []byte(secret)) || bytes.Contains(b, []byte("token=")) {
			t.Errorf("GET %s: HTTP %d, carries the secret or an export token: %v", path, resp.StatusCode, bytes.Contains(b, []byte(secret)))
		}
	}
	hostLog, err := os.ReadFile(c.Hostd.Log)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(hostLog, []byte(secret)) {
		t.Error("the cluster secret appears in hostd's log")
	}

	// The volume still serves what was written, and volume verify reads it
	// through read-only names, which cannot write.
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x61 0 1M", c.ISCSIURL("v1"))
	if out := cli(t, c, "volume", "verify", "v1"); !strings.Contains(out, "every member agrees") {
		t.Fatalf("volume verify:\n%s", out)
	}
	ro, err := admin.ReadExports(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	mem := ro.Sets[0].Members[0]
	nc, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: mem.Addr, Export: mem.Export})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var ne *nbd.Error
	if err := nc.WriteAt(ctx, []byte("evil"), 0, false); !errors.As(err, &ne) || ne.Errno != nbd.EPERM {
		t.Errorf("write through a read-only export name: %v, want EPERM", err)
	}
}
