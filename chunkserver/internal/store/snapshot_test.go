package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// fill returns n bytes of a pattern that differs by seed and offset.
func fill(seed byte, off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed ^ byte((off+int64(i))/512)
	}
	return b
}

// image reads the whole chunk, or snapshot name of it.
func image(t *testing.T, c *Chunk, name string) []byte {
	t.Helper()
	b := make([]byte, c.Size())
	var err error
	if name == "" {
		err = c.ReadAt(b, 0)
	} else {
		err = c.ReadSnapshotAt(name, b, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotCopyOnWrite: a snapshot reads the chunk as it was when taken
// through writes, trims and write-zeroes after it, with a newer snapshot
// between; both survive a restart, and a layer file its sidecar does not
// record is removed when the store opens.
func TestSnapshotCopyOnWrite(t *testing.T) {
	mem := vfs.NewMem()
	s := openFS(t, mem, nil)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, testSize)
	write := func(seed byte, off int64, n int) {
		t.Helper()
		p := fill(seed, off, n)
		if err := c.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
	}
	write(1, 0, 300<<10)
	if err := c.Snapshot("s1"); err != nil {
		t.Fatal(err)
	}
	atS1 := bytes.Clone(model)
	write(2, 100<<10, 8<<10)  // inside one block
	write(3, 190<<10, 80<<10) // across blocks
	if err := c.Trim(512<<10, 128<<10); err != nil {
		t.Fatal(err)
	}
	clear(model[512<<10 : 640<<10])
	if err := c.Snapshot("s2"); err != nil {
		t.Fatal(err)
	}
	atS2 := bytes.Clone(model)
	write(4, 0, 64<<10)
	write(5, 100<<10, 4<<10) // saved in s1's layer, not in s2's
	if err := c.WriteZeroes(200<<10, 64<<10, true); err != nil {
		t.Fatal(err)
	}
	clear(model[200<<10 : 264<<10])
	write(6, testSize-4096, 4096)

	check := func(c *Chunk) {
		t.Helper()
		for name, want := range map[string][]byte{"": model, "s1": atS1, "s2": atS2} {
			if got := image(t, c, name); !bytes.Equal(got, want) {
				t.Fatalf("%q reads other bytes than it held (first difference at %d)", name, firstDifference(got, want))
			}
		}
	}
	check(c)
	if err := c.Snapshot("s1"); !errors.Is(err, ErrSnapshotExists) {
		t.Errorf("a second s1: %v, want ErrSnapshotExists", err)
	}
	if err := c.Snapshot("bad name"); err == nil || !strings.Contains(err.Error(), "invalid snapshot name") {
		t.Errorf("a bad name: %v", err)
	}
	if err := c.ReadSnapshotAt("nope", make([]byte, 4096), 0); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("an unknown snapshot: %v, want ErrNoSnapshot", err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// An orphan layer file (a Snapshot interrupted before its record).
	f, err := mem.OpenFile(memDir+"/c1.snap-9", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	s = openFS(t, mem, nil)
	if c, err = s.Get("c1"); err != nil {
		t.Fatal(err)
	}
	check(c)
	if got := c.Snapshots(); len(got) != 2 || got[0].Name != "s1" || got[1].Name != "s2" {
		t.Errorf("after a restart: %+v", got)
	}
	if _, err := mem.Stat(memDir + "/c1.snap-9"); err == nil {
		t.Error("the orphan layer file was not removed")
	}
	// A delete takes the layer files with the chunk.
	if err := s.Delete("c1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range mem.Names() {
		if strings.Contains(n, "c1.") {
			t.Errorf("%s left after the delete", n)
		}
	}
}

// powerCut is a MemFS whose power fails after the at-th filesystem
// operation counted from arm: crashed is what its disk held then (or at the
// end, if the operations ran out first).
type powerCut struct {
	mem       *vfs.MemFS
	at, count int
	cut       *vfs.MemFS
}

func newPowerCut(at int) *powerCut { return &powerCut{mem: vfs.NewMem(), at: at, count: -1} }

func (p *powerCut) fs() vfs.FS {
	return vfs.NewErrorFS(p.mem, vfs.InjectorFunc(func(vfs.Op, string) error {
		if p.count >= 0 {
			if p.count == p.at {
				p.cut = p.mem.CrashClone()
			}
			p.count++
		}
		return nil
	}))
}

func (p *powerCut) arm()         { p.count = 0 }
func (p *powerCut) failed() bool { return p.cut != nil }

func (p *powerCut) crashed() *vfs.MemFS {
	if p.cut == nil {
		return p.mem.CrashClone()
	}
	return p.cut
}

// TestSnapshotPowerLoss: the power fails after each filesystem operation
// of a snapshot and a write after it. After every one, the chunk loads,
// a snapshot that was recorded reads the data it was taken over, the
// chunk's blocks hold the old or the new data, and once the write was
// synced the new.
func TestSnapshotPowerLoss(t *testing.T) {
	const off, n = 60 << 10, 72 << 10 // across two blocks
	old, neu := fill(1, 0, testSize), fill(9, off, n)
	run := func(crashAt int) (crashed *vfs.MemFS, ops int, snapped, synced bool) {
		pc := newPowerCut(crashAt)
		s := openFS(t, pc.fs(), nil)
		c, err := s.Create("c1", testSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteAt(old, 0); err != nil {
			t.Fatal(err)
		}
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		pc.arm()
		if err := c.Snapshot("s"); err != nil {
			t.Fatal(err)
		}
		snapped = !pc.failed()
		if err := c.WriteAt(neu, off); err != nil {
			t.Fatal(err)
		}
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		synced = !pc.failed()
		return pc.crashed(), pc.count, snapped, synced
	}
	_, total, _, _ := run(-1)
	if total < 5 {
		t.Fatalf("only %d operations", total)
	}
	for k := 0; k <= total; k++ {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			crashed, _, snapped, synced := run(k)
			s := openFS(t, crashed, nil)
			c, err := s.Get("c1")
			if err != nil {
				t.Fatalf("the chunk does not load after a power loss at operation %d: %v", k, err)
			}
			layers := c.Snapshots()
			if snapped && len(layers) != 1 {
				t.Fatalf("Snapshot returned, then the power failed: %d layers", len(layers))
			}
			if len(layers) == 1 {
				if got := image(t, c, "s"); !bytes.Equal(got, old) {
					t.Fatalf("the snapshot reads other bytes than it was taken over (first difference at %d)", firstDifference(got, old))
				}
			}
			live := image(t, c, "")
			want := bytes.Clone(old)
			copy(want[off:], neu)
			if synced && !bytes.Equal(live, want) {
				t.Fatal("the synced write is lost")
			}
			for p := int64(0); p < testSize; p += 4096 {
				if !bytes.Equal(live[p:p+4096], old[p:p+4096]) && !bytes.Equal(live[p:p+4096], want[p:p+4096]) {
					t.Fatalf("page at %d holds neither the old nor the new bytes", p)
				}
			}
		})
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSnapshotDeleteAndRollback: deleting a snapshot keeps the older and
// newer ones reading what they held, whichever is deleted; a rollback
// makes the chunk read as the snapshot and keeps the others.
func TestSnapshotDeleteAndRollback(t *testing.T) {
	for _, del := range []string{"s1", "s2", "s3"} {
		t.Run("delete "+del, func(t *testing.T) {
			mem := vfs.NewMem()
			s := openFS(t, mem, nil)
			c, err := s.Create("c1", testSize)
			if err != nil {
				t.Fatal(err)
			}
			model := make([]byte, testSize)
			images := map[string][]byte{}
			for i, name := range []string{"s1", "s2", "s3"} {
				// Each round writes blocks of its own and one all touch.
				for _, off := range []int64{int64(i) * 128 << 10, 512 << 10} {
					p := fill(byte(10+i), off, 96<<10)
					if err := c.WriteAt(p, off); err != nil {
						t.Fatal(err)
					}
					copy(model[off:], p)
				}
				if err := c.Snapshot(name); err != nil {
					t.Fatal(err)
				}
				images[name] = bytes.Clone(model)
			}
			p := fill(99, 0, testSize)
			if err := c.WriteAt(p, 0); err != nil {
				t.Fatal(err)
			}
			copy(model, p)
			if err := c.DeleteSnapshot(del); err != nil {
				t.Fatal(err)
			}
			if err := c.DeleteSnapshot(del); !errors.Is(err, ErrNoSnapshot) {
				t.Errorf("deleting it again: %v", err)
			}
			delete(images, del)
			check := func(c *Chunk) {
				t.Helper()
				for name, want := range images {
					if got := image(t, c, name); !bytes.Equal(got, want) {
						t.Fatalf("%s after deleting %s: first difference at %d", name, del, firstDifference(got, want))
					}
				}
				if got := image(t, c, ""); !bytes.Equal(got, model) {
					t.Fatal("the chunk changed")
				}
			}
			check(c)
			s.Close()
			s = openFS(t, mem, nil)
			if c, err = s.Get("c1"); err != nil {
				t.Fatal(err)
			}
			check(c)
			if _, err := mem.Stat(memDir + "/c1.snap-" + del[1:]); err == nil {
				t.Error("the deleted layer's file is still there")
			}

			// Roll back to the oldest snapshot left.
			oldest := c.Snapshots()[0].Name
			if err := c.Rollback(oldest); err != nil {
				t.Fatal(err)
			}
			if got := image(t, c, ""); !bytes.Equal(got, images[oldest]) {
				t.Fatalf("after a rollback to %s: first difference at %d", oldest, firstDifference(got, images[oldest]))
			}
			model = images[oldest]
			check(c)
			if err := c.Rollback("nope"); !errors.Is(err, ErrNoSnapshot) {
				t.Errorf("rollback to an unknown snapshot: %v", err)
			}
		})
	}
}

// TestSnapshotDeletePowerLoss: the power fails after each filesystem
// operation of deleting a middle snapshot. After every one, the chunk
// loads and the older snapshot reads what it held, with the deleted one
// gone once DeleteSnapshot returned.
func TestSnapshotDeletePowerLoss(t *testing.T) {
	run := func(crashAt int) (crashed *vfs.MemFS, ops int, deleted bool, s1 []byte) {
		pc := newPowerCut(crashAt)
		s := openFS(t, pc.fs(), nil)
		c, err := s.Create("c1", testSize)
		if err != nil {
			t.Fatal(err)
		}
		for i, name := range []string{"s1", "s2"} {
			if err := c.WriteAt(fill(byte(i+1), 0, 256<<10), 0); err != nil {
				t.Fatal(err)
			}
			if err := c.Snapshot(name); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				s1 = image(t, c, "s1")
			}
		}
		if err := c.WriteAt(fill(7, 0, 256<<10), 0); err != nil {
			t.Fatal(err)
		}
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		pc.arm()
		if err := c.DeleteSnapshot("s2"); err != nil {
			t.Fatal(err)
		}
		return pc.crashed(), pc.count, !pc.failed(), s1
	}
	_, total, _, _ := run(-1)
	for k := 0; k <= total; k++ {
		crashed, _, deleted, s1 := run(k)
		s := openFS(t, crashed, nil)
		c, err := s.Get("c1")
		if err != nil {
			t.Fatalf("operation %d: the chunk does not load: %v", k, err)
		}
		if got := image(t, c, "s1"); !bytes.Equal(got, s1) {
			t.Fatalf("operation %d: s1 reads other bytes (first difference at %d)", k, firstDifference(got, s1))
		}
		if n := len(c.Snapshots()); deleted && n != 1 {
			t.Fatalf("operation %d: DeleteSnapshot returned, %d snapshots after the power loss", k, n)
		}
	}
	t.Logf("a power loss after each of %d operations of the delete", total)
}

// TestSnapshotExtents: a snapshot's extents are data where it or a newer
// layer saved a block, even where the chunk is a hole now, and else the
// chunk's own.
func TestSnapshotExtents(t *testing.T) {
	s := openFS(t, vfs.NewMem(), nil)
	c, err := s.Create("c1", testSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(fill(1, 0, 128<<10), 128<<10); err != nil { // blocks 2 and 3
		t.Fatal(err)
	}
	if err := c.Snapshot("s"); err != nil {
		t.Fatal(err)
	}
	if err := c.Trim(128<<10, 64<<10); err != nil { // block 2 is saved, a hole now
		t.Fatal(err)
	}
	if err := c.WriteAt(fill(2, 0, 4096), 512<<10); err != nil { // block 8 saved (a hole), data now
		t.Fatal(err)
	}
	got, err := c.SnapshotExtents("s", 0, testSize)
	if err != nil {
		t.Fatal(err)
	}
	// MemFS reports holes at its page size: check what each 64 KiB block is.
	isData := func(b int64) bool {
		pos := int64(0)
		for _, e := range got {
			if b*(64<<10) >= pos && b*(64<<10) < pos+e.Length {
				return !e.Hole
			}
			pos += e.Length
		}
		t.Fatalf("block %d not described", b)
		return false
	}
	for b, want := range map[int64]bool{0: false, 1: false, 2: true, 3: true, 4: false, 8: true, 15: false} {
		if isData(b) != want {
			t.Errorf("block %d: data %v, want %v (extents %+v)", b, !want, want, got)
		}
	}
	if _, err := c.SnapshotExtents("nope", 0, 4096); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("an unknown snapshot: %v", err)
	}
}
