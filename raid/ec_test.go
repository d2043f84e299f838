package raid_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/internal/rs"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// geom is the EC layout as documented on raid.EC, restated independently so
// that the tests check the documentation, not the code against itself.
type geom struct {
	k, m, n int
	unit    int64
	stripes int64
}

// member is the member holding shard i of stripe s: (i − s) mod n.
func (g geom) member(s int64, i int) int {
	return ((i-int(s%int64(g.n)))%g.n + g.n) % g.n
}

// shardBytes is shard i of stripe s in the member images.
func (g geom) shardBytes(images [][]byte, s int64, i int) []byte {
	img := images[g.member(s, i)]
	return img[s*g.unit : (s+1)*g.unit]
}

type ecFixture struct {
	ec   *raid.EC
	devs []*raidtest.MemDevice
	g    geom
}

func newEC(t testing.TB, k, m int, unit, memberSize int64, opts ...func(*raid.ECConfig)) ecFixture {
	t.Helper()
	n := k + m
	devs := make([]*raidtest.MemDevice, n)
	members := make([]raid.Device, n)
	for i := range devs {
		devs[i] = raidtest.NewMemDevice(memberSize)
		members[i] = devs[i]
	}
	cfg := raid.ECConfig{SetConfig: raid.SetConfig{Members: members}, K: k, M: m, StripeUnit: unit}
	for _, o := range opts {
		o(&cfg)
	}
	e, err := raid.NewEC(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if unit == 0 {
		unit = raid.DefaultStripeUnit
	}
	return ecFixture{ec: e, devs: devs, g: geom{k: k, m: m, n: n, unit: unit, stripes: memberSize / unit}}
}

func images(devs []*raidtest.MemDevice) [][]byte {
	imgs := make([][]byte, len(devs))
	for i, d := range devs {
		imgs[i] = d.Bytes()
	}
	return imgs
}

// checkStripes proves that every stripe is consistent on the members the set
// holds in sync: for every choice of k of them, decoding gives want (the
// logical contents) as data and reproduces the in-sync members left out.
func checkStripes(t *testing.T, g geom, devs []*raidtest.MemDevice, states []raid.MemberState, want []byte) {
	t.Helper()
	code, err := rs.New(g.k, g.m)
	if err != nil {
		t.Fatal(err)
	}
	imgs := images(devs)
	var insync uint64
	for i, st := range states {
		if st == raid.InSync {
			insync |= 1 << i
		}
	}
	if bits.OnesCount64(insync) < g.k {
		t.Fatalf("only %d members in sync, %d needed", bits.OnesCount64(insync), g.k)
	}
	sd := int64(g.k) * g.unit
	for subset := uint64(0); subset < 1<<g.n; subset++ {
		if subset&^insync != 0 || bits.OnesCount64(subset) != g.k {
			continue
		}
		for s := int64(0); s < g.stripes; s++ {
			shards := make([][]byte, g.n)
			wantShard := make([]bool, g.n)
			for i := range shards {
				if subset&(1<<g.member(s, i)) != 0 {
					shards[i] = g.shardBytes(imgs, s, i)
				} else {
					wantShard[i] = true
				}
			}
			if err := code.Reconstruct(shards, wantShard); err != nil {
				t.Fatalf("stripe %d from members %b: %v", s, subset, err)
			}
			for d := range g.k {
				if !bytes.Equal(shards[d], want[s*sd+int64(d)*g.unit:s*sd+int64(d+1)*g.unit]) {
					t.Fatalf("stripe %d unit D%d decoded from members %b differs from the model", s, d, subset)
				}
			}
			for i := range shards {
				mem := g.member(s, i)
				if insync&(1<<mem) != 0 && subset&(1<<mem) == 0 && !bytes.Equal(shards[i], g.shardBytes(imgs, s, i)) {
					t.Fatalf("stripe %d shard %d on in-sync member %d disagrees with the decode from members %b", s, i, mem, subset)
				}
			}
		}
	}
}

func randBytes(rng *rand.Rand, n int64) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	return p
}

func TestECConformance(t *testing.T) {
	for _, tt := range []struct {
		k, m       int
		unit, size int64
	}{
		{2, 1, 0, 1 << 20},
		{4, 2, 0, 1 << 20},
		{8, 3, 0, 1 << 20},
		{4, 2, 4096, 1<<20 + 3000},
		{1, 2, 4096, 1 << 20},
	} {
		t.Run(fmt.Sprintf("%d+%d/S=%d", tt.k, tt.m, tt.unit), func(t *testing.T) {
			raidtest.TestDevice(t, func(t *testing.T) raid.Device {
				return newEC(t, tt.k, tt.m, tt.unit, tt.size).ec
			})
		})
	}
}

