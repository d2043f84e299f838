package raid_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

func newMirror(t *testing.T, n int, size int64) (*raid.Mirror, []*raidtest.MemDevice) {
	t.Helper()
	devs := make([]*raidtest.MemDevice, n)
	members := make([]raid.Device, n)
	for i := range devs {
		devs[i] = raidtest.NewMemDevice(size)
		members[i] = devs[i]
	}
	m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: members}})
	if err != nil {
		t.Fatal(err)
	}
	return m, devs
}

func TestMirrorConformance(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		t.Run(string(rune('0'+n)), func(t *testing.T) {
			raidtest.TestDevice(t, func(t *testing.T) raid.Device {
				m, _ := newMirror(t, n, 8<<20)
				return m
			})
		})
	}
}

func TestNewMirrorRejects(t *testing.T) {
	a, b := raidtest.NewMemDevice(1<<20), raidtest.NewMemDevice(2<<20)
	tests := []struct {
		name string
		cfg  raid.MirrorConfig
	}{
		{"no members", raid.MirrorConfig{}},
		{"sizes differ", raid.MirrorConfig{SetConfig: raid.SetConfig{Members: []raid.Device{a, b}}}},
		{"five members", raid.MirrorConfig{SetConfig: raid.SetConfig{Members: []raid.Device{a, a, a, a, a}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := raid.NewMirror(tt.cfg); err == nil {
				t.Fatal("NewMirror accepted an invalid config")
			}
		})
	}
}

// TestMirrorRandomFailures writes and reads at random while members fail one
// by one. Every acknowledged write must read back, and every member still in
// sync must hold exactly the model.
func TestMirrorRandomFailures(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		const size = 1 << 20
		n := 2 + rng.IntN(2)
		m, devs := newMirror(t, n, size)
		model := make([]byte, size)
		ctx := t.Context()
		failAt := map[int]int{rng.IntN(400): rng.IntN(n)} // one member fails during the run
		for i := 0; i < 400; i++ {
			if mi, ok := failAt[i]; ok {
				devs[mi].SetFailed(true)
			}
			l := int64(rng.IntN(32)+1) * 512
			off := rng.Int64N(size-l+1) &^ 511
			if rng.IntN(2) == 0 {
				got := make([]byte, l)
				if err := m.ReadAt(ctx, got, off); err != nil {
					t.Fatalf("seed %d op %d: read: %v", seed, i, err)
				}
				if !bytes.Equal(got, model[off:off+l]) {
					t.Fatalf("seed %d op %d: read differs from model", seed, i)
				}
				continue
			}
			p := make([]byte, l)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if err := m.WriteAt(ctx, p, off, false); err != nil {
				t.Fatalf("seed %d op %d: write: %v", seed, i, err)
			}
			copy(model[off:], p)
		}
		for i, st := range m.States() {
			if st == raid.InSync && !bytes.Equal(devs[i].Bytes(), model) {
				t.Fatalf("seed %d: in-sync member %d differs from model", seed, i)
			}
		}
	}
}

func TestMirrorAllFailed(t *testing.T) {
	m, devs := newMirror(t, 2, 1<<20)
	for _, d := range devs {
		d.SetFailed(true)
	}
	if err := m.ReadAt(t.Context(), make([]byte, 512), 0); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("read with all members failed: got %v, want ErrNoMembers", err)
	}
	if err := m.Flush(t.Context()); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("flush with all members failed: got %v, want ErrNoMembers", err)
	}
}

// TestProbeAndFail: on an idle set, Probe fails exactly the in-sync members
// that cannot answer a read (through the health machine, with
// OnStateChange), for mirrors and EC alike, and leaves the others in sync;
// Fail fails an in-sync member the same way and ignores a failed one.
func TestProbeAndFail(t *testing.T) {
	ctx := t.Context()
	t.Run("mirror", func(t *testing.T) {
		var changed []int
		devs := []*raidtest.MemDevice{raidtest.NewMemDevice(1 << 20), raidtest.NewMemDevice(1 << 20), raidtest.NewMemDevice(1 << 20)}
		m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{
			Members:       []raid.Device{devs[0], devs[1], devs[2]},
			OnStateChange: func(i int, st raid.MemberState, err error) { changed = append(changed, i) },
		},
		})
		if err != nil {
			t.Fatal(err)
		}
		m.Probe(ctx)
		if got := m.States(); got[0] != raid.InSync || got[1] != raid.InSync || got[2] != raid.InSync || len(changed) != 0 {
			t.Fatalf("healthy probe: states %v, changes %v", got, changed)
		}
		devs[1].SetFailed(true)
		m.Probe(ctx)
		if got := m.States(); got[0] != raid.InSync || got[1] != raid.Failed || got[2] != raid.InSync || fmt.Sprint(changed) != "[1]" {
			t.Fatalf("after member 1 went away: states %v, changes %v", got, changed)
		}
		if err := m.MemberError(1); err == nil || !strings.Contains(err.Error(), "probe") {
			t.Fatalf("member error %v", err)
		}
		m.Fail(2, errors.New("marked"))
		m.Fail(1, errors.New("again"))
		if got := m.States(); got[0] != raid.InSync || got[2] != raid.Failed || fmt.Sprint(changed) != "[1 2]" || m.MemberError(2).Error() != "marked" {
			t.Fatalf("after Fail(2) and Fail(1): states %v, changes %v", got, changed)
		}
	})
	t.Run("ec", func(t *testing.T) {
		var changed []int
		f := newEC(t, 2, 1, 4096, 1<<20, func(c *raid.ECConfig) {
			c.OnStateChange = func(i int, st raid.MemberState, err error) { changed = append(changed, i) }
		})
		f.devs[2].SetFailed(true)
		f.ec.Probe(ctx)
		if got := f.ec.States(); got[0] != raid.InSync || got[1] != raid.InSync || got[2] != raid.Failed || fmt.Sprint(changed) != "[2]" {
			t.Fatalf("states %v, changes %v", got, changed)
		}
		f.ec.Fail(0, errors.New("marked"))
		if got := f.ec.States(); got[0] != raid.Failed || fmt.Sprint(changed) != "[2 0]" {
			t.Fatalf("after Fail(0): states %v, changes %v", got, changed)
		}
	})
}
