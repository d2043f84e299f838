// Package linear concatenates RAID sets into one volume: set 0 holds bytes
// [0, size0), set 1 the next size1 bytes, and so on. I/O that crosses a set
// boundary is split and the parts run in parallel.
package linear

import (
	"context"
	"fmt"
	"sync"

	"github.com/chunkraid/chunkraid/raid"
)

// Volume is a linear concatenation of devices (normally raid sets).
type Volume struct {
	sets   []raid.Device
	starts []int64 // starts[i] is the volume offset of sets[i]
	size   int64
}

// New concatenates sets in order. At least one set is required.
func New(sets []raid.Device) (*Volume, error) {
	if len(sets) == 0 {
		return nil, fmt.Errorf("linear: a volume needs at least one set")
	}
	v := &Volume{sets: sets, starts: make([]int64, len(sets))}
	for i, s := range sets {
		if s.Size() <= 0 {
			return nil, fmt.Errorf("linear: set %d has size %d", i, s.Size())
		}
		v.starts[i] = v.size
		v.size += s.Size()
	}
	return v, nil
}

// Size is the sum of the sets' sizes.
func (v *Volume) Size() int64 { return v.size }

// Sets returns the sets in order.
func (v *Volume) Sets() []raid.Device { return v.sets }

// extent is the part of a volume I/O that falls in one set.
type extent struct {
	set   int
	off   int64 // offset within the set
	start int64 // offset within the caller's buffer
	n     int64
}

func (v *Volume) split(off, n int64) ([]extent, error) {
	if off < 0 || n < 0 || off+n > v.size {
		return nil, fmt.Errorf("%w: offset %d length %d volume size %d", raid.ErrOutOfRange, off, n, v.size)
	}
	// Find the first set by binary search on starts.
	lo, hi := 0, len(v.starts)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if v.starts[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	var ext []extent
	for i, done := lo, int64(0); done < n || (n == 0 && ext == nil); i++ {
		setOff := off + done - v.starts[i]
		m := min(n-done, v.sets[i].Size()-setOff)
		ext = append(ext, extent{set: i, off: setOff, start: done, n: m})
		done += m
		if n == 0 {
			break
		}
	}
	return ext, nil
}

func (v *Volume) each(ext []extent, op func(e extent) error) error {
	if len(ext) == 1 {
		return op(ext[0])
	}
	errs := make([]error, len(ext))
	var wg sync.WaitGroup
	for i, e := range ext {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = op(e)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("linear: set %d: %w", ext[i].set, err)
		}
	}
	return nil
}

// ReadAt reads len(p) bytes at off.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	ext, err := v.split(off, int64(len(p)))
	if err != nil {
		return err
	}
	return v.each(ext, func(e extent) error {
		return v.sets[e.set].ReadAt(ctx, p[e.start:e.start+e.n], e.off)
	})
}

// WriteAt writes p at off.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	ext, err := v.split(off, int64(len(p)))
	if err != nil {
		return err
	}
	return v.each(ext, func(e extent) error {
		return v.sets[e.set].WriteAt(ctx, p[e.start:e.start+e.n], e.off, fua)
	})
}

// Trim deallocates [off, off+length).
func (v *Volume) Trim(ctx context.Context, off, length int64) error {
	ext, err := v.split(off, length)
	if err != nil {
		return err
	}
	return v.each(ext, func(e extent) error {
		return v.sets[e.set].Trim(ctx, e.off, e.n)
	})
}

// Flush flushes every set.
func (v *Volume) Flush(ctx context.Context) error {
	ext := make([]extent, len(v.sets))
	for i := range v.sets {
		ext[i] = extent{set: i}
	}
	return v.each(ext, func(e extent) error { return v.sets[e.set].Flush(ctx) })
}