func TestNewECRejects(t *testing.T) {
	mk := func(n int, size int64) []raid.Device {
		d := make([]raid.Device, n)
		for i := range d {
			d[i] = raidtest.NewMemDevice(size)
		}
		return d
	}
	uneven := mk(3, 1<<20)
	uneven[2] = raidtest.NewMemDevice(1<<20 + 4096)
	withNil := mk(3, 1<<20)
	withNil[1] = nil
	tests := []struct {
		name string
		cfg  raid.ECConfig
	}{
		{"no members", raid.ECConfig{K: 2, M: 1}},
		{"k zero", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(1, 1<<20)}, K: 0, M: 1}},
		{"m zero", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(2, 1<<20)}, K: 2, M: 0}},
		{"member count", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(5, 1<<20)}, K: 4, M: 2}},
		{"sizes differ", raid.ECConfig{SetConfig: raid.SetConfig{Members: uneven}, K: 2, M: 1}},
		{"nil member", raid.ECConfig{SetConfig: raid.SetConfig{Members: withNil}, K: 2, M: 1}},
		{"unit too small", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3, 1<<20)}, K: 2, M: 1, StripeUnit: 2048}},
		{"unit not power of two", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3, 1<<20)}, K: 2, M: 1, StripeUnit: 12288}},
		{"unit too large", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3, 1<<20)}, K: 2, M: 1, StripeUnit: 32 << 20}},
		{"unit negative", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3, 1<<20)}, K: 2, M: 1, StripeUnit: -4096}},
		{"member smaller than unit", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(3, 60000)}, K: 2, M: 1}},
		{"too wide", raid.ECConfig{SetConfig: raid.SetConfig{Members: mk(65, 4096)}, K: 60, M: 5, StripeUnit: 4096}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := raid.NewEC(tt.cfg); err == nil {
				t.Fatal("NewEC accepted an invalid config")
			}
		})
	}
}

func TestECSize(t *testing.T) {
	tests := []struct {
		k, m       int
		unit, size int64
		want       int64
	}{
		{4, 2, 0, 1 << 20, 4 << 20},
		{8, 3, 0, 64 << 20, 512 << 20},
		{2, 1, 4096, 1 << 20, 2 << 20},
		{4, 2, 0, 1<<20 + 5000, 4 << 20},
		{2, 1, 4096, 10000, 2 * 8192},
		{3, 2, 65536, 65536, 3 * 65536},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d+%d/%d/%d", tt.k, tt.m, tt.unit, tt.size), func(t *testing.T) {
			f := newEC(t, tt.k, tt.m, tt.unit, tt.size)
			if got := f.ec.Size(); got != tt.want {
				t.Fatalf("Size() = %d, want %d", got, tt.want)
			}
			if err := f.ec.WriteAt(t.Context(), []byte{1}, tt.want-1, false); err != nil {
				t.Fatalf("write of the last byte: %v", err)
			}
			if err := f.ec.WriteAt(t.Context(), []byte{1}, tt.want, false); !errors.Is(err, raid.ErrOutOfRange) {
				t.Fatalf("write past Size(): got %v, want ErrOutOfRange", err)
			}
		})
	}
}

// TestECLayout fills every logical unit with its own number and finds each
// unit, and the parity, where the documented layout puts it.
func TestECLayout(t *testing.T) {
	for _, tt := range []struct{ k, m int }{{2, 1}, {4, 2}, {8, 3}} {
		t.Run(fmt.Sprintf("%d+%d", tt.k, tt.m), func(t *testing.T) {
			const unit = 4096
			n := tt.k + tt.m
			f := newEC(t, tt.k, tt.m, unit, int64(2*n)*unit) // two full rotations
			ctx := t.Context()
			units := f.ec.Size() / unit
			want := make([]byte, f.ec.Size())
			for u := int64(0); u < units; u++ {
				for j := u * unit; j < (u+1)*unit; j++ {
					want[j] = byte(u + 1)
				}
			}
			if err := f.ec.WriteAt(ctx, want, 0, false); err != nil {
				t.Fatal(err)
			}
			imgs := images(f.devs)
			g := f.g
			for s := int64(0); s < g.stripes; s++ {
				for d := range g.k {
					u := s*int64(g.k) + int64(d)
					if got := g.shardBytes(imgs, s, d); !bytes.Equal(got, want[u*unit:(u+1)*unit]) {
						t.Fatalf("stripe %d: member %d does not hold unit D%d", s, g.member(s, d), d)
					}
				}
			}
			// The first stripe of 4+2 as drawn: D0..D3 on members 0..3.
			if g.member(0, 0) != 0 || g.member(1, 0) != n-1 || g.member(1, g.k) != g.k-1 {
				t.Fatal("geom helper disagrees with the documented diagram")
			}
			checkStripes(t, g, f.devs, f.ec.States(), want)
		})
	}
}

// TestECRandomModel runs seeded random unaligned writes, reads and trims
// while up to m members fail (and some come back, which the set must
// ignore), checking every read against a flat model and, at the end, every
// stripe on the members still in sync.
func TestECRandomModel(t *testing.T) {
	layouts := []struct{ k, m int }{{2, 1}, {4, 2}, {8, 3}}
	for _, l := range layouts {
		for seed := uint64(1); seed <= 5; seed++ {
			t.Run(fmt.Sprintf("%d+%d/seed%d", l.k, l.m, seed), func(t *testing.T) {
				runECModel(t, l.k, l.m, seed)
			})
		}
	}
}

