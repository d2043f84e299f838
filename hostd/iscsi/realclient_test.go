package iscsi

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needTool returns the path of a real client binary or fails the test:
// these clients are installed by `make deps`, and their absence is an error
// of the machine, not a reason to pass.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run make deps (it installs libiscsi-bin and qemu-utils)", name)
	}
	return p
}

// runTool runs a client with a deadline and returns its combined output.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Errorf("%s %s: timed out after %v", name, strings.Join(args, " "), timeout)
	}
	return string(out), err
}

func lunURL(addr string) string { return "iscsi://" + addr + "/" + testIQN + "/0" }

const initiatorIQN = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test"

func TestRealClientDiscoveryAndInquiry(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 64<<20)

	out, err := runTool(t, 30*time.Second, "iscsi-ls", "-i", initiatorIQN, "iscsi://"+addr)
	if err != nil {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Target:"+testIQN) || !strings.Contains(out, "Portal:"+addr+",1") {
		t.Errorf("iscsi-ls output lacks the target and portal:\n%s", out)
	}

	out, err = runTool(t, 30*time.Second, "iscsi-inq", "-i", initiatorIQN, lunURL(addr))
	if err != nil {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	for _, want := range []string{"Peripheral Device Type:DIRECT_ACCESS", "Vendor:CHUNKRD", "Product:chunkraid volume"} {
		if !strings.Contains(strings.ReplaceAll(out, " ", ""), strings.ReplaceAll(want, " ", "")) {
			t.Errorf("iscsi-inq output lacks %q:\n%s", want, out)
		}
	}

	out, err = runTool(t, 30*time.Second, "iscsi-inq", "-i", initiatorIQN, "-e", "1", "-c", "128", lunURL(addr))
	if err != nil || !strings.Contains(out, "demo-serial-0001") {
		t.Errorf("iscsi-inq unit serial page: %v\n%s", err, out)
	}

	out, err = runTool(t, 30*time.Second, "iscsi-readcapacity16", "-i", initiatorIQN, lunURL(addr))
	if err != nil || !strings.Contains(out, "RETURNED LOGICAL BLOCK ADDRESS:131071") {
		t.Errorf("iscsi-readcapacity16: %v\n%s", err, out)
	}
}

func TestRealClientQemuIO(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 64<<20)
	out, err := runTool(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M",
		"-c", "write -P 0x5c 3M 4k", "-c", "read -P 0x5c 3M 4k", "-c", "flush",
		lunURL(addr))
	if err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	if got := be.snapshot(0, 1<<20); !bytes.Equal(got, bytes.Repeat([]byte{0xab}, 1<<20)) {
		t.Errorf("back end does not hold the pattern written through qemu-io")
	}
	if be.flushes.Load() == 0 {
		t.Errorf("qemu-io flush did not reach the back end")
	}
}

func TestRealClientQemuImgBench(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 64<<20)
	out, err := runTool(t, 120*time.Second, "qemu-img", "bench", "-f", "raw", "-w", "-s", "4096", "-d", "32", "-c", "20000", lunURL(addr))
	if err != nil {
		t.Fatalf("qemu-img bench: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Run completed in ([0-9.]+) seconds`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("qemu-img bench did not complete:\n%s", out)
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("qemu-img bench 4K write QD32: 20000 requests in %.2f s (%.0f IOPS)", secs, 20000/secs)
}

func TestRealClientQemuImgConvert(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 8<<20)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.img")
	outPath := filepath.Join(dir, "out.img")
	data := make([]byte, 8<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runTool(t, 60*time.Second, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", in, lunURL(addr)); err != nil {
		t.Fatalf("qemu-img convert onto the LUN: %v\n%s", err, out)
	}
	if out, err := runTool(t, 60*time.Second, "qemu-img", "convert", "-f", "raw", "-O", "raw", lunURL(addr), outPath); err != nil {
		t.Fatalf("qemu-img convert from the LUN: %v\n%s", err, out)
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("bytes read back through the LUN differ from those written (%d vs %d bytes)", len(got), len(data))
	}
}
