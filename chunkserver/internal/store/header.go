// Package store keeps a chunkserver's chunks on a local disk: each chunk is a
// sparse data file of the cluster's chunk size (thin provisioned) plus a
// sidecar file with a versioned, checksummed header.
//
// Files, in the store directory:
//
//	<id>.chunk   the data, a sparse file of exactly the chunk size
//	<id>.meta    the sidecar header below
//
// Sidecar header, version 1, 128 bytes, little-endian:
//
//	 0       8      10      12      14      16              24              32
//	 +-------+-------+-------+-------+-------+---------------+---------------+
//	 | magic "CRCHUNK\x00"   | ver=1 | hlen  | idlen | rsvd  |  size (u64)   |
//	 +-----------------------+-------+-------+-------+-------+---------------+
//	32              40              48                                     112
//	 +---------------+---------------+-----------------------------------------+
//	 | epoch (u64)   | created (u64, |  id (idlen bytes, zero padded to 64)    |
//	 |               | unix nanos)   |                                         |
//	 +---------------+---------------+-----------------------------------------+
//	112                             124     128
//	 +-------------------------------+-------+
//	 | reserved (zero)               | crc32c|  CRC32C (Castagnoli) of bytes 0..124
//	 +-------------------------------+-------+
//
// A sidecar is replaced atomically: written to <id>.meta.tmp, fsynced,
// renamed over <id>.meta, and the directory fsynced. A header with a bad magic,
// an unknown version, a length that does not fit or a wrong checksum is
// refused with ErrCorruptHeader; the chunk is then not served.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

const (
	headerMagic   = "CRCHUNK\x00"
	headerVersion = 1
	headerLen     = 128
	maxIDLen      = 64
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptHeader is returned for a sidecar header that fails validation.
var ErrCorruptHeader = errors.New("store: corrupt chunk header")

// Header is the decoded sidecar of a chunk.
type Header struct {
	ID      string
	Size    int64
	Epoch   uint64
	Created int64 // unix nanoseconds
}

// MarshalBinary encodes h as a version-1 sidecar.
func (h Header) MarshalBinary() ([]byte, error) {
	if len(h.ID) == 0 || len(h.ID) > maxIDLen {
		return nil, fmt.Errorf("store: chunk id length %d, want 1..%d", len(h.ID), maxIDLen)
	}
	if h.Size <= 0 {
		return nil, fmt.Errorf("store: chunk size %d must be positive", h.Size)
	}
	b := make([]byte, headerLen)
	copy(b[0:8], headerMagic)
	binary.LittleEndian.PutUint16(b[8:], headerVersion)
	binary.LittleEndian.PutUint16(b[10:], headerLen)
	binary.LittleEndian.PutUint16(b[12:], uint16(len(h.ID)))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.Size))
	binary.LittleEndian.PutUint64(b[32:], h.Epoch)
	binary.LittleEndian.PutUint64(b[40:], uint64(h.Created))
	copy(b[48:112], h.ID)
	binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	return b, nil
}

// UnmarshalBinary decodes and validates a sidecar.
func (h *Header) UnmarshalBinary(b []byte) error {
	if len(b) != headerLen {
		return fmt.Errorf("%w: length %d, want %d", ErrCorruptHeader, len(b), headerLen)
	}
	if string(b[0:8]) != headerMagic {
		return fmt.Errorf("%w: bad magic %q", ErrCorruptHeader, b[0:8])
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != headerVersion {
		return fmt.Errorf("%w: unknown version %d", ErrCorruptHeader, v)
	}
	if l := binary.LittleEndian.Uint16(b[10:]); l != headerLen {
		return fmt.Errorf("%w: header length %d, want %d", ErrCorruptHeader, l, headerLen)
	}
	if got, want := binary.LittleEndian.Uint32(b[124:]), crc32.Checksum(b[:124], castagnoli); got != want {
		return fmt.Errorf("%w: checksum %08x, computed %08x", ErrCorruptHeader, got, want)
	}
	idLen := int(binary.LittleEndian.Uint16(b[12:]))
	if idLen == 0 || idLen > maxIDLen {
		return fmt.Errorf("%w: id length %d", ErrCorruptHeader, idLen)
	}
	size := int64(binary.LittleEndian.Uint64(b[16:]))
	if size <= 0 {
		return fmt.Errorf("%w: size %d", ErrCorruptHeader, size)
	}
	*h = Header{
		ID:      string(b[48 : 48+idLen]),
		Size:    size,
		Epoch:   binary.LittleEndian.Uint64(b[32:]),
		Created: int64(binary.LittleEndian.Uint64(b[40:])),
	}
	return nil
}
