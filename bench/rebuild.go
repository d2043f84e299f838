package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// ---- rebuild: replacement of a lost chunkserver, and foreground I/O meanwhile ----

// rebuildChunkservers is the size of the rebuild group's cluster: a
// mirror:2 set that loses one needs a spare fault domain, and after the
// loss there is still one more.
const rebuildChunkservers = 4

// rebuildFigures are the figures of the rebuild group: bytes copied against
// what the surviving member holds, the rebuild's own time and rate as hostd
// logs them, the time between the metaserver's member_replaced and
// rebuild_done events, the time from the kill until every member is in
// sync, and the QD1 write latency during the rebuild against the same load
// on the healthy volume, with the share of that load the rebuild
// overlapped.
type rebuildFigures struct {
	copied, took, rate, events, wall *Figure
	mean, p99, overlap               *Figure
}

func newRebuildFigures(mib int) rebuildFigures {
	name := fmt.Sprintf("mirror:2, %d MiB written", mib)
	const load = "mirror:2 4K randwrite QD1"
	single := func(ours, metric, unit string) *Figure {
		return &Figure{Group: GroupRebuild, Name: name, Ours: ours, Single: true, Metric: metric, Unit: unit}
	}
	return rebuildFigures{
		copied: &Figure{Group: GroupRebuild, Name: name, Ours: "MiB copied", Reference: "MiB allocated on the source",
			Metric: "bytes copied", Unit: "MiB", Direction: LowerIsBetter},
		took:   single("hostd rebuild", "time (took=)", "s"),
		rate:   single("hostd rebuild", "rate (copied / took=)", "MiB/s"),
		events: single("member_replaced → rebuild_done", "time (events)", "s"),
		wall:   single("kill → all in sync", "time", "s"),
		mean:   latencyFigure(GroupRebuild, load, "during rebuild", "no rebuild", 0),
		p99:    p99Figure(GroupRebuild, load, "during rebuild", "no rebuild", 0),
		overlap: &Figure{Group: GroupRebuild, Name: load, Ours: "load time under the rebuild", Single: true,
			Metric: "overlap", Unit: "%"},
	}
}

func (f rebuildFigures) all() []*Figure {
	return []*Figure{f.copied, f.took, f.rate, f.events, f.wall, f.mean, f.p99, f.overlap}
}

// rebuildSample is what one run measured.
type rebuildSample struct {
	rb                Rebuild
	killed            time.Time
	replaced, rebuilt time.Time // the events' times
	wall              time.Duration
	ref, during       []time.Duration // the latencies of the two loads
	loadTime          time.Duration   // wall time of the load during the rebuild
	overlap           float64         // share of it under the rebuild, 0 to 1
}

func (f rebuildFigures) record(s rebuildSample) {
	f.copied.OurSamples = append(f.copied.OurSamples, float64(s.rb.Copied)/(1<<20))
	f.copied.RefSamples = append(f.copied.RefSamples, float64(s.rb.SourceAllocated)/(1<<20))
	f.took.OurSamples = append(f.took.OurSamples, s.rb.Took.Seconds())
	if s.rb.Took > 0 {
		f.rate.OurSamples = append(f.rate.OurSamples, float64(s.rb.Copied)/(1<<20)/s.rb.Took.Seconds())
	}
	f.events.OurSamples = append(f.events.OurSamples, s.rebuilt.Sub(s.replaced).Seconds())
	f.wall.OurSamples = append(f.wall.OurSamples, s.wall.Seconds())
	f.mean.OurSamples = append(f.mean.OurSamples, micros(MeanDuration(s.during)))
	f.mean.RefSamples = append(f.mean.RefSamples, micros(MeanDuration(s.ref)))
	f.p99.OurSamples = append(f.p99.OurSamples, micros(Percentile(s.during, 99)))
	f.p99.RefSamples = append(f.p99.RefSamples, micros(Percentile(s.ref, 99)))
	f.overlap.OurSamples = append(f.overlap.OurSamples, 100*s.overlap)
}

