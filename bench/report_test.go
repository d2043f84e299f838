package bench

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestReportMarkdown(t *testing.T) {
	rep := &Report{
		Started: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC),
		Elapsed: 7*time.Minute + 31*time.Second,
		Runs:    3, RunTime: 5 * time.Second,
		Env:   []string{"2 CPUs", "fio-3.33"},
		Notes: []string{"nbd: how it was measured"},
		Figures: []*Figure{
			{Group: "nbd", Name: "4K randwrite QD1", Ours: "chunkserver", Reference: "nbdkit", Metric: "IOPS", Unit: "IOPS",
				Target: 0.8, OurSamples: []float64{30000, 31000, 29000}, RefSamples: []float64{40000, 41000, 39000}},
			{Group: "mirror", Name: "4K write QD1", Ours: "mirror:2 volume", Reference: "tgtd", Metric: "mean latency", Unit: "µs",
				Direction: LowerIsBetter, Target: 2.5, OurSamples: []float64{300, 310, 290}, RefSamples: []float64{200, 200, 200}},
			{Group: "bitmap", Name: "write QD32", Ours: "remb", Reference: "none", Metric: "IOPS", Unit: "IOPS",
				Target: 0.95, Unavailable: "no --bitmap | flag"},
			{Group: "target", Name: "4K read QD32", Ours: "memtarget", Reference: "tgtd", Metric: "IOPS", Unit: "IOPS",
				Target: 1, OurSamples: []float64{5000}, Err: errors.New("qemu-img bench: exit status 1\nlong detail")},
		},
	}
	var b strings.Builder
	if err := rep.Markdown(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"took 7m31s", "median of 3 runs of about 5s",
		"| nbd: chunkserver vs nbdkit, 4K randwrite QD1 | IOPS | 30.0k | 40.0k | 0.75× | ≥ 0.80× | missed |",
		"| mirror: mirror:2 volume vs tgtd, 4K write QD1 | mean latency | 300.0 µs | 200.0 µs | 1.50× | ≤ 2.50× | met |",
		`not available yet (no --bitmap \| flag)`,
		"| target: memtarget vs tgtd, 4K read QD32 | IOPS | 5000 | — | — | ≥ 1.00× | error |",
		"| nbd: 4K randwrite QD1 | 30.0k, 31.0k, 29.0k | 40.0k, 41.0k, 39.0k |",
		"- target: 4K read QD32: qemu-img bench: exit status 1 …",
		"- nbd: how it was measured", "- fio-3.33",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "long detail") {
		t.Errorf("a multi-line error broke out of its cell:\n%s", out)
	}
	// Every table row has the same number of cells as its header.
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "| nbd: chunkserver") || strings.HasPrefix(l, "| bitmap:") {
			if n := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); n != 8 {
				t.Errorf("row has %d separators, want 8: %s", n, l)
			}
		}
	}
}
