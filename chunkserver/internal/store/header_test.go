package store

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"github.com/chunkraid/chunkraid/bitmap"
)

// testLogState returns the persisted form of a LOG bitmap of a chunk of
// size bytes with the given regions marked.
func testLogState(t testing.TB, size, region int64, pinned bool, marks ...int64) []byte {
	t.Helper()
	l, err := bitmap.NewLog(bitmap.LogConfig{Size: size, RegionSize: region})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range marks {
		l.Mark(r*region, 1)
	}
	if pinned {
		l.Pin()
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// v1Sidecar encodes a version-1 sidecar as earlier chunkservers wrote it.
func v1Sidecar(id string, size int64, epoch uint64, created int64) []byte {
	b := make([]byte, headerLen)
	copy(b[0:8], headerMagic)
	binary.LittleEndian.PutUint16(b[8:], headerVersion1)
	binary.LittleEndian.PutUint16(b[10:], headerLen)
	binary.LittleEndian.PutUint16(b[12:], uint16(len(id)))
	binary.LittleEndian.PutUint64(b[16:], uint64(size))
	binary.LittleEndian.PutUint64(b[32:], epoch)
	binary.LittleEndian.PutUint64(b[40:], uint64(created))
	copy(b[48:112], id)
	binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	return b
}

func TestHeaderRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		h    Header
	}{
		{"with LOG", Header{ID: "0f8c2c52-8d0b-4a39-9a55-3f3c0a8a9d11", Size: 64 << 20, MinEpoch: 7, Created: 1234567890,
			Log: testLogState(t, 64<<20, 1<<20, true, 0, 5, 63)}},
		{"without LOG", Header{ID: "c1", Size: 4096, MinEpoch: 0, Created: 1}},
		{"many regions", Header{ID: "c2", Size: 1 << 30, MinEpoch: 1 << 40, Created: -5,
			Log: testLogState(t, 1<<30, 4096, false, 1, 2, 3, 262143)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.h.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != headerLen+len(tt.h.Log) {
				t.Fatalf("encoded %d bytes, want %d", len(b), headerLen+len(tt.h.Log))
			}
			var got Header
			if err := got.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tt.h) || got.Version != headerVersion {
				t.Fatalf("round trip: got %+v, want %+v (version 2)", got, tt.h)
			}
		})
	}
}

func TestHeaderReadsVersion1(t *testing.T) {
	var h Header
	if err := h.UnmarshalBinary(v1Sidecar("old", 8192, 3, 99)); err != nil {
		t.Fatal(err)
	}
	want := Header{ID: "old", Size: 8192, MinEpoch: 3, Created: 99}
	if !h.Equal(want) || h.Version != 1 || h.Log != nil {
		t.Fatalf("got %+v, want %+v version 1 without LOG", h, want)
	}
}

func TestHeaderRejects(t *testing.T) {
	log := testLogState(t, 1<<20, 4096, false, 3)
	good, err := Header{ID: "c1", Size: 1 << 20, Log: log}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := append([]byte(nil), good...); b[i] ^= 0xff; return b }
	// resum fixes the header CRC after a change, so that only the field
	// itself is wrong.
	resum := func(b []byte) []byte {
		binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
		return b
	}
	otherSize, err := Header{ID: "c1", Size: 2 << 20, Log: log}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	v1 := v1Sidecar("c1", 4096, 0, 0)
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:100]},
		{"truncated LOG", good[:len(good)-1]},
		{"trailing byte", append(append([]byte(nil), good...), 0)},
		{"magic", flip(0)},
		{"version", flip(8)},
		{"version 3", resum(func() []byte { b := append([]byte(nil), good...); b[8] = 3; return b }())},
		{"flags", resum(flip(14))},
		{"size bit", flip(20)},
		{"loglen", flip(24)},
		{"loglen huge", resum(func() []byte {
			b := append([]byte(nil), good...)
			binary.LittleEndian.PutUint32(b[24:], maxLogLen+1)
			return b
		}())},
		{"reserved 28", resum(flip(28))},
		{"negative epoch", resum(flip(39))},
		{"id byte", flip(48)},
		{"id length", resum(func() []byte { b := append([]byte(nil), good...); b[12] = 65; return b }())},
		{"checksum", flip(125)},
		{"LOG magic", flip(headerLen)},
		{"LOG bits", flip(len(good) - 8)},
		{"LOG crc", flip(len(good) - 1)},
		{"LOG of another size", resum(func() []byte {
			b := append([]byte(nil), good...)
			copy(b[16:24], otherSize[16:24])
			return b
		}())},
		{"version 1 with loglen", resum(func() []byte {
			b := append([]byte(nil), v1...)
			binary.LittleEndian.PutUint32(b[24:], 1)
			return append(b, 0)
		}())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Header
			if err := h.UnmarshalBinary(tt.b); !errors.Is(err, ErrCorruptHeader) {
				t.Fatalf("got %v, want ErrCorruptHeader", err)
			}
		})
	}
	for _, h := range []Header{{ID: "", Size: 1}, {ID: "x", Size: 0}, {ID: "x", Size: 1, MinEpoch: -1}} {
		if _, err := h.MarshalBinary(); err == nil {
			t.Fatalf("%+v encoded", h)
		}
	}
}

