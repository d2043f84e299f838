package iscsi

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// thinBackend is an in-memory Backend that implements the optional
// interfaces: it tracks which 512-byte sectors are allocated, Trim and
// WriteZeroes deallocate (they read back as zeros), and Allocated reports
// the map.
type thinBackend struct {
	*memBackend
	amu     sync.Mutex
	alloc   []bool // per sector: allocated
	trims   atomic.Int64
	zeroes  atomic.Int64
	mapErr  atomic.Bool
	trimErr atomic.Bool
}

const thinSector = 512

var (
	_ Trimmer = (*thinBackend)(nil)
	_ Zeroer  = (*thinBackend)(nil)
	_ Mapper  = (*thinBackend)(nil)
)

func newThinBackend(size int) *thinBackend {
	return &thinBackend{memBackend: newMemBackend(size), alloc: make([]bool, size/thinSector)}
}

func (b *thinBackend) mark(off, n int64, allocated bool) {
	b.amu.Lock()
	defer b.amu.Unlock()
	for s := off / thinSector; s < (off+n+thinSector-1)/thinSector && s < int64(len(b.alloc)); s++ {
		b.alloc[s] = allocated
	}
}

func (b *thinBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := b.memBackend.WriteAt(ctx, p, off, fua); err != nil {
		return err
	}
	b.mark(off, int64(len(p)), true)
	return nil
}

func (b *thinBackend) deallocate(off, n int64) error {
	b.memBackend.mu.Lock()
	if off < 0 || off+n > int64(len(b.memBackend.data)) {
		b.memBackend.mu.Unlock()
		return errInjected
	}
	clear(b.memBackend.data[off : off+n])
	b.memBackend.mu.Unlock()
	b.mark(off, n, false)
	return nil
}

func (b *thinBackend) Trim(ctx context.Context, off, n int64) error {
	if b.trimErr.Load() {
		return errInjected
	}
	b.trims.Add(1)
	return b.deallocate(off, n)
}

func (b *thinBackend) WriteZeroes(ctx context.Context, off, n int64) error {
	b.zeroes.Add(1)
	return b.deallocate(off, n)
}

func (b *thinBackend) Allocated(ctx context.Context, off, n int64) ([]Extent, error) {
	if b.mapErr.Load() {
		return nil, errInjected
	}
	b.amu.Lock()
	defer b.amu.Unlock()
	var out []Extent
	for s := off / thinSector; s < (off+n)/thinSector; s++ {
		hole := !b.alloc[s]
		if k := len(out); k > 0 && out[k-1].Hole == hole {
			out[k-1].Length += thinSector
			continue
		}
		out = append(out, Extent{Length: thinSector, Hole: hole})
	}
	return out, nil
}

func testThinLU(t *testing.T) (*logicalUnit, *thinBackend) {
	t.Helper()
	be := newThinBackend(1 << 20)
	return newLogicalUnit(be, 512, 8<<20, 1<<20, "serial-thin", testIQN), be
}

// unmapList builds an UNMAP parameter list.
func unmapList(ranges ...unmapRange) []byte {
	b := make([]byte, 8+16*len(ranges))
	put16(b, uint16(len(b)-2))
	put16(b[2:], uint16(16*len(ranges)))
	for i, r := range ranges {
		put64(b[8+16*i:], r.lba)
		put32(b[16+16*i:], r.blocks)
	}
	return b
}

func cdbUnmap(n int) []byte {
	b := []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	put16(b[7:], uint16(n))
	return b
}

func cdbGetLBAStatus(lba uint64, alloc uint32) []byte {
	b := make([]byte, 16)
	b[0], b[1] = 0x9e, 0x12
	put64(b[2:], lba)
	put32(b[10:], alloc)
	return b
}

