package test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// binary is the chunkraid binary built once for the whole test run.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test here starts real processes, except a few that need
		// no binary: they run, the others skip.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "chunkraid-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "chunkraid")
	build := exec.Command("go", "build", "-race", "-o", binary, "../cli/chunkraid")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building chunkraid:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needTools fails the test if a real client is missing.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real process: not in -short (make test runs it)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run make deps", tool)
		}
	}
}

// startCluster runs a cluster with small chunks in a fresh directory. The
// directory lives under /tmp with world-traversable parents so that the
// postgres user can reach its data directory.
func startCluster(t *testing.T, chunkSize int64) *localcluster.Cluster {
	t.Helper()
	return startClusterOpts(t, localcluster.Options{ChunkSize: chunkSize})
}

// startClusterOpts is startCluster with every option.
func startClusterOpts(t *testing.T, opt localcluster.Options) *localcluster.Cluster {
	t.Helper()
	needTools(t, "iscsi-ls", "qemu-io")
	dir, err := os.MkdirTemp("/tmp", "chunkraid-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opt.Dir, opt.Binary = dir, binary
	c, err := localcluster.Start(ctx, opt)
	if err != nil {
		if c != nil {
			dumpLogs(t, dir)
		}
		t.Fatalf("starting cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stopping cluster: %v", err)
		}
		if t.Failed() {
			dumpLogs(t, dir)
			t.Logf("cluster state kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
		c.RemoveWIBs()
	})
	return c
}

func dumpLogs(t *testing.T, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("==== %s (last %d lines)\n%s", filepath.Base(l), len(lines), strings.Join(lines, "\n"))
	}
}

// run executes a command and returns its combined output; a non-zero exit
// fails the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cli runs the chunkraid CLI against the cluster.
func cli(t *testing.T, c *localcluster.Cluster, args ...string) string {
	t.Helper()
	return run(t, binary, append([]string{"--metaserver", c.MetaList(), "--ca-file", c.CAFile(), "--token-file", c.TokenFile()}, args...)...)
}

// cliFail runs the CLI expecting a non-zero exit and returns its output.
func cliFail(t *testing.T, c *localcluster.Cluster, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), binary, append([]string{"--metaserver", c.MetaList(), "--ca-file", c.CAFile(), "--token-file", c.TokenFile()}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err == nil {
		t.Fatalf("chunkraid %v succeeded, want an error; output:\n%s", args, out.String())
	}
	return out.String()
}
