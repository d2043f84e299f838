package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// bhsLen is the size of the Basic Header Segment that starts every PDU.
const bhsLen = 48

// maxAHSLen is the largest Additional Header Segment a PDU can announce: the
// TotalAHSLength byte counts 4-byte words.
const maxAHSLen = 255 * 4

// reservedTag is the "no tag" value of ITT and TTT fields.
const reservedTag = 0xffffffff

// opcode is the 6-bit PDU opcode in byte 0 of the BHS.
type opcode uint8

// Initiator opcodes.
const (
	opNOPOut      opcode = 0x00
	opSCSICommand opcode = 0x01
	opTaskMgmt    opcode = 0x02
	opLoginReq    opcode = 0x03
	opTextReq     opcode = 0x04
	opDataOut     opcode = 0x05
	opLogoutReq   opcode = 0x06
	opSNACK       opcode = 0x10
)

// Target opcodes.
const (
	opNOPIn        opcode = 0x20
	opSCSIResponse opcode = 0x21
	opTaskMgmtResp opcode = 0x22
	opLoginResp    opcode = 0x23
	opTextResp     opcode = 0x24
	opDataIn       opcode = 0x25
	opLogoutResp   opcode = 0x26
	opR2T          opcode = 0x31
	opAsync        opcode = 0x32
	opReject       opcode = 0x3f
)

func (o opcode) String() string {
	switch o {
	case opNOPOut:
		return "NOP-Out"
	case opSCSICommand:
		return "SCSI Command"
	case opTaskMgmt:
		return "Task Management Request"
	case opLoginReq:
		return "Login Request"
	case opTextReq:
		return "Text Request"
	case opDataOut:
		return "Data-Out"
	case opLogoutReq:
		return "Logout Request"
	case opSNACK:
		return "SNACK Request"
	case opNOPIn:
		return "NOP-In"
	case opSCSIResponse:
		return "SCSI Response"
	case opTaskMgmtResp:
		return "Task Management Response"
	case opLoginResp:
		return "Login Response"
	case opTextResp:
		return "Text Response"
	case opDataIn:
		return "Data-In"
	case opLogoutResp:
		return "Logout Response"
	case opR2T:
		return "R2T"
	case opAsync:
		return "Asynchronous Message"
	case opReject:
		return "Reject"
	}
	return fmt.Sprintf("opcode 0x%02x", uint8(o))
}

// Errors of the PDU framing layer. A connection that produces one of them is
// closed: at ErrorRecoveryLevel 0 there is no way to resynchronise a stream.
var (
	// ErrDataSegmentTooLong is returned when a PDU announces a data segment
	// larger than the receiver declared in MaxRecvDataSegmentLength.
	ErrDataSegmentTooLong = errors.New("iscsi: data segment longer than declared MaxRecvDataSegmentLength")
	// ErrProtocol is wrapped by every other protocol violation of the peer.
	ErrProtocol = errors.New("iscsi: protocol error")
)

// header is a raw Basic Header Segment. Bytes 0-7 have the same layout in
// every PDU (see the package documentation); the rest depends on the opcode
// and is read and written by the typed PDU structs below.
type header [bhsLen]byte

func (h *header) opcode() opcode  { return opcode(h[0] & 0x3f) }
func (h *header) immediate() bool { return h[0]&0x40 != 0 }
func (h *header) final() bool     { return h[1]&0x80 != 0 }
func (h *header) ahsLength() int  { return int(h[4]) * 4 }
func (h *header) dataLength() int { return int(h[5])<<16 | int(h[6])<<8 | int(h[7]) }
func (h *header) itt() uint32     { return be32(h[16:]) }

// setDataLength writes the 24-bit DataSegmentLength; n must be below 2^24.
func (h *header) setDataLength(n int) {
	h[5] = byte(n >> 16)
	h[6] = byte(n >> 8)
	h[7] = byte(n)
}

// setOpcode writes byte 0: the opcode and the immediate bit.
func (h *header) setOpcode(op opcode, immediate bool) {
	h[0] = byte(op) & 0x3f
	if immediate {
		h[0] |= 0x40
	}
}

// setSN writes the three sequence numbers every target PDU carries at the
// same offsets.
func (h *header) setSN(statSN, expCmdSN, maxCmdSN uint32) {
	put32(h[24:], statSN)
	put32(h[28:], expCmdSN)
	put32(h[32:], maxCmdSN)
}

