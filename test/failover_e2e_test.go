package test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestHostFailoverRedirect: an initiator that knows only host2's portal
// finds a volume host1 serves (SendTargets lists it at host1's portal; a
// login through host2 is redirected to host1) and writes through it. host1
// is killed with -9 under a qemu-io write load: after host_failover_after
// the leader attaches the volume to host2, which recovers it from the LOG
// bitmaps; writes through host2's portal succeed again, every acknowledged
// write reads back and the replicas agree.
func TestHostFailoverRedirect(t *testing.T) {
	t.Parallel()
	c := faultCluster(t, "--io-timeout", "1s", "--offline-after", "3s", "--log-period", "4s", "--host-failover-after", "5s")
	ctx := t.Context()
	createVolume(t, c, "fo", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "fo", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(ctx, "host2"); err != nil {
		t.Fatal(err)
	}
	url2 := c.ISCSIURLOn("host2", "fo")
	listed := "Target:" + api.IQNPrefix + "fo Portal:" + c.HostISCSI[c.HostName] + ",1"
	waitFor(t, 30*time.Second, "host2 to list fo at host1's portal", func() bool {
		out, _ := exec.CommandContext(ctx, "iscsi-ls", "iscsi://"+c.HostISCSI["host2"]).CombinedOutput()
		return strings.Contains(string(out), listed)
	})
	t.Logf("iscsi-ls iscsi://%s (host2): %s", c.HostISCSI["host2"], listed)
	// Through host2's portal, redirected to host1.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x3c 0 64k", url2)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x3c 0 64k", c.ISCSIURL("fo"))

	lctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	ws := slots(600, 16<<10, 24<<20, 7)
	load := startWriteLoad(lctx, url2, ws, 20)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 30 })
	killed := time.Now()
	if err := c.Hostd.Kill(); err != nil {
		t.Fatal(err)
	}
	ackedAtKill := len(load.Acked())
	// A new login through host2's portal, every 200 ms, until a write
	// succeeds: redirected to the dead host1 until the failover, then
	// served by host2.
	var firstWrite time.Duration
	waitFor(t, time.Minute, "a write through host2's portal after the kill", func() bool {
		err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write -P 0x4d 32M 4k", url2).Run()
		if err == nil {
			firstWrite = time.Since(killed)
			return true
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})
	t.Logf("kill -9 of host1 to the first successful write through host2's portal: %v (failover after 5s, offline after 3s)", firstWrite.Round(100*time.Millisecond))
	v, err := c.Client().GetVolume(ctx, "fo")
	if err != nil {
		t.Fatal(err)
	}
	if v.Host != "host2" || v.Epoch != 2 {
		t.Fatalf("after the failover fo is on %q at epoch %d, want host2 at 2", v.Host, v.Epoch)
	}
	evs, err := c.Client().ListEvents(ctx, "fo", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var fo []string
	for _, e := range evs {
		if e.Kind == api.EventHostFailover {
			fo = append(fo, e.Message)
		}
	}
	if len(fo) != 1 || !strings.Contains(fo[0], "host host1 has had no heartbeat") || !strings.Contains(fo[0], "attached to host host2 at epoch 2") {
		t.Fatalf("host_failover events: %q", fo)
	}
	t.Logf("event: %s", fo[0])

	// The load's own session: does QEMU's initiator carry on by itself?
	waitFor(t, 30*time.Second, "the load to write again after the failover", func() bool { return len(load.Acked()) > ackedAtKill+10 })
	cancel()
	<-load.done
	acked := load.Acked()
	t.Logf("the qemu-io load: %d writes acknowledged before the kill, %d in all", ackedAtKill, len(acked))
	waitInSync(t, c, "fo", time.Minute)
	verifyAcked(t, url2, append(acked, slotWrite{off: 32 << 20, len: 4096, pat: 0x4d}))
	checkReplicas(t, c, "fo")
}
