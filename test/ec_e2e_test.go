package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

func ecCluster(t *testing.T, chunkservers int) *localcluster.Cluster {
	t.Helper()
	return startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		Chunkservers:         chunkservers,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"},
	})
}

func createEC(t *testing.T, c *localcluster.Cluster, name, size, layout string) api.Volume {
	t.Helper()
	cli(t, c, "volume", "create", name, "--size", size, "--layout", layout, "--host", c.HostName)
	v, err := c.Client().GetVolume(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTarget(t.Context(), name, time.Minute); err != nil {
		t.Fatal(err)
	}
	return *v
}

func writeAll(t *testing.T, url string, ws []slotWrite) {
	t.Helper()
	l := startWriteLoad(t.Context(), url, ws, 0)
	<-l.done
	if l.err != nil || len(l.Acked()) != len(ws) {
		t.Fatalf("writes: %v, %d of %d acknowledged\n%s", l.err, len(l.Acked()), len(ws), l.Output())
	}
}

// TestECDegradedAndResync: an ec:2+1 volume keeps serving with a
// chunkserver gone (degraded reads reconstruct, degraded writes land), the
// returning member gets only its dirty stripes, and afterwards a read with
// ANOTHER member gone reconstructs every acknowledged write — which holds
// only if the resynced units and the parity are right.
func TestECDegradedAndResync(t *testing.T) {
	t.Parallel()
	c := ecCluster(t, 3)
	v := createEC(t, c, "ec", "128MiB", "ec:2+1")
	if len(v.Sets) != 1 || len(v.Sets[0].Members) != 3 || v.RawBytes != 3*testChunk {
		t.Fatalf("ec:2+1 volume of 128 MiB: %d sets, raw %d; want 1 set of 3 members, raw %d", len(v.Sets), v.RawBytes, 3*testChunk)
	}
	url := c.ISCSIURL("ec")
	before := slots(40, 48<<10, 128<<20, 0) // unaligned to the 64 KiB stripe unit
	writeAll(t, url, before)

	first := c.CS[csIndex(t, c, v.Sets[0].Members[0].Chunkserver)]
	first.Kill()
	verifyAcked(t, url, before) // degraded reads
	var during []slotWrite
	for i := 0; i < 24; i++ {
		during = append(during, slotWrite{off: int64(i)*(5<<20) + 12288, len: 20 << 10, pat: byte(150 + i)})
	}
	writeAll(t, url, during)
	waitMemberState(t, c, "ec", first.Name, api.MemberDegraded, 15*time.Second)
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "ec", time.Minute)
	copied, n := resyncedBytes(t, c.Hostd.Log)
	t.Logf("ec:2+1: %d writes while a member was away; resync copied %d bytes of the set in %d resyncs (set %d bytes)", len(during), copied, n, 2*testChunk)
	if copied == 0 || copied > int64(len(during))*(1<<20) {
		t.Fatalf("resync copied %d bytes for %d dirty 1 MiB regions", copied, len(during))
	}
	all := append(before, during...)
	verifyAcked(t, url, all)
	verifyVolume(t, c, "ec")

	second := c.CS[csIndex(t, c, v.Sets[0].Members[1].Chunkserver)]
	second.Kill()
	verifyAcked(t, url, all) // reconstructed from the resynced member and parity
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
}

