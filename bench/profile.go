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

// cpuOf sums the CPU time of processes.
func cpuOf(procs []*localcluster.Proc) (time.Duration, error) {
	var total time.Duration
	for _, p := range procs {
		u, s, err := procCPU(p.Pid())
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p.Name, err)
		}
		total += u + s
	}
	return total, nil
}

// loadFunc drives one run of load and returns how many operations it
// completed.
type loadFunc func(ctx context.Context) (ops int64, err error)

// cpuPerOp runs a load and returns the serving processes' CPU time per
// operation.
func cpuPerOp(ctx context.Context, procs []*localcluster.Proc, load loadFunc) (time.Duration, int64, error) {
	c0, err := cpuOf(procs)
	if err != nil {
		return 0, 0, err
	}
	ops, err := load(ctx)
	if err != nil {
		return 0, 0, err
	}
	c1, err := cpuOf(procs)
	if err != nil {
		return 0, 0, err
	}
	if ops <= 0 {
		return 0, 0, errors.New("load completed no operation")
	}
	return (c1 - c0) / time.Duration(ops), ops, nil
}

func pidNames(procs []*localcluster.Proc) string {
	s := make([]string, len(procs))
	for i, p := range procs {
		s[i] = fmt.Sprintf("%s (pid %d)", p.Name, p.Pid())
	}
	return strings.Join(s, ", ")
}

// profile takes, for each group that was measured, CPU time per operation
// of both sides under the group's QD32 write load, and a perf profile of
// our processes under the same load. The results go to
// ResultsDir/profile-GROUP.txt.
func (r *Runner) profile(ctx context.Context) error {
	var errs []error
	if r.nbd != nil {
		var cs []*localcluster.Proc
		for _, p := range r.cluster.CS {
			if p.Name == r.nbd.csName {
				cs = append(cs, p)
			}
		}
		fio := func(uri string) loadFunc {
			return func(ctx context.Context) (int64, error) {
				res, err := runFio(ctx, r.work, fioJob{URI: uri, RW: "randwrite", BS: "4k", Depth: 32, Size: r.nbd.size, Runtime: r.cfg.RunTime})
				return res.WriteIOs, err
			}
		}
		errs = append(errs, r.profileLoad(ctx, GroupNBD, "fio nbd engine, 4K randwrite QD32",
			cs, []*localcluster.Proc{r.nbd.refProc}, fio(r.nbd.ours), fio(r.nbd.ref)))
	}
	for _, g := range []struct {
		name string
		l    *qemuLoad
	}{{GroupMirror, r.mirror}, {GroupTarget, r.target}} {
		if g.l == nil {
			continue
		}
		ours, ref := &qemuSide{url: g.l.ours}, &qemuSide{url: g.l.ref}
		if err := errors.Join(r.calibrate(ctx, ours, true, 32), r.calibrate(ctx, ref, true, 32)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", g.name, err))
			continue
		}
		qb := func(s *qemuSide) loadFunc {
			return func(ctx context.Context) (int64, error) {
				q, err := qemuBench(ctx, s.url, true, 32, s.count, 6*r.cfg.RunTime+30*time.Second)
				return int64(q.Requests), err
			}
		}
		errs = append(errs, r.profileLoad(ctx, g.name, "qemu-img bench, 4K write QD32", g.l.oursProcs, g.l.refProcs, qb(ours), qb(ref)))
	}
	return errors.Join(errs...)
}

// profileLoad measures CPU per operation of the reference and of ours, then
// samples ours with perf during one more run of the same load.
func (r *Runner) profileLoad(ctx context.Context, group, what string, ours, ref []*localcluster.Proc, oursLoad, refLoad loadFunc) error {
	if len(ours) == 0 {
		return fmt.Errorf("%s: no process to profile", group)
	}
	r.log.Info("profiling", "group", group, "load", what)
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: CPU profile under %s\n\n", group, what)
	refCPU, refOps, err := cpuPerOp(ctx, ref, refLoad)
	if err != nil {
		return fmt.Errorf("%s reference: %w", group, err)
	}
	oursCPU, oursOps, err := cpuPerOp(ctx, ours, oursLoad)
	if err != nil {
		return fmt.Errorf("%s ours: %w", group, err)
	}
	fmt.Fprintf(&b, "CPU time of the serving processes per operation (user+system, /proc/PID/stat):\n")
	fmt.Fprintf(&b, "  ours       %7.1f µs/op over %d ops: %s\n", us(oursCPU), oursOps, pidNames(ours))
	fmt.Fprintf(&b, "  reference  %7.1f µs/op over %d ops: %s\n\n", us(refCPU), refOps, pidNames(ref))

	data := filepath.Join(r.work, "perf-"+group+".data")
	pids := make([]string, len(ours))
	for i, p := range ours {
		pids[i] = strconv.Itoa(p.Pid())
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.RunTime+time.Minute)
	defer cancel()
	perf := exec.CommandContext(pctx, "perf", "record", "-F", "999", "-g", "-p", strings.Join(pids, ","), "-o", data,
		"--", "sleep", strconv.Itoa(int(r.cfg.RunTime.Seconds())))
	perfLog, err := os.Create(filepath.Join(r.logs, "perf-"+group+".log"))
	if err != nil {
		return err
	}
	defer perfLog.Close()
	perf.Stdout, perf.Stderr = perfLog, perfLog
	if err := perf.Start(); err != nil {
		return fmt.Errorf("perf record: %w", err)
	}
	_, loadErr := oursLoad(ctx)
	if err := perf.Wait(); err != nil {
		return fmt.Errorf("perf record: %w (log: %s)", err, tailFile(perfLog.Name(), 5))
	}
	if loadErr != nil {
		return fmt.Errorf("%s load under perf: %w", group, loadErr)
	}
	for _, p := range ours {
		pid := strconv.Itoa(p.Pid())
		fmt.Fprintf(&b, "## %s (pid %s): self time by symbol (perf report --no-children)\n\n", p.Name, pid)
		out, err := runTool(ctx, 2*time.Minute, "perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
			"--percent-limit", "0.7", "--sort", "dso,symbol", "--pid", pid)
		if err != nil {
			return err
		}
		b.WriteString(perfBody(out) + "\n")
		fmt.Fprintf(&b, "## %s (pid %s): time including callees (perf report --children)\n\n", p.Name, pid)
		out, err = runTool(ctx, 2*time.Minute, "perf", "report", "-i", data, "--stdio", "--children", "-g", "none",
			"--percent-limit", "4", "--sort", "symbol", "--pid", pid)
		if err != nil {
			return err
		}
		b.WriteString(perfBody(out) + "\n")
	}
	if err := os.MkdirAll(r.cfg.ResultsDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(r.cfg.ResultsDir, "profile-"+group+".txt")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	r.report.Profiles = append(r.report.Profiles, fmt.Sprintf("%s: %s (beside this file) — server CPU per op: ours %.1f µs, reference %.1f µs (%.2f×)",
		group, filepath.Base(path), us(oursCPU), us(refCPU), float64(oursCPU)/float64(max(refCPU, 1))))
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
