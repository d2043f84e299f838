package test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/localcluster"
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

// TestMetaserverLeaderFailover: two metaservers on one PostgreSQL; every
// daemon and the CLI are given both URLs. The leader is killed with -9
// under a qemu-io write load: the other takes the leader lock within
// seconds, the daemons go on through it (no chunkserver or host is
// declared offline, no member degraded, at most one warning each), the
// CLI answers, and every acknowledged write reads back.
func TestMetaserverLeaderFailover(t *testing.T) {
	t.Parallel()
	c := startClusterOpts(t, localcluster.Options{ChunkSize: testChunk, Metaservers: 2,
		ExtraMetaArgs:        []string{"--io-timeout", "1s", "--offline-after", "3s", "--log-period", "4s"},
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"}})
	ctx := t.Context()
	hc := caClient(t, c)
	leading := func(i int) (float64, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.MetaURLs[i]+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		m, err := scrape.Parse(resp.Body)
		if err != nil {
			return 0, err
		}
		v, _ := m.Sum("chunkraid_metaserver_leader", nil)
		return v, nil
	}
	leader := -1
	waitFor(t, 30*time.Second, "one metaserver to lead", func() bool {
		a, err1 := leading(0)
		b, err2 := leading(1)
		switch {
		case err1 != nil || err2 != nil || a+b != 1:
			return false
		case a == 1:
			leader = 0
		default:
			leader = 1
		}
		return true
	})
	other := 1 - leader
	t.Logf("metaserver %d (%s) leads", leader+1, c.MetaURLs[leader])

	createVolume(t, c, "ha", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "ha", time.Minute); err != nil {
		t.Fatal(err)
	}
	lastEvent := lastEventID(t, c)
	lctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	load := startWriteLoad(lctx, c.ISCSIURL("ha"), slots(600, 16<<10, 24<<20, 11), 20)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 30 })

	killed := time.Now()
	if err := c.Metas[leader].Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the other metaserver to lead", func() bool {
		v, err := leading(other)
		return err == nil && v == 1
	})
	takeover := time.Since(killed)
	t.Logf("leader killed: metaserver %d leads %v later", other+1, takeover.Round(10*time.Millisecond))
	// Longer than offline_after: a daemon whose heartbeats stopped would
	// be declared offline by the new leader.
	time.Sleep(5 * time.Second)
	out := cli(t, c, "volume", "show", "ha")
	if !strings.Contains(out, "in_sync") {
		t.Errorf("volume show after the failover:\n%s", out)
	}
	atKill := len(load.Acked())
	waitFor(t, 30*time.Second, "more writes", func() bool { return len(load.Acked()) > atKill+20 })
	cancel()
	<-load.done
	acked := load.Acked()

	noFaultEventsSince(t, c, lastEvent, "after the leader's death")
	// What the daemons noticed: their warnings since the kill.
	logs := map[string]string{"host1": c.Hostd.Log}
	for _, p := range c.CS {
		logs[p.Name] = p.Log
	}
	for name, path := range logs {
		warned := warningsSince(t, path, killed)
		if len(warned) > 1 {
			t.Errorf("%s logged %d warnings after the leader's death:\n%s", name, len(warned), strings.Join(warned, "\n"))
		}
		t.Logf("%s: %d warnings after the leader's death %q", name, len(warned), warned)
	}
	verifyAcked(t, c.ISCSIURL("ha"), acked)
	checkReplicas(t, c, "ha")
}

// warningsSince returns the WARN and ERROR lines of a daemon's log at or
// after since.
func warningsSince(t *testing.T, path string, since time.Time) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil && !at.Before(since) {
			out = append(out, l)
		}
	}
	return out
}

