// Package store keeps a chunkserver's chunks on a local disk: each chunk is a
// sparse data file of the cluster's chunk size (thin provisioned) plus a
// sidecar file with a versioned, checksummed header that carries the chunk's
// minimum epoch (fencing, DESIGN §2 rule 2) and its LOG bitmap (REMB).
//
// Files, in the store directory:
//
//	<id>.chunk       the data, a sparse file of exactly the chunk size
//	<id>.meta        the sidecar below
//	<id>.snap-<seq>  a snapshot layer's saved blocks (version 3; snapshot.go)
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
//	112     116                     124     128                 128+loglen
//	 +-------+-----------------------+-------+---------------------+
//	 |clonelen| reserved (zero)      | crc32c| LOG state           |
//	 |(u32,v4)|                      |       |                     |
//	 +-------+-----------------------+-------+---------------------+
//
// The CRC is CRC32C (Castagnoli) of bytes 0..124. The LOG state is the
// persisted form of bitmap.Log (magic "CRLOGBM\0", its own version, the pin
// flag, geometry, last rotation, the current and history halves and its own
// CRC32C over all of it; drawn in package bitmap's doc); its size must equal
// the chunk size. loglen is at most 64 MiB. The file is exactly 128+loglen
// bytes. loglen 0 means no LOG state was recorded (treated like version 1).
//
// Version 3 is version 2 with snapshot layers: bytes 28..32 hold snaplen,
// the length of a snapshot section that follows the LOG state (the file is
// 128+loglen+snaplen bytes). A sidecar without snapshot layers is written
// as version 2, byte for byte as before. The section:
//
//	0                 8       10      12              16
//	+-----------------+-------+-------+---------------+
//	| "CRSNAPS\x00"   | count | zero  | block (u32)   |  then count layers:
//	+-----------------+-------+-------+---------------+
//	+-------+---------------+-------+------+--------------+----------------+
//	| seq   | created (i64, | nlen  | zero | name (nlen)  | saved map      |
//	| (u32) | unix nanos)   | (u8)  | (3B) |              | ceil(N/8) B    |
//	+-------+---------------+-------+------+--------------+----------------+
//	then the CRC32C (u32) of the whole section before it.
//
// Each layer is a snapshot of the chunk, oldest first with increasing seq;
// block is the copy-on-write granularity (a power of two from 4 KiB to
// 1 MiB that divides the chunk size) and N the chunk's blocks. Bit b of a
// layer's saved map (LSB first) says that <id>.snap-<seq> holds block b as
// it was when the layer was taken: the chunk overwrote it since. At most
// 255 layers; names are 1..63 bytes.
//
// Version 4 is version 3 (or 2) with a clone section: the chunk is a
// writable clone of snapshot <base name> of chunk <base id> in the same
// store. Bytes 112..116 hold clonelen, the length of the clone section,
// which follows the snapshot section (snaplen may be 0). The section:
//
//	0                 8               12      13      14      16
//	+-----------------+---------------+-------+-------+-------+
//	| "CRCLONE\x00"   | block (u32)   | idlen | nlen  | zero  |
//	+-----------------+---------------+-------+-------+-------+
//	+----------------+------------------+----------------+----------+
//	| base id (idlen)| base name (nlen) | owned map      | CRC32C   |
//	|                |                  | ceil(N/8) B    | (u32)    |
//	+----------------+------------------+----------------+----------+
//
// block is the clone's granularity (as a snapshot block) and N the chunk's
// blocks. Bit b of the owned map says the data file holds block b; a block
// not owned reads from the base snapshot (clone.go).
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
	headerVersion3 = 3 // with snapshot layers
	headerVersion4 = 4 // with a clone section
	headerLen      = 128
	maxIDLen       = 64
	maxLogLen      = 64 << 20

	snapMagic    = "CRSNAPS\x00"
	snapHdr      = 16
	snapLayerHdr = 16
	MaxSnapshots = 255
	maxSnapName  = 63
	minSnapBlock = 4 << 10
	maxSnapBlock = 1 << 20
	maxSnapLen   = 64 << 20

	cloneMagic = "CRCLONE\x00"
	cloneHdr   = 16
)

