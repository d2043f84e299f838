package test

import (
	"bytes"
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestSnapshotEndToEnd: a pattern written over iSCSI, a snapshot taken
// with the CLI, an overwrite: the volume reads the new pattern and every
// member's copy of the snapshot the old one (read over NBD with the
// snapshot's own export names, and checked by volume verify --snapshot);
// names clash; delete.
func TestSnapshotEndToEnd(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)
	ctx := t.Context()
	cli(t, c, "volume", "create", "snap", "--size", "64MiB", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "snap", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("snap")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", url)
	out := cli(t, c, "snapshot", "create", "snap", "before")
	if !strings.Contains(out, "Snapshot before of volume snap taken; the volume's commands were held") {
		t.Fatalf("snapshot create:\n%s", out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 0 512k", url)
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x22 0 512k", "-c", "read -P 0x11 512k 512k", url); strings.Contains(out, "verification failed") {
		t.Fatalf("the volume after the overwrite:\n%s", out)
	}

	v, err := c.Client().ReadSnapshotExports(ctx, "snap", "before")
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0x11}, 1<<20)
	for i, m := range v.Sets[0].Members {
		nc, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: m.Addr, Export: m.Export})
		if err != nil {
			t.Fatalf("member %d: opening the snapshot's export: %v", i, err)
		}
		got := make([]byte, len(want))
		err = nc.ReadAt(ctx, got, 0)
		nc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("member %d's copy of the snapshot does not hold the pattern written before it", i)
		}
	}
	if out := cli(t, c, "volume", "verify", "snap", "--snapshot", "before"); !strings.Contains(out, "snapshot before: every member agrees") {
		t.Fatalf("verify --snapshot:\n%s", out)
	}
	// The space the snapshot takes: the 512 KiB rewritten (0.8 % of the
	// volume), 8 blocks of 64 KiB on each of the two members.
	if layers, saved := snapshotUsage(t, c); layers != 2 || saved != 2*512<<10 {
		t.Errorf("the chunkservers hold %d snapshot layers of %d bytes, want 2 of %d", layers, saved, 2*512<<10)
	} else {
		t.Logf("the snapshot takes %d KiB on the chunkservers after 512 KiB of the 64 MiB volume were rewritten", saved>>10)
	}
	if out := cli(t, c, "snapshot", "list", "snap"); !strings.Contains(out, "before") || !strings.Contains(out, "ready") {
		t.Fatalf("snapshot list:\n%s", out)
	}
	if out := cli(t, c, "volume", "show", "snap"); !strings.Contains(out, "Snapshots:") {
		t.Errorf("volume show does not list the snapshot:\n%s", out)
	}
	if out := cliFail(t, c, "snapshot", "create", "snap", "before"); !strings.Contains(out, "already has a snapshot") && !strings.Contains(out, `has a snapshot "before"`) {
		t.Errorf("a name clash: %s", out)
	}
	if out := cliFail(t, c, "snapshot", "create", "snap", "bad name"); !strings.Contains(out, "snapshot name") {
		t.Errorf("a bad name: %s", out)
	}
	cli(t, c, "snapshot", "delete", "snap", "before")
	if out := cli(t, c, "snapshot", "list", "snap"); !strings.Contains(out, "No snapshots") {
		t.Fatalf("after the delete:\n%s", out)
	}
	if out := cliFail(t, c, "volume", "verify", "snap", "--snapshot", "before"); !strings.Contains(out, "no snapshot") {
		t.Errorf("verify of a deleted snapshot: %s", out)
	}
	if out := cli(t, c, "volume", "verify", "snap"); !strings.Contains(out, "every member agrees") {
		t.Fatalf("verify:\n%s", out)
	}
}

// snapshotUsage sums the chunkservers' snapshot metrics.
func snapshotUsage(t *testing.T, c *localcluster.Cluster) (layers int, saved int64) {
	t.Helper()
	reader, err := c.Client().CreateToken(t.Context(), api.CreateTokenRequest{Name: "snapshot-usage", Role: api.RoleReader})
	if err != nil && api.ErrorCode(err) != api.CodeAlreadyExists {
		t.Fatal(err)
	}
	hc := caClient(t, c)
	for _, addr := range c.ControlAddrs {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+reader.Secret)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		s, err := scrape.Parse(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := s.Sum("chunkraid_chunkserver_snapshot_layers", nil)
		b, _ := s.Sum("chunkraid_chunkserver_snapshot_bytes", nil)
		layers, saved = layers+int(n), saved+int64(b)
	}
	return layers, saved
}

