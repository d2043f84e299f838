package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// procCPU returns the user and system CPU time a process (all its threads)
// has used, from /proc/PID/stat.
func procCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseProcStat(string(b))
}

// parseProcStat decodes utime and stime (fields 14 and 15) of a
// /proc/PID/stat line. The command name, field 2, may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseProcStat(s string) (user, sys time.Duration, err error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("%w: /proc stat without command name: %q", ErrToolOutput, clip(s))
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%w: /proc stat has %d fields after the name", ErrToolOutput, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil || u < 0 || st < 0 {
		return 0, 0, fmt.Errorf("%w: /proc stat times %q %q", ErrToolOutput, f[11], f[12])
	}
	tick := time.Second / clockTicks
	return time.Duration(u) * tick, time.Duration(st) * tick, nil
}

// cpuOf returns the CPU time each process has used.
func cpuOf(procs []*localcluster.Proc) ([]time.Duration, error) {
	out := make([]time.Duration, len(procs))
	for i, p := range procs {
		u, s, err := procCPU(p.Pid())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Name, err)
		}
		out[i] = u + s
	}
	return out, nil
}

// cpuMeter records, for every run of a side, the CPU time (user and
// system) that procs used per operation of the run, in µs, into dst.
type cpuMeter struct {
	procs []*localcluster.Proc
	dst   []*[]float64
}

// cpuTotals is the CPU time each meter's processes have used so far.
func cpuTotals(ms []cpuMeter) ([]time.Duration, error) {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		ts, err := cpuOf(m.procs)
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			out[i] += t
		}
	}
	return out, nil
}

// metered runs one run of a side whose first value counts ops operations
// and appends each meter's CPU time per operation to its values.
func metered(ctx context.Context, ms []cpuMeter, run func(context.Context) (vals []float64, ops int64, err error)) ([]float64, error) {
	before, err := cpuTotals(ms)
	if err != nil {
		return nil, err
	}
	vals, ops, err := run(ctx)
	if err != nil || len(ms) == 0 {
		return vals, err
	}
	after, err := cpuTotals(ms)
	if err != nil {
		return nil, err
	}
	if ops <= 0 {
		return nil, errors.New("the run completed no operation")
	}
	for i := range ms {
		vals = append(vals, us((after[i]-before[i])/time.Duration(ops)))
	}
	return vals, nil
}

// meterDsts is the value destinations of meters, after those of a side.
func meterDsts(ms []cpuMeter) [][]*[]float64 {
	var d [][]*[]float64
	for _, m := range ms {
		d = append(d, m.dst)
	}
	return d
}

// cpuFigure is the CPU time per operation of ours against the reference.
func cpuFigure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "CPU per op", Unit: "µs",
		Direction: LowerIsBetter, Target: target}
}

// loadFunc drives one run of load and returns how many operations it
// completed.
type loadFunc func(ctx context.Context) (ops int64, err error)

// cpuUse is the CPU time per operation of each serving process under a load.
type cpuUse struct {
	procs []*localcluster.Proc
	perOp []time.Duration // by process
	ops   int64
}

func (c cpuUse) total() time.Duration {
	var t time.Duration
	for _, d := range c.perOp {
		t += d
	}
	return t
}

func (c cpuUse) String() string {
	parts := make([]string, len(c.procs))
	for i, p := range c.procs {
		parts[i] = fmt.Sprintf("%s %.1f", p.Name, us(c.perOp[i]))
	}
	return fmt.Sprintf("%7.1f µs/op over %d ops (%s)", us(c.total()), c.ops, strings.Join(parts, ", "))
}

// cpuPerOp runs a load and returns the serving processes' CPU time per
// operation.
func cpuPerOp(ctx context.Context, procs []*localcluster.Proc, load loadFunc) (cpuUse, error) {
	c0, err := cpuOf(procs)
	if err != nil {
		return cpuUse{}, err
	}
	ops, err := load(ctx)
	if err != nil {
		return cpuUse{}, err
	}
	c1, err := cpuOf(procs)
	if err != nil {
		return cpuUse{}, err
	}
	if ops <= 0 {
		return cpuUse{}, errors.New("load completed no operation")
	}
	u := cpuUse{procs: procs, perOp: make([]time.Duration, len(procs)), ops: ops}
	for i := range procs {
		u.perOp[i] = (c1[i] - c0[i]) / time.Duration(ops)
	}
	return u, nil
}

