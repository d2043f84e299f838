package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrOutOfRange is returned for I/O past the end of a MemBackend.
var ErrOutOfRange = errors.New("bench: I/O beyond end of memory back end")

// MemBackend is an iSCSI back end (hostd/iscsi.Backend) held in memory, so
// that the target can be measured alone: no RAID, no network hop to
// chunkservers, no disk. Reads run in parallel; writes hold the lock for
// the copy only.
type MemBackend struct {
	mu struct {
		sync.RWMutex
		data []byte // guarded by mu
	}
}

// NewMemBackend returns a zero-filled back end of size bytes. The memory is
// only touched as it is written.
func NewMemBackend(size int64) (*MemBackend, error) {
	if size <= 0 || size > 1<<40 {
		return nil, fmt.Errorf("bench: memory back end size %d out of range (1 byte to 1 TiB)", size)
	}
	m := &MemBackend{}
	m.mu.data = make([]byte, size)
	return m, nil
}

// Size is the back end's size in bytes.
func (m *MemBackend) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.mu.data))
}

func (m *MemBackend) checkLocked(n int, off int64) error {
	if off < 0 || off+int64(n) > int64(len(m.mu.data)) || off+int64(n) < off {
		return fmt.Errorf("%w: %d bytes at %d, size %d", ErrOutOfRange, n, off, len(m.mu.data))
	}
	return nil
}

// ReadAt fills p from offset off.
func (m *MemBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.checkLocked(len(p), off); err != nil {
		return err
	}
	copy(p, m.mu.data[off:])
	return nil
}

// WriteAt stores p at offset off. Memory is as durable as it gets here, so
// fua changes nothing.
func (m *MemBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkLocked(len(p), off); err != nil {
		return err
	}
	copy(m.mu.data[off:], p)
	return nil
}

// Flush has nothing to make durable; it honours ctx only.
func (m *MemBackend) Flush(ctx context.Context) error { return ctx.Err() }
