package store

import (
	"errors"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// gateFS wraps an FS: the first operation of kind op on a data file blocks
// until release, and a Close of that file while such an operation is
// running is recorded.
type gateFS struct {
	vfs.FS
	op       string
	entered  chan struct{}
	release  chan struct{}
	once     sync.Once
	armed    atomic.Bool // set once the chunk is created; Create's own I/O is not gated
	inflight atomic.Int32
	closedIn atomic.Bool // Close ran while the operation was in flight
	closed   chan struct{}
}

func newGateFS(op string) *gateFS {
	return &gateFS{FS: vfs.NewMem(), op: op, entered: make(chan struct{}), release: make(chan struct{}), closed: make(chan struct{})}
}

func (g *gateFS) OpenFile(name string, flag int, perm fs.FileMode) (vfs.File, error) {
	f, err := g.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return g.wrap(f, name), nil
}

type gateFile struct {
	vfs.File
	g    *gateFS
	data bool
}

func (g *gateFS) wrap(f vfs.File, name string) vfs.File {
	return &gateFile{File: f, g: g, data: strings.HasSuffix(name, ".chunk")}
}

func (f *gateFile) gate(op string) func() {
	if !f.data || op != f.g.op || !f.g.armed.Load() {
		return func() {}
	}
	f.g.inflight.Add(1)
	f.g.once.Do(func() {
		close(f.g.entered)
		<-f.g.release
	})
	return func() { f.g.inflight.Add(-1) }
}

func (f *gateFile) ReadAt(p []byte, off int64) (int, error) {
	defer f.gate("read")()
	return f.File.ReadAt(p, off)
}

func (f *gateFile) WriteAt(p []byte, off int64) (int, error) {
	defer f.gate("write")()
	return f.File.WriteAt(p, off)
}

func (f *gateFile) Sync() error {
	defer f.gate("sync")()
	return f.File.Sync()
}

func (f *gateFile) PunchHole(off, length int64) error {
	defer f.gate("punch")()
	return f.File.PunchHole(off, length)
}

func (f *gateFile) ZeroRange(off, length int64) error {
	defer f.gate("zero")()
	return f.File.ZeroRange(off, length)
}

func (f *gateFile) SeekData(off int64) (int64, error) {
	defer f.gate("seek")()
	return f.File.SeekData(off)
}

func (f *gateFile) Close() error {
	if f.data {
		if f.g.inflight.Load() > 0 {
			f.g.closedIn.Store(true)
		}
		select {
		case <-f.g.closed:
		default:
			close(f.g.closed)
		}
	}
	return f.File.Close()
}

// TestDeleteWaitsForIO: a Delete that races with a read, write, flush,
// trim, write-zeroes or extent query on the chunk never closes the data
// file under it: Delete waits for the operation, and an operation that
// starts after the Delete gets ErrClosed.
func TestDeleteWaitsForIO(t *testing.T) {
	tests := []struct {
		op string
		do func(c *Chunk) error
	}{
		{"read", func(c *Chunk) error { return c.ReadAt(make([]byte, 10), 0) }},
		{"write", func(c *Chunk) error { return c.WriteAt([]byte("w"), 0) }},
		{"sync", func(c *Chunk) error { return c.Sync() }},
		{"punch", func(c *Chunk) error { return c.Trim(0, 4096) }},
		{"zero", func(c *Chunk) error { return c.WriteZeroes(0, 4096, true) }},
		{"seek", func(c *Chunk) error { _, err := c.Extents(0, testSize); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			g := newGateFS(tt.op)
			s := openFS(t, g, nil)
			c, err := s.Create("c1", testSize)
			if err != nil {
				t.Fatal(err)
			}
			if tt.op == "sync" {
				// Make the chunk dirty so that the sync reaches the file.
				if err := c.WriteAt([]byte("d"), 0); err != nil {
					t.Fatal(err)
				}
			}
			g.armed.Store(true)
			ioDone := make(chan error, 1)
			go func() { ioDone <- tt.do(c) }()
			<-g.entered
			deleted := make(chan error, 1)
			go func() { deleted <- s.Delete("c1") }()
			// With the bug the Delete closes the file at once; give it
			// the chance, then let the operation finish.
			select {
			case <-g.closed:
			case <-time.After(100 * time.Millisecond):
			}
			close(g.release)
			if err := <-ioDone; err != nil {
				t.Errorf("the operation racing with Delete: %v", err)
			}
			if err := <-deleted; err != nil {
				t.Fatal(err)
			}
			if g.closedIn.Load() {
				t.Fatalf("Delete closed the data file while a %s was using it", tt.op)
			}
			if err := tt.do(c); !errors.Is(err, ErrClosed) {
				t.Fatalf("%s after Delete: %v, want ErrClosed", tt.op, err)
			}
		})
	}
}
