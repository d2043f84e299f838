package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

const testChunk = 64 << 20

// pattern is one write of a one-byte pattern, verified through iSCSI and in
// every replica.
type pattern struct {
	off, len int64
	b        byte
}

// TestMirrorVolumeEndToEnd creates a mirror:2 volume of three sets, writes
// patterns through iSCSI with qemu-io (one across a set boundary), reads
// them back through iSCSI, and then reads every replica directly over NBD
// with qemu-img and checks that both members of each set are identical and
// hold the patterns.
func TestMirrorVolumeEndToEnd(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-io", "qemu-img", "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16")
	c := startCluster(t, testChunk)
	const size = 3 * testChunk

	out := cli(t, c, "volume", "create", "e2e", "--size", "192MiB", "--layout", "mirror:2", "--host", c.HostName, "-o", "json")
	var vol api.Volume
	if err := json.Unmarshal([]byte(out), &vol); err != nil {
		t.Fatalf("volume create -o json: %v\n%s", err, out)
	}
	if len(vol.Sets) != 3 {
		t.Fatalf("volume has %d sets, want 3", len(vol.Sets))
	}
	for _, s := range vol.Sets {
		if len(s.Members) != 2 || s.Members[0].Chunkserver == s.Members[1].Chunkserver {
			t.Fatalf("set %d members %+v: want 2 on distinct chunkservers", s.Index, s.Members)
		}
	}
	if err := c.WaitTarget(t.Context(), "e2e", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("e2e")

	pats := []pattern{
		{0, 64 << 10, 0x11},
		{1<<20 + 512, 4096, 0x22},
		{testChunk - 32<<10, 64 << 10, 0x33}, // crosses set 0 → set 1
		{2*testChunk - 512, 1024, 0x44},      // crosses set 1 → set 2
		{100 << 20, 1 << 20, 0x55},           // inside set 1
		{size - 4096, 4096, 0x66},            // last block of the volume
	}
	var wargs, rargs []string
	for _, p := range pats {
		wargs = append(wargs, "-c", fmt.Sprintf("write -P 0x%x %d %d", p.b, p.off, p.len))
		rargs = append(rargs, "-c", fmt.Sprintf("read -P 0x%x %d %d", p.b, p.off, p.len))
	}
	out = run(t, "qemu-io", append(append([]string{"-f", "raw"}, wargs...), url)...)
	if strings.Count(out, "wrote ") != len(pats) {
		t.Fatalf("qemu-io write: want %d writes:\n%s", len(pats), out)
	}
	// A second qemu-io process: a new iSCSI session reads what the first wrote.
	out = run(t, "qemu-io", append(append([]string{"-f", "raw"}, rargs...), url)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Count(out, "read ") != len(pats) {
		t.Fatalf("qemu-io read back:\n%s", out)
	}
	t.Logf("wrote and read back %d patterns through %s", len(pats), url)

	// Discovery and INQUIRY with libiscsi's tools.
	if out := run(t, "iscsi-ls", "iscsi://"+c.ISCSIAddr); !strings.Contains(out, vol.IQN) {
		t.Fatalf("iscsi-ls does not list %s:\n%s", vol.IQN, out)
	}
	// -s logs in to every target and lists its LUNs with REPORT LUNS.
	if out := run(t, "iscsi-ls", "-s", "iscsi://"+c.ISCSIAddr); !strings.Contains(out, "Lun:0    Type:DIRECT_ACCESS") {
		t.Fatalf("iscsi-ls -s does not show LUN 0 as a disk:\n%s", out)
	}
	if out := run(t, "iscsi-readcapacity16", url); !strings.Contains(out, fmt.Sprintf("Total size:%d", size)) {
		t.Fatalf("iscsi-readcapacity16: want %d bytes:\n%s", size, out)
	}
	if out := run(t, "iscsi-inq", url); !strings.Contains(strings.ToLower(out), "chunkraid") {
		t.Fatalf("iscsi-inq does not name the vendor/product:\n%s", out)
	}

	// Every replica, read over NBD by qemu-img, must be identical to its
	// peer and hold the patterns at the right offsets.
	dir := t.TempDir()
	ro, err := c.Client().ReadExports(t.Context(), vol.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ro.Sets {
		var sums [][32]byte
		for j, m := range s.Members {
			b := memberImage(t, dir, m)
			if int64(len(b)) != testChunk {
				t.Fatalf("set %d member %d: %d bytes over NBD, want %d", s.Index, j, len(b), testChunk)
			}
			setStart := int64(s.Index) * testChunk
			for _, p := range pats {
				lo, hi := max(p.off, setStart), min(p.off+p.len, setStart+testChunk)
				if lo >= hi {
					continue
				}
				if !bytes.Equal(b[lo-setStart:hi-setStart], bytes.Repeat([]byte{p.b}, int(hi-lo))) {
					t.Fatalf("set %d member %d (%s on %s): pattern 0x%x missing at volume offset %d",
						s.Index, j, m.ChunkID, m.Chunkserver, p.b, lo)
				}
			}
			sums = append(sums, sha256.Sum256(b))
		}
		if sums[0] != sums[1] {
			t.Fatalf("set %d: replicas differ (%x vs %x)", s.Index, sums[0][:8], sums[1][:8])
		}
		t.Logf("set %d: both replicas identical, sha256 %x", s.Index, sums[0][:8])
	}
}
