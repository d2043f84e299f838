package raidtest

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
)

// TestDevice runs the raid.Device contract against a fresh device of at least
// 1 MiB from newDev. It checks reads of written data, zeroes after Trim,
// out-of-range errors and a seeded random workload against a flat model.
func TestDevice(t *testing.T, newDev func(t *testing.T) raid.Device) {
	t.Run("WriteRead", func(t *testing.T) {
		d := newDev(t)
		ctx := t.Context()
		p := bytes.Repeat([]byte{0xab}, 8192)
		if err := d.WriteAt(ctx, p, 4096, false); err != nil {
			t.Fatalf("WriteAt: %v", err)
		}
		got := make([]byte, len(p))
		if err := d.ReadAt(ctx, got, 4096); err != nil {
			t.Fatalf("ReadAt: %v", err)
		}
		if !bytes.Equal(got, p) {
			t.Fatal("read back differs from write")
		}
		if err := d.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
	})
	t.Run("Trim", func(t *testing.T) {
		d := newDev(t)
		ctx := t.Context()
		if err := d.WriteAt(ctx, bytes.Repeat([]byte{1}, 65536), 0, true); err != nil {
			t.Fatal(err)
		}
		if err := d.Trim(ctx, 0, 65536); err != nil {
			t.Fatalf("Trim: %v", err)
		}
		got := make([]byte, 65536)
		if err := d.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, make([]byte, 65536)) {
			t.Fatal("trimmed range does not read as zeroes")
		}
	})
	t.Run("OutOfRange", func(t *testing.T) {
		d := newDev(t)
		ctx := t.Context()
		if err := d.ReadAt(ctx, make([]byte, 4096), d.Size()); err == nil {
			t.Fatal("read past the end succeeded")
		}
		if err := d.WriteAt(ctx, make([]byte, 4096), d.Size()-2048, false); err == nil {
			t.Fatal("write across the end succeeded")
		}
	})
	t.Run("Cancelled", func(t *testing.T) {
		d := newDev(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		err := d.WriteAt(ctx, make([]byte, 512), 0, false)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("WriteAt with cancelled ctx: got %v, want context.Canceled", err)
		}
	})
	t.Run("RandomModel", func(t *testing.T) {
		d := newDev(t)
		ctx := t.Context()
		size := min(d.Size(), 4<<20)
		model := make([]byte, size)
		rng := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < 300; i++ {
			n := int64(rng.IntN(64)+1) * 512
			off := rng.Int64N(size-n+1) &^ 511
			if rng.IntN(3) == 0 {
				got := make([]byte, n)
				if err := d.ReadAt(ctx, got, off); err != nil {
					t.Fatalf("op %d ReadAt(%d,%d): %v", i, off, n, err)
				}
				if !bytes.Equal(got, model[off:off+n]) {
					t.Fatalf("op %d: read at %d length %d differs from model", i, off, n)
				}
				continue
			}
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.IntN(256))
			}
			if err := d.WriteAt(ctx, p, off, rng.IntN(8) == 0); err != nil {
				t.Fatalf("op %d WriteAt(%d,%d): %v", i, off, n, err)
			}
			copy(model[off:], p)
		}
		got := make([]byte, size)
		if err := d.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatal("final contents differ from model")
		}
	})
}