func (r *Runner) rebuildGroup(ctx context.Context) error {
	mib := r.cfg.RebuildMiB
	f := newRebuildFigures(mib)
	r.add(f.all()...)
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"rebuild: a cluster of its own with %d chunkservers (a mirror:2 set keeps a spare fault domain), its metaserver run with "+
			"`--io-timeout 1s --offline-after 3s --log-period 4s --replace-after 5s` (replace_after must exceed T; the default is 10 min) "+
			"and hostd at its default --resync-rate (256 MiB/s per set). One %d MiB mirror:2 volume with --bitmap remb; %d MiB written "+
			"with `qemu-img bench -w -s 1M -d 8` from offset 0 and flushed. Each run: the QD1 load — qemu-io, %d 4K writes at seeded "+
			"random offsets within the written range, the volume group's method — on the healthy volume (reference), then kill -9 of "+
			"the chunkserver of member 1 of set 0; as soon as hostd logs \"rebuilding a member onto a new chunk\" and the target answers "+
			"iscsi-ls, the same load again, while the metaserver is polled every 50 ms until every member is in sync and none is on the "+
			"dead chunkserver (kill → all in sync, which includes replace_after). Copied, took= and the rate come from hostd's "+
			"\"resync done\" line after that start, the allocated bytes from its source_allocated_bytes; the events time is from "+
			"member_replaced to rebuild_done (metaserver timestamps). Overlap is the share of the load's wall time (from starting "+
			"qemu-io, so with its login) between those two hostd lines: what ran after the rebuild ended ran on a healthy set and "+
			"pulls the during-rebuild latency down. The killed chunkserver is then started again and the run waits until it has "+
			"deleted its replaced chunk. One unrecorded load run first. For information: no targets.",
		rebuildChunkservers, r.cfg.ChunkSize>>20, mib, r.qd1Ops()))
	c, stop, err := r.startRebuildCluster(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err := stop(); err != nil {
			r.log.Warn("stopping the rebuild group's cluster", "err", err)
		}
	}()
	const volume = "rb"
	if _, err := r.createVolumeOn(ctx, c, volume, "mirror:2", r.cfg.ChunkSize, true, "--bitmap", "remb"); err != nil {
		return fmt.Errorf("creating %s: %w", volume, err)
	}
	url := c.ISCSIURL(volume)
	r.log.Info("rebuild: writing", "volume", volume, "MiB", mib)
	if _, err := qemuBench(ctx, url, true, 1<<20, 8, mib, 5*time.Minute); err != nil {
		return fmt.Errorf("writing %d MiB: %w", mib, err)
	}
	if _, err := runTool(ctx, time.Minute, "qemu-io", "-f", "raw", "-c", "flush", url); err != nil {
		return fmt.Errorf("flushing: %w", err)
	}
	offsets := randomOffsets(4, r.qd1Ops(), int64(mib)<<20)
	if _, err := qemuIO(ctx, url, true, offsets, qd1Timeout(len(offsets))); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var details []string
	for run := range r.cfg.Runs {
		s, err := r.rebuildRun(ctx, c, volume, offsets)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			markErr(f.all(), fmt.Errorf("run %d: %w", run+1, err))
			r.log.Error("rebuild", "run", run+1, "err", err)
			break // the cluster may not be whole any more
		}
		f.record(s)
		details = append(details, fmt.Sprintf("run %d: %s", run+1, s.describe()))
		r.log.Info("rebuild", "run", run+1, "details", s.describe())
	}
	r.logFigures(f.all()...)
	if len(details) > 0 {
		r.report.Notes = append(r.report.Notes, "rebuild runs: "+strings.Join(details, "; ")+".")
	}
	return nil
}

// describe says in one line what a run saw besides its figures.
func (s rebuildSample) describe() string {
	return fmt.Sprintf("member_replaced %.1f s after the kill; the load during the rebuild ran %.2f s, %.0f%% of it under the rebuild; "+
		"the rebuild paused %d times for foreground I/O", s.replaced.Sub(s.killed).Seconds(), s.loadTime.Seconds(), 100*s.overlap, s.rb.Pauses)
}