func marshalClone(size int64, h Header) ([]byte, error) {
	if !validSnapBlock(h.CloneBlock, size) {
		return nil, fmt.Errorf("store: clone block %d for a chunk of %d bytes", h.CloneBlock, size)
	}
	if len(h.Base) == 0 || len(h.Base) > maxIDLen || len(h.BaseSnapshot) == 0 || len(h.BaseSnapshot) > maxSnapName {
		return nil, fmt.Errorf("store: clone of %q snapshot %q: bad lengths", h.Base, h.BaseSnapshot)
	}
	if mapLen := snapMapLen(size, h.CloneBlock); len(h.Owned) != mapLen {
		return nil, fmt.Errorf("store: owned map of %d bytes, want %d", len(h.Owned), mapLen)
	}
	b := make([]byte, cloneHdr, cloneHdr+len(h.Base)+len(h.BaseSnapshot)+len(h.Owned)+4)
	copy(b, cloneMagic)
	binary.LittleEndian.PutUint32(b[8:], uint32(h.CloneBlock))
	b[12], b[13] = byte(len(h.Base)), byte(len(h.BaseSnapshot))
	b = append(b, h.Base...)
	b = append(b, h.BaseSnapshot...)
	b = append(b, h.Owned...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

func unmarshalClone(b []byte, size int64, h *Header) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: clone section: %s", ErrCorruptHeader, fmt.Sprintf(format, args...))
	}
	if len(b) < cloneHdr+4 || string(b[:8]) != cloneMagic {
		return bad("length %d or magic wrong", len(b))
	}
	if got, want := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.Checksum(b[:len(b)-4], castagnoli); got != want {
		return bad("checksum %08x, computed %08x", got, want)
	}
	block := int64(binary.LittleEndian.Uint32(b[8:]))
	if !validSnapBlock(block, size) {
		return bad("block %d for a chunk of %d bytes", block, size)
	}
	idLen, nLen := int(b[12]), int(b[13])
	if b[14] != 0 || b[15] != 0 || idLen == 0 || idLen > maxIDLen || nLen == 0 || nLen > maxSnapName {
		return bad("lengths %d and %d or reserved bytes not zero", idLen, nLen)
	}
	mapLen := snapMapLen(size, block)
	rest := b[cloneHdr : len(b)-4]
	if len(rest) != idLen+nLen+mapLen {
		return bad("%d bytes, want %d", len(rest), idLen+nLen+mapLen)
	}
	owned := rest[idLen+nLen:]
	if nbits := (size + block - 1) / block; nbits%8 != 0 && owned[mapLen-1]>>(nbits%8) != 0 {
		return bad("the owned map marks blocks past the chunk's end")
	}
	h.Base, h.BaseSnapshot = string(rest[:idLen]), string(rest[idLen:idLen+nLen])
	h.CloneBlock, h.Owned = block, bytes.Clone(owned)
	return nil
}

// SnapshotLayer is one snapshot of a chunk as its sidecar records it.
type SnapshotLayer struct {
	Seq     uint32
	Name    string
	Created int64  // unix nanoseconds
	Saved   []byte // bit b set: the layer's file holds block b as it was
}

func (l SnapshotLayer) equal(o SnapshotLayer) bool {
	return l.Seq == o.Seq && l.Name == o.Name && l.Created == o.Created && bytes.Equal(l.Saved, o.Saved)
}

// snapMapLen is the bytes of a saved map for a chunk of size bytes in
// blocks of block bytes.
func snapMapLen(size, block int64) int { return int(((size+block-1)/block + 7) / 8) }