func runECModel(t *testing.T, k, m int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(k*100+m)))
	unit := int64(4096) << rng.IntN(2)
	stripes := int64(16 + rng.IntN(16))
	memberSize := stripes*unit + int64(rng.IntN(3000)) // a ragged tail is not used
	var changes atomic.Int32
	f := newEC(t, k, m, unit, memberSize, func(c *raid.ECConfig) {
		c.OnStateChange = func(int, raid.MemberState, error) { changes.Add(1) }
	})
	e, ctx := f.ec, t.Context()
	size := e.Size()
	if size != int64(k)*stripes*unit {
		t.Fatalf("Size() = %d, want %d", size, int64(k)*stripes*unit)
	}
	model := make([]byte, size)
	sd := int64(k) * unit

	const ops = 300
	nfail := m // most runs lose all the members they can, some fewer
	if seed%3 == 0 {
		nfail = rng.IntN(m + 1)
	}
	failAt := map[int]int{}
	for _, mem := range rng.Perm(k + m)[:nfail] {
		at := rng.IntN(ops)
		for failAt[at] != 0 || at == 0 {
			at = rng.IntN(ops)
		}
		failAt[at] = mem
	}
	reviveAt := map[int]int{} // a failed device answering again must not be trusted
	for at, mem := range failAt {
		if rng.IntN(2) == 0 {
			reviveAt[at+1+rng.IntN(ops)] = mem
		}
	}
	span := func() (off, n int64) {
		switch rng.IntN(4) {
		case 0: // small, anywhere
			n = 1 + rng.Int64N(600)
		case 1: // up to a few units
			n = 1 + rng.Int64N(3*unit)
		case 2: // stripe-sized, shifted
			n = sd + rng.Int64N(unit) - unit/2
		default: // several stripes
			n = 1 + rng.Int64N(3*sd)
		}
		n = min(n, size)
		return rng.Int64N(size - n + 1), n
	}
	for i := 0; i < ops; i++ {
		if mem, ok := failAt[i]; ok {
			f.devs[mem].SetFailed(true)
		}
		if mem, ok := reviveAt[i]; ok {
			f.devs[mem].SetFailed(false)
		}
		off, n := span()
		switch r := rng.IntN(10); {
		case r < 4:
			got := make([]byte, n)
			if err := e.ReadAt(ctx, got, off); err != nil {
				t.Fatalf("op %d ReadAt(%d, %d): %v", i, off, n, err)
			}
			if !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("op %d ReadAt(%d, %d) differs from the model (states %v)", i, off, n, e.States())
			}
		case r < 9:
			p := randBytes(rng, n)
			if err := e.WriteAt(ctx, p, off, rng.IntN(8) == 0); err != nil {
				t.Fatalf("op %d WriteAt(%d, %d): %v", i, off, n, err)
			}
			copy(model[off:], p)
		default:
			if rng.IntN(2) == 0 { // whole stripes plus ragged ends
				off = rng.Int64N(stripes/2) * sd
				n = min(size-off, int64(1+rng.IntN(4))*sd+rng.Int64N(unit))
				if off > 0 && rng.IntN(2) == 0 {
					off -= rng.Int64N(unit)
					n += unit
					n = min(n, size-off)
				}
			}
			if err := e.Trim(ctx, off, n); err != nil {
				t.Fatalf("op %d Trim(%d, %d): %v", i, off, n, err)
			}
			clear(model[off : off+n])
		}
		if rng.IntN(50) == 0 {
			if err := e.Flush(ctx); err != nil {
				t.Fatalf("op %d Flush: %v", i, err)
			}
		}
	}
	got := make([]byte, size)
	if err := e.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("final contents differ from the model")
	}
	states := e.States()
	failed := 0
	for _, st := range states {
		if st == raid.Failed {
			failed++
		}
	}
	if failed > m {
		t.Fatalf("%d members failed, at most %d were broken", failed, m)
	}
	if int(changes.Load()) != failed {
		t.Fatalf("OnStateChange called %d times for %d failed members", changes.Load(), failed)
	}
	checkStripes(t, f.g, f.devs, states, model)
}

