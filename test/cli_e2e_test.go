package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestCLI drives the admin commands against a running cluster: listings in
// both output formats, bad input with one clear line and a non-zero exit,
// and a volume whose deletion removes its chunk files from the chunkservers.
func TestCLI(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)

	var servers []api.Chunkserver
	if err := json.Unmarshal([]byte(cli(t, c, "server", "list", "-o", "json")), &servers); err != nil {
		t.Fatal(err)
	}
	if len(servers) != 3 {
		t.Fatalf("server list: %d chunkservers, want 3", len(servers))
	}
	for _, s := range servers {
		if s.State != api.StateOnline || s.CapacityBytes <= 0 {
			t.Fatalf("chunkserver %+v: want online with a capacity", s)
		}
	}
	if out := cli(t, c, "server", "list"); !strings.Contains(out, "cs1") || !strings.Contains(out, "online") {
		t.Fatalf("server list table:\n%s", out)
	}
	if out := cliFail(t, c, "server", "remove", "cs1"); !strings.Contains(out, "chunkserver cs1 is online") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("server remove of an online chunkserver: %s", out)
	}
	if out := cliFail(t, c, "server", "remove", "cs9"); !strings.Contains(out, `chunkserver "cs9" is not registered`) {
		t.Errorf("server remove of an unknown chunkserver: %s", out)
	}
	if out := cli(t, c, "host", "list"); !strings.Contains(out, c.HostName) {
		t.Fatalf("host list:\n%s", out)
	}

	bad := []struct {
		args []string
		want string
	}{
		{[]string{"volume", "create", "v0", "--size", "0"}, "size"},
		{[]string{"volume", "create", "v1", "--size", "5000"}, "4096"},
		{[]string{"volume", "create", "v2", "--size", "1GiB", "--layout", "raid5"}, "layout"},
		{[]string{"volume", "create", "Bad_Name", "--size", "1GiB"}, "name"},
		{[]string{"volume", "create", "v3"}, "--size"},
		{[]string{"volume", "show", "nosuch"}, "nosuch"},
		{[]string{"volume", "create", "v4", "--size", "1GiB", "--host", "nohost"}, "nohost"},
		{[]string{"volume", "list", "-o", "yaml"}, "-o table or -o json"},
	}
	for _, b := range bad {
		out := cliFail(t, c, b.args...)
		if !strings.Contains(out, b.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("chunkraid %v: want one line mentioning %q, got:\n%s", b.args, b.want, out)
		}
	}

	// The capacity guard: a mirror:2 volume whose two copies exceed what
	// the cluster may still provision is refused with the numbers.
	var cl api.Cluster
	if err := json.Unmarshal([]byte(cli(t, c, "cluster", "-o", "json")), &cl); err != nil {
		t.Fatal(err)
	}
	if cl.ProvisionableBytes <= 0 || cl.Overcommit != 1 || cl.RawFreeBytes <= 0 {
		t.Fatalf("cluster: %+v", cl)
	}
	// Well beyond: the tests that run beside this one change the free
	// space of the file system they share by a little.
	tooBig := (cl.ProvisionableBytes/2/testChunk + 160) * testChunk
	out := cliFail(t, c, "volume", "create", "huge", "--size", fmt.Sprint(tooBig))
	if !strings.Contains(out, "more can be provisioned") || !strings.Contains(out, "--overcommit") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("a volume beyond the provisionable space: %s", out)
	}
	t.Logf("beyond the provisionable %d bytes: %s", cl.ProvisionableBytes, strings.TrimSpace(out))

	cli(t, c, "volume", "create", "tmp", "--size", "100MiB", "--layout", "mirror:3")
	if out := cliFail(t, c, "volume", "create", "tmp", "--size", "100MiB"); !strings.Contains(out, "exists") {
		t.Errorf("duplicate volume: %s", out)
	}
	var vols []api.Volume
	if err := json.Unmarshal([]byte(cli(t, c, "volume", "list", "-o", "json")), &vols); err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 || vols[0].Name != "tmp" || vols[0].Layout != "mirror:3" || len(vols[0].Sets) != 2 {
		t.Fatalf("volume list: %+v", vols)
	}
	if out := cli(t, c, "volume", "show", "tmp"); !strings.Contains(out, "mirror:3") || strings.Count(out, "in_sync") != 6 {
		t.Fatalf("volume show:\n%s", out)
	}
	var chunks []api.Chunk
	if err := json.Unmarshal([]byte(cli(t, c, "chunk", "list", "--volume", "tmp", "-o", "json")), &chunks); err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 6 {
		t.Fatalf("chunk list: %d chunks, want 6", len(chunks))
	}
	// Every chunk file appears on its chunkserver, and goes away on delete.
	files := func() int {
		n := 0
		for _, ch := range chunks {
			m, _ := filepath.Glob(filepath.Join(c.Dir(), "chunkservers", ch.Chunkserver, ch.ID+".chunk"))
			n += len(m)
		}
		return n
	}
	waitFor(t, 10*time.Second, "chunk files created", func() bool { return files() == 6 })
	st, err := os.Stat(filepath.Join(c.Dir(), "chunkservers", chunks[0].Chunkserver, chunks[0].ID+".chunk"))
	if err != nil || st.Size() != testChunk {
		t.Fatalf("chunk file: %v, size %v", err, st)
	}
	if out := cli(t, c, "volume", "delete", "tmp"); !strings.Contains(out, "deleted") {
		t.Fatalf("volume delete: %s", out)
	}
	waitFor(t, 10*time.Second, "chunk files deleted", func() bool { return files() == 0 })
	waitFor(t, 10*time.Second, "chunk rows removed", func() bool {
		var left []api.Chunk
		return json.Unmarshal([]byte(cli(t, c, "chunk", "list", "-o", "json")), &left) == nil && len(left) == 0
	})
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
