package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// ErrToolMissing is wrapped when a reference or client program is not
// installed.
var ErrToolMissing = errors.New("not found: run make deps")

// needTools checks that every named program is on PATH.
func needTools(names ...string) error {
	var errs []error
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			errs = append(errs, fmt.Errorf("%s %w", n, ErrToolMissing))
		}
	}
	return errors.Join(errs...)
}

// runTool runs a short-lived client program with a deadline and returns its
// combined output. The process is killed when ctx ends or the deadline
// passes.
func runTool(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return string(out), fmt.Errorf("%s %s: %w (after %v)", name, strings.Join(args, " "), ctx.Err(), timeout)
		}
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, clip(string(out)))
	}
	return string(out), nil
}

// toolVersion returns the first line a program prints for its version flag.
func toolVersion(ctx context.Context, name string, args ...string) string {
	out, err := runTool(ctx, 10*time.Second, name, args...)
	if err != nil {
		return name + ": unknown version"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	if !strings.Contains(strings.ToLower(line), name) {
		line = name + " " + line
	}
	return line
}

// waitPort waits until a TCP connection to addr succeeds, or the process
// exits, or the timeout passes.
func waitPort(ctx context.Context, addr string, p *localcluster.Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited before listening on %s (log: %s):\n%s", p.Name, addr, p.Log, tailFile(p.Log, 10))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %v: %w", addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startDaemon starts a long-lived server in its own process group (so a
// terminal's Ctrl-C reaches the driver, which stops it in order) and waits
// for it to listen on addr.
func startDaemon(ctx context.Context, logDir, name, addr, bin string, args ...string) (*localcluster.Proc, error) {
	p := &localcluster.Proc{Name: name, Bin: bin, Args: args, Log: filepath.Join(logDir, name+".log")}
	if err := p.Start(); err != nil {
		return nil, err
	}
	if err := waitPort(ctx, addr, p, 15*time.Second); err != nil {
		p.Stop(5 * time.Second)
		return nil, err
	}
	return p, nil
}

// tgt is a tgtd instance on a private portal and management port, so that
// it neither needs port 3260 nor meets another tgtd on this machine.
type tgt struct {
	proc    *localcluster.Proc
	portal  string
	ctlPort int
	tids    []int
}

// startTgt runs `tgtd -f -C CTL --iscsi portal=127.0.0.1:PORT`.
func startTgt(ctx context.Context, logDir string) (*tgt, error) {
	port, err := localcluster.FreePort()
	if err != nil {
		return nil, err
	}
	// tgtd's management channel is the Unix socket /var/run/tgtd/socket.N;
	// pick an N that no other tgtd uses.
	ctl := 0
	for n := 4000 + os.Getpid()%20000; n < 65000; n++ {
		if _, err := os.Stat((&tgt{ctlPort: n}).socket()); errors.Is(err, os.ErrNotExist) {
			ctl = n
			break
		}
	}
	if ctl == 0 {
		return nil, errors.New("no free tgtd management port")
	}
	t := &tgt{portal: fmt.Sprintf("127.0.0.1:%d", port), ctlPort: ctl}
	t.proc, err = startDaemon(ctx, logDir, "tgtd", t.portal, "tgtd", "-f", "-C", strconv.Itoa(ctl), "--iscsi", "portal="+t.portal)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// socket is the path of tgtd's management socket.
func (t *tgt) socket() string { return fmt.Sprintf("/var/run/tgtd/socket.%d", t.ctlPort) }

func (t *tgt) adm(ctx context.Context, args ...string) error {
	_, err := runTool(ctx, 30*time.Second, "tgtadm", append([]string{"-C", strconv.Itoa(t.ctlPort), "--lld", "iscsi"}, args...)...)
	return err
}

// addTarget exports a file as LUN 1 of a new target tid, open to every
// initiator, as in TESTING.md.
func (t *tgt) addTarget(ctx context.Context, tid int, iqn, file string) error {
	id := strconv.Itoa(tid)
	if err := t.adm(ctx, "--op", "new", "--mode", "target", "--tid", id, "-T", iqn); err != nil {
		return err
	}
	t.tids = append(t.tids, tid)
	if err := t.adm(ctx, "--op", "new", "--mode", "logicalunit", "--tid", id, "--lun", "1", "-b", file); err != nil {
		return err
	}
	return t.adm(ctx, "--op", "bind", "--mode", "target", "--tid", id, "-I", "ALL")
}

// url is the libiscsi URL of a target's LUN 1 (LUN 0 is tgtd's controller).
func (t *tgt) url(iqn string) string { return fmt.Sprintf("iscsi://%s/%s/1", t.portal, iqn) }

// close deletes every target it added and stops tgtd.
func (t *tgt) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, tid := range t.tids {
		if err := t.adm(ctx, "--op", "delete", "--mode", "target", "--tid", strconv.Itoa(tid), "--force"); err != nil {
			errs = append(errs, err)
		}
	}
	// tgtd shuts down on this management request (SIGTERM alone may leave
	// it running); then Stop reaps it, killing it if it is still there.
	if err := t.adm(ctx, "--op", "delete", "--mode", "system"); err != nil {
		errs = append(errs, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !t.proc.Exited() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !t.proc.Exited() {
		errs = append(errs, fmt.Errorf("tgtd did not exit within 10s of tgtadm --op delete --mode system"))
	}
	t.proc.Stop(5 * time.Second) // its exit status is of no interest
	// tgtd leaves its management socket and lock file behind.
	for _, suffix := range []string{"", ".lock"} {
		if err := os.Remove(t.socket() + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fioJob describes one fio run against an NBD URI.
type fioJob struct {
	URI     string
	RW      string // randwrite, randread, write
	BS      string // 4k, 1m
	Depth   int
	Size    int64
	Runtime time.Duration // 0: run once over Size
}

// runFio runs fio with its nbd engine and decodes the JSON report.
func runFio(ctx context.Context, dir string, j fioJob) (FioResult, error) {
	out, err := os.CreateTemp(dir, "fio-*.json")
	if err != nil {
		return FioResult{}, err
	}
	out.Close()
	defer os.Remove(out.Name())
	args := []string{"--name=bench", "--ioengine=nbd", "--uri=" + j.URI, "--rw=" + j.RW, "--bs=" + j.BS,
		"--iodepth=" + strconv.Itoa(j.Depth), "--size=" + strconv.FormatInt(j.Size, 10),
		"--randrepeat=1", "--lat_percentiles=1", "--percentile_list=99", "--output-format=json", "--output=" + out.Name()}
	timeout := 2 * time.Minute
	if j.Runtime > 0 {
		args = append(args, "--time_based", fmt.Sprintf("--runtime=%dms", j.Runtime.Milliseconds()))
		timeout = 3*j.Runtime + 30*time.Second
	}
	if _, err := runTool(ctx, timeout, "fio", args...); err != nil {
		return FioResult{}, err
	}
	b, err := os.ReadFile(out.Name())
	if err != nil {
		return FioResult{}, err
	}
	return ParseFio(b)
}

// qemuBench runs `qemu-img bench -f raw -s size -d depth -c count [-w] url`.
func qemuBench(ctx context.Context, url string, write bool, size, depth, count int, timeout time.Duration) (QemuBench, error) {
	return qemuBenchStep(ctx, url, write, size, depth, 0, count, timeout)
}

// qemuBenchStep is qemuBench with each request step bytes after the one
// before (qemu-img bench -S; it wraps at the end of the image), or right
// after it for step 0.
func qemuBenchStep(ctx context.Context, url string, write bool, size, depth, step, count int, timeout time.Duration) (QemuBench, error) {
	args := []string{"bench", "-f", "raw", "-s", strconv.Itoa(size), "-d", strconv.Itoa(depth), "-c", strconv.Itoa(count)}
	if step > 0 {
		args = append(args, "-S", strconv.Itoa(step))
	}
	if write {
		args = append(args, "-w")
	}
	out, err := runTool(ctx, timeout, "qemu-img", append(args, url)...)
	if err != nil {
		return QemuBench{}, err
	}
	return ParseQemuBench(out)
}

// qemuIO sends one 4 KiB read or write command per offset to `qemu-io -f
// raw url` on its standard input, one at a time (QD1), and returns the
// latency of each.
func qemuIO(ctx context.Context, url string, write bool, offsets []int64, timeout time.Duration) ([]time.Duration, error) {
	var in strings.Builder
	for _, off := range offsets {
		if write {
			fmt.Fprintf(&in, "write -P 0x5a %d 4096\n", off)
		} else {
			fmt.Fprintf(&in, "read %d 4096\n", off)
		}
	}
	in.WriteString("quit\n")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-io", "-f", "raw", url)
	cmd.Stdin = strings.NewReader(in.String())
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("qemu-io %s: %w (after %v)", url, ctx.Err(), timeout)
		}
		return nil, fmt.Errorf("qemu-io %s: %w\n%s", url, err, clip(string(out)))
	}
	if strings.Contains(string(out), "failed:") {
		return nil, fmt.Errorf("qemu-io %s: a command failed: %s", url, clip(string(out)))
	}
	return ParseQemuIOLatencies(string(out), len(offsets))
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