// TestEC42SurvivesTwoFailures: ec:4+2 over six chunkservers serves reads
// and writes with two of them gone.
func TestEC42SurvivesTwoFailures(t *testing.T) {
	t.Parallel()
	c := ecCluster(t, 6)
	v := createEC(t, c, "ec42", "256MiB", "ec:4+2")
	if len(v.Sets) != 1 || len(v.Sets[0].Members) != 6 {
		t.Fatalf("ec:4+2 volume: %+v", v.Sets)
	}
	url := c.ISCSIURL("ec42")
	ws := slots(60, 64<<10, 256<<20, 0)
	writeAll(t, url, ws)
	for _, m := range v.Sets[0].Members[:2] {
		c.CS[csIndex(t, c, m.Chunkserver)].Kill()
	}
	verifyAcked(t, url, ws)
	more := slots(30, 8<<10, 256<<20, 90)
	for i := range more {
		more[i].off += 128 << 10
	}
	writeAll(t, url, more)
	verifyAcked(t, url, append(ws, more...))
	for _, m := range v.Sets[0].Members[:2] {
		if err := c.CS[csIndex(t, c, m.Chunkserver)].Start(); err != nil {
			t.Fatal(err)
		}
	}
	waitInSync(t, c, "ec42", time.Minute)
	verifyVolume(t, c, "ec42")
	verifyAcked(t, url, append(ws, more...))

	// The checker is not a rubber stamp: flip bytes of one member's chunk
	// file behind the cluster's back and it must report the stripe.
	m := v.Sets[0].Members[3]
	f, err := os.OpenFile(filepath.Join(c.Dir(), "chunkservers", m.Chunkserver, m.ChunkID+".chunk"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("bit rot"), 5*64<<10+100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out := cliFail(t, c, "volume", "verify", "ec42"); !strings.Contains(out, "1 mismatches") || !strings.Contains(out, "disagree") {
		t.Fatalf("volume verify after corrupting a unit on disk:\n%s", out)
	}
}

// verifyVolume runs `chunkraid volume verify`: every stripe's parity (or
// every mirror copy) is read over NBD and checked.
func verifyVolume(t *testing.T, c *localcluster.Cluster, name string) {
	t.Helper()
	out := cli(t, c, "volume", "verify", name)
	if !strings.Contains(out, "every member agrees") {
		t.Fatalf("volume verify %s:\n%s", name, out)
	}
	t.Logf("volume verify %s: %s", name, strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
}

// TestECPlacementNeedsDomains: a layout wider than the online fault
// domains is refused with a message that says so.
func TestECPlacementNeedsDomains(t *testing.T) {
	t.Parallel()
	c := ecCluster(t, 3)
	out := cliFail(t, c, "volume", "create", "wide", "--size", "1GiB", "--layout", "ec:4+2")
	if !strings.Contains(out, "ec:4+2 needs 6 chunkservers in distinct fault domains; 3 are online") {
		t.Fatalf("ec:4+2 on 3 chunkservers: %s", out)
	}
}

// TestECHostCrash: the host dies mid-write on an ec:2+1 volume; the new host
// re-encodes the parity of every region the LOG bitmaps name before it is
// trusted, so a degraded read afterwards returns every acknowledged write.
func TestECHostCrash(t *testing.T) {
	t.Parallel()
	c := ecCluster(t, 3)
	v := createEC(t, c, "ech", "128MiB", "ec:2+1")
	if _, err := c.AddHostd(t.Context(), "host2"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	load := startWriteLoad(ctx, c.ISCSIURL("ech"), slots(300, 12<<10, 24<<20, 0), 5)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 50 })
	c.Hostd.Kill()
	acked := load.Acked()
	cancel()
	<-load.done
	cli(t, c, "volume", "attach", "ech", "--host", "host2")
	if err := c.WaitTargetOn(t.Context(), "host2", "ech", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitInSync(t, c, "ech", time.Minute)
	copied, n := resyncedBytes(t, c.Hosts["host2"].Log)
	t.Logf("ec host crash: %d acknowledged writes; the new host re-encoded %d bytes in %d passes", len(acked), copied, n)
	url2 := c.ISCSIURLOn("host2", "ech")
	verifyVolume(t, c, "ech") // no stripe with mismatched parity remains
	verifyAcked(t, url2, acked)
	c.CS[csIndex(t, c, v.Sets[0].Members[2].Chunkserver)].Kill()
	verifyAcked(t, url2, acked) // degraded: needs consistent parity
}
