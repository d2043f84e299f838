package test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestFullDiskRefusesWrites: chunkservers whose data directories are small
// tmpfs mounts (made by the test) run out of space under a mirror:2 volume
// filled through iSCSI. The write that finds no space fails in qemu-io with
// ENOSPC (SPACE ALLOCATION FAILED WRITE PROTECT), and nothing is corrupted:
// every acknowledged write reads back, the refused range is unchanged, no
// member is failed and the replicas agree. The full chunkservers are listed
// full; overwrites of allocated space go on working, and once space is
// freed (a discard) the refused write succeeds.
func TestFullDiskRefusesWrites(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var disks []string
	for i := range 3 {
		mp := filepath.Join(dir, fmt.Sprintf("disk%d", i+1))
		if err := os.Mkdir(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", mp)
		t.Cleanup(func() { _ = exec.Command("umount", "-l", mp).Run() })
		disks = append(disks, mp)
	}
	c := startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"},
		ChunkserverArgs:      func(i int) []string { return []string{"--data-dir", disks[i]} },
		// 2 × 64 MiB of sparse chunks on 3 × 40 MiB of disk.
		ExtraMetaArgs: []string{"--overcommit", "4"},
	})
	ctx := t.Context()
	v := createVolume(t, c, "tight", "64MiB", c.HostName)
	if err := c.WaitTarget(ctx, "tight", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("tight")

	// Fill it in 256 KiB writes until the disks refuse.
	const step = 256 << 10
	var cmds []string
	for off := 0; off < 64<<20; off += step {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P 0x5a %d %d", off, step))
	}
	// Acknowledgements on standard output, errors on standard error: read
	// apart, a line of one is never cut by the other.
	var stdout, stderr bytes.Buffer
	fill := exec.CommandContext(ctx, "qemu-io", append(append([]string{"-f", "raw"}, cmds...), url)...)
	fill.Stdout, fill.Stderr = &stdout, &stderr
	_ = fill.Run() // exits non-zero: writes failed
	out := stdout.String() + stderr.String()
	if !strings.Contains(out, "No space left on device") {
		t.Fatalf("qemu-io never saw ENOSPC filling 64 MiB on 40 MiB disks:\n%s", tail(out, 20))
	}
	acked := map[int]bool{}
	for _, m := range regexp.MustCompile(`wrote \d+/\d+ bytes at offset (\d+)`).FindAllStringSubmatch(stdout.String(), -1) {
		off, _ := strconv.Atoi(m[1])
		acked[off] = true
	}
	refused := -1
	for off := 0; off < 64<<20; off += step {
		if !acked[off] {
			refused = off
			break
		}
	}
	t.Logf("qemu-io: %d writes of 256 KiB acknowledged (%d MiB), the first refused at %d MiB: %q",
		len(acked), len(acked)*step>>20, refused>>20, lineWith(out, "No space left"))
	if len(acked) < 64 {
		t.Fatalf("only %d writes acknowledged before the disks were full", len(acked))
	}

	// Nothing corrupted: every acknowledged write reads back, the refused
	// range reads as it was (zeroes), and the replicas agree.
	var reads []string
	for off := range acked {
		reads = append(reads, "-c", fmt.Sprintf("read -P 0x5a %d %d", off, step))
	}
	reads = append(reads, "-c", fmt.Sprintf("read -P 0 %d %d", refused, step))
	if out := run(t, "qemu-io", append(append([]string{"-f", "raw"}, reads...), url)...); strings.Contains(out, "failed") {
		t.Fatalf("read back after ENOSPC:\n%s", tail(out, 20))
	}
	got, err := c.Client().GetVolume(ctx, "tight")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range got.Sets[0].Members {
		if m.State != api.MemberInSync {
			t.Errorf("member on %s is %s after writes refused for lack of space", m.Chunkserver, m.State)
		}
	}
	verifyVolume(t, c, "tight")

	// The chunkservers of the two members are listed full.
	for _, m := range v.Sets[0].Members {
		waitFor(t, 20*time.Second, m.Chunkserver+" listed full", func() bool {
			return strings.Contains(serverLine(t, c, m.Chunkserver), "full")
		})
	}
	t.Logf("server list:\n%s", cli(t, c, "server", "list"))

	// Overwrites need no space; once a discard frees some, the refused
	// write succeeds.
	run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x77 0 %d", step), "-c", "flush", url)
	run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("discard %d %d", step, 8<<20), url)
	if out := run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x6b %d %d", refused, step), "-c", "flush",
		"-c", fmt.Sprintf("read -P 0x6b %d %d", refused, step), "-c", fmt.Sprintf("read -P 0x77 0 %d", step), url); strings.Contains(out, "failed") {
		t.Fatalf("after a discard freed space:\n%s", out)
	}
	verifyVolume(t, c, "tight")
}

// serverLine is the chunkserver's line of `chunkraid server list`.
func serverLine(t *testing.T, c *localcluster.Cluster, name string) string {
	for _, l := range strings.Split(cli(t, c, "server", "list"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == name {
			return l
		}
	}
	return ""
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
