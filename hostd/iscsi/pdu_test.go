package iscsi

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// pduMessage is implemented by every typed PDU struct.
type pduMessage interface {
	marshal(h *header)
	unmarshal(h *header)
}

func TestPDURoundTrip(t *testing.T) {
	cdb := [16]byte{0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf}
	tests := []struct {
		op  opcode
		msg pduMessage
	}{
		{opSCSICommand, &scsiCommand{Immediate: true, Final: true, Read: true, Write: false, Attr: 5, LUN: 0x0001000000000000, ITT: 0x11223344, EDTL: 65536, CmdSN: 0xfffffffe, ExpStatSN: 7, CDB: cdb}},
		{opSCSIResponse, &scsiResponse{BidiOverflow: true, Underflow: true, Response: 1, Status: 2, ITT: 9, SNACKTag: 10, StatSN: 11, ExpCmdSN: 12, MaxCmdSN: 13, ExpDataSN: 14, BidiResidual: 15, Residual: 16}},
		{opDataIn, &dataIn{Final: true, Ack: true, Overflow: true, HasStatus: true, Status: 0x28, LUN: 1 << 48, ITT: 2, TTT: 3, StatSN: 4, ExpCmdSN: 5, MaxCmdSN: 6, DataSN: 7, BufferOffset: 8, Residual: 9}},
		{opDataOut, &dataOut{Final: true, LUN: 1 << 48, ITT: 2, TTT: 3, ExpStatSN: 4, DataSN: 5, BufferOffset: 6}},
		{opR2T, &r2t{LUN: 1 << 48, ITT: 2, TTT: 3, StatSN: 4, ExpCmdSN: 5, MaxCmdSN: 6, R2TSN: 7, BufferOffset: 8, DesiredLength: 9}},
		{opNOPOut, &nopOut{Immediate: true, LUN: 1 << 48, ITT: 2, TTT: 3, CmdSN: 4, ExpStatSN: 5}},
		{opNOPIn, &nopIn{LUN: 1 << 48, ITT: 2, TTT: 3, StatSN: 4, ExpCmdSN: 5, MaxCmdSN: 6}},
		{opTaskMgmt, &taskMgmtRequest{Immediate: true, Function: tmfLUNReset, LUN: 1 << 48, ITT: 2, RefTaskTag: 3, CmdSN: 4, ExpStatSN: 5, RefCmdSN: 6, ExpDataSN: 7}},
		{opTaskMgmtResp, &taskMgmtResponse{Response: tmfRespNoTask, ITT: 2, StatSN: 3, ExpCmdSN: 4, MaxCmdSN: 5}},
		{opLoginReq, &loginRequest{Transit: true, CSG: 1, NSG: 3, VersionMax: 0, VersionMin: 0, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, TSIH: 0x1234, ITT: 6, CID: 7, CmdSN: 8, ExpStatSN: 9}},
		{opLoginResp, &loginResponse{Continue: true, CSG: 0, NSG: 1, VersionActive: 0, ISID: [6]byte{1, 2, 3, 4, 5, 6}, TSIH: 7, ITT: 8, StatSN: 9, ExpCmdSN: 10, MaxCmdSN: 11, StatusClass: 2, StatusDetail: 3}},
		{opTextReq, &textRequest{Immediate: true, Continue: true, LUN: 1 << 48, ITT: 2, TTT: 3, CmdSN: 4, ExpStatSN: 5}},
		{opTextResp, &textResponse{Final: true, LUN: 1 << 48, ITT: 2, TTT: 3, StatSN: 4, ExpCmdSN: 5, MaxCmdSN: 6}},
		{opLogoutReq, &logoutRequest{Immediate: true, Reason: logoutCloseConnection, ITT: 2, CID: 3, CmdSN: 4, ExpStatSN: 5}},
		{opLogoutResp, &logoutResponse{Response: logoutRespNoCID, ITT: 2, StatSN: 3, ExpCmdSN: 4, MaxCmdSN: 5, Time2Wait: 6, Time2Retain: 7}},
		{opReject, &rejectPDU{Reason: rejectProtocolError, StatSN: 2, ExpCmdSN: 3, MaxCmdSN: 4, DataSN: 5}},
	}
	for _, tc := range tests {
		t.Run(tc.op.String(), func(t *testing.T) {
			var h header
			tc.msg.marshal(&h)
			if h.opcode() != tc.op {
				t.Fatalf("marshal wrote opcode %s", h.opcode())
			}
			got := reflect.New(reflect.TypeOf(tc.msg).Elem()).Interface().(pduMessage)
			got.unmarshal(&h)
			// Immediate lives in byte 0; unmarshal of types without it
			// leaves it false, as does marshal.
			if !reflect.DeepEqual(got, tc.msg) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, tc.msg)
			}
			// The full decoder gives the same message, with data intact.
			data := []byte("hello")
			h.setDataLength(len(data))
			wire := append(append(h[:], data...), 0, 0, 0)
			d, rest, err := decodePDU(wire, 8192)
			if err != nil || len(rest) != 0 || d.op != tc.op || !bytes.Equal(d.data, data) {
				t.Fatalf("decodePDU: %v rest %d op %s data %q", err, len(rest), d.op, d.data)
			}
			if !reflect.DeepEqual(d.msg, tc.msg) {
				t.Fatalf("decodePDU message:\n got %+v\nwant %+v", d.msg, tc.msg)
			}
		})
	}
}

