package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/localcluster"
)

// These tests drive the real reference servers and clients the benchmark
// uses; a missing one fails the test with the hint to run make deps.

func needToolsT(t *testing.T, names ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real process: not in -short (make test runs it)")
	}
	if err := needTools(names...); err != nil {
		t.Fatal(err)
	}
}

func sparseFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNeedTools(t *testing.T) {
	err := needTools("sh", "chunkraid-no-such-tool")
	if !errors.Is(err, ErrToolMissing) || !strings.Contains(err.Error(), "chunkraid-no-such-tool not found: run make deps") {
		t.Errorf("needTools = %v", err)
	}
	if strings.Contains(err.Error(), "sh not found") {
		t.Errorf("sh reported missing: %v", err)
	}
}

func TestNbdkitFio(t *testing.T) {
	needToolsT(t, "nbdkit", "fio")
	ctx := t.Context()
	const size = 32 << 20
	file := sparseFile(t, size)
	port, err := localcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p, err := startDaemon(ctx, t.TempDir(), "nbdkit", addr, "nbdkit", "-f", "-p", fmt.Sprint(port), "-i", "127.0.0.1", "file", file)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(5 * time.Second)
	res, err := runFio(ctx, t.TempDir(), fioJob{URI: "nbd://" + addr + "/", RW: "randwrite", BS: "4k", Depth: 4, Size: size, Runtime: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.WriteIOPS <= 0 || res.WriteIOs <= 0 || res.ReadIOs != 0 || res.WriteLatency <= 0 {
		t.Errorf("fio randwrite result %+v", res)
	}
	// The bytes reached the file through nbdkit.
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || sys.Blocks == 0 {
		t.Errorf("the sparse file has no blocks allocated after fio's writes (%+v)", st.Sys())
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("stopping nbdkit: %v", err)
	}
	if !p.Exited() {
		t.Error("nbdkit still running after Stop")
	}
}

func TestTgtQemuBench(t *testing.T) {
	needToolsT(t, "tgtd", "tgtadm", "qemu-img", "qemu-io")
	ctx := t.Context()
	file := sparseFile(t, 64<<20)
	tg, err := startTgt(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			tg.close()
		}
	}()
	const iqn = "iqn.2026-11.bench:test"
	if err := tg.addTarget(ctx, 1, iqn, file); err != nil {
		t.Fatal(err)
	}
	q, err := qemuBench(ctx, tg.url(iqn), true, 4096, 4, 500, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if q.Requests != 500 || !q.Write || q.Depth != 4 || q.IOPS() <= 0 {
		t.Errorf("qemu-img bench result %+v", q)
	}
	// The LUN is the file: a pattern written through tgtd is in the file.
	if _, err := runTool(ctx, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 4k", tg.url(iqn)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if b[1<<20] != 0x5c || b[1<<20+4095] != 0x5c {
		t.Errorf("file holds %x at 1 MiB, want 5c", b[1<<20])
	}
	closed = true
	if err := tg.close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if !tg.proc.Exited() {
		t.Error("tgtd still running after close")
	}
	if _, err := os.Stat(fmt.Sprintf("/var/run/tgtd/socket.%d", tg.ctlPort)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tgtd management socket left behind: %v", err)
	}
}

// TestMemBackendOverISCSI serves a MemBackend with the project's iSCSI
// target, as bench/memtarget does, and checks it with real clients.
func TestMemBackendOverISCSI(t *testing.T) {
	needToolsT(t, "qemu-img", "qemu-io")
	ctx, cancel := context.WithCancel(t.Context())
	be, err := NewMemBackend(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := iscsi.New(iscsi.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const iqn = "iqn.2026-11.io.chunkraid:memtest"
	if err := srv.AddTarget(iqn, be, "memtest"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	url := fmt.Sprintf("iscsi://%s/%s/0", ln.Addr(), iqn)
	out, err := runTool(ctx, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0xa7 64k 128k", "-c", "read -P 0xa7 64k 128k", "-c", "read -P 0 0 64k", url)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io: %s", out)
	}
	got := make([]byte, 128<<10)
	if err := be.ReadAt(ctx, got, 64<<10); err != nil {
		t.Fatal(err)
	}
	for i, c := range got {
		if c != 0xa7 {
			t.Fatalf("back end byte %d = %x, want a7", 64<<10+i, c)
		}
	}
	q, err := qemuBench(ctx, url, false, 4096, 8, 2000, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if q.Requests != 2000 || q.Write || q.IOPS() <= 0 {
		t.Errorf("qemu-img bench result %+v", q)
	}
}
