package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestDrainCarriesSnapshots drains the chunkserver of a mirror:2 member
// of a volume with two snapshots: the member's successor on a new chunk
// gets both snapshot layers before it joins the set, so afterwards every
// member's copy of each snapshot holds what the volume held when it was
// taken, byte for byte (read over NBD from each member's snapshot export),
// and the live copies are identical, including a region trimmed after the
// snapshots.
func TestDrainCarriesSnapshots(t *testing.T) {
	t.Parallel()
	testDrainSnapshots(t, "mirror:2", 3)
}

// TestDrainCarriesSnapshotsEC: the same for an ec:2+1 volume, where the
// successor's layers are rebuilt from the other members' copies of each
// snapshot: every snapshot's parity agrees with its data afterwards, and
// each copies out over iSCSI as it was taken.
func TestDrainCarriesSnapshotsEC(t *testing.T) {
	t.Parallel()
	testDrainSnapshots(t, "ec:2+1", 4)
}

func testDrainSnapshots(t *testing.T, layout string, chunkservers int) {
	needTools(t, "qemu-img", "qemu-io")
	c := startClusterOpts(t, localcluster.Options{ChunkSize: testChunk, Chunkservers: chunkservers,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"}})
	ctx := t.Context()
	cli(t, c, "volume", "create", "ds", "--size", "64MiB", "--layout", layout, "--host", c.HostName)
	if err := c.WaitTarget(ctx, "ds", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("ds")
	img := make([]byte, 64<<20)
	write := func(pat byte, off, n int) []string {
		copy(img[off:off+n], bytes.Repeat([]byte{pat}, n))
		return []string{"-c", fmt.Sprintf("write -P 0x%x %d %d", pat, off, n)}
	}
	apply := func(cmds ...[]string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, c...)
		}
		run(t, "qemu-io", append(args, url)...)
	}
	apply(write(0x11, 0, 2<<20), write(0x12, 20<<20, 1<<20), write(0x13, 40<<20+4096, 8192))
	cli(t, c, "snapshot", "create", "ds", "s1")
	s1 := bytes.Clone(img)
	apply(write(0x21, 512<<10, 1<<20), write(0x22, 30<<20, 512<<10), write(0x23, 40<<20, 4096))
	cli(t, c, "snapshot", "create", "ds", "s2")
	s2 := bytes.Clone(img)
	apply(write(0x31, 1<<20, 256<<10))
	// A region the snapshots hold and the live volume trimmed.
	run(t, "qemu-io", "-f", "raw", "-c", "discard 20M 1M", url)
	copy(img[20<<20:21<<20], make([]byte, 1<<20))

	v, err := c.Client().GetVolume(ctx, "ds")
	if err != nil {
		t.Fatal(err)
	}
	victim := v.Sets[0].Members[0].Chunkserver
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Minute)
	out, err := exec.CommandContext(dctx, binary, "--metaserver", c.MetaList(), "--ca-file", c.CAFile(), "--token-file", c.TokenFile(),
		"server", "drain", victim, "--wait").CombinedOutput()
	dcancel()
	if err != nil {
		t.Fatalf("chunkraid server drain %s --wait: %v\n%s", victim, err, out)
	}
	got := waitInSyncWithout(t, c, "ds", victim, time.Minute)
	t.Logf("drained %s; the set is now on %s", victim, memberServers(got.Sets[0].Members))
	// The first snapshot is compared where anything is allocated; the
	// second only where the members changed blocks after the first (their
	// layers' maps): the 1.5 MiB rewritten between them, in 64 KiB blocks.
	compared := seededBytes(t, c.Hostd.Log)
	t.Logf("bytes compared to copy each snapshot onto the successor: %v", compared)
	if compared["s1"] == 0 || compared["s2"] == 0 || compared["s2"] > 2<<20 || compared["s2"] >= compared["s1"] {
		t.Errorf("bytes compared per snapshot %v: want s2's only the blocks changed since s1 (under 2 MiB)", compared)
	}

	// volume verify checks the live volume and then every snapshot.
	out = []byte(cli(t, c, "volume", "verify", "ds"))
	for _, want := range []string{"volume ds: every member agrees", "volume ds, snapshot s1: every member agrees", "volume ds, snapshot s2: every member agrees"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("volume verify after the drain does not say %q:\n%s", want, out)
		}
	}
	t.Logf("volume verify ds:\n%s", out)
	for name, want := range map[string][]byte{"s1": s1, "s2": s2} {
		if strings.HasPrefix(layout, "mirror") {
			sv, err := c.Client().ReadSnapshotExports(ctx, "ds", name)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			for _, m := range sv.Sets[0].Members {
				if !bytes.Equal(memberImage(t, dir, m), want) {
					t.Fatalf("the copy of snapshot %s on %s differs from the volume when it was taken", name, m.Chunkserver)
				}
			}
			continue
		}
		cli(t, c, "snapshot", "attach", "ds", name, "--host", c.HostName)
		if err := c.WaitTarget(ctx, "ds:snap:"+name, time.Minute); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), name+".img")
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", c.ISCSIURL("ds:snap:"+name), dst)
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("snapshot %s copied out after the drain differs from the volume when it was taken", name)
		}
	}
	dst := filepath.Join(t.TempDir(), "live.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", url, dst)
	if b, err := os.ReadFile(dst); err != nil || !bytes.Equal(b, img) {
		t.Fatalf("the volume after the drain differs from what was written (%v)", err)
	}
	if strings.HasPrefix(layout, "ec:") {
		verifyVolume(t, c, "ds")
	} else {
		checkReplicas(t, c, "ds")
	}
}

func memberServers(ms []api.Member) string {
	var names []string
	for _, m := range ms {
		names = append(names, m.Chunkserver)
	}
	return strings.Join(names, ", ")
}

// seededBytes reads from a hostd log how many bytes were compared to copy
// each snapshot onto a rebuilt member.
func seededBytes(t *testing.T, logPath string) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "snapshot layer copied onto the rebuilt member") {
			continue
		}
		var name string
		var n int64
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "snapshot="); ok {
				name = v
			}
			if v, ok := strings.CutPrefix(f, "compared_bytes="); ok {
				n, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		out[name] += n
	}
	return out
}
