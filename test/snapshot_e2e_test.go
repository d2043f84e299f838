package test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
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
