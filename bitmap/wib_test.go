package bitmap

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const mib = 1 << 20

// openTestWIB opens a file-backed WIB in a temporary directory and closes
// it at the end of the test.
func openTestWIB(t *testing.T, cfg WIBConfig) *WIB {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "set.wib")
	}
	w, err := OpenWIB(cfg)
	if err != nil {
		t.Fatalf("OpenWIB(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// dirtyRegions lists the dirty region indexes.
func dirtyRegions(w *WIB) []int64 {
	var out []int64
	for r := range w.Regions() {
		if w.bit(r) {
			out = append(out, r)
		}
	}
	return out
}

func TestOpenWIBConfig(t *testing.T) {
	long := string(make([]byte, 256))
	tests := []struct {
		name string
		cfg  WIBConfig
	}{
		{"zero size", WIBConfig{Size: 0}},
		{"negative size", WIBConfig{Size: -1}},
		{"region not power of two", WIBConfig{Size: mib, RegionSize: 3000}},
		{"region too small", WIBConfig{Size: mib, RegionSize: 256}},
		{"negative region", WIBConfig{Size: mib, RegionSize: -4096}},
		{"volume too long", WIBConfig{Size: mib, Volume: long}},
		{"negative set", WIBConfig{Size: mib, Set: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := OpenWIB(tt.cfg)
			if !errors.Is(err, ErrConfig) {
				if w != nil {
					_ = w.Close()
				}
				t.Fatalf("OpenWIB(%+v) = %v, want ErrConfig", tt.cfg, err)
			}
		})
	}
	w, err := OpenWIB(WIBConfig{Size: 10 * mib})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.RegionSize() != mib || w.Regions() != 10 || w.Size() != 10*mib || w.Path() != "" {
		t.Fatalf("defaults: region %d regions %d size %d path %q", w.RegionSize(), w.Regions(), w.Size(), w.Path())
	}
}

func TestWIBMarkRegions(t *testing.T) {
	const size = 10*mib + 512 // 11 regions, the last one partial
	tests := []struct {
		name      string
		off, n    int64
		want      []int64
		wantDirty bool
	}{
		{"first byte", 0, 1, []int64{0}, true},
		{"whole first region", 0, mib, []int64{0}, true},
		{"crosses one boundary", mib - 1, 2, []int64{0, 1}, true},
		{"spans three", mib + 5, 2 * mib, []int64{1, 2, 3}, true},
		{"partial last region", 10 * mib, 512, []int64{10}, true},
		{"last byte", size - 1, 1, []int64{10}, true},
		{"runs past the end", 9 * mib, 100 * mib, []int64{9, 10}, true},
		{"starts before zero", -mib, mib + 1, []int64{0}, true},
		{"huge length does not overflow", 5 * mib, math.MaxInt64, []int64{5, 6, 7, 8, 9, 10}, true},
		{"zero length", 3 * mib, 0, nil, false},
		{"negative length", 3 * mib, -5, nil, false},
		{"at the end", size, 10, nil, false},
		{"entirely before zero", -2 * mib, mib, nil, false},
		{"min offset", math.MinInt64, 10, nil, false},
	}
	for _, tt := range tests {
		for _, how := range []string{"Mark", "Begin"} {
			t.Run(tt.name+"/"+how, func(t *testing.T) {
				w := openTestWIB(t, WIBConfig{Size: size})
				if how == "Mark" {
					w.Mark(tt.off, tt.n)
				} else {
					tok := w.Begin(tt.off, tt.n)
					defer w.End(tok, true)
				}
				if got := dirtyRegions(w); !slices.Equal(got, tt.want) {
					t.Fatalf("dirty regions %v, want %v", got, tt.want)
				}
				if got := w.Count(); got != int64(len(tt.want)) {
					t.Fatalf("Count = %d, want %d", got, len(tt.want))
				}
				if got := w.IsDirty(tt.off, tt.n); got != tt.wantDirty {
					t.Fatalf("IsDirty(%d, %d) = %v, want %v", tt.off, tt.n, got, tt.wantDirty)
				}
			})
		}
	}
}

func TestWIBIsDirty(t *testing.T) {
	w := openTestWIB(t, WIBConfig{Size: 8 * mib})
	w.Mark(3*mib+10, 1)
	tests := []struct {
		off, n int64
		want   bool
	}{
		{3 * mib, mib, true},
		{3*mib - 1, 1, false},
		{3*mib - 1, 2, true},
		{4 * mib, mib, false},
		{0, 8 * mib, true},
		{0, 3 * mib, false},
		{-1, 2, false},
		{8 * mib, 1, false},
	}
	for _, tt := range tests {
		if got := w.IsDirty(tt.off, tt.n); got != tt.want {
			t.Errorf("IsDirty(%d, %d) = %v, want %v", tt.off, tt.n, got, tt.want)
		}
	}
}

func TestWIBDirtyRuns(t *testing.T) {
	// 200 regions of 512 bytes and a partial one: runs cross 64-bit words.
	const rs = 512
	const size = 200*rs + 100
	tests := []struct {
		name   string
		marked []int64
		want   []Range
	}{
		{"none", nil, nil},
		{"one", []int64{5}, []Range{{5 * rs, rs}}},
		{"run across a word", []int64{62, 63, 64, 65}, []Range{{62 * rs, 4 * rs}}},
		{"two runs", []int64{0, 1, 127, 128}, []Range{{0, 2 * rs}, {127 * rs, 2 * rs}}},
		{"partial last region", []int64{199, 200}, []Range{{199 * rs, rs + 100}}},
		{"every region", nil, []Range{{0, size}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := openTestWIB(t, WIBConfig{Size: size, RegionSize: rs})
			for _, r := range tt.marked {
				w.Mark(r*rs, 1)
			}
			if tt.name == "every region" {
				w.Mark(0, size)
			}
			if got := w.Dirty(); !slices.Equal(got, tt.want) {
				t.Fatalf("Dirty() = %v, want %v", got, tt.want)
			}
		})
	}

	w := openTestWIB(t, WIBConfig{Size: size, RegionSize: rs})
	for _, r := range []int64{10, 11, 12, 100} {
		w.Mark(r*rs, 1)
	}
	next := []struct {
		from int64
		want Range
		ok   bool
	}{
		{-100, Range{10 * rs, 3 * rs}, true},
		{0, Range{10 * rs, 3 * rs}, true},
		{11*rs + 7, Range{11 * rs, 2 * rs}, true}, // from inside a run: from its region on
		{13 * rs, Range{100 * rs, rs}, true},
		{101 * rs, Range{}, false},
		{size, Range{}, false},
	}
	for _, tt := range next {
		got, ok := w.NextDirty(tt.from)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NextDirty(%d) = %v, %v; want %v, %v", tt.from, got, ok, tt.want, tt.ok)
		}
	}
}

func TestWIBBeginEndClear(t *testing.T) {
	w := openTestWIB(t, WIBConfig{Size: 4 * mib})

	tok := w.Begin(0, 10)
	if !w.IsDirty(0, 1) {
		t.Fatal("region not dirty after Begin")
	}
	if w.Clear(0) {
		t.Fatal("Clear cleaned a region with a write in flight")
	}
	tok2 := w.Begin(5, 10) // a second write to the same region
	w.End(tok, true)
	if w.Clear(0) {
		t.Fatal("Clear cleaned a region while a second write was in flight")
	}
	w.End(tok2, true)
	if !w.Clear(0) || w.IsDirty(0, 1) {
		t.Fatal("Clear did not clean a region whose writes all reached every member")
	}
	if !w.Clear(0) {
		t.Fatal("Clear of a clean region reported false")
	}

	// A write that missed a member makes the region stale: later successful
	// writes do not let Clear clean it.
	tok = w.Begin(mib, 1)
	w.End(tok, false)
	tok = w.Begin(mib, 1)
	w.End(tok, true)
	if w.Clear(1) || !w.NeedsResync(1) || !w.IsDirty(mib, 1) {
		t.Fatal("a region with a failed write was cleaned lazily")
	}
	if w.ClearRange(0, 2*mib) {
		t.Fatal("ClearRange reported clean over a stale region")
	}
	tk := w.ResyncStart(1)
	if !w.ResyncDone(tk) || w.NeedsResync(1) {
		t.Fatal("ResyncDone left a resynced region needing a resync")
	}
	if !w.IsDirty(mib, 1) {
		t.Fatal("ResyncDone cleaned a region whose source may not be durable")
	}
	if w.FlushDone(w.FlushStart()); w.IsDirty(mib, 1) {
		t.Fatal("a flush of every member did not clean a resynced region")
	}

	// Mark is sticky until a resync.
	w.Mark(2*mib, 1)
	if w.Clear(2) || !w.NeedsResync(2) {
		t.Fatal("Clear cleaned a marked region")
	}

	// ClearRange over clean-able regions.
	t1 := w.Begin(3*mib, mib)
	w.End(t1, true)
	if !w.ClearRange(3*mib, mib) || w.IsDirty(3*mib, mib) {
		t.Fatal("ClearRange did not clean")
	}
	if !w.ClearRange(0, 0) {
		t.Fatal("ClearRange of nothing reported false")
	}

	// Out-of-range indexes.
	for _, r := range []int64{-1, 4, 1 << 40} {
		if w.Clear(r) || w.NeedsResync(r) || w.ResyncDone(w.ResyncStart(r)) {
			t.Errorf("region %d outside the bitmap accepted", r)
		}
	}
	if w.Count() != 1 {
		t.Fatalf("Count = %d, want 1 (the marked region)", w.Count())
	}
	// The zero Token is a no-op.
	w.End(Token{}, false)
	if w.Count() != 1 {
		t.Fatal("End of the zero Token changed the bitmap")
	}
}

func TestWIBEndTwicePanics(t *testing.T) {
	w := openTestWIB(t, WIBConfig{Size: mib})
	tok := w.Begin(0, 1)
	w.End(tok, true)
	defer func() {
		if recover() == nil {
			t.Fatal("a second End of the same Token did not panic")
		}
	}()
	w.End(tok, true)
}

func TestWIBResync(t *testing.T) {
	tests := []struct {
		name string
		// before runs before ResyncStart and returns what runs during the
		// copy, between ResyncStart and ResyncDone.
		before func(w *WIB) (during func())
		want   bool
	}{
		{"quiet copy", func(w *WIB) func() { return func() {} }, true},
		{"write began and ended during the copy", func(w *WIB) func() {
			return func() { w.End(w.Begin(10, 1), true) }
		}, false},
		{"write still in flight", func(w *WIB) func() {
			return func() { w.Begin(10, 1) }
		}, false},
		{"mark during the copy", func(w *WIB) func() {
			return func() { w.Mark(10, 1) }
		}, false},
		{"write in flight at start ended during the copy", func(w *WIB) func() {
			tok := w.Begin(10, 1)
			return func() { w.End(tok, true) }
		}, false},
		{"failed write to another region", func(w *WIB) func() {
			return func() { w.End(w.Begin(mib, 1), false) }
		}, true},
	}
	for _, tt := range tests {
		for _, dirty := range []string{"marked", "written"} {
			t.Run(tt.name+"/"+dirty, func(t *testing.T) {
				w := openTestWIB(t, WIBConfig{Size: 2 * mib})
				if dirty == "marked" {
					w.Mark(0, 1) // needs a resync
				} else {
					w.End(w.Begin(0, 1), true) // dirty, not yet cleared lazily
				}
				during := tt.before(w)
				tk := w.ResyncStart(0)
				during()
				if got := w.ResyncDone(tk); got != tt.want {
					t.Fatalf("ResyncDone = %v, want %v", got, tt.want)
				}
				if needs := w.NeedsResync(0); needs == tt.want {
					t.Fatalf("region 0 needs a resync = %v after ResyncDone = %v", needs, tt.want)
				}
				if !w.IsDirty(0, 1) {
					t.Fatal("ResyncDone cleaned a region before a flush of every member")
				}
				if !tt.want && (!w.NeedsResync(0) || w.Clear(0)) {
					t.Fatal("a refused resync left a region that a lazy Clear can clean")
				}
			})
		}
	}
}

func TestWIBResyncExcludesClear(t *testing.T) {
	w := openTestWIB(t, WIBConfig{Size: 2 * mib})
	w.End(w.Begin(0, 1), true) // dirty, lazily clearable
	tk := w.ResyncStart(0)
	if w.Clear(0) || !w.IsDirty(0, 1) {
		t.Fatal("Clear cleaned a region while a copy of it was running")
	}
	second := w.ResyncStart(0) // a second copy of the same region at once
	if w.ResyncDone(second) {
		t.Fatal("a second, concurrent copy of a region reported it clean")
	}
	if w.ResyncDone(tk) {
		t.Fatal("the first copy reported clean although a second copy overlapped it")
	}
	if !w.NeedsResync(0) || !w.IsDirty(0, 1) {
		t.Fatal("overlapping copies left the region not needing a resync")
	}
	if !w.ResyncDone(w.ResyncStart(0)) || w.NeedsResync(0) {
		t.Fatal("a lone copy after that left the region needing a resync")
	}
	w.FlushDone(w.FlushStart())
	// A copy of a region that was clean, raced by a write that a lazy Clear
	// would otherwise have cleaned after End.
	tk = w.ResyncStart(1)
	w.End(w.Begin(mib, 1), true)
	if w.Clear(1) {
		t.Fatal("Clear cleaned a region written during a copy")
	}
	if w.ResyncDone(tk) || !w.NeedsResync(1) || w.Clear(1) {
		t.Fatal("a copy raced by a write left the region lazily clearable")
	}
}

func TestWIBReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "set.wib")
	cfg := WIBConfig{Path: path, Size: 100 * mib, Volume: "vol-a", Set: 3, Epoch: 7}
	w, err := OpenWIB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tok := w.Begin(5*mib, 1) // completed on every member, not yet cleared
	w.End(tok, true)
	w.Begin(64*mib, 2*mib) // in flight when hostd stops
	w.Mark(99*mib, 1)
	want := dirtyRegions(w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	w, err = OpenWIB(cfg)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer w.Close()
	if got := dirtyRegions(w); !slices.Equal(got, want) {
		t.Fatalf("reopened dirty regions %v, want %v", got, want)
	}
	for _, r := range want {
		if !w.NeedsResync(r) || w.Clear(r) {
			t.Errorf("region %d of a reopened WIB can be cleaned without a resync", r)
		}
	}
	if w.NeedsResync(0) {
		t.Error("a clean region needs a resync after reopen")
	}
	// Writes go on as usual.
	w.End(w.Begin(0, 1), true)
	if !w.Clear(0) {
		t.Fatal("a new write to a reopened WIB cannot be cleaned")
	}
}

func TestWIBFileFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "set.wib")
	const rs = 4096
	w := openTestWIB(t, WIBConfig{Path: path, Size: 130*rs + 1, RegionSize: rs, Volume: "v1", Set: 2, Epoch: 9})
	w.Mark(70*rs, 1)
	w.Mark(130*rs, 1) // the partial last region, index 130

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := 4096 + 8*3; len(b) != want {
		t.Fatalf("file is %d bytes, want %d", len(b), want)
	}
	if string(b[:8]) != "CRWIB\x00\x00\x00" {
		t.Fatalf("magic %q", b[:8])
	}
	le := binary.LittleEndian
	if le.Uint32(b[8:]) != 1 || le.Uint32(b[12:]) != 4096 || le.Uint64(b[16:]) != 130*rs+1 ||
		le.Uint64(b[24:]) != rs || le.Uint64(b[32:]) != 131 || le.Uint64(b[40:]) != 9 ||
		le.Uint64(b[48:]) != 2 || le.Uint16(b[56:]) != 2 || string(b[64:66]) != "v1" {
		t.Fatalf("header fields wrong: % x", b[:72])
	}
	if got, want := le.Uint32(b[508:]), crc32.Checksum(b[:508], crc32.MakeTable(crc32.Castagnoli)); got != want {
		t.Fatalf("header crc %08x, want %08x", got, want)
	}
	bits := b[4096:]
	for i, c := range bits {
		var want byte
		switch i {
		case 70 / 8:
			want = 1 << (70 % 8)
		case 130 / 8:
			want = 1 << (130 % 8)
		}
		if c != want {
			t.Fatalf("bit byte %d = %08b, want %08b", i, c, want)
		}
	}
}

