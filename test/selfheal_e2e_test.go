package test

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/localcluster"
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
	t.Parallel()
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

	// The event log: one line for the chunkserver's members degraded, one
	// for their resyncs; --detail and --kind show each.
	out := cli(t, c, "events", "--server", victim)
	t.Logf("chunkraid events --server %s:\n%s", victim, out)
	if !strings.Contains(out, victim+": 2 members degraded") {
		t.Errorf("no summary of the degraded members")
	}
	if out := cli(t, c, "events", "--server", victim, "--kind", "member_degraded", "--detail"); strings.Count(out, "member_degraded") != 2 {
		t.Errorf("events --kind member_degraded --detail:\n%s", out)
	}
}

// TestLostChunkserverReplacedAndRebuilt: a chunkserver is killed for good
// under a qemu-io write load. After replace_after (shortened here, with the
// rest of the timeout budget) each of its members is replaced by a new
// chunk on a spare chunkserver and rebuilt by the serving host while the
// load goes on: every acknowledged write reads back, the replicas agree,
// the dead chunkserver holds no member any more, and the rebuild copied the
// allocated extents, not whole chunks.
func TestLostChunkserverReplacedAndRebuilt(t *testing.T) {
	t.Parallel()
	c := startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		Chunkservers:         4,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"},
		ExtraMetaArgs:        []string{"--io-timeout", "1s", "--offline-after", "3s", "--log-period", "4s", "--replace-after", "8s"},
	})
	ctx := t.Context()
	v := createVolume(t, c, "rb", "128MiB", c.HostName)
	if err := c.WaitTarget(ctx, "rb", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("rb")
	victim := v.Sets[0].Members[1].Chunkserver
	lctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	before := slots(24, 64<<10, 128<<20, 0)
	load := startWriteLoad(lctx, url, before, 0)
	<-load.done
	if load.err != nil {
		t.Fatalf("write load before the loss: %v\n%s", load.err, load.Output())
	}
	// A snapshot of what was written so far: the replacement must carry it.
	if _, err := c.Client().CreateSnapshot(ctx, "rb", "pre"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.CS[csIndex(t, c, victim)].Kill(); err != nil {
		t.Fatal(err)
	}
	// Writes go on through the loss, the replacement and the rebuild.
	during := slots(40, 64<<10, 128<<20, 100)
	for i := range during {
		during[i].off += 8192
	}
	load = startWriteLoad(lctx, url, during, 300)
	got := waitInSyncWithout(t, c, "rb", victim, 2*time.Minute)
	t.Logf("the lost chunkserver's members were replaced and rebuilt %v after the kill", time.Since(start).Round(time.Second))
	<-load.done
	acked := load.Acked()
	t.Logf("writes during the loss: %d of %d acknowledged (%v)", len(acked), len(during), load.err)
	evs, err := c.Client().ListEvents(ctx, "rb", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	replaced, rebuilt := 0, 0
	for _, e := range evs {
		switch e.Kind {
		case api.EventMemberReplaced:
			replaced++
			t.Logf("event: %s", e.Message)
		case api.EventRebuildDone:
			rebuilt++
			t.Logf("event: %s", e.Message)
		}
	}
	if replaced == 0 || rebuilt != replaced {
		t.Errorf("%d member_replaced and %d rebuild_done events", replaced, rebuilt)
	}
	for _, s := range got.Sets {
		for _, m := range s.Members {
			if m.Chunkserver == victim {
				t.Errorf("set %d still has a member on the dead %s", s.Index, victim)
			}
		}
	}
	if b, err := os.ReadFile(c.Hostd.Log); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "rebuilding a member onto a new chunk") || strings.Contains(l, "snapshot layer copied onto the rebuilt member") {
				t.Logf("hostd: %s", l[strings.Index(l, "msg="):])
			}
		}
	}
	verifyAcked(t, url, append(before, acked...))
	checkReplicas(t, c, "rb")
	// The replacement got the snapshot's layer: every member's copy of it
	// agrees, and it holds the writes made before it.
	if out := cli(t, c, "volume", "verify", "rb"); !strings.Contains(out, "volume rb, snapshot pre: every member agrees") {
		t.Fatalf("volume verify after the replacement:\n%s", out)
	}
	sv, err := c.Client().ReadSnapshotExports(ctx, "rb", "pre")
	if err != nil {
		t.Fatal(err)
	}
	var setStart int64
	for _, s := range sv.Sets {
		for _, m := range s.Members {
			checkSnapshotWrites(t, m, setStart, s.SizeBytes, before)
		}
		setStart += s.SizeBytes
	}

	// The lost chunkserver returns: it deletes its replaced chunk because
	// the metaserver says so, and serves nothing of the volume.
	old := v.Sets[0].Members[1].ChunkID
	if err := c.CS[csIndex(t, c, victim)].Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the replaced chunk to be deleted by its returning chunkserver", func() bool {
		chunks, err := c.Client().ListChunks(ctx, "")
		if err != nil {
			return false
		}
		for _, ch := range chunks {
			if ch.ID == old {
				return false
			}
		}
		return true
	})
	t.Logf("%s came back and deleted the replaced chunk %s", victim, old)
}

