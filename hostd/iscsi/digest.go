package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Digests (RFC 7143 11.1 and 13.1). When HeaderDigest=CRC32C is in force,
// a 4-byte CRC32C of the BHS and AHS follows the AHS; when
// DataDigest=CRC32C is, a 4-byte CRC32C of the data segment and its
// padding follows the padding, on PDUs whose data segment is not empty:
//
//	| BHS (48) | AHS | header digest (4) | data | pad | data digest (4) |
//
// CRC32C is the Castagnoli polynomial 0x1EDC6F41 in its reflected form,
// initial value and final XOR 0xFFFFFFFF (RFC 7143 Appendix B, RFC 3385):
// hash/crc32 with the Castagnoli table computes it, with SSE4.2 on amd64.
// The digest is sent least significant byte first: the RFC's example of
// 32 zero bytes has the CRC 0x8A9136AA and shows it as aa 36 91 8a, and
// libiscsi writes and checks it that way. Digests are negotiated in the
// login and apply from the first PDU after the final Login Response, in
// both directions.

// castagnoli is the CRC32C table. It is computed once: the table is
// read-only after MakeTable, so sharing it is safe.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Digest errors of received PDUs. A header digest error closes the
// connection: the header, and so the length of what follows, cannot be
// trusted. A data digest error is reported after the whole PDU, digest
// included, has been consumed, so the stream stays in step and the caller
// can answer it with a Reject.
var (
	ErrHeaderDigest = errors.New("iscsi: header digest error")
	ErrDataDigest   = errors.New("iscsi: data digest error")
)

// digests says which digests are in force on a connection.
type digests struct {
	header bool
	data   bool
}

// headerSum returns the header digest of a BHS and its AHS.
func headerSum(h *header, ahs []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, h[:]), castagnoli, ahs)
}

// dataSum returns the data digest of a data segment, padding included.
func dataSum(data []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, data), castagnoli, zeroPad[:padLen(len(data))])
}

func putDigest(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }

// readDigest reads a 4-byte digest. Peek and Discard keep the bytes in
// the reader's buffer, so no PDU costs an allocation.
func readDigest(br *bufio.Reader) (uint32, error) {
	b, err := br.Peek(4)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, err
	}
	v := binary.LittleEndian.Uint32(b)
	_, _ = br.Discard(4)
	return v, nil
}

// readHeader reads one BHS, its AHS and, when header digests are on, the
// header digest, which it checks before anything else of the header is
// believed. The data segment is left unread; its length is checked
// against maxData.
func (d digests) readHeader(br *bufio.Reader, h *header, ahs []byte, maxData int) (ahsOut []byte, dataLen int, err error) {
	if !d.header {
		return readHeader(br, h, ahs, maxData)
	}
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, 0, err
	}
	if n := h.ahsLength(); n > 0 {
		ahsOut = ahs[:n]
		if _, err := io.ReadFull(br, ahsOut); err != nil {
			return nil, 0, err
		}
	}
	got, err := readDigest(br)
	if err != nil {
		return nil, 0, err
	}
	if want := headerSum(h, ahsOut); got != want {
		return nil, 0, fmt.Errorf("%w: %s with ITT 0x%08x: computed 0x%08x, received 0x%08x", ErrHeaderDigest, h.opcode(), h.itt(), want, got)
	}
	dataLen = h.dataLength()
	if dataLen > maxData {
		return nil, 0, fmt.Errorf("%w: %s with %d bytes, limit %d", ErrDataSegmentTooLong, h.opcode(), dataLen, maxData)
	}
	return ahsOut, dataLen, nil
}

// readData reads a data segment of n bytes, its padding and, when data
// digests are on and n > 0, its digest. The first len(p) bytes land in p
// (len(p) <= n); the rest is discarded. A digest mismatch is
// ErrDataDigest, returned once the whole PDU has been read.
func (d digests) readData(br *bufio.Reader, p []byte, n int) error {
	if !d.data || n == 0 {
		if len(p) == n {
			return readData(br, p)
		}
		return readDataInto(br, p, n)
	}
	if _, err := io.ReadFull(br, p); err != nil {
		return err
	}
	sum := crc32.Update(0, castagnoli, p)
	sum, err := skipSum(br, n-len(p)+padLen(n), sum)
	if err != nil {
		return err
	}
	got, err := readDigest(br)
	if err != nil {
		return err
	}
	if got != sum {
		return fmt.Errorf("%w: computed 0x%08x, received 0x%08x", ErrDataDigest, sum, got)
	}
	return nil
}

