package iscsi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memBackend is an in-memory Backend with fault injection.
type memBackend struct {
	mu       sync.RWMutex
	data     []byte
	readErr  atomic.Bool
	writeErr atomic.Bool
	flushErr atomic.Bool
	delay    atomic.Int64 // nanoseconds added to every ReadAt and WriteAt
	flushes  atomic.Int64
	fuaCount atomic.Int64
}

var errInjected = errors.New("injected back-end failure")

func newMemBackend(size int) *memBackend { return &memBackend{data: make([]byte, size)} }

func (m *memBackend) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

// grow extends the device by n zero bytes, as a volume grows online.
func (m *memBackend) grow(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.data = append(m.data, make([]byte, n)...)
}

func (m *memBackend) wait(ctx context.Context) error {
	d := time.Duration(m.delay.Load())
	if d == 0 {
		return ctx.Err()
	}
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *memBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	if m.readErr.Load() {
		return errInjected
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return errors.New("read out of range")
	}
	copy(p, m.data[off:])
	return nil
}

func (m *memBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := m.wait(ctx); err != nil {
		return err
	}
	if m.writeErr.Load() {
		return errInjected
	}
	if fua {
		m.fuaCount.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return errors.New("write out of range")
	}
	copy(m.data[off:], p)
	return nil
}

func (m *memBackend) Flush(ctx context.Context) error {
	m.flushes.Add(1)
	if m.flushErr.Load() {
		return errInjected
	}
	return ctx.Err()
}

func (m *memBackend) snapshot(off, n int) []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data[off:off+n]...)
}

const testIQN = "iqn.2026-11.io.chunkraid:demo"

// testLogger writes to the test log when -v is given, and discards
// otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("ISCSI_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// startServer serves srv on a loopback port until the test ends and
// returns the address.
func startServer(t testing.TB, srv *Server) string {
	t.Helper()
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
		case <-time.After(20 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	return ln.Addr().String()
}

// newTestServer starts a server with one target on a memBackend.
func newTestServer(t testing.TB, cfg Config, size int) (*Server, *memBackend, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	be := newMemBackend(size)
	if err := srv.AddTarget(testIQN, be, "demo-serial-0001"); err != nil {
		t.Fatal(err)
	}
	return srv, be, startServer(t, srv)
}
