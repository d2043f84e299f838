package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// TestCloneModel runs random writes, trims, snapshots, snapshot deletions,
// rollbacks, a flatten and restarts on a base chunk and a clone of one of its
// snapshots, and after every step compares every image (each chunk live
// and each of its snapshots) with a model of plain byte slices.
func TestCloneModel(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runCloneModel(t, seed) })
	}
}

type modelChunk struct {
	id    string
	live  []byte
	snaps map[string][]byte
	order []string // snapshot names, oldest first
}

func runCloneModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	fsys := vfs.NewMem()
	s := openFS(t, fsys, nil)
	b, err := s.Create("base", testSize)
	if err != nil {
		t.Fatal(err)
	}
	base := &modelChunk{id: "base", live: make([]byte, testSize), snaps: map[string][]byte{}}
	write := func(c *Chunk, m *modelChunk) string {
		off := rng.Int64N(testSize - 1)
		n := 1 + rng.Int64N(min(testSize-off, 150<<10))
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.UintN(256))
		}
		if err := c.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(m.live[off:], p)
		return fmt.Sprintf("write %s %d+%d", m.id, off, n)
	}
	// The base's first writes and the clone's snapshot.
	for range 4 {
		write(b, base)
	}
	if err := b.Snapshot("gold"); err != nil {
		t.Fatal(err)
	}
	base.snaps["gold"], base.order = bytes.Clone(base.live), []string{"gold"}
	if _, err := s.CreateClone("k", "base", "gold"); err != nil {
		t.Fatal(err)
	}
	clone := &modelChunk{id: "k", live: bytes.Clone(base.live), snaps: map[string][]byte{}}
	get := func(m *modelChunk) *Chunk {
		c, err := s.Get(m.id)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	var steps []string
	check := func() {
		t.Helper()
		for _, m := range []*modelChunk{base, clone} {
			c := get(m)
			if got := image(t, c, ""); !bytes.Equal(got, m.live) {
				t.Fatalf("after %v: %s reads other bytes than written (first difference at %d)", steps, m.id, firstDifference(got, m.live))
			}
			for _, name := range m.order {
				if got := image(t, c, name); !bytes.Equal(got, m.snaps[name]) {
					t.Fatalf("after %v: snapshot %s of %s changed (first difference at %d)", steps, name, m.id, firstDifference(got, m.snaps[name]))
				}
			}
		}
	}
	snapN := 0
	flattened := false
	for range 40 {
		m := base
		if rng.IntN(3) > 0 {
			m = clone
		}
		c := get(m)
		var step string
		switch op := rng.IntN(10); {
		case op < 4:
			step = write(c, m)
		case op == 4:
			off := rng.Int64N(testSize/4096) * 4096
			n := min(4096*(1+rng.Int64N(40)), testSize-off)
			if err := c.Trim(off, n); err != nil {
				t.Fatal(err)
			}
			copy(m.live[off:off+n], make([]byte, n))
			step = fmt.Sprintf("trim %s %d+%d", m.id, off, n)
		case op == 5:
			snapN++
			name := fmt.Sprintf("s%d", snapN)
			if err := c.Snapshot(name); err != nil {
				t.Fatal(err)
			}
			m.snaps[name], m.order = bytes.Clone(m.live), append(m.order, name)
			step = "snapshot " + m.id + " " + name
		case op == 6 && len(m.order) > 0:
			name := m.order[rng.IntN(len(m.order))]
			err := c.DeleteSnapshot(name)
			if m == base && name == "gold" && !flattened {
				if !errors.Is(err, ErrInUse) {
					t.Fatalf("deleting the clone's base snapshot: %v", err)
				}
				step = "refused delete of gold"
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			delete(m.snaps, name)
			m.order = slices.DeleteFunc(m.order, func(n string) bool { return n == name })
			step = "delete snapshot " + m.id + " " + name
		case op == 7 && len(m.order) > 0:
			name := m.order[rng.IntN(len(m.order))]
			if err := c.Rollback(name); err != nil {
				t.Fatal(err)
			}
			m.live = bytes.Clone(m.snaps[name])
			step = "rollback " + m.id + " to " + name
		case op == 9 && m == clone && !flattened && rng.IntN(3) == 0:
			if err := c.Flatten(nil); err != nil {
				t.Fatal(err)
			}
			flattened = true
			step = "flatten k"
			t.Logf("the clone is flattened at step %d", len(steps)+1)
		case op == 8:
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openFS(t, fsys, nil)
			step = "restart"
		default:
			step = write(c, m)
		}
		steps = append(steps, step)
		check()
	}
}