// TestECTooManyFailures fails m+1 members: every read either returns the
// right bytes (its units are on members still answering) or an
// ErrNoMembers error, never reconstructed garbage; once the set has seen the
// (m+1)th failure every operation fails.
func TestECTooManyFailures(t *testing.T) {
	for _, l := range []struct{ k, m int }{{2, 1}, {4, 2}, {8, 3}} {
		t.Run(fmt.Sprintf("%d+%d", l.k, l.m), func(t *testing.T) {
			const unit = 4096
			f := newEC(t, l.k, l.m, unit, 16*unit)
			e, ctx := f.ec, t.Context()
			rng := rand.New(rand.NewPCG(3, uint64(l.k)))
			model := randBytes(rng, e.Size())
			if err := e.WriteAt(ctx, model, 0, false); err != nil {
				t.Fatal(err)
			}
			for _, mem := range rng.Perm(l.k + l.m)[:l.m+1] {
				f.devs[mem].SetFailed(true)
			}
			errored := 0
			for i := range 200 {
				n := 1 + rng.Int64N(2*unit)
				off := rng.Int64N(e.Size() - n + 1)
				got := make([]byte, n)
				err := e.ReadAt(ctx, got, off)
				switch {
				case err == nil:
					if !bytes.Equal(got, model[off:off+n]) {
						t.Fatalf("read %d at %d length %d returned wrong data with %d members down", i, off, n, l.m+1)
					}
				case errors.Is(err, raid.ErrNoMembers):
					errored++
				default:
					t.Fatalf("read %d: got %v, want nil or ErrNoMembers", i, err)
				}
			}
			if errored == 0 {
				t.Fatal("no read failed with more than m members down")
			}
			buf := make([]byte, 100)
			if err := e.ReadAt(ctx, buf, 0); !errors.Is(err, raid.ErrNoMembers) {
				t.Fatalf("ReadAt after the set saw m+1 failures: got %v, want ErrNoMembers", err)
			}
			if err := e.WriteAt(ctx, buf, 0, false); !errors.Is(err, raid.ErrNoMembers) {
				t.Fatalf("WriteAt: got %v, want ErrNoMembers", err)
			}
			if err := e.Trim(ctx, 0, e.Size()); !errors.Is(err, raid.ErrNoMembers) {
				t.Fatalf("Trim: got %v, want ErrNoMembers", err)
			}
			if err := e.Flush(ctx); !errors.Is(err, raid.ErrNoMembers) {
				t.Fatalf("Flush: got %v, want ErrNoMembers", err)
			}
		})
	}
}

// TestECFailureDuringWrite fails a member between writes of a workload: the
// write that finds it failed still succeeds, and the data reads back from
// the others.
func TestECFailureDuringWrite(t *testing.T) {
	const unit = 4096
	f := newEC(t, 4, 2, unit, 8*unit)
	e, ctx := f.ec, t.Context()
	rng := rand.New(rand.NewPCG(8, 8))
	model := randBytes(rng, e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	f.devs[1].SetFailed(true)
	f.devs[4].SetFailed(true)
	p := randBytes(rng, 3*unit+100)
	if err := e.WriteAt(ctx, p, 5000, true); err != nil {
		t.Fatalf("write with two of six members failing: %v", err)
	}
	copy(model[5000:], p)
	if st := e.States(); st[1] != raid.Failed || st[4] != raid.Failed {
		t.Fatalf("states %v: members 1 and 4 should be failed", st)
	}
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("data differs after a degraded write")
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

// countingDev counts the calls a set makes to one member.
type countingDev struct {
	*raidtest.MemDevice
	reads, writes, trims atomic.Int64
	onWrite              func()
}

func (d *countingDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.reads.Add(1)
	return d.MemDevice.ReadAt(ctx, p, off)
}

func (d *countingDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.writes.Add(1)
	if d.onWrite != nil {
		d.onWrite()
	}
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

func (d *countingDev) Trim(ctx context.Context, off, length int64) error {
	d.trims.Add(1)
	return d.MemDevice.Trim(ctx, off, length)
}

// jitterDev delays every read and write by a few random microseconds so
// that concurrent stripe operations interleave between their read and write
// phases, as they do over a network.
type jitterDev struct{ *raidtest.MemDevice }

func jitter() { time.Sleep(time.Duration(rand.IntN(40)) * time.Microsecond) }

func (d jitterDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	jitter()
	return d.MemDevice.ReadAt(ctx, p, off)
}

func (d jitterDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	jitter()
	return d.MemDevice.WriteAt(ctx, p, off, fua)
}

func withJitter(c *raid.ECConfig) {
	for i, m := range c.Members {
		c.Members[i] = jitterDev{m.(*raidtest.MemDevice)}
	}
}

func newCountingEC(t *testing.T, k, m int, unit, size int64) (*raid.EC, []*countingDev, geom) {
	t.Helper()
	devs := make([]*countingDev, k+m)
	members := make([]raid.Device, k+m)
	for i := range devs {
		devs[i] = &countingDev{MemDevice: raidtest.NewMemDevice(size)}
		members[i] = devs[i]
	}
	e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members}, K: k, M: m, StripeUnit: unit})
	if err != nil {
		t.Fatal(err)
	}
	return e, devs, geom{k: k, m: m, n: k + m, unit: unit, stripes: size / unit}
}

