package bitmap

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strconv"
)

// WIB file header; the layout is drawn in the package doc.
const (
	wibMagic       = "CRWIB\x00\x00\x00"
	wibVersion     = 1
	wibHeaderPage  = 4096 // the bits start here
	wibHeaderLen   = 512  // covered by the CRC; the rest of the page is zero
	wibCRCOff      = wibHeaderLen - 4
	wibMaxVolume   = 255
	wibVolumeOff   = 64
	wibMinRegion   = 512
	wibDefaultRegn = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// wibHeader is the decoded header of a WIB file.
type wibHeader struct {
	size       int64
	regionSize int64
	regions    int64
	epoch      uint64
	set        int64
	volume     string
}

// encode writes h into b[:wibHeaderLen], CRC included.
func (h wibHeader) encode(b []byte) {
	clear(b[:wibHeaderLen])
	copy(b[0:8], wibMagic)
	binary.LittleEndian.PutUint32(b[8:], wibVersion)
	binary.LittleEndian.PutUint32(b[12:], wibHeaderPage)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.size))
	binary.LittleEndian.PutUint64(b[24:], uint64(h.regionSize))
	binary.LittleEndian.PutUint64(b[32:], uint64(h.regions))
	binary.LittleEndian.PutUint64(b[40:], h.epoch)
	binary.LittleEndian.PutUint64(b[48:], uint64(h.set))
	binary.LittleEndian.PutUint16(b[56:], uint16(len(h.volume)))
	copy(b[wibVolumeOff:wibVolumeOff+wibMaxVolume+1], h.volume)
	binary.LittleEndian.PutUint32(b[wibCRCOff:], crc32.Checksum(b[:wibCRCOff], castagnoli))
}

// decodeWIBHeader validates and decodes the first wibHeaderLen bytes of b.
// It checks the header on its own (magic, version, CRC, reserved bytes,
// geometry); whether the header matches a configuration is the caller's
// question.
func decodeWIBHeader(b []byte) (wibHeader, error) {
	bad := func(field, got string) (wibHeader, error) {
		return wibHeader{}, &HeaderError{Field: field, Got: got, Err: ErrCorrupt}
	}
	if len(b) < wibHeaderLen {
		return bad("length", fmt.Sprintf("%d bytes, shorter than the %d-byte header", len(b), wibHeaderLen))
	}
	if string(b[0:8]) != wibMagic {
		return bad("magic", strconv.Quote(string(b[0:8])))
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != wibVersion {
		return wibHeader{}, &HeaderError{Field: "version", Got: strconv.FormatUint(uint64(v), 10),
			Want: strconv.Itoa(wibVersion), Err: ErrVersion}
	}
	if sum, want := crc32.Checksum(b[:wibCRCOff], castagnoli), binary.LittleEndian.Uint32(b[wibCRCOff:]); sum != want {
		return bad("crc", fmt.Sprintf("computed %08x, stored %08x", sum, want))
	}
	if p := binary.LittleEndian.Uint32(b[12:]); p != wibHeaderPage {
		return bad("header page size", strconv.FormatUint(uint64(p), 10))
	}
	vlen := int(binary.LittleEndian.Uint16(b[56:]))
	if vlen > wibMaxVolume {
		return bad("volume length", strconv.Itoa(vlen))
	}
	if !allZero(b[58:wibVolumeOff]) || !allZero(b[wibVolumeOff+vlen:wibCRCOff]) {
		return bad("reserved bytes", "not zero")
	}
	h := wibHeader{
		size:       int64(binary.LittleEndian.Uint64(b[16:])),
		regionSize: int64(binary.LittleEndian.Uint64(b[24:])),
		regions:    int64(binary.LittleEndian.Uint64(b[32:])),
		epoch:      binary.LittleEndian.Uint64(b[40:]),
		set:        int64(binary.LittleEndian.Uint64(b[48:])),
		volume:     string(b[wibVolumeOff : wibVolumeOff+vlen]),
	}
	if h.size <= 0 {
		return bad("size", strconv.FormatInt(h.size, 10))
	}
	if !isPow2(h.regionSize) || h.regionSize < wibMinRegion {
		return bad("region size", strconv.FormatInt(h.regionSize, 10))
	}
	if want := regionCount(h.size, shiftOf(h.regionSize)); h.regions != want {
		return bad("region count", fmt.Sprintf("%d for size %d and region size %d (want %d)",
			h.regions, h.size, h.regionSize, want))
	}
	if h.set < 0 {
		return bad("set index", strconv.FormatInt(h.set, 10))
	}
	return h, nil
}

// wibFileLen is the exact length of a WIB file with the given region count.
func wibFileLen(regions int64) int64 {
	return wibHeaderPage + 8*((regions+63)/64)
}

func shiftOf(pow2 int64) uint {
	var s uint
	for int64(1)<<s < pow2 {
		s++
	}
	return s
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