// validSnapBlock reports whether block is a copy-on-write granularity for a
// chunk of size bytes.
func validSnapBlock(block, size int64) bool {
	return block >= minSnapBlock && block <= maxSnapBlock && block&(block-1) == 0 && size%block == 0
}

func marshalSnapshots(size, block int64, layers []SnapshotLayer) ([]byte, error) {
	if len(layers) > MaxSnapshots {
		return nil, fmt.Errorf("store: %d snapshot layers, at most %d", len(layers), MaxSnapshots)
	}
	if !validSnapBlock(block, size) {
		return nil, fmt.Errorf("store: snapshot block %d for a chunk of %d bytes", block, size)
	}
	mapLen := snapMapLen(size, block)
	b := make([]byte, snapHdr, snapHdr+len(layers)*(snapLayerHdr+maxSnapName+mapLen)+4)
	copy(b, snapMagic)
	binary.LittleEndian.PutUint16(b[8:], uint16(len(layers)))
	binary.LittleEndian.PutUint32(b[12:], uint32(block))
	for i, l := range layers {
		if len(l.Name) == 0 || len(l.Name) > maxSnapName {
			return nil, fmt.Errorf("store: snapshot name length %d, want 1..%d", len(l.Name), maxSnapName)
		}
		if len(l.Saved) != mapLen {
			return nil, fmt.Errorf("store: snapshot %q saved map of %d bytes, want %d", l.Name, len(l.Saved), mapLen)
		}
		if i > 0 && l.Seq <= layers[i-1].Seq {
			return nil, fmt.Errorf("store: snapshot layers out of order: seq %d after %d", l.Seq, layers[i-1].Seq)
		}
		var h [snapLayerHdr]byte
		binary.LittleEndian.PutUint32(h[0:], l.Seq)
		binary.LittleEndian.PutUint64(h[4:], uint64(l.Created))
		h[12] = byte(len(l.Name))
		b = append(b, h[:]...)
		b = append(b, l.Name...)
		b = append(b, l.Saved...)
	}
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if len(b) > maxSnapLen {
		return nil, fmt.Errorf("store: snapshot section of %d bytes exceeds %d", len(b), maxSnapLen)
	}
	return b, nil
}

func unmarshalSnapshots(b []byte, size int64) (block int64, layers []SnapshotLayer, err error) {
	bad := func(format string, args ...any) (int64, []SnapshotLayer, error) {
		return 0, nil, fmt.Errorf("%w: snapshot section: %s", ErrCorruptHeader, fmt.Sprintf(format, args...))
	}
	if len(b) < snapHdr+4 || string(b[:8]) != snapMagic {
		return bad("length %d or magic wrong", len(b))
	}
	if got, want := binary.LittleEndian.Uint32(b[len(b)-4:]), crc32.Checksum(b[:len(b)-4], castagnoli); got != want {
		return bad("checksum %08x, computed %08x", got, want)
	}
	n := int(binary.LittleEndian.Uint16(b[8:]))
	if binary.LittleEndian.Uint16(b[10:]) != 0 || n == 0 || n > MaxSnapshots {
		return bad("%d layers or reserved bytes not zero", n)
	}
	block = int64(binary.LittleEndian.Uint32(b[12:]))
	if !validSnapBlock(block, size) {
		return bad("block %d for a chunk of %d bytes", block, size)
	}
	mapLen := snapMapLen(size, block)
	rest := b[snapHdr : len(b)-4]
	for range n {
		if len(rest) < snapLayerHdr {
			return bad("truncated layer")
		}
		l := SnapshotLayer{Seq: binary.LittleEndian.Uint32(rest[0:]), Created: int64(binary.LittleEndian.Uint64(rest[4:]))}
		nlen := int(rest[12])
		if rest[13] != 0 || rest[14] != 0 || rest[15] != 0 || nlen == 0 || nlen > maxSnapName {
			return bad("name length %d or reserved bytes not zero", nlen)
		}
		if len(layers) > 0 && l.Seq <= layers[len(layers)-1].Seq {
			return bad("seq %d after %d", l.Seq, layers[len(layers)-1].Seq)
		}
		rest = rest[snapLayerHdr:]
		if len(rest) < nlen+mapLen {
			return bad("truncated layer %d", l.Seq)
		}
		l.Name = string(rest[:nlen])
		l.Saved = bytes.Clone(rest[nlen : nlen+mapLen])
		rest = rest[nlen+mapLen:]
		layers = append(layers, l)
	}
	if len(rest) != 0 {
		return bad("%d bytes after the layers", len(rest))
	}
	if nbits := (size + block - 1) / block; nbits%8 != 0 {
		for _, l := range layers {
			if l.Saved[mapLen-1]>>(nbits%8) != 0 {
				return bad("layer %d marks blocks past the chunk's end", l.Seq)
			}
		}
	}
	return block, layers, nil
}

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
	// SnapBlock is the copy-on-write granularity of Snapshots, and
	// Snapshots the chunk's snapshot layers, oldest first; none without
	// snapshots.
	SnapBlock int64
	Snapshots []SnapshotLayer
	// Base and BaseSnapshot, for a clone, are the chunk and its snapshot
	// the clone reads the blocks it does not own from; CloneBlock is the
	// clone's granularity and Owned its owned map. Base is "" otherwise.
	Base         string
	BaseSnapshot string
	CloneBlock   int64
	Owned        []byte
	// Version is the version the sidecar was decoded from (1 to 4);
	// MarshalBinary writes version 4 for a clone, 3 when there are
	// snapshots, else 2.
	Version int
}

