package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// qemuSide is one side of a qemu-img bench figure: a URL and the request
// count that makes a run last about RunTime, found by a calibration run.
type qemuSide struct {
	url   string
	count int
}

// calibrate runs a short bench (which also warms the side up) and sizes
// the count of the real runs to last about RunTime.
func (r *Runner) calibrate(ctx context.Context, s *qemuSide, write bool, size, depth, step int) error {
	probe := 2000
	if depth > 1 {
		probe = 10000
	}
	if size >= 1<<20 {
		probe = 200
	}
	q, err := qemuBenchStep(ctx, s.url, write, size, depth, step, probe, 2*time.Minute)
	if err != nil {
		return fmt.Errorf("calibration: %w", err)
	}
	n := int(q.IOPS() * r.cfg.RunTime.Seconds())
	s.count = min(max(n, 100), 2_000_000)
	return nil
}

// target is one system measured by an iSCSI figure set: its name, its
// libiscsi URL, where each of its values goes and which figures an error
// marks.
type target struct {
	name string
	url  string
	dst  [][]*[]float64
	figs []*Figure
	// cpu, for a rate measurement, records the CPU time per request of
	// the target's serving processes (after the values of dst).
	cpu []cpuMeter
}

// qemuRate measures every target with `qemu-img bench` (sequential I/O of
// size bytes at depth from offset 0) and records IOPS, or MB/s for requests
// of 1 MiB and more. Every target runs the same request count — the
// geometric mean of what each completes in RunTime — so that every run
// covers the same byte range on all; one unrecorded run per target at that
// count first makes the measured runs overwrite allocated blocks on all.
func (r *Runner) qemuRate(ctx context.Context, label string, ts []target, write bool, size, depth, step int) error {
	sides := make([]*qemuSide, len(ts))
	var counts []int
	var out []*side
	timeout := 6*r.cfg.RunTime + 30*time.Second
	for i, t := range ts {
		sides[i] = &qemuSide{url: t.url}
		if err := r.calibrate(ctx, sides[i], write, size, depth, step); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			markErr(t.figs, fmt.Errorf("%s: %w", t.name, err))
			continue
		}
		counts = append(counts, sides[i].count)
	}
	if len(counts) == 0 {
		return nil
	}
	count := geoMean(counts)
	for i, t := range ts {
		if sides[i].count == 0 {
			continue
		}
		if _, err := qemuBenchStep(ctx, t.url, write, size, depth, step, count, timeout); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			markErr(t.figs, fmt.Errorf("%s: warm-up: %w", t.name, err))
			continue
		}
		out = append(out, &side{name: t.name, dst: append(slices.Clone(t.dst), meterDsts(t.cpu)...), figs: t.figs,
			run: func(ctx context.Context) ([]float64, error) {
				return metered(ctx, t.cpu, func(ctx context.Context) ([]float64, int64, error) {
					q, err := qemuBenchStep(ctx, t.url, write, size, depth, step, count, timeout)
					if err != nil {
						return nil, 0, err
					}
					if size >= 1<<20 {
						return []float64{q.IOPS() * float64(size) / 1e6}, int64(count), nil
					}
					return []float64{q.IOPS()}, int64(count), nil
				})
			}})
	}
	return r.alternate(ctx, label, out)
}

// qemuLatency measures every target with qemu-io at QD1: one 4 KiB request
// per offset, and records the mean and the 99th percentile latency in µs.
// One unrecorded run per target first.
func (r *Runner) qemuLatency(ctx context.Context, label string, ts []target, write bool, offsets []int64) error {
	timeout := time.Duration(len(offsets))*20*time.Millisecond + time.Minute
	var out []*side
	for _, t := range ts {
		if _, err := qemuIO(ctx, t.url, write, offsets, timeout); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			markErr(t.figs, fmt.Errorf("%s: warm-up: %w", t.name, err))
			continue
		}
		out = append(out, &side{name: t.name, dst: t.dst, figs: t.figs,
			run: func(ctx context.Context) ([]float64, error) {
				lat, err := qemuIO(ctx, t.url, write, offsets, timeout)
				if err != nil {
					return nil, err
				}
				return []float64{micros(MeanDuration(lat)), micros(Percentile(lat, 99))}, nil
			}})
	}
	return r.alternate(ctx, label, out)
}

