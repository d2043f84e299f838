package raid_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// TestECSuccessor: a drain gives member 1 of a 2+1 set a successor, member
// 3. It starts degraded, rejoins, and a resync of everything copies it
// member 1's units while writes go on; afterwards it holds exactly what
// member 1 holds (trimmed zero units included), goes on getting member 1's
// writes, and is never read: a successor that fails only fails itself, and
// the set still needs its two other members, not the successor, to serve.
func TestECSuccessor(t *testing.T) {
	ctx := t.Context()
	const unit, memberSize = 4096, 256 << 10
	devs := make([]*raidtest.MemDevice, 4)
	members := make([]raid.Device, 4)
	for i := range devs {
		devs[i] = raidtest.NewMemDevice(memberSize)
		members[i] = devs[i]
	}
	first, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members[:3]}, K: 2, M: 1, StripeUnit: unit})
	if err != nil {
		t.Fatal(err)
	}
	size := first.Size()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	// Data in the first half only: the second half's units are zero and
	// are trimmed onto the successor.
	for range 40 {
		off := rng.Int64N(size/2/512-16) * 512
		p := make([]byte, 512*(1+rng.IntN(16)))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if err := first.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
	}
	first.Close()

	if _, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members}, K: 2, M: 1, StripeUnit: unit, Successors: map[int]int{3: 3}}); err == nil {
		t.Fatal("NewEC accepted a successor of a successor")
	}
	e, err := raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members, Degraded: []int{3}}, K: 2, M: 1, StripeUnit: unit,
		Successors: map[int]int{3: 1}, Stale: []int{3}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Rejoin(3, devs[3]); err != nil {
		t.Fatal(err)
	}
	e.MarkAll()

	// Writes race the copy.
	var mu sync.Mutex
	var wg sync.WaitGroup
	wctx, stop := context.WithCancel(ctx)
	wg.Go(func() {
		r := rand.New(rand.NewPCG(3, 4))
		for wctx.Err() == nil {
			off := r.Int64N(size/2/512-8) * 512
			p := bytes.Repeat([]byte{byte(r.Uint32())}, 512*(1+r.IntN(8)))
			mu.Lock()
			if err := e.WriteAt(ctx, p, off, false); err != nil {
				t.Errorf("write during the copy: %v", err)
			}
			copy(model[off:], p)
			mu.Unlock()
		}
	})
	copied, err := e.Resync(ctx, nil)
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("resync: %v", err)
	}
	if copied != size {
		t.Errorf("resync copied %d bytes, want the whole set, %d", copied, size)
	}
	if st := e.States(); st[3] != raid.InSync {
		t.Fatalf("states after the copy %v, want the successor in sync", st)
	}
	if !bytes.Equal(devs[3].Bytes(), devs[1].Bytes()) {
		t.Fatal("the successor differs from the member it succeeds")
	}

	// It goes on getting member 1's writes.
	p := bytes.Repeat([]byte{0xAB}, 3*unit)
	if err := e.WriteAt(ctx, p, unit, true); err != nil {
		t.Fatal(err)
	}
	copy(model[unit:], p)
	if err := e.Trim(ctx, size-4*unit, 4*unit); err != nil {
		t.Fatal(err)
	}
	clear(model[size-4*unit:])
	if !bytes.Equal(devs[3].Bytes(), devs[1].Bytes()) {
		t.Fatal("the successor missed a write or trim of the member it succeeds")
	}

	// Never read: reads with the successor gone do not notice it.
	devs[3].SetFailed(true)
	got := make([]byte, size)
	if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("read with the successor unreachable: %v, equal to the model %v", err, bytes.Equal(got, model))
	}
	if st := e.States(); st[3] != raid.InSync {
		t.Fatalf("a read failed the successor: %v", st)
	}
	// A write to member 1 (unit D1 of stripe 0) fails it alone.
	if err := e.WriteAt(ctx, p[:512], unit, false); err != nil {
		t.Fatal(err)
	}
	copy(model[unit:], p[:512])
	if st := e.States(); st[3] != raid.Failed || st[0] != raid.InSync || st[1] != raid.InSync || st[2] != raid.InSync {
		t.Fatalf("states after the successor failed a write: %v", st)
	}
	if !e.WIB().NeedsResync(0) {
		t.Fatal("the region of a write the successor missed does not need a resync")
	}
	// The set needs two of members 0..2: with member 0 gone too, it
	// still serves; with member 2 gone as well, the successor does not
	// make up for it.
	devs[0].SetFailed(true)
	if err := e.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("degraded read: %v, equal to the model %v", err, bytes.Equal(got, model))
	}
	devs[2].SetFailed(true)
	if err := e.ReadAt(ctx, got, 0); !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("read with one of the layout's three members left: %v, want ErrNoMembers", err)
	}
}
