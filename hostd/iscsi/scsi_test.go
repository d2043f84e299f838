package iscsi

import (
	"bytes"
	"context"
	"testing"
)

// testLU is a 1 MiB logical unit of 512-byte blocks (2048 blocks) with an
// 8 MiB transfer limit.
func testLU(t *testing.T) (*logicalUnit, *memBackend) {
	t.Helper()
	be := newMemBackend(1 << 20)
	return newLogicalUnit(be, 512, 8<<20, 1<<20, "serial-1", testIQN), be
}

func cdb16(op byte, lba uint64, blocks uint32) []byte {
	b := make([]byte, 16)
	b[0] = op
	put64(b[2:], lba)
	put32(b[10:], blocks)
	return b
}

func TestDecodeCDB(t *testing.T) {
	lu, _ := testLU(t)
	type want struct {
		sense  uint16 // ASC/ASCQ of the expected CHECK CONDITION, 0 for success
		dir    dataDir
		inLen  uint32
		outLen uint32
		blocks uint32
		fua    bool
	}
	tests := []struct {
		name  string
		cdb   []byte
		lunOK bool
		want  want
		edtl  uint32
	}{
		{"test unit ready", []byte{0x00, 0, 0, 0, 0, 0}, true, want{}, 0},
		{"unknown opcode", []byte{0xff, 0, 0, 0, 0, 0}, true, want{sense: ascInvalidOpcode}, 0},
		{"empty CDB", []byte{}, true, want{sense: ascInvalidOpcode}, 0},
		{"NACA set", []byte{0x00, 0, 0, 0, 0, 0x04}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"LINK set", []byte{0x00, 0, 0, 0, 0, 0x01}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"read10", cdbRead10(0, 8), true, want{dir: dirIn, inLen: 4096, blocks: 8}, 0},
		{"read10 last block", cdbRead10(2047, 1), true, want{dir: dirIn, inLen: 512, blocks: 1}, 0},
		{"read10 past end", cdbRead10(2047, 2), true, want{sense: ascLBAOutOfRange}, 0},
		{"read10 zero blocks at capacity", cdbRead10(2048, 0), true, want{dir: dirIn}, 0},
		{"read10 zero blocks past capacity", cdbRead10(2049, 0), true, want{sense: ascLBAOutOfRange}, 0},
		{"read10 lba -1", cdbRead10(0xffffffff, 1), true, want{sense: ascLBAOutOfRange}, 0},
		{"read10 rdprotect", append([]byte{0x28, 0x20}, cdbRead10(0, 1)[2:]...), true, want{sense: ascInvalidFieldInCDB}, 0},
		{"read10 fua", cdbRead10WithFUA(0, 1), true, want{dir: dirIn, inLen: 512, blocks: 1, fua: true}, 0},
		{"read10 over max transfer", func() []byte { b := cdbRead10(0, 0); put16(b[7:], 0xffff); return b }(), true, want{sense: ascInvalidFieldInCDB}, 0},
		{"read6 zero means 256", []byte{0x08, 0, 0, 0, 0, 0}, true, want{dir: dirIn, inLen: 256 * 512, blocks: 256}, 0},
		{"read6 lba bits", []byte{0x08, 0x1f, 0xff, 0xff, 1, 0}, true, want{sense: ascLBAOutOfRange}, 0},
		{"read12", func() []byte { b := make([]byte, 12); b[0] = 0xa8; put32(b[6:], 4); return b }(), true, want{dir: dirIn, inLen: 2048, blocks: 4}, 0},
		{"read16", cdb16(0x88, 10, 2), true, want{dir: dirIn, inLen: 1024, blocks: 2}, 0},
		{"read16 lba wraps", cdb16(0x88, 0xffffffffffffffff, 2), true, want{sense: ascLBAOutOfRange}, 0},
		{"write10 fua", cdbWrite10(1, 2, true), true, want{dir: dirOut, outLen: 1024, blocks: 2, fua: true}, 0},
		{"write6", []byte{0x0a, 0, 0, 4, 1, 0}, true, want{dir: dirOut, outLen: 512, blocks: 1}, 0},
		{"write16 wrprotect", func() []byte { b := cdb16(0x8a, 0, 1); b[1] = 0xe0; return b }(), true, want{sense: ascInvalidFieldInCDB}, 0},
		{"write on missing LUN", cdbWrite10(0, 1, false), false, want{sense: ascLUNotSupported}, 0},
		{"inquiry on missing LUN", []byte{0x12, 0, 0, 0, 96, 0}, false, want{dir: dirIn}, 0},
		{"inquiry page without evpd", []byte{0x12, 0, 0x80, 0, 96, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"inquiry unknown page", []byte{0x12, 1, 0x99, 0, 96, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"inquiry cmddt", []byte{0x12, 2, 0, 0, 96, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"read capacity10 lba without pmi", []byte{0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"read capacity10", []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, want{dir: dirIn}, 0},
		{"read capacity16", []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, true, want{dir: dirIn}, 0},
		{"service action in, unknown action", []byte{0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"mode sense all pages", []byte{0x1a, 0, 0x3f, 0, 255, 0}, true, want{dir: dirIn}, 0},
		{"mode sense caching", []byte{0x1a, 0, 0x08, 0, 255, 0}, true, want{dir: dirIn}, 0},
		{"mode sense unknown page", []byte{0x1a, 0, 0x01, 0, 255, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"mode sense saved values", []byte{0x1a, 0, 0xc8, 0, 255, 0}, true, want{sense: ascSavingParamsUnsupported}, 0},
		{"mode sense subpage", []byte{0x5a, 0, 0x0a, 1, 0, 0, 0, 0, 255, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"report luns", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}, false, want{dir: dirIn}, 0},
		{"report luns short allocation", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"report luns bad select", []byte{0xa0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"report opcodes bad option", []byte{0xa3, 0x0c, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"report opcodes one command with service actions", []byte{0xa3, 0x0c, 1, 0x9e, 0, 0, 0, 0, 1, 0, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"report opcodes service action of plain command", []byte{0xa3, 0x0c, 2, 0x28, 0, 0, 0, 0, 1, 0, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"verify bytchk 2", []byte{0x2f, 0x04, 0, 0, 0, 0, 0, 0, 1, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"verify bytchk 1", []byte{0x2f, 0x02, 0, 0, 0, 0, 0, 0, 4, 0}, true, want{dir: dirOut, outLen: 2048, blocks: 4}, 0},
		{"verify bytchk 3", []byte{0x2f, 0x06, 0, 0, 0, 0, 0, 0, 4, 0}, true, want{dir: dirOut, outLen: 512, blocks: 4}, 0},
		{"verify bytchk 0", []byte{0x2f, 0, 0, 0, 0, 0, 0, 0, 4, 0}, true, want{blocks: 4}, 0},
		{"sync cache past end", []byte{0x35, 0, 0, 0, 0x08, 0, 0, 0, 1, 0}, true, want{sense: ascLBAOutOfRange}, 0},
		{"sync cache16 whole", cdb16(0x91, 0, 0), true, want{}, 0},
		{"write same10", []byte{0x41, 0, 0, 0, 0, 0, 0, 0, 8, 0}, true, want{dir: dirOut, outLen: 512, blocks: 8}, 512},
		{"write same10 zero blocks runs to the end", []byte{0x41, 0, 0, 0, 0, 8, 0, 0, 0, 0}, true, want{dir: dirOut, outLen: 512, blocks: 2048 - 8}, 512},
		{"write same10 zero blocks past the end", []byte{0x41, 0, 0, 0, 8, 1, 0, 0, 0, 0}, true, want{sense: ascLBAOutOfRange}, 512},
		{"write same10 unmap", []byte{0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0}, true, want{sense: ascInvalidFieldInCDB}, 512},
		{"write same10 anchor", []byte{0x41, 0x10, 0, 0, 0, 0, 0, 0, 1, 0}, true, want{sense: ascInvalidFieldInCDB}, 512},
		{"write same16 ndob", func() []byte { b := cdb16(0x93, 0, 4); b[1] = 1; return b }(), true, want{blocks: 4}, 0},
		{"write same10 data-out of two blocks", []byte{0x41, 0, 0, 0, 0, 0, 0, 0, 8, 0}, true, want{sense: ascInvalidFieldInCDB}, 1024},
		{"write same10 data-out of half a block", []byte{0x41, 0, 0, 0, 0, 0, 0, 0, 8, 0}, true, want{sense: ascInvalidFieldInCDB}, 256},
		{"write same16 past end", cdb16(0x93, 2040, 9), true, want{sense: ascLBAOutOfRange}, 512},
		{"compare and write", func() []byte { b := cdb16(0x89, 4, 0); b[13] = 2; return b }(), true, want{dir: dirOut, outLen: 2048, blocks: 2}, 2048},
		{"compare and write length mismatch", func() []byte { b := cdb16(0x89, 4, 0); b[13] = 2; return b }(), true, want{sense: ascInvalidFieldInCDB}, 1024},
		{"compare and write zero blocks with data", cdb16(0x89, 4, 0), true, want{sense: ascInvalidFieldInCDB}, 1024},
		{"orwrite", cdb16(0x8b, 4, 2), true, want{dir: dirOut, outLen: 1024, blocks: 2}, 1024},
		{"write and verify bytchk 2", []byte{0x2e, 0x04, 0, 0, 0, 0, 0, 0, 1, 0}, true, want{sense: ascInvalidFieldInCDB}, 512},
		{"persistent reserve in unknown action", []byte{0x5e, 0x04, 0, 0, 0, 0, 0, 0x10, 0, 0}, true, want{sense: ascInvalidFieldInCDB}, 0},
		{"persistent reserve out bad length", []byte{0x5f, 0x00, 0, 0, 0, 0, 0, 0, 20, 0}, true, want{sense: ascParamListLengthError}, 20},
		{"persistent reserve out bad type", []byte{0x5f, 0x01, 0x02, 0, 0, 0, 0, 0, 24, 0}, true, want{sense: ascInvalidFieldInCDB}, 24},
		{"persistent reserve out scope", []byte{0x5f, 0x01, 0x11, 0, 0, 0, 0, 0, 24, 0}, true, want{sense: ascInvalidFieldInCDB}, 24},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, s := lu.decodeCDB(tc.cdb, tc.lunOK, tc.edtl)
			if tc.want.sense != 0 {
				if s == nil || s.asc != tc.want.sense {
					t.Fatalf("sense %v, want asc 0x%04x", s, tc.want.sense)
				}
				return
			}
			if s != nil {
				t.Fatalf("unexpected sense %v", s)
			}
			if c.dir != tc.want.dir || c.inLen != tc.want.inLen || c.outLen != tc.want.outLen || c.blocks != tc.want.blocks || c.fua != tc.want.fua {
				t.Fatalf("decoded dir %d in %d out %d blocks %d fua %v; want %+v", c.dir, c.inLen, c.outLen, c.blocks, c.fua, tc.want)
			}
		})
	}
}

// run decodes and executes a data-in command.
func runCDB(t *testing.T, lu *logicalUnit, cdb []byte, out []byte) result {
	t.Helper()
	c, s := lu.decodeCDB(cdb, true, uint32(len(out)))
	if s != nil {
		t.Fatalf("decode %x: %v", cdb, s)
	}
	var in []byte
	if c.inLen > 0 {
		in = make([]byte, c.inLen)
	}
	return lu.execute(context.Background(), c, out, in)
}

func TestInquiryData(t *testing.T) {
	lu, _ := testLU(t)
	std := runCDB(t, lu, []byte{0x12, 0, 0, 1, 0, 0}, nil).data
	if len(std) != 74 || std[4] != 69 || std[2] != 6 || std[3]&0x0f != 2 || std[0] != 0 {
		t.Errorf("standard INQUIRY: len %d additional length %d version %d format %d qualifier/type %#x", len(std), std[4], std[2], std[3]&0xf, std[0])
	}
	if string(std[8:16]) != inquiryVendor || string(std[16:32]) != inquiryProduct {
		t.Errorf("identification %q %q", std[8:16], std[16:32])
	}
	c, _ := lu.decodeCDB([]byte{0x12, 0, 0, 0, 96, 0}, false, 96)
	if got := lu.execute(context.Background(), c, nil, nil).data; got[0] != 0x7f {
		t.Errorf("INQUIRY on a missing LUN: byte 0 = %#x, want 0x7f", got[0])
	}
	if got := runCDB(t, lu, []byte{0x12, 0, 0, 0, 5, 0}, nil).data; len(got) != 5 {
		t.Errorf("allocation length 5 returned %d bytes", len(got))
	}

	pages := runCDB(t, lu, []byte{0x12, 1, 0x00, 0, 255, 0}, nil).data
	if !bytes.Equal(pages[4:], supportedVPDPages) || int(be16(pages[2:])) != len(supportedVPDPages) {
		t.Errorf("supported pages %x", pages)
	}
	for _, p := range supportedVPDPages {
		b := runCDB(t, lu, []byte{0x12, 1, p, 0, 255, 0}, nil).data
		if b[1] != p || int(be16(b[2:]))+4 != len(b) {
			t.Errorf("VPD page %#x: header %x, length %d", p, b[:4], len(b))
		}
	}
	if sn := runCDB(t, lu, []byte{0x12, 1, 0x80, 0, 255, 0}, nil).data; string(sn[4:]) != "serial-1" {
		t.Errorf("unit serial %q", sn[4:])
	}
	bl := runCDB(t, lu, []byte{0x12, 1, 0xb0, 0, 255, 0}, nil).data
	if be16(bl[2:]) != 0x3c || be32(bl[8:]) != 16384 || be16(bl[6:]) != 8 {
		t.Errorf("block limits: length %#x max transfer %d granularity %d", be16(bl[2:]), be32(bl[8:]), be16(bl[6:]))
	}

	// Device identification: walk the designators.
	di := runCDB(t, lu, []byte{0x12, 1, 0x83, 0, 255, 0}, nil).data
	type desig struct{ codeSet, assoc, typ byte }
	var got []desig
	for b := di[4:]; len(b) > 0; {
		if len(b) < 4 || len(b) < 4+int(b[3]) {
			t.Fatalf("designator list malformed at %x", b)
		}
		got = append(got, desig{b[0] & 0xf, b[1] >> 4 & 3, b[1] & 0xf})
		if b[1]&0x80 != 0 && b[0]>>4 != protoISCSI {
			t.Errorf("PIV designator with protocol %d", b[0]>>4)
		}
		if b[1]&0xf == desigNAA && (b[3] != 8 || b[4]>>4 != 3) {
			t.Errorf("NAA designator %x", b[4:4+int(b[3])])
		}
		b = b[4+int(b[3]):]
	}
	want := []desig{{codeSetBinary, assocLU, desigNAA}, {codeSetASCII, assocLU, desigT10}, {codeSetBinary, assocPort, desigRelPort}, {codeSetUTF8, assocPort, desigSCSIName}, {codeSetUTF8, assocTarget, desigSCSIName}}
	if len(got) != len(want) {
		t.Fatalf("designators %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("designator %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// The same serial gives the same identity on another server.
	lu2 := newLogicalUnit(newMemBackend(1<<20), 512, 8<<20, 1<<20, "serial-1", "iqn.2026-11.io.chunkraid:elsewhere")
	if lu2.naa != lu.naa {
		t.Errorf("NAA differs for the same serial")
	}
}

func TestModeSense(t *testing.T) {
	lu, _ := testLU(t)
	b := runCDB(t, lu, []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil).data
	if int(b[0]) != len(b)-1 || b[2] != 0x10 || b[3] != 8 {
		t.Fatalf("MODE SENSE(6) header %x (len %d)", b[:4], len(b))
	}
	if be32(b[4:]) != 2048 || be32(b[8:])&0xffffff != 512 {
		t.Errorf("block descriptor %x", b[4:12])
	}
	pages := b[12:]
	if pages[0] != 0x08 || pages[2]&0x04 == 0 || pages[pages[1]+2] != 0x0a {
		t.Errorf("pages %x: want caching with WCE then control", pages)
	}
	b10 := runCDB(t, lu, []byte{0x5a, 0x18, 0x08, 0, 0, 0, 0, 0x01, 0, 0}, nil).data
	if int(be16(b10))+2 != len(b10) || be16(b10[6:]) != 0 || b10[8] != 0x08 {
		t.Errorf("MODE SENSE(10) DBD caching: %x", b10)
	}
	long := runCDB(t, lu, []byte{0x5a, 0x10, 0x0a, 0, 0, 0, 0, 0x01, 0, 0}, nil).data
	if long[4] != 1 || be16(long[6:]) != 16 || be64(long[8:]) != 2048 {
		t.Errorf("MODE SENSE(10) LLBAA: %x", long)
	}
	ch := runCDB(t, lu, []byte{0x1a, 0x08, 0x48, 0, 255, 0}, nil).data
	if ch[4+2] != 0 {
		t.Errorf("changeable caching page reports WCE changeable: %x", ch)
	}
}

func TestReportSupportedOpcodes(t *testing.T) {
	lu, _ := testLU(t)
	all := runCDB(t, lu, []byte{0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, nil).data
	if n := int(be32(all)); n != 8*len(lu.cmds.specs) || len(all) != 4+n {
		t.Fatalf("all commands: length %d for %d commands", n, len(lu.cmds.specs))
	}
	seen := map[byte]bool{}
	for d := all[4:]; len(d) >= 8; d = d[8:] {
		seen[d[0]] = true
		if d[0] == 0x9e && (d[5]&1 == 0 || be16(d[2:]) != 0x10) {
			t.Errorf("READ CAPACITY(16) descriptor %x", d[:8])
		}
	}
	for _, op := range []byte{0x00, 0x12, 0x28, 0x2a, 0x88, 0x8a, 0x35, 0xa0} {
		if !seen[op] {
			t.Errorf("opcode %#x missing from the list", op)
		}
	}
	one := runCDB(t, lu, []byte{0xa3, 0x0c, 1, 0x28, 0, 0, 0, 0, 1, 0, 0, 0}, nil).data
	if one[1]&7 != 3 || be16(one[2:]) != 10 || one[4] != 0x28 || one[5]&0x18 != 0x18 {
		t.Errorf("READ(10) usage %x", one)
	}
	rctd := runCDB(t, lu, []byte{0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0}, nil).data
	if rctd[1] != 0x83 || len(rctd) != 4+16+12 {
		t.Errorf("READ CAPACITY(16) with RCTD: %x", rctd)
	}
	none := runCDB(t, lu, []byte{0xa3, 0x0c, 1, 0xd0, 0, 0, 0, 0, 1, 0, 0, 0}, nil).data
	if none[1]&7 != 1 {
		t.Errorf("unsupported opcode reported as %x", none)
	}
}

func TestReadCapacityAndReportLUNs(t *testing.T) {
	lu, _ := testLU(t)
	rc10 := runCDB(t, lu, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil).data
	if be32(rc10) != 2047 || be32(rc10[4:]) != 512 {
		t.Errorf("READ CAPACITY(10) %x", rc10)
	}
	rc16 := runCDB(t, lu, []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil).data
	if len(rc16) != 32 || be64(rc16) != 2047 || be32(rc16[8:]) != 512 || rc16[13] != 0 || rc16[14] != 0 {
		t.Errorf("READ CAPACITY(16) %x", rc16)
	}
	if d := runCDB(t, lu, []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0}, nil).data; len(d) != 4 {
		t.Errorf("allocation length 4 gave %d bytes", len(d))
	}
	rl := runCDB(t, lu, []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil).data
	if len(rl) != 16 || be32(rl) != 8 || be64(rl[8:]) != 0 {
		t.Errorf("REPORT LUNS %x", rl)
	}
	wk := runCDB(t, lu, []byte{0xa0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil).data
	if be32(wk) != 0 {
		t.Errorf("REPORT LUNS well-known: %x", wk)
	}
}

func TestVerifyAndWrite(t *testing.T) {
	lu, be := testLU(t)
	data := bytes.Repeat([]byte{0x5a}, 2048)
	if r := runCDB(t, lu, cdbWrite10(4, 4, false), data); r.status != statusGood {
		t.Fatalf("WRITE(10): %v", r.sense)
	}
	if !bytes.Equal(be.snapshot(2048, 2048), data) {
		t.Fatal("data not in the back end")
	}
	if r := runCDB(t, lu, cdbWrite10(4, 4, false), data[:1000]); r.status != statusCheckCondition || r.sense.asc != ascInvalidFieldInIU {
		t.Errorf("WRITE with a partial block: %+v", r)
	}
	if r := runCDB(t, lu, []byte{0x2f, 0x02, 0, 0, 0, 4, 0, 0, 4, 0}, data); r.status != statusGood {
		t.Errorf("VERIFY(10) BYTCHK=1 of equal data: %v", r.sense)
	}
	bad := bytes.Clone(data)
	bad[1500] ^= 1
	r := runCDB(t, lu, []byte{0x2f, 0x02, 0, 0, 0, 4, 0, 0, 4, 0}, bad)
	if r.status != statusCheckCondition || r.sense.key != senseMiscompare || r.sense.info != 1500 {
		t.Errorf("VERIFY(10) mismatch: %+v", r.sense)
	}
	if r := runCDB(t, lu, []byte{0x2f, 0x06, 0, 0, 0, 4, 0, 0, 4, 0}, data[:512]); r.status != statusGood {
		t.Errorf("VERIFY(10) BYTCHK=3: %v", r.sense)
	}
	be.readErr.Store(true)
	if r := runCDB(t, lu, []byte{0x2f, 0, 0, 0, 0, 4, 0, 0, 4, 0}, nil); r.status != statusCheckCondition || r.sense.key != senseMediumError {
		t.Errorf("VERIFY of unreadable medium: %+v", r)
	}
}

func TestSenseMarshal(t *testing.T) {
	s := invalidField(7, -1).marshal()
	if len(s) != senseLen || s[0] != 0x70 || s[2] != senseIllegalRequest || s[7] != 10 || s[12] != 0x24 || s[13] != 0 {
		t.Errorf("fixed sense %x", s)
	}
	if s[15] != 0xc0 || be16(s[16:]) != 7 {
		t.Errorf("field pointer %x", s[15:18])
	}
	m := miscompare(300).marshal()
	if m[0] != 0xf0 || be32(m[3:]) != 300 || m[2] != senseMiscompare {
		t.Errorf("miscompare sense %x", m)
	}
}

func TestModeSelect(t *testing.T) {
	lu, _ := testLU(t)
	// Read the current caching and control pages and send them back: no
	// change, accepted.
	cur := runCDB(t, lu, []byte{0x1a, 0x08, 0x3f, 0, 255, 0}, nil).data
	list := append([]byte{0, 0, 0, 0}, cur[4:]...)
	sel := []byte{0x15, 0x10, 0, 0, byte(len(list)), 0}
	if r := runCDB(t, lu, sel, list); r.status != statusGood {
		t.Fatalf("MODE SELECT of the current values: %+v", r.sense)
	}
	// Clearing WCE is a change the logical unit does not allow.
	changed := bytes.Clone(list)
	changed[4+2] &^= 0x04
	if r := runCDB(t, lu, sel, changed); r.status != statusCheckCondition || r.sense.asc != ascInvalidFieldInParamList {
		t.Errorf("MODE SELECT clearing WCE: %+v", r)
	}
	// A block descriptor with another block size.
	desc := []byte{0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0}
	if r := runCDB(t, lu, []byte{0x15, 0x10, 0, 0, 12, 0}, desc); r.status != statusCheckCondition {
		t.Errorf("MODE SELECT with block length 4096: %+v", r)
	}
	desc[10] = 0x02 // 512
	if r := runCDB(t, lu, []byte{0x15, 0x10, 0, 0, 12, 0}, desc); r.status != statusGood {
		t.Errorf("MODE SELECT with the current block length: %+v", r.sense)
	}
	if _, s := lu.decodeCDB([]byte{0x15, 0x11, 0, 0, 12, 0}, true, 12); s == nil {
		t.Error("MODE SELECT with SP accepted")
	}
	if r := runCDB(t, lu, sel, list[:len(list)-3]); r.status != statusCheckCondition {
		t.Errorf("truncated parameter list: %+v", r)
	}
}