func markErr(figs []*Figure, err error) {
	for _, f := range figs {
		if f.Err == nil {
			f.Err = err
		}
	}
}

// qd1Ops is the number of requests of one QD1 latency run: about RunTime
// at 1 ms each, at least 1000.
func (r *Runner) qd1Ops() int {
	return max(1000, int(r.cfg.RunTime/time.Millisecond))
}

// ---- volume: every layout through hostd vs tgtd file LUN ----

const (
	refFileIQN = "iqn.2026-11.bench:file"
	refMemIQN  = "iqn.2026-11.bench:tmpfs"
	memIQN     = "iqn.2026-11.io.chunkraid:mem"
)

// layoutSet is the figures of one measurement for each layout against the
// reference, plus ec:4+2 against each mirror layout when cmpEC.
type layoutSet struct {
	vsRef map[string]*Figure // by layout
	ec    []*Figure          // ec:4+2 vs mirror:2, vs mirror:3
}

func (r *Runner) volumeGroup(ctx context.Context) error {
	size := r.cfg.ChunkSize
	const refName = "tgtd file LUN"
	urls := map[string]string{}
	for i, l := range Layouts {
		name := fmt.Sprintf("vol%d", i)
		if _, err := r.createVolume(ctx, name, l, size, true); err != nil {
			return fmt.Errorf("creating a %s volume: %w", l, err)
		}
		urls[l] = r.cluster.ISCSIURL(name)
	}
	refFile := filepath.Join(filepath.Dir(r.cluster.Dir()), "tgtd-ref.img")
	if err := os.WriteFile(refFile, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(refFile, size); err != nil {
		return err
	}
	if err := r.tgt.addTarget(ctx, 1, refFileIQN, refFile); err != nil {
		return err
	}
	ref := r.tgt.url(refFileIQN)
	r.mirror = &qemuLoad{ours: urls["mirror:2"], ref: ref, oursProcs: append([]*localcluster.Proc{r.cluster.Hostd}, r.cluster.CS...),
		refProcs: []*localcluster.Proc{r.tgt.proc}}
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"volume: one %d MiB volume per layout (mirror:2, mirror:3, ec:4+2 with 64 KiB stripe units) on a local cluster of %d chunkservers, "+
			"through hostd's iSCSI target, against tgtd with a file LUN of the same size in the same directory tree; "+
			"the four alternate in every round. QD32 and 1 MiB QD8: `qemu-img bench -f raw [-w] -s SIZE -d D -c N` "+
			"(sequential from offset 0, or with -S 1048576 for the writes 1 MiB apart; the same N on all four, the geometric mean of what each completes in %s by a calibration run, "+
			"and one unrecorded run at N first). QD1: qemu-io reading commands from its standard input, %d random 4K-aligned "+
			"`write`/`read` commands one after the other (the same seeded offsets on all four, one unrecorded run first); "+
			"qemu-io reports each command's rate to four decimals from the exact elapsed time, and 1/rate is that request's latency, "+
			"from which the mean and the 99th percentile are taken. The layout rows compare ec:4+2 with the mirrors from the same runs. "+
			"CPU per op: the user and system CPU time (/proc/PID/stat) that the serving processes used during a 4K QD32 run, "+
			"divided by its requests: hostd with the cluster's chunkservers, or hostd alone, against tgtd.",
		size>>20, clusterChunkservers, r.cfg.RunTime, r.qd1Ops()))

	mk := func(name string, f func(group, name, ours, ref string, target float64) *Figure, target float64, cmpEC bool) *layoutSet {
		s := &layoutSet{vsRef: map[string]*Figure{}}
		for _, l := range Layouts {
			s.vsRef[l] = f(GroupVolume, name, l+" volume", refName, target)
			r.add(s.vsRef[l])
		}
		if cmpEC {
			for _, m := range []string{"mirror:2", "mirror:3"} {
				s.ec = append(s.ec, f("layout", name, "ec:4+2", m, 0))
			}
		}
		return s
	}
	// targets builds the four targets of a measurement whose runs give
	// one value per set in sets.
	targets := func(sets ...*layoutSet) []target {
		ts := []target{{name: refName, url: ref}}
		for _, s := range sets {
			var d []*[]float64
			for _, l := range Layouts {
				d = append(d, &s.vsRef[l].RefSamples)
			}
			ts[0].dst = append(ts[0].dst, d)
			for _, l := range Layouts {
				ts[0].figs = append(ts[0].figs, s.vsRef[l])
			}
		}
		for _, l := range Layouts {
			t := target{name: l, url: urls[l]}
			for _, s := range sets {
				d := []*[]float64{&s.vsRef[l].OurSamples}
				switch l {
				case "ec:4+2":
					for _, f := range s.ec {
						d = append(d, &f.OurSamples)
					}
				case "mirror:2", "mirror:3":
					if len(s.ec) == 2 {
						d = append(d, &s.ec[map[string]int{"mirror:2": 0, "mirror:3": 1}[l]].RefSamples)
					}
				}
				t.dst = append(t.dst, d)
				t.figs = append(t.figs, s.vsRef[l])
				t.figs = append(t.figs, s.ec...)
			}
			ts = append(ts, t)
		}
		return ts
	}
	var ecFigs []*Figure
	offsets := randomOffsets(1, r.qd1Ops(), size)
	for _, c := range []struct {
		name  string
		write bool
		size  int
		depth int
		step  int // bytes from one request to the next; 0: sequential
		cmpEC bool
	}{
		{"4K write QD32", true, 4096, 32, 0, false},
		// Each request in another stripe of ec:4+2 (256 KiB of data), as
		// random writes mostly are: EC's small-write cost without the
		// contention of a sequential stream for one stripe's columns.
		{"4K write QD32, 1 MiB apart", true, 4096, 32, 1 << 20, true},
		{"4K read QD32", false, 4096, 32, 0, false},
		{"1M seq write QD8", true, 1 << 20, 8, 0, true},
		{"1M seq read QD8", false, 1 << 20, 8, 0, true},
	} {
		var s *layoutSet
		if c.size >= 1<<20 {
			s = mk(c.name, bwFigure, 0.5, c.cmpEC)
		} else {
			s = mk(c.name, iopsFigure, 0.5, c.cmpEC)
		}
		if c.step > 0 {
			s.ec[1].Target = 0.5 // ec:4+2 at least half of mirror:3
		}
		ecFigs = append(ecFigs, s.ec...)
		ts := targets(s)
		var cpuFigs []*Figure
		if c.size == 4096 && c.step == 0 {
			cpuFigs = r.meterVolumes(ts, c.name, c.write)
		}
		if err := r.qemuRate(ctx, GroupVolume+": "+c.name, ts, c.write, c.size, c.depth, c.step); err != nil {
			return err
		}
		r.logLayoutSet(s)
		r.logFigures(cpuFigs...)
	}
	for _, c := range []struct {
		name  string
		write bool
	}{{"4K randwrite QD1", true}, {"4K randread QD1", false}} {
		mean := mk(c.name, latencyFigure, 2.5, c.write)
		p99 := mk(c.name, p99Figure, 3.0, c.write)
		ecFigs = append(ecFigs, mean.ec...)
		ecFigs = append(ecFigs, p99.ec...)
		if err := r.qemuLatency(ctx, GroupVolume+": "+c.name, targets(mean, p99), c.write, offsets); err != nil {
			return err
		}
		r.logLayoutSet(mean)
		r.logLayoutSet(p99)
	}
	r.add(ecFigs...)
	return nil
}