func FuzzHeader(f *testing.F) {
	good, _ := Header{ID: "seed", Size: 1 << 20, MinEpoch: 1, Log: testLogState(f, 1<<20, 65536, true, 2)}.MarshalBinary()
	f.Add(good)
	noLog, _ := Header{ID: "seed", Size: 1 << 20}.MarshalBinary()
	f.Add(noLog)
	f.Add(v1Sidecar("seed", 1<<20, 1, 2))
	snaps, _ := Header{ID: "seed", Size: 1 << 20, Log: testLogState(f, 1<<20, 65536, false), SnapBlock: 64 << 10,
		Snapshots: testSnapshots(1<<20, 64<<10, 2)}.MarshalBinary()
	f.Add(snaps)
	clone, _ := testClone(f, true).MarshalBinary()
	f.Add(clone)
	f.Add(make([]byte, headerLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		if err := h.UnmarshalBinary(b); err != nil {
			if !errors.Is(err, ErrCorruptHeader) {
				t.Fatalf("error %v does not wrap ErrCorruptHeader", err)
			}
			return
		}
		out, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded header does not encode: %v", err)
		}
		var h2 Header
		if err := h2.UnmarshalBinary(out); err != nil || !h2.Equal(h) {
			t.Fatalf("re-decode: %+v %v, want %+v", h2, err, h)
		}
	})
}

// testSnapshots returns n snapshot layers of a chunk of size bytes in
// blocks of block bytes, each with some blocks saved.
func testSnapshots(size, block int64, n int) []SnapshotLayer {
	var out []SnapshotLayer
	for i := range n {
		l := SnapshotLayer{Seq: uint32(2*i + 1), Name: "snap-" + string(rune('a'+i)), Created: int64(1000 + i),
			Saved: make([]byte, snapMapLen(size, block))}
		l.Saved[0] = byte(1 << i)
		l.Saved[len(l.Saved)-1] |= 1
		out = append(out, l)
	}
	return out
}

