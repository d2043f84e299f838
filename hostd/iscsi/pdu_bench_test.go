package iscsi

import "testing"

// BenchmarkPDUCodec encodes a SCSI Command BHS and decodes a 4 KiB Data-Out
// PDU: the per-PDU work of the hot path.
func BenchmarkPDUCodec(b *testing.B) {
	var h header
	(&scsiCommand{ITT: 7, CmdSN: 9, ExpStatSN: 3}).marshal(&h)
	wire := make([]byte, bhsLen+4096)
	var dh header
	(&dataOut{ITT: 7, DataSN: 1, BufferOffset: 4096}).marshal(&dh)
	dh.setDataLength(4096)
	copy(wire, dh[:])
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		var c scsiCommand
		c.unmarshal(&h)
		d, _, err := decodePDU(wire, 1<<20)
		if err != nil || d.op != opDataOut {
			b.Fatal(err)
		}
	}
}
