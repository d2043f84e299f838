package test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// conformanceFamilies are the libiscsi test families the target must pass
// against a mirrored volume served by hostd.
var conformanceFamilies = []string{
	"SCSI.Inquiry", "SCSI.ReadCapacity10", "SCSI.ReadCapacity16",
	"SCSI.Read10", "SCSI.Read16", "SCSI.Write10", "SCSI.Write16",
	"SCSI.TestUnitReady",
}

// This libiscsi has no ReportLuns family; REPORT LUNS is exercised by
// `iscsi-ls -s` in TestMirrorVolumeEndToEnd.

var summarySuites = regexp.MustCompile(`(?m)^\s+suites\s+(\d+)\s+(\d+)`)

var summaryTests = regexp.MustCompile(`(?m)^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)`)

// TestISCSIConformance runs libiscsi's iscsi-test-cu (destructive tests
// allowed) against a mirror:2 volume through the whole stack: hostd's
// target, the mirror sets and the chunkservers over NBD.
func TestISCSIConformance(t *testing.T) {
	t.Parallel()
	needTools(t, "iscsi-test-cu")
	c := startCluster(t, testChunk)
	cli(t, c, "volume", "create", "conf", "--size", "128MiB", "--layout", "mirror:2", "--host", c.HostName)
	if err := c.WaitTarget(t.Context(), "conf", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "iscsi-test-cu", "-d", "-n", "-t", strings.Join(conformanceFamilies, ","), c.ISCSIURL("conf"))
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	m := summaryTests.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("iscsi-test-cu printed no Run Summary (err %v):\n%s", err, out)
	}
	total, _ := strconv.Atoi(m[1])
	ran, _ := strconv.Atoi(m[2])
	passed, _ := strconv.Atoi(m[3])
	failed, _ := strconv.Atoi(m[4])
	t.Logf("iscsi-test-cu %s: %d tests, %d ran, %d passed, %d failed", strings.Join(conformanceFamilies, ","), total, ran, passed, failed)
	if failed != 0 || passed != ran || ran == 0 {
		var fails []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "FAILED") || strings.Contains(l, "Test:") && strings.Contains(l, "failed") {
				fails = append(fails, strings.TrimSpace(l))
			}
		}
		t.Fatalf("iscsi-test-cu: %d of %d failed:\n%s\n--- full output ---\n%s", failed, ran, strings.Join(fails, "\n"), out)
	}
	if sm := summarySuites.FindStringSubmatch(out); sm == nil || sm[2] != strconv.Itoa(len(conformanceFamilies)) {
		t.Fatalf("iscsi-test-cu ran %v suites, want %d (one per family)", sm, len(conformanceFamilies))
	}
	if c.Hostd.Exited() {
		t.Fatal("hostd exited during the conformance run")
	}
	fmt.Println(lastLines(out, 6))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
