package raid_test

import (
	"bytes"
	"errors"
	"syscall"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
)

// TestMirrorNoSpace: a write every member refuses for lack of space fails
// with ErrNoSpace (and ENOSPC), fails no member and leaves the set clean;
// reads go on. A write that one member stores while the other has no space
// is acknowledged degraded, with the full member failed.
func TestMirrorNoSpace(t *testing.T) {
	ctx := t.Context()
	m, devs := newWIBMirror(t, 2, 8<<20, 1<<20)
	old := bytes.Repeat([]byte{0x11}, 64<<10)
	if err := m.WriteAt(ctx, old, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		d.SetFull(true)
	}
	err := m.WriteAt(ctx, bytes.Repeat([]byte{0x22}, 64<<10), 4<<20, false)
	if !errors.Is(err, raid.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write with every member full: %v, want ErrNoSpace", err)
	}
	for i, st := range m.States() {
		if st != raid.InSync {
			t.Fatalf("member %d is %v after a write refused for lack of space", i, st)
		}
	}
	if m.Degraded() {
		t.Fatal("the set needs a resync after a write that changed nothing")
	}
	got := make([]byte, len(old))
	if err := m.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("read on a full set: %v", err)
	}
	if err := m.Flush(ctx); err != nil {
		t.Fatalf("flush on a full set: %v", err)
	}
	for i, d := range devs {
		if !bytes.Equal(d.Bytes(), devs[0].Bytes()) {
			t.Fatalf("member %d differs from member 0", i)
		}
	}

	devs[0].SetFull(false)
	if err := m.WriteAt(ctx, bytes.Repeat([]byte{0x33}, 64<<10), 4<<20, false); err != nil {
		t.Fatalf("write stored by one member of two: %v", err)
	}
	if st := m.States(); st[0] != raid.InSync || st[1] != raid.Failed {
		t.Fatalf("states after member 1 alone had no space: %v", st)
	}
}

// TestECNoSpace: the same for an EC set: a write every member refuses
// fails with ErrNoSpace, fails no member, and every stripe stays
// consistent with what was there; with one member full the write is
// acknowledged degraded.
func TestECNoSpace(t *testing.T) {
	ctx := t.Context()
	f := newEC(t, 2, 1, 4096, 1<<20)
	want := make([]byte, f.ec.Size())
	copy(want, bytes.Repeat([]byte{0x11}, 64<<10))
	if err := f.ec.WriteAt(ctx, want[:64<<10], 0, false); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.devs {
		d.SetFull(true)
	}
	err := f.ec.WriteAt(ctx, bytes.Repeat([]byte{0x22}, 6000), 100<<10, false)
	if !errors.Is(err, raid.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write with every member full: %v, want ErrNoSpace", err)
	}
	for i, st := range f.ec.States() {
		if st != raid.InSync {
			t.Fatalf("member %d is %v after a write refused for lack of space", i, st)
		}
	}
	checkStripes(t, f.g, f.devs, f.ec.States(), want)

	f.devs[2].SetFull(false)
	f.devs[1].SetFull(false)
	if err := f.ec.WriteAt(ctx, bytes.Repeat([]byte{0x33}, 4096), 0, false); err != nil {
		t.Fatalf("write with one member of three full: %v", err)
	}
	copy(want, bytes.Repeat([]byte{0x33}, 4096))
	if st := f.ec.States(); st[0] != raid.Failed {
		t.Fatalf("states after member 0 alone had no space: %v", st)
	}
	got := make([]byte, 64<<10)
	if err := f.ec.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, want[:64<<10]) {
		t.Fatalf("read back after a degraded write: %v", err)
	}
}