// runThin decodes and executes a CDB on lu and checks the sense code.
func runThin(t *testing.T, lu *logicalUnit, cdb, out []byte, wantASC uint16) result {
	t.Helper()
	c, s := lu.decodeCDB(cdb, true, uint32(len(out)))
	if s != nil {
		if s.asc != wantASC {
			t.Fatalf("decode %x: sense %v, want asc 0x%04x", cdb, s, wantASC)
		}
		return check(s)
	}
	var in []byte
	if c.inLen > 0 {
		in = make([]byte, c.inLen)
	}
	r := lu.execute(context.Background(), c, out, in)
	var asc uint16
	if r.sense != nil {
		asc = r.sense.asc
	}
	if asc != wantASC {
		t.Fatalf("execute %x: status %#x sense %v, want asc 0x%04x", cdb, r.status, r.sense, wantASC)
	}
	return r
}

func TestProvisioningReported(t *testing.T) {
	thin, _ := testThinLU(t)
	thick, _ := testLU(t)
	for _, tc := range []struct {
		name string
		lu   *logicalUnit
		thin bool
	}{{"thin", thin, true}, {"thick", thick, false}} {
		t.Run(tc.name, func(t *testing.T) {
			lu := tc.lu
			rc16 := runCDB(t, lu, []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil).data
			if got := rc16[14]&0xc0 == 0xc0; got != tc.thin {
				t.Errorf("READ CAPACITY(16) LBPME/LBPRZ byte %#x", rc16[14])
			}
			b2 := lu.vpdPage(0xb2)
			if got := b2[5] == 0xe4 && b2[6] == 0x02; got != tc.thin {
				t.Errorf("VPD 0xB2 %x", b2)
			}
			b0 := lu.vpdPage(0xb0)[4:]
			if got := be32(b0[16:]) == (256<<20)/512 && be32(b0[20:]) == maxUnmapDescriptors && be32(b0[24:]) == 8 && b0[28]&0x80 != 0; got != tc.thin {
				t.Errorf("VPD 0xB0 unmap limits %x", b0[16:32])
			}
			if b0[0]&0x01 != 0 {
				t.Errorf("WSNZ set")
			}
			_, sUnmap := lu.decodeCDB(cdbUnmap(24), true, 24)
			_, sStatus := lu.decodeCDB(cdbGetLBAStatus(0, 24), true, 0)
			_, sWS := lu.decodeCDB([]byte{0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0}, true, 512)
			if tc.thin && (sUnmap != nil || sStatus != nil || sWS != nil) {
				t.Errorf("thin LU refuses UNMAP (%v), GET LBA STATUS (%v) or WRITE SAME with UNMAP (%v)", sUnmap, sStatus, sWS)
			}
			if !tc.thin && (sUnmap != senseInvalidOpcode || sStatus == nil || sStatus.asc != ascInvalidFieldInCDB || sWS == nil) {
				t.Errorf("thick LU accepts UNMAP (%v), GET LBA STATUS (%v) or WRITE SAME with UNMAP (%v)", sUnmap, sStatus, sWS)
			}
			all := runCDB(t, lu, []byte{0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, nil).data
			listed := false
			for i := 4; i+8 <= len(all); i += 8 {
				if all[i] == 0x42 {
					listed = true
				}
			}
			if listed != tc.thin {
				t.Errorf("REPORT SUPPORTED OPERATION CODES lists UNMAP: %v", listed)
			}
		})
	}
}

func TestUnmap(t *testing.T) {
	lu, be := testThinLU(t)
	fill := func() {
		t.Helper()
		runThin(t, lu, cdbWrite10(0, 64, false), bytes.Repeat([]byte{0xa5}, 64*512), 0)
	}
	tests := []struct {
		name    string
		cdb     []byte
		list    []byte
		asc     uint16
		zeroed  [][2]int // byte ranges that must read zero afterwards
		trimmed bool
	}{
		{"two ranges", cdbUnmap(40), unmapList(unmapRange{2, 3}, unmapRange{10, 1}), 0, [][2]int{{1024, 2560}, {5120, 5632}}, true},
		{"zero blocks at the end", cdbUnmap(24), unmapList(unmapRange{2048, 0}), 0, nil, false},
		{"no descriptors", cdbUnmap(8), unmapList(), 0, nil, false},
		{"no parameter list", cdbUnmap(0), nil, 0, nil, false},
		{"short parameter list", cdbUnmap(4), []byte{0, 0, 0, 0}, ascParamListLengthError, nil, false},
		{"anchor", func() []byte { b := cdbUnmap(24); b[1] = 1; return b }(), unmapList(unmapRange{0, 1}), ascInvalidFieldInCDB, nil, false},
		{"past the end, nothing trimmed", cdbUnmap(40), unmapList(unmapRange{0, 1}, unmapRange{2047, 2}), ascLBAOutOfRange, nil, false},
		{"count past the end", cdbUnmap(24), unmapList(unmapRange{0, 1<<21 + 1}), ascLBAOutOfRange, nil, false},
		{"too many descriptors", cdbUnmap(8 + 16*257), unmapList(make([]unmapRange, 257)...), ascInvalidFieldInParamList, nil, false},
		{"incomplete last descriptor ignored", cdbUnmap(32), unmapList(unmapRange{4, 1}, unmapRange{5, 1})[:32], 0, [][2]int{{2048, 2560}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fill()
			before := be.trims.Load()
			runThin(t, lu, tc.cdb, tc.list, tc.asc)
			if got := be.trims.Load() > before; got != tc.trimmed {
				t.Errorf("trimmed: %v, want %v", got, tc.trimmed)
			}
			for _, z := range tc.zeroed {
				if !allZero(be.snapshot(z[0], z[1]-z[0])) {
					t.Errorf("bytes %d-%d not zero after UNMAP", z[0], z[1])
				}
			}
			if tc.trimmed && be.snapshot(512, 512)[0] != 0xa5 {
				t.Errorf("UNMAP cleared a block outside its ranges")
			}
		})
	}
	be.trimErr.Store(true)
	runThin(t, lu, cdbUnmap(24), unmapList(unmapRange{0, 1}), ascWriteError)
}

func TestWriteSameProvisioning(t *testing.T) {
	lu, be := testThinLU(t)
	ws10 := func(flags byte, lba uint32, blocks uint16) []byte {
		b := []byte{0x41, flags, 0, 0, 0, 0, 0, 0, 0, 0}
		put32(b[2:], lba)
		put16(b[7:], blocks)
		return b
	}
	zero := make([]byte, 512)
	ones := bytes.Repeat([]byte{0xff}, 512)
	tests := []struct {
		name             string
		cdb              []byte
		data             []byte
		trims, zeroes    int64
		want             byte // byte at 4096..4096+8*512 afterwards
		allocatedAfter   bool
		untouchedAt20480 bool
	}{
		{"unmap with zero block trims", ws10(0x08, 8, 8), zero, 1, 0, 0, false, true},
		{"unmap with data trims all the same", ws10(0x08, 8, 8), ones, 1, 0, 0, false, true},
		{"zero block without unmap writes zeroes", ws10(0, 8, 8), zero, 0, 1, 0, false, true},
		{"data without unmap writes", ws10(0, 8, 8), ones, 0, 0, 0xff, true, true},
		{"ndob with unmap trims", func() []byte { b := cdb16(0x93, 8, 8); b[1] = 0x09; return b }(), nil, 1, 0, 0, false, true},
		{"ndob without unmap writes zeroes", func() []byte { b := cdb16(0x93, 8, 8); b[1] = 0x01; return b }(), nil, 0, 1, 0, false, true},
		{"zero blocks run to the end", ws10(0x08, 8, 0), zero, 1, 0, 0, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runThin(t, lu, cdbWrite10(0, 64, false), bytes.Repeat([]byte{0xa5}, 64*512), 0)
			tr, zr := be.trims.Load(), be.zeroes.Load()
			runThin(t, lu, tc.cdb, tc.data, 0)
			if be.trims.Load()-tr != tc.trims || be.zeroes.Load()-zr != tc.zeroes {
				t.Errorf("trims %d zeroes %d, want %d %d", be.trims.Load()-tr, be.zeroes.Load()-zr, tc.trims, tc.zeroes)
			}
			if got := be.snapshot(4096, 8*512); !bytes.Equal(got, bytes.Repeat([]byte{tc.want}, 8*512)) {
				t.Errorf("range holds %x..., want %#x", got[:4], tc.want)
			}
			if got := be.snapshot(4096-512, 512)[0]; got != 0xa5 {
				t.Errorf("the block before the range changed to %#x", got)
			}
			if got := be.snapshot(20480, 1)[0] == 0xa5; got != tc.untouchedAt20480 {
				t.Errorf("block 40 untouched: %v, want %v", got, tc.untouchedAt20480)
			}
			st := runThin(t, lu, cdbGetLBAStatus(8, 24), nil, 0).data
			if got := st[20] == provMapped; got != tc.allocatedAfter {
				t.Errorf("GET LBA STATUS at LBA 8: %x", st)
			}
		})
	}
}

