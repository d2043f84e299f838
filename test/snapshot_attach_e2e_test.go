package test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestSnapshotAttachAndResync reads a snapshot over iSCSI from another
// host and shows that a member's snapshot layer survives its absence:
//   - a snapshot attached to host2 copies out with qemu-img convert, byte
//     for byte as the volume was when it was taken; writes to it are
//     refused; it cannot be deleted while attached;
//   - with one member's chunkserver stopped, the snapshot target reads from
//     the other member, and the volume takes a write over bytes the
//     snapshot holds;
//   - when the chunkserver returns, the resync brings the member's live
//     data in sync, and its copy of the snapshot still holds the old bytes
//     (the resync's writes saved them first): both copies of the snapshot
//     agree, and so do the live replicas;
//   - the volume moving to host2 (a new epoch, its chunks fenced) does not
//     stop the snapshot target; detach ends it.
func TestSnapshotAttachAndResync(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-img", "qemu-io")
	c := faultCluster(t)
	ctx := t.Context()
	createVolume(t, c, "sv", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "sv", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(ctx, "host2"); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("sv")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x33 8M 1M", url)
	cli(t, c, "snapshot", "create", "sv", "before")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 0 512k", url)

	out := cli(t, c, "snapshot", "attach", "sv", "before", "--host", "host2")
	iqn := api.SnapshotIQN("sv", "before")
	if !strings.Contains(out, iqn) || !strings.Contains(out, "qemu-img convert") {
		t.Fatalf("snapshot attach:\n%s", out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	if err := c.WaitTargetOn(ctx, "host2", "sv:snap:before", time.Minute); err != nil {
		t.Fatal(err)
	}
	snapURL := c.ISCSIURLOn("host2", "sv:snap:before")
	want := make([]byte, 64<<20)
	copy(want, bytes.Repeat([]byte{0x11}, 1<<20))
	copy(want[8<<20:], bytes.Repeat([]byte{0x33}, 1<<20))
	copyOut := func(what string) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "snap.img")
		start := time.Now()
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", snapURL, dst)
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the copy of the snapshot (%d bytes) differs from the volume when it was taken", what, len(got))
		}
		t.Logf("%s: qemu-img convert copied the 64 MiB snapshot out in %s, identical", what, time.Since(start).Round(time.Millisecond))
	}
	copyOut("attached to host2")
	if out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write -P 0x66 0 4k", snapURL).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "write protected") {
		t.Fatalf("a write to the snapshot target: %v\n%s", err, out)
	}
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x22 0 512k", url); strings.Contains(out, "verification failed") {
		t.Fatalf("the volume:\n%s", out)
	}
	if out := cliFail(t, c, "snapshot", "delete", "sv", "before"); !strings.Contains(out, "snapshot detach sv before") {
		t.Errorf("deleting an attached snapshot: %s", out)
	}
	if out := cli(t, c, "snapshot", "list", "sv"); !strings.Contains(out, "host2") || !strings.Contains(out, iqn) {
		t.Errorf("snapshot list:\n%s", out)
	}

	// One member away: the snapshot reads from the other; the volume
	// rewrites bytes the snapshot holds.
	v, err := c.Client().GetVolume(ctx, "sv")
	if err != nil {
		t.Fatal(err)
	}
	away := c.CS[csIndex(t, c, v.Sets[0].Members[0].Chunkserver)]
	if err := away.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 8448k 256k", url)
	if out := run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 512k 512k", "-c", "read -P 0x33 8M 1M", snapURL); strings.Contains(out, "verification failed") {
		t.Fatalf("the snapshot with a member away:\n%s", out)
	}
	if err := away.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "sv", 2*time.Minute)
	checkReplicas(t, c, "sv")
	if out := cli(t, c, "volume", "verify", "sv", "--snapshot", "before"); !strings.Contains(out, "snapshot before: every member agrees") {
		t.Fatalf("verify --snapshot after the resync:\n%s", out)
	}
	snapshotCopies(t, c, "sv", "before", want[8<<20:9<<20], 8<<20)
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x44 8448k 256k", url); strings.Contains(out, "verification failed") {
		t.Fatalf("the volume after the resync:\n%s", out)
	}

	// The volume moves: its chunks are fenced at a new epoch; the
	// snapshot target goes on.
	cli(t, c, "volume", "attach", "sv", "--host", "host2")
	if err := c.WaitTargetOn(ctx, "host2", "sv", time.Minute); err != nil {
		t.Fatal(err)
	}
	copyOut("after the volume moved to host2")

	cli(t, c, "snapshot", "detach", "sv", "before")
	waitFor(t, time.Minute, "host2 to stop serving the snapshot", func() bool {
		return exec.Command("qemu-io", "-r", "-f", "raw", "-c", "read 0 4096", snapURL).Run() != nil
	})
	cli(t, c, "snapshot", "delete", "sv", "before")
}

