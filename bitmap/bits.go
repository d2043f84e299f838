package bitmap

import (
	"encoding/binary"
	"math/bits"
)

// hostBigEndian is fixed for the life of the process; the persisted formats
// are little-endian whatever the host is.
var hostBigEndian = binary.NativeEndian.Uint16([]byte{0, 1}) == 1

// leWord converts between a uint64 word as the host stores it and its
// little-endian reading: bit i of the result is bit i%8 of byte i/8 of the
// word's memory. It is its own inverse.
func leWord(v uint64) uint64 {
	if hostBigEndian {
		return bits.ReverseBytes64(v)
	}
	return v
}

// isPow2 reports whether v is a positive power of two.
func isPow2(v int64) bool { return v > 0 && v&(v-1) == 0 }

// span returns the regions [first, last] that the byte range [off,
// off+length) touches, clipped to [0, size). ok is false when nothing of
// the range lies inside.
func span(off, length, size int64, shift uint) (first, last int64, ok bool) {
	if length <= 0 || off >= size {
		return 0, 0, false
	}
	if off < 0 {
		if off+length <= 0 {
			return 0, 0, false
		}
		length += off
		off = 0
	}
	end := size
	if length < size-off {
		end = off + length
	}
	return off >> shift, (end - 1) >> shift, true
}

// regionCount is ceil(size / 2^shift) for size > 0.
func regionCount(size int64, shift uint) int64 {
	return (size-1)>>shift + 1
}
