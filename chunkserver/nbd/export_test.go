package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// memExport is an Export over a byte slice.
type memExport struct {
	mu    sync.RWMutex
	data  []byte
	syncs atomic.Int64
}

func newMemExport(size int) *memExport { return &memExport{data: make([]byte, size)} }

func (m *memExport) Size() int64 { return int64(len(m.data)) }

func (m *memExport) ReadAt(p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return syscall.EINVAL
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memExport) WriteAt(p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return syscall.ENOSPC
	}
	copy(m.data[off:], p)
	return nil
}

func (m *memExport) Sync() error { m.syncs.Add(1); return nil }

func (m *memExport) Trim(off, length int64) error { return m.WriteZeroes(off, length, false) }

func (m *memExport) WriteZeroes(off, length int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

func (m *memExport) snapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

// fileExport is an Export over a sparse file: Sync is fdatasync, Trim and
// WriteZeroes punch holes, Extents uses SEEK_DATA/SEEK_HOLE.
type fileExport struct {
	f    *os.File
	size int64
}

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
	seekData        = 3
	seekHole        = 4
)

func newFileExport(t testing.TB, size int64) *fileExport {
	t.Helper()
	path := filepath.Join(t.TempDir(), "chunk")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fileExport{f: f, size: size}
}

func (e *fileExport) fd(fn func(fd int) error) error {
	rc, err := e.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func (e *fileExport) Size() int64 { return e.size }

func (e *fileExport) ReadAt(p []byte, off int64) error {
	n, err := e.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (e *fileExport) WriteAt(p []byte, off int64) error {
	_, err := e.f.WriteAt(p, off)
	return err
}

func (e *fileExport) Sync() error {
	return e.fd(func(fd int) error { return syscall.Fdatasync(fd) })
}

func (e *fileExport) Trim(off, length int64) error {
	return e.fd(func(fd int) error {
		return syscall.Fallocate(fd, fallocPunchHole|fallocKeepSize, off, length)
	})
}

func (e *fileExport) WriteZeroes(off, length int64, noHole bool) error {
	return e.fd(func(fd int) error {
		if !noHole {
			return syscall.Fallocate(fd, fallocPunchHole|fallocKeepSize, off, length)
		}
		err := syscall.Fallocate(fd, fallocZeroRange|fallocKeepSize, off, length)
		if !errors.Is(err, syscall.EOPNOTSUPP) {
			return err
		}
		if err := syscall.Fallocate(fd, fallocPunchHole|fallocKeepSize, off, length); err != nil {
			return err
		}
		return syscall.Fallocate(fd, fallocKeepSize, off, length)
	})
}

func (e *fileExport) Extents(off, length int64) ([]Extent, error) {
	var out []Extent
	end := min(off+length, e.size)
	err := e.fd(func(fd int) error {
		for pos := off; pos < end; {
			data, err := syscall.Seek(fd, pos, seekData)
			if errors.Is(err, syscall.ENXIO) {
				data = e.size
			} else if err != nil {
				return err
			}
			if data > pos {
				next := min(data, end)
				out = append(out, Extent{Length: next - pos, Flags: StateHole | StateZero})
				pos = next
				continue
			}
			hole, err := syscall.Seek(fd, pos, seekHole)
			if err != nil {
				return err
			}
			next := min(hole, end)
			out = append(out, Extent{Length: next - pos})
			pos = next
		}
		return nil
	})
	return out, err
}

// gateExport wraps an Export; while the gate is closed, ReadAt blocks.
type gateExport struct {
	Export
	gate    chan struct{}
	entered chan struct{} // receives one value per blocked ReadAt
}

func newGateExport(inner Export) *gateExport {
	return &gateExport{Export: inner, gate: make(chan struct{}), entered: make(chan struct{}, 64)}
}

func (g *gateExport) ReadAt(p []byte, off int64) error {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.gate
	return g.Export.ReadAt(p, off)
}

func (g *gateExport) open() { close(g.gate) }

// testLogger writes server logs to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// serveExports starts a Server on 127.0.0.1 with the given exports and stops
// it when the test ends. It returns the listener address.
func serveExports(t testing.TB, exports map[string]Export, tweak func(*ServerConfig)) string {
	t.Helper()
	cfg := ServerConfig{
		Lookup: func(name string) (Export, error) {
			if e, ok := exports[name]; ok {
				return e, nil
			}
			return nil, fmt.Errorf("export %q does not exist", name)
		},
		Logger: testLogger(t),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return ln.Addr().String()
}

func dial(t testing.TB, cfg ClientConfig) *Client {
	t.Helper()
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
