package bench

import (
	"encoding/json"
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
		"| nbd: chunkserver vs nbdkit, 4K randwrite QD1 | IOPS | 30.0k | 40.0k | 0.75× | 0.74–0.76× | ≥ 0.80× | missed |",
		"| mirror: mirror:2 volume vs tgtd, 4K write QD1 | mean latency | 300.0 µs | 200.0 µs | 1.50× | 1.45–1.55× | ≤ 2.50× | met |",
		`not available yet (no --bitmap \| flag)`,
		"| target: memtarget vs tgtd, 4K read QD32 | IOPS | 5000 | — | — | — | ≥ 1.00× | error |",
		"| nbd: chunkserver vs nbdkit, 4K randwrite QD1 | IOPS | 30.0k, 31.0k, 29.0k | 40.0k, 41.0k, 39.0k |",
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
	// Every table row has the same number of cells as its header: 8 in
	// the summary, 4 in the runs.
	summary, perRun, _ := strings.Cut(out, "## Runs")
	for _, table := range []struct {
		text string
		want int
	}{{summary, 9}, {perRun, 5}} {
		for _, l := range strings.Split(table.text, "\n") {
			if strings.HasPrefix(l, "| nbd: chunkserver") || strings.HasPrefix(l, "| bitmap:") {
				if n := strings.Count(strings.ReplaceAll(l, `\|`, ""), "|"); n != table.want {
					t.Errorf("row has %d separators, want %d: %s", n, table.want, l)
				}
			}
		}
	}
}

func TestReportJSON(t *testing.T) {
	rep := &Report{Runs: 2, RunTime: time.Second, Figures: []*Figure{
		{Group: GroupNBD, Name: "4K randwrite QD1", Ours: "chunkserver", Reference: "nbdkit", Metric: "p99 latency", Unit: "µs",
			Direction: LowerIsBetter, Target: 1.5, OurSamples: []float64{300, 100}, RefSamples: []float64{100, 100}},
		{Group: GroupResync, Name: "host crash, 4 MiB written", Ours: "hostd resync", Single: true, Metric: "time", Unit: "s",
			OurSamples: []float64{0.25}},
		{Group: GroupTarget, Name: "4K read QD32", Ours: "a", Reference: "b", Metric: "IOPS", Unit: "IOPS", Target: 1,
			Err: errors.New("qemu-img failed")},
	}}
	var b strings.Builder
	if err := rep.JSON(&b); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Figures []struct {
			Title, Verdict, Better, Error  string
			Ours, Reference, Ratio, Target *float64
			RatioMin                       *float64  `json:"ratio_min"`
			RatioMax                       *float64  `json:"ratio_max"`
			OursRuns                       []float64 `json:"ours_runs"`
			ReferenceRuns                  []float64 `json:"reference_runs"`
		}
	}
	if err := json.Unmarshal([]byte(b.String()), &doc); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if len(doc.Figures) != 3 {
		t.Fatalf("%d figures, want 3", len(doc.Figures))
	}
	p99, one, failed := doc.Figures[0], doc.Figures[1], doc.Figures[2]
	if p99.Ratio == nil || *p99.Ratio != 2 || p99.Verdict != "missed" || p99.Better != "lower" || *p99.Target != 1.5 ||
		len(p99.OursRuns) != 2 || p99.OursRuns[0] != 300 || *p99.Ours != 200 || *p99.RatioMin != 1 || *p99.RatioMax != 3 {
		t.Errorf("p99 figure: %+v", p99)
	}
	if one.Ratio != nil || one.RatioMin != nil || one.Reference != nil || one.Target != nil || one.Verdict != "info" || *one.Ours != 0.25 ||
		one.Title != "resync: hostd resync, host crash, 4 MiB written" || one.ReferenceRuns == nil {
		t.Errorf("one-sided figure: %+v", one)
	}
	if failed.Error != "qemu-img failed" || failed.Verdict != "error" || failed.Ours != nil {
		t.Errorf("failed figure: %+v", failed)
	}
}
