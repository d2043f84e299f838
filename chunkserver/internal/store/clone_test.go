package store

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// TestClone: a clone of a snapshot reads the snapshot, not what the base
// wrote since; writes, trims and write-zeroes to the clone (partial blocks
// too) never show on the base or its snapshot; the clone's extents are its
// own where it wrote and the base snapshot's elsewhere; a snapshot of the
// clone reads the clone as it was; all of it survives a restart; the base
// chunk and its snapshot cannot be deleted while the clone exists.
func TestClone(t *testing.T) {
	fsys := vfs.NewMem()
	s := openFS(t, fsys, nil)
	b, err := s.Create("base", testSize)
	if err != nil {
		t.Fatal(err)
	}
	// The base: data in its first half, a hole in the second.
	snapBytes := make([]byte, testSize)
	copy(snapBytes, fill(1, 0, testSize/2))
	if err := b.WriteAt(snapBytes[:testSize/2], 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Snapshot("gold"); err != nil {
		t.Fatal(err)
	}
	baseLive := bytes.Clone(snapBytes)
	copy(baseLive[100<<10:], fill(2, 100<<10, 200<<10))
	if err := b.WriteAt(baseLive[100<<10:300<<10], 100<<10); err != nil {
		t.Fatal(err)
	}
	k, err := s.CreateClone("k", "base", "gold")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.CreateClone("k", "base", "gold"); err != nil || again != k {
		t.Fatalf("creating the clone again: %v", err)
	}
	if _, err := s.CreateClone("k2", "base", "nosuch"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("a clone of an unknown snapshot: %v", err)
	}
	if got := image(t, k, ""); !bytes.Equal(got, snapBytes) {
		t.Fatalf("the new clone does not read the snapshot (first difference at %d)", firstDifference(got, snapBytes))
	}
	// Writes to the clone: part of a block over base data, part over the
	// base's hole, a trim and write-zeroes.
	cloneLive := bytes.Clone(snapBytes)
	write := func(off int64, n int, seed byte) {
		t.Helper()
		p := fill(seed, off, n)
		if err := k.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(cloneLive[off:], p)
	}
	write(70000, 100, 7)
	write(testSize/2+5000, 9000, 8)
	if err := k.Trim(192<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	copy(cloneLive[192<<10:256<<10], make([]byte, 64<<10))
	if err := k.WriteZeroes(10<<10, 4<<10, false); err != nil {
		t.Fatal(err)
	}
	copy(cloneLive[10<<10:14<<10], make([]byte, 4<<10))
	if err := k.Snapshot("before"); err != nil {
		t.Fatal(err)
	}
	cloneSnap := bytes.Clone(cloneLive)
	write(65<<10, 4096, 9)
	write(testSize-4096, 4096, 10)

	check := func(what string, k, b *Chunk) {
		t.Helper()
		for _, c := range []struct {
			name    string
			chunk   *Chunk
			snap    string
			want    []byte
			because string
		}{
			{"clone", k, "", cloneLive, "the clone's writes"},
			{"clone's snapshot", k, "before", cloneSnap, "the clone as it was"},
			{"base", b, "", baseLive, "the base's writes only"},
			{"base snapshot", b, "gold", snapBytes, "the snapshot as taken"},
		} {
			if got := image(t, c.chunk, c.snap); !bytes.Equal(got, c.want) {
				t.Fatalf("%s: the %s does not read %s (first difference at %d)", what, c.name, c.because, firstDifference(got, c.want))
			}
		}
		ext, err := k.Extents(0, testSize)
		if err != nil {
			t.Fatal(err)
		}
		// Where the clone reads data, its extents must say data.
		pos := int64(0)
		for _, e := range ext {
			if e.Hole && !allZero(cloneLive[pos:pos+e.Length]) {
				t.Fatalf("%s: the clone's extents call [%d, %d) a hole; it holds data", what, pos, pos+e.Length)
			}
			pos += e.Length
		}
		if pos != testSize {
			t.Fatalf("%s: extents cover %d bytes", what, pos)
		}
	}
	check("running", k, b)

	if err := b.DeleteSnapshot("gold"); !errors.Is(err, ErrInUse) {
		t.Fatalf("deleting the clone's base snapshot: %v", err)
	}
	if err := s.Delete("base"); !errors.Is(err, ErrInUse) {
		t.Fatalf("deleting the clone's base chunk: %v", err)
	}

	s.Close()
	s = openFS(t, fsys, nil)
	k, err = s.Get("k")
	if err != nil {
		t.Fatalf("the clone after a restart: %v", err)
	}
	b, err = s.Get("base")
	if err != nil {
		t.Fatal(err)
	}
	if base, snap, ok := k.Base(); !ok || base != "base" || snap != "gold" {
		t.Fatalf("the clone's base after a restart: %s@%s %v", base, snap, ok)
	}
	check("after a restart", k, b)
	if err := b.DeleteSnapshot("gold"); !errors.Is(err, ErrInUse) {
		t.Fatalf("deleting the clone's base snapshot after a restart: %v", err)
	}
	if err := s.Delete("k"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteSnapshot("gold"); err != nil {
		t.Fatalf("deleting the snapshot once the clone is gone: %v", err)
	}
	if err := s.Delete("base"); err != nil {
		t.Fatal(err)
	}
}

// TestClonePowerLoss cuts the power after every filesystem operation of a
// clone's first writes (a partial block, so the block is copied from the
// base first): after the restart the clone reads, page by page, either what
// the snapshot held or what was written, never zeroes where the base had
// data; a synced write is there; the base snapshot is untouched.
func TestClonePowerLoss(t *testing.T) {
	const off, n = 60 << 10, 8 << 10 // across two blocks, partly
	old := fill(1, 0, testSize)
	neu := fill(9, off, n)
	run := func(crashAt int) (crashed *vfs.MemFS, ops int, synced bool) {
		pc := newPowerCut(crashAt)
		s := openFS(t, pc.fs(), nil)
		_, k := baseAndClone(t, s, map[int64][]byte{0: old})
		pc.arm()
		if err := k.WriteAt(neu, off); err != nil && !pc.failed() {
			t.Fatal(err)
		}
		if err := k.Sync(); err != nil && !pc.failed() {
			t.Fatal(err)
		}
		synced = !pc.failed()
		return pc.crashed(), pc.count, synced
	}
	_, total, _ := run(-1)
	if total < 4 {
		t.Fatalf("only %d operations", total)
	}
	want := bytes.Clone(old)
	copy(want[off:], neu)
	for k := 0; k <= total; k++ {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			crashed, _, synced := run(k)
			s := openFS(t, crashed, nil)
			c, err := s.Get("k")
			if err != nil {
				t.Fatalf("the clone does not load after a power loss at operation %d: %v", k, err)
			}
			b, err := s.Get("base")
			if err != nil {
				t.Fatal(err)
			}
			if got := image(t, b, "gold"); !bytes.Equal(got, old) {
				t.Fatal("the base snapshot changed")
			}
			live := image(t, c, "")
			if synced && !bytes.Equal(live, want) {
				t.Fatalf("the synced write is lost (first difference at %d)", firstDifference(live, want))
			}
			for p := int64(0); p < testSize; p += 4096 {
				if !bytes.Equal(live[p:p+4096], old[p:p+4096]) && !bytes.Equal(live[p:p+4096], want[p:p+4096]) {
					t.Fatalf("page at %d holds neither the snapshot's nor the written bytes", p)
				}
			}
		})
	}
}

// TestCloneFlatten: a flattened clone reads as before, owns every block
// (the base snapshot's holes stay holes in its data file), is an ordinary
// chunk after a restart, and frees its base snapshot and base chunk.
func TestCloneFlatten(t *testing.T) {
	fsys := vfs.NewMem()
	s := openFS(t, fsys, nil)
	b, k := baseAndClone(t, s, map[int64][]byte{0: fill(1, 0, testSize/2)})
	if err := k.WriteAt(fill(5, 70000, 3000), 70000); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAt(fill(9, 0, 4096), 0); err != nil {
		t.Fatal(err)
	}
	want := image(t, k, "")
	var calls int
	var last [2]int64
	if err := k.Flatten(func(done, total int64) { calls++; last = [2]int64{done, total} }); err != nil {
		t.Fatal(err)
	}
	if calls == 0 || last[0] != last[1] || last[1] != testSize/SnapBlock {
		t.Errorf("progress: %d calls, last %v", calls, last)
	}
	if _, _, ok := k.Base(); ok {
		t.Error("the flattened chunk still names a base")
	}
	if got := image(t, k, ""); !bytes.Equal(got, want) {
		t.Fatalf("the flattened clone reads other bytes (first difference at %d)", firstDifference(got, want))
	}
	ext, err := k.Extents(testSize/2, testSize/2)
	if err != nil || len(ext) != 1 || !ext[0].Hole {
		t.Errorf("the base's hole is not a hole of the flattened clone: %+v, %v", ext, err)
	}
	if err := k.Flatten(nil); err != nil {
		t.Errorf("flattening again: %v", err)
	}
	if err := b.DeleteSnapshot("gold"); err != nil {
		t.Fatalf("the base snapshot after the flatten: %v", err)
	}
	if err := s.Delete("base"); err != nil {
		t.Fatalf("the base chunk after the flatten: %v", err)
	}
	s.Close()
	s = openFS(t, fsys, nil)
	k, err = s.Get("k")
	if err != nil {
		t.Fatal(err)
	}
	if got := image(t, k, ""); !bytes.Equal(got, want) {
		t.Fatal("the flattened clone after a restart reads other bytes")
	}
}

// TestCloneFlattenPowerLoss cuts the power after every filesystem
// operation of a Flatten: the chunk always loads and reads what the clone
// held, as a clone still or flattened.
func TestCloneFlattenPowerLoss(t *testing.T) {
	base := fill(1, 0, testSize)
	copy(base[testSize/2:], make([]byte, testSize/4)) // zeroes in the middle
	run := func(crashAt int) (*vfs.MemFS, int, []byte) {
		pc := newPowerCut(crashAt)
		s := openFS(t, pc.fs(), nil)
		_, k := baseAndClone(t, s, map[int64][]byte{0: base[:testSize/2], 3 * testSize / 4: base[3*testSize/4:]})
		if err := k.WriteAt(fill(5, 4096, 100), 4096); err != nil {
			t.Fatal(err)
		}
		if err := k.Sync(); err != nil {
			t.Fatal(err)
		}
		want := image(t, k, "")
		pc.arm()
		if err := k.Flatten(nil); err != nil && !pc.failed() {
			t.Fatal(err)
		}
		return pc.crashed(), pc.count, want
	}
	_, total, _ := run(-1)
	if total < 3 {
		t.Fatalf("only %d operations", total)
	}
	for n := 0; n <= total; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			crashed, _, want := run(n)
			s := openFS(t, crashed, nil)
			k, err := s.Get("k")
			if err != nil {
				t.Fatalf("the clone does not load after a power loss at operation %d: %v", n, err)
			}
			if got := image(t, k, ""); !bytes.Equal(got, want) {
				t.Fatalf("the clone reads other bytes after a power loss at operation %d (first difference at %d)", n, firstDifference(got, want))
			}
		})
	}
}

// baseAndClone creates chunk "base" in s with data written at each offset
// of writes, takes its snapshot "gold" and returns it with clone "k" of it.
func baseAndClone(t *testing.T, s *Store, writes map[int64][]byte) (b, k *Chunk) {
	t.Helper()
	b, err := s.Create("base", testSize)
	if err != nil {
		t.Fatal(err)
	}
	for off, p := range writes {
		if err := b.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Snapshot("gold"); err != nil {
		t.Fatal(err)
	}
	if k, err = s.CreateClone("k", "base", "gold"); err != nil {
		t.Fatal(err)
	}
	return b, k
}
