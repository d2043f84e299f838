package iscsi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchCase is one qemu-img bench load.
type benchCase struct {
	name  string
	size  int // bytes per request
	depth int
	write bool
	count int // requests per run
}

var benchCases = []benchCase{
	{"4K read QD1", 4096, 1, false, 20000},
	{"4K write QD1", 4096, 1, true, 20000},
	{"4K read QD32", 4096, 32, false, 100000},
	{"4K write QD32", 4096, 32, true, 100000},
	{"1M read QD8", 1 << 20, 8, false, 2000},
	{"1M write QD8", 1 << 20, 8, true, 2000},
}

var qemuBenchDone = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// qemuBench runs one qemu-img bench and returns requests per second.
func qemuBench(ctx context.Context, url string, bc benchCase) (float64, error) {
	args := []string{"bench", "-f", "raw", "-s", strconv.Itoa(bc.size), "-d", strconv.Itoa(bc.depth), "-c", strconv.Itoa(bc.count)}
	if bc.write {
		args = append(args, "-w")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", append(args, url)...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := qemuBenchDone.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("qemu-img bench printed no completion line:\n%s", out)
	}
	secs, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || secs <= 0 {
		return 0, fmt.Errorf("qemu-img bench: bad duration %q", m[1])
	}
	return float64(bc.count) / secs, nil
}

// tgtdRef is a tgtd on a private portal and management port, with one
// file LUN.
type tgtdRef struct {
	cmd     *exec.Cmd
	portal  string
	ctlPort int
	url     string
	exited  chan struct{}
}

func tgtdSocket(ctl int) string { return fmt.Sprintf("/var/run/tgtd/socket.%d", ctl) }

// startTgtd runs `tgtd -f -C CTL --iscsi portal=127.0.0.1:PORT` and
// exports file as LUN 1 of target iqn.
func startTgtd(t *testing.T, file, iqn string) *tgtdRef {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	portal := ln.Addr().String()
	ln.Close()
	ctl := 0
	// tgtd accepts management ports up to 32767.
	for n := 20000 + os.Getpid()%10000; n <= 32767; n++ {
		if _, err := os.Stat(tgtdSocket(n)); errors.Is(err, os.ErrNotExist) {
			ctl = n
			break
		}
	}
	if ctl == 0 {
		t.Fatal("no free tgtd management port")
	}
	r := &tgtdRef{portal: portal, ctlPort: ctl, exited: make(chan struct{})}
	r.cmd = exec.Command(needTool(t, "tgtd"), "-f", "-C", strconv.Itoa(ctl), "--iscsi", "portal="+portal)
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(r.stop)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(tgtdSocket(ctl)); err == nil {
			if err := r.adm("--op", "show", "--mode", "system"); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tgtd did not come up on %s (management port %d)", portal, ctl)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, args := range [][]string{
		{"--op", "new", "--mode", "target", "--tid", "1", "-T", iqn},
		{"--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", file},
		{"--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"},
	} {
		if err := r.adm(args...); err != nil {
			t.Fatal(err)
		}
	}
	r.url = "iscsi://" + portal + "/" + iqn + "/1"
	return r
}

