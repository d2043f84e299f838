package iscsi

import (
	"math/bits"
	"sync"
)

// Data buffers come from power-of-two size classes between 512 bytes and
// 32 MiB (the default MaxTransferLength), so that steady I/O at a few sizes
// allocates nothing.
const (
	minPoolShift = 9
	maxPoolShift = 25
)

// bufPools hold *[]byte holders with a buffer of their class; holders
// keeps empty holders, so that neither getting nor putting a buffer
// allocates once the pools are warm.
var (
	bufPools [maxPoolShift + 1]sync.Pool
	holders  = sync.Pool{New: func() any { return new([]byte) }}
)

func poolClass(n int) int {
	if n <= 1<<minPoolShift {
		return minPoolShift
	}
	return bits.Len(uint(n - 1))
}

// getBuf returns a buffer of length n. Its contents are unspecified.
func getBuf(n int) []byte {
	c := poolClass(n)
	if c > maxPoolShift {
		return make([]byte, n)
	}
	if h, ok := bufPools[c].Get().(*[]byte); ok {
		b := *h
		*h = nil
		holders.Put(h)
		return b[:n]
	}
	return make([]byte, n, 1<<c)
}

// putBuf returns a buffer obtained from getBuf. Buffers of other capacities
// are left to the garbage collector.
func putBuf(b []byte) {
	c := cap(b)
	if c < 1<<minPoolShift || c > 1<<maxPoolShift || c&(c-1) != 0 {
		return
	}
	h := holders.Get().(*[]byte)
	*h = b[:c]
	bufPools[bits.Len(uint(c))-1].Put(h)
}
