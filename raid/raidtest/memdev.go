// Package raidtest provides an in-memory raid.Device with fault injection and
// a conformance suite that every raid.Device implementation should pass.
package raidtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/chunkraid/chunkraid/raid"
)

// ErrInjected is returned by a MemDevice whose failure switch is on.
var ErrInjected = errors.New("raidtest: injected failure")

// MemDevice is a raid.Device backed by a byte slice.
type MemDevice struct {
	mu struct {
		sync.RWMutex
		data   []byte // guarded by mu
		failed bool   // guarded by mu
		writes int    // guarded by mu
		wbytes int64  // guarded by mu
		// full makes writes fail with ENOSPC, changing nothing
		full bool // guarded by mu
	}
}

// NewMemDevice returns a zero-filled device of size bytes.
func NewMemDevice(size int64) *MemDevice {
	d := &MemDevice{}
	d.mu.data = make([]byte, size)
	return d
}

// Size implements raid.Device.
func (d *MemDevice) Size() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return int64(len(d.mu.data))
}

// SetFailed makes every later call fail (true) or succeed again (false).
func (d *MemDevice) SetFailed(f bool) {
	d.mu.Lock()
	d.mu.failed = f
	d.mu.Unlock()
}

// SetFull makes every later WriteAt fail with an error wrapping
// syscall.ENOSPC and change nothing (true), as a chunk on a full disk does,
// or succeed again (false). Reads, flushes and trims go on working.
func (d *MemDevice) SetFull(f bool) {
	d.mu.Lock()
	d.mu.full = f
	d.mu.Unlock()
}

// Writes counts successful WriteAt calls.
func (d *MemDevice) Writes() int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.mu.writes
}

// WrittenBytes counts the bytes of successful WriteAt calls.
func (d *MemDevice) WrittenBytes() int64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.mu.wbytes
}

// Bytes returns a copy of the device's contents.
func (d *MemDevice) Bytes() []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return append([]byte(nil), d.mu.data...)
}

func (d *MemDevice) checkLocked(off, n int64) error {
	if d.mu.failed {
		return ErrInjected
	}
	if off < 0 || n < 0 || off+n > int64(len(d.mu.data)) {
		return fmt.Errorf("%w: offset %d length %d size %d", raid.ErrOutOfRange, off, n, len(d.mu.data))
	}
	return nil
}

// ReadAt implements raid.Device.
func (d *MemDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	copy(p, d.mu.data[off:])
	return nil
}

// WriteAt implements raid.Device.
func (d *MemDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	if d.mu.full {
		return fmt.Errorf("raidtest: write at %d: %w", off, syscall.ENOSPC)
	}
	copy(d.mu.data[off:], p)
	d.mu.writes++
	d.mu.wbytes += int64(len(p))
	return nil
}

// Flush implements raid.Device.
func (d *MemDevice) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.mu.failed {
		return ErrInjected
	}
	return nil
}

// Trim implements raid.Device.
func (d *MemDevice) Trim(ctx context.Context, off, length int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.checkLocked(off, length); err != nil {
		return err
	}
	clear(d.mu.data[off : off+length])
	return nil
}