// padLen is the number of zero bytes that follow a data segment of n bytes.
func padLen(n int) int { return (4 - n&3) & 3 }

var zeroPad [4]byte

func be16(b []byte) uint16     { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32     { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64     { return binary.BigEndian.Uint64(b) }
func put16(b []byte, v uint16) { binary.BigEndian.PutUint16(b, v) }
func put32(b []byte, v uint32) { binary.BigEndian.PutUint32(b, v) }
func put64(b []byte, v uint64) { binary.BigEndian.PutUint64(b, v) }

func flag(b byte, mask byte) bool { return b&mask != 0 }

func setFlag(b *byte, mask byte, on bool) {
	if on {
		*b |= mask
	}
}

// readHeader reads one BHS and its AHS from r. The AHS is returned in ahs,
// which must have room for maxAHSLen bytes. The data segment is left unread;
// its length is checked against maxData before the caller reads it, so no
// buffer is ever sized from an unchecked length.
func readHeader(r io.Reader, h *header, ahs []byte, maxData int) (ahsOut []byte, dataLen int, err error) {
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, 0, err
	}
	dataLen = h.dataLength()
	if dataLen > maxData {
		return nil, 0, fmt.Errorf("%w: %s with %d bytes, limit %d", ErrDataSegmentTooLong, h.opcode(), dataLen, maxData)
	}
	n := h.ahsLength()
	if n > 0 {
		ahs = ahs[:n]
		if _, err := io.ReadFull(r, ahs); err != nil {
			return nil, 0, err
		}
		return ahs, dataLen, nil
	}
	return nil, dataLen, nil
}

// readData reads a data segment of len(p) bytes and its padding.
func readData(r io.Reader, p []byte) error {
	if _, err := io.ReadFull(r, p); err != nil {
		return err
	}
	if pad := padLen(len(p)); pad > 0 {
		var b [4]byte
		if _, err := io.ReadFull(r, b[:pad]); err != nil {
			return err
		}
	}
	return nil
}

// readDataInto reads the first len(p) bytes of a data segment of n bytes
// into p and skips the rest and the padding.
func readDataInto(r io.Reader, p []byte, n int) error {
	if _, err := io.ReadFull(r, p); err != nil {
		return err
	}
	rest := int64(n - len(p) + padLen(n))
	if rest == 0 {
		return nil
	}
	m, err := io.CopyN(io.Discard, r, rest)
	if err == nil && m != rest {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// cdbFromAHS returns the full CDB of a SCSI Command: the 16 bytes of the BHS
// followed by an Extended CDB AHS when one is present.
//
//	AHS: | AHSLength (2) | AHSType (1) | specific (1) | data (AHSLength-1 bytes, padded) |
//
// AHSType 1 is the Extended CDB (bytes 16.. of the CDB), type 2 the
// Expected Bidirectional Read Data Length. Other types are a protocol error.
func cdbFromAHS(bhsCDB []byte, ahs []byte) ([]byte, error) {
	cdb := bhsCDB
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return nil, fmt.Errorf("%w: truncated AHS", ErrProtocol)
		}
		l := int(be16(ahs))
		typ := ahs[2]
		if l == 0 {
			return nil, fmt.Errorf("%w: zero AHS length", ErrProtocol)
		}
		// AHSLength counts the bytes after the type byte, including the
		// reserved byte; the AHS is padded to 4 bytes.
		body := l - 1
		total := 3 + l + padLen(3+l)
		if total > len(ahs) {
			return nil, fmt.Errorf("%w: AHS length %d beyond header", ErrProtocol, l)
		}
		switch typ {
		case 1:
			ext := ahs[4 : 4+body]
			full := make([]byte, 0, len(bhsCDB)+len(ext))
			full = append(full, bhsCDB...)
			cdb = append(full, ext...)
		case 2:
			// Bidirectional read length: bidirectional commands are not
			// supported; the command itself is rejected by the SCSI layer.
		default:
			return nil, fmt.Errorf("%w: unknown AHS type %d", ErrProtocol, typ)
		}
		ahs = ahs[total:]
	}
	return cdb, nil
}

// lunToWire encodes a LUN below 16384 in the SAM-2 single-level format:
// peripheral addressing below 256, flat space addressing above.
func lunToWire(lun uint16) uint64 {
	if lun < 256 {
		return uint64(lun) << 48
	}
	return (uint64(0x40|lun>>8)<<8 | uint64(lun&0xff)) << 48
}

// lunFromWire decodes the 8-byte LUN field. ok is false for addressing
// methods or multi-level LUNs this target never hands out.
func lunFromWire(v uint64) (lun uint16, ok bool) {
	if v&0x0000ffffffffffff != 0 {
		return 0, false
	}
	b0, b1 := byte(v>>56), byte(v>>48)
	switch b0 >> 6 {
	case 0: // peripheral device addressing, bus 0 only
		if b0 != 0 {
			return 0, false
		}
		return uint16(b1), true
	case 1: // flat space addressing
		return uint16(b0&0x3f)<<8 | uint16(b1), true
	}
	return 0, false
}

// scsiCommand is the SCSI Command PDU (opcode 0x01).
type scsiCommand struct {
	Immediate bool
	Final     bool // no unsolicited Data-Out PDUs follow
	Read      bool
	Write     bool
	Attr      uint8 // task attribute, 3 bits
	LUN       uint64
	ITT       uint32
	EDTL      uint32 // Expected Data Transfer Length
	CmdSN     uint32
	ExpStatSN uint32
	CDB       [16]byte
}

func (p *scsiCommand) marshal(h *header) {
	h.setOpcode(opSCSICommand, p.Immediate)
	h[1] = p.Attr & 0x07
	setFlag(&h[1], 0x80, p.Final)
	setFlag(&h[1], 0x40, p.Read)
	setFlag(&h[1], 0x20, p.Write)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.EDTL)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
	copy(h[32:48], p.CDB[:])
}