// TestECIOCounts checks which member I/Os each kind of operation issues.
func TestECIOCounts(t *testing.T) {
	const unit = 4096
	e, devs, g := newCountingEC(t, 4, 2, unit, 16*unit)
	ctx := t.Context()
	sd := int64(g.k) * unit
	totals := func() (r, w, tr int64) {
		for _, d := range devs {
			r += d.reads.Swap(0)
			w += d.writes.Swap(0)
			tr += d.trims.Swap(0)
		}
		return
	}
	type counts struct{ reads, writes, trims int64 }
	tests := []struct {
		name string
		op   func() error
		want counts
	}{
		{"full stripe write: no reads, one write per member", func() error {
			return e.WriteAt(ctx, make([]byte, sd), 2*sd, false)
		}, counts{0, 6, 0}},
		{"two full stripes", func() error {
			return e.WriteAt(ctx, make([]byte, 2*sd), 4*sd, false)
		}, counts{0, 12, 0}},
		{"4K inside a unit: k-1 reads, data + m parity writes", func() error {
			return e.WriteAt(ctx, make([]byte, 4096), sd+unit, false)
		}, counts{3, 3, 0}},
		{"512 bytes inside a unit", func() error {
			return e.WriteAt(ctx, make([]byte, 512), sd+100, false)
		}, counts{3, 3, 0}},
		{"small write across two units: two column ranges", func() error {
			return e.WriteAt(ctx, make([]byte, 1000), sd+unit-500, false)
		}, counts{6, 6, 0}},
		{"read inside one unit: one read, no parity", func() error {
			return e.ReadAt(ctx, make([]byte, 1000), 3*sd+2*unit+10)
		}, counts{1, 0, 0}},
		{"read of a whole stripe: k reads", func() error {
			return e.ReadAt(ctx, make([]byte, sd), 5*sd)
		}, counts{4, 0, 0}},
		{"trim of whole stripes: one trim per member", func() error {
			return e.Trim(ctx, 2*sd, 3*sd)
		}, counts{0, 0, 6}},
		{"trim inside a unit: a zero write", func() error {
			return e.Trim(ctx, 9*sd+100, 200)
		}, counts{3, 3, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			totals()
			if err := tt.op(); err != nil {
				t.Fatal(err)
			}
			r, w, tr := totals()
			if got := (counts{r, w, tr}); got != tt.want {
				t.Fatalf("member I/O %+v, want %+v", got, tt.want)
			}
		})
	}
	t.Run("parity members are not read by a healthy read", func(t *testing.T) {
		totals()
		s := int64(3)
		if err := e.ReadAt(ctx, make([]byte, sd), s*sd); err != nil {
			t.Fatal(err)
		}
		for i := g.k; i < g.n; i++ {
			if r := devs[g.member(s, i)].reads.Load(); r != 0 {
				t.Fatalf("parity member %d read %d times", g.member(s, i), r)
			}
		}
	})
	t.Run("degraded read: k reads from the others", func(t *testing.T) {
		s := int64(6)
		devs[g.member(s, 1)].SetFailed(true)
		if err := e.ReadAt(ctx, make([]byte, 10), s*sd+unit+5); err != nil { // first fails the member
			t.Fatal(err)
		}
		totals()
		if err := e.ReadAt(ctx, make([]byte, 10), s*sd+unit+5); err != nil {
			t.Fatal(err)
		}
		if r, w, _ := totals(); r != 4 || w != 0 {
			t.Fatalf("degraded read made %d reads and %d writes, want 4 and 0", r, w)
		}
	})
}

// TestECDeltaWrite: on an 8+2 set a small write inside one unit reads the
// unit's old bytes and the two parities (parity deltas) instead of the seven
// other data units, writes the unit and the parities, and leaves every
// stripe decodable to the model; with a parity member failed it
// reconstruct-writes instead.
func TestECDeltaWrite(t *testing.T) {
	const unit = 4096
	e, devs, g := newCountingEC(t, 8, 2, unit, 8*unit)
	ctx := t.Context()
	rng := rand.New(rand.NewPCG(8, 2))
	model := randBytes(rng, e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	totals := func() (r, w int64) {
		for _, d := range devs {
			r += d.reads.Swap(0)
			w += d.writes.Swap(0)
		}
		return
	}
	totals()
	sd := int64(g.k) * unit
	for i := range 40 {
		n := 1 + rng.Int64N(unit-1)
		off := rng.Int64N(e.Size() - n)
		if off/unit != (off+n-1)/unit {
			off -= (off + n) % unit // keep it inside one unit
		}
		p := randBytes(rng, n)
		if err := e.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
		if r, w := totals(); r != 3 || w != 3 {
			t.Fatalf("write %d (%d bytes at %d, stripe %d): %d reads and %d writes, want 3 and 3", i, n, off, off/sd, r, w)
		}
	}
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("read back: %v, equal to the model %v", err, bytes.Equal(got, model))
	}
	mem := make([]*raidtest.MemDevice, len(devs))
	for i, d := range devs {
		mem[i] = d.MemDevice
	}
	checkStripes(t, g, mem, e.States(), model)

	// A parity member gone: the delta cannot update its parity, so the
	// write reconstructs (7 reads) and skips it.
	s := int64(2)
	devs[g.member(s, g.k)].SetFailed(true)
	e.Fail(g.member(s, g.k), errors.New("gone"))
	totals()
	if err := e.WriteAt(ctx, make([]byte, 512), s*sd+100, false); err != nil {
		t.Fatal(err)
	}
	if r, _ := totals(); r != 7 {
		t.Fatalf("with a parity member failed, a small write made %d reads, want 7 (reconstruct-write)", r)
	}
}

