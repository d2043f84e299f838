package bench

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestParseRebuild(t *testing.T) {
	at := func(s string) time.Time {
		t.Helper()
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	const (
		reconcile = `time=2026-11-22T10:00:00.100Z level=INFO msg="resync done" volume=rb epoch=2 set=0 copied_bytes=0 took=1ms pauses_for_foreground_io=0`
		other     = `time=2026-11-22T10:00:01.000Z level=INFO msg="rebuilding a member onto a new chunk" volume=rb2 epoch=1 set=0 member=1 chunk=c7 chunkserver=cs2 source_allocated_bytes=5 from=0`
		start     = `time=2026-11-22T10:00:01.250Z level=INFO msg="rebuilding a member onto a new chunk" volume=rb epoch=3 set=0 member=1 chunk=c9 chunkserver=cs3 source_allocated_bytes=1073741824 from=0`
		again     = `time=2026-11-22T10:00:02.000Z level=INFO msg="rebuilding a member onto a new chunk" volume=rb epoch=3 set=0 member=1 chunk=c9 chunkserver=cs3 source_allocated_bytes=7 from=1048576`
		otherDone = `time=2026-11-22T10:00:03.000Z level=INFO msg="resync done" volume=rb2 epoch=1 set=0 copied_bytes=5 took=1s pauses_for_foreground_io=1`
		done      = `time=2026-11-22T10:00:05.750Z level=INFO msg="resync done" volume=rb epoch=3 set=0 copied_bytes=1074790400 took=4.5s pauses_for_foreground_io=812`
		later     = `time=2026-11-22T10:00:09.000Z level=INFO msg="resync done" volume=rb epoch=3 set=0 copied_bytes=9 took=9s pauses_for_foreground_io=9`
		noPauses  = `time=2026-11-22T10:00:05.750Z level=INFO msg="resync done" volume=rb epoch=3 set=0 copied_bytes=1048576 took=250ms`
	)
	for _, tc := range []struct {
		name  string
		lines []string
		want  Rebuild
	}{
		{"nothing yet", []string{reconcile, other, otherDone}, Rebuild{}},
		{"started", []string{reconcile, other, start, otherDone}, Rebuild{Start: at("2026-11-22T10:00:01.250Z"), SourceAllocated: 1 << 30}},
		{"done", []string{reconcile, start, again, otherDone, done, later}, Rebuild{
			Start: at("2026-11-22T10:00:01.250Z"), SourceAllocated: 1 << 30,
			Done: at("2026-11-22T10:00:05.750Z"), Copied: 1025 << 20, Took: 4500 * time.Millisecond, Pauses: 812}},
		{"no pauses field", []string{start, noPauses}, Rebuild{
			Start: at("2026-11-22T10:00:01.250Z"), SourceAllocated: 1 << 30,
			Done: at("2026-11-22T10:00:05.750Z"), Copied: 1 << 20, Took: 250 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRebuild(strings.Join(tc.lines, "\n")+"\n", "rb")
			if err != nil {
				t.Fatal(err)
			}
			if !got.Start.Equal(tc.want.Start) || !got.Done.Equal(tc.want.Done) || got.SourceAllocated != tc.want.SourceAllocated ||
				got.Copied != tc.want.Copied || got.Took != tc.want.Took || got.Pauses != tc.want.Pauses {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{
		start + "\n" + strings.Replace(done, "took=4.5s", "took=soon", 1),
		strings.Replace(start, "time=2026-11-22T10:00:01.250Z", "time=yesterday", 1),
		strings.TrimPrefix(start, "time=2026-11-22T10:00:01.250Z "),
	} {
		if _, err := ParseRebuild(bad, "rb"); !errors.Is(err, ErrToolOutput) {
			t.Errorf("ParseRebuild(%q): err %v, want ErrToolOutput", bad, err)
		}
	}
}

func TestRebuildSpan(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	ev := func(kind string, s int) api.Event {
		return api.Event{Kind: kind, Time: t0.Add(time.Duration(s) * time.Second)}
	}
	for _, tc := range []struct {
		name              string
		evs               []api.Event
		replaced, rebuilt int
		ok                bool
	}{
		{"none", nil, 0, 0, false},
		{"replaced only", []api.Event{ev(api.EventMemberDegraded, 1), ev(api.EventMemberReplaced, 6)}, 0, 0, false},
		{"done before replaced", []api.Event{ev(api.EventRebuildDone, 2), ev(api.EventMemberReplaced, 6)}, 0, 0, false},
		{"both", []api.Event{ev(api.EventMemberDegraded, 1), ev(api.EventMemberReplaced, 6), ev(api.EventChunkserverOffline, 7),
			ev(api.EventRebuildDone, 11), ev(api.EventRebuildDone, 20)}, 6, 11, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			replaced, rebuilt, ok := rebuildSpan(tc.evs)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if ok && (replaced.Sub(t0) != time.Duration(tc.replaced)*time.Second || rebuilt.Sub(t0) != time.Duration(tc.rebuilt)*time.Second) {
				t.Errorf("span %v to %v, want %ds to %ds", replaced.Sub(t0), rebuilt.Sub(t0), tc.replaced, tc.rebuilt)
			}
		})
	}
}

func TestOverlap(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	s := func(x float64) time.Time { return t0.Add(time.Duration(x * float64(time.Second))) }
	for _, tc := range []struct {
		name                 string
		a0, a1, b0, b1, want float64
	}{
		{"inside", 1, 3, 0, 5, 1},
		{"rebuild ends halfway", 1, 3, 0, 2, 0.5},
		{"rebuild starts a quarter in", 0, 4, 1, 9, 0.75},
		{"rebuild within the load", 0, 10, 2, 4, 0.2},
		{"rebuild over before the load", 5, 6, 0, 4, 0},
		{"rebuild after the load", 0, 1, 2, 3, 0},
		{"empty load", 2, 2, 0, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := overlap(s(tc.a0), s(tc.a1), s(tc.b0), s(tc.b1)); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("overlap = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRebuildFiguresRecord(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	f := newRebuildFigures(1024)
	ms := func(ns ...int) []time.Duration {
		var ds []time.Duration
		for _, n := range ns {
			ds = append(ds, time.Duration(n)*time.Millisecond)
		}
		return ds
	}
	f.record(rebuildSample{
		rb:       Rebuild{SourceAllocated: 1 << 30, Copied: 1 << 30, Took: 4 * time.Second},
		killed:   t0,
		replaced: t0.Add(6 * time.Second), rebuilt: t0.Add(11 * time.Second),
		wall: 12 * time.Second,
		ref:  ms(1, 1, 1, 1), during: ms(2, 2, 2, 6),
		overlap: 0.9,
	})
	for _, c := range []struct {
		fig       *Figure
		ours, ref float64
	}{
		{f.copied, 1024, 1024},
		{f.took, 4, math.NaN()},
		{f.rate, 256, math.NaN()},
		{f.events, 5, math.NaN()},
		{f.wall, 12, math.NaN()},
		{f.mean, 3000, 1000},
		{f.p99, 6000, 1000},
		{f.overlap, 90, math.NaN()},
	} {
		if got := Median(c.fig.OurSamples); math.Abs(got-c.ours) > 1e-9 {
			t.Errorf("%s %s: ours %v, want %v", c.fig.Title(), c.fig.Metric, got, c.ours)
		}
		if got := Median(c.fig.RefSamples); !(math.IsNaN(c.ref) && math.IsNaN(got)) && math.Abs(got-c.ref) > 1e-9 {
			t.Errorf("%s %s: reference %v, want %v", c.fig.Title(), c.fig.Metric, got, c.ref)
		}
		if c.fig.Target != 0 || c.fig.Verdict() != "info" {
			t.Errorf("%s %s: target %v, verdict %s; want information only", c.fig.Title(), c.fig.Metric, c.fig.Target, c.fig.Verdict())
		}
	}
	if got := f.p99.Title(); got != "rebuild: during rebuild vs no rebuild, mirror:2 4K randwrite QD1" {
		t.Errorf("p99 title %q", got)
	}
}

func TestConfigRebuildMiB(t *testing.T) {
	for _, tc := range []struct {
		name      string
		chunk     int64
		mib, want int
		ok        bool
	}{
		{"default is the chunk size", 256 << 20, 0, 256, true},
		{"smaller", 256 << 20, 64, 64, true},
		{"larger than a chunk", 256 << 20, 257, 0, false},
		{"negative", 256 << 20, -1, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Repo: "..", ChunkSize: tc.chunk, RebuildMiB: tc.mib}
			err := cfg.validate()
			if (err == nil) != tc.ok {
				t.Fatalf("validate: %v, want ok %v", err, tc.ok)
			}
			if tc.ok && cfg.RebuildMiB != tc.want {
				t.Errorf("RebuildMiB = %d, want %d", cfg.RebuildMiB, tc.want)
			}
		})
	}
}