func (p *scsiCommand) unmarshal(h *header) {
	p.Immediate = h.immediate()
	p.Final = flag(h[1], 0x80)
	p.Read = flag(h[1], 0x40)
	p.Write = flag(h[1], 0x20)
	p.Attr = h[1] & 0x07
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.EDTL = be32(h[20:])
	p.CmdSN = be32(h[24:])
	p.ExpStatSN = be32(h[28:])
	copy(p.CDB[:], h[32:48])
}

// scsiResponse is the SCSI Response PDU (opcode 0x21).
type scsiResponse struct {
	BidiOverflow  bool
	BidiUnderflow bool
	Overflow      bool
	Underflow     bool
	Response      uint8 // 0: command completed at target
	Status        uint8 // SCSI status
	ITT           uint32
	SNACKTag      uint32
	StatSN        uint32
	ExpCmdSN      uint32
	MaxCmdSN      uint32
	ExpDataSN     uint32
	BidiResidual  uint32
	Residual      uint32
}

func (p *scsiResponse) marshal(h *header) {
	h.setOpcode(opSCSIResponse, false)
	h[1] = 0x80
	setFlag(&h[1], 0x10, p.BidiOverflow)
	setFlag(&h[1], 0x08, p.BidiUnderflow)
	setFlag(&h[1], 0x04, p.Overflow)
	setFlag(&h[1], 0x02, p.Underflow)
	h[2] = p.Response
	h[3] = p.Status
	put32(h[16:], p.ITT)
	put32(h[20:], p.SNACKTag)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.ExpDataSN)
	put32(h[40:], p.BidiResidual)
	put32(h[44:], p.Residual)
}

