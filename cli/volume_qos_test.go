package cli

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestQoSFlags(t *testing.T) {
	for _, tt := range []struct {
		args     []string
		want     api.QoS
		contains string // "" means valid
	}{
		{nil, api.QoS{}, ""},
		{[]string{"--iops", "1000"}, api.QoS{IOPS: api.Limit{Rate: 1000, Burst: 1000}}, ""},
		{[]string{"--write-iops", "200", "--read-bps", "100MiB", "--burst", "2s"},
			api.QoS{WriteIOPS: api.Limit{Rate: 200, Burst: 400}, ReadBPS: api.Limit{Rate: 100 << 20, Burst: 200 << 20}}, ""},
		{[]string{"--iops", "3", "--burst", "500ms"}, api.QoS{IOPS: api.Limit{Rate: 3, Burst: 2}}, ""},
		{[]string{"--iops", "0"}, api.QoS{}, "--iops 0: a limit must be positive"},
		{[]string{"--write-iops", "-5"}, api.QoS{}, "--write-iops -5: a limit must be positive"},
		{[]string{"--bps", "fast"}, api.QoS{}, `--bps: invalid size "fast"`},
		{[]string{"--iops", "100", "--burst", "1ms"}, api.QoS{}, "--burst 1ms holds 0.1 of --iops's 100 IOPS at its rate, less than one command"},
		{[]string{"--bps", "1KiB"}, api.QoS{}, "less than one block of 4 KiB"},
		{[]string{"--iops", "100", "--burst", "0s"}, api.QoS{}, "--burst 0s: give a positive time"},
		{[]string{"--burst", "3s"}, api.QoS{}, "--burst applies to the limits given with it"},
	} {
		var qf qosFlags
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		qf.register(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		q, err := qf.build()
		switch {
		case tt.contains == "" && err != nil:
			t.Errorf("%q: %v", tt.args, err)
		case tt.contains == "" && q != tt.want:
			t.Errorf("%q: %+v, want %+v", tt.args, q, tt.want)
		case tt.contains != "" && (err == nil || !strings.Contains(err.Error(), tt.contains)):
			t.Errorf("%q: %v, want an error containing %q", tt.args, err, tt.contains)
		}
		if given := len(tt.args) > 0; qf.given() != given {
			t.Errorf("%q: given() = %v", tt.args, qf.given())
		}
	}
}
