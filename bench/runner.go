package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Groups of figures, in the order they run.
const (
	GroupNBD    = "nbd"
	GroupMirror = "mirror"
	GroupTarget = "target"
	GroupBitmap = "bitmap"
)

// AllGroups lists every group.
var AllGroups = []string{GroupNBD, GroupMirror, GroupTarget, GroupBitmap}

// Config configures a Runner. Zero values mean the defaults given per field.
type Config struct {
	// Repo is the module root, where `go build ./cli/chunkraid` works.
	// Default: the current directory.
	Repo string
	// Source describes the source measured (a git revision, or the work
	// tree with local changes); it is printed with the report.
	Source string
	// TempDir is where the work directory (cluster state, reference files,
	// binaries) is made; it must be on the same disk for both sides and
	// reachable by the postgres user. Default /tmp.
	TempDir string
	// ResultsDir receives latest.md and profiles. Default Repo/bench/results.
	ResultsDir string
	// Runs is the number of runs per side and figure; the median is
	// reported. Default 3.
	Runs int
	// RunTime is the length of one run. Default 5 s.
	RunTime time.Duration
	// Timeout bounds the whole invocation. Default 15 min.
	Timeout time.Duration
	// Groups selects what to measure (see AllGroups). Default all.
	Groups []string
	// Profile adds CPU profiles (perf) of our daemons under load after the
	// measurements.
	Profile bool
	// Keep leaves the work directory (logs, perf data, binaries) in place
	// for inspection; every process is still stopped.
	Keep bool
	// ChunkSize is the cluster's chunk size, and so the size of the file
	// behind each NBD export measured. Default 1 GiB.
	ChunkSize int64
	// Out receives the Markdown report. Default os.Stdout.
	Out io.Writer
	// Logger receives progress. nil discards.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Repo == "" {
		c.Repo = "."
	}
	abs, err := filepath.Abs(c.Repo)
	if err != nil {
		return err
	}
	c.Repo = abs
	if _, err := os.Stat(filepath.Join(c.Repo, "cli", "chunkraid")); err != nil {
		return fmt.Errorf("bench: %s is not the chunkraid module root (no cli/chunkraid): %w", c.Repo, err)
	}
	if c.TempDir == "" {
		c.TempDir = "/tmp"
	}
	if c.ResultsDir == "" {
		c.ResultsDir = filepath.Join(c.Repo, "bench", "results")
	}
	if c.Runs == 0 {
		c.Runs = 3
	}
	if c.Runs < 1 || c.Runs > 21 {
		return fmt.Errorf("bench: %d runs per figure: want 1 to 21", c.Runs)
	}
	if c.RunTime == 0 {
		c.RunTime = 5 * time.Second
	}
	if c.RunTime < time.Second || c.RunTime > time.Minute {
		return fmt.Errorf("bench: run time %v: want 1s to 1m", c.RunTime)
	}
	if c.Timeout == 0 {
		c.Timeout = 15 * time.Minute
	}
	if len(c.Groups) == 0 {
		c.Groups = AllGroups
	}
	for _, g := range c.Groups {
		if !slices.Contains(AllGroups, g) {
			return fmt.Errorf("bench: unknown group %q (have %s)", g, strings.Join(AllGroups, ", "))
		}
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = 1 << 30
	}
	if c.ChunkSize < 64<<20 || c.ChunkSize%(1<<20) != 0 {
		return fmt.Errorf("bench: chunk size %d: want a multiple of 1 MiB, at least 64 MiB", c.ChunkSize)
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Runner runs one benchmark invocation.
type Runner struct {
	cfg Config
	log *slog.Logger

	// Set during Run.
	work     string // work directory, removed at the end
	logs     string // logs of the reference servers
	bin      string // chunkraid binary
	memBin   string // memtarget binary
	cluster  *localcluster.Cluster
	tgt      *tgt
	cleanups []func() error
	report   *Report

	// What the groups set up, for the profiles taken afterwards.
	nbd    *nbdLoad
	mirror *qemuLoad
	target *qemuLoad
	bitmap *qemuLoad
}

// nbdLoad is the NBD pair of the nbd group.
type nbdLoad struct {
	ours, ref string // URIs
	size      int64
	refProc   *localcluster.Proc // nbdkit
	csName    string             // the chunkserver holding the chunk
}

// qemuLoad is an iSCSI pair measured with qemu-img bench, with the
// processes that serve each side.
type qemuLoad struct {
	ours, ref           string // URLs
	oursProcs, refProcs []*localcluster.Proc
}

// New validates cfg and returns a Runner.
func New(cfg Config) (*Runner, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Runner{cfg: cfg, log: cfg.Logger}, nil
}

func (r *Runner) has(group string) bool { return slices.Contains(r.cfg.Groups, group) }

// atExit registers a cleanup; cleanups run in reverse order when Run
// returns, whatever the reason.
func (r *Runner) atExit(f func() error) { r.cleanups = append(r.cleanups, f) }

// Run measures every selected group, writes the report to Config.Out and
// ResultsDir/latest.md, and stops every process and removes every file it
// made, also when ctx is cancelled (Ctrl-C) or a step fails. The report is
// returned even when some figures could not be measured (a group that
// cannot set up, or a cluster that does not start, leaves error rows); an
// error means no report could be made (a tool is missing, the build
// failed, tgtd did not start, or the run was interrupted).
func (r *Runner) Run(ctx context.Context) (rep *Report, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	r.report = &Report{Started: time.Now(), Runs: r.cfg.Runs, RunTime: r.cfg.RunTime}

	tools := []string{"fio", "nbdkit", "tgtd", "tgtadm", "qemu-img", "iscsi-ls"}
	if r.cfg.Profile {
		tools = append(tools, "perf")
	}
	if err := needTools(tools...); err != nil {
		return nil, err
	}

	r.work, err = os.MkdirTemp(r.cfg.TempDir, "chunkraid-bench-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := r.cleanup(); cerr != nil {
			r.log.Warn("cleanup", "err", cerr)
			err = errors.Join(err, cerr)
		}
	}()
	// The postgres user must reach the cluster's data directory.
	if err := os.Chmod(r.work, 0o755); err != nil {
		return nil, err
	}
	r.logs = filepath.Join(r.work, "logs")
	if err := os.MkdirAll(r.logs, 0o755); err != nil {
		return nil, err
	}
	if err := r.build(ctx); err != nil {
		return nil, err
	}
	r.environment(ctx)

	var clusterErr error
	if r.has(GroupNBD) || r.has(GroupMirror) || r.has(GroupBitmap) {
		clusterErr = r.startCluster(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if clusterErr != nil {
			r.log.Error("the local cluster did not start; only the target group can run", "err", clusterErr)
		}
	}
	if r.has(GroupMirror) || r.has(GroupTarget) {
		r.log.Info("starting tgtd")
		r.tgt, err = startTgt(ctx, r.logs)
		if err != nil {
			return nil, fmt.Errorf("starting tgtd: %w", err)
		}
		t := r.tgt
		r.atExit(t.close)
	}

	steps := []struct {
		group        string
		needsCluster bool
		run          func(context.Context) error
	}{
		{GroupNBD, true, r.nbdGroup},
		{GroupMirror, true, r.mirrorGroup},
		{GroupTarget, false, r.targetGroup},
		{GroupBitmap, true, r.bitmapGroup},
	}
	for _, s := range steps {
		if !r.has(s.group) {
			continue
		}
		if s.needsCluster && clusterErr != nil {
			r.failGroup(s.group, clusterErr)
			continue
		}
		if err := s.run(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted during %s: %w", s.group, ctx.Err())
			}
			// A group that cannot even set up is reported as an error on
			// its figures; the others still run.
			r.log.Error("group failed", "group", s.group, "err", err)
			r.failGroup(s.group, err)
		}
	}
	if r.cfg.Profile {
		if err := r.profile(ctx); err != nil {
			r.log.Error("profiling", "err", err)
			r.report.Notes = append(r.report.Notes, "profiling failed: "+oneLine(err.Error()))
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	r.report.Elapsed = time.Since(r.report.Started)
	r.report.Env = append(r.report.Env, "load average at the end (1, 5, 15 min): "+loadAvg()+
		"; other work on the machine during the run shows here and widens the spread of the runs")
	if err := r.write(); err != nil {
		return r.report, err
	}
	return r.report, nil
}

// failGroup marks the group's figures that were never measured with err,
// adding a placeholder row when the group had none yet.
func (r *Runner) failGroup(group string, err error) {
	found := false
	for _, f := range r.report.Figures {
		if f.Group == group {
			found = true
			if f.Err == nil && f.Unavailable == "" && !f.Measured() {
				f.Err = err
			}
		}
	}
	if !found {
		r.report.Figures = append(r.report.Figures, &Figure{Group: group, Name: "set-up", Ours: "—", Reference: "—", Metric: "—", Err: err})
	}
}

func (r *Runner) cleanup() error {
	var errs []error
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		if err := r.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	r.cleanups = nil
	if r.cfg.Keep {
		r.log.Info("work directory kept", "dir", r.work)
		return errors.Join(errs...)
	}
	if r.work != "" {
		if err := os.RemoveAll(r.work); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *Runner) write() error {
	if err := r.report.Markdown(r.cfg.Out); err != nil {
		return err
	}
	if err := os.MkdirAll(r.cfg.ResultsDir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(r.cfg.ResultsDir, "latest.md"))
	if err != nil {
		return err
	}
	if err := r.report.Markdown(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// build compiles the chunkraid binary and memtarget into the work
// directory.
func (r *Runner) build(ctx context.Context) error {
	r.bin = filepath.Join(r.work, "chunkraid")
	r.memBin = filepath.Join(r.work, "memtarget")
	if r.cfg.Source != "" {
		r.report.Notes = append(r.report.Notes, "source: "+r.cfg.Source)
	}
	for _, b := range []struct{ out, pkg string }{{r.bin, "./cli/chunkraid"}, {r.memBin, "./bench/memtarget"}} {
		r.log.Info("building", "package", b.pkg)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		cmd := exec.CommandContext(cctx, "go", "build", "-o", b.out, b.pkg)
		cmd.Dir = r.cfg.Repo
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return nil
}

func (r *Runner) environment(ctx context.Context) {
	host, _ := os.Hostname()
	kernel := "unknown kernel"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = "Linux " + strings.TrimSpace(string(b))
	}
	r.report.Env = []string{
		fmt.Sprintf("%s, %s, %d CPUs, %s", host, kernel, runtime.NumCPU(), runtime.Version()),
		toolVersion(ctx, "fio", "--version"),
		toolVersion(ctx, "nbdkit", "--version"),
		toolVersion(ctx, "tgtd", "--version"),
		toolVersion(ctx, "qemu-img", "--version"),
		"load average at the start (1, 5, 15 min): " + loadAvg(),
	}
}

// loadAvg returns the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], ", ")
}

func (r *Runner) startCluster(ctx context.Context) error {
	r.log.Info("starting the local cluster", "dir", filepath.Join(r.work, "cluster"))
	c, err := localcluster.Start(ctx, localcluster.Options{
		Dir: filepath.Join(r.work, "cluster"), Binary: r.bin, ChunkSize: r.cfg.ChunkSize, Logger: r.log,
	})
	if err != nil {
		// Start has stopped what it started; its bitmaps in shared memory
		// are left to the caller.
		if c != nil {
			c.RemoveWIBs()
		}
		return fmt.Errorf("starting the local cluster: %w", err)
	}
	r.atExit(func() error { return errors.Join(c.Stop(), c.RemoveWIBs()) })
	r.cluster = c
	return nil
}

// createVolume creates a mirror:2 volume attached to the cluster's host,
// through the CLI so that flags such as --bitmap are what an operator uses,
// and, if waitTarget, waits until the host serves it.
func (r *Runner) createVolume(ctx context.Context, name string, size int64, waitTarget bool, extra ...string) (*api.Volume, error) {
	args := append([]string{"--metaserver", r.cluster.MetaURL, "volume", "create", name,
		"--size", fmt.Sprint(size), "--layout", "mirror:2", "--host", r.cluster.HostName}, extra...)
	if _, err := runTool(ctx, time.Minute, r.bin, args...); err != nil {
		return nil, err
	}
	if waitTarget {
		if err := r.cluster.WaitTarget(ctx, name, time.Minute); err != nil {
			return nil, err
		}
	}
	return r.cluster.Client().GetVolume(ctx, name)
}

// cliHasFlag reports whether `chunkraid <cmd...> --help` lists flag.
func (r *Runner) cliHasFlag(ctx context.Context, flag string, cmd ...string) bool {
	out, err := runTool(ctx, 30*time.Second, r.bin, append(cmd, "--help")...)
	return err == nil && strings.Contains(out, flag)
}

// measure runs ours and ref alternately, Runs times each, appending to the
// figure's samples. It stops at the first error, which it records on the
// figure; only an interruption (ctx) is returned.
func (r *Runner) measure(ctx context.Context, f *Figure, ours, ref func(context.Context) (float64, error)) error {
	r.report.Figures = append(r.report.Figures, f)
	for i := range r.cfg.Runs {
		for _, side := range []struct {
			name string
			run  func(context.Context) (float64, error)
			dst  *[]float64
		}{{f.Ours, ours, &f.OurSamples}, {f.Reference, ref, &f.RefSamples}} {
			v, err := side.run(ctx)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				f.Err = fmt.Errorf("%s, run %d: %w", side.name, i+1, err)
				r.log.Error("run failed", "figure", f.Group+": "+f.Name, "side", side.name, "err", err)
				return nil
			}
			*side.dst = append(*side.dst, v)
			r.log.Info("run", "figure", f.Group+": "+f.Name, "side", side.name, "run", i+1, f.Metric, f.FormatValue(v))
		}
	}
	r.log.Info("figure", "figure", f.Group+": "+f.Name, "ours", f.FormatValue(Median(f.OurSamples)),
		"ref", f.FormatValue(Median(f.RefSamples)), "ratio", fmt.Sprintf("%.2f", f.Ratio()), "result", f.Verdict())
	return nil
}

// ---- nbd: chunkserver vs nbdkit ----

// chunkExport finds member 0 of set 0 of a volume: its NBD URI and the path
// of its chunk file.
func (r *Runner) chunkExport(ctx context.Context, v *api.Volume) (uri, file string, err error) {
	if len(v.Sets) == 0 || len(v.Sets[0].Members) == 0 {
		return "", "", fmt.Errorf("volume %s has no members", v.Name)
	}
	m := v.Sets[0].Members[0]
	pattern := filepath.Join(r.cluster.Dir(), "chunkservers", "*", m.ChunkID+".chunk")
	deadline := time.Now().Add(30 * time.Second)
	for {
		files, _ := filepath.Glob(pattern)
		if len(files) == 1 {
			file = files[0]
			break
		}
		if time.Now().After(deadline) {
			return "", "", fmt.Errorf("chunk file %s did not appear (found %d)", pattern, len(files))
		}
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The export must answer a handshake before fio is pointed at it.
	for {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := nbd.Dial(dctx, nbd.ClientConfig{Addr: m.Addr, Export: m.Export})
		cancel()
		if err == nil {
			c.Close()
			return "nbd://" + m.Addr + "/" + url.PathEscape(m.Export), file, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", "", fmt.Errorf("NBD export %s on %s: %w", m.Export, m.Addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *Runner) nbdGroup(ctx context.Context) error {
	// Only the chunk is measured: the host's target is not waited for.
	v, err := r.createVolume(ctx, "nbd", r.cfg.ChunkSize, false)
	if err != nil {
		return err
	}
	ours, chunkFile, err := r.chunkExport(ctx, v)
	if err != nil {
		return err
	}
	st, err := os.Stat(chunkFile)
	if err != nil {
		return err
	}
	size := st.Size()
	// The reference file: same size, sparse, same file system as the chunk.
	refFile := filepath.Join(filepath.Dir(r.cluster.Dir()), "nbdkit-ref.img")
	if err := os.WriteFile(refFile, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(refFile, size); err != nil {
		return err
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	r.log.Info("starting nbdkit", "file", refFile, "addr", addr)
	p, err := startDaemon(ctx, r.logs, "nbdkit", addr, "nbdkit", "-f", "-p", fmt.Sprint(port), "-i", "127.0.0.1", "file", refFile)
	if err != nil {
		return fmt.Errorf("starting nbdkit: %w", err)
	}
	r.atExit(func() error { return p.Stop(10 * time.Second) })
	ref := "nbd://" + addr + "/"

	// Fill both files once so that reads find data and writes overwrite
	// allocated blocks on either side.
	for _, u := range []string{ours, ref} {
		r.log.Info("prefilling", "uri", u, "bytes", size)
		if _, err := runFio(ctx, r.work, fioJob{URI: u, RW: "write", BS: "1m", Depth: 8, Size: size}); err != nil {
			return fmt.Errorf("prefill %s: %w", u, err)
		}
	}
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"nbd: fio with its nbd engine, one job, 4K random I/O over the whole %d MiB export for %s per run "+
			"(randrepeat=1: the same offsets on both sides); ours is a chunkserver of the local cluster exporting one chunk, "+
			"the reference `nbdkit -f -p PORT -i 127.0.0.1 file` on a sparse file of the same size in the same directory tree; "+
			"both were filled once with 1 MiB writes first.", size>>20, r.cfg.RunTime))
	r.nbd = &nbdLoad{ours: ours, ref: ref, size: size, refProc: p, csName: filepath.Base(filepath.Dir(chunkFile))}

	for _, rw := range []string{"randwrite", "randread"} {
		for _, qd := range []int{1, 32} {
			f := &Figure{Group: GroupNBD, Name: fmt.Sprintf("4K %s QD%d", rw, qd), Ours: "chunkserver", Reference: "nbdkit",
				Metric: "IOPS", Unit: "IOPS", Direction: HigherIsBetter, Target: 0.8}
			run := func(uri string) func(context.Context) (float64, error) {
				return func(ctx context.Context) (float64, error) {
					res, err := runFio(ctx, r.work, fioJob{URI: uri, RW: rw, BS: "4k", Depth: qd, Size: size, Runtime: r.cfg.RunTime})
					if err != nil {
						return 0, err
					}
					if rw == "randwrite" {
						return res.WriteIOPS, nil
					}
					return res.ReadIOPS, nil
				}
			}
			if err := r.measure(ctx, f, run(ours), run(ref)); err != nil {
				return err
			}
		}
	}
	return nil
}

// ---- qemu-img bench figures (mirror, target, bitmap) ----

// qemuSide is one side of a qemu-img bench figure: a URL and the request
// count that makes a run last about RunTime, found by a calibration run.
type qemuSide struct {
	url   string
	count int
}

// calibrate runs a short bench (which also warms the side up) and sizes
// the count of the real runs to last about RunTime.
func (r *Runner) calibrate(ctx context.Context, s *qemuSide, write bool, depth int) error {
	probe := 2000
	if depth > 1 {
		probe = 10000
	}
	q, err := qemuBench(ctx, s.url, write, depth, probe, 2*time.Minute)
	if err != nil {
		return fmt.Errorf("calibration: %w", err)
	}
	n := int(q.IOPS() * r.cfg.RunTime.Seconds())
	s.count = min(max(n, 1000), 2_000_000)
	return nil
}

type qemuMetric int

const (
	metricIOPS qemuMetric = iota
	metricLatency
)

// qemuFigure measures one qemu-img bench figure on two iSCSI URLs. Both
// sides run the same request count — the geometric mean of what each side
// completes in RunTime — so that every run writes the same byte range on
// both; one unrecorded run per side at that count first makes the measured
// runs overwrite allocated blocks on both.
func (r *Runner) qemuFigure(ctx context.Context, f *Figure, oursURL, refURL string, write bool, depth int, metric qemuMetric) error {
	ours, ref := &qemuSide{url: oursURL}, &qemuSide{url: refURL}
	fail := func(s *qemuSide, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r.report.Figures = append(r.report.Figures, f)
		f.Err = fmt.Errorf("%s: %w", s.url, err)
		return nil
	}
	for _, s := range []*qemuSide{ours, ref} {
		if err := r.calibrate(ctx, s, write, depth); err != nil {
			return fail(s, err)
		}
	}
	count := int(math.Sqrt(float64(ours.count) * float64(ref.count)))
	timeout := 6*r.cfg.RunTime + 30*time.Second
	for _, s := range []*qemuSide{ours, ref} {
		s.count = count
		if _, err := qemuBench(ctx, s.url, write, depth, count, timeout); err != nil {
			return fail(s, fmt.Errorf("warm-up: %w", err))
		}
	}
	run := func(s *qemuSide) func(context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			q, err := qemuBench(ctx, s.url, write, depth, s.count, timeout)
			if err != nil {
				return 0, err
			}
			if metric == metricLatency {
				return float64(q.MeanLatency()) / float64(time.Microsecond), nil
			}
			return q.IOPS(), nil
		}
	}
	return r.measure(ctx, f, run(ours), run(ref))
}

func iopsFigure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "IOPS", Unit: "IOPS",
		Direction: HigherIsBetter, Target: target}
}

func latencyFigure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "mean latency", Unit: "µs",
		Direction: LowerIsBetter, Target: target}
}

// ---- mirror: hostd mirror:2 volume vs tgtd file LUN ----

const (
	refFileIQN = "iqn.2026-11.bench:file"
	refMemIQN  = "iqn.2026-11.bench:tmpfs"
	memIQN     = "iqn.2026-11.io.chunkraid:mem"
)

func (r *Runner) mirrorGroup(ctx context.Context) error {
	size := 2 * r.cfg.ChunkSize // two sets, like the demo volume
	if _, err := r.createVolume(ctx, "bench", size, true); err != nil {
		return err
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
	ours, ref := r.cluster.ISCSIURL("bench"), r.tgt.url(refFileIQN)
	r.mirror = &qemuLoad{ours: ours, ref: ref, oursProcs: append([]*localcluster.Proc{r.cluster.Hostd}, r.cluster.CS...),
		refProcs: []*localcluster.Proc{r.tgt.proc}}
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"mirror: `qemu-img bench -f raw -w -s 4096 -d D -c N` (sequential 4K writes from offset 0; the same N on both sides, "+
			"the geometric mean of what each completes in %s by a calibration run, and one unrecorded run at N first) against a %d MiB mirror:2 volume of the local cluster (hostd iSCSI target → "+
			"2 sets → NBD → 3 chunkservers) and against tgtd with a file LUN of the same size in the same directory tree. "+
			"QD1 latency is the run time divided by N.", r.cfg.RunTime, size>>20))
	if err := r.qemuFigure(ctx, iopsFigure(GroupMirror, "4K write QD32", "mirror:2 volume", "tgtd file LUN", 0.5),
		ours, ref, true, 32, metricIOPS); err != nil {
		return err
	}
	return r.qemuFigure(ctx, latencyFigure(GroupMirror, "4K write QD1", "mirror:2 volume", "tgtd file LUN", 2.5),
		ours, ref, true, 1, metricLatency)
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
			"1 GiB LUN file on tmpfs (/dev/shm). Same qemu-img bench method as mirror.")
	if err := r.qemuFigure(ctx, iopsFigure(GroupTarget, "4K write QD32", "hostd/iscsi over memory", "tgtd tmpfs LUN", 1.0),
		ours, ref, true, 32, metricIOPS); err != nil {
		return err
	}
	return r.qemuFigure(ctx, iopsFigure(GroupTarget, "4K read QD32", "hostd/iscsi over memory", "tgtd tmpfs LUN", 1.0),
		ours, ref, false, 32, metricIOPS)
}