func TestHeaderSnapshots(t *testing.T) {
	const size, block = 8 << 20, 64 << 10
	h := Header{ID: "c1", Size: size, MinEpoch: 3, Created: 9, Log: testLogState(t, size, 1<<20, false, 2),
		SnapBlock: block, Snapshots: testSnapshots(size, block, 3)}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Header
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Version != headerVersion3 || !got.Equal(h) {
		t.Fatalf("round trip: version %d, %+v, want %+v", got.Version, got, h)
	}
	// Without snapshots the sidecar stays version 2, as before.
	h2 := h
	h2.Snapshots = nil
	b2, err := h2.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if v := binary.LittleEndian.Uint16(b2[8:]); v != headerVersion || len(b2) != headerLen+len(h.Log) {
		t.Fatalf("no snapshots: version %d, %d bytes", v, len(b2))
	}

	sec := headerLen + len(h.Log)
	flip := func(i int) []byte { c := append([]byte(nil), b...); c[i] ^= 0x01; return c }
	for name, bad := range map[string][]byte{
		"section magic":         flip(sec),
		"section map bit":       flip(len(b) - 10),
		"section crc":           flip(len(b) - 1),
		"truncated section":     b[:len(b)-1],
		"snaplen without v3":    func() []byte { c := append([]byte(nil), b...); c[8] = headerVersion; return resumHeader(c) }(),
		"v3 without a section":  func() []byte { c := append([]byte(nil), b2...); c[8] = headerVersion3; return resumHeader(c) }(),
		"section longer than b": func() []byte { c := append([]byte(nil), b...); c[28]++; return resumHeader(c) }(),
	} {
		var x Header
		if err := x.UnmarshalBinary(bad); !errors.Is(err, ErrCorruptHeader) {
			t.Errorf("%s: %v, want ErrCorruptHeader", name, err)
		}
	}
	// Whole sections that are well formed but wrong.
	for name, mut := range map[string]func(*Header){
		"out of order": func(h *Header) { h.Snapshots[1].Seq = h.Snapshots[0].Seq },
		"bad block":    func(h *Header) { h.SnapBlock = 3000 },
		"map length":   func(h *Header) { h.Snapshots[0].Saved = h.Snapshots[0].Saved[1:] },
		"long name":    func(h *Header) { h.Snapshots[2].Name = string(make([]byte, 64)) },
		"empty name":   func(h *Header) { h.Snapshots[2].Name = "" },
	} {
		c := h
		c.Snapshots = append([]SnapshotLayer(nil), h.Snapshots...)
		mut(&c)
		if _, err := c.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	// A map bit past the chunk's end (a chunk of 7 blocks).
	odd := Header{ID: "c2", Size: 7 * block, Log: testLogState(t, 7*block, block, false), SnapBlock: block,
		Snapshots: []SnapshotLayer{{Seq: 1, Name: "s", Saved: []byte{0x80}}}}
	ob, err := odd.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var x Header
	if err := x.UnmarshalBinary(ob); !errors.Is(err, ErrCorruptHeader) {
		t.Errorf("a saved bit past the end: %v", err)
	}
}

// resumHeader fixes the fixed part's CRC after a change.
func resumHeader(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	return b
}

// testClone is the header of a clone of 1 MiB owning two blocks, with
// snapshot layers of its own or not.
func testClone(t testing.TB, snaps bool) Header {
	h := Header{ID: "k", Size: 1 << 20, Log: testLogState(t, 1<<20, 65536, false), Base: "base", BaseSnapshot: "gold",
		CloneBlock: 64 << 10, Owned: make([]byte, snapMapLen(1<<20, 64<<10))}
	h.Owned[0], h.Owned[1] = 0x01, 0x80
	if snaps {
		h.SnapBlock, h.Snapshots = 64<<10, testSnapshots(1<<20, 64<<10, 2)
	}
	return h
}

// TestHeaderClone: a clone's sidecar is version 4, with or without
// snapshot layers, round-trips, and refuses damage.
func TestHeaderClone(t *testing.T) {
	for _, snaps := range []bool{false, true} {
		h := testClone(t, snaps)
		b, err := h.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got Header
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if got.Version != headerVersion4 || !got.Equal(h) {
			t.Fatalf("round trip (snapshots %v): version %d, %+v, want %+v", snaps, got.Version, got, h)
		}
		flip := func(i int) []byte { c := append([]byte(nil), b...); c[i] ^= 0x01; return c }
		for name, bad := range map[string][]byte{
			"section crc":        flip(len(b) - 1),
			"owned bit":          flip(len(b) - 6),
			"truncated":          b[:len(b)-1],
			"clonelen without 4": func() []byte { c := append([]byte(nil), b...); c[8] = headerVersion3; return resumHeader(c) }(),
			"clonelen too long":  func() []byte { c := append([]byte(nil), b...); c[112]++; return resumHeader(c) }(),
		} {
			var x Header
			if err := x.UnmarshalBinary(bad); !errors.Is(err, ErrCorruptHeader) {
				t.Errorf("snapshots %v, %s: %v, want ErrCorruptHeader", snaps, name, err)
			}
		}
	}
	for name, mut := range map[string]func(*Header){
		"bad block":      func(h *Header) { h.CloneBlock = 3000 },
		"map length":     func(h *Header) { h.Owned = h.Owned[1:] },
		"no base name":   func(h *Header) { h.BaseSnapshot = "" },
		"long base name": func(h *Header) { h.BaseSnapshot = string(make([]byte, 64)) },
	} {
		c := testClone(t, false)
		mut(&c)
		if _, err := c.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}