// Equal reports whether h and o hold the same fields.
func (h Header) Equal(o Header) bool {
	if h.ID != o.ID || h.Size != o.Size || h.MinEpoch != o.MinEpoch || h.Created != o.Created ||
		!bytes.Equal(h.Log, o.Log) || len(h.Snapshots) != len(o.Snapshots) {
		return false
	}
	if len(h.Snapshots) > 0 && h.SnapBlock != o.SnapBlock {
		return false
	}
	if h.Base != o.Base || h.BaseSnapshot != o.BaseSnapshot || h.Base != "" && (h.CloneBlock != o.CloneBlock || !bytes.Equal(h.Owned, o.Owned)) {
		return false
	}
	for i := range h.Snapshots {
		if !h.Snapshots[i].equal(o.Snapshots[i]) {
			return false
		}
	}
	return true
}

// MarshalBinary encodes h as a version-2 sidecar, version 3 with snapshot
// layers, or version 4 for a clone.
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
	var snaps []byte
	version := uint16(headerVersion)
	if len(h.Snapshots) > 0 {
		var err error
		if snaps, err = marshalSnapshots(h.Size, h.SnapBlock, h.Snapshots); err != nil {
			return nil, err
		}
		version = headerVersion3
	}
	var clone []byte
	if h.Base != "" {
		var err error
		if clone, err = marshalClone(h.Size, h); err != nil {
			return nil, err
		}
		version = headerVersion4
	}
	b := make([]byte, headerLen+len(h.Log)+len(snaps)+len(clone))
	copy(b[0:8], headerMagic)
	binary.LittleEndian.PutUint16(b[8:], version)
	binary.LittleEndian.PutUint16(b[10:], headerLen)
	binary.LittleEndian.PutUint16(b[12:], uint16(len(h.ID)))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.Size))
	binary.LittleEndian.PutUint32(b[24:], uint32(len(h.Log)))
	binary.LittleEndian.PutUint32(b[28:], uint32(len(snaps)))
	binary.LittleEndian.PutUint64(b[32:], uint64(h.MinEpoch))
	binary.LittleEndian.PutUint64(b[40:], uint64(h.Created))
	copy(b[48:112], h.ID)
	binary.LittleEndian.PutUint32(b[112:], uint32(len(clone)))
	binary.LittleEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	copy(b[headerLen:], h.Log)
	copy(b[headerLen+len(h.Log):], snaps)
	copy(b[headerLen+len(h.Log)+len(snaps):], clone)
	return b, nil
}

