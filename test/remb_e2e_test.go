package test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// The fault tests run with small chunks, 1 MiB LOG regions (the chunk is
// 64 MiB, so "far below the chunk size" is measurable) and short timeouts.
func faultCluster(t *testing.T, meta ...string) *localcluster.Cluster {
	t.Helper()
	return startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"},
		ExtraMetaArgs:        meta,
	})
}

func createVolume(t *testing.T, c *localcluster.Cluster, name, size, host string, extra ...string) api.Volume {
	t.Helper()
	args := append([]string{"volume", "create", name, "--size", size, "--layout", "mirror:2", "--host", host}, extra...)
	cli(t, c, args...)
	v, err := c.Client().GetVolume(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return *v
}

// waitInSync waits until the host reports every member of the volume in
// sync with nothing dirty.
func waitInSync(t *testing.T, c *localcluster.Cluster, volume string, d time.Duration) api.Volume {
	t.Helper()
	var v *api.Volume
	waitFor(t, d, "volume "+volume+" in sync", func() bool {
		var err error
		v, err = c.Client().GetVolume(t.Context(), volume)
		if err != nil {
			return false
		}
		for _, s := range v.Sets {
			if s.DirtyBytes != 0 {
				return false
			}
			for _, m := range s.Members {
				if m.State != api.MemberInSync {
					return false
				}
			}
		}
		return true
	})
	return *v
}

func waitMemberState(t *testing.T, c *localcluster.Cluster, volume, chunkserver, state string, d time.Duration) {
	t.Helper()
	waitFor(t, d, fmt.Sprintf("a member of %s on %s to be %s", volume, chunkserver, state), func() bool {
		v, err := c.Client().GetVolume(t.Context(), volume)
		if err != nil {
			return false
		}
		for _, s := range v.Sets {
			for _, m := range s.Members {
				if m.Chunkserver == chunkserver && m.State == state {
					return true
				}
			}
		}
		return false
	})
}

func csIndex(t *testing.T, c *localcluster.Cluster, name string) int {
	for i, p := range c.CS {
		if p.Name == name {
			return i
		}
	}
	t.Fatalf("no chunkserver %s", name)
	return -1
}

// TestChunkserverCrashIncrementalResync is fault test (a): kill -9 a
// chunkserver during a write load, keep writing degraded, restart it; the
// resync copies at most the regions written during the outage.
func TestChunkserverCrashIncrementalResync(t *testing.T) {
	t.Parallel()
	c := faultCluster(t)
	v := createVolume(t, c, "fa", "128MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "fa", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("fa")
	victim := v.Sets[0].Members[1].Chunkserver
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	before := slots(40, 64<<10, 128<<20, 0)
	load := startWriteLoad(ctx, url, before, 0)
	<-load.done
	if load.err != nil {
		t.Fatalf("write load before the crash: %v\n%s", load.err, load.Output())
	}
	// The outage: kill the chunkserver, then write 32 slots of 64 KiB in
	// 16 distinct 1 MiB regions of set 0 while it is away.
	p := c.CS[csIndex(t, c, victim)]
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	var during []slotWrite
	for i := 0; i < 32; i++ {
		during = append(during, slotWrite{off: int64(i/2)*(3<<20) + int64(i%2)*(128<<10) + 4096*7, len: 64 << 10, pat: byte(100 + i)})
	}
	written := int64(len(during)) * (64 << 10)
	load = startWriteLoad(ctx, url, during, 20)
	<-load.done
	if load.err != nil || len(load.Acked()) != len(during) {
		t.Fatalf("degraded writes: %v, %d of %d acknowledged\n%s", load.err, len(load.Acked()), len(during), load.Output())
	}
	waitMemberState(t, c, "fa", victim, api.MemberDegraded, 15*time.Second)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "fa", time.Minute)
	copied, n := resyncedBytes(t, c.Hostd.Log)
	regions := int64(16) << 20
	t.Logf("fault (a): bytes written during the outage %d; bytes resynced %d in %d resyncs; chunk size %d", written, copied, n, testChunk)
	if copied == 0 || copied > regions {
		t.Fatalf("resync copied %d bytes; the outage dirtied %d bytes of regions", copied, regions)
	}
	verifyAcked(t, url, append(before, during...))
	checkReplicas(t, c, "fa")
}

// TestHostCrashRecoversFromLogBitmaps is fault test (b): kill -9 the hostd
// during a write load, attach the volume on a second host; its WIB is
// rebuilt from the chunks' LOG bitmaps and the replicas end identical after
// copying far less than a chunk.
func TestHostCrashRecoversFromLogBitmaps(t *testing.T) {
	t.Parallel()
	hostCrash(t, "remb")
}

// TestHostCrashBitmapModes repeats fault (b) with the comparison modes:
// internal (the bitmap stored synchronously on every member) recovers
// incrementally from the members' intent bitmaps; none has no record and
// must copy everything.
func TestHostCrashBitmapModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"internal", "none"} {
		t.Run(mode, func(t *testing.T) { hostCrash(t, mode) })
	}
}