// meterVolumes adds to the volume group's targets ts (tgtd first, then
// one per layout) the CPU time per request of their serving processes, and
// adds the figures: per layout, hostd with the chunkservers, and hostd
// alone, each against tgtd. The goals are those of mirror:2: hostd at most
// tgtd's CPU per request, and hostd with the chunkservers at most twice it
// per write.
func (r *Runner) meterVolumes(ts []target, name string, write bool) []*Figure {
	var figs []*Figure
	tgtd := cpuMeter{procs: []*localcluster.Proc{r.tgt.proc}}
	for i := 1; i < len(ts); i++ {
		l := ts[i].name
		allTarget, hostdTarget := 0.0, 0.0
		if l == "mirror:2" {
			hostdTarget = 1
			if write {
				allTarget = 2
			}
		}
		all := cpuFigure(GroupVolume, name, l+" volume: hostd and chunkservers", "tgtd", allTarget)
		hostd := cpuFigure(GroupVolume, name, l+" volume: hostd", "tgtd", hostdTarget)
		ts[i].cpu = []cpuMeter{
			{procs: append([]*localcluster.Proc{r.cluster.Hostd}, r.cluster.CS...), dst: []*[]float64{&all.OurSamples}},
			{procs: []*localcluster.Proc{r.cluster.Hostd}, dst: []*[]float64{&hostd.OurSamples}},
		}
		ts[i].figs = append(ts[i].figs, all, hostd)
		tgtd.dst = append(tgtd.dst, &all.RefSamples, &hostd.RefSamples)
		ts[0].figs = append(ts[0].figs, all, hostd)
		figs = append(figs, all, hostd)
	}
	ts[0].cpu = []cpuMeter{tgtd}
	r.add(figs...)
	return figs
}

