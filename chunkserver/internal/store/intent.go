package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// The intent bitmap serves bitmap mode "internal" (DESIGN §2: the MD-style
// bitmap the comparison runs against REMB). The host writes its whole
// write-intent bitmap to every member, synchronously, before a write that
// dirties a clean region; the chunkserver keeps it in <id>.intent, written
// in place with one pwrite and fdatasync, as MD writes its bitmap pages:
//
//	0        8      10     12             20     24        28
//	+--------+------+------+--------------+------+---------+------------+
//	| magic  | ver  | rsvd | region (u64) | n    | crc32c  | bits (n B) |
//	|CRINTNT0| =1   |  0   |              | (u32)| of 0..24|            |
//	+--------+------+------+--------------+------+---------+------------+
//
// Little-endian; the CRC32C covers the 24 header bytes before it and the
// bits. A missing file is an empty bitmap; a damaged one is refused with
// ErrCorruptHeader and the host falls back to a full resync.

const (
	intentMagic   = "CRINTNT\x00"
	intentVersion = 1
	intentHdr     = 28
	// MaxIntentBytes bounds an intent bitmap (a 10 GiB chunk with 4 KiB
	// regions needs 320 KiB).
	MaxIntentBytes = 1 << 20
)

func (s *Store) intentPath(id string) string { return filepath.Join(s.dir, id+suffixIntent) }

// EncodeIntent encodes an intent bitmap file.
func EncodeIntent(region int64, bits []byte) ([]byte, error) {
	if region <= 0 || len(bits) > MaxIntentBytes {
		return nil, fmt.Errorf("store: intent bitmap with region %d and %d bytes", region, len(bits))
	}
	b := make([]byte, intentHdr+len(bits))
	copy(b, intentMagic)
	binary.LittleEndian.PutUint16(b[8:], intentVersion)
	binary.LittleEndian.PutUint64(b[12:], uint64(region))
	binary.LittleEndian.PutUint32(b[20:], uint32(len(bits)))
	copy(b[intentHdr:], bits)
	crc := crc32.Update(crc32.Checksum(b[:24], castagnoli), castagnoli, bits)
	binary.LittleEndian.PutUint32(b[24:], crc)
	return b, nil
}

// DecodeIntent decodes an intent bitmap file.
func DecodeIntent(b []byte) (region int64, bits []byte, err error) {
	if len(b) < intentHdr || string(b[:8]) != intentMagic {
		return 0, nil, fmt.Errorf("%w: intent bitmap: bad magic or length %d", ErrCorruptHeader, len(b))
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != intentVersion {
		return 0, nil, fmt.Errorf("%w: intent bitmap version %d", ErrCorruptHeader, v)
	}
	n := int(binary.LittleEndian.Uint32(b[20:]))
	if n > MaxIntentBytes || len(b) < intentHdr+n {
		return 0, nil, fmt.Errorf("%w: intent bitmap of %d bytes in a %d-byte file", ErrCorruptHeader, n, len(b))
	}
	bits = b[intentHdr : intentHdr+n]
	if got, want := binary.LittleEndian.Uint32(b[24:]), crc32.Update(crc32.Checksum(b[:24], castagnoli), castagnoli, bits); got != want {
		return 0, nil, fmt.Errorf("%w: intent bitmap checksum %08x, computed %08x", ErrCorruptHeader, got, want)
	}
	region = int64(binary.LittleEndian.Uint64(b[12:]))
	if region <= 0 {
		return 0, nil, fmt.Errorf("%w: intent bitmap region %d", ErrCorruptHeader, region)
	}
	return region, append([]byte(nil), bits...), nil
}

// WriteIntent stores the host's intent bitmap durably (pwrite + fdatasync).
// A failed sync fails the chunk.
func (s *Store) WriteIntent(c *Chunk, region int64, bits []byte) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(0, 0); err != nil {
		return err
	}
	b, err := EncodeIntent(region, bits)
	if err != nil {
		return err
	}
	c.intentMu.Lock()
	defer c.intentMu.Unlock()
	if c.intent == nil {
		f, err := s.fs.OpenFile(s.intentPath(c.id), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		if err := s.fs.SyncDir(s.dir); err != nil {
			f.Close()
			return err
		}
		c.intent = f
	}
	if _, err := c.intent.WriteAt(b, 0); err != nil {
		return fmt.Errorf("store: writing the intent bitmap of chunk %s: %w", c.id, err)
	}
	if err := c.intent.Sync(); err != nil {
		return c.fail(fmt.Errorf("intent bitmap fdatasync: %w", err), false)
	}
	return nil
}

// ReadIntent returns the stored intent bitmap; none stored gives region 0
// and no bits.
func (s *Store) ReadIntent(c *Chunk) (region int64, bits []byte, err error) {
	c.intentMu.Lock()
	defer c.intentMu.Unlock()
	b, err := vfs.ReadFile(s.fs, s.intentPath(c.id))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	return DecodeIntent(b)
}