// startRebuildCluster starts the rebuild group's cluster. The returned
// stop stops it (once; Run's cleanup calls it too).
func (r *Runner) startRebuildCluster(ctx context.Context) (*localcluster.Cluster, func() error, error) {
	dir := filepath.Join(r.work, "rebuild-cluster")
	r.log.Info("starting the rebuild group's cluster", "dir", dir)
	c, err := localcluster.Start(ctx, localcluster.Options{
		Dir: dir, Binary: r.bin, ChunkSize: r.cfg.ChunkSize, Logger: r.log, Chunkservers: rebuildChunkservers,
		// The shortest budget the rules allow with some margin:
		// t_io < offline_after < T, T >= 3·t_io, replace_after > T.
		ExtraMetaArgs: []string{"--io-timeout", "1s", "--offline-after", "3s", "--log-period", "4s", "--replace-after", "5s"},
	})
	if err != nil {
		if c != nil {
			c.RemoveWIBs()
		}
		return nil, nil, fmt.Errorf("starting the rebuild group's cluster: %w", err)
	}
	stop := sync.OnceValue(func() error { return errors.Join(c.Stop(), c.RemoveWIBs()) })
	r.atExit(stop)
	return c, stop, nil
}

// qd1Timeout bounds a qemu-io run of n QD1 commands.
func qd1Timeout(n int) time.Duration { return time.Duration(n)*20*time.Millisecond + time.Minute }

// rebuildRun measures one loss: the QD1 load on the healthy volume, kill
// -9 of the chunkserver of member 1 of set 0, the same load from the
// moment hostd starts the rebuild, and the rebuild's figures. It starts the
// killed chunkserver again and waits until it has deleted its replaced
// chunk, so that the next run finds the cluster whole.
func (r *Runner) rebuildRun(ctx context.Context, c *localcluster.Cluster, volume string, offsets []int64) (rebuildSample, error) {
	var s rebuildSample
	url := c.ISCSIURL(volume)
	timeout := qd1Timeout(len(offsets))
	if err := waitVolumeOn(ctx, c, volume, "every member in sync", time.Minute, inSync); err != nil {
		return s, err
	}
	var err error
	if s.ref, err = qemuIO(ctx, url, true, offsets, timeout); err != nil {
		return s, fmt.Errorf("load without a rebuild: %w", err)
	}
	v, err := c.Client().GetVolume(ctx, volume)
	if err != nil {
		return s, err
	}
	if len(v.Sets) == 0 || len(v.Sets[0].Members) < 2 {
		return s, fmt.Errorf("volume %s has no member 1 in set 0", volume)
	}
	victimName, oldChunk := v.Sets[0].Members[1].Chunkserver, v.Sets[0].Members[1].ChunkID
	var victim *localcluster.Proc
	for _, p := range c.CS {
		if p.Name == victimName {
			victim = p
		}
	}
	if victim == nil {
		return s, fmt.Errorf("no chunkserver process %s", victimName)
	}
	// The events after the newest one now are the run's.
	var after int64
	evs, err := c.Client().ListEvents(ctx, volume, 0, 1)
	if err != nil {
		return s, err
	}
	if len(evs) > 0 {
		after = evs[len(evs)-1].ID
	}

	mark := logSize(c.Hostd.Log)
	r.log.Info("rebuild: killing a chunkserver for good", "volume", volume, "chunkserver", victimName)
	s.killed = time.Now()
	if err := victim.Kill(); err != nil {
		return s, err
	}
	restarted := false
	defer func() {
		if !restarted {
			victim.Start() // leave the cluster whole; the run has failed anyway
		}
	}()
	if _, err := waitRebuildLog(ctx, c.Hostd.Log, mark, volume, 2*time.Minute, "a rebuild start",
		func(rb Rebuild) bool { return !rb.Start.IsZero() }); err != nil {
		return s, err
	}
	// A replacement re-attaches the volume: wait until it is served again.
	if err := c.WaitTarget(ctx, volume, 30*time.Second); err != nil {
		return s, err
	}
	type loadResult struct {
		lat        []time.Duration
		start, end time.Time
		err        error
	}
	loaded := make(chan loadResult, 1)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		start := time.Now()
		lat, err := qemuIO(lctx, url, true, offsets, timeout)
		loaded <- loadResult{lat, start, time.Now(), err}
	}()
	werr := waitVolumeOn(ctx, c, volume, "rebuilt without "+victimName, 5*time.Minute, func(v *api.Volume) bool {
		return inSync(v) && !usesChunkserver(v, victimName)
	})
	s.wall = time.Since(s.killed)
	if werr != nil {
		cancel()
	}
	load := <-loaded
	if werr != nil {
		return s, werr
	}
	if load.err != nil {
		return s, fmt.Errorf("load during the rebuild: %w", load.err)
	}
	s.during, s.loadTime = load.lat, load.end.Sub(load.start)
	if s.rb, err = waitRebuildLog(ctx, c.Hostd.Log, mark, volume, 30*time.Second, "\"resync done\" after the rebuild start",
		func(rb Rebuild) bool { return !rb.Done.IsZero() }); err != nil {
		return s, err
	}
	s.overlap = overlap(load.start, load.end, s.rb.Start, s.rb.Done)
	if evs, err = c.Client().ListEvents(ctx, volume, after, api.MaxEvents); err != nil {
		return s, err
	}
	var ok bool
	if s.replaced, s.rebuilt, ok = rebuildSpan(evs); !ok {
		return s, fmt.Errorf("volume %s: no member_replaced event followed by rebuild_done after the kill", volume)
	}

	restarted = true
	if err := victim.Start(); err != nil {
		return s, fmt.Errorf("restarting %s: %w", victimName, err)
	}
	if err := waitChunkGone(ctx, c, oldChunk, time.Minute); err != nil {
		return s, fmt.Errorf("%s back: %w", victimName, err)
	}
	if err := c.WaitOnline(ctx, time.Minute); err != nil {
		return s, err
	}
	return s, nil
}