// ---- bitmap: remb vs none ----

func (r *Runner) bitmapGroup(ctx context.Context) error {
	const ours, ref = "bitmap remb", "bitmap none"
	iops := iopsFigure(GroupBitmap, "mirror:2 4K write QD32", ours, ref, 0.95)
	lat := latencyFigure(GroupBitmap, "mirror:2 4K write QD1", ours, ref, 1.05)
	if !r.cliHasFlag(ctx, "--bitmap", "volume", "create") {
		why := "`chunkraid volume create` has no --bitmap flag in this build"
		iops.Unavailable, lat.Unavailable = why, why
		r.report.Figures = append(r.report.Figures, iops, lat)
		return nil
	}
	size := r.cfg.ChunkSize
	var urls []string
	for _, mode := range []string{"remb", "none"} {
		name := "bm-" + mode
		if _, err := r.createVolume(ctx, name, size, true, "--bitmap", mode); err != nil {
			return fmt.Errorf("creating a volume with --bitmap %s: %w", mode, err)
		}
		urls = append(urls, r.cluster.ISCSIURL(name))
	}
	procs := append([]*localcluster.Proc{r.cluster.Hostd}, r.cluster.CS...)
	r.bitmap = &qemuLoad{ours: urls[0], ref: urls[1], oursProcs: procs, refProcs: procs}
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"bitmap: two %d MiB mirror:2 volumes of the same cluster, created with --bitmap remb and --bitmap none; "+
			"same qemu-img bench method as mirror; target: remb within 5 %% of none.", size>>20))
	if err := r.qemuFigure(ctx, iops, urls[0], urls[1], true, 32, metricIOPS); err != nil {
		return err
	}
	return r.qemuFigure(ctx, lat, urls[0], urls[1], true, 1, metricLatency)
}