func (r *tgtdRef) adm(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tgtadm", append([]string{"-C", strconv.Itoa(r.ctlPort), "--lld", "iscsi"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// stop asks tgtd to shut down, kills it if it does not, and removes the
// socket files it leaves behind.
func (r *tgtdRef) stop() {
	_ = r.adm("--op", "delete", "--mode", "target", "--tid", "1", "--force")
	_ = r.adm("--op", "delete", "--mode", "system")
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	for _, suffix := range []string{"", ".lock"} {
		_ = os.Remove(tgtdSocket(r.ctlPort) + suffix)
	}
}

// TestBenchVersusTgtd measures the target alone, over an in-memory back
// end, against tgtd with a file LUN on tmpfs, with qemu-img bench (QEMU's
// libiscsi initiator) in the same run, the two alternating. It is a
// benchmark, not a timed assertion: it reports and fails only when a tool
// does. Run it with
//
//	CHUNKRAID_BENCH=1 go test -run TestBenchVersusTgtd -v ./hostd/iscsi
//
// CHUNKRAID_BENCH_ROUNDS sets the rounds per load (default 3, the median is
// reported); CHUNKRAID_BENCH_PROFILE=prefix writes a CPU profile of the
// target during each of its runs to prefix.NN and logs their summary;
// CHUNKRAID_BENCH_OUT names a file for the table.
func TestBenchVersusTgtd(t *testing.T) {
	if os.Getenv("CHUNKRAID_BENCH") == "" {
		t.Skip("a benchmark: set CHUNKRAID_BENCH=1 to run it")
	}
	needTool(t, "qemu-img")
	needTool(t, "tgtadm")
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("CHUNKRAID_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	const size = 1 << 30

	srv, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(testIQN, newMemBackend(size), "bench"); err != nil {
		t.Fatal(err)
	}
	ours := lunURL(startServer(t, srv))

	dir := "/dev/shm"
	if _, err := os.Stat(dir); err != nil {
		dir = t.TempDir()
	}
	f, err := os.CreateTemp(dir, "chunkraid-iscsi-bench-*.img")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { os.Remove(f.Name()) })
	if err := os.Truncate(f.Name(), size); err != nil {
		t.Fatal(err)
	}
	ref := startTgtd(t, f.Name(), "iqn.2026-11.io.chunkraid:tgtd-ref").url

	// Fill both so that reads return written data, not holes.
	ctx := context.Background()
	for _, url := range []string{ours, ref} {
		if _, err := qemuBench(ctx, url, benchCase{size: 1 << 20, depth: 8, write: true, count: size >> 20}); err != nil {
			t.Fatal(err)
		}
	}

	profPrefix := os.Getenv("CHUNKRAID_BENCH_PROFILE")
	profiles := 0
	type row struct {
		bc                benchCase
		ours, ref         []float64
		mallocsPerRequest float64
	}
	var rows []row
	for _, bc := range benchCases {
		r := row{bc: bc}
		var mallocs, requests uint64
		for round := range rounds {
			runOurs := func() {
				var prof *os.File
				if profPrefix != "" {
					profiles++
					if prof, err = os.Create(fmt.Sprintf("%s.%02d", profPrefix, profiles)); err != nil {
						t.Fatal(err)
					}
					if err := pprof.StartCPUProfile(prof); err != nil {
						t.Fatal(err)
					}
				}
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				v, err := qemuBench(ctx, ours, bc)
				runtime.ReadMemStats(&after)
				if prof != nil {
					pprof.StopCPUProfile()
					prof.Close()
				}
				if err != nil {
					t.Fatal(err)
				}
				r.ours = append(r.ours, v)
				mallocs += after.Mallocs - before.Mallocs
				requests += uint64(bc.count)
			}
			runRef := func() {
				v, err := qemuBench(ctx, ref, bc)
				if err != nil {
					t.Fatal(err)
				}
				r.ref = append(r.ref, v)
			}
			if round%2 == 0 {
				runOurs()
				runRef()
			} else {
				runRef()
				runOurs()
			}
		}
		r.mallocsPerRequest = float64(mallocs) / float64(requests)
		rows = append(rows, r)
	}
	median := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "qemu-img bench, median of %d alternating rounds; ours: hostd/iscsi over memory, reference: tgtd %s file LUN\n", rounds, dir)
	fmt.Fprintf(&b, "| load | ours IOPS | tgtd IOPS | ours/tgtd | ours MiB/s | allocs/request (whole process) |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		o, g := median(r.ours), median(r.ref)
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.2f | %.1f | %.1f |\n", r.bc.name, o, g, o/g, o*float64(r.bc.size)/(1<<20), r.mallocsPerRequest)
	}
	t.Log("\n" + b.String())
	if out := os.Getenv("CHUNKRAID_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	if profPrefix != "" {
		matches, _ := filepath.Glob(profPrefix + ".*")
		exe, _ := os.Executable()
		args := append([]string{"tool", "pprof", "-top", "-nodecount=40", exe}, matches...)
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			t.Logf("go tool pprof: %v", err)
		}
		t.Logf("CPU profile of the target during its runs (%d files):\n%s", len(matches), out)
	}
}