// UnmarshalBinary decodes and validates a sidecar of version 1 to 4,
// including the LOG state, snapshot layers and clone section it carries.
func (h *Header) UnmarshalBinary(b []byte) error {
	if len(b) < headerLen {
		return fmt.Errorf("%w: length %d, want at least %d", ErrCorruptHeader, len(b), headerLen)
	}
	if string(b[0:8]) != headerMagic {
		return fmt.Errorf("%w: bad magic %q", ErrCorruptHeader, b[0:8])
	}
	v := binary.LittleEndian.Uint16(b[8:])
	if v != headerVersion1 && v != headerVersion && v != headerVersion3 && v != headerVersion4 {
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
	snapLen := int64(binary.LittleEndian.Uint32(b[28:]))
	if v < headerVersion3 && snapLen != 0 {
		return fmt.Errorf("%w: version %d with bytes 28..32 not zero", ErrCorruptHeader, v)
	}
	if v == headerVersion3 && (snapLen == 0 || snapLen > maxSnapLen || logLen == 0) {
		return fmt.Errorf("%w: version 3 with a snapshot section of %d bytes and a LOG state of %d", ErrCorruptHeader, snapLen, logLen)
	}
	cloneLen := int64(binary.LittleEndian.Uint32(b[112:]))
	if v != headerVersion4 && cloneLen != 0 {
		return fmt.Errorf("%w: version %d with bytes 112..116 not zero", ErrCorruptHeader, v)
	}
	if v == headerVersion4 && (cloneLen == 0 || cloneLen > maxSnapLen || snapLen > maxSnapLen || logLen == 0) {
		return fmt.Errorf("%w: version 4 with a clone section of %d bytes, a snapshot section of %d and a LOG state of %d", ErrCorruptHeader, cloneLen, snapLen, logLen)
	}
	if logLen > maxLogLen {
		return fmt.Errorf("%w: LOG state length %d exceeds %d", ErrCorruptHeader, logLen, maxLogLen)
	}
	if int64(len(b)) != headerLen+logLen+snapLen+cloneLen {
		return fmt.Errorf("%w: length %d, want %d", ErrCorruptHeader, len(b), headerLen+logLen+snapLen+cloneLen)
	}
	var log []byte
	if logLen > 0 {
		log = bytes.Clone(b[headerLen : headerLen+logLen])
		var l bitmap.Log
		if err := l.UnmarshalBinary(log); err != nil {
			return fmt.Errorf("%w: LOG state: %w", ErrCorruptHeader, err)
		}
		if l.Size() != size {
			return fmt.Errorf("%w: LOG state covers %d bytes, chunk has %d", ErrCorruptHeader, l.Size(), size)
		}
	}
	var (
		block  int64
		layers []SnapshotLayer
	)
	if snapLen > 0 {
		var err error
		if block, layers, err = unmarshalSnapshots(b[headerLen+logLen:headerLen+logLen+snapLen], size); err != nil {
			return err
		}
	}
	var clone Header
	if cloneLen > 0 {
		if err := unmarshalClone(b[headerLen+logLen+snapLen:], size, &clone); err != nil {
			return err
		}
	}
	*h = Header{
		ID:           string(b[48 : 48+idLen]),
		Size:         size,
		MinEpoch:     minEpoch,
		Created:      int64(binary.LittleEndian.Uint64(b[40:])),
		Log:          log,
		SnapBlock:    block,
		Snapshots:    layers,
		Base:         clone.Base,
		BaseSnapshot: clone.BaseSnapshot,
		CloneBlock:   clone.CloneBlock,
		Owned:        clone.Owned,
		Version:      int(v),
	}
	return nil
}
