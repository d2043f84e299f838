package test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestOnlineResize grows an attached volume with `chunkraid volume resize`:
// its host grows it in place (no detach), iscsi-readcapacity16 reports the
// new capacity, qemu-io writes past the
// old end and reads it back, the data written before is intact and the
// replicas agree. A smaller size is refused with a clear message.
func TestOnlineResize(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)
	ctx := t.Context()
	createVolume(t, c, "grow", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "grow", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("grow")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0x5b 63M 1M", "-c", "flush", url)
	before := run(t, "iscsi-readcapacity16", url)
	t.Logf("before: %s", strings.TrimSpace(before))
	if !strings.Contains(before, "67108864") {
		t.Fatalf("iscsi-readcapacity16 before the resize:\n%s", before)
	}

	out := cli(t, c, "volume", "resize", "grow", "--size", "160MiB")
	t.Logf("chunkraid volume resize grow --size 160MiB:\n%s", out)
	var after string
	waitFor(t, time.Minute, "the target to report 160 MiB", func() bool {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, err := exec.CommandContext(cctx, "iscsi-readcapacity16", url).CombinedOutput()
		after = string(b)
		return err == nil && strings.Contains(after, "167772160")
	})
	t.Logf("after: %s", strings.TrimSpace(after))
	// Picked up in place: the host grew the volume and never attached it
	// again.
	hlog, err := os.ReadFile(c.Hostd.Log)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(hlog), `msg="volume attached" volume=grow`); n != 1 || !strings.Contains(string(hlog), `msg="volume grown in place" volume=grow`) {
		t.Errorf("the host attached the volume %d times and grew it in place: %v", n, strings.Contains(string(hlog), "volume grown in place"))
	}
	if out := run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x6c 100M 4M", "-c", "write -P 0x6d 159M 1M", "-c", "flush",
		"-c", "read -P 0x6c 100M 4M", "-c", "read -P 0x6d 159M 1M", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x5b 63M 1M", url); strings.Contains(out, "failed") {
		t.Fatalf("I/O past the old end:\n%s", out)
	}
	if out := cliFail(t, c, "volume", "resize", "grow", "--size", "64MiB"); !strings.Contains(out, "shrinking is not supported") {
		t.Fatalf("shrink: %s", out)
	}
	waitInSync(t, c, "grow", time.Minute)
	verifyVolume(t, c, "grow")
	// The daemons are built with the race detector: growing a volume under
	// its supervisors, reporter and target must not race.
	if hlog, err := os.ReadFile(c.Hostd.Log); err != nil || strings.Contains(string(hlog), "DATA RACE") {
		t.Errorf("hostd log: %v\n%s", err, tail(string(hlog), 60))
	}
}
