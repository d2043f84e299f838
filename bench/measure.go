package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// createVolume creates a volume of the given layout attached to the
// cluster's host, through the CLI so that flags such as --bitmap are what an
// operator uses, and, if waitTarget, waits until the host serves it.
func (r *Runner) createVolume(ctx context.Context, name, layout string, size int64, waitTarget bool, extra ...string) (*api.Volume, error) {
	return r.createVolumeOn(ctx, r.cluster, name, layout, size, waitTarget, extra...)
}

// createVolumeOn is createVolume on cluster c.
func (r *Runner) createVolumeOn(ctx context.Context, c *localcluster.Cluster, name, layout string, size int64, waitTarget bool, extra ...string) (*api.Volume, error) {
	args := append([]string{"volume", "create", name,
		"--size", fmt.Sprint(size), "--layout", layout, "--host", c.HostName}, extra...)
	if _, err := runTool(ctx, time.Minute, r.bin, cliArgs(c, args...)...); err != nil {
		return nil, err
	}
	if waitTarget {
		if err := c.WaitTarget(ctx, name, time.Minute); err != nil {
			return nil, err
		}
	}
	return c.Client().GetVolume(ctx, name)
}

// cliArgs puts before args what every CLI command to cluster c needs: its
// metaserver, the cluster CA that verifies it, and the admin token.
func cliArgs(c *localcluster.Cluster, args ...string) []string {
	return append([]string{"--metaserver", c.MetaURL, "--ca-file", c.CAFile(), "--token-file", c.TokenFile()}, args...)
}

// cliHasFlag reports whether `chunkraid <cmd...> --help` lists flag.
func (r *Runner) cliHasFlag(ctx context.Context, flag string, cmd ...string) bool {
	out, err := runTool(ctx, 30*time.Second, r.bin, append(cmd, "--help")...)
	return err == nil && strings.Contains(out, flag)
}

// side is one system under test in an alternating measurement. One run
// returns one value per metric; value i is appended to every slice in
// dst[i]. An error marks every figure in figs and ends this side's runs.
type side struct {
	name string
	run  func(context.Context) ([]float64, error)
	dst  [][]*[]float64
	figs []*Figure
}

// alternate runs the sides in turn, Runs rounds: a, b, c, a, b, c, ... so
// that drift on the machine falls on all of them. Only an interruption
// (ctx) is returned; a failed side is recorded on its figures.
func (r *Runner) alternate(ctx context.Context, label string, sides []*side) error {
	failed := make([]bool, len(sides))
	for i := range r.cfg.Runs {
		for j, s := range sides {
			if failed[j] {
				continue
			}
			vs, err := s.run(ctx)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err == nil && len(vs) != len(s.dst) {
				err = fmt.Errorf("%d values for %d metrics", len(vs), len(s.dst))
			}
			if err != nil {
				failed[j] = true
				for _, f := range s.figs {
					if f.Err == nil {
						f.Err = fmt.Errorf("%s, run %d: %w", s.name, i+1, err)
					}
				}
				r.log.Error("run failed", "figure", label, "side", s.name, "err", err)
				continue
			}
			for k, v := range vs {
				for _, d := range s.dst[k] {
					*d = append(*d, v)
				}
			}
			r.log.Info("run", "figure", label, "side", s.name, "run", i+1, "values", fmt.Sprint(vs))
		}
	}
	return nil
}

// add appends figures to the report, in order.
func (r *Runner) add(fs ...*Figure) { r.report.Figures = append(r.report.Figures, fs...) }

// logFigures logs the outcome of figures just measured.
func (r *Runner) logFigures(fs ...*Figure) {
	for _, f := range fs {
		r.log.Info("figure", "figure", f.Title(), "metric", f.Metric, "ours", f.FormatValue(Median(f.OurSamples)),
			"ref", f.FormatValue(Median(f.RefSamples)), "ratio", fmt.Sprintf("%.2f", f.Ratio()), "result", f.Verdict())
	}
}

func iopsFigure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "IOPS", Unit: "IOPS",
		Direction: HigherIsBetter, Target: target}
}

func bwFigure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "MB/s", Unit: "MB/s",
		Direction: HigherIsBetter, Target: target}
}

func latencyFigure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "mean latency", Unit: "µs",
		Direction: LowerIsBetter, Target: target}
}

func p99Figure(group, name, ours, ref string, target float64) *Figure {
	return &Figure{Group: group, Name: name, Ours: ours, Reference: ref, Metric: "p99 latency", Unit: "µs",
		Direction: LowerIsBetter, Target: target}
}

// randomOffsets returns n distinct 4 KiB-aligned offsets below size, the
// same for the same seed: every side of a figure gets the same list.
func randomOffsets(seed uint64, n int, size int64) []int64 {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	blocks := size / 4096
	n = int(min(int64(n), blocks))
	seen := make(map[int64]bool, n)
	out := make([]int64, 0, n)
	for len(out) < n {
		b := rng.Int64N(blocks)
		if !seen[b] {
			seen[b] = true
			out = append(out, b*4096)
		}
	}
	return out
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// geoMean is the geometric mean of positive counts.
func geoMean(ns []int) int {
	s := 0.0
	for _, n := range ns {
		s += math.Log(float64(max(n, 1)))
	}
	return int(math.Exp(s / float64(len(ns))))
}