// TestPostgresFailover: PostgreSQL runs as a primary and a synchronous
// streaming standby; the metaserver has both in a multi-host URL with
// target_session_attrs=read-write. The primary is killed with -9 under a
// qemu-io write load and a stream of volume creations, and the standby is
// promoted (as Patroni would): the metaserver goes on with the new primary,
// every volume whose creation was acknowledged exists, nothing is declared
// offline or degraded, and every acknowledged write reads back.
func TestPostgresFailover(t *testing.T) {
	t.Parallel()
	c := startClusterOpts(t, localcluster.Options{ChunkSize: testChunk, PGStandby: true,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"}})
	ctx := t.Context()
	createVolume(t, c, "pg", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "pg", time.Minute); err != nil {
		t.Fatal(err)
	}
	lastEvent := lastEventID(t, c)
	lctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	load := startWriteLoad(lctx, c.ISCSIURL("pg"), slots(600, 16<<10, 24<<20, 13), 20)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 30 })

	// Volume creations, one after another, through the API: those
	// acknowledged must survive the failover.
	type attempt struct {
		at time.Time
		ok bool
	}
	var (
		created  []string
		attempts []attempt
	)
	cl := c.Client()
	create := func(i int) {
		name := "v" + strconv.Itoa(i)
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		_, err := cl.CreateVolume(cctx, api.CreateVolumeRequest{Name: name, SizeBytes: 64 << 20, Layout: "mirror:2"})
		if err == nil || api.IsAlreadyExists(err) {
			// Already there: created by an attempt whose answer was lost.
			created = append(created, name)
		}
		attempts = append(attempts, attempt{time.Now(), err == nil || api.IsAlreadyExists(err)})
	}
	for i := range 10 {
		create(i)
	}
	if len(created) != 10 {
		t.Fatalf("before the failover only %d of 10 creations succeeded", len(created))
	}
	killed := time.Now()
	if err := c.PG.Kill(); err != nil {
		t.Fatal(err)
	}
	next := 10
	for time.Since(killed) < 2*time.Second {
		create(next)
		next++
		time.Sleep(100 * time.Millisecond)
	}
	promoted := time.Now()
	if err := c.PGStandby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("primary killed; standby promoted %v later (in %v)", promoted.Sub(killed).Round(10*time.Millisecond), time.Since(promoted).Round(10*time.Millisecond))
	var back time.Time
	for deadline := time.Now().Add(time.Minute); back.IsZero(); {
		if time.Now().After(deadline) {
			t.Fatalf("the API did not accept a volume creation within a minute of the promotion")
		}
		create(next)
		next++
		if attempts[len(attempts)-1].ok {
			back = attempts[len(attempts)-1].at
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
	var lastOK time.Time
	for _, a := range attempts {
		if a.ok && a.at.Before(killed) {
			lastOK = a.at
		}
	}
	t.Logf("API writes: the last before the kill at -%v, the first after it %v after the kill (%v after the promotion); %d of %d creations acknowledged",
		killed.Sub(lastOK).Round(10*time.Millisecond), back.Sub(killed).Round(10*time.Millisecond), back.Sub(promoted).Round(10*time.Millisecond), len(created), next)
	for _, name := range created {
		if _, err := cl.GetVolume(ctx, name); err != nil {
			t.Errorf("volume %s, whose creation was acknowledged: %v", name, err)
		}
	}

	// The daemons went on: more writes, nothing offline or degraded.
	atPromote := len(load.Acked())
	waitFor(t, 30*time.Second, "more writes", func() bool { return len(load.Acked()) > atPromote+20 })
	time.Sleep(3 * time.Second)
	cancel()
	<-load.done
	noFaultEventsSince(t, c, lastEvent, "after the database failover")
	verifyAcked(t, c.ISCSIURL("pg"), load.Acked())
	checkReplicas(t, c, "pg")
}

// TestDrain: chunkraid server drain moves every member of a chunkserver
// to others under a qemu-io write load, each rebuilt beside it before it
// leaves: no set ever has fewer members in sync than its layout's width,
// every acknowledged write reads back, the replicas agree, and the drained
// chunkserver, once stopped, can be removed. A mirror:3 set has four
// members while one moves.
func TestDrain(t *testing.T) {
	t.Parallel()
	testDrain(t, "mirror:3", 3, "256MiB")
}

// TestDrainEC: the same for an ec:2+1 volume: each moving member gets a
// successor that receives its writes and is rebuilt as a copy of its units
// while the set keeps all three members of the layout in sync; afterwards
// every stripe's parity agrees with its data.
func TestDrainEC(t *testing.T) {
	t.Parallel()
	testDrain(t, "ec:2+1", 3, "256MiB")
}

func testDrain(t *testing.T, layout string, width int, size string) {
	c := startClusterOpts(t, localcluster.Options{ChunkSize: testChunk, Chunkservers: width + 2,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"}})
	ctx := t.Context()
	cli(t, c, "volume", "create", "dr", "--size", size, "--layout", layout, "--host", c.HostName)
	v, err := c.Client().GetVolume(ctx, "dr")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTarget(ctx, "dr", time.Minute); err != nil {
		t.Fatal(err)
	}
	held := map[string]int{}
	for _, st := range v.Sets {
		for _, m := range st.Members {
			held[m.Chunkserver]++
		}
	}
	victim := ""
	for n, k := range held {
		if victim == "" || k > held[victim] || k == held[victim] && n < victim {
			victim = n
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	load := startWriteLoad(lctx, c.ISCSIURL("dr"), slots(600, 16<<10, 248<<20, 17), 20)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 30 })

	// Redundancy, watched while the drain runs.
	watch, stopWatch := context.WithCancel(ctx)
	lowest := make(chan int, 1)
	go func() {
		low := 99
		for watch.Err() == nil {
			if got, err := c.Client().GetVolume(watch, "dr"); err == nil {
				for _, st := range got.Sets {
					n := 0
					for _, m := range st.Members {
						if m.State == api.MemberInSync {
							n++
						}
					}
					low = min(low, n)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		lowest <- low
	}()
	start := time.Now()
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Minute)
	outb, err := exec.CommandContext(dctx, binary, "--metaserver", c.MetaList(), "--ca-file", c.CAFile(), "--token-file", c.TokenFile(),
		"server", "drain", victim, "--wait").CombinedOutput()
	dcancel()
	out := string(outb)
	if err != nil {
		t.Fatalf("chunkraid server drain %s --wait: %v\n%s", victim, err, out)
	}
	took := time.Since(start)
	stopWatch()
	t.Logf("chunkraid server drain %s --wait (%v):\n%s", victim, took.Round(100*time.Millisecond), out)
	if low := <-lowest; low < width {
		t.Errorf("a set had %d members in sync during the drain, want at least %d", low, width)
	}
	got, err := c.Client().GetVolume(ctx, "dr")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range got.Sets {
		if len(st.Members) != width {
			t.Errorf("set %d has %d members after the drain, want %d", st.Index, len(st.Members), width)
		}
		for _, m := range st.Members {
			if m.Chunkserver == victim || m.State != api.MemberInSync {
				t.Errorf("set %d after the drain: member on %s %s", st.Index, m.Chunkserver, m.State)
			}
		}
	}
	evs, err := c.Client().ListEvents(ctx, "", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
		if e.Kind == api.EventMemberMoved {
			t.Logf("event: %s", e.Message)
		}
	}
	if kinds[api.EventMemberMoving] != held[victim] || kinds[api.EventMemberMoved] != held[victim] || kinds[api.EventChunkserverDrained] != 1 {
		t.Errorf("events: %d member_moving, %d member_moved, %d chunkserver_drained; want %d, %d, 1",
			kinds[api.EventMemberMoving], kinds[api.EventMemberMoved], kinds[api.EventChunkserverDrained], held[victim], held[victim])
	}
	atDrained := len(load.Acked())
	waitFor(t, 30*time.Second, "more writes", func() bool { return len(load.Acked()) > atDrained+10 })
	cancel()
	<-load.done
	verifyAcked(t, c.ISCSIURL("dr"), load.Acked())
	if strings.HasPrefix(layout, "ec:") {
		verifyVolume(t, c, "dr")
	} else {
		checkReplicas(t, c, "dr")
	}

	if out := cli(t, c, "server", "list"); !strings.Contains(out, "online, drained") {
		t.Errorf("server list after the drain:\n%s", out)
	}
	// Stopped, the drained chunkserver can be removed.
	if err := c.CS[csIndex(t, c, victim)].Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, victim+" to be removed", func() bool {
		return c.Client().RemoveChunkserver(ctx, victim) == nil
	})
}

// lastEventID is the ID of the cluster's newest event.
func lastEventID(t *testing.T, c *localcluster.Cluster) int64 {
	t.Helper()
	evs, err := c.Client().ListEvents(t.Context(), "", 0, api.MaxEvents)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].ID
}

// noFaultEventsSince fails the test for every event after id that says a
// daemon was lost: a chunkserver offline, a member degraded, a host
// failed over.
func noFaultEventsSince(t *testing.T, c *localcluster.Cluster, id int64, when string) {
	t.Helper()
	evs, err := c.Client().ListEvents(t.Context(), "", id, api.MaxEvents)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		switch e.Kind {
		case api.EventChunkserverOffline, api.EventMemberDegraded, api.EventHostFailover:
			t.Errorf("%s: %s %s", when, e.Kind, e.Message)
		}
	}
}
