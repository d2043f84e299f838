package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// Groups of figures, in the order they run.
const (
	GroupNBD     = "nbd"
	GroupVolume  = "volume"
	GroupTarget  = "target"
	GroupBitmap  = "bitmap"
	GroupQoS     = "qos"
	GroupResync  = "resync"
	GroupRebuild = "rebuild"
)

// AllGroups lists every group. resync comes after the groups that use the
// cluster's first host: it kills it. rebuild comes last and runs on a
// cluster of its own, started for it (a metaserver that replaces a lost
// chunkserver within seconds) and stopped after it; it kills and restarts
// that cluster's chunkservers.
var AllGroups = []string{GroupNBD, GroupVolume, GroupTarget, GroupBitmap, GroupQoS, GroupResync, GroupRebuild}

// Layouts are the volume layouts measured by the volume group.
var Layouts = []string{"mirror:2", "mirror:3", "ec:4+2"}

// clusterChunkservers is the size of the local cluster: ec:4+2 needs six
// fault domains.
const clusterChunkservers = 6

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
	// reported, with the spread of the rounds' ratios. Default 5.
	Runs int
	// RunTime is the length of one run. Default 2 s.
	RunTime time.Duration
	// Timeout bounds the whole invocation. Default 20 min.
	Timeout time.Duration
	// Groups selects what to measure (see AllGroups). Default all.
	Groups []string
	// Profile adds CPU profiles (perf) of our daemons under load after the
	// measurements.
	Profile bool
	// Keep leaves the work directory (logs, perf data, binaries) in place
	// for inspection; every process is still stopped.
	Keep bool
	// ResyncMiB are the MiB written during each outage of the resync
	// group. Default 4, 16, 64.
	ResyncMiB []int
	// RebuildMiB are the MiB written to the volume of the rebuild group
	// before its chunkservers are lost; the rebuild copies them. Default
	// the chunk size (the whole volume): at hostd's default resync rate
	// that rebuild lasts longer than one QD1 load run.
	RebuildMiB int
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
		c.Runs = 5
	}
	if c.Runs < 1 || c.Runs > 21 {
		return fmt.Errorf("bench: %d runs per figure: want 1 to 21", c.Runs)
	}
	if c.RunTime == 0 {
		c.RunTime = 2 * time.Second
	}
	if c.RunTime < time.Second || c.RunTime > time.Minute {
		return fmt.Errorf("bench: run time %v: want 1s to 1m", c.RunTime)
	}
	if c.Timeout == 0 {
		c.Timeout = 20 * time.Minute
	}
	if len(c.Groups) == 0 {
		c.Groups = AllGroups
	}
	for _, g := range c.Groups {
		if !slices.Contains(AllGroups, g) {
			return fmt.Errorf("bench: unknown group %q (have %s)", g, strings.Join(AllGroups, ", "))
		}
	}
	if len(c.ResyncMiB) == 0 {
		c.ResyncMiB = []int{4, 16, 64}
	}
	for _, w := range c.ResyncMiB {
		if w < 1 || w > 512 {
			return fmt.Errorf("bench: resync size %d MiB: want 1 to 512", w)
		}
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = 1 << 30
	}
	if c.ChunkSize < 64<<20 || c.ChunkSize%(1<<20) != 0 {
		return fmt.Errorf("bench: chunk size %d: want a multiple of 1 MiB, at least 64 MiB", c.ChunkSize)
	}
	if c.RebuildMiB == 0 {
		c.RebuildMiB = int(c.ChunkSize >> 20)
	}
	if c.RebuildMiB < 1 || int64(c.RebuildMiB) > c.ChunkSize>>20 {
		return fmt.Errorf("bench: rebuild size %d MiB: want 1 to the chunk size (%d MiB)", c.RebuildMiB, c.ChunkSize>>20)
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
	mirror *qemuLoad // the mirror:2 volume of the volume group
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
	if r.has(GroupNBD) || r.has(GroupVolume) || r.has(GroupBitmap) || r.has(GroupQoS) || r.has(GroupResync) {
		clusterErr = r.startCluster(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if clusterErr != nil {
			r.log.Error("the local cluster did not start; only the target group can run", "err", clusterErr)
		}
	}
	if r.has(GroupVolume) || r.has(GroupTarget) {
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
		{GroupVolume, true, r.volumeGroup},
		{GroupTarget, false, r.targetGroup},
		{GroupBitmap, true, r.bitmapGroup},
		{GroupQoS, true, r.qosGroup},
		{GroupResync, true, r.resyncGroup},
		{GroupRebuild, false, r.rebuildGroup}, // starts a cluster of its own
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
	for _, out := range []struct {
		name  string
		write func(io.Writer) error
	}{{"latest.md", r.report.Markdown}, {"latest.json", r.report.JSON}} {
		f, err := os.Create(filepath.Join(r.cfg.ResultsDir, out.name))
		if err != nil {
			return err
		}
		if err := out.write(f); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
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
		Chunkservers: clusterChunkservers,
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