func hostCrash(t *testing.T, mode string) {
	c := faultCluster(t)
	createVolume(t, c, "fb", "128MiB", c.HostName, "--bitmap", mode)
	// The load touches the first 24 MiB.
	acked, copied, n := crashUnderLoad(t, c, "fb", slots(400, 16<<10, 24<<20, 0))
	url2 := c.ISCSIURLOn("host2", "fb")
	written := int64(len(acked)) * (16 << 10)
	t.Logf("fault (b), bitmap %s: %d writes acknowledged (%d bytes) before the host died; new host resynced %d bytes in %d resyncs; chunk size %d",
		mode, len(acked), written, copied, n, testChunk)
	switch mode {
	case "none":
		if copied != 2*testChunk {
			t.Fatalf("bitmap none: recovery copied %d bytes, want the whole volume %d", copied, 2*testChunk)
		}
	default:
		if copied >= testChunk/2 {
			t.Fatalf("recovery copied %d bytes, not far below the chunk size %d", copied, testChunk)
		}
		if n == 0 || copied == 0 {
			t.Fatal("the new host ran no resync: the members' records were not used")
		}
	}
	// The recovery is visible: each set's resync is an event pair with its
	// bytes, adding up to what the host copied.
	var reported int64
	waitFor(t, 20*time.Second, "the recovery resyncs to show as events", func() bool {
		evs, err := c.Client().ListEvents(t.Context(), "fb", 0, 1000)
		if err != nil {
			return false
		}
		reported = 0
		started := 0
		for _, e := range evs {
			if !setSubject.MatchString(e.Subject) {
				continue
			}
			switch e.Kind {
			case api.EventResyncStarted:
				started++
			case api.EventResyncDone:
				if m := eventBytes.FindStringSubmatch(e.Message); m != nil {
					n, _ := strconv.ParseInt(m[1]+m[2], 10, 64)
					reported += n
				}
			}
		}
		return started > 0 && reported == copied
	})
	t.Logf("fault (b), bitmap %s: the events report %d bytes resynced", mode, reported)
	verifyAcked(t, url2, acked)
	checkReplicas(t, c, "fb")
}

// TestHostCrashFineLog: with LOG regions of 16 MiB on disk, the host dies
// while writing the first 4 MiB of a volume; the new host reads the
// members' LOGs, which the chunkservers answer from their fine copy in
// memory (1 MiB regions), and copies about what was written, less than one
// LOG region; every acknowledged write reads back and the replicas agree.
func TestHostCrashFineLog(t *testing.T) {
	t.Parallel()
	const logRegion = 16 << 20
	c := startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		ExtraChunkserverArgs: []string{"--log-region", strconv.Itoa(logRegion)},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"},
	})
	createVolume(t, c, "fl", "64MiB", c.HostName)
	acked, copied, n := crashUnderLoad(t, c, "fl", slots(256, 16<<10, 4<<20, 0))
	t.Logf("host crash with %d MiB LOG regions: %d writes of 16 KiB acknowledged in the first 4 MiB; the new host resynced %d bytes in %d resyncs",
		logRegion>>20, len(acked), copied, n)
	if n == 0 || copied == 0 {
		t.Fatal("the new host ran no resync: the members' LOGs were not used")
	}
	if copied > 5<<20 {
		t.Fatalf("the new host resynced %d bytes for writes to the first 4 MiB: whole LOG regions (%d bytes), not the fine copy", copied, logRegion)
	}
	verifyAcked(t, c.ISCSIURLOn("host2", "fl"), acked)
	checkReplicas(t, c, "fl")
}

