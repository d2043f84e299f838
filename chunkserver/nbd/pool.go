package nbd

import (
	"math/bits"
	"sync"
)

// Buffer size classes: powers of two from 4 KiB to MaxPayload.
const (
	minClassShift = 12
	maxClassShift = 25 // 32 MiB == MaxPayload
	numClasses    = maxClassShift - minClassShift + 1
)

// bufPool hands out data buffers by size class so that the I/O path does not
// allocate per request. Buffers are *[]byte so that Put does not allocate.
type bufPool struct {
	classes [numClasses]sync.Pool
}

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of length n. Buffers larger than MaxPayload are not
// pooled.
func (p *bufPool) get(n int) *[]byte {
	c := classOf(n)
	if c >= numClasses {
		b := make([]byte, n)
		return &b
	}
	if v, ok := p.classes[c].Get().(*[]byte); ok {
		*v = (*v)[:n]
		return v
	}
	b := make([]byte, n, 1<<(c+minClassShift))
	return &b
}

// put returns a buffer obtained from get.
func (p *bufPool) put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minClassShift || c&(c-1) != 0 {
		return
	}
	k := bits.Len(uint(c)) - 1 - minClassShift
	if k >= numClasses {
		return
	}
	p.classes[k].Put(b)
}