// patchFile rewrites the file at path through patch.
func patchFile(t *testing.T, path string, patch func(b []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	patch(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// reseal recomputes the CRC of a WIB header after a test changed it.
func reseal(b []byte) {
	binary.LittleEndian.PutUint32(b[wibCRCOff:], crc32.Checksum(b[:wibCRCOff], castagnoli))
}

func TestWIBReopenRefused(t *testing.T) {
	base := WIBConfig{Size: 10 * mib, RegionSize: mib, Volume: "vol", Set: 1, Epoch: 4}
	tests := []struct {
		name  string
		cfg   func(c *WIBConfig)
		patch func(b []byte)
		err   error
		field string
	}{
		{"other volume", func(c *WIBConfig) { c.Volume = "vol2" }, nil, ErrMismatch, "volume"},
		{"other set", func(c *WIBConfig) { c.Set = 2 }, nil, ErrMismatch, "set"},
		{"newer epoch", func(c *WIBConfig) { c.Epoch = 5 }, nil, ErrMismatch, "epoch"},
		{"other size", func(c *WIBConfig) { c.Size = 11 * mib }, nil, ErrMismatch, "size"},
		{"other region size", func(c *WIBConfig) { c.RegionSize = 2 * mib }, nil, ErrMismatch, "region size"},
		{"bad magic", nil, func(b []byte) { b[0] = 'X' }, ErrCorrupt, "magic"},
		{"bad crc", nil, func(b []byte) { b[20] ^= 1 }, ErrCorrupt, "crc"},
		{"newer version", nil, func(b []byte) { b[8] = 2; reseal(b) }, ErrVersion, "version"},
		{"reserved byte", nil, func(b []byte) { b[400] = 1; reseal(b) }, ErrCorrupt, "reserved bytes"},
		{"region count", nil, func(b []byte) { b[32]++; reseal(b) }, ErrCorrupt, "region count"},
		{"zeroed header", nil, func(b []byte) { clear(b[:4096]) }, ErrCorrupt, "magic"},
		{"padding bit", nil, func(b []byte) { b[4096+1] |= 1 << 3 }, ErrCorrupt, "padding bits"},
		{"rest of the header page", nil, func(b []byte) { b[1000] = 7 }, ErrCorrupt, "reserved bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			cfg.Path = filepath.Join(t.TempDir(), "set.wib")
			w, err := OpenWIB(cfg)
			if err != nil {
				t.Fatal(err)
			}
			w.Mark(mib, 1)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			if tt.patch != nil {
				patchFile(t, cfg.Path, tt.patch)
			}
			w, err = OpenWIB(cfg)
			if err == nil {
				_ = w.Close()
				t.Fatal("OpenWIB accepted the file")
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("OpenWIB = %v, want %v", err, tt.err)
			}
			var he *HeaderError
			if !errors.As(err, &he) || he.Field != tt.field || he.Path != cfg.Path {
				t.Fatalf("OpenWIB = %#v, want a *HeaderError for field %q and the file's path", err, tt.field)
			}
			// The refused file is left alone, and the lock was released.
			_, err = OpenWIB(cfg)
			if err == nil || errors.Is(err, ErrLocked) {
				t.Fatalf("second OpenWIB = %v, want the same refusal", err)
			}
		})
	}

	t.Run("truncated", func(t *testing.T) {
		for _, n := range []int64{100, 4096, 4096 + 4, 4096 + 16} {
			cfg := base
			cfg.Path = filepath.Join(t.TempDir(), "set.wib")
			w, err := OpenWIB(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_ = w.Close()
			if err := os.Truncate(cfg.Path, n); err != nil {
				t.Fatal(err)
			}
			if w, err := OpenWIB(cfg); !errors.Is(err, ErrCorrupt) {
				if w != nil {
					_ = w.Close()
				}
				t.Fatalf("file of %d bytes: OpenWIB = %v, want ErrCorrupt", n, err)
			}
		}
	})
}

func TestWIBLockedAndRemove(t *testing.T) {
	path := filepath.Join(t.TempDir(), "set.wib")
	cfg := WIBConfig{Path: path, Size: 4 * mib}
	w, err := OpenWIB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if w2, err := OpenWIB(cfg); !errors.Is(err, ErrLocked) {
		if w2 != nil {
			_ = w2.Close()
		}
		t.Fatalf("second OpenWIB of an open file = %v, want ErrLocked", err)
	}
	w.Mark(0, 1)
	if err := w.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file after Remove: %v", err)
	}
	w, err = OpenWIB(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Count() != 0 {
		t.Fatalf("a recreated WIB has %d dirty regions", w.Count())
	}

	anon, err := OpenWIB(WIBConfig{Size: mib})
	if err != nil {
		t.Fatal(err)
	}
	anon.Mark(0, 1)
	if !anon.IsDirty(0, 1) {
		t.Fatal("anonymous WIB lost a mark")
	}
	if err := anon.Remove(); err != nil {
		t.Fatalf("Remove of an anonymous WIB: %v", err)
	}
}

func TestWIBMerge(t *testing.T) {
	t.Run("coarser LOG", func(t *testing.T) {
		w := openTestWIB(t, WIBConfig{Size: 16 * mib, RegionSize: mib})
		l, err := NewLog(LogConfig{Size: 16 * mib, RegionSize: 4 * mib})
		if err != nil {
			t.Fatal(err)
		}
		l.Mark(4*mib+3, 1) // LOG region 1
		l.Rotate()
		l.Mark(15*mib, 1) // LOG region 3, in current; region 1 in history
		if err := w.MergeLog(l); err != nil {
			t.Fatal(err)
		}
		want := []int64{4, 5, 6, 7, 12, 13, 14, 15}
		if got := dirtyRegions(w); !slices.Equal(got, want) {
			t.Fatalf("after merge dirty %v, want %v", got, want)
		}
		for _, r := range want {
			if !w.NeedsResync(r) {
				t.Fatalf("merged region %d does not need a resync", r)
			}
		}
	})
	t.Run("EC unit", func(t *testing.T) {
		// k=3: a member's LOG region of 2 MiB stands for 6 MiB of the set.
		w := openTestWIB(t, WIBConfig{Size: 12 * mib, RegionSize: mib})
		if err := w.Merge([]byte{0b10}, 6*mib); err != nil {
			t.Fatal(err)
		}
		if got, want := dirtyRegions(w), []int64{6, 7, 8, 9, 10, 11}; !slices.Equal(got, want) {
			t.Fatalf("dirty %v, want %v", got, want)
		}
	})
	t.Run("finer bitmap", func(t *testing.T) {
		w := openTestWIB(t, WIBConfig{Size: 4 * mib, RegionSize: mib})
		if err := w.Merge([]byte{0b0100_0000}, mib/4); err != nil { // bit 6: [1.5 MiB, 1.75 MiB)
			t.Fatal(err)
		}
		if got, want := dirtyRegions(w), []int64{1}; !slices.Equal(got, want) {
			t.Fatalf("dirty %v, want %v", got, want)
		}
	})
	t.Run("refused", func(t *testing.T) {
		w := openTestWIB(t, WIBConfig{Size: 8 * mib, RegionSize: mib})
		if err := w.Merge([]byte{0b1, 0b1}, 2*mib); !errors.Is(err, ErrMismatch) { // bit 8 at 16 MiB
			t.Fatalf("Merge beyond the size = %v, want ErrMismatch", err)
		}
		if w.Count() != 0 {
			t.Fatal("a refused Merge changed the bitmap")
		}
		if err := w.Merge([]byte{1}, 0); !errors.Is(err, ErrConfig) {
			t.Fatalf("Merge with unit 0 = %v, want ErrConfig", err)
		}
		if err := w.Merge([]byte{0b1111, 0, 0}, 2*mib); err != nil { // trailing zero bytes are fine
			t.Fatal(err)
		}
		if w.Count() != 8 {
			t.Fatalf("Count %d after merging 4 LOG regions of 2 MiB, want 8", w.Count())
		}
		l, err := NewLog(LogConfig{Size: 16 * mib})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.MergeLog(l); !errors.Is(err, ErrMismatch) {
			t.Fatalf("MergeLog of another size = %v, want ErrMismatch", err)
		}
	})
}

func TestSpan(t *testing.T) {
	tests := []struct {
		off, n, size int64
		first, last  int64
		ok           bool
	}{
		{0, 1, 10, 0, 0, true},
		{9, 1, 10, 9, 9, true},
		{9, 2, 10, 9, 9, true},
		{10, 1, 10, 0, 0, false},
		{-5, 6, 10, 0, 0, true},
		{-5, 5, 10, 0, 0, false},
		{3, math.MaxInt64, 10, 3, 9, true},
		{math.MaxInt64, math.MaxInt64, 10, 0, 0, false},
		{math.MinInt64, math.MaxInt64, 10, 0, 0, false},
	}
	for _, tt := range tests {
		first, last, ok := span(tt.off, tt.n, tt.size, 0)
		if first != tt.first || last != tt.last || ok != tt.ok {
			t.Errorf("span(%d, %d, %d) = %d, %d, %v; want %d, %d, %v",
				tt.off, tt.n, tt.size, first, last, ok, tt.first, tt.last, tt.ok)
		}
	}
}
