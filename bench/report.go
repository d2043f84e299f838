package bench

import (
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
	fmt.Fprintf(&b, "Run %s, took %s. Each figure is the median of %d runs of about %s, ours and reference alternating.\n\n",
		r.Started.Format("2006-01-02 15:04 MST"), r.Elapsed.Round(time.Second), r.Runs, r.RunTime)
	b.WriteString("| measurement | metric | ours | reference | ours / ref | target | result |\n")
	b.WriteString("|---|---|---:|---:|---:|---|---|\n")
	for _, f := range r.Figures {
		ratio := "—"
		if x := f.Ratio(); !math.IsNaN(x) {
			ratio = fmt.Sprintf("%.2f×", x)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n",
			esc(fmt.Sprintf("%s: %s vs %s, %s", f.Group, f.Ours, f.Reference, f.Name)), esc(f.Metric),
			f.FormatValue(Median(f.OurSamples)), f.FormatValue(Median(f.RefSamples)),
			ratio, f.TargetText(), esc(verdictText(f)))
	}
	b.WriteString("\n## Runs\n\n| measurement | ours, per run | reference, per run |\n|---|---|---|\n")
	for _, f := range r.Figures {
		if f.Unavailable != "" {
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", esc(f.Group+": "+f.Name), runs(f, f.OurSamples), runs(f, f.RefSamples))
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
