package bitmap

import (
	"testing"
)

// TestHotPathsDoNotAllocate checks the write paths: no allocation per
// write on the host (Begin, End, Mark, IsDirty, Clear) or on the
// chunkserver (Log.Mark, Sync of a durable generation).
func TestHotPathsDoNotAllocate(t *testing.T) {
	w := openTestWIB(t, WIBConfig{Size: 1 << 30})
	off := int64(0)
	got := testing.AllocsPerRun(1000, func() {
		off = (off + 3*mib + 4096) % (1 << 30)
		tok := w.Begin(off, 8192)
		_ = w.IsDirty(off, 8192)
		w.End(tok, true)
		w.Clear(off / mib)
		w.Mark(off, 4096)
	})
	if got != 0 {
		t.Fatalf("WIB write path: %v allocations per write", got)
	}

	// A region's first write in a period persists the state, which
	// allocates; the steady state (the bit is durable) must not.
	l := newTestLog(t, LogConfig{Size: 10 << 30})
	ctx := t.Context()
	gen, _ := l.Mark(0, 10<<30)
	if err := l.Sync(ctx, gen, nopPersist); err != nil {
		t.Fatal(err)
	}
	got = testing.AllocsPerRun(1000, func() {
		off = (off + 65*mib + 4096) % (10 << 30)
		gen, _ := l.Mark(off, 8192)
		_ = l.Sync(ctx, gen, nopPersist)
	})
	if got != 0 {
		t.Fatalf("Log write path: %v allocations per write", got)
	}
}

func BenchmarkWIBMark(b *testing.B) {
	w, err := OpenWIB(WIBConfig{Size: 10 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		off := int64(0)
		for pb.Next() {
			off = (off + 7*mib + 4096) % (10 << 30)
			w.Mark(off, 4096)
		}
	})
}

func BenchmarkWIBBeginEnd(b *testing.B) {
	w, err := OpenWIB(WIBConfig{Size: 10 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		off := int64(0)
		for pb.Next() {
			off = (off + 7*mib + 4096) % (10 << 30)
			tok := w.Begin(off, 4096)
			w.End(tok, true)
		}
	})
}

func BenchmarkLogMark(b *testing.B) {
	l, err := NewLog(LogConfig{Size: 10 << 30})
	if err != nil {
		b.Fatal(err)
	}
	gen, _ := l.Mark(0, 10<<30) // the steady state: every bit durable
	if err := l.Sync(b.Context(), gen, nopPersist); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		off := int64(0)
		for pb.Next() {
			off = (off + 65*mib + 4096) % (10 << 30)
			gen, _ := l.Mark(off, 4096)
			if gen != 0 {
				b.Fatal("a durable bit asked for a persist")
			}
		}
	})
}
