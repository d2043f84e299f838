// Package store keeps a chunkserver's chunks on a local disk: each chunk is a
// sparse data file of the cluster's chunk size (thin provisioned) plus a
// sidecar file with a versioned, checksummed header that carries the chunk's
// minimum epoch (fencing, DESIGN §2 rule 2) and its LOG bitmap (REMB).
//
// Files, in the store directory:
//
//	<id>.chunk   the data, a sparse file of exactly the chunk size
//	<id>.meta    the sidecar below
//
// Sidecar, version 2: a 128-byte fixed part, then the LOG state. All
// integers little-endian:
//
//	 0               8       10      12      14      16              24      28      32
//	 +---------------+-------+-------+-------+-------+---------------+-------+-------+
//	 | magic         | ver=2 | hlen  | idlen | flags | size (u64)    |loglen | zero  |
//	 | "CRCHUNK\x00" | (u16) | =128  | (u16) | =0    | chunk bytes   | (u32) | (u32) |
//	 +---------------+-------+-------+-------+-------+---------------+-------+-------+
//	32              40              48                                     112
//	 +---------------+---------------+-----------------------------------------+
//	 | min epoch     | created (i64, |  id (idlen bytes, zero padded to 64)    |
//	 | (i64)         | unix nanos)   |                                         |
//	 +---------------+---------------+-----------------------------------------+
//	112                             124     128                 128+loglen
//	 +-------------------------------+-------+---------------------+
//	 | reserved (zero)               | crc32c| LOG state           |
//	 +-------------------------------+-------+---------------------+
//
// The CRC is CRC32C (Castagnoli) of bytes 0..124. The LOG state is the
// persisted form of bitmap.Log (magic "CRLOGBM\0", its own version, the pin
// flag, geometry, last rotation, the current and history halves and its own
// CRC32C over all of it; drawn in package bitmap's doc); its size must equal
// the chunk size. loglen is at most 64 MiB. The file is exactly 128+loglen
// bytes. loglen 0 means no LOG state was recorded (treated like version 1).
//
// Version 1 (written by earlier chunkservers) is the same fixed part with
// ver=1, bytes 24..32 zero and no LOG state: 128 bytes in all. A version-1
// sidecar is still read: its chunk gets a fresh LOG bitmap, pinned because
// nothing is known about the writes it took, and the sidecar is rewritten as
// version 2 when the store opens.
//
// A sidecar is replaced atomically: written to <id>.meta.tmp, fsynced,
// renamed over <id>.meta, and the directory fsynced. A sidecar with a bad
// magic, an unknown version, a length that does not fit, a wrong checksum or
// a damaged LOG state is refused with ErrCorruptHeader; the chunk is then not
// served (and never deleted automatically).
//
// # LOG bitmap and fencing
//
// Every WRITE, TRIM and WRITE_ZEROES first marks its regions in the chunk's
// LOG bitmap and, if a bit is not yet durable (it flipped 0→1 in this period,
// or another write that flipped it is still persisting), rewrites the sidecar
// durably before the data is touched (bitmap.Log.Sync: one group commit for
// all waiting writes). A failed sidecar write fails the chunk: every later
// call returns ErrChunkFailed. The store rotates the LOG bitmaps every
// period T (RotateLogs) and rewrites a sidecar after a rotation that forgot
// bits (lazily: a stale sidecar only over-reports). A chunk loaded from disk
// starts pinned (its host may have died with it): only an explicit Unpin, by
// a host that brought the chunk's set in sync, lets it forget again.
//
// The minimum epoch only grows (RaiseMinEpoch); it is persisted before
// RaiseMinEpoch returns. The chunkserver refuses exports and control calls
// below it.
package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/chunkraid/chunkraid/bitmap"
)