func usesChunkserver(v *api.Volume, name string) bool {
	for _, s := range v.Sets {
		for _, m := range s.Members {
			if m.Chunkserver == name {
				return true
			}
		}
	}
	return false
}

// waitChunkGone polls the metaserver every 100 ms until it lists no chunk
// id: its chunkserver has deleted it.
func waitChunkGone(ctx context.Context, c *localcluster.Cluster, id string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		chunks, err := c.Client().ListChunks(ctx, "")
		if err == nil {
			found := false
			for _, ch := range chunks {
				found = found || ch.ID == id
			}
			if !found {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the replaced chunk %s is still listed after %v (last error: %v)", id, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitRebuildLog polls the hostd log at path every 10 ms, from byte offset
// from, until what it says about volume's rebuild satisfies ok.
func waitRebuildLog(ctx context.Context, path string, from int64, volume string, timeout time.Duration, what string, ok func(Rebuild) bool) (Rebuild, error) {
	deadline := time.Now().Add(timeout)
	for {
		text, err := readFrom(path, from)
		if err != nil {
			return Rebuild{}, err
		}
		rb, err := ParseRebuild(text, volume)
		if err != nil {
			return Rebuild{}, err
		}
		if ok(rb) {
			return rb, nil
		}
		if time.Now().After(deadline) {
			return Rebuild{}, fmt.Errorf("%s logged no %s for %s within %v", path, what, volume, timeout)
		}
		select {
		case <-ctx.Done():
			return Rebuild{}, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// readFrom returns the file at path from byte offset off on.
func readFrom(path string, off int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return "", err
	}
	b, err := io.ReadAll(f)
	return string(b), err
}

// Rebuild is what a hostd log says about the rebuild of a volume's member
// onto a new chunk.
type Rebuild struct {
	// Start is the time of the first "rebuilding a member onto a new
	// chunk" line (zero if there is none), and SourceAllocated its
	// source_allocated_bytes: what the in-sync members hold, which the
	// rebuild is to copy.
	Start           time.Time
	SourceAllocated int64
	// Done is the time of the first "resync done" line after Start (zero
	// if there is none yet), with its copied_bytes, took= and
	// pauses_for_foreground_io.
	Done   time.Time
	Copied int64
	Took   time.Duration
	Pauses int
}

var (
	logLineTime      = regexp.MustCompile(`^time=(\S+) `)
	rebuildStartLine = regexp.MustCompile(`msg="rebuilding a member onto a new chunk".* source_allocated_bytes=(\d+)`)
	rebuildDoneLine  = regexp.MustCompile(`msg="resync done".* copied_bytes=(\d+) took=(\S+)(?: pauses_for_foreground_io=(\d+))?`)
)

// ParseRebuild reads the rebuild of a member of volume from a hostd log in
// slog's text format (time=RFC 3339 first, volume=NAME on each line of the
// volume). Lines of other volumes, a resync before the rebuild started and
// anything after its "resync done" are ignored.
func ParseRebuild(log, volume string) (Rebuild, error) {
	var rb Rebuild
	tag := " volume=" + volume + " "
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, tag) {
			continue
		}
		switch start, done := rebuildStartLine.FindStringSubmatch(line), rebuildDoneLine.FindStringSubmatch(line); {
		case start != nil && rb.Start.IsZero():
			at, err := lineTime(line)
			if err != nil {
				return Rebuild{}, err
			}
			if rb.SourceAllocated, err = strconv.ParseInt(start[1], 10, 64); err != nil {
				return Rebuild{}, fmt.Errorf("%w: source_allocated_bytes %q", ErrToolOutput, start[1])
			}
			rb.Start = at
		case done != nil && !rb.Start.IsZero():
			at, err := lineTime(line)
			if err != nil {
				return Rebuild{}, err
			}
			if rb.Copied, err = strconv.ParseInt(done[1], 10, 64); err != nil {
				return Rebuild{}, fmt.Errorf("%w: copied_bytes %q", ErrToolOutput, done[1])
			}
			if rb.Took, err = time.ParseDuration(done[2]); err != nil {
				return Rebuild{}, fmt.Errorf("%w: took %q", ErrToolOutput, done[2])
			}
			if done[3] != "" {
				if rb.Pauses, err = strconv.Atoi(done[3]); err != nil {
					return Rebuild{}, fmt.Errorf("%w: pauses_for_foreground_io %q", ErrToolOutput, done[3])
				}
			}
			rb.Done = at
			return rb, nil
		}
	}
	return rb, nil
}

// lineTime reads the time= that starts a slog text line.
func lineTime(line string) (time.Time, error) {
	m := logLineTime.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, fmt.Errorf("%w: hostd log line without a time: %q", ErrToolOutput, clip(line))
	}
	at, err := time.Parse(time.RFC3339Nano, m[1])
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: hostd log time %q", ErrToolOutput, m[1])
	}
	return at, nil
}

// rebuildSpan returns the times of the first member_replaced event of evs
// and of the first rebuild_done event after it; ok is false without both.
func rebuildSpan(evs []api.Event) (replaced, rebuilt time.Time, ok bool) {
	for _, e := range evs {
		switch {
		case e.Kind == api.EventMemberReplaced && replaced.IsZero():
			replaced = e.Time
		case e.Kind == api.EventRebuildDone && !replaced.IsZero():
			return replaced, e.Time, true
		}
	}
	return time.Time{}, time.Time{}, false
}

// overlap is the share (0 to 1) of the interval [aStart, aEnd] that lies
// within [bStart, bEnd]; 0 for an empty interval a.
func overlap(aStart, aEnd, bStart, bEnd time.Time) float64 {
	if !aEnd.After(aStart) {
		return 0
	}
	lo, hi := aStart, aEnd
	if bStart.After(lo) {
		lo = bStart
	}
	if bEnd.Before(hi) {
		hi = bEnd
	}
	if !hi.After(lo) {
		return 0
	}
	return float64(hi.Sub(lo)) / float64(aEnd.Sub(aStart))
}