// TestECCancelMidWrite cancels the caller's context while the stripe's
// units are being written: the stripe must still be whole.
func TestECCancelMidWrite(t *testing.T) {
	const unit = 4096
	e, devs, g := newCountingEC(t, 4, 2, unit, 8*unit)
	rng := rand.New(rand.NewPCG(4, 4))
	model := randBytes(rng, e.Size())
	if err := e.WriteAt(t.Context(), model, 0, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	devs[0].onWrite = cancel
	p := randBytes(rng, 2*unit)
	off := int64(g.k) * unit // stripe 1, units D0 and D1, on members n-1 and 0
	err := e.WriteAt(ctx, p, off, false)
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteAt: %v", err)
	}
	copy(model[off:], p) // every unit of the stripe was written
	mem := make([]*raidtest.MemDevice, len(devs))
	for i, d := range devs {
		mem[i] = d.MemDevice
	}
	if st := e.States(); st[0] != raid.InSync {
		t.Fatalf("cancellation failed member 0: %v", st)
	}
	checkStripes(t, g, mem, e.States(), model)
}

func TestECTrimZeroesAllMembers(t *testing.T) {
	const unit = 4096
	f := newEC(t, 4, 2, unit, 8*unit)
	e, ctx := f.ec, t.Context()
	rng := rand.New(rand.NewPCG(6, 6))
	model := randBytes(rng, e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	sd := int64(4) * unit
	// Stripes 2..4 whole, plus a ragged piece of stripe 1 and of stripe 5.
	off, n := 2*sd-1000, 3*sd+1500
	if err := e.Trim(ctx, off, n); err != nil {
		t.Fatal(err)
	}
	clear(model[off : off+n])
	for i, img := range images(f.devs) {
		if !bytes.Equal(img[2*unit:5*unit], make([]byte, 3*unit)) {
			t.Fatalf("member %d: whole trimmed stripes are not zero (parity included)", i)
		}
	}
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("contents after trim differ from the model")
	}
	checkStripes(t, f.g, f.devs, e.States(), model)
}