// TestSnapshotPauseLargeVolume reports how long a snapshot holds the
// commands of a 20 GiB volume of the default 10 GiB chunks (2 sets of 2)
// under a write load; it asserts only that the snapshot is taken and that
// both copies of it agree.
func TestSnapshotPauseLargeVolume(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-img")
	c := startCluster(t, 0)
	ctx := t.Context()
	cli(t, c, "volume", "create", "big", "--size", "20GiB", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "big", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	load := make(chan error, 1)
	var took time.Duration
	go func() {
		var err error
		took, err = qemuBench(c, "big", true, 8, 4000)
		load <- err
	}()
	time.Sleep(500 * time.Millisecond)
	sn, err := c.Client().CreateSnapshot(ctx, "big", "under-load")
	if err != nil {
		t.Fatal(err)
	}
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	t.Logf("a snapshot of a 20 GiB volume (2 sets of 2 chunks of 10 GiB), taken 0.5 s into a %s QD8 write load, held its commands %s",
		took.Round(time.Millisecond), time.Duration(sn.PauseMicros)*time.Microsecond)
	if out := cli(t, c, "volume", "verify", "big", "--snapshot", "under-load"); !strings.Contains(out, "every member agrees") {
		t.Fatalf("verify --snapshot:\n%s", out)
	}
}

// TestSnapshotThenHostCrash: a snapshot taken under a write load, and the
// host killed (-9) right after it. Once another host took the volume over
// and resynced it, every acknowledged write reads back and the replicas
// agree; both copies of the snapshot agree and hold every write
// acknowledged before it was asked for.
func TestSnapshotThenHostCrash(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)
	createVolume(t, c, "sh", "64MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "sh", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(t.Context(), "host2"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	load := startWriteLoad(ctx, c.ISCSIURL("sh"), slots(256, 16<<10, 4<<20, 0), 5)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 50 })
	before := load.Acked()
	sn, err := c.Client().CreateSnapshot(ctx, "sh", "mid")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hostd.Kill(); err != nil {
		t.Fatal(err)
	}
	acked := load.Acked()
	cancel()
	<-load.done
	t.Logf("snapshot taken after %d acknowledged writes (pause %s), host killed after %d",
		len(before), time.Duration(sn.PauseMicros)*time.Microsecond, len(acked))
	cli(t, c, "volume", "attach", "sh", "--host", "host2")
	if err := c.WaitTargetOn(t.Context(), "host2", "sh", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "sh", time.Minute)
	verifyAcked(t, c.ISCSIURLOn("host2", "sh"), acked)
	checkReplicas(t, c, "sh")
	if out := cli(t, c, "volume", "verify", "sh", "--snapshot", "mid"); !strings.Contains(out, "snapshot mid: every member agrees") {
		t.Fatalf("verify --snapshot:\n%s", out)
	}
	v, err := c.Client().ReadSnapshotExports(t.Context(), "sh", "mid")
	if err != nil {
		t.Fatal(err)
	}
	m := v.Sets[0].Members[0]
	nc, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: m.Addr, Export: m.Export})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, w := range before {
		got := make([]byte, w.len)
		if err := nc.ReadAt(t.Context(), got, w.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{w.pat}, int(w.len))) {
			t.Fatalf("the snapshot lacks the write at %d acknowledged before it was asked for", w.off)
		}
	}
}

// TestSnapshotRollback: a volume rolled back to a snapshot reads the
// snapshot's pattern once attached again, and its replicas agree; a
// rollback of an attached volume is refused with the way out.
func TestSnapshotRollback(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)
	ctx := t.Context()
	cli(t, c, "volume", "create", "rb", "--size", "64MiB", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "rb", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("rb")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", url)
	cli(t, c, "snapshot", "create", "rb", "good")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x66 256k 2M", url)
	if out := cliFail(t, c, "volume", "rollback", "rb", "good"); !strings.Contains(out, "detach it first") {
		t.Fatalf("a rollback of an attached volume: %s", out)
	}
	cli(t, c, "volume", "detach", "rb")
	waitFor(t, time.Minute, "the host to stop serving the volume", func() bool {
		return exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4096", url).Run() != nil
	})
	if out := cli(t, c, "volume", "rollback", "rb", "good"); !strings.Contains(out, "rolled back to snapshot good") {
		t.Fatalf("rollback: %s", out)
	}
	cli(t, c, "volume", "attach", "rb", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "rb", time.Minute); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 1M", "-c", "read -P 0 1M 2M", url); strings.Contains(out, "verification failed") {
		t.Fatalf("after the rollback:\n%s", out)
	}
	waitInSync(t, c, "rb", time.Minute)
	checkReplicas(t, c, "rb")
	if out := cli(t, c, "snapshot", "list", "rb"); !strings.Contains(out, "good") {
		t.Errorf("the snapshot is gone after the rollback:\n%s", out)
	}
}