// profile takes, for each group that was measured, CPU time, system calls
// and context switches per operation of both sides under the group's QD32
// load (4K writes; for nbd also 4K reads), and perf profiles of both sides
// under the same load. The results go to ResultsDir/profile-NAME.txt.
func (r *Runner) profile(ctx context.Context) error {
	var errs []error
	if r.nbd != nil {
		var cs []*localcluster.Proc
		for _, p := range r.cluster.CS {
			if p.Name == r.nbd.csName {
				cs = append(cs, p)
			}
		}
		for _, rw := range []string{"randwrite", "randread"} {
			fio := func(uri string) loadFunc {
				return func(ctx context.Context) (int64, error) {
					res, err := runFio(ctx, r.work, fioJob{URI: uri, RW: rw, BS: "4k", Depth: 32, Size: r.nbd.size, Runtime: r.cfg.RunTime})
					return res.WriteIOs + res.ReadIOs, err
				}
			}
			errs = append(errs, r.profileLoad(ctx, GroupNBD+"-"+rw, "fio nbd engine, 4K "+rw+" QD32",
				cs, []*localcluster.Proc{r.nbd.refProc}, fio(r.nbd.ours), fio(r.nbd.ref)))
		}
	}
	for _, g := range []struct {
		name string
		l    *qemuLoad
	}{{GroupVolume, r.mirror}, {GroupTarget, r.target}, {GroupBitmap, r.bitmap}} {
		if g.l == nil {
			continue
		}
		ours, ref := &qemuSide{url: g.l.ours}, &qemuSide{url: g.l.ref}
		if err := errors.Join(r.calibrate(ctx, ours, true, 4096, 32, 0), r.calibrate(ctx, ref, true, 4096, 32, 0)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", g.name, err))
			continue
		}
		qb := func(s *qemuSide) loadFunc {
			return func(ctx context.Context) (int64, error) {
				q, err := qemuBench(ctx, s.url, true, 4096, 32, s.count, 6*r.cfg.RunTime+30*time.Second)
				return int64(q.Requests), err
			}
		}
		errs = append(errs, r.profileLoad(ctx, g.name, "qemu-img bench, 4K write QD32", g.l.oursProcs, g.l.refProcs, qb(ours), qb(ref)))
	}
	return errors.Join(errs...)
}

// perfStatEvents are counted per operation: every system call entry and
// every context switch of the serving processes.
var perfStatEvents = []string{"raw_syscalls:sys_enter", "context-switches"}

