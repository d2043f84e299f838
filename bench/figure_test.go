package bench

import (
	"errors"
	"math"
	"testing"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		want float64
	}{
		{"one", []float64{7}, 7},
		{"odd unsorted", []float64{9, 1, 5}, 5},
		{"even takes the mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"outlier does not move it", []float64{100, 101, 1e9}, 101},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.xs...)
			if got := Median(tt.xs); got != tt.want {
				t.Errorf("Median(%v) = %v, want %v", tt.xs, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("Median reordered its input: %v, was %v", tt.xs, in)
				}
			}
		})
	}
	if !math.IsNaN(Median(nil)) {
		t.Error("Median(nil) is not NaN")
	}
}

func TestFigureVerdict(t *testing.T) {
	tests := []struct {
		name      string
		f         Figure
		ratio     float64 // NaN: not measured
		verdict   string
		met       bool
		targetTxt string
	}{
		{"throughput met", Figure{Target: 0.8, OurSamples: []float64{90, 80, 85}, RefSamples: []float64{100, 100, 100}},
			0.85, "met", true, "≥ 0.80×"},
		{"throughput missed", Figure{Target: 0.8, OurSamples: []float64{70, 75, 79}, RefSamples: []float64{100, 90, 110}},
			0.75, "missed", false, "≥ 0.80×"},
		{"throughput exactly at target", Figure{Target: 0.5, OurSamples: []float64{50}, RefSamples: []float64{100}},
			0.5, "met", true, "≥ 0.50×"},
		{"latency met", Figure{Direction: LowerIsBetter, Target: 2.5, OurSamples: []float64{200}, RefSamples: []float64{100}},
			2, "met", true, "≤ 2.50×"},
		{"latency missed", Figure{Direction: LowerIsBetter, Target: 2.5, OurSamples: []float64{300}, RefSamples: []float64{100}},
			3, "missed", false, "≤ 2.50×"},
		{"information only", Figure{OurSamples: []float64{1}, RefSamples: []float64{2}},
			0.5, "info", false, "—"},
		{"unavailable", Figure{Target: 0.95, Unavailable: "no --bitmap"},
			math.NaN(), "not available yet", false, "≥ 0.95×"},
		{"error keeps partial samples but no ratio", Figure{Target: 1, OurSamples: []float64{5}, Err: errors.New("boom")},
			math.NaN(), "error", false, "≥ 1.00×"},
		{"one side missing", Figure{Target: 1, OurSamples: []float64{5}},
			math.NaN(), "not measured", false, "≥ 1.00×"},
		{"one-sided figure is information without a ratio", Figure{Single: true, OurSamples: []float64{3}},
			math.NaN(), "info", false, "—"},
		{"one-sided figure without samples", Figure{Single: true},
			math.NaN(), "not measured", false, "—"},
		{"zero reference", Figure{Target: 1, OurSamples: []float64{5}, RefSamples: []float64{0}},
			math.NaN(), "not measured", false, "≥ 1.00×"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.f.Ratio()
			if math.IsNaN(tt.ratio) != math.IsNaN(r) || (!math.IsNaN(r) && math.Abs(r-tt.ratio) > 1e-9) {
				t.Errorf("Ratio = %v, want %v", r, tt.ratio)
			}
			if got := tt.f.Verdict(); got != tt.verdict {
				t.Errorf("Verdict = %q, want %q", got, tt.verdict)
			}
			if got := tt.f.Met(); got != tt.met {
				t.Errorf("Met = %v, want %v", got, tt.met)
			}
			if got := tt.f.TargetText(); got != tt.targetTxt {
				t.Errorf("TargetText = %q, want %q", got, tt.targetTxt)
			}
		})
	}
}

func TestFormatValue(t *testing.T) {
	tests := []struct {
		unit string
		v    float64
		want string
	}{
		{"IOPS", 45231.7, "45.2k"},
		{"IOPS", 4312.4, "4312"},
		{"µs", 231.04, "231.0 µs"},
		{"MB/s", 1234.4, "1234 MB/s"},
		{"MiB", 64, "64.0 MiB"},
		{"s", 1.234, "1.23 s"},
		{"ops", 1234.5, "1.23e+03 ops"},
		{"IOPS", math.NaN(), "—"},
	}
	for _, tt := range tests {
		f := Figure{Unit: tt.unit}
		if got := f.FormatValue(tt.v); got != tt.want {
			t.Errorf("FormatValue(%v %s) = %q, want %q", tt.v, tt.unit, got, tt.want)
		}
	}
}