const (
	headerMagic    = "CRCHUNK\x00"
	headerVersion1 = 1
	headerVersion  = 2
	headerLen      = 128
	maxIDLen       = 64
	maxLogLen      = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptHeader is returned for a sidecar that fails validation.
var ErrCorruptHeader = errors.New("store: corrupt chunk header")

// Header is the decoded sidecar of a chunk.
type Header struct {
	ID       string
	Size     int64
	MinEpoch int64 // exports and control calls below it are refused
	Created  int64 // unix nanoseconds
	// Log is the LOG bitmap state (bitmap.Log's persisted form), nil if
	// the sidecar recorded none (version 1).
	Log []byte
	// Version is the version the sidecar was decoded from (1 or 2);
	// MarshalBinary always writes version 2.
	Version int
}

// Equal reports whether h and o hold the same fields.
func (h Header) Equal(o Header) bool {
	return h.ID == o.ID && h.Size == o.Size && h.MinEpoch == o.MinEpoch && h.Created == o.Created &&
		bytes.Equal(h.Log, o.Log)
}

// MarshalBinary encodes h as a version-2 sidecar.
func (h Header) MarshalBinary() ([]byte, error) {
	if len(h.ID) == 0 || len(h.ID) > maxIDLen {
		return nil, fmt.Errorf("store: chunk id length %d, want 1..%d", len(h.ID), maxIDLen)
	}
	if h.Size <= 0 {
		return nil, fmt.Errorf("store: chunk size %d must be positive", h.Size)
	}
	if h.MinEpoch < 0 {
		return nil, fmt.Errorf("store: minimum epoch %d is negative", h.MinEpoch)
	}
	if len(h.Log) > maxLogLen {
		return nil, fmt.Errorf("store: LOG state of %d bytes exceeds %d", len(h.Log), maxLogLen)
	}
	b := make([]byte, headerLen+len(h.Log))
	copy(b[0:8], headerMagic)
	binary.LittleEndian.PutUint16(b[8:], headerVersion)
	binary.LittleEndian.PutUint16(b[10:], headerLen)
	binary.LittleEndian.PutUint16(b[12:], uint16(len(h.ID)))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.Size))
	binary.LittleEndian.PutUint32(b[24:], uint32(len(h.Log)))
	binary.LittleEndian.PutUint64(b[32:], uint64(h.MinEpoch))
	binary.LittleEndian.PutUint64(b[40:], uint64(h.Created))
	copy(b[48:112], h.ID)
	binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	copy(b[headerLen:], h.Log)
	return b, nil
}

// UnmarshalBinary decodes and validates a sidecar of version 1 or 2,
// including the LOG state it carries.
func (h *Header) UnmarshalBinary(b []byte) error {
	if len(b) < headerLen {
		return fmt.Errorf("%w: length %d, want at least %d", ErrCorruptHeader, len(b), headerLen)
	}
	if string(b[0:8]) != headerMagic {
		return fmt.Errorf("%w: bad magic %q", ErrCorruptHeader, b[0:8])
	}
	v := binary.LittleEndian.Uint16(b[8:])
	if v != headerVersion1 && v != headerVersion {
		return fmt.Errorf("%w: unknown version %d", ErrCorruptHeader, v)
	}
	if l := binary.LittleEndian.Uint16(b[10:]); l != headerLen {
		return fmt.Errorf("%w: header length %d, want %d", ErrCorruptHeader, l, headerLen)
	}
	if got, want := binary.LittleEndian.Uint32(b[124:]), crc32.Checksum(b[:124], castagnoli); got != want {
		return fmt.Errorf("%w: checksum %08x, computed %08x", ErrCorruptHeader, got, want)
	}
	if f := binary.LittleEndian.Uint16(b[14:]); f != 0 {
		return fmt.Errorf("%w: unknown flags %#04x", ErrCorruptHeader, f)
	}
	idLen := int(binary.LittleEndian.Uint16(b[12:]))
	if idLen == 0 || idLen > maxIDLen {
		return fmt.Errorf("%w: id length %d", ErrCorruptHeader, idLen)
	}
	size := int64(binary.LittleEndian.Uint64(b[16:]))
	if size <= 0 {
		return fmt.Errorf("%w: size %d", ErrCorruptHeader, size)
	}
	minEpoch := int64(binary.LittleEndian.Uint64(b[32:]))
	if minEpoch < 0 {
		return fmt.Errorf("%w: minimum epoch %d", ErrCorruptHeader, minEpoch)
	}
	logLen := int64(binary.LittleEndian.Uint32(b[24:]))
	if v == headerVersion1 && (logLen != 0 || binary.LittleEndian.Uint32(b[28:]) != 0) {
		return fmt.Errorf("%w: version 1 with bytes 24..32 not zero", ErrCorruptHeader)
	}
	if binary.LittleEndian.Uint32(b[28:]) != 0 {
		return fmt.Errorf("%w: reserved bytes 28..32 not zero", ErrCorruptHeader)
	}
	if logLen > maxLogLen {
		return fmt.Errorf("%w: LOG state length %d exceeds %d", ErrCorruptHeader, logLen, maxLogLen)
	}
	if int64(len(b)) != headerLen+logLen {
		return fmt.Errorf("%w: length %d, want %d", ErrCorruptHeader, len(b), headerLen+logLen)
	}
	var log []byte
	if logLen > 0 {
		log = bytes.Clone(b[headerLen:])
		var l bitmap.Log
		if err := l.UnmarshalBinary(log); err != nil {
			return fmt.Errorf("%w: LOG state: %w", ErrCorruptHeader, err)
		}
		if l.Size() != size {
			return fmt.Errorf("%w: LOG state covers %d bytes, chunk has %d", ErrCorruptHeader, l.Size(), size)
		}
	}
	*h = Header{
		ID:       string(b[48 : 48+idLen]),
		Size:     size,
		MinEpoch: minEpoch,
		Created:  int64(binary.LittleEndian.Uint64(b[40:])),
		Log:      log,
		Version:  int(v),
	}
	return nil
}
