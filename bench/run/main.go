// Command run is `make bench`: it measures chunkraid and the reference
// systems (nbdkit, tgtd) on this machine in one invocation and prints a
// Markdown table of ratios, also written to bench/results/latest.md. See
// package bench for what is measured and how.
//
//	go run ./bench/run [-rev HEAD] [-runs 3] [-runtime 5s] [-groups nbd,mirror,target,bitmap] [-profile]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chunkraid/chunkraid/bench"
)

func main() {
	var (
		cfg    bench.Config
		groups string
	)
	flag.StringVar(&cfg.Repo, "repo", ".", "chunkraid module root")
	flag.StringVar(&cfg.Rev, "rev", "", "build this git revision (e.g. HEAD) instead of the work tree")
	flag.StringVar(&cfg.TempDir, "tmp", "/tmp", "parent of the work directory (cluster, reference files)")
	flag.StringVar(&cfg.ResultsDir, "results", "", "directory for latest.md and profiles (default REPO/bench/results)")
	flag.IntVar(&cfg.Runs, "runs", 3, "runs per side and figure; the median is reported")
	flag.DurationVar(&cfg.RunTime, "runtime", 5*time.Second, "length of one run")
	flag.DurationVar(&cfg.Timeout, "timeout", 15*time.Minute, "bound on the whole invocation")
	flag.StringVar(&groups, "groups", strings.Join(bench.AllGroups, ","), "comma-separated groups to measure")
	flag.BoolVar(&cfg.Profile, "profile", false, "after measuring, profile our daemons under load (perf)")
	flag.Parse()
	cfg.Groups = strings.Split(groups, ",")
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	// Ctrl-C cancels the context: the runner then stops every process it
	// started and removes its files before returning.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	r, err := bench.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	start := time.Now()
	if _, err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "bench: done in %v\n", time.Since(start).Round(time.Second))
}