func TestDecodePDUBounds(t *testing.T) {
	var h header
	(&nopOut{ITT: 1}).marshal(&h)
	h.setDataLength(9000)
	if _, _, err := decodePDU(append(h[:], make([]byte, 9000)...), 8192); !errors.Is(err, ErrDataSegmentTooLong) {
		t.Errorf("oversized data segment: %v", err)
	}
	h.setDataLength(10)
	if _, _, err := decodePDU(append(h[:], make([]byte, 10)...), 8192); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("missing padding: %v", err)
	}
	if _, _, err := decodePDU(h[:20], 8192); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short header: %v", err)
	}
	// readHeader refuses the length before any data is read.
	h.setDataLength(1 << 20)
	r := bytes.NewReader(h[:])
	var hh header
	if _, _, err := readHeader(r, &hh, make([]byte, maxAHSLen), 8192); !errors.Is(err, ErrDataSegmentTooLong) {
		t.Errorf("readHeader: %v", err)
	}
}

func TestPadLen(t *testing.T) {
	for n, want := range map[int]int{0: 0, 1: 3, 2: 2, 3: 1, 4: 0, 5: 3, 48: 0, 8191: 1} {
		if got := padLen(n); got != want {
			t.Errorf("padLen(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestExtendedCDB(t *testing.T) {
	base := bytes.Repeat([]byte{1}, 16)
	tests := []struct {
		name string
		ahs  []byte
		want int // CDB length, -1 for an error
	}{
		{"none", nil, 16},
		{"32-byte CDB", append([]byte{0, 17, 1, 0}, bytes.Repeat([]byte{2}, 16)...), 32},
		{"20-byte CDB padded", append([]byte{0, 5, 1, 0}, 3, 3, 3, 3), 20},
		{"bidi length", []byte{0, 5, 2, 0, 0, 0, 2, 0}, 16},
		{"unknown type", []byte{0, 5, 9, 0, 0, 0, 0, 0}, -1},
		{"length beyond", []byte{0, 200, 1, 0}, -1},
		{"zero length", []byte{0, 0, 1, 0}, -1},
		{"truncated", []byte{0, 1}, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cdb, err := cdbFromAHS(base, tc.ahs)
			if tc.want < 0 {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("err = %v, want ErrProtocol", err)
				}
				return
			}
			if err != nil || len(cdb) != tc.want {
				t.Fatalf("cdb len %d err %v, want %d", len(cdb), err, tc.want)
			}
		})
	}
}

func TestLUNEncoding(t *testing.T) {
	for _, lun := range []uint16{0, 1, 255, 256, 1000, 16383} {
		got, ok := lunFromWire(lunToWire(lun))
		if !ok || got != lun {
			t.Errorf("LUN %d round trip: %d %v", lun, got, ok)
		}
	}
	for _, raw := range []uint64{0x0101000000000000, 0x8000000000000000, 0x0000000000000001, 0xc000000000000000} {
		if _, ok := lunFromWire(raw); ok {
			t.Errorf("lunFromWire(%#x) accepted an address this target never uses", raw)
		}
	}
}
