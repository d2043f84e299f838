// Command run is `make bench`: it measures chunkraid and the reference
// systems (nbdkit, tgtd) on this machine in one invocation and prints a
// Markdown table of ratios, also written to bench/results/latest.md. See
// package bench for what is measured and how.
//
//	go run ./bench/run [-rev HEAD] [-runs 5] [-runtime 2s] [-groups nbd,volume,target,bitmap,resync,rebuild] [-profile]
//
// With -rev, the revision is exported (git archive) to a temporary
// directory and this program, built from that revision, runs there, so that
// the driver, the cluster launcher and the daemons all come from the same
// commit, whatever state the work tree is in.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chunkraid/chunkraid/bench"
)

func main() {
	var (
		cfg    bench.Config
		groups string
		rev    string
	)
	flag.StringVar(&cfg.Repo, "repo", ".", "chunkraid module root")
	flag.StringVar(&rev, "rev", "", "measure this git revision (e.g. HEAD) instead of the work tree")
	flag.StringVar(&cfg.Source, "source", "", "description of the source measured (default: from git)")
	flag.StringVar(&cfg.TempDir, "tmp", "/tmp", "parent of the work directory (cluster, reference files)")
	flag.StringVar(&cfg.ResultsDir, "results", "", "directory for latest.md and profiles (default REPO/bench/results)")
	flag.IntVar(&cfg.Runs, "runs", 5, "runs per side and figure; the median is reported with the spread of the rounds' ratios")
	flag.DurationVar(&cfg.RunTime, "runtime", 2*time.Second, "length of one run")
	flag.DurationVar(&cfg.Timeout, "timeout", 20*time.Minute, "bound on the whole invocation")
	flag.StringVar(&groups, "groups", strings.Join(bench.AllGroups, ","), "comma-separated groups to measure")
	flag.BoolVar(&cfg.Profile, "profile", false, "after measuring, profile our daemons under load (perf)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the work directory (logs, perf data) after stopping every process")
	flag.Parse()
	cfg.Groups = strings.Split(groups, ",")
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	// Ctrl-C cancels the context: the runner then stops every process it
	// started and removes its files before returning.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	if rev != "" {
		if err := runRev(ctx, cfg, rev, groups); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "bench: %s exported, built and measured in %v\n", rev, time.Since(start).Round(time.Second))
		return
	}
	if cfg.Source == "" {
		cfg.Source = describeWorkTree(ctx, cfg.Repo)
	}
	if err := measure(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bench: done in %v\n", time.Since(start).Round(time.Second))
}

func measure(ctx context.Context, cfg bench.Config) error {
	r, err := bench.New(cfg)
	if err != nil {
		return err
	}
	_, err = r.Run(ctx)
	return err
}

func git(ctx context.Context, repo string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", append([]string{"-C", repo}, args...)...).Output()
	return strings.TrimSpace(string(out)), err
}

// describeWorkTree names the commit under the work tree and whether it has
// local changes.
func describeWorkTree(ctx context.Context, repo string) string {
	head, err := git(ctx, repo, "log", "-1", "--format=%h %s")
	if err != nil {
		return "work tree (not a git repository)"
	}
	changed, _ := git(ctx, repo, "status", "--porcelain", "--untracked-files=no")
	if changed == "" {
		return "work tree at " + head
	}
	return fmt.Sprintf("work tree at %s, with %d modified files", head, len(strings.Split(changed, "\n")))
}

// runRev exports rev into a temporary directory, builds this program there
// and runs it on that tree, with results written to this tree's results
// directory. Ctrl-C reaches the child, which cleans up; the export is
// removed afterwards.
func runRev(ctx context.Context, cfg bench.Config, rev, groups string) error {
	repo, err := filepath.Abs(cfg.Repo)
	if err != nil {
		return err
	}
	results := cfg.ResultsDir
	if results == "" {
		results = filepath.Join(repo, "bench", "results")
	}
	if results, err = filepath.Abs(results); err != nil {
		return err
	}
	desc, err := git(ctx, repo, "log", "-1", "--format=%h %s", rev)
	if err != nil {
		return fmt.Errorf("git revision %q: %w", rev, err)
	}
	src, err := os.MkdirTemp(cfg.TempDir, "chunkraid-bench-src-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	export := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", repo, rev, src)
	if out, err := export.CombinedOutput(); err != nil {
		return fmt.Errorf("exporting %s: %w\n%s", rev, err, out)
	}
	driver := filepath.Join(src, "bench-run")
	build := exec.CommandContext(ctx, "go", "build", "-o", driver, "./bench/run")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the driver of %s: %w\n%s", rev, err, out)
	}
	args := []string{"-repo", src, "-source", "git revision " + desc, "-tmp", cfg.TempDir, "-results", results,
		"-runs", strconv.Itoa(cfg.Runs), "-runtime", cfg.RunTime.String(), "-timeout", cfg.Timeout.String(),
		"-groups", groups, "-profile=" + strconv.FormatBool(cfg.Profile), "-keep=" + strconv.FormatBool(cfg.Keep)}
	cmd := exec.Command(driver, args...)
	cmd.Dir = src
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The child shares the terminal's process group and so had the
		// same Ctrl-C; SIGTERM covers a signal sent to this process alone.
		// It stops its daemons and exits; wait for it.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			<-done
		}
		return errors.New("interrupted")
	}
}