func (r *Runner) logLayoutSet(s *layoutSet) {
	for _, l := range Layouts {
		r.logFigures(s.vsRef[l])
	}
	r.logFigures(s.ec...)
}

// ---- target: hostd/iscsi over memory vs tgtd over tmpfs ----

func (r *Runner) targetGroup(ctx context.Context) error {
	const size = 1 << 30
	port, err := localcluster.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	r.log.Info("starting memtarget", "addr", addr)
	p, err := startDaemon(ctx, r.logs, "memtarget", addr, r.memBin, "-listen", addr, "-size", fmt.Sprint(size), "-iqn", memIQN)
	if err != nil {
		return fmt.Errorf("starting memtarget: %w", err)
	}
	r.atExit(func() error { return p.Stop(10 * time.Second) })

	shm, err := os.CreateTemp("/dev/shm", "chunkraid-bench-*.img")
	if err != nil {
		return err
	}
	shm.Close()
	r.atExit(func() error { return os.Remove(shm.Name()) })
	if err := os.Truncate(shm.Name(), size); err != nil {
		return err
	}
	if err := r.tgt.addTarget(ctx, 2, refMemIQN, shm.Name()); err != nil {
		return err
	}
	ours, ref := fmt.Sprintf("iscsi://%s/%s/0", addr, memIQN), r.tgt.url(refMemIQN)
	r.target = &qemuLoad{ours: ours, ref: ref, oursProcs: []*localcluster.Proc{p}, refProcs: []*localcluster.Proc{r.tgt.proc}}
	r.report.Notes = append(r.report.Notes,
		"target: hostd has no mode that serves a memory back end, so bench/memtarget runs the project's iSCSI target "+
			"(hostd/iscsi, the code hostd serves with) over a 1 GiB in-memory back end; the reference is tgtd with a "+
			"1 GiB LUN file on tmpfs (/dev/shm). Same methods as the volume group.")
	const o, t = "hostd/iscsi over memory", "tgtd tmpfs LUN"
	for _, c := range []struct {
		name  string
		write bool
	}{{"4K write QD32", true}, {"4K read QD32", false}} {
		f := iopsFigure(GroupTarget, c.name, o, t, 1.0)
		r.add(f)
		if err := r.qemuRate(ctx, GroupTarget+": "+c.name, []target{
			{name: o, url: ours, dst: [][]*[]float64{{&f.OurSamples}}, figs: []*Figure{f}},
			{name: t, url: ref, dst: [][]*[]float64{{&f.RefSamples}}, figs: []*Figure{f}},
		}, c.write, 4096, 32, 0); err != nil {
			return err
		}
		r.logFigures(f)
	}
	offsets := randomOffsets(2, r.qd1Ops(), size)
	mean := latencyFigure(GroupTarget, "4K randwrite QD1", o, t, 1.0)
	p99 := p99Figure(GroupTarget, "4K randwrite QD1", o, t, 1.0)
	r.add(mean, p99)
	both := []*Figure{mean, p99}
	if err := r.qemuLatency(ctx, GroupTarget+": 4K randwrite QD1", []target{
		{name: o, url: ours, dst: [][]*[]float64{{&mean.OurSamples}, {&p99.OurSamples}}, figs: both},
		{name: t, url: ref, dst: [][]*[]float64{{&mean.RefSamples}, {&p99.RefSamples}}, figs: both},
	}, true, offsets); err != nil {
		return err
	}
	r.logFigures(both...)
	return nil
}

