package bench

import (
	"fmt"
	"math"
	"slices"
)

// Direction says which way a metric improves.
type Direction int

const (
	// HigherIsBetter is for throughput (IOPS): the target is a lower bound
	// on ours/reference.
	HigherIsBetter Direction = iota
	// LowerIsBetter is for latency: the target is an upper bound on
	// ours/reference.
	LowerIsBetter
)

// Figure is one compared measurement: the samples of our system and of the
// reference, and the ratio the project aims for.
type Figure struct {
	// Group is the pair being compared ("nbd", "mirror", "target", "bitmap").
	Group string
	// Name says what was measured, e.g. "4K randwrite QD1".
	Name string
	// Ours and Reference name the two sides, e.g. "chunkserver", "nbdkit".
	Ours, Reference string
	// Single marks a one-sided figure: our value alone (a resync time),
	// with no reference samples and no ratio.
	Single bool
	// Metric is the measured quantity: "IOPS", "MB/s", "mean latency",
	// "p99 latency", "bytes copied", "time".
	Metric string
	// Unit formats the samples: "IOPS", "MB/s", "µs", "MiB" or "s".
	Unit string
	// Direction says whether a higher or a lower ratio is better.
	Direction Direction
	// Target is the ratio ours/reference the project aims for; 0 means the
	// figure is for information only.
	Target float64
	// OurSamples and RefSamples hold one value per run, in run order.
	OurSamples, RefSamples []float64
	// Err is set when the figure could not be measured (a tool failed);
	// the samples taken before the failure are kept.
	Err error
	// Unavailable, when non-empty, says why the figure was not measured at
	// all (the feature does not exist yet); the row is still reported.
	Unavailable string
}

// Median returns the median of xs (the mean of the middle two for an even
// count), or NaN for no samples.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Measured reports whether both sides have at least one sample and no error
// or unavailability was recorded.
func (f *Figure) Measured() bool {
	return f.Unavailable == "" && f.Err == nil && len(f.OurSamples) > 0 && (f.OneSided() || len(f.RefSamples) > 0)
}

// OneSided reports whether the figure has no reference side.
func (f *Figure) OneSided() bool { return f.Single }

// Ratio is median(ours) / median(reference), NaN if not measured.
func (f *Figure) Ratio() float64 {
	if !f.Measured() || f.OneSided() {
		return math.NaN()
	}
	ref := Median(f.RefSamples)
	if ref == 0 {
		return math.NaN()
	}
	return Median(f.OurSamples) / ref
}

// RatioSpread is the lowest and the highest ratio of one round,
// OurSamples[i] / RefSamples[i] over the rounds both sides measured: how
// far apart the rounds are, which the median hides. ok is false when there
// is no such pair.
func (f *Figure) RatioSpread() (lo, hi float64, ok bool) {
	if !f.Measured() || f.OneSided() {
		return 0, 0, false
	}
	for i := range min(len(f.OurSamples), len(f.RefSamples)) {
		if f.RefSamples[i] == 0 {
			continue
		}
		r := f.OurSamples[i] / f.RefSamples[i]
		if !ok || r < lo {
			lo = r
		}
		if !ok || r > hi {
			hi = r
		}
		ok = true
	}
	return lo, hi, ok
}

// Met reports whether the ratio meets the target. A figure without a
// target, or not measured, is never met.
func (f *Figure) Met() bool {
	r := f.Ratio()
	if f.Target == 0 || math.IsNaN(r) {
		return false
	}
	if f.Direction == LowerIsBetter {
		return r <= f.Target
	}
	return r >= f.Target
}

// TargetText renders the target as "≥ 0.80×" or "≤ 2.50×", or "—".
func (f *Figure) TargetText() string {
	if f.Target == 0 {
		return "—"
	}
	if f.Direction == LowerIsBetter {
		return fmt.Sprintf("≤ %.2f×", f.Target)
	}
	return fmt.Sprintf("≥ %.2f×", f.Target)
}

// Verdict is the result column: "met", "missed", "info", "not available
// yet" or "error".
func (f *Figure) Verdict() string {
	switch {
	case f.Unavailable != "":
		return "not available yet"
	case f.Err != nil:
		return "error"
	case !f.Measured():
		return "not measured"
	case f.OneSided() || f.Target == 0:
		return "info"
	case math.IsNaN(f.Ratio()):
		return "not measured"
	case f.Met():
		return "met"
	default:
		return "missed"
	}
}

// FormatValue renders one sample or median in the figure's unit.
func (f *Figure) FormatValue(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	switch f.Unit {
	case "IOPS":
		if v >= 10000 {
			return fmt.Sprintf("%.1fk", v/1000)
		}
		return fmt.Sprintf("%.0f", v)
	case "µs":
		return fmt.Sprintf("%.1f µs", v)
	case "MB/s":
		return fmt.Sprintf("%.0f MB/s", v)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	case "s":
		return fmt.Sprintf("%.2f s", v)
	default:
		return fmt.Sprintf("%.3g %s", v, f.Unit)
	}
}
