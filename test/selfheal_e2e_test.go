package test

import (
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestIdleChunkserverLossNoticed: a chunkserver killed under an idle volume
// is noticed without any I/O. The serving host's probe fails the member
// within its probe interval plus t_io, and `volume show` says so. For a
// volume no host serves, the metaserver marks the member degraded once the
// chunkserver has been offline for offline_after. When the chunkserver
// returns, the attached volume's member is resynced and in sync again; the
// unattached one stays degraded (only a resync may promote it), and is
// resynced when the volume is attached. Every written byte reads back and
// the replicas agree.
func TestIdleChunkserverLossNoticed(t *testing.T) {
	c := faultCluster(t)
	ctx := t.Context()
	v := createVolume(t, c, "busy", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "busy", time.Minute); err != nil {
		t.Fatal(err)
	}
	// An unattached volume; two mirrors on three chunkservers share one.
	cli(t, c, "volume", "create", "parked", "--size", "64MiB", "--layout", "mirror:2")
	parked, err := c.Client().GetVolume(ctx, "parked")
	if err != nil {
		t.Fatal(err)
	}
	victim := ""
	for _, m := range v.Sets[0].Members {
		for _, p := range parked.Sets[0].Members {
			if m.Chunkserver == p.Chunkserver {
				victim = m.Chunkserver
			}
		}
	}
	if victim == "" {
		t.Fatalf("the two volumes share no chunkserver: %+v %+v", v.Sets, parked.Sets)
	}
	url := c.ISCSIURL("busy")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "flush", url)
	waitInSync(t, c, "busy", time.Minute)

	start := time.Now()
	if err := c.CS[csIndex(t, c, victim)].Kill(); err != nil {
		t.Fatal(err)
	}
	waitMemberState(t, c, "busy", victim, api.MemberDegraded, 15*time.Second)
	t.Logf("idle volume: the member on the killed chunkserver %s is degraded after %v (no I/O)", victim, time.Since(start).Round(100*time.Millisecond))
	if out := cli(t, c, "volume", "show", "busy"); !strings.Contains(out, "degraded") {
		t.Errorf("volume show busy:\n%s", out)
	}
	waitMemberState(t, c, "parked", victim, api.MemberDegraded, 30*time.Second)
	t.Logf("unattached volume: its member on %s is marked degraded after %v", victim, time.Since(start).Round(100*time.Millisecond))
	evs, err := c.Client().ListEvents(ctx, "parked", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range evs {
		if e.Kind == api.EventMemberDegraded && strings.Contains(e.Message, "its chunkserver is offline") {
			found = true
			t.Logf("event: %s", e.Message)
		}
	}
	if !found {
		t.Errorf("no member_degraded event for the parked volume: %+v", evs)
	}

	if err := c.CS[csIndex(t, c, victim)].Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "busy", time.Minute)
	if got, err := c.Client().GetVolume(ctx, "parked"); err != nil {
		t.Fatal(err)
	} else {
		for _, m := range got.Sets[0].Members {
			if m.Chunkserver == victim && m.State != api.MemberDegraded {
				t.Errorf("the parked volume's member is %s with its chunkserver back and no resync, want degraded", m.State)
			}
		}
	}
	cli(t, c, "volume", "attach", "parked", "--host", c.HostName)
	waitInSync(t, c, "parked", time.Minute)
	checkReplicas(t, c, "parked")
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", url)
	checkReplicas(t, c, "busy")
}
