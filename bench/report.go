package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Report is the outcome of one benchmark invocation.
type Report struct {
	Started time.Time
	Elapsed time.Duration
	Runs    int
	RunTime time.Duration
	// Env describes the machine and the versions of the tools, one line each.
	Env []string
	// Figures in the order they were measured.
	Figures []*Figure
	// Notes explain how some figures were taken (what stands in for what).
	Notes []string
	// Profiles lists files with CPU profiles taken after the measurements.
	Profiles []string
}

// Markdown writes the report: a summary table (medians, ratio, target,
// result), the individual runs, the notes and the environment.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# chunkraid benchmark\n\n")
	fmt.Fprintf(&b, "Run %s, took %s. Each figure is the median of %d runs of about %s, ours and reference alternating; "+
		"the spread is the lowest and the highest ratio of one round.\n\n",
		r.Started.Format("2006-01-02 15:04 MST"), r.Elapsed.Round(time.Second), r.Runs, r.RunTime)
	b.WriteString("| measurement | metric | ours | reference | ours / ref | spread | target | result |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---|---|\n")
	for _, f := range r.Figures {
		ratio, spread := "—", "—"
		if x := f.Ratio(); !math.IsNaN(x) {
			ratio = fmt.Sprintf("%.2f×", x)
		}
		if lo, hi, ok := f.RatioSpread(); ok {
			spread = fmt.Sprintf("%.2f–%.2f×", lo, hi)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			esc(f.Title()), esc(f.Metric),
			f.FormatValue(Median(f.OurSamples)), f.FormatValue(Median(f.RefSamples)),
			ratio, spread, f.TargetText(), esc(verdictText(f)))
	}
	b.WriteString("\n## Runs\n\n| measurement | metric | ours, per run | reference, per run |\n|---|---|---|---|\n")
	for _, f := range r.Figures {
		if f.Unavailable != "" {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", esc(f.Title()), esc(f.Metric), runs(f, f.OurSamples), runs(f, f.RefSamples))
	}
	var problems []string
	for _, f := range r.Figures {
		switch {
		case f.Unavailable != "":
			problems = append(problems, fmt.Sprintf("- %s: %s: not available yet: %s", f.Group, f.Name, f.Unavailable))
		case f.Err != nil:
			problems = append(problems, fmt.Sprintf("- %s: %s: %v", f.Group, f.Name, oneLine(f.Err.Error())))
		}
	}
	if len(problems) > 0 {
		b.WriteString("\n## Not measured\n\n" + strings.Join(problems, "\n") + "\n")
	}
	if len(r.Notes) > 0 {
		b.WriteString("\n## How\n\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	if len(r.Profiles) > 0 {
		b.WriteString("\n## Profiles\n\n")
		for _, p := range r.Profiles {
			b.WriteString("- " + p + "\n")
		}
	}
	if len(r.Env) > 0 {
		b.WriteString("\n## Machine\n\n")
		for _, e := range r.Env {
			b.WriteString("- " + e + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Title names the figure in one line: "group: ours vs reference, name".
func (f *Figure) Title() string {
	if f.OneSided() {
		return fmt.Sprintf("%s: %s, %s", f.Group, f.Ours, f.Name)
	}
	return fmt.Sprintf("%s: %s vs %s, %s", f.Group, f.Ours, f.Reference, f.Name)
}

// jsonFigure is one figure in the JSON report. Medians, ratio and target
// are null when there is none.
type jsonFigure struct {
	Group         string    `json:"group"`
	Name          string    `json:"name"`
	Title         string    `json:"title"`
	Metric        string    `json:"metric"`
	Unit          string    `json:"unit"`
	OursSide      string    `json:"ours_side"`
	ReferenceSide string    `json:"reference_side,omitempty"`
	Ours          *float64  `json:"ours"`
	Reference     *float64  `json:"reference"`
	Ratio         *float64  `json:"ratio"`
	RatioMin      *float64  `json:"ratio_min"` // the lowest ratio of one round
	RatioMax      *float64  `json:"ratio_max"` // the highest
	Target        *float64  `json:"target"`
	Better        string    `json:"better"` // "higher" or "lower"
	Verdict       string    `json:"verdict"`
	OursRuns      []float64 `json:"ours_runs"`
	ReferenceRuns []float64 `json:"reference_runs"`
	Error         string    `json:"error,omitempty"`
	Unavailable   string    `json:"unavailable,omitempty"`
}

type jsonReport struct {
	Started        time.Time    `json:"started"`
	ElapsedSeconds float64      `json:"elapsed_seconds"`
	Runs           int          `json:"runs"`
	RunSeconds     float64      `json:"run_seconds"`
	Figures        []jsonFigure `json:"figures"`
	Notes          []string     `json:"notes"`
	Profiles       []string     `json:"profiles,omitempty"`
	Machine        []string     `json:"machine"`
}

// num is nil for NaN (no value), else a pointer to x.
func num(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

// JSON writes every figure of the report, with its per-run values, as one
// indented JSON object.
func (r *Report) JSON(w io.Writer) error {
	doc := jsonReport{Started: r.Started.UTC(), ElapsedSeconds: r.Elapsed.Seconds(), Runs: r.Runs,
		RunSeconds: r.RunTime.Seconds(), Figures: []jsonFigure{}, Notes: r.Notes, Profiles: r.Profiles, Machine: r.Env}
	for _, f := range r.Figures {
		jf := jsonFigure{Group: f.Group, Name: f.Name, Title: f.Title(), Metric: f.Metric, Unit: f.Unit,
			OursSide: f.Ours, ReferenceSide: f.Reference,
			Ours: num(Median(f.OurSamples)), Reference: num(Median(f.RefSamples)), Ratio: num(f.Ratio()),
			Better: "higher", Verdict: f.Verdict(), OursRuns: f.OurSamples, ReferenceRuns: f.RefSamples,
			Unavailable: f.Unavailable}
		if f.Direction == LowerIsBetter {
			jf.Better = "lower"
		}
		if lo, hi, ok := f.RatioSpread(); ok {
			jf.RatioMin, jf.RatioMax = num(lo), num(hi)
		}
		if f.Target != 0 {
			jf.Target = num(f.Target)
		}
		if jf.OursRuns == nil {
			jf.OursRuns = []float64{}
		}
		if jf.ReferenceRuns == nil {
			jf.ReferenceRuns = []float64{}
		}
		if f.Err != nil {
			jf.Error = f.Err.Error()
		}
		doc.Figures = append(doc.Figures, jf)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func verdictText(f *Figure) string {
	v := f.Verdict()
	if f.Unavailable != "" {
		return v + " (" + f.Unavailable + ")"
	}
	return v
}

func runs(f *Figure, xs []float64) string {
	if len(xs) == 0 {
		return "—"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = f.FormatValue(x)
	}
	return strings.Join(s, ", ")
}

// esc keeps a cell on one table row.
func esc(s string) string {
	return strings.ReplaceAll(oneLine(s), "|", `\|`)
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	return s
}
