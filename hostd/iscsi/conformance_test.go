package iscsi

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// suiteResult is one test of a verbose iscsi-test-cu run.
type suiteResult struct {
	name    string // Suite.Test
	passed  bool
	skipped []string // the [SKIPPED] lines it printed
}

var (
	cunitSuiteLine = regexp.MustCompile(`^Suite: (\S+)`)
	cunitTestLine  = regexp.MustCompile(`^\s+Test: (\S+) \.\.\.(.*)$`)
	skippedText    = regexp.MustCompile(`\[SKIPPED\][^\[]*`)
)

// parseVerboseRun splits the output of `iscsi-test-cu -v` into tests: each
// starts at its "Test: NAME ..." line and ends with "passed" or "FAILED".
func parseVerboseRun(out string) []suiteResult {
	var res []suiteResult
	suite := ""
	var cur *suiteResult
	for _, line := range strings.Split(out, "\n") {
		if m := cunitSuiteLine.FindStringSubmatch(line); m != nil {
			suite = m[1]
			continue
		}
		if m := cunitTestLine.FindStringSubmatch(line); m != nil {
			res = append(res, suiteResult{name: suite + "." + m[1]})
			cur = &res[len(res)-1]
			line = m[2]
		}
		if cur == nil {
			continue
		}
		// The verdict starts its line; what follows it on the line (a
		// suite's clean-up) is not the test's.
		trimmed := strings.TrimSpace(line)
		verdict := strings.HasPrefix(trimmed, "passed") || strings.HasPrefix(trimmed, "FAILED")
		if verdict {
			cur.passed = strings.HasPrefix(trimmed, "passed")
		} else {
			for _, s := range skippedText.FindAllString(line, -1) {
				cur.skipped = append(cur.skipped, strings.TrimSpace(s))
			}
		}
		if verdict {
			cur = nil
		}
	}
	return res
}

func TestParseVerboseRun(t *testing.T) {
	out := "Suite: WriteSame10\n  Test: Simple ...passed\n  Test: UnmapUnaligned ...    [SKIPPED] LBPPB < 2. Skipping test\npassed\n" +
		"  Test: Check ...    [FAILED] something\nFAILED\n    1. test.c:12 - CU_FAIL\n" +
		"  Test: LUNReset ...passed    [FAILED] PRIN command: failed with sense.\n    [SKIPPED] not this test's\n"
	got := parseVerboseRun(out)
	want := []suiteResult{
		{name: "WriteSame10.Simple", passed: true},
		{name: "WriteSame10.UnmapUnaligned", passed: true, skipped: []string{"[SKIPPED] LBPPB < 2. Skipping test"}},
		{name: "WriteSame10.Check"},
		{name: "WriteSame10.LUNReset", passed: true},
	}
	if len(got) != len(want) {
		t.Fatalf("parsed %+v", got)
	}
	for i := range want {
		if got[i].name != want[i].name || got[i].passed != want[i].passed || !slices.Equal(got[i].skipped, want[i].skipped) {
			t.Errorf("test %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// summarize reports real passes, passes that skipped their checks, and
// failures, with every skip reason and failed test.
func summarize(res []suiteResult) (string, int) {
	var real, skipped, failed int
	reasons := map[string]int{}
	var failures []string
	for _, r := range res {
		switch {
		case !r.passed:
			failed++
			failures = append(failures, r.name)
		case len(r.skipped) > 0:
			skipped++
			reasons[r.skipped[0]]++
		default:
			real++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d tests: %d passed with their checks run, %d passed by skipping, %d failed "+
		"(suite names repeat across the ALL, SCSI, iSCSI and LINUX families)\n", len(res), real, skipped, failed)
	keys := make([]string, 0, len(reasons))
	for k := range reasons {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return reasons[b] - reasons[a] })
	for _, k := range keys {
		fmt.Fprintf(&b, "  skipped %3d × %s\n", reasons[k], k)
	}
	for _, f := range failures {
		fmt.Fprintf(&b, "  failed: %s\n", f)
	}
	return b.String(), failed
}

// runWholeSuite runs every iscsi-test-cu test, destructive ones included.
// The URL is given twice, as two paths to the logical unit, so that the
// multipath tests run too.
func runWholeSuite(t *testing.T, url string) []suiteResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, needTool(t, "iscsi-test-cu"), "-d", "-v", url, url).CombinedOutput()
	s, ok := parseRunSummary(string(out))
	if !ok {
		t.Fatalf("iscsi-test-cu printed no Run Summary (%v):\n%s", err, out)
	}
	t.Logf("Run Summary: %d tests, %d ran, %d passed, %d failed", s.total, s.ran, s.passed, s.failed)
	res := parseVerboseRun(string(out))
	if len(res) != s.total {
		t.Errorf("parsed %d tests of %d", len(res), s.total)
	}
	return res
}

// TestConformanceWholeSuite runs libiscsi's whole conformance suite
// (iscsi-test-cu -d) without digests against the target over a thin
// in-memory back end and, in the same run, against tgtd with a file LUN on
// tmpfs, and reports for each how many tests passed with their checks run,
// passed by skipping, and failed; the target must fail no test. It is the
// side-by-side comparison with the reference target (make conformance,
// CHUNKRAID_ISCSI_REFERENCE=1). make test runs the whole suite once, with
// digests (TestConformanceWholeSuiteHeaderDigest), and the protocol
// families without digests (TestIscsiTestCU).
func TestConformanceWholeSuite(t *testing.T) {
	if os.Getenv("CHUNKRAID_ISCSI_REFERENCE") == "" {
		t.Skip("the comparison with tgtd runs the whole suite twice: make conformance runs it")
	}
	needTool(t, "tgtadm")
	const size = 256 << 20
	t.Run("ours", func(t *testing.T) {
		srv, err := New(Config{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.AddTarget(testIQN, newThinBackend(size), "conformance"); err != nil {
			t.Fatal(err)
		}
		sum, failed := summarize(runWholeSuite(t, lunURL(startServer(t, srv))))
		t.Log("hostd/iscsi over a thin in-memory back end:\n" + sum)
		if failed > 0 {
			t.Errorf("%d tests failed", failed)
		}
	})
	t.Run("tgtd", func(t *testing.T) {
		f, err := os.CreateTemp("/dev/shm", "chunkraid-iscsi-conformance-*.img")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		t.Cleanup(func() { os.Remove(f.Name()) })
		if err := os.Truncate(f.Name(), size); err != nil {
			t.Fatal(err)
		}
		ref := startTgtd(t, f.Name(), "iqn.2026-11.io.chunkraid:tgtd-conformance")
		sum, _ := summarize(runWholeSuite(t, ref.url))
		t.Log("tgtd with a tmpfs file LUN:\n" + sum)
	})
}
