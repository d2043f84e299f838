package metaserver

import (
	"strings"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestNormalizeQoS(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		in       api.QoS
		want     api.QoS
		contains string // "" means valid
	}{
		{"none", api.QoS{}, api.QoS{}, ""},
		{"burst defaults to a second of the rate", api.QoS{IOPS: api.Limit{Rate: 500}, WriteBPS: api.Limit{Rate: 100 << 20}},
			api.QoS{IOPS: api.Limit{Rate: 500, Burst: 500}, WriteBPS: api.Limit{Rate: 100 << 20, Burst: 100 << 20}}, ""},
		{"explicit burst kept", api.QoS{ReadIOPS: api.Limit{Rate: 10, Burst: 3}}, api.QoS{ReadIOPS: api.Limit{Rate: 10, Burst: 3}}, ""},
		{"negative rate", api.QoS{IOPS: api.Limit{Rate: -1}}, api.QoS{}, "qos iops: rate -1 and burst 0 must not be negative"},
		{"negative burst", api.QoS{BPS: api.Limit{Rate: 1 << 20, Burst: -5}}, api.QoS{}, "must not be negative"},
		{"burst without rate", api.QoS{WriteIOPS: api.Limit{Burst: 10}}, api.QoS{}, "qos write-iops: a burst of 10 commands means nothing without a rate"},
		{"byte rate below a block", api.QoS{ReadBPS: api.Limit{Rate: 100}}, api.QoS{}, "below one block (4096 bytes) a second"},
		{"byte burst below a block", api.QoS{BPS: api.Limit{Rate: 1 << 20, Burst: 512}}, api.QoS{}, "qos bps: a burst of 512 bytes is below one command (4096 bytes)"},
	} {
		q := tt.in
		err := q.Normalize()
		switch {
		case tt.contains == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.contains == "" && q != tt.want:
			t.Errorf("%s: %+v, want %+v", tt.name, q, tt.want)
		case tt.contains != "" && (!api.IsInvalidArgument(err) || !strings.Contains(err.Error(), tt.contains)):
			t.Errorf("%s: %v, want invalid_argument containing %q", tt.name, err, tt.contains)
		}
	}
}

// TestVolumeQoS: limits set at create and replaced or cleared later are
// stored, reach the volume's host, move the generation once per change
// and are recorded as events; bad limits are refused and change nothing.
func TestVolumeQoS(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	ts, ctx := f.ts, t.Context()
	q := api.QoS{WriteIOPS: api.Limit{Rate: 100}}
	v, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "limited", SizeBytes: 4096, Layout: "mirror:2", Host: "h1", QoS: q})
	if err != nil {
		t.Fatal(err)
	}
	if want := (api.QoS{WriteIOPS: api.Limit{Rate: 100, Burst: 100}}); v.QoS != want {
		t.Fatalf("created with %+v, want %+v", v.QoS, want)
	}
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "bad", SizeBytes: 4096, Layout: "mirror:2",
		QoS: api.QoS{IOPS: api.Limit{Rate: -3}}}); !api.IsInvalidArgument(err) {
		t.Errorf("create with a negative limit: %v", err)
	}

	gen := ts.generation(t)
	q2 := api.QoS{IOPS: api.Limit{Rate: 1000, Burst: 2000}, ReadBPS: api.Limit{Rate: 50 << 20, Burst: 50 << 20}}
	v, err = ts.Client.SetVolumeQoS(ctx, "limited", q2)
	if err != nil || v.QoS != q2 {
		t.Fatalf("set: %+v, %v", v, err)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("set: generation %d -> %d", gen, g)
	}
	hv, err := ts.Client.HostVolumes(ctx, f.h1, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, hvv := range hv.Volumes {
		if hvv.Name == "limited" {
			found = hvv.QoS == q2
		}
	}
	if !found {
		t.Errorf("host h1 does not see the new limits: %+v", hv.Volumes)
	}
	if _, err := ts.Client.SetVolumeQoS(ctx, "limited", q2); err != nil {
		t.Fatal(err)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("setting the same limits moved the generation to %d", g)
	}
	for _, bad := range []api.QoS{{}, {BPS: api.Limit{Rate: 1 << 20, Burst: 100}}, {ReadIOPS: api.Limit{Burst: 4}}} {
		if _, err := ts.Client.SetVolumeQoS(ctx, "limited", bad); !api.IsInvalidArgument(err) {
			t.Errorf("set %+v: %v, want invalid_argument", bad, err)
		}
	}
	if _, err := ts.Client.SetVolumeQoS(ctx, "nosuch", q2); api.ErrorCode(err) != api.CodeNotFound {
		t.Errorf("unknown volume: %v", err)
	}
	if g := ts.generation(t); g != gen+1 {
		t.Errorf("refusals moved the generation to %d", g)
	}
	if err := ts.Client.ClearVolumeQoS(ctx, "limited"); err != nil {
		t.Fatal(err)
	}
	if v, err = ts.Client.GetVolume(ctx, "limited"); err != nil || !v.QoS.IsZero() {
		t.Errorf("after clear: %+v, %v", v, err)
	}
	evs := eventsOf(ts.events(t, ""), api.EventVolumeQoSChanged)
	if len(evs) != 2 || !strings.Contains(evs[0].Message+evs[1].Message, "I/O limits removed (were iops 1000 (burst 2000), read-bps 52428800 (burst 52428800))") {
		t.Errorf("qos events: %+v", evs)
	}
}