func (p *scsiResponse) unmarshal(h *header) {
	p.BidiOverflow = flag(h[1], 0x10)
	p.BidiUnderflow = flag(h[1], 0x08)
	p.Overflow = flag(h[1], 0x04)
	p.Underflow = flag(h[1], 0x02)
	p.Response = h[2]
	p.Status = h[3]
	p.ITT = be32(h[16:])
	p.SNACKTag = be32(h[20:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
	p.ExpDataSN = be32(h[36:])
	p.BidiResidual = be32(h[40:])
	p.Residual = be32(h[44:])
}

// dataIn is the SCSI Data-In PDU (opcode 0x25).
type dataIn struct {
	Final        bool
	Ack          bool
	Overflow     bool
	Underflow    bool
	HasStatus    bool // S bit: Status, StatSN and Residual are valid
	Status       uint8
	LUN          uint64
	ITT          uint32
	TTT          uint32
	StatSN       uint32
	ExpCmdSN     uint32
	MaxCmdSN     uint32
	DataSN       uint32
	BufferOffset uint32
	Residual     uint32
}

func (p *dataIn) marshal(h *header) {
	h.setOpcode(opDataIn, false)
	setFlag(&h[1], 0x80, p.Final)
	setFlag(&h[1], 0x40, p.Ack)
	setFlag(&h[1], 0x04, p.Overflow)
	setFlag(&h[1], 0x02, p.Underflow)
	setFlag(&h[1], 0x01, p.HasStatus)
	h[3] = p.Status
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.DataSN)
	put32(h[40:], p.BufferOffset)
	put32(h[44:], p.Residual)
}

func (p *dataIn) unmarshal(h *header) {
	p.Final = flag(h[1], 0x80)
	p.Ack = flag(h[1], 0x40)
	p.Overflow = flag(h[1], 0x04)
	p.Underflow = flag(h[1], 0x02)
	p.HasStatus = flag(h[1], 0x01)
	p.Status = h[3]
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
	p.DataSN = be32(h[36:])
	p.BufferOffset = be32(h[40:])
	p.Residual = be32(h[44:])
}

// dataOut is the SCSI Data-Out PDU (opcode 0x05).
type dataOut struct {
	Final        bool
	LUN          uint64
	ITT          uint32
	TTT          uint32
	ExpStatSN    uint32
	DataSN       uint32
	BufferOffset uint32
}

func (p *dataOut) marshal(h *header) {
	h.setOpcode(opDataOut, false)
	setFlag(&h[1], 0x80, p.Final)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[28:], p.ExpStatSN)
	put32(h[36:], p.DataSN)
	put32(h[40:], p.BufferOffset)
}

func (p *dataOut) unmarshal(h *header) {
	p.Final = h.final()
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.ExpStatSN = be32(h[28:])
	p.DataSN = be32(h[36:])
	p.BufferOffset = be32(h[40:])
}

// r2t is the Ready To Transfer PDU (opcode 0x31).
type r2t struct {
	LUN           uint64
	ITT           uint32
	TTT           uint32
	StatSN        uint32
	ExpCmdSN      uint32
	MaxCmdSN      uint32
	R2TSN         uint32
	BufferOffset  uint32
	DesiredLength uint32
}

func (p *r2t) marshal(h *header) {
	h.setOpcode(opR2T, false)
	h[1] = 0x80
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.R2TSN)
	put32(h[40:], p.BufferOffset)
	put32(h[44:], p.DesiredLength)
}

func (p *r2t) unmarshal(h *header) {
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
	p.R2TSN = be32(h[36:])
	p.BufferOffset = be32(h[40:])
	p.DesiredLength = be32(h[44:])
}

// nopOut is the NOP-Out PDU (opcode 0x00).
type nopOut struct {
	Immediate bool
	LUN       uint64
	ITT       uint32
	TTT       uint32
	CmdSN     uint32
	ExpStatSN uint32
}

func (p *nopOut) marshal(h *header) {
	h.setOpcode(opNOPOut, p.Immediate)
	h[1] = 0x80
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

func (p *nopOut) unmarshal(h *header) {
	p.Immediate = h.immediate()
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.CmdSN = be32(h[24:])
	p.ExpStatSN = be32(h[28:])
}

// nopIn is the NOP-In PDU (opcode 0x20).
type nopIn struct {
	LUN      uint64
	ITT      uint32
	TTT      uint32
	StatSN   uint32
	ExpCmdSN uint32
	MaxCmdSN uint32
}

func (p *nopIn) marshal(h *header) {
	h.setOpcode(opNOPIn, false)
	h[1] = 0x80
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
}

func (p *nopIn) unmarshal(h *header) {
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
}

// Task management functions (byte 1 of the request, low 7 bits).
const (
	tmfAbortTask        = 1
	tmfAbortTaskSet     = 2
	tmfClearACA         = 3
	tmfClearTaskSet     = 4
	tmfLUNReset         = 5
	tmfTargetWarmReset  = 6
	tmfTargetColdReset  = 7
	tmfTaskReassign     = 8
	tmfRespComplete     = 0
	tmfRespNoTask       = 1
	tmfRespNoLUN        = 2
	tmfRespNotSupported = 5
	tmfRespRejected     = 255
)

// taskMgmtRequest is the Task Management Function Request PDU (opcode 0x02).
type taskMgmtRequest struct {
	Immediate  bool
	Function   uint8
	LUN        uint64
	ITT        uint32
	RefTaskTag uint32
	CmdSN      uint32
	ExpStatSN  uint32
	RefCmdSN   uint32
	ExpDataSN  uint32
}

func (p *taskMgmtRequest) marshal(h *header) {
	h.setOpcode(opTaskMgmt, p.Immediate)
	h[1] = 0x80 | p.Function&0x7f
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.RefTaskTag)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
	put32(h[32:], p.RefCmdSN)
	put32(h[36:], p.ExpDataSN)
}