// crashUnderLoad kills the host serving volume (which has just been
// created on it) with -9 under a qemu-io load of ws, attaches the volume to
// a new host, host2, and waits until it is in sync. It returns the writes
// acknowledged before the kill and what host2's resyncs copied.
func crashUnderLoad(t *testing.T, c *localcluster.Cluster, volume string, ws []slotWrite) (acked []slotWrite, copied int64, resyncs int) {
	t.Helper()
	if err := c.WaitTarget(t.Context(), volume, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(t.Context(), "host2"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	load := startWriteLoad(ctx, c.ISCSIURL(volume), ws, 5)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 50 })
	if err := c.Hostd.Kill(); err != nil {
		t.Fatal(err)
	}
	acked = load.Acked()
	cancel()
	<-load.done
	cli(t, c, "volume", "attach", volume, "--host", "host2")
	if err := c.WaitTargetOn(t.Context(), "host2", volume, time.Minute); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, volume, time.Minute)
	copied, resyncs = resyncedBytes(t, c.Hosts["host2"].Log)
	return acked, copied, resyncs
}

var (
	setSubject = regexp.MustCompile(`^volume/[^/]+/set/\d+$`)
	eventBytes = regexp.MustCompile(`\((\d+) bytes\)|copied (\d+) bytes`)
)

// TestHostAndChunkserverCrash is fault test (c): the hostd and one
// chunkserver die together. The new host attaches degraded, recovers from
// the surviving LOG bitmaps, and merges the returning member's LOG when it
// comes back: no silent inconsistency, and the log shows whether the
// resync was incremental.
func TestHostAndChunkserverCrash(t *testing.T) {
	t.Parallel()
	c := faultCluster(t)
	v := createVolume(t, c, "fc", "64MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "fc", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(t.Context(), "host2"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ws := slots(300, 16<<10, 16<<20, 0)
	load := startWriteLoad(ctx, c.ISCSIURL("fc"), ws, 5)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 50 })
	victim := c.CS[csIndex(t, c, v.Sets[0].Members[0].Chunkserver)]
	c.Hostd.Kill()
	victim.Kill()
	acked := load.Acked()
	cancel()
	<-load.done

	cli(t, c, "volume", "attach", "fc", "--host", "host2")
	url2 := c.ISCSIURLOn("host2", "fc")
	if err := c.WaitTargetOn(t.Context(), "host2", "fc", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitMemberState(t, c, "fc", victim.Name, api.MemberDegraded, 30*time.Second)
	// Degraded, the volume serves the acknowledged writes and takes more.
	verifyAcked(t, url2, acked)
	more := slots(20, 4096, 16<<20, 77)
	for i := range more {
		more[i].off += 32 << 20
	}
	l2 := startWriteLoad(t.Context(), url2, more, 0)
	<-l2.done
	if l2.err != nil {
		t.Fatalf("degraded writes on the new host: %v\n%s", l2.err, l2.Output())
	}
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "fc", time.Minute)
	copied, n := resyncedBytes(t, c.Hosts["host2"].Log)
	kind := "incremental"
	if copied >= testChunk {
		kind = "full"
	}
	t.Logf("fault (c): %s resync, %d bytes in %d resyncs (chunk %d)", kind, copied, n, testChunk)
	verifyAcked(t, url2, append(acked, more...))
	checkReplicas(t, c, "fc")
}

// TestDegradedLongerThanT is fault test (d): with T = 2 s and t_io = 0.5 s a
// member stays away for several periods, then the host dies. The pinned
// LOG bitmaps of the survivor still name everything the absent member
// missed, so after the move and its return it holds every write.
func TestDegradedLongerThanT(t *testing.T) {
	// Not beside the others: t_io 500 ms and offline_after 1 s leave no
	// room for a machine busy with four clusters.
	c := faultCluster(t, "--io-timeout", "500ms", "--offline-after", "1s", "--log-period", "2s")
	v := createVolume(t, c, "fd", "64MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "fd", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(t.Context(), "host2"); err != nil {
		t.Fatal(err)
	}
	// Member 0 is the one a careless recovery would pick as its source.
	victim := c.CS[csIndex(t, c, v.Sets[0].Members[0].Chunkserver)]
	victim.Kill()
	ws := slots(60, 64<<10, 60<<20, 0)
	load := startWriteLoad(t.Context(), c.ISCSIURL("fd"), ws, 100) // about 6 s: three periods
	<-load.done
	if load.err != nil {
		t.Fatalf("degraded write load: %v\n%s", load.err, load.Output())
	}
	time.Sleep(5 * time.Second) // more periods pass with nothing written
	c.Hostd.Kill()
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	cli(t, c, "volume", "attach", "fd", "--host", "host2")
	if err := c.WaitTargetOn(t.Context(), "host2", "fd", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "fd", time.Minute)
	copied, n := resyncedBytes(t, c.Hosts["host2"].Log)
	t.Logf("fault (d): after %d degraded writes over several T and a host crash, the new host resynced %d bytes in %d resyncs", len(ws), copied, n)
	verifyAcked(t, c.ISCSIURLOn("host2", "fd"), load.Acked())
	checkReplicas(t, c, "fd")
}

