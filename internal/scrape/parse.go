package scrape

import (
	"fmt"
	"io"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Series are the samples of one exposition by metric name: a counter's or
// gauge's value, a histogram's count of observations.
type Series map[string][]Sample

// Sample is one series' labels and value.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Parse reads a text exposition with the Prometheus library's parser.
func Parse(r io.Reader) (Series, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("scrape: parsing the exposition: %w", err)
	}
	out := Series{}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			s := Sample{Labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.Labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Counter != nil:
				s.Value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s.Value = m.GetGauge().GetValue()
			case m.Histogram != nil:
				s.Value = float64(m.GetHistogram().GetSampleCount())
			case m.Untyped != nil:
				s.Value = m.GetUntyped().GetValue()
			}
			out[name] = append(out[name], s)
		}
	}
	return out, nil
}

// Sum adds the values of the series of name whose labels include want.
func (s Series) Sum(name string, want map[string]string) (sum float64, found bool) {
next:
	for _, smp := range s[name] {
		for k, v := range want {
			if smp.Labels[k] != v {
				continue next
			}
		}
		sum, found = sum+smp.Value, true
	}
	return sum, found
}
