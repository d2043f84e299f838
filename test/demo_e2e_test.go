package test

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// TestDemoFromPrivateDirectory runs `chunkraid demo` as a new user would
// from a checkout whose parent directory is mode 0700 (a clone in /root, or
// under mktemp -d): it comes up and serves the demo volume, a second run
// reuses its state, and --clean removes all of it, PostgreSQL's directory
// included.
func TestDemoFromPrivateDirectory(t *testing.T) {
	needTools(t, "qemu-io")
	parent, err := os.MkdirTemp("", "chunkraid-demo-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	checkout := filepath.Join(parent, "chunkraid")
	if err := os.Mkdir(checkout, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(checkout, ".demo")
	pgDir := localcluster.DemoPGDir(dir)
	t.Cleanup(func() { exec.Command(binary, "demo", "--dir", dir, "--clean").Run() })
	if os.Geteuid() == 0 && strings.HasPrefix(pgDir, parent) {
		t.Fatalf("as root the demo's PostgreSQL directory %s is under the 0700 directory %s", pgDir, parent)
	}

	out := runDemo(t, checkout, func(printed string) {
		if !strings.Contains(printed, "Created volume demo") || !strings.Contains(printed, "PostgreSQL: "+pgDir) {
			t.Errorf("first run printed:\n%s", printed)
		}
		url := iscsiURLFrom(t, printed)
		run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 0 1M", url)
	})
	t.Logf("first run:\n%s", out)
	out = runDemo(t, checkout, func(printed string) {
		if !strings.Contains(printed, "Reusing volume demo") {
			t.Errorf("second run did not reuse the volume:\n%s", printed)
		}
		run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5c 0 1M", iscsiURLFrom(t, printed))
		// The printed exports make the printed commands work; without
		// the token they are refused with one line saying where it goes.
		env := exportsFrom(t, printed)
		show := exec.CommandContext(t.Context(), binary, "volume", "show", "demo")
		show.Env = append(os.Environ(), env...)
		if out, err := show.CombinedOutput(); err != nil || !strings.Contains(string(out), "demo") {
			t.Errorf("volume show demo with the printed exports: %v\n%s", err, out)
		}
		bare := exec.CommandContext(t.Context(), binary, "volume", "show", "demo")
		bare.Env = append(os.Environ(), env[0], env[1], "CHUNKRAID_TOKEN=")
		out, err := bare.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "CHUNKRAID_TOKEN") || !strings.Contains(string(out), "--token-file") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("volume show demo without the token: %v\n%s", err, out)
		}
		noCA := exec.CommandContext(t.Context(), binary, "volume", "show", "demo")
		noCA.Env = append(os.Environ(), env[0], "CHUNKRAID_CA=", env[2])
		out, err = noCA.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "CHUNKRAID_CA") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
			t.Errorf("volume show demo without the cluster CA: %v\n%s", err, out)
		}
		t.Logf("without the cluster CA: %s", strings.TrimSpace(string(out)))
		// --hosts 2: host2's portal lists demo at host1's, and a login
		// through it is redirected there.
		m := regexp.MustCompile(`host2, iSCSI portal (\S+)`).FindStringSubmatch(printed)
		if m == nil {
			t.Fatalf("the demo with --hosts 2 does not list host2:\n%s", printed)
		}
		host1 := regexp.MustCompile(`host1, iSCSI portal (\S+)`).FindStringSubmatch(printed)
		if host1 == nil {
			t.Fatalf("the demo does not list host1:\n%s", printed)
		}
		want := "Target:iqn.2026-11.io.chunkraid:demo Portal:" + host1[1] + ",1"
		waitFor(t, 30*time.Second, "host2 to list demo at host1's portal", func() bool {
			out, _ := exec.Command("iscsi-ls", "iscsi://"+m[1]).CombinedOutput()
			return strings.Contains(string(out), want)
		})
		run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5c 0 1M", "iscsi://"+m[1]+"/iqn.2026-11.io.chunkraid:demo/0")
	}, "--hosts", "2")
	if !strings.Contains(out, "Every process stopped cleanly") {
		t.Errorf("second run did not stop cleanly:\n%s", out)
	}

	clean := run(t, binary, "demo", "--dir", dir, "--clean")
	for _, d := range []string{dir, pgDir} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("after --clean %s is still there (%v); it printed:\n%s", d, err, clean)
		}
	}
}

// runDemo starts the demo in checkout on free ports, calls use once it
// printed that it is running, then stops it with SIGINT and returns all it
// printed.
func runDemo(t *testing.T, checkout string, use func(printed string), extra ...string) string {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"demo", "--dir", ".demo", "--meta-port", "0", "--iscsi-port", "0", "--nbd-port", "0",
		"--chunk-size", "64MiB", "--volume-size", "128MiB"}, extra...)...)
	cmd.Dir = checkout
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var printed strings.Builder
	deadline := time.After(2 * time.Minute)
	ready := false
	for !ready {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("the demo exited before it was running:\n%s", printed.String())
			}
			printed.WriteString(l + "\n")
			ready = strings.HasPrefix(l, "Press Ctrl-C")
		case <-deadline:
			cmd.Process.Kill()
			t.Fatalf("the demo was not running after 2 minutes:\n%s", printed.String())
		}
	}
	use(printed.String())
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { err := cmd.Wait(); pw.Close(); done <- err }()
	for l := range lines {
		printed.WriteString(l + "\n")
	}
	if err := <-done; err != nil {
		t.Fatalf("the demo exited with %v:\n%s", err, printed.String())
	}
	return printed.String()
}

// exportsFrom returns the NAME=value of the export lines the demo printed,
// the metaserver's first.
func exportsFrom(t *testing.T, printed string) []string {
	t.Helper()
	var env []string
	for _, l := range strings.Split(printed, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "export "); ok {
			env = append(env, v)
		}
	}
	if len(env) != 3 || !strings.HasPrefix(env[0], "CHUNKRAID_METASERVER=https://") || !strings.HasPrefix(env[1], "CHUNKRAID_CA=/") ||
		!strings.HasPrefix(env[2], "CHUNKRAID_TOKEN=chunkraid_") {
		t.Fatalf("the demo printed exports %q, want CHUNKRAID_METASERVER (https), CHUNKRAID_CA and CHUNKRAID_TOKEN in:\n%s", env, printed)
	}
	return env
}

// iscsiURLFrom returns the demo volume's iSCSI URL from what the demo printed.
func iscsiURLFrom(t *testing.T, printed string) string {
	t.Helper()
	for _, l := range strings.Split(printed, "\n") {
		if f := strings.TrimSpace(l); strings.HasPrefix(f, "iscsi://") {
			return f
		}
	}
	t.Fatalf("no iSCSI URL in:\n%s", printed)
	return ""
}
