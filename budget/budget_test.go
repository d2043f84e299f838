package budget

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	s := time.Second
	tests := []struct {
		name             string
		tIO, offline, T  time.Duration
		rules            []string
		messageFragments []string
	}{
		{"defaults", 5 * s, 10 * s, 60 * s, nil, nil},
		{"T exactly 3 t_io", 5 * s, 10 * s, 15 * s, nil, nil},
		{"fast test cluster", 200 * time.Millisecond, 2 * s, 3 * s, nil, nil},
		{"T just under 3 t_io", 5 * s, 10 * s, 15*s - time.Nanosecond, []string{"T >= 3*t_io"},
			[]string{"T=14.999999999s must be at least 3×t_io=15s", "DESIGN rule 1"}},
		{"the brief's example", 1 * s, 1500 * time.Millisecond, 2 * s, []string{"T >= 3*t_io"},
			[]string{"LOG rotation period T=2s must be at least 3×t_io=3s (DESIGN rule 1: bounded in-flight time)"}},
		{"t_io not below offline_after", 10 * s, 10 * s, 60 * s, []string{"t_io < offline_after"},
			[]string{"t_io=10s must be less than offline_after=10s"}},
		{"T not above offline_after", 1 * s, 10 * s, 10 * s, []string{"T > offline_after"},
			[]string{"T=10s must exceed offline_after=10s"}},
		{"T below t_io", 5 * s, 10 * s, 2 * s, []string{"T >= 3*t_io", "T > offline_after"}, nil},
		{"zero t_io", 0, 10 * s, 60 * s, []string{"t_io > 0"}, nil},
		{"negative everything", -1, -1, -1, []string{"t_io > 0", "offline_after > 0", "T > 0"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.tIO, tt.offline, tt.T)
			if len(tt.rules) == 0 {
				if err != nil {
					t.Fatalf("Validate(%v, %v, %v) = %v", tt.tIO, tt.offline, tt.T, err)
				}
				return
			}
			if !errors.Is(err, ErrBudget) {
				t.Fatalf("Validate(%v, %v, %v) = %v, want ErrBudget", tt.tIO, tt.offline, tt.T, err)
			}
			var got []string
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
				var be *Error
				if !errors.As(e, &be) {
					t.Fatalf("%v is not a *Error", e)
				}
				got = append(got, be.Rule)
			}
			if strings.Join(got, ",") != strings.Join(tt.rules, ",") {
				t.Fatalf("broken rules %q, want %q", got, tt.rules)
			}
			for _, f := range tt.messageFragments {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("message %q does not contain %q", err.Error(), f)
				}
			}
		})
	}
}

func TestValidateHostFailover(t *testing.T) {
	if err := ValidateHostFailover(10*time.Second, 30*time.Second); err != nil {
		t.Errorf("defaults: %v", err)
	}
	err := ValidateHostFailover(10*time.Second, 10*time.Second)
	var be *Error
	if !errors.As(err, &be) || be.Rule != "offline_after < host_failover_after" || !errors.Is(err, ErrBudget) ||
		!strings.Contains(err.Error(), "host_failover_after=10s must exceed offline_after=10s") {
		t.Errorf("failover at offline_after: %v", err)
	}
}
