package test

import (
	"strings"
	"testing"
	"time"
)

// TestCloneDivergence: a writable clone of a golden volume's snapshot is
// made at once on the golden volume's chunkservers and reads the snapshot;
// writes to the clone never show on the golden volume and writes to the
// golden volume never show on the clone (qemu-io patterns both ways); a
// second clone of the same snapshot is independent of the first; the
// clone's replicas agree, also after one of its chunkservers restarted;
// the snapshot and the golden volume cannot be deleted while a clone
// exists, and the refusal names the clones; flattened, a clone no longer
// needs the snapshot.
func TestCloneDivergence(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-io")
	c := faultCluster(t)
	ctx := t.Context()
	createVolume(t, c, "golden", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "golden", time.Minute); err != nil {
		t.Fatal(err)
	}
	gold := c.ISCSIURL("golden")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4M", "-c", "write -P 0x12 10M 1M", gold)
	cli(t, c, "snapshot", "create", "golden", "v1")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x21 0 512k", gold)

	start := time.Now()
	out := cli(t, c, "volume", "clone", "golden@v1", "vm1", "--host", c.HostName)
	took := time.Since(start)
	if !strings.Contains(out, "created as a writable clone of golden@v1") || !strings.Contains(out, "Clone of:") {
		t.Fatalf("volume clone:\n%s", out)
	}
	t.Logf("the CLI's volume clone golden@v1 vm1 returned in %s", took.Round(time.Millisecond))
	if err := c.WaitTarget(ctx, "vm1", time.Minute); err != nil {
		t.Fatal(err)
	}
	vm1 := c.ISCSIURL("vm1")
	expect := func(url, what string, reads ...string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, r := range reads {
			args = append(args, "-c", "read -P "+r)
		}
		if out := run(t, "qemu-io", append(args, url)...); strings.Contains(out, "verification failed") {
			t.Fatalf("%s:\n%s", what, out)
		}
	}
	expect(vm1, "the new clone reads the snapshot, not the golden volume's later write",
		"0x11 0 4M", "0x12 10M 1M", "0 4M 6M")

	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x31 1M 512k", vm1)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 2M 512k", gold)
	expect(gold, "the golden volume after writes to both",
		"0x21 0 512k", "0x11 512k 1536k", "0x22 2M 512k", "0x11 2560k 1536k", "0x12 10M 1M")
	expect(vm1, "the clone after writes to both",
		"0x11 0 1M", "0x31 1M 512k", "0x11 1536k 2560k", "0x12 10M 1M")

	start = time.Now()
	if _, err := c.Client().CloneVolume(ctx, "golden", "v1", "vm2", c.HostName); err != nil {
		t.Fatal(err)
	}
	t.Logf("the API made a second clone in %s", time.Since(start).Round(time.Millisecond))
	if err := c.WaitTarget(ctx, "vm2", time.Minute); err != nil {
		t.Fatal(err)
	}
	vm2 := c.ISCSIURL("vm2")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x41 3M 64k", vm2)
	expect(vm2, "the second clone", "0x11 0 3M", "0x41 3M 64k", "0x11 3136k 960k")
	expect(vm1, "the first clone after the second's write", "0x11 2M 2M")

	if out := cliFail(t, c, "snapshot", "delete", "golden", "v1"); !strings.Contains(out, "vm1, vm2") {
		t.Errorf("deleting the clones' snapshot: %s", out)
	}
	if out := cliFail(t, c, "volume", "delete", "golden"); !strings.Contains(out, "vm1, vm2") {
		t.Errorf("deleting the clones' parent: %s", out)
	}

	// A chunkserver of the clone restarts: its clone chunk loads and
	// links to its base again; the replicas agree afterwards.
	v, err := c.Client().GetVolume(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	cs := c.CS[csIndex(t, c, v.Sets[0].Members[0].Chunkserver)]
	if err := cs.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x32 6M 64k", vm1)
	if err := cs.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "vm1", 2*time.Minute)
	expect(vm1, "the clone after a chunkserver restart", "0x31 1M 512k", "0x32 6M 64k", "0x12 10M 1M")
	checkReplicas(t, c, "vm1")
	if out := cli(t, c, "volume", "verify", "vm1"); !strings.Contains(out, "every member agrees") {
		t.Fatalf("verify vm1:\n%s", out)
	}

	// Flattened, vm1 no longer needs the snapshot: with vm2 deleted, the
	// snapshot goes, and vm1 still reads its bytes.
	out = cli(t, c, "volume", "flatten", "vm1")
	if !strings.Contains(out, "Volume vm1 flattened in") {
		t.Fatalf("volume flatten:\n%s", out)
	}
	t.Logf("%s", strings.TrimSpace(out))
	if out := cli(t, c, "volume", "show", "vm1"); strings.Contains(out, "Clone of") {
		t.Errorf("volume show after the flatten:\n%s", out)
	}
	cli(t, c, "volume", "delete", "vm2")
	cli(t, c, "snapshot", "delete", "golden", "v1")
	expect(vm1, "the flattened clone once the snapshot is gone",
		"0x11 0 1M", "0x31 1M 512k", "0x11 1536k 2560k", "0x32 6M 64k", "0x12 10M 1M", "0 11M 53M")
	checkReplicas(t, c, "vm1")
	if out := cliFail(t, c, "volume", "flatten", "vm1"); !strings.Contains(out, "not a clone") {
		t.Errorf("flattening it again: %s", out)
	}
	cli(t, c, "volume", "delete", "vm1")
	cli(t, c, "volume", "delete", "golden")
}
