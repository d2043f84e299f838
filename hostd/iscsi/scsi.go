package iscsi

import (
	"bytes"
	"context"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
)

// Identity strings of the logical unit in standard INQUIRY data.
const (
	inquiryVendor   = "CHUNKRD "         // T10 vendor identification, 8 bytes
	inquiryProduct  = "chunkraid volume" // product identification, 16 bytes
	inquiryRevision = "0001"             // product revision level, 4 bytes
)

// Version descriptors claimed in standard INQUIRY data (SPC-4 table 156).
var versionDescriptors = []uint16{
	0x00a0, // SAM-5 (no version claimed)
	0x0960, // iSCSI (no version claimed)
	0x0460, // SPC-4 (no version claimed)
	0x04c0, // SBC-3 (no version claimed)
}

// VPD pages this logical unit returns, in ascending order.
var supportedVPDPages = []byte{0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2}

// physicalBlockSize is the optimal transfer length granularity and unmap
// granularity reported in the Block Limits VPD page: below it the RAID
// layer has to read-modify-write. READ CAPACITY (16) reports one logical
// block per physical block all the same: the volume has no physical blocks
// of its own, and initiators take their alignment from the Block Limits
// page.
const physicalBlockSize = 4096

// logicalUnit is LUN 0 of a target: the SCSI block device in front of a
// Backend. Besides reservations and the capacity it last saw, every field
// is set at AddTarget.
type logicalUnit struct {
	locks    extentLocks
	reserved atomic.Bool   // a RESERVE or persistent reservation exists
	capacity atomic.Uint64 // capacity in blocks when last looked at
	capEpoch atomic.Uint64
	mu       struct {
		sync.Mutex
		legacyHolder string // initiator port holding a RESERVE(6)/(10), "" if none
		pr           prState
	}
	cmds           *commandTable
	backend        Backend
	trimmer        Trimmer // nil: fully provisioned
	zeroer         Zeroer  // nil: WRITE SAME of zeros is written
	mapper         Mapper  // nil: GET LBA STATUS reports everything mapped
	readOnly       bool    // write-protected (TargetConfig.ReadOnly)
	blockSize      uint32
	serial         string
	iqn            string
	naa            [8]byte // NAA locally assigned designator derived from serial
	maxXferBlocks  uint32  // MAXIMUM TRANSFER LENGTH in blocks
	optXferBlocks  uint32  // OPTIMAL TRANSFER LENGTH in blocks
	readChunkBytes int     // VERIFY reads the medium in pieces of this size
	log            *slog.Logger
	lastIOError    atomic.Pointer[ioErrorKey] // the back-end error logged last
}

func newLogicalUnit(be Backend, blockSize uint32, maxXfer, optXfer int, serial, iqn string) *logicalUnit {
	lu := &logicalUnit{
		backend:        be,
		blockSize:      blockSize,
		serial:         serial,
		iqn:            iqn,
		maxXferBlocks:  uint32(maxXfer / int(blockSize)),
		optXferBlocks:  uint32(optXfer / int(blockSize)),
		readChunkBytes: 1 << 20,
	}
	lu.trimmer, _ = be.(Trimmer)
	lu.zeroer, _ = be.(Zeroer)
	lu.mapper, _ = be.(Mapper)
	lu.cmds = newCommandTable(lu.trimmer != nil)
	lu.capacity.Store(lu.blocks())
	h := fnv.New64a()
	h.Write([]byte(serial))
	v := h.Sum64()
	// NAA 3 (locally assigned): 4-bit NAA field followed by 60 bits.
	put64(lu.naa[:], 0x3<<60|v&(1<<60-1))
	return lu
}

// blocks is the capacity in logical blocks. The back end may grow, so it is
// read on every command.
func (lu *logicalUnit) blocks() uint64 {
	return uint64(lu.backend.Size()) / uint64(lu.blockSize)
}