func (p *taskMgmtRequest) unmarshal(h *header) {
	p.Immediate = h.immediate()
	p.Function = h[1] & 0x7f
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.RefTaskTag = be32(h[20:])
	p.CmdSN = be32(h[24:])
	p.ExpStatSN = be32(h[28:])
	p.RefCmdSN = be32(h[32:])
	p.ExpDataSN = be32(h[36:])
}

// taskMgmtResponse is the Task Management Function Response PDU (0x22).
type taskMgmtResponse struct {
	Response uint8
	ITT      uint32
	StatSN   uint32
	ExpCmdSN uint32
	MaxCmdSN uint32
}

func (p *taskMgmtResponse) marshal(h *header) {
	h.setOpcode(opTaskMgmtResp, false)
	h[1] = 0x80
	h[2] = p.Response
	put32(h[16:], p.ITT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
}

func (p *taskMgmtResponse) unmarshal(h *header) {
	p.Response = h[2]
	p.ITT = be32(h[16:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
}

// Login stages (CSG and NSG values).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// loginRequest is the Login Request PDU (opcode 0x03).
type loginRequest struct {
	Transit    bool
	Continue   bool
	CSG        uint8
	NSG        uint8
	VersionMax uint8
	VersionMin uint8
	ISID       [6]byte
	TSIH       uint16
	ITT        uint32
	CID        uint16
	CmdSN      uint32
	ExpStatSN  uint32
}

func (p *loginRequest) marshal(h *header) {
	h.setOpcode(opLoginReq, true)
	h[1] = (p.CSG&3)<<2 | p.NSG&3
	setFlag(&h[1], 0x80, p.Transit)
	setFlag(&h[1], 0x40, p.Continue)
	h[2] = p.VersionMax
	h[3] = p.VersionMin
	copy(h[8:14], p.ISID[:])
	put16(h[14:], p.TSIH)
	put32(h[16:], p.ITT)
	put16(h[20:], p.CID)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

func (p *loginRequest) unmarshal(h *header) {
	p.Transit = flag(h[1], 0x80)
	p.Continue = flag(h[1], 0x40)
	p.CSG = h[1] >> 2 & 3
	p.NSG = h[1] & 3
	p.VersionMax = h[2]
	p.VersionMin = h[3]
	copy(p.ISID[:], h[8:14])
	p.TSIH = be16(h[14:])
	p.ITT = be32(h[16:])
	p.CID = be16(h[20:])
	p.CmdSN = be32(h[24:])
	p.ExpStatSN = be32(h[28:])
}

// loginResponse is the Login Response PDU (opcode 0x23).
type loginResponse struct {
	Transit       bool
	Continue      bool
	CSG           uint8
	NSG           uint8
	VersionMax    uint8
	VersionActive uint8
	ISID          [6]byte
	TSIH          uint16
	ITT           uint32
	StatSN        uint32
	ExpCmdSN      uint32
	MaxCmdSN      uint32
	StatusClass   uint8
	StatusDetail  uint8
}

func (p *loginResponse) marshal(h *header) {
	h.setOpcode(opLoginResp, false)
	h[1] = (p.CSG&3)<<2 | p.NSG&3
	setFlag(&h[1], 0x80, p.Transit)
	setFlag(&h[1], 0x40, p.Continue)
	h[2] = p.VersionMax
	h[3] = p.VersionActive
	copy(h[8:14], p.ISID[:])
	put16(h[14:], p.TSIH)
	put32(h[16:], p.ITT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h[36] = p.StatusClass
	h[37] = p.StatusDetail
}

func (p *loginResponse) unmarshal(h *header) {
	p.Transit = flag(h[1], 0x80)
	p.Continue = flag(h[1], 0x40)
	p.CSG = h[1] >> 2 & 3
	p.NSG = h[1] & 3
	p.VersionMax = h[2]
	p.VersionActive = h[3]
	copy(p.ISID[:], h[8:14])
	p.TSIH = be16(h[14:])
	p.ITT = be32(h[16:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
	p.StatusClass = h[36]
	p.StatusDetail = h[37]
}

// textRequest is the Text Request PDU (opcode 0x04).
type textRequest struct {
	Immediate bool
	Final     bool
	Continue  bool
	LUN       uint64
	ITT       uint32
	TTT       uint32
	CmdSN     uint32
	ExpStatSN uint32
}

func (p *textRequest) marshal(h *header) {
	h.setOpcode(opTextReq, p.Immediate)
	setFlag(&h[1], 0x80, p.Final)
	setFlag(&h[1], 0x40, p.Continue)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

func (p *textRequest) unmarshal(h *header) {
	p.Immediate = h.immediate()
	p.Final = flag(h[1], 0x80)
	p.Continue = flag(h[1], 0x40)
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.CmdSN = be32(h[24:])
	p.ExpStatSN = be32(h[28:])
}

// textResponse is the Text Response PDU (opcode 0x24).
type textResponse struct {
	Final    bool
	Continue bool
	LUN      uint64
	ITT      uint32
	TTT      uint32
	StatSN   uint32
	ExpCmdSN uint32
	MaxCmdSN uint32
}

func (p *textResponse) marshal(h *header) {
	h.setOpcode(opTextResp, false)
	setFlag(&h[1], 0x80, p.Final)
	setFlag(&h[1], 0x40, p.Continue)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
}

func (p *textResponse) unmarshal(h *header) {
	p.Final = flag(h[1], 0x80)
	p.Continue = flag(h[1], 0x40)
	p.LUN = be64(h[8:])
	p.ITT = be32(h[16:])
	p.TTT = be32(h[20:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
}

// Logout reasons and responses.
const (
	logoutCloseSession    = 0
	logoutCloseConnection = 1
	logoutRemoveForRecov  = 2
	logoutRespOK          = 0
	logoutRespNoCID       = 1
	logoutRespNoRecovery  = 2
)

// logoutRequest is the Logout Request PDU (opcode 0x06).
type logoutRequest struct {
	Immediate bool
	Reason    uint8
	ITT       uint32
	CID       uint16
	CmdSN     uint32
	ExpStatSN uint32
}

func (p *logoutRequest) marshal(h *header) {
	h.setOpcode(opLogoutReq, p.Immediate)
	h[1] = 0x80 | p.Reason&0x7f
	put32(h[16:], p.ITT)
	put16(h[20:], p.CID)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}

func (p *logoutRequest) unmarshal(h *header) {
	p.Immediate = h.immediate()
	p.Reason = h[1] & 0x7f
	p.ITT = be32(h[16:])
	p.CID = be16(h[20:])
	p.CmdSN = be32(h[24:])
	p.ExpStatSN = be32(h[28:])
}

// logoutResponse is the Logout Response PDU (opcode 0x26).
type logoutResponse struct {
	Response    uint8
	ITT         uint32
	StatSN      uint32
	ExpCmdSN    uint32
	MaxCmdSN    uint32
	Time2Wait   uint16
	Time2Retain uint16
}

func (p *logoutResponse) marshal(h *header) {
	h.setOpcode(opLogoutResp, false)
	h[1] = 0x80
	h[2] = p.Response
	put32(h[16:], p.ITT)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put16(h[40:], p.Time2Wait)
	put16(h[42:], p.Time2Retain)
}

func (p *logoutResponse) unmarshal(h *header) {
	p.Response = h[2]
	p.ITT = be32(h[16:])
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
	p.Time2Wait = be16(h[40:])
	p.Time2Retain = be16(h[42:])
}

// Reject reasons.
const (
	rejectDataDigest      = 0x02
	rejectCmdNotSupported = 0x05
	rejectImmediateFull   = 0x06
	rejectTaskInProgress  = 0x07
	rejectInvalidPDUField = 0x09
	rejectProtocolError   = 0x04
	rejectWaitingLogout   = 0x0c
)

// rejectPDU is the Reject PDU (opcode 0x3f). Its data segment is the header
// of the rejected PDU.
type rejectPDU struct {
	Reason   uint8
	StatSN   uint32
	ExpCmdSN uint32
	MaxCmdSN uint32
	DataSN   uint32
}

func (p *rejectPDU) marshal(h *header) {
	h.setOpcode(opReject, false)
	h[1] = 0x80
	h[2] = p.Reason
	put32(h[16:], reservedTag)
	h.setSN(p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.DataSN)
}

func (p *rejectPDU) unmarshal(h *header) {
	p.Reason = h[2]
	p.StatSN = be32(h[24:])
	p.ExpCmdSN = be32(h[28:])
	p.MaxCmdSN = be32(h[32:])
	p.DataSN = be32(h[36:])
}

// decodedPDU is what decodePDU makes of one PDU in a byte slice.
type decodedPDU struct {
	op   opcode
	msg  any    // pointer to one of the typed PDU structs, nil for unknown opcodes
	cdb  []byte // SCSI Command only: CDB including the Extended CDB AHS
	data []byte // data segment without padding
}

// decodePDU decodes the first PDU in b. It is the whole decoder in one
// function (framing, AHS, typed BHS), used by tests and fuzzing; the
// connection code uses the same pieces on a stream.
func decodePDU(b []byte, maxData int) (d decodedPDU, rest []byte, err error) {
	if len(b) < bhsLen {
		return d, b, io.ErrUnexpectedEOF
	}
	var h header
	copy(h[:], b)
	b = b[bhsLen:]
	dataLen := h.dataLength()
	if dataLen > maxData {
		return d, b, fmt.Errorf("%w: %d > %d", ErrDataSegmentTooLong, dataLen, maxData)
	}
	ahsLen := h.ahsLength()
	if len(b) < ahsLen {
		return d, b, io.ErrUnexpectedEOF
	}
	ahs := b[:ahsLen]
	b = b[ahsLen:]
	total := dataLen + padLen(dataLen)
	if len(b) < total {
		return d, b, io.ErrUnexpectedEOF
	}
	d.data = b[:dataLen]
	rest = b[total:]
	d.op = h.opcode()
	switch d.op {
	case opSCSICommand:
		var m scsiCommand
		m.unmarshal(&h)
		d.cdb, err = cdbFromAHS(m.CDB[:], ahs)
		d.msg = &m
	case opDataOut:
		var m dataOut
		m.unmarshal(&h)
		d.msg = &m
	case opNOPOut:
		var m nopOut
		m.unmarshal(&h)
		d.msg = &m
	case opTaskMgmt:
		var m taskMgmtRequest
		m.unmarshal(&h)
		d.msg = &m
	case opLoginReq:
		var m loginRequest
		m.unmarshal(&h)
		d.msg = &m
	case opTextReq:
		var m textRequest
		m.unmarshal(&h)
		d.msg = &m
	case opLogoutReq:
		var m logoutRequest
		m.unmarshal(&h)
		d.msg = &m
	case opSCSIResponse:
		var m scsiResponse
		m.unmarshal(&h)
		d.msg = &m
	case opDataIn:
		var m dataIn
		m.unmarshal(&h)
		d.msg = &m
	case opR2T:
		var m r2t
		m.unmarshal(&h)
		d.msg = &m
	case opNOPIn:
		var m nopIn
		m.unmarshal(&h)
		d.msg = &m
	case opTaskMgmtResp:
		var m taskMgmtResponse
		m.unmarshal(&h)
		d.msg = &m
	case opLoginResp:
		var m loginResponse
		m.unmarshal(&h)
		d.msg = &m
	case opTextResp:
		var m textResponse
		m.unmarshal(&h)
		d.msg = &m
	case opLogoutResp:
		var m logoutResponse
		m.unmarshal(&h)
		d.msg = &m
	case opReject:
		var m rejectPDU
		m.unmarshal(&h)
		d.msg = &m
	}
	return d, rest, err
}