// ---- bitmap: none, internal, remb ----

func (r *Runner) bitmapGroup(ctx context.Context) error {
	modes := []string{"none", "internal", "remb"}
	type pair struct{ remb, internal *Figure }
	mkPair := func(f func(group, name, ours, ref string, target float64) *Figure, name string, target float64) pair {
		return pair{remb: f(GroupBitmap, name, "bitmap remb", "bitmap none", target),
			internal: f(GroupBitmap, name, "bitmap internal", "bitmap none", 0)}
	}
	iops := mkPair(iopsFigure, "mirror:2 4K write QD32", 0.95)
	mean := mkPair(latencyFigure, "mirror:2 4K randwrite QD1", 1.05)
	p99 := mkPair(p99Figure, "mirror:2 4K randwrite QD1", 1.05)
	all := []*Figure{iops.remb, iops.internal, mean.remb, mean.internal, p99.remb, p99.internal}
	if !r.cliHasFlag(ctx, "--bitmap", "volume", "create") {
		why := "`chunkraid volume create` has no --bitmap flag in this build"
		for _, f := range all {
			f.Unavailable = why
		}
		r.add(all...)
		return nil
	}
	size := r.cfg.ChunkSize
	urls := map[string]string{}
	for _, mode := range modes {
		name := "bm-" + mode
		if _, err := r.createVolume(ctx, name, "mirror:2", size, true, "--bitmap", mode); err != nil {
			return fmt.Errorf("creating a volume with --bitmap %s: %w", mode, err)
		}
		urls[mode] = r.cluster.ISCSIURL(name)
	}
	r.add(all...)
	procs := append([]*localcluster.Proc{r.cluster.Hostd}, r.cluster.CS...)
	r.bitmap = &qemuLoad{ours: urls["remb"], ref: urls["none"], oursProcs: procs, refProcs: procs}
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"bitmap: three %d MiB mirror:2 volumes of the same cluster, created with --bitmap none, internal and remb, alternating "+
			"none, internal, remb in every round; same methods as the volume group. Target: remb within 5 %% of none; "+
			"internal (a synchronous bitmap write before a write that dirties a new region) is expected to be clearly slower "+
			"and is reported for information.", size>>20))
	targets := func(ps ...pair) []target {
		var ts []target
		for _, m := range modes {
			t := target{name: "bitmap " + m, url: urls[m]}
			for _, p := range ps {
				switch m {
				case "none":
					t.dst = append(t.dst, []*[]float64{&p.remb.RefSamples, &p.internal.RefSamples})
					t.figs = append(t.figs, p.remb, p.internal)
				case "internal":
					t.dst = append(t.dst, []*[]float64{&p.internal.OurSamples})
					t.figs = append(t.figs, p.internal)
				case "remb":
					t.dst = append(t.dst, []*[]float64{&p.remb.OurSamples})
					t.figs = append(t.figs, p.remb)
				}
			}
			ts = append(ts, t)
		}
		return ts
	}
	if err := r.qemuRate(ctx, GroupBitmap+": 4K write QD32", targets(iops), true, 4096, 32, 0); err != nil {
		return err
	}
	// Random offsets over the whole volume: many writes dirty a region
	// not yet dirty, which is where the modes differ.
	offsets := randomOffsets(3, r.qd1Ops(), size)
	if err := r.qemuLatency(ctx, GroupBitmap+": 4K randwrite QD1", targets(mean, p99), true, offsets); err != nil {
		return err
	}
	r.logFigures(all...)
	return nil
}