// parsePerfStat decodes `perf stat -x,` output (on stderr): one line per
// event, "count,unit,event,...". Events perf could not count are errors.
func parsePerfStat(out string) (map[string]float64, error) {
	counts := make(map[string]float64)
	for _, l := range strings.Split(out, "\n") {
		f := strings.Split(strings.TrimSpace(l), ",")
		if len(f) < 3 || f[2] == "" {
			continue
		}
		if strings.HasPrefix(f[0], "<") {
			return nil, fmt.Errorf("%w: perf stat: %s %s", ErrToolOutput, f[2], f[0])
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || v < 0 {
			continue // a comment or warning line
		}
		counts[f[2]] += v
	}
	if len(counts) == 0 {
		return nil, fmt.Errorf("%w: perf stat printed no counts: %q", ErrToolOutput, clip(out))
	}
	return counts, nil
}

// countPerOp counts perfStatEvents of each process with perf stat while load
// runs, and renders them per operation.
func countPerOp(ctx context.Context, procs []*localcluster.Proc, load loadFunc) (string, error) {
	type stat struct {
		cmd *exec.Cmd
		out *strings.Builder
	}
	var stats []stat
	stop := func() {
		for _, st := range stats {
			st.cmd.Process.Signal(os.Interrupt)
		}
		for _, st := range stats {
			st.cmd.Wait()
		}
	}
	for _, p := range procs {
		out := &strings.Builder{}
		cmd := exec.Command("perf", "stat", "-x,", "-e", strings.Join(perfStatEvents, ","), "-p", strconv.Itoa(p.Pid()))
		cmd.Stdout, cmd.Stderr = out, out
		cmd.WaitDelay = 10 * time.Second
		if err := cmd.Start(); err != nil {
			stop()
			return "", err
		}
		stats = append(stats, stat{cmd, out})
	}
	time.Sleep(200 * time.Millisecond) // perf stat attaches
	ops, err := load(ctx)
	stop()
	if err != nil {
		return "", err
	}
	if ops <= 0 {
		return "", errors.New("load completed no operation")
	}
	var parts []string
	total := make(map[string]float64)
	for i, st := range stats {
		c, err := parsePerfStat(st.out.String())
		if err != nil {
			return "", fmt.Errorf("%s: %w", procs[i].Name, err)
		}
		for k, v := range c {
			total[k] += v
		}
		parts = append(parts, fmt.Sprintf("%s %.1f/%.1f", procs[i].Name,
			c[perfStatEvents[0]]/float64(ops), c[perfStatEvents[1]]/float64(ops)))
	}
	return fmt.Sprintf("%5.1f syscalls, %5.1f context switches per op over %d ops (by process, syscalls/switches: %s)",
		total[perfStatEvents[0]]/float64(ops), total[perfStatEvents[1]]/float64(ops), ops, strings.Join(parts, ", ")), nil
}

// profileLoad measures CPU per operation of the reference and of ours,
// then samples each side with perf during one more run of the same load.
func (r *Runner) profileLoad(ctx context.Context, group, what string, ours, ref []*localcluster.Proc, oursLoad, refLoad loadFunc) error {
	if len(ours) == 0 || len(ref) == 0 {
		return fmt.Errorf("%s: no process to profile", group)
	}
	r.log.Info("profiling", "group", group, "load", what)
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: CPU profile under %s\n\n", group, what)
	refCPU, err := cpuPerOp(ctx, ref, refLoad)
	if err != nil {
		return fmt.Errorf("%s reference: %w", group, err)
	}
	oursCPU, err := cpuPerOp(ctx, ours, oursLoad)
	if err != nil {
		return fmt.Errorf("%s ours: %w", group, err)
	}
	fmt.Fprintf(&b, "CPU time of the serving processes per operation (user+system, /proc/PID/stat), without perf:\n")
	fmt.Fprintf(&b, "  ours       %s\n", oursCPU)
	fmt.Fprintf(&b, "  reference  %s\n\n", refCPU)
	fmt.Fprintf(&b, "System calls and context switches per operation (perf stat, one more run per side):\n")
	for _, side := range []struct {
		name  string
		procs []*localcluster.Proc
		load  loadFunc
	}{{"ours     ", ours, oursLoad}, {"reference", ref, refLoad}} {
		line, err := countPerOp(ctx, side.procs, side.load)
		if err != nil {
			return fmt.Errorf("%s %s: counting system calls: %w", group, strings.TrimSpace(side.name), err)
		}
		fmt.Fprintf(&b, "  %s  %s\n", side.name, line)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "perf record -F 999 -g for %s per side; percentages are of each process's own samples "+
		"(with callees, a function met twice in one stack counts twice, so totals can pass 100 %%).\n\n", r.cfg.RunTime)
	for _, side := range []struct {
		name  string
		procs []*localcluster.Proc
		load  loadFunc
	}{{"ours", ours, oursLoad}, {"reference", ref, refLoad}} {
		if err := r.perfSide(ctx, &b, group+"-"+side.name, side.procs, side.load); err != nil {
			return fmt.Errorf("%s %s: %w", group, side.name, err)
		}
	}
	if err := os.MkdirAll(r.cfg.ResultsDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(r.cfg.ResultsDir, "profile-"+group+".txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	r.report.Profiles = append(r.report.Profiles, fmt.Sprintf("%s: %s (beside this file) — server CPU per op: ours %.1f µs, reference %.1f µs (%.2f×)",
		group, filepath.Base(path), us(oursCPU.total()), us(refCPU.total()), float64(oursCPU.total())/float64(max(refCPU.total(), 1))))
	return nil
}

// perfSide records the processes with perf while load runs and appends,
// per process, the symbols by self time and by time including callees.
func (r *Runner) perfSide(ctx context.Context, b *strings.Builder, name string, procs []*localcluster.Proc, load loadFunc) error {
	data := filepath.Join(r.work, "perf-"+name+".data")
	pids := make([]string, len(procs))
	for i, p := range procs {
		pids[i] = strconv.Itoa(p.Pid())
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.RunTime+time.Minute)
	defer cancel()
	perf := exec.CommandContext(pctx, "perf", "record", "-F", "999", "-g", "-p", strings.Join(pids, ","), "-o", data,
		"--", "sleep", strconv.Itoa(int(r.cfg.RunTime.Seconds())))
	perfLog, err := os.Create(filepath.Join(r.logs, "perf-"+name+".log"))
	if err != nil {
		return err
	}
	defer perfLog.Close()
	perf.Stdout, perf.Stderr = perfLog, perfLog
	if err := perf.Start(); err != nil {
		return fmt.Errorf("perf record: %w", err)
	}
	_, loadErr := load(ctx)
	if err := perf.Wait(); err != nil {
		return fmt.Errorf("perf record: %w (log: %s)", err, tailFile(perfLog.Name(), 5))
	}
	if loadErr != nil {
		return fmt.Errorf("load under perf: %w", loadErr)
	}
	for _, p := range procs {
		pid := strconv.Itoa(p.Pid())
		fmt.Fprintf(b, "## %s (pid %s): self time by symbol (perf report --no-children)\n\n", p.Name, pid)
		out, err := runTool(ctx, 2*time.Minute, "perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
			"--percentage", "relative", "--percent-limit", "1", "--sort", "dso,symbol", "--pid", pid)
		if err != nil {
			return err
		}
		b.WriteString(perfBody(out) + "\n\n")
		fmt.Fprintf(b, "## %s (pid %s): time including callees (perf report --children)\n\n", p.Name, pid)
		out, err = runTool(ctx, 2*time.Minute, "perf", "report", "-i", data, "--stdio", "--children", "-g", "none",
			"--percentage", "relative", "--percent-limit", "5", "--sort", "symbol", "--pid", pid)
		if err != nil {
			return err
		}
		b.WriteString(perfBody(out) + "\n\n")
	}
	return nil
}
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// perfIPC matches the IPC columns perf report adds, empty ("-  -") where
// the machine has no cycle counters.
var perfIPC = regexp.MustCompile(`\s+(IPC\s+\[IPC Coverage\]|-\s+-)\s*$`)

// perfBody drops perf report's comment lines, keeping the column header,
// and the empty IPC columns.
func perfBody(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || (strings.HasPrefix(t, "#") && !strings.Contains(t, "Overhead")) {
			continue
		}
		keep = append(keep, perfIPC.ReplaceAllString(l, ""))
	}
	return strings.Join(keep, "\n")
}