// waitInSyncWithout waits until every member of volume is in sync and none
// is on chunkserver gone.
func waitInSyncWithout(t *testing.T, c *localcluster.Cluster, volume, gone string, d time.Duration) *api.Volume {
	t.Helper()
	var v *api.Volume
	waitFor(t, d, "volume "+volume+" rebuilt without "+gone, func() bool {
		var err error
		if v, err = c.Client().GetVolume(t.Context(), volume); err != nil {
			return false
		}
		for _, s := range v.Sets {
			for _, m := range s.Members {
				if m.State != api.MemberInSync || m.Chunkserver == gone {
					return false
				}
			}
		}
		return true
	})
	return v
}

// TestRebuildResumesAfterHostdKill: a rebuild is under way (throttled so
// that it takes a while) when hostd is killed -9. The restarted hostd takes
// the rebuild over at the watermark the metaserver kept, not from the
// start; afterwards every acknowledged write reads back and the replicas
// agree.
func TestRebuildResumesAfterHostdKill(t *testing.T) {
	t.Parallel()
	c := startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		Chunkservers:         4,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576", "--resync-rate", "4194304"},
		ExtraMetaArgs:        []string{"--io-timeout", "1s", "--offline-after", "3s", "--log-period", "4s", "--replace-after", "6s"},
	})
	ctx := t.Context()
	v := createVolume(t, c, "rr", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "rr", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("rr")
	// 48 MiB of data: a rebuild at 4 MiB/s takes about 12 s.
	ws := slots(48, 1<<20, 64<<20, 0)
	load := startWriteLoad(ctx, url, ws, 0)
	<-load.done
	if load.err != nil {
		t.Fatalf("writes: %v\n%s", load.err, load.Output())
	}
	// Let the LOG bitmaps forget those writes (they rotate every T = 4 s):
	// after the host's crash only the rebuild then names them.
	time.Sleep(10 * time.Second)
	victim := v.Sets[0].Members[1].Chunkserver
	if err := c.CS[csIndex(t, c, victim)].Kill(); err != nil {
		t.Fatal(err)
	}
	var m api.Member
	waitFor(t, time.Minute, "the rebuild to be half done", func() bool {
		got, err := c.Client().GetVolume(ctx, "rr")
		if err != nil {
			return false
		}
		m = got.Sets[0].Members[1]
		return m.State == api.MemberRebuilding && m.RebuildWatermark >= 24<<20 && m.RebuildWatermark < 60<<20
	})
	t.Logf("killing hostd with the rebuild at %d of %d bytes (watermark %d)", m.ResyncDoneBytes, m.ResyncTotalBytes, m.RebuildWatermark)
	if err := c.Hostd.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.Hostd.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSyncWithout(t, c, "rr", victim, 2*time.Minute)
	b, err := os.ReadFile(c.Hostd.Log)
	if err != nil {
		t.Fatal(err)
	}
	var starts []string
	var lastCopied int64
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "rebuilding a member onto a new chunk") {
			starts = append(starts, l[strings.Index(l, "source_allocated_bytes"):])
		}
		if i := strings.Index(l, "copied_bytes="); i >= 0 && strings.Contains(l, "resync done") {
			lastCopied, _ = strconv.ParseInt(strings.Fields(l[i+len("copied_bytes="):])[0], 10, 64)
		}
	}
	t.Logf("rebuild starts: %q; the resumed rebuild copied %d bytes of the set's %d", starts, lastCopied, int64(64<<20))
	if lastCopied <= 0 || lastCopied >= 64<<20 {
		t.Errorf("the resumed rebuild copied %d bytes: it started over", lastCopied)
	}
	if len(starts) < 2 || strings.HasSuffix(starts[len(starts)-1], " from=0") {
		t.Errorf("the restarted hostd did not resume from the watermark: %q", starts)
	}
	evs, err := c.Client().ListEvents(ctx, "rr", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Kind == api.EventRebuildDone || e.Kind == api.EventMemberReplaced {
			t.Logf("event: %s", e.Message)
		}
	}
	verifyAcked(t, url, ws)
	checkReplicas(t, c, "rr")
}

// checkSnapshotWrites reads, from member m's snapshot export (m.Export
// names one) of the set that holds volume bytes [start, start+size), every
// write of ws in that range, and fails unless it holds the write's pattern.
func checkSnapshotWrites(t *testing.T, m api.Member, start, size int64, ws []slotWrite) {
	t.Helper()
	nc, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: m.Addr, Export: m.Export})
	if err != nil {
		t.Fatalf("member on %s: opening the snapshot's export: %v", m.Chunkserver, err)
	}
	defer nc.Close()
	for _, w := range ws {
		if w.off < start || w.off+w.len > start+size {
			continue
		}
		got := make([]byte, w.len)
		if err := nc.ReadAt(t.Context(), got, w.off-start); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, bytes.Repeat([]byte{w.pat}, int(w.len))) {
			t.Fatalf("member on %s: its copy of the snapshot lacks the write at %d made before it", m.Chunkserver, w.off)
		}
	}
}