func TestGetLBAStatus(t *testing.T) {
	lu, be := testThinLU(t)
	runThin(t, lu, cdbWrite10(16, 16, false), bytes.Repeat([]byte{1}, 16*512), 0)
	runThin(t, lu, cdbUnmap(24), unmapList(unmapRange{20, 4}), 0)
	type desc struct {
		lba    uint64
		blocks uint32
		status byte
	}
	parse := func(b []byte) []desc {
		var out []desc
		if int(be32(b))+4 != len(b) {
			t.Fatalf("PARAMETER DATA LENGTH %d for %d bytes", be32(b), len(b))
		}
		for i := 8; i+16 <= len(b); i += 16 {
			out = append(out, desc{be64(b[i:]), be32(b[i+8:]), b[i+12] & 0x0f})
		}
		return out
	}
	got := parse(runThin(t, lu, cdbGetLBAStatus(0, 1024), nil, 0).data)
	want := []desc{{0, 16, provDeallocated}, {16, 4, provMapped}, {20, 4, provDeallocated}, {24, 8, provMapped}, {32, 2048 - 32, provDeallocated}}
	if len(got) != len(want) {
		t.Fatalf("descriptors %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("descriptor %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// The first descriptor starts at the LBA asked for; the allocation
	// length limits the descriptors.
	got = parse(runThin(t, lu, cdbGetLBAStatus(18, 24), nil, 0).data)
	if len(got) != 1 || got[0] != (desc{18, 2, provMapped}) {
		t.Errorf("from LBA 18 with room for one descriptor: %v", got)
	}
	runThin(t, lu, cdbGetLBAStatus(2048, 24), nil, ascLBAOutOfRange)
	runThin(t, lu, cdbGetLBAStatus(1<<63, 24), nil, ascLBAOutOfRange)
	be.mapErr.Store(true)
	runThin(t, lu, cdbGetLBAStatus(0, 24), nil, ascUnrecoveredReadError)
}

func TestBlockRuns(t *testing.T) {
	tests := []struct {
		name string
		exts []Extent
		span uint64
		want []lbaRun
	}{
		{"aligned", []Extent{{1024, false}, {2048, true}, {512, false}}, 100,
			[]lbaRun{{2, provMapped}, {4, provDeallocated}, {1, provMapped}}},
		{"partial blocks around a hole are mapped", []Extent{{700, false}, {1300, true}, {48, false}}, 100,
			[]lbaRun{{2, provMapped}, {1, provDeallocated}, {1, provMapped}}},
		{"hole smaller than a block", []Extent{{100, false}, {300, true}, {624, false}}, 100,
			[]lbaRun{{2, provMapped}}},
		{"clipped to the span", []Extent{{4096, true}}, 3,
			[]lbaRun{{3, provDeallocated}}},
		{"adjacent extents merge", []Extent{{512, true}, {512, true}, {512, false}, {512, false}}, 100,
			[]lbaRun{{2, provDeallocated}, {2, provMapped}}},
		{"zero-length extent ends the list", []Extent{{512, false}, {0, true}, {512, true}}, 100,
			[]lbaRun{{1, provMapped}}},
		{"none", nil, 100, nil},
	}
	for _, tc := range tests {
		got := blockRuns(tc.exts, 512, tc.span)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
				break
			}
		}
	}
	// Runs longer than a descriptor can count are split.
	if got := blockRuns([]Extent{{(1<<32 + 10) * 512, true}}, 512, 1<<33); len(got) != 2 || got[0].blocks != 0xffffffff || got[1].blocks != 11 {
		t.Errorf("long hole: %v", got)
	}
}