// snapshotCopies checks that every member of the volume's first set holds
// want at off in its copy of snapshot snap (read over NBD).
func snapshotCopies(t *testing.T, c *localcluster.Cluster, volume, snap string, want []byte, off int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	v, err := c.Client().ReadSnapshotExports(ctx, volume, snap)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range v.Sets[0].Members {
		nc, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: m.Addr, Export: m.Export})
		if err != nil {
			t.Fatalf("member %d: opening the snapshot's export: %v", i, err)
		}
		got := make([]byte, len(want))
		err = nc.ReadAt(ctx, got, off)
		nc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("member %d (%s): its copy of snapshot %s lost the bytes at %d", i, m.Chunkserver, snap, off)
		}
	}
}

// TestECSnapshot: a snapshot of an ec:2+1 volume, taken after full and
// partial stripe writes and followed by more of both, holds parity
// consistent with its data on every member (volume verify --snapshot); it
// copies out over iSCSI byte for byte as the volume was, also with a
// member's chunkserver stopped (the reads rebuilt from the other two),
// while the volume reads its new bytes; rolled back, the volume holds the
// snapshot's bytes and its parity is consistent.
func TestECSnapshot(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-img", "qemu-io")
	c := ecCluster(t, 3)
	ctx := t.Context()
	v := createEC(t, c, "ecs", "64MiB", "ec:2+1")
	url := c.ISCSIURL("ecs")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x55 100k 4k", "-c", "write -P 0x33 40M 1M", url)
	out := cli(t, c, "snapshot", "create", "ecs", "before")
	t.Logf("%s", strings.TrimSpace(out))
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 0 512k", "-c", "write -P 0x44 40964k 8k", "-c", "write -P 0x66 100k 4k", url)
	if out := cli(t, c, "volume", "verify", "ecs", "--snapshot", "before"); !strings.Contains(out, "snapshot before: every member agrees") {
		t.Fatalf("verify --snapshot of an EC volume:\n%s", out)
	}
	cli(t, c, "snapshot", "attach", "ecs", "before", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "ecs:snap:before", time.Minute); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 64<<20)
	copy(want, bytes.Repeat([]byte{0x11}, 1<<20))
	copy(want[100<<10:], bytes.Repeat([]byte{0x55}, 4<<10))
	copy(want[40<<20:], bytes.Repeat([]byte{0x33}, 1<<20))
	snapURL := c.ISCSIURL("ecs:snap:before")
	copyOut := func(what string) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "snap.img")
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", snapURL, dst)
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the copy of the EC snapshot differs from the volume when it was taken", what)
		}
		t.Logf("%s: the 64 MiB EC snapshot copied out identical", what)
	}
	copyOut("every member")
	away := c.CS[csIndex(t, c, v.Sets[0].Members[0].Chunkserver)]
	if err := away.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	copyOut("a member's chunkserver stopped")
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x22 0 100k", "-c", "read -P 0x66 100k 4k", "-c", "read -P 0x22 104k 408k",
		"-c", "read -P 0x33 40M 4k", "-c", "read -P 0x44 40964k 8k", url); strings.Contains(out, "verification failed") {
		t.Fatalf("the volume:\n%s", out)
	}
	if err := away.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "ecs", 2*time.Minute)
	if out := cli(t, c, "volume", "verify", "ecs", "--snapshot", "before"); !strings.Contains(out, "snapshot before: every member agrees") {
		t.Fatalf("verify --snapshot after the member returned:\n%s", out)
	}

	// A writable clone of the EC snapshot reads it, and takes writes the
	// volume does not see; its parity agrees.
	cli(t, c, "volume", "clone", "ecs@before", "ecc", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "ecc", time.Minute); err != nil {
		t.Fatal(err)
	}
	ecc := c.ISCSIURL("ecc")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 40M 4k", ecc)
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 100k", "-c", "read -P 0x55 100k 4k", "-c", "read -P 0x77 40M 4k",
		"-c", "read -P 0x33 40964k 1020k", ecc); strings.Contains(out, "verification failed") {
		t.Fatalf("the clone of the EC snapshot:\n%s", out)
	}
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 40M 4k", url); strings.Contains(out, "verification failed") {
		t.Fatalf("the EC volume after a write to its clone:\n%s", out)
	}
	verifyVolume(t, c, "ecc")
	cli(t, c, "volume", "delete", "ecc")

	// Rolled back, the EC volume holds the snapshot's bytes, parity
	// consistent.
	cli(t, c, "snapshot", "detach", "ecs", "before")
	cli(t, c, "volume", "detach", "ecs")
	waitFor(t, time.Minute, "the host to stop serving the volume", func() bool {
		return exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4096", url).Run() != nil
	})
	cli(t, c, "volume", "rollback", "ecs", "before")
	cli(t, c, "volume", "attach", "ecs", "--host", c.HostName)
	if err := c.WaitTarget(ctx, "ecs", time.Minute); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 100k", "-c", "read -P 0x55 100k 4k", "-c", "read -P 0x11 104k 920k",
		"-c", "read -P 0x33 40M 1M", url); strings.Contains(out, "verification failed") {
		t.Fatalf("the EC volume after the rollback:\n%s", out)
	}
	if out := cli(t, c, "volume", "verify", "ecs"); !strings.Contains(out, "every member agrees") {
		t.Fatalf("verify after the rollback:\n%s", out)
	}
}