// skipSum discards n bytes from br, folding them into the CRC32C sum.
func skipSum(br *bufio.Reader, n int, sum uint32) (uint32, error) {
	for n > 0 {
		b, err := br.Peek(min(n, br.Size()))
		sum = crc32.Update(sum, castagnoli, b)
		_, _ = br.Discard(len(b))
		n -= len(b)
		if err != nil && n > 0 {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return sum, err
		}
	}
	return sum, nil
}

// appendPDU appends the wire form of a PDU with the digests in force: the
// header (its DataSegmentLength set from data), AHS, header digest, data,
// padding and data digest. The writer sends the same bytes with writev;
// this is for tests and the fuzz targets.
func (d digests) appendPDU(b []byte, h *header, ahs, data []byte) []byte {
	h.setDataLength(len(data))
	b = append(b, h[:]...)
	b = append(b, ahs...)
	if d.header {
		b = binary.LittleEndian.AppendUint32(b, headerSum(h, ahs))
	}
	b = append(b, data...)
	b = append(b, zeroPad[:padLen(len(data))]...)
	if d.data && len(data) > 0 {
		b = binary.LittleEndian.AppendUint32(b, dataSum(data))
	}
	return b
}

// decodePDU decodes the first PDU in b as it is on the wire with the
// digests in force, checking them. It is for tests and fuzzing.
func (d digests) decodePDU(b []byte, maxData int) (dec decodedPDU, rest []byte, err error) {
	if !d.header && !d.data {
		return decodePDU(b, maxData)
	}
	if len(b) < bhsLen {
		return dec, b, io.ErrUnexpectedEOF
	}
	var h header
	copy(h[:], b)
	ahsLen := h.ahsLength()
	dataLen := h.dataLength()
	hlen := bhsLen + ahsLen
	if d.header {
		if len(b) < hlen+4 {
			return dec, b, io.ErrUnexpectedEOF
		}
		got := binary.LittleEndian.Uint32(b[hlen:])
		if want := headerSum(&h, b[bhsLen:hlen]); got != want {
			return dec, b, fmt.Errorf("%w: computed 0x%08x, received 0x%08x", ErrHeaderDigest, want, got)
		}
	}
	if dataLen > maxData {
		return dec, b, fmt.Errorf("%w: %d > %d", ErrDataSegmentTooLong, dataLen, maxData)
	}
	total := dataLen + padLen(dataLen)
	dlen := 0
	if d.data && dataLen > 0 {
		dlen = 4
	}
	start := hlen
	if d.header {
		start += 4
	}
	if len(b) < start+total+dlen {
		return dec, b, io.ErrUnexpectedEOF
	}
	if dlen > 0 {
		seg := b[start : start+total]
		got := binary.LittleEndian.Uint32(b[start+total:])
		if want := crc32.Checksum(seg, castagnoli); got != want {
			return dec, b[start+total+dlen:], fmt.Errorf("%w: computed 0x%08x, received 0x%08x", ErrDataDigest, want, got)
		}
	}
	// The same bytes without the digests decode with the plain decoder.
	plain := make([]byte, 0, hlen+total)
	plain = append(plain, b[:hlen]...)
	plain = append(plain, b[start:start+total]...)
	dec, _, err = decodePDU(plain, maxData)
	return dec, b[start+total+dlen:], err
}

// digests returns the digests the negotiated parameters put in force.
func (p *sessionParams) digests() digests {
	return digests{header: p.HeaderDigest, data: p.DataDigest}
}

// digestName is the negotiated value of a digest key: CRC32C or None.
func digestName(on bool) string {
	if on {
		return "CRC32C"
	}
	return "None"
}