// capacityEpoch returns a counter that moves each time the capacity is seen
// to change. Sessions compare it with the epoch they last reported to
// raise CAPACITY DATA HAS CHANGED once per I_T nexus (SBC-3 4.10).
func (lu *logicalUnit) capacityEpoch() uint64 {
	n := lu.blocks()
	if n == lu.capacity.Load() {
		return lu.capEpoch.Load()
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if n != lu.capacity.Load() {
		lu.capacity.Store(n)
		lu.capEpoch.Add(1)
	}
	return lu.capEpoch.Load()
}

// dataDir is the direction of a command's data transfer.
type dataDir uint8

const (
	dirNone dataDir = iota
	dirIn           // Data-In: target to initiator
	dirOut          // Data-Out: initiator to target
)

// scsiCmd is a decoded CDB: what the transport needs to move data and what
// the execution step needs to do the work.
type scsiCmd struct {
	spec   *cmdSpec
	cdb    []byte // the CDB, in cdbBuf unless it is longer than 16 bytes
	cdbBuf [16]byte
	dir    dataDir
	lba    uint64
	blocks uint32
	fua    bool
	unmap  bool // WRITE SAME with the UNMAP bit
	bytchk uint8
	alloc  uint32 // allocation length of data-in commands
	outLen uint32 // Data-Out bytes the CDB asks for
	inLen  uint32 // Data-In bytes of block reads; the transport provides the buffer
	lunOK  bool   // the command addresses LUN 0
	nexus  string // initiator port name of the I_T nexus, for reservations
	edtl   uint32 // the initiator's Expected Data Transfer Length
	// pending is a unit attention REQUEST SENSE reports and clears.
	pending *sense
}

// result is the outcome of a command.
type result struct {
	status uint8
	sense  *sense
	data   []byte // Data-In, already truncated to the allocation length
	// events are unit attentions (and aborts) for other I_T nexuses that
	// the transport delivers before it answers the command.
	events []nexusEvent
}

func good(data []byte) result { return result{status: statusGood, data: data} }
func check(s *sense) result   { return result{status: statusCheckCondition, sense: s} }

// cmdSpec describes one supported command: its CDB length and usage bitmap
// (reported by REPORT SUPPORTED OPERATION CODES), how to decode it and how to
// execute it.
type cmdSpec struct {
	name   string
	op     byte
	sa     uint8
	hasSA  bool
	anyLUN bool // valid on LUNs that do not exist (SPC-4 well-known commands); not held by a unit attention
	// access says how persistent reservations restrict the command;
	// legacyOK commands run even when another I_T nexus holds a
	// RESERVE(6)/(10) reservation (SPC-2 5.5.1).
	access   accessKind
	legacyOK bool
	// medium: the command changes the medium, which a write-protected
	// unit refuses.
	medium bool
	usage  []byte
	decode func(lu *logicalUnit, c *scsiCmd) *sense
	exec   func(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, in []byte) result
}

func (s *cmdSpec) cdbLen() int { return len(s.usage) }

// commandTable holds the supported commands, indexed by operation code;
// commands with service actions share an opcode.
type commandTable struct {
	specs []*cmdSpec
	byOp  [256][]*cmdSpec
}

// newCommandTable returns the commands of a logical unit; a thin
// provisioned one adds UNMAP and GET LBA STATUS.
func newCommandTable(thin bool) *commandTable {
	t := &commandTable{specs: commandSpecs()}
	if thin {
		t.specs = append(t.specs, provisioningSpecs()...)
	}
	for _, s := range t.specs {
		t.byOp[s.op] = append(t.byOp[s.op], s)
	}
	return t
}

// commandSpecs lists the supported commands. Usage bitmaps mark the CDB
// bits the device server evaluates; the last byte is CONTROL, where NACA
// and LINK are rejected.
func commandSpecs() []*cmdSpec {
	ff := byte(0xff)
	lba10 := []byte{ff, ff, ff, ff, 0, ff, ff, 0}                         // bytes 2-9 of a 10-byte CDB
	lba12 := []byte{ff, ff, ff, ff, ff, ff, ff, ff, 0, 0}                 // bytes 2-11 of a 12-byte CDB
	lba16 := []byte{ff, ff, ff, ff, ff, ff, ff, ff, ff, ff, ff, ff, 0, 0} // bytes 2-15 of a 16-byte CDB
	u := func(op, b1 byte, rest []byte) []byte { return append([]byte{op, b1}, rest...) }
	specs := []*cmdSpec{
		{name: "TEST UNIT READY", op: 0x00, usage: []byte{0x00, 0, 0, 0, 0, 0},
			decode: decodeNoData, exec: execNoop},
		{name: "REQUEST SENSE", op: 0x03, anyLUN: true, legacyOK: true, usage: []byte{0x03, 0x01, 0, 0, 0xff, 0},
			decode: decodeRequestSense, exec: execRequestSense},
		{name: "READ(6)", op: 0x08, access: accRead, usage: []byte{0x08, 0x1f, 0xff, 0xff, 0xff, 0},
			decode: decodeRW, exec: execRead},
		{name: "WRITE(6)", medium: true, op: 0x0a, access: accWrite, usage: []byte{0x0a, 0x1f, 0xff, 0xff, 0xff, 0},
			decode: decodeRW, exec: execWrite},
		{name: "INQUIRY", op: 0x12, anyLUN: true, legacyOK: true, usage: []byte{0x12, 0x01, 0xff, 0xff, 0xff, 0},
			decode: decodeInquiry, exec: execInquiry},
		{name: "MODE SELECT(6)", op: 0x15, access: accWrite, usage: []byte{0x15, 0x11, 0, 0, 0xff, 0},
			decode: decodeModeSelect, exec: execModeSelect},
		{name: "RESERVE(6)", op: 0x16, access: accReserve, usage: []byte{0x16, 0, 0, 0, 0, 0},
			decode: decodeNoData, exec: execReserve},
		{name: "RELEASE(6)", op: 0x17, access: accReserve, legacyOK: true, usage: []byte{0x17, 0, 0, 0, 0, 0},
			decode: decodeNoData, exec: execRelease},
		{name: "MODE SENSE(6)", op: 0x1a, access: accRead, usage: []byte{0x1a, 0x08, 0xff, 0xff, 0xff, 0},
			decode: decodeModeSense, exec: execModeSense},
		{name: "START STOP UNIT", op: 0x1b, access: accWrite, usage: []byte{0x1b, 0x01, 0, 0x0f, 0xf7, 0},
			decode: decodeStartStop, exec: execNoop},
		{name: "PREVENT ALLOW MEDIUM REMOVAL", op: 0x1e, access: accRead, usage: []byte{0x1e, 0, 0, 0, 0x03, 0},
			decode: decodeNoData, exec: execNoop},
		{name: "READ CAPACITY(10)", op: 0x25, usage: []byte{0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0},
			decode: decodeReadCapacity10, exec: execReadCapacity10},
		{name: "READ(10)", op: 0x28, access: accRead, usage: u(0x28, 0x18, lba10),
			decode: decodeRW, exec: execRead},
		{name: "WRITE(10)", medium: true, op: 0x2a, access: accWrite, usage: u(0x2a, 0x18, lba10),
			decode: decodeRW, exec: execWrite},
		{name: "WRITE AND VERIFY(10)", medium: true, op: 0x2e, access: accWrite, usage: u(0x2e, 0x12, lba10),
			decode: decodeWriteVerify, exec: execWriteVerify},
		{name: "VERIFY(10)", op: 0x2f, access: accRead, usage: u(0x2f, 0x16, lba10),
			decode: decodeVerify, exec: execVerify},
		{name: "PRE-FETCH(10)", op: 0x34, access: accRead, usage: u(0x34, 0x02, lba10),
			decode: decodePrefetch, exec: execNoop},
		{name: "SYNCHRONIZE CACHE(10)", op: 0x35, access: accWrite, usage: u(0x35, 0x02, lba10),
			decode: decodeSyncCache, exec: execSyncCache},
		{name: "READ DEFECT DATA(10)", op: 0x37, access: accRead, usage: []byte{0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0},
			decode: decodeReadDefect, exec: execReadDefect},
		{name: "WRITE SAME(10)", medium: true, op: 0x41, access: accWrite, usage: u(0x41, 0x08, lba10),
			decode: decodeWriteSame, exec: execWriteSame},
		{name: "MODE SELECT(10)", op: 0x55, access: accWrite, usage: []byte{0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0},
			decode: decodeModeSelect, exec: execModeSelect},
		{name: "RESERVE(10)", op: 0x56, access: accReserve, usage: []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			decode: decodeNoData, exec: execReserve},
		{name: "RELEASE(10)", op: 0x57, access: accReserve, legacyOK: true, usage: []byte{0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			decode: decodeNoData, exec: execRelease},
		{name: "MODE SENSE(10)", op: 0x5a, access: accRead, usage: []byte{0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0},
			decode: decodeModeSense, exec: execModeSense},
		{name: "READ(16)", op: 0x88, access: accRead, usage: u(0x88, 0x18, lba16),
			decode: decodeRW, exec: execRead},
		{name: "WRITE(16)", medium: true, op: 0x8a, access: accWrite, usage: u(0x8a, 0x18, lba16),
			decode: decodeRW, exec: execWrite},
		{name: "COMPARE AND WRITE", medium: true, op: 0x89, access: accWrite, usage: []byte{0x89, 0x18, ff, ff, ff, ff, ff, ff, ff, ff, 0, 0, 0, ff, 0, 0},
			decode: decodeCompareAndWrite, exec: execCompareAndWrite},
		{name: "ORWRITE(16)", medium: true, op: 0x8b, access: accWrite, usage: u(0x8b, 0x18, lba16),
			decode: decodeRW, exec: execOrWrite},
		{name: "WRITE AND VERIFY(16)", medium: true, op: 0x8e, access: accWrite, usage: u(0x8e, 0x12, lba16),
			decode: decodeWriteVerify, exec: execWriteVerify},
		{name: "VERIFY(16)", op: 0x8f, access: accRead, usage: u(0x8f, 0x16, lba16),
			decode: decodeVerify, exec: execVerify},
		{name: "PRE-FETCH(16)", op: 0x90, access: accRead, usage: u(0x90, 0x02, lba16),
			decode: decodePrefetch, exec: execNoop},
		{name: "SYNCHRONIZE CACHE(16)", op: 0x91, access: accWrite, usage: u(0x91, 0x02, lba16),
			decode: decodeSyncCache, exec: execSyncCache},
		{name: "WRITE SAME(16)", medium: true, op: 0x93, access: accWrite, usage: u(0x93, 0x09, lba16),
			decode: decodeWriteSame, exec: execWriteSame},
		{name: "READ CAPACITY(16)", op: 0x9e, sa: 0x10, hasSA: true, usage: u(0x9e, 0x10, lba16),
			decode: decodeReadCapacity16, exec: execReadCapacity16},
		{name: "REPORT LUNS", op: 0xa0, anyLUN: true, legacyOK: true, usage: []byte{0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0},
			decode: decodeReportLUNs, exec: execReportLUNs},
		{name: "REPORT SUPPORTED OPERATION CODES", op: 0xa3, sa: 0x0c, hasSA: true, legacyOK: true, usage: []byte{0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0},
			decode: decodeReportOpcodes, exec: execReportOpcodes},
		{name: "READ(12)", op: 0xa8, access: accRead, usage: u(0xa8, 0x18, lba12),
			decode: decodeRW, exec: execRead},
		{name: "WRITE(12)", medium: true, op: 0xaa, access: accWrite, usage: u(0xaa, 0x18, lba12),
			decode: decodeRW, exec: execWrite},
		{name: "WRITE AND VERIFY(12)", medium: true, op: 0xae, access: accWrite, usage: u(0xae, 0x12, lba12),
			decode: decodeWriteVerify, exec: execWriteVerify},
		{name: "VERIFY(12)", op: 0xaf, access: accRead, usage: u(0xaf, 0x16, lba12),
			decode: decodeVerify, exec: execVerify},
		{name: "READ DEFECT DATA(12)", op: 0xb7, access: accRead, usage: []byte{0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0},
			decode: decodeReadDefect, exec: execReadDefect},
	}
	return append(specs, persistentReserveSpecs()...)
}

// lookup finds the spec for an opcode and, for commands with service
// actions, the service action in CDB byte 1.
func (t *commandTable) lookup(op, sa byte) (spec *cmdSpec, opKnown bool) {
	specs := t.byOp[op]
	if len(specs) == 0 {
		return nil, false
	}
	for _, s := range specs {
		if !s.hasSA || s.sa == sa&0x1f {
			return s, true
		}
	}
	return nil, true
}

// decodeCDB validates a CDB and returns the decoded command.
func (lu *logicalUnit) decodeCDB(cdb []byte, lunOK bool, edtl uint32) (*scsiCmd, *sense) {
	c := new(scsiCmd)
	if s := lu.decodeInto(c, cdb, lunOK, edtl); s != nil {
		return nil, s
	}
	return c, nil
}

// decodeInto validates a CDB and fills c, which must be zero. It does no
// I/O: the transport calls it before it accepts any data for the command.
// The CDB is copied into c.
func (lu *logicalUnit) decodeInto(c *scsiCmd, cdb []byte, lunOK bool, edtl uint32) *sense {
	if len(cdb) == 0 {
		return senseInvalidOpcode
	}
	var sa byte
	if len(cdb) > 1 {
		sa = cdb[1]
	}
	spec, known := lu.cmds.lookup(cdb[0], sa)
	if spec == nil {
		if known {
			return invalidField(1, 4)
		}
		return senseInvalidOpcode
	}
	if len(cdb) < spec.cdbLen() {
		return senseInvalidOpcode
	}
	c.spec, c.lunOK, c.edtl = spec, lunOK, edtl
	c.cdb = append(c.cdbBuf[:0], cdb[:spec.cdbLen()]...)
	if !lunOK && !spec.anyLUN {
		return senseLUNotSupported
	}
	// CONTROL byte: NACA (bit 2) is not supported (NORMACA=0 in INQUIRY),
	// LINK (bit 0) is obsolete.
	ctl := len(c.cdb) - 1
	if c.cdb[ctl]&0x04 != 0 {
		return invalidField(ctl, 2)
	}
	if c.cdb[ctl]&0x01 != 0 {
		return invalidField(ctl, 0)
	}
	if s := spec.decode(lu, c); s != nil {
		return s
	}
	if spec.medium && lu.readOnly {
		// Refused before any data is accepted (SBC-4 4.11).
		return senseWriteProtected
	}
	return nil
}

// execute runs a decoded command. out holds the Data-Out bytes received
// (possibly fewer than c.outLen when the initiator's Expected Data Transfer
// Length was short); in is a buffer of c.inLen bytes for block reads.
func (lu *logicalUnit) execute(ctx context.Context, c *scsiCmd, out, in []byte) result {
	if lu.reservationConflict(c) {
		return result{status: statusReservationConflict}
	}
	return c.spec.exec(ctx, lu, c, out, in)
}

func decodeNoData(*logicalUnit, *scsiCmd) *sense { return nil }

// execNoop completes commands that have nothing to do once decoded: TEST
// UNIT READY, PRE-FETCH (there is no cache to fill), START STOP UNIT and
// PREVENT ALLOW MEDIUM REMOVAL (the medium is not removable and always
// ready).
func execNoop(context.Context, *logicalUnit, *scsiCmd, []byte, []byte) result {
	return good(nil)
}

// rwFields extracts LBA and TRANSFER LENGTH from a READ/WRITE/VERIFY CDB and
// returns the byte offset of the length field for sense field pointers.
func rwFields(cdb []byte) (lba uint64, blocks uint32, lenOff int) {
	switch len(cdb) {
	case 6:
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		blocks = uint32(cdb[4])
		if blocks == 0 {
			blocks = 256 // SBC-3: in READ(6)/WRITE(6) zero means 256 blocks
		}
		return lba, blocks, 4
	case 10:
		return uint64(be32(cdb[2:])), uint32(be16(cdb[7:])), 7
	case 12:
		return uint64(be32(cdb[2:])), be32(cdb[6:]), 6
	default:
		return be64(cdb[2:]), be32(cdb[10:]), 10
	}
}

// checkRange applies the LBA checks every block command shares: the whole
// range must lie inside the capacity. A zero-length range at the capacity is
// allowed, as SBC-3 does not count an empty transfer as an access.
func (lu *logicalUnit) checkRange(lba uint64, blocks uint32) *sense {
	n := lu.blocks()
	if lba > n || uint64(blocks) > n-lba {
		return senseLBAOutOfRange
	}
	return nil
}

func decodeRW(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	lba, blocks, lenOff := rwFields(cdb)
	if len(cdb) > 6 {
		if cdb[1]>>5 != 0 { // RDPROTECT / WRPROTECT without protection information
			return invalidField(1, 7)
		}
		c.fua = cdb[1]&0x08 != 0
	}
	if blocks > lu.maxXferBlocks {
		return invalidField(lenOff, -1)
	}
	if s := lu.checkRange(lba, blocks); s != nil {
		return s
	}
	c.lba, c.blocks = lba, blocks
	n := blocks * lu.blockSize
	switch cdb[0] {
	case 0x08, 0x28, 0xa8, 0x88:
		c.dir, c.inLen = dirIn, n
	default:
		c.dir, c.outLen = dirOut, n
	}
	return nil
}

func execRead(ctx context.Context, lu *logicalUnit, c *scsiCmd, _, in []byte) result {
	if c.blocks == 0 {
		return good(nil)
	}
	if err := lu.backend.ReadAt(ctx, in, int64(c.lba)*int64(lu.blockSize)); err != nil {
		return lu.ioError(err, c.lba, false)
	}
	return good(in)
}

func execWrite(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	// The initiator may have announced fewer bytes than the CDB asks for
	// (residual overflow): write the whole blocks received and report the
	// rest as residual. A partial block cannot be written.
	if len(out)%int(lu.blockSize) != 0 {
		return check(senseInvalidIU)
	}
	if len(out) == 0 {
		return good(nil)
	}
	off := int64(c.lba) * int64(lu.blockSize)
	defer lu.locks.shared(off, int64(len(out))).unlock()
	if err := lu.backend.WriteAt(ctx, out, off, c.fua); err != nil {
		return lu.ioError(err, c.lba, true)
	}
	return good(nil)
}

func decodeVerify(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	lba, blocks, lenOff := rwFields(cdb)
	if cdb[1]>>5 != 0 { // VRPROTECT
		return invalidField(1, 7)
	}
	c.bytchk = cdb[1] >> 1 & 3
	if c.bytchk == 2 {
		return invalidField(1, 2)
	}
	if blocks > lu.maxXferBlocks {
		return invalidField(lenOff, -1)
	}
	if s := lu.checkRange(lba, blocks); s != nil {
		return s
	}
	c.lba, c.blocks = lba, blocks
	switch {
	case blocks == 0 || c.bytchk == 0:
	case c.bytchk == 1:
		c.dir, c.outLen = dirOut, blocks*lu.blockSize
	case c.bytchk == 3:
		c.dir, c.outLen = dirOut, lu.blockSize
	}
	return nil
}

// execVerify reads the range from the medium; with BYTCHK it compares the
// data against the Data-Out buffer (BYTCHK=1) or against one block repeated
// over the range (BYTCHK=3).
func execVerify(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if c.blocks == 0 {
		return good(nil)
	}
	if c.bytchk != 0 && uint32(len(out)) < c.outLen {
		return check(senseInvalidIU)
	}
	bs := int(lu.blockSize)
	total := int(c.blocks) * bs
	chunk := min(lu.readChunkBytes/bs*bs, total)
	buf := make([]byte, chunk)
	for done := 0; done < total; {
		n := min(chunk, total-done)
		p := buf[:n]
		if err := lu.backend.ReadAt(ctx, p, int64(c.lba)*int64(bs)+int64(done)); err != nil {
			return lu.ioError(err, c.lba, false)
		}
		switch c.bytchk {
		case 1:
			if i := firstDiff(p, out[done:done+n]); i >= 0 {
				return check(miscompare(done + i))
			}
		case 3:
			for b := 0; b < n; b += bs {
				if i := firstDiff(p[b:b+bs], out[:bs]); i >= 0 {
					return check(miscompare(done + b + i))
				}
			}
		}
		done += n
	}
	return good(nil)
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func miscompare(off int) *sense {
	return &sense{key: senseMiscompare, asc: ascMiscompareDuringVerify, bit: -1, info: uint64(off), hasInfo: true}
}

func decodeSyncCache(lu *logicalUnit, c *scsiCmd) *sense {
	lba, blocks, _ := rwFields(c.cdb)
	if s := lu.checkRange(lba, blocks); s != nil {
		return s
	}
	c.lba, c.blocks = lba, blocks
	return nil
}

// execSyncCache flushes the whole back end: the RAID layer has no cheaper
// range flush, and a flush of more than asked for is allowed. IMMED is
// ignored: the command completes when the flush has.
func execSyncCache(ctx context.Context, lu *logicalUnit, _ *scsiCmd, _, _ []byte) result {
	if err := lu.backend.Flush(ctx); err != nil {
		return lu.ioError(err, 0, true)
	}
	return good(nil)
}

func decodeReadCapacity10(lu *logicalUnit, c *scsiCmd) *sense {
	// PMI=0 with a non-zero LBA is invalid (SBC-3 5.15).
	if c.cdb[8]&1 == 0 && be32(c.cdb[2:]) != 0 {
		return invalidField(2, -1)
	}
	c.dir = dirIn
	return nil
}

func execReadCapacity10(_ context.Context, lu *logicalUnit, _ *scsiCmd, _, _ []byte) result {
	b := make([]byte, 8)
	last := lu.blocks() - 1
	if lu.blocks() == 0 {
		last = 0
	}
	if last > 0xfffffffe {
		last = 0xffffffff
	}
	put32(b, uint32(last))
	put32(b[4:], lu.blockSize)
	return good(b)
}

func decodeReadCapacity16(lu *logicalUnit, c *scsiCmd) *sense {
	c.dir = dirIn
	c.alloc = be32(c.cdb[10:])
	return nil
}

func execReadCapacity16(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	b := make([]byte, 32)
	last := lu.blocks() - 1
	if lu.blocks() == 0 {
		last = 0
	}
	put64(b, last)
	put32(b[8:], lu.blockSize)
	// byte 13: P_I_EXPONENT 0, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0.
	if lu.trimmer != nil {
		b[14] = 0x80 | 0x40 // LBPME: thin provisioned; LBPRZ: unmapped blocks read as zeros
	}
	return good(truncate(b, c.alloc))
}

func truncate(b []byte, alloc uint32) []byte {
	if uint64(len(b)) > uint64(alloc) {
		return b[:alloc]
	}
	return b
}

func decodeRequestSense(lu *logicalUnit, c *scsiCmd) *sense {
	c.dir = dirIn
	c.alloc = uint32(c.cdb[4])
	return nil
}

// execRequestSense returns NO SENSE, or the unit attention the transport
// passed in c.pending: other sense data is always delivered with the CHECK
// CONDITION itself (autosense), so none is ever pending. On a LUN that does
// not exist it reports LOGICAL UNIT NOT SUPPORTED as parameter data.
func execRequestSense(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	key, asc := uint8(senseNoSense), uint16(ascNone)
	switch {
	case !c.lunOK:
		key, asc = senseIllegalRequest, ascLUNotSupported
	case c.pending != nil:
		key, asc = c.pending.key, c.pending.asc
	}
	var b []byte
	if c.cdb[1]&1 != 0 { // DESC: descriptor format, no descriptors
		b = []byte{0x72, key, byte(asc >> 8), byte(asc), 0, 0, 0, 0}
	} else {
		s := sense{key: key, asc: asc, bit: -1}
		b = s.marshal()
	}
	return good(truncate(b, c.alloc))
}

func decodeInquiry(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	if cdb[1]&0x02 != 0 { // CMDDT, obsolete
		return invalidField(1, 1)
	}
	evpd := cdb[1]&1 != 0
	if !evpd && cdb[2] != 0 {
		return invalidField(2, -1)
	}
	if evpd {
		if !c.lunOK {
			return senseLUNotSupported
		}
		if bytes.IndexByte(supportedVPDPages, cdb[2]) < 0 {
			return invalidField(2, -1)
		}
	}
	c.dir = dirIn
	c.alloc = uint32(be16(cdb[3:]))
	return nil
}

func execInquiry(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	var b []byte
	if c.cdb[1]&1 == 0 {
		b = lu.standardInquiry(c.lunOK)
	} else {
		b = lu.vpdPage(c.cdb[2])
	}
	return good(truncate(b, c.alloc))
}

// standardInquiry builds the standard INQUIRY data (SPC-4 6.6.2).
func (lu *logicalUnit) standardInquiry(lunOK bool) []byte {
	b := make([]byte, 74)
	if !lunOK {
		b[0] = 0x7f // peripheral qualifier 3: no logical unit here
	}
	b[2] = 0x06         // VERSION: SPC-4
	b[3] = 0x10 | 0x02  // HISUP, RESPONSE DATA FORMAT 2
	b[4] = byte(74 - 5) // ADDITIONAL LENGTH
	b[7] = 0x02         // CMDQUE
	copy(b[8:16], inquiryVendor)
	copy(b[16:32], inquiryProduct)
	copy(b[32:36], inquiryRevision)
	for i, v := range versionDescriptors {
		put16(b[58+2*i:], v)
	}
	return b
}

func (lu *logicalUnit) vpdPage(page byte) []byte {
	switch page {
	case 0x00:
		return vpd(page, supportedVPDPages)
	case 0x80:
		return vpd(page, []byte(lu.serial))
	case 0x83:
		return vpd(page, lu.deviceIdentification())
	case 0xb0:
		return vpd(page, lu.blockLimits())
	case 0xb1:
		p := make([]byte, 0x3c)
		put16(p, 1) // MEDIUM ROTATION RATE: non-rotating medium
		return vpd(page, p)
	case 0xb2:
		return vpd(page, lu.logicalBlockProvisioning())
	}
	return nil
}

// vpd prepends the 4-byte VPD header: device type, page code, page length.
func vpd(page byte, payload []byte) []byte {
	b := make([]byte, 4+len(payload))
	b[1] = page
	put16(b[2:], uint16(len(payload)))
	copy(b[4:], payload)
	return b
}

// Designator fields (SPC-4 7.8.6).
const (
	codeSetBinary = 1
	codeSetASCII  = 2
	codeSetUTF8   = 3
	protoISCSI    = 5
	assocLU       = 0
	assocPort     = 1
	assocTarget   = 2
	desigT10      = 1
	desigNAA      = 3
	desigRelPort  = 4
	desigSCSIName = 8
)

func designator(b []byte, codeSet, assoc, typ byte, piv bool, id []byte) []byte {
	h := [4]byte{codeSet, assoc<<4 | typ, 0, byte(len(id))}
	if piv {
		h[0] |= protoISCSI << 4
		h[1] |= 0x80
	}
	b = append(b, h[:]...)
	return append(b, id...)
}

// scsiName returns an iSCSI name as a SCSI name string designator value:
// NUL-terminated and padded with NULs to a multiple of 4 bytes.
func scsiName(s string) []byte {
	n := len(s) + 1
	n += padLen(n)
	b := make([]byte, n)
	copy(b, s)
	return b
}

// deviceIdentification is the payload of VPD page 0x83: the logical unit
// is named by an NAA identifier and a T10 vendor identifier, both derived
// from the volume serial so that every hostd exporting the volume reports
// the same identity; the target port by its relative port number and its
// iSCSI name; the target device by its iSCSI name.
func (lu *logicalUnit) deviceIdentification() []byte {
	var b []byte
	b = designator(b, codeSetBinary, assocLU, desigNAA, false, lu.naa[:])
	b = designator(b, codeSetASCII, assocLU, desigT10, false, []byte(inquiryVendor+lu.serial))
	b = designator(b, codeSetBinary, assocPort, desigRelPort, true, []byte{0, 0, 0, 1})
	b = designator(b, codeSetUTF8, assocPort, desigSCSIName, true, scsiName(lu.iqn+",t,0x1"))
	b = designator(b, codeSetUTF8, assocTarget, desigSCSIName, true, scsiName(lu.iqn))
	return b
}

// blockLimits is the payload of VPD page 0xB0 (SBC-3 6.5.3), 0x3c bytes.
func (lu *logicalUnit) blockLimits() []byte {
	p := make([]byte, 0x3c)
	// WSNZ=0: a WRITE SAME of zero blocks runs to the end of the medium.
	p[1] = maxCompareAndWrite // MAXIMUM COMPARE AND WRITE LENGTH
	gran := uint16(1)
	if lu.blockSize < physicalBlockSize {
		gran = uint16(physicalBlockSize / lu.blockSize)
	}
	put16(p[2:], gran)              // OPTIMAL TRANSFER LENGTH GRANULARITY
	put32(p[4:], lu.maxXferBlocks)  // MAXIMUM TRANSFER LENGTH
	put32(p[8:], lu.optXferBlocks)  // OPTIMAL TRANSFER LENGTH
	put32(p[12:], lu.maxXferBlocks) // MAXIMUM PREFETCH LENGTH
	if lu.trimmer != nil {
		put32(p[16:], lu.maxUnmapBlocks()) // MAXIMUM UNMAP LBA COUNT
		put32(p[20:], maxUnmapDescriptors) // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
		put32(p[24:], uint32(gran))        // OPTIMAL UNMAP GRANULARITY
		put32(p[28:], 0x80000000)          // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
	}
	put64(p[32:], uint64(lu.maxWriteSameBlocks())) // MAXIMUM WRITE SAME LENGTH
	return p
}

func decodeModeSense(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	pc := cdb[2] >> 6
	page := cdb[2] & 0x3f
	sub := cdb[3]
	if pc == 3 {
		return senseSavingParams
	}
	switch page {
	case 0x08, 0x0a:
		if sub != 0 {
			return invalidField(3, -1)
		}
	case 0x3f:
		if sub != 0 && sub != 0xff {
			return invalidField(3, -1)
		}
	default:
		return invalidField(2, 5)
	}
	c.dir = dirIn
	if cdb[0] == 0x1a {
		c.alloc = uint32(cdb[4])
	} else {
		c.alloc = uint32(be16(cdb[7:]))
	}
	return nil
}

// modePage returns a mode page for page control pc (0 current, 1
// changeable, 2 default). Nothing is changeable: MODE SELECT is not offered.
func modePage(page byte, pc byte) []byte {
	switch page {
	case 0x08: // Caching
		p := make([]byte, 0x14)
		p[0], p[1] = 0x08, 0x12
		if pc != 1 {
			p[2] = 0x04 // WCE: acknowledged writes may be volatile until SYNCHRONIZE CACHE
		}
		return p
	case 0x0a: // Control
		p := make([]byte, 0x0c)
		p[0], p[1] = 0x0a, 0x0a
		if pc != 1 {
			p[3] = 0x10 // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
			put16(p[8:], 0xffff)
		}
		return p
	}
	return nil
}

func execModeSense(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	cdb := c.cdb
	six := cdb[0] == 0x1a
	dbd := cdb[1]&0x08 != 0
	llbaa := !six && cdb[1]&0x10 != 0
	pc := cdb[2] >> 6
	page := cdb[2] & 0x3f

	var pages []byte
	if page == 0x3f {
		pages = append(modePage(0x08, pc), modePage(0x0a, pc)...)
	} else {
		pages = modePage(page, pc)
	}
	var desc []byte
	if !dbd {
		n := lu.blocks()
		if llbaa {
			desc = make([]byte, 16)
			put64(desc, n)
			put32(desc[12:], lu.blockSize)
		} else {
			// Short LBA block descriptor (SBC-3 6.4.2): NUMBER OF LOGICAL
			// BLOCKS (saturated), reserved byte, 3-byte LOGICAL BLOCK LENGTH.
			desc = make([]byte, 8)
			put32(desc, uint32(min(n, 0xffffffff)))
			put32(desc[4:], lu.blockSize&0xffffff)
		}
	}
	devSpecific := byte(0x10) // DPOFUA: DPO and FUA are supported
	if lu.readOnly {
		devSpecific |= 0x80 // WP
	}
	var b []byte
	if six {
		b = make([]byte, 4, 4+len(desc)+len(pages))
		b[2] = devSpecific
		b[3] = byte(len(desc))
		b = append(append(b, desc...), pages...)
		b[0] = byte(len(b) - 1)
	} else {
		b = make([]byte, 8, 8+len(desc)+len(pages))
		b[3] = devSpecific
		if llbaa && !dbd {
			b[4] = 1 // LONGLBA
		}
		put16(b[6:], uint16(len(desc)))
		b = append(append(b, desc...), pages...)
		put16(b, uint16(len(b)-2))
	}
	return good(truncate(b, c.alloc))
}

func decodeReportLUNs(lu *logicalUnit, c *scsiCmd) *sense {
	switch c.cdb[2] {
	case 0x00, 0x01, 0x02, 0x10, 0x11, 0x12:
	default:
		return invalidField(2, -1)
	}
	c.alloc = be32(c.cdb[6:])
	if c.alloc < 16 {
		return invalidField(6, -1)
	}
	c.dir = dirIn
	return nil
}

func execReportLUNs(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	var luns []uint16
	switch c.cdb[2] {
	case 0x00, 0x02, 0x11:
		luns = []uint16{0}
	}
	b := make([]byte, 8+8*len(luns))
	put32(b, uint32(8*len(luns)))
	for i, l := range luns {
		put64(b[8+8*i:], lunToWire(l))
	}
	return good(truncate(b, c.alloc))
}

func decodeReportOpcodes(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	opts := cdb[2] & 0x07
	if opts > 3 {
		return invalidField(2, 2)
	}
	switch opts {
	case 1:
		if specs := lu.cmds.byOp[cdb[3]]; len(specs) > 0 && specs[0].hasSA {
			return invalidField(3, -1)
		}
	case 2:
		if specs := lu.cmds.byOp[cdb[3]]; len(specs) > 0 && !specs[0].hasSA {
			return invalidField(3, -1)
		}
	}
	c.dir = dirIn
	c.alloc = be32(cdb[6:])
	return nil
}

// timeoutsDescriptor is the command timeouts descriptor returned with RCTD:
// no nominal or recommended timeout is given.
var timeoutsDescriptor = []byte{0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func execReportOpcodes(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	cdb := c.cdb
	rctd := cdb[2]&0x80 != 0
	opts := cdb[2] & 0x07
	if opts == 0 {
		b := make([]byte, 4)
		for _, s := range lu.cmds.specs {
			d := [8]byte{s.op}
			if s.hasSA {
				put16(d[2:], uint16(s.sa))
				d[5] |= 0x01 // SERVACTV
			}
			if rctd {
				d[5] |= 0x02 // CTDP
			}
			put16(d[6:], uint16(s.cdbLen()))
			b = append(b, d[:]...)
			if rctd {
				b = append(b, timeoutsDescriptor...)
			}
		}
		put32(b, uint32(len(b)-4))
		return good(truncate(b, c.alloc))
	}
	op, sa := cdb[3], uint8(be16(cdb[4:]))
	var spec *cmdSpec
	for _, s := range lu.cmds.byOp[op] {
		if !s.hasSA || (s.sa == sa && be16(cdb[4:]) <= 0x1f) {
			spec = s
		}
	}
	b := make([]byte, 4)
	if spec == nil {
		b[1] = 0x01 // SUPPORT 001b: not supported
		return good(truncate(b, c.alloc))
	}
	b[1] = 0x03 // SUPPORT 011b: supported as the standard defines
	if rctd {
		b[1] |= 0x80
	}
	put16(b[2:], uint16(spec.cdbLen()))
	b = append(b, spec.usage...)
	if rctd {
		b = append(b, timeoutsDescriptor...)
	}
	return good(truncate(b, c.alloc))
}

func decodeWriteVerify(lu *logicalUnit, c *scsiCmd) *sense {
	if s := decodeRW(lu, c); s != nil {
		return s
	}
	c.bytchk = c.cdb[1] >> 1 & 3
	if c.bytchk > 1 {
		return invalidField(1, 2)
	}
	c.fua = false // WRITE AND VERIFY has no FUA bit; bit 3 is reserved
	return nil
}

// execWriteVerify writes the data, then reads it back from the medium and,
// with BYTCHK, compares it with what was sent.
func execWriteVerify(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if r := execWrite(ctx, lu, c, out, nil); r.status != statusGood || len(out) == 0 {
		return r
	}
	back := make([]byte, len(out))
	if err := lu.backend.ReadAt(ctx, back, int64(c.lba)*int64(lu.blockSize)); err != nil {
		return lu.ioError(err, c.lba, false)
	}
	if c.bytchk == 1 {
		if i := firstDiff(back, out); i >= 0 {
			return check(miscompare(i))
		}
	}
	return good(nil)
}

func decodePrefetch(lu *logicalUnit, c *scsiCmd) *sense {
	lba, blocks, lenOff := rwFields(c.cdb)
	if blocks > lu.maxXferBlocks {
		return invalidField(lenOff, -1)
	}
	if s := lu.checkRange(lba, blocks); s != nil {
		return s
	}
	c.lba, c.blocks = lba, blocks
	return nil
}

func decodeStartStop(lu *logicalUnit, c *scsiCmd) *sense {
	switch c.cdb[4] >> 4 { // POWER CONDITION
	case 0x0, 0x1, 0x2, 0x3, 0x7, 0xa, 0xb:
		return nil
	}
	return invalidField(4, 7)
}

func decodeReadDefect(lu *logicalUnit, c *scsiCmd) *sense {
	c.dir = dirIn
	if c.cdb[0] == 0x37 {
		c.alloc = uint32(be16(c.cdb[7:]))
	} else {
		c.alloc = be32(c.cdb[6:])
	}
	return nil
}

// execReadDefect reports empty primary and grown defect lists: a volume
// has no defective blocks of its own.
func execReadDefect(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	var flags byte
	if c.cdb[0] == 0x37 {
		flags = c.cdb[2] & 0x1f
		return good(truncate([]byte{0, flags, 0, 0}, c.alloc))
	}
	flags = c.cdb[1] & 0x1f
	return good(truncate([]byte{0, flags, 0, 0, 0, 0, 0, 0}, c.alloc))
}

// maxCompareAndWrite is the largest COMPARE AND WRITE in blocks.
const maxCompareAndWrite = 255

// maxWriteSameBytes bounds one WRITE SAME: it is carried out as writes of
// up to writeSameChunk bytes, so its duration grows with its length.
const (
	maxWriteSameBytes = 128 << 20
	writeSameChunk    = 1 << 20
)

func (lu *logicalUnit) maxWriteSameBlocks() uint32 { return maxWriteSameBytes / lu.blockSize }

func decodeWriteSame(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	lba, blocks, lenOff := rwFields(cdb)
	c.unmap = cdb[1]&0x08 != 0
	switch {
	case cdb[1]>>5 != 0: // WRPROTECT
		return invalidField(1, 7)
	case cdb[1]&0x10 != 0: // ANCHOR: not supported (ANC_SUP=0)
		return invalidField(1, 4)
	case c.unmap && lu.trimmer == nil: // the volume is fully provisioned (LBPWS=0)
		return invalidField(1, 3)
	case cdb[1]&0x06 != 0: // PBDATA, LBDATA: obsolete
		return invalidField(1, 2)
	}
	n := lu.blocks()
	if lba > n {
		return senseLBAOutOfRange
	}
	if blocks == 0 {
		// WSNZ=0: zero blocks means up to the end of the medium.
		blocks = uint32(min(n-lba, uint64(lu.maxWriteSameBlocks())+1))
	}
	if blocks > lu.maxWriteSameBlocks() {
		return invalidField(lenOff, -1)
	}
	if s := lu.checkRange(lba, blocks); s != nil {
		return s
	}
	c.lba, c.blocks = lba, blocks
	if cdb[0] == 0x93 && cdb[1]&0x01 != 0 { // NDOB: a block of zeros, no Data-Out
		return nil
	}
	if c.edtl != lu.blockSize {
		// The Data-Out buffer is exactly one block; with any other
		// length the initiator and the target disagree on the command.
		return invalidField(lenOff, -1)
	}
	c.dir, c.outLen = dirOut, lu.blockSize
	return nil
}

// execWriteSame writes one block (zeros with NDOB) over the range. With the
// UNMAP bit the range is trimmed instead, whatever the block holds: the
// initiator asks for deallocation, and a deallocated block reads as zeros
// (LBPRZ), as LIO does and libiscsi's suite expects. A zero block without
// UNMAP goes to the back end's WriteZeroes when it has one; anything else
// is written in pieces of writeSameChunk bytes.
func execWriteSame(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if c.blocks == 0 {
		return good(nil)
	}
	bs := int(lu.blockSize)
	if c.dir == dirOut && len(out) != bs {
		return check(senseInvalidIU)
	}
	zero := c.dir != dirOut || allZero(out)
	total := int64(c.blocks) * int64(bs)
	off := int64(c.lba) * int64(bs)
	switch {
	case c.unmap:
		if err := lu.trim(ctx, off, total); err != nil {
			return lu.ioError(err, c.lba, true)
		}
		return good(nil)
	case zero && lu.zeroer != nil:
		defer lu.locks.shared(off, total).unlock()
		if err := lu.zeroer.WriteZeroes(ctx, off, total); err != nil {
			return lu.ioError(err, c.lba, true)
		}
		return good(nil)
	}
	chunk := make([]byte, min(int64(writeSameChunk/bs*bs), total))
	if !zero {
		for i := 0; i < len(chunk); i += bs {
			copy(chunk[i:], out)
		}
	}
	defer lu.locks.shared(off, total).unlock()
	for done := int64(0); done < total; {
		n := min(int64(len(chunk)), total-done)
		if err := lu.backend.WriteAt(ctx, chunk[:n], off+done, false); err != nil {
			return lu.ioError(err, c.lba, true)
		}
		done += n
	}
	return good(nil)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if be64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func decodeCompareAndWrite(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	lba := be64(cdb[2:])
	blocks := uint32(cdb[13])
	switch {
	case cdb[1]>>5 != 0: // WRPROTECT
		return invalidField(1, 7)
	case blocks > maxCompareAndWrite:
		return invalidField(13, -1)
	case c.edtl != 2*blocks*lu.blockSize:
		// The Data-Out buffer holds the verify and the write data; any
		// other length cannot be split into the two.
		return invalidField(13, -1)
	}
	if s := lu.checkRange(lba, blocks); s != nil {
		return s
	}
	c.lba, c.blocks = lba, blocks
	c.fua = cdb[1]&0x08 != 0
	if blocks > 0 {
		c.dir, c.outLen = dirOut, 2*blocks*lu.blockSize
	}
	return nil
}

// execCompareAndWrite compares the first half of the Data-Out buffer with
// the medium and, if it matches, writes the second half, atomically with
// respect to every other write.
func execCompareAndWrite(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if c.blocks == 0 {
		return good(nil)
	}
	if uint32(len(out)) != c.outLen {
		return check(senseInvalidIU)
	}
	n := len(out) / 2
	off := int64(c.lba) * int64(lu.blockSize)
	defer lu.locks.exclusive(off, int64(n)).unlock()
	cur := make([]byte, n)
	if err := lu.backend.ReadAt(ctx, cur, off); err != nil {
		return lu.ioError(err, c.lba, false)
	}
	if i := firstDiff(cur, out[:n]); i >= 0 {
		return check(miscompare(i))
	}
	if err := lu.backend.WriteAt(ctx, out[n:], off, c.fua); err != nil {
		return lu.ioError(err, c.lba, true)
	}
	return good(nil)
}

// execOrWrite ORs the Data-Out buffer into the medium, atomically with
// respect to every other write.
func execOrWrite(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if len(out)%int(lu.blockSize) != 0 {
		return check(senseInvalidIU)
	}
	if len(out) == 0 {
		return good(nil)
	}
	off := int64(c.lba) * int64(lu.blockSize)
	defer lu.locks.exclusive(off, int64(len(out))).unlock()
	cur := make([]byte, len(out))
	if err := lu.backend.ReadAt(ctx, cur, off); err != nil {
		return lu.ioError(err, c.lba, false)
	}
	for i := range cur {
		cur[i] |= out[i]
	}
	if err := lu.backend.WriteAt(ctx, cur, off, c.fua); err != nil {
		return lu.ioError(err, c.lba, true)
	}
	return good(nil)
}

func decodeModeSelect(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	if cdb[1]&0x01 != 0 { // SP: pages cannot be saved
		return invalidField(1, 0)
	}
	if cdb[1]&0x10 == 0 { // PF: only the standard page format
		return invalidField(1, 4)
	}
	if cdb[0] == 0x15 {
		c.outLen = uint32(cdb[4])
	} else {
		c.outLen = uint32(be16(cdb[7:]))
	}
	if c.outLen > 0 {
		c.dir = dirOut
	}
	return nil
}

// execModeSelect accepts a parameter list that changes nothing: no mode
// parameter of this logical unit is changeable, so any page that differs
// from the current values, or a block descriptor with another block size,
// is an invalid field in the parameter list.
func execModeSelect(_ context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if uint32(len(out)) < c.outLen {
		return check(senseParamLength)
	}
	if len(out) == 0 {
		return good(nil)
	}
	six := c.cdb[0] == 0x15
	hdr := 8
	var descLen int
	if six {
		hdr = 4
		if len(out) < hdr {
			return check(senseParamLength)
		}
		descLen = int(out[3])
	} else {
		if len(out) < hdr {
			return check(senseParamLength)
		}
		descLen = int(be16(out[6:]))
	}
	if out[1] != 0 { // MEDIUM TYPE
		return check(invalidParam(1, -1))
	}
	if len(out) < hdr+descLen {
		return check(senseParamLength)
	}
	switch descLen {
	case 0:
	case 8:
		if be32(out[hdr+4:])&0xffffff != lu.blockSize {
			return check(invalidParam(hdr+5, -1))
		}
	case 16:
		if six || out[4]&1 == 0 {
			return check(invalidParam(hdr-2, -1))
		}
		if be32(out[hdr+12:]) != lu.blockSize {
			return check(invalidParam(hdr+12, -1))
		}
	default:
		return check(invalidParam(hdr-1, -1))
	}
	for off := hdr + descLen; off < len(out); {
		if off+2 > len(out) {
			return check(senseParamLength)
		}
		code := out[off] & 0x3f
		n := 2 + int(out[off+1])
		if off+n > len(out) {
			return check(senseParamLength)
		}
		cur := modePage(code, 0)
		if cur == nil || len(cur) != n || out[off]&0x40 != 0 { // unknown page, wrong length, SPF
			return check(invalidParam(off, -1))
		}
		for i := 2; i < n; i++ {
			if out[off+i] != cur[i] {
				return check(invalidParam(off+i, -1))
			}
		}
		off += n
	}
	return good(nil)
}
