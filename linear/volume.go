// Package linear concatenates RAID sets into one volume: set 0 holds bytes
// [0, size0), set 1 the next size1 bytes, and so on. I/O that crosses a set
// boundary is split and the parts run in parallel.
package linear

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/chunkraid/chunkraid/raid"
)

// Volume is a linear concatenation of devices (normally raid sets). It
// grows online (Grow): every I/O works on the layout it found when it
// started, which a Grow replaces whole.
type Volume struct {
	layout atomic.Pointer[layout]
	grow   sync.Mutex // serializes Grow
}

// layout is an immutable concatenation.
type layout struct {
	sets   []raid.Device
	starts []int64 // starts[i] is the volume offset of sets[i]
	size   int64
}

// New concatenates sets in order. At least one set is required.
func New(sets []raid.Device) (*Volume, error) {
	if len(sets) == 0 {
		return nil, fmt.Errorf("linear: a volume needs at least one set")
	}
	v := &Volume{}
	l, err := (&layout{}).extend(sets)
	if err != nil {
		return nil, err
	}
	v.layout.Store(l)
	return v, nil
}

// extend returns l with sets appended.
func (l *layout) extend(sets []raid.Device) (*layout, error) {
	n := &layout{sets: slices.Clone(l.sets), starts: slices.Clone(l.starts), size: l.size}
	for _, s := range sets {
		if s.Size() <= 0 {
			return nil, fmt.Errorf("linear: set %d has size %d", len(n.sets), s.Size())
		}
		n.sets = append(n.sets, s)
		n.starts = append(n.starts, n.size)
		n.size += s.Size()
	}
	return n, nil
}

// Grow appends sets to the volume, online: I/O that started before sees the
// volume as it was, I/O that starts after sees it grown.
func (v *Volume) Grow(sets ...raid.Device) error {
	v.grow.Lock()
	defer v.grow.Unlock()
	l, err := v.layout.Load().extend(sets)
	if err != nil {
		return err
	}
	v.layout.Store(l)
	return nil
}

// Size is the sum of the sets' sizes.
func (v *Volume) Size() int64 { return v.layout.Load().size }

// Sets returns the sets in order.
func (v *Volume) Sets() []raid.Device { return v.layout.Load().sets }

// extent is the part of a volume I/O that falls in one set.
type extent struct {
	set   int
	dev   raid.Device
	off   int64 // offset within the set
	start int64 // offset within the caller's buffer
	n     int64
}

func (v *Volume) split(off, n int64) ([]extent, error) {
	l := v.layout.Load()
	if off < 0 || n < 0 || off+n > l.size {
		return nil, fmt.Errorf("%w: offset %d length %d volume size %d", raid.ErrOutOfRange, off, n, l.size)
	}
	// Find the first set by binary search on starts.
	lo, hi := 0, len(l.starts)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if l.starts[mid] <= off {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	var ext []extent
	for i, done := lo, int64(0); done < n || (n == 0 && ext == nil); i++ {
		setOff := off + done - l.starts[i]
		m := min(n-done, l.sets[i].Size()-setOff)
		ext = append(ext, extent{set: i, dev: l.sets[i], off: setOff, start: done, n: m})
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
		return e.dev.ReadAt(ctx, p[e.start:e.start+e.n], e.off)
	})
}

// WriteAt writes p at off.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	ext, err := v.split(off, int64(len(p)))
	if err != nil {
		return err
	}
	return v.each(ext, func(e extent) error {
		return e.dev.WriteAt(ctx, p[e.start:e.start+e.n], e.off, fua)
	})
}

// Trim deallocates [off, off+length).
func (v *Volume) Trim(ctx context.Context, off, length int64) error {
	ext, err := v.split(off, length)
	if err != nil {
		return err
	}
	return v.each(ext, func(e extent) error {
		return e.dev.Trim(ctx, e.off, e.n)
	})
}

// Flush flushes every set.
func (v *Volume) Flush(ctx context.Context) error {
	l := v.layout.Load()
	ext := make([]extent, len(l.sets))
	for i, d := range l.sets {
		ext[i] = extent{set: i, dev: d}
	}
	return v.each(ext, func(e extent) error { return e.dev.Flush(ctx) })
}
