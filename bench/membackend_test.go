package bench

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
)

func TestMemBackend(t *testing.T) {
	ctx := t.Context()
	m, err := NewMemBackend(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if m.Size() != 1<<20 {
		t.Fatalf("Size = %d", m.Size())
	}
	w := bytes.Repeat([]byte{0xab}, 4096)
	if err := m.WriteAt(ctx, w, 8192, false); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 3*4096)
	if err := m.ReadAt(ctx, r, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r[4096:8192], w) || !bytes.Equal(r[:4096], make([]byte, 4096)) || !bytes.Equal(r[8192:], make([]byte, 4096)) {
		t.Error("read back does not match: written block or its zero neighbours differ")
	}
	if err := m.Flush(ctx); err != nil {
		t.Error(err)
	}
}

func TestMemBackendErrors(t *testing.T) {
	m, err := NewMemBackend(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	tests := []struct {
		name string
		op   func() error
		want error
	}{
		{"read past end", func() error { return m.ReadAt(ctx, make([]byte, 512), 64<<10) }, ErrOutOfRange},
		{"write straddling end", func() error { return m.WriteAt(ctx, make([]byte, 1024), 63<<10+512, false) }, ErrOutOfRange},
		{"negative offset", func() error { return m.ReadAt(ctx, make([]byte, 512), -512) }, ErrOutOfRange},
		{"cancelled read", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			return m.ReadAt(c, make([]byte, 512), 0)
		}, context.Canceled},
		{"cancelled flush", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			return m.Flush(c)
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
	for _, size := range []int64{0, -1, 1<<40 + 1} {
		if _, err := NewMemBackend(size); err == nil {
			t.Errorf("NewMemBackend(%d) succeeded", size)
		}
	}
}

// TestMemBackendConcurrent writes distinct blocks from many goroutines
// (run with -race) and checks every block afterwards.
func TestMemBackendConcurrent(t *testing.T) {
	const blocks = 256
	m, err := NewMemBackend(blocks * 512)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			buf := make([]byte, 512)
			for b := g; b < blocks; b += 8 {
				for i := range buf {
					buf[i] = byte(b)
				}
				if err := m.WriteAt(ctx, buf, int64(b)*512, false); err != nil {
					t.Error(err)
					return
				}
				if err := m.ReadAt(ctx, buf, int64((b+1)%blocks)*512); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	buf := make([]byte, 512)
	for b := range blocks {
		if err := m.ReadAt(ctx, buf, int64(b)*512); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{byte(b)}, 512)) {
			t.Fatalf("block %d holds %x…", b, buf[:4])
		}
	}
}