func TestECFlush(t *testing.T) {
	f := newEC(t, 4, 2, 4096, 1<<16)
	ctx := t.Context()
	if err := f.ec.Flush(ctx); err != nil {
		t.Fatalf("Flush with every member healthy: %v", err)
	}
	f.devs[2].SetFailed(true)
	f.devs[5].SetFailed(true)
	if err := f.ec.Flush(ctx); err != nil {
		t.Fatalf("Flush with two of six members failing: %v", err)
	}
	if st := f.ec.States(); st[2] != raid.Failed || st[5] != raid.Failed || st[0] != raid.InSync {
		t.Fatalf("states after failed flushes: %v", st)
	}
	f.devs[0].SetFailed(true)
	if err := f.ec.Flush(ctx); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("Flush with three of six members failing: got %v, want ErrNoMembers", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	g := newEC(t, 2, 1, 4096, 1<<16)
	if err := g.ec.Flush(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Flush with a cancelled context: got %v, want context.Canceled", err)
	}
	if st := g.ec.States(); st[0] != raid.InSync || st[1] != raid.InSync || st[2] != raid.InSync {
		t.Fatalf("a cancelled flush failed members: %v", st)
	}
}

// TestECOnStateChange checks that the callback runs once per failed member,
// with no lock held: it may use the set itself.
func TestECOnStateChange(t *testing.T) {
	var (
		mu    sync.Mutex
		calls []int
		f     ecFixture
	)
	f = newEC(t, 2, 1, 4096, 1<<16, func(c *raid.ECConfig) {
		c.OnStateChange = func(member int, st raid.MemberState, err error) {
			if st != raid.Failed || !errors.Is(err, raidtest.ErrInjected) {
				t.Errorf("OnStateChange(%d, %v, %v)", member, st, err)
			}
			// Reads and writes of the same stripe from the callback: no lock held.
			if err := f.ec.WriteAt(context.Background(), []byte{7}, 0, false); err != nil {
				t.Errorf("write from OnStateChange: %v", err)
			}
			mu.Lock()
			calls = append(calls, member)
			mu.Unlock()
		}
	})
	f.devs[1].SetFailed(true)
	for range 3 {
		if err := f.ec.WriteAt(t.Context(), make([]byte, 100), 4096+10, false); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 || calls[0] != 1 {
		t.Fatalf("OnStateChange calls %v, want [1]", calls)
	}
}

func TestECReencode(t *testing.T) {
	const unit = 4096
	f := newEC(t, 4, 2, unit, 8*unit)
	e, ctx, g := f.ec, t.Context(), f.g
	rng := rand.New(rand.NewPCG(2, 7))
	model := randBytes(rng, e.Size())
	if err := e.WriteAt(ctx, model, 0, false); err != nil {
		t.Fatal(err)
	}
	sd := int64(g.k) * unit
	code, err := rs.New(g.k, g.m)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(s int64) bool {
		imgs := images(f.devs)
		shards := make([][]byte, g.n)
		for i := range shards {
			shards[i] = g.shardBytes(imgs, s, i)
		}
		ok, err := code.Verify(shards)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	// Stale parity, as a host crash between data and parity writes leaves it.
	s := int64(2)
	if err := f.devs[g.member(s, g.k+1)].WriteAt(ctx, randBytes(rng, 100), s*unit+50, false); err != nil {
		t.Fatal(err)
	}
	if verify(s) {
		t.Fatal("corrupted parity still verifies")
	}
	if err := e.Reencode(ctx, s*sd+10, 1); err != nil {
		t.Fatal(err)
	}
	if !verify(s) {
		t.Fatal("parity does not verify after Reencode")
	}
	checkStripes(t, g, f.devs, e.States(), model)

	// With a data unit lost the parity cannot be derived again.
	f.devs[g.member(5, 2)].SetFailed(true)
	if err := e.ReadAt(ctx, make([]byte, 10), 5*sd+2*unit); err != nil { // marks it failed
		t.Fatal(err)
	}
	if err := e.Reencode(ctx, 5*sd, sd); !errors.Is(err, raid.ErrParityUnknown) {
		t.Fatalf("Reencode of a stripe missing a data unit: got %v, want ErrParityUnknown", err)
	}
	// A stripe whose lost unit is parity is re-encoded onto the others.
	sp := int64(0)
	for g.member(sp, 0) == g.member(5, 2) || g.member(sp, 1) == g.member(5, 2) ||
		g.member(sp, 2) == g.member(5, 2) || g.member(sp, 3) == g.member(5, 2) {
		sp++
	}
	if err := e.Reencode(ctx, sp*sd, 1); err != nil {
		t.Fatalf("Reencode of stripe %d, which lost only parity: %v", sp, err)
	}
}

// TestECConcurrent runs writers on the same stripes: each owns scattered
// byte ranges that it writes and reads back, and all of them also write over
// one another in a shared zone. A member fails midway, so reads of owned
// ranges are reconstructed while other writers update the same stripes.
// Afterwards every stripe must be consistent and every owned range intact.
func TestECConcurrent(t *testing.T) {
	const (
		unit    = 4096
		writers = 8
		ops     = 250
		chunk   = 700 // owned ranges: chunk c belongs to writer c % writers
	)
	f := newEC(t, 4, 2, unit, 16*unit, withJitter)
	e, ctx, g := f.ec, t.Context(), f.g
	sd := int64(g.k) * unit
	ownedEnd := 12 * sd // stripes 0..11 owned, 12..15 shared
	nchunks := ownedEnd / chunk
	models := make([][]byte, writers) // writer w's view of the whole device
	var failOnce sync.Once
	var wg sync.WaitGroup
	for w := range writers {
		models[w] = make([]byte, e.Size())
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 77))
			model := models[w]
			for i := range ops {
				if w == 0 && i == ops/3 {
					failOnce.Do(func() { f.devs[3].SetFailed(true) })
				}
				c := int64(rng.IntN(int(nchunks/writers)))*writers + int64(w)
				lo := c*chunk + rng.Int64N(chunk)
				hi := lo + 1 + rng.Int64N(c*chunk+chunk-lo)
				switch rng.IntN(3) {
				case 0:
					got := make([]byte, hi-lo)
					if err := e.ReadAt(ctx, got, lo); err != nil {
						t.Errorf("writer %d: read: %v", w, err)
						return
					}
					if !bytes.Equal(got, model[lo:hi]) {
						t.Errorf("writer %d op %d: read of its own range [%d,%d) differs", w, i, lo, hi)
						return
					}
				case 1:
					p := randBytes(rng, hi-lo)
					if err := e.WriteAt(ctx, p, lo, false); err != nil {
						t.Errorf("writer %d: write: %v", w, err)
						return
					}
					copy(model[lo:], p)
				default:
					n := 1 + rng.Int64N(2*unit)
					off := ownedEnd + rng.Int64N(e.Size()-ownedEnd-n+1)
					if err := e.WriteAt(ctx, randBytes(rng, n), off, false); err != nil {
						t.Errorf("writer %d: shared write: %v", w, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for c := int64(0); c < nchunks; c++ {
		m := models[c%writers]
		if !bytes.Equal(got[c*chunk:(c+1)*chunk], m[c*chunk:(c+1)*chunk]) {
			t.Fatalf("owned range %d of writer %d differs", c, c%writers)
		}
	}
	if st := e.States(); st[3] != raid.Failed {
		t.Fatalf("member 3 was broken but states are %v", st)
	}
	checkStripes(t, g, f.devs, e.States(), got)
}

// TestECConcurrentSameStripe has every writer hammer overlapping partial
// ranges of two stripes with all members healthy: without the stripe lock
// parity would be computed from data another writer is replacing.
func TestECConcurrentSameStripe(t *testing.T) {
	// With units of 16 KiB, writes to different 4 KiB columns of a stripe
	// run at once (column locks).
	for _, unit := range []int64{4096, 16384} {
		t.Run(fmt.Sprintf("unit=%d", unit), func(t *testing.T) { testECConcurrentSameStripe(t, unit) })
	}
}

func testECConcurrentSameStripe(t *testing.T, unit int64) {
	f := newEC(t, 4, 2, unit, 2*unit, withJitter)
	e, ctx := f.ec, t.Context()
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 5))
			for range 300 {
				n := 1 + rng.Int64N(unit+unit/2)
				off := rng.Int64N(e.Size() - n + 1)
				if err := e.WriteAt(ctx, randBytes(rng, n), off, false); err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := make([]byte, e.Size())
	if err := e.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	checkStripes(t, f.g, f.devs, e.States(), got)
}

// TestECDegradedReadDuringWrite reads a lost unit, rebuilt from the others,
// while another goroutine rewrites the rest of its stripe: the rebuild must
// never mix old and new units of the stripe.
func TestECDegradedReadDuringWrite(t *testing.T) {
	for _, unit := range []int64{4096, 16384} {
		t.Run(fmt.Sprintf("unit=%d", unit), func(t *testing.T) { testECDegradedReadDuringWrite(t, unit) })
	}
}

func testECDegradedReadDuringWrite(t *testing.T, unit int64) {
	f := newEC(t, 4, 2, unit, 4*unit, withJitter)
	e, ctx := f.ec, t.Context()
	rng := rand.New(rand.NewPCG(9, 9))
	fixed := randBytes(rng, unit) // D0 of stripe 0, on member 0, never rewritten
	if err := e.WriteAt(ctx, fixed, 0, false); err != nil {
		t.Fatal(err)
	}
	f.devs[0].SetFailed(true)
	var wg sync.WaitGroup
	wg.Go(func() {
		wrng := rand.New(rand.NewPCG(1, 9))
		for range 300 {
			n := 1 + wrng.Int64N(3*unit)
			off := unit + wrng.Int64N(3*unit-n+1)
			if err := e.WriteAt(ctx, randBytes(wrng, n), off, false); err != nil {
				t.Errorf("write: %v", err)
				return
			}
		}
	})
	wg.Go(func() {
		got := make([]byte, unit)
		for i := range 300 {
			if err := e.ReadAt(ctx, got, 0); err != nil {
				t.Errorf("read: %v", err)
				return
			}
			if !bytes.Equal(got, fixed) {
				t.Errorf("degraded read %d returned bytes that were never written", i)
				return
			}
		}
	})
	wg.Wait()
}

func BenchmarkECFullStripeWrite(b *testing.B) {
	f := newEC(b, 4, 2, raid.DefaultStripeUnit, 16<<20)
	sd := int64(4 * raid.DefaultStripeUnit)
	p := randBytes(rand.New(rand.NewPCG(1, 1)), sd)
	stripes := f.ec.Size() / sd
	ctx := b.Context()
	b.SetBytes(sd)
	b.ReportAllocs()
	var s int64
	for b.Loop() {
		if err := f.ec.WriteAt(ctx, p, (s%stripes)*sd, false); err != nil {
			b.Fatal(err)
		}
		s++
	}
}

func BenchmarkECPartialWrite4K(b *testing.B) {
	f := newEC(b, 4, 2, raid.DefaultStripeUnit, 16<<20)
	p := randBytes(rand.New(rand.NewPCG(1, 1)), 4096)
	blocks := f.ec.Size() / 4096
	rng := rand.New(rand.NewPCG(2, 2))
	ctx := b.Context()
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := f.ec.WriteAt(ctx, p, rng.Int64N(blocks)*4096, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkECRead4K(b *testing.B) {
	for _, degraded := range []bool{false, true} {
		b.Run(fmt.Sprintf("degraded=%v", degraded), func(b *testing.B) {
			f := newEC(b, 4, 2, raid.DefaultStripeUnit, 16<<20)
			if degraded {
				f.devs[0].SetFailed(true)
				if err := f.ec.Flush(b.Context()); err != nil { // notices the failure
					b.Fatal(err)
				}
			}
			p := make([]byte, 4096)
			blocks := f.ec.Size() / 4096
			rng := rand.New(rand.NewPCG(2, 2))
			ctx := b.Context()
			b.SetBytes(4096)
			b.ReportAllocs()
			for b.Loop() {
				if err := f.ec.ReadAt(ctx, p, rng.Int64N(blocks)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