// TestZombieHostCannotWrite is fault test (e): a hostd frozen with SIGSTOP
// while a write is queued, the volume moved to another host, then SIGCONT:
// the zombie's connections are fenced and nothing it sends lands.
func TestZombieHostCannotWrite(t *testing.T) {
	t.Parallel()
	c := faultCluster(t)
	createVolume(t, c, "fe", "64MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "fe", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddHostd(t.Context(), "host2"); err != nil {
		t.Fatal(err)
	}
	url1 := c.ISCSIURL("fe")
	base := slots(16, 64<<10, 16<<20, 0)
	l := startWriteLoad(t.Context(), url1, base, 0)
	<-l.done
	if l.err != nil {
		t.Fatal(l.err)
	}
	if err := c.Hostd.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A write queued at the frozen host: it reaches the zombie's socket and
	// waits there.
	zctx, zcancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer zcancel()
	zombie := []slotWrite{{off: base[3].off, len: 64 << 10, pat: 0xee}}
	zl := startWriteLoad(zctx, url1, zombie, 0)
	time.Sleep(time.Second)

	cli(t, c, "volume", "attach", "fe", "--host", "host2")
	url2 := c.ISCSIURLOn("host2", "fe")
	if err := c.WaitTargetOn(t.Context(), "host2", "fe", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "fe", time.Minute)
	newer := []slotWrite{{off: base[5].off, len: 64 << 10, pat: 0xdd}}
	l = startWriteLoad(t.Context(), url2, newer, 0)
	<-l.done
	if l.err != nil {
		t.Fatal(l.err)
	}
	if err := c.Hostd.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Give the zombie time to run its queued write and its reconnects.
	time.Sleep(3 * time.Second)
	zcancel()
	<-zl.done
	want := append([]slotWrite(nil), base...)
	want[5] = newer[0]
	if len(zl.Acked()) != 0 {
		// Acceptable only if the queued login reached host1 after it had
		// learnt that fe moved: host1 then redirects it to host2, which
		// takes the write; the zombie itself took nothing.
		log, err := os.ReadFile(c.Hostd.Log)
		if err != nil {
			t.Fatal(err)
		}
		redirected := regexp.MustCompile(`msg="iscsi login redirected" .*reason="target ` + regexp.QuoteMeta(api.IQNPrefix+"fe is served at "+c.HostISCSI["host2"]) + `"`)
		if !redirected.Match(log) {
			t.Fatalf("the zombie host acknowledged a write after the volume moved:\n%s", zl.Output())
		}
		t.Logf("the login queued at the frozen host was redirected to host2, which took the write")
		want[3] = zombie[0]
	}
	verifyAcked(t, url2, want) // base[3] holds its old pattern unless host2 took the write: the zombie's never landed
	checkReplicas(t, c, "fe")
}

// TestHostRestartReusesWIB: a hostd killed mid-write and restarted on the
// same host finds its write-intent bitmap in /dev/shm and resyncs from it
// (and from the LOG bitmaps), without the volume moving.
func TestHostRestartReusesWIB(t *testing.T) {
	t.Parallel()
	c := faultCluster(t)
	createVolume(t, c, "fr", "64MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "fr", time.Minute); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	load := startWriteLoad(ctx, c.ISCSIURL("fr"), slots(300, 16<<10, 8<<20, 0), 5)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 50 })
	if err := c.Hostd.Kill(); err != nil {
		t.Fatal(err)
	}
	acked := load.Acked()
	cancel()
	<-load.done
	if err := c.Hostd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTarget(t.Context(), "fr", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "fr", time.Minute)
	b, err := os.ReadFile(c.Hostd.Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "reusing the write-intent bitmap left by a previous hostd") {
		t.Fatal("the restarted hostd did not reuse its WIB")
	}
	copied, n := resyncedBytes(t, c.Hostd.Log)
	t.Logf("host restart: %d acknowledged writes; the restarted host reused its WIB and resynced %d bytes in %d resyncs", len(acked), copied, n)
	verifyAcked(t, c.ISCSIURL("fr"), acked)
	checkReplicas(t, c, "fr")
}
