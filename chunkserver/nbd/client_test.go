package nbd

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// exportKinds builds each Export implementation the I/O tests run against.
var exportKinds = []struct {
	name string
	make func(t testing.TB, size int64) Export
}{
	{"mem", func(_ testing.TB, size int64) Export { return newMemExport(int(size)) }},
	{"file", func(t testing.TB, size int64) Export { return newFileExport(t, size) }},
}

func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestClientBasicIO(t *testing.T) {
	const size = 4 << 20
	for _, kind := range exportKinds {
		t.Run(kind.name, func(t *testing.T) {
			exp := kind.make(t, size)
			addr := serveExports(t, map[string]Export{"c1": exp}, nil)
			c := dial(t, ClientConfig{Addr: addr, Export: "c1"})
			ctx := t.Context()
			if c.Size() != size {
				t.Fatalf("Size = %d, want %d", c.Size(), size)
			}

			data := pattern(100_000, 1)
			if err := c.WriteAt(ctx, data, 12345, false); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteAt(ctx, data[:4096], size-4096, true); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if err := c.ReadAt(ctx, got, 12345); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("read back differs from write")
			}
			if err := c.ReadAt(ctx, got[:4096], size-4096); err != nil || !bytes.Equal(got[:4096], data[:4096]) {
				t.Fatalf("read of last block: err %v, equal %v", err, bytes.Equal(got[:4096], data[:4096]))
			}

			// Trim and write zeroes read back as zeroes.
			if err := c.Trim(ctx, 16384, 8192); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteZeroes(ctx, 40000, 5000); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, len(data))
			copy(want, data)
			clear(want[16384-12345 : 16384-12345+8192])
			clear(want[40000-12345 : 40000-12345+5000])
			if err := c.ReadAt(ctx, got, 12345); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("trimmed or zeroed ranges do not read back as zeroes")
			}

			// Out of range requests never reach the server.
			for _, tc := range []struct {
				off int64
				n   int
			}{{size - 10, 11}, {-1, 1}, {size + 1, 0}} {
				if err := c.ReadAt(ctx, make([]byte, tc.n), tc.off); !errors.Is(err, ErrOutOfRange) {
					t.Errorf("ReadAt(%d, %d) = %v, want ErrOutOfRange", tc.off, tc.n, err)
				}
			}
			if err := c.Trim(ctx, size-10, 11); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("Trim past end = %v, want ErrOutOfRange", err)
			}
			if err := c.ReadAt(ctx, nil, size); err != nil {
				t.Errorf("empty read at end: %v", err)
			}
		})
	}
}

func TestClientFlushAndFUASync(t *testing.T) {
	exp := newMemExport(1 << 20)
	addr := serveExports(t, map[string]Export{"c": exp}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	ctx := t.Context()
	steps := []struct {
		name string
		do   func() error
		sync int64
	}{
		{"plain write", func() error { return c.WriteAt(ctx, []byte("abc"), 0, false) }, 0},
		{"fua write", func() error { return c.WriteAt(ctx, []byte("abc"), 0, true) }, 1},
		{"flush", func() error { return c.Flush(ctx) }, 1},
		{"trim", func() error { return c.Trim(ctx, 0, 4096) }, 0},
		{"write zeroes", func() error { return c.WriteZeroes(ctx, 0, 4096) }, 0},
	}
	for _, s := range steps {
		before := exp.syncs.Load()
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if d := exp.syncs.Load() - before; d != s.sync {
			t.Errorf("%s: %d syncs, want %d", s.name, d, s.sync)
		}
	}
}

// TestClientStartWrite: writes started together all land once waited
// for, a FUA one syncs, and StartWrite declines (nil, nothing sent) a write
// larger than one request; an out-of-range write or one on a closed client
// fails at Wait.
func TestClientStartWrite(t *testing.T) {
	exp := newMemExport(1 << 20)
	addr := serveExports(t, map[string]Export{"c": exp}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	ctx := t.Context()
	data := pattern(64<<10, 7)
	var calls []*Call
	for i := range 16 {
		cl := c.StartWrite(data[i*4096:(i+1)*4096], int64(i)*4096, i == 15)
		if cl == nil {
			t.Fatalf("StartWrite %d declined a 4 KiB write", i)
		}
		calls = append(calls, cl)
	}
	for i, cl := range calls {
		if err := cl.Wait(ctx); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	got := make([]byte, len(data))
	if err := exp.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the started writes did not all land")
	}
	if exp.syncs.Load() != 1 {
		t.Errorf("%d syncs, want 1 (the FUA write)", exp.syncs.Load())
	}
	if cl := c.StartWrite(make([]byte, MaxPayload+1), 0, false); cl != nil {
		t.Error("StartWrite took a write larger than one request")
	}
	if err := c.StartWrite(data[:4096], 1<<20, false).Wait(ctx); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write past the end: %v, want ErrOutOfRange", err)
	}
	c.Close()
	if err := c.StartWrite(data[:4096], 0, false).Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("write on a closed client: %v, want ErrClosed", err)
	}
}

// TestRandomConcurrentIO runs seeded random operations from several
// goroutines, each on its own region, checks every read against a model and
// finally compares the whole export.
func TestRandomConcurrentIO(t *testing.T) {
	const (
		workers = 8
		ops     = 500
		region  = 1 << 20
		size    = workers * region
	)
	for _, kind := range exportKinds {
		t.Run(kind.name, func(t *testing.T) {
			exp := kind.make(t, size)
			addr := serveExports(t, map[string]Export{"c": exp}, nil)
			c := dial(t, ClientConfig{Addr: addr, Export: "c", Timeout: 20 * time.Second})
			ctx := t.Context()
			model := make([]byte, size)
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(42, uint64(w)))
					base := int64(w * region)
					m := model[base : base+region]
					buf := make([]byte, 64<<10)
					for i := range ops {
						n := 1 + r.IntN(64<<10)
						off := r.IntN(region - n + 1)
						var err error
						switch k := r.IntN(100); {
						case k < 45:
							p := pattern(n, uint64(w*ops+i))
							err = c.WriteAt(ctx, p, base+int64(off), k < 3)
							copy(m[off:], p)
						case k < 85:
							err = c.ReadAt(ctx, buf[:n], base+int64(off))
							if err == nil && !bytes.Equal(buf[:n], m[off:off+n]) {
								err = fmt.Errorf("worker %d op %d: read %d+%d differs from model", w, i, off, n)
							}
						case k < 92:
							err = c.Trim(ctx, base+int64(off), int64(n))
							clear(m[off : off+n])
						case k < 98:
							err = c.WriteZeroes(ctx, base+int64(off), int64(n))
							clear(m[off : off+n])
						default:
							err = c.Flush(ctx)
						}
						if err != nil {
							errs <- fmt.Errorf("worker %d op %d: %w", w, i, err)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			got := make([]byte, size)
			if err := c.ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(got, model); i >= 0 {
				t.Fatalf("export differs from model at byte %d", i)
			}
			if m, ok := exp.(*memExport); ok {
				if i := firstDiff(m.snapshot(), model); i >= 0 {
					t.Fatalf("server memory differs from model at byte %d", i)
				}
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestClientSplitsLargeIO lowers the client's maximum payload so that one
// call becomes many pipelined requests.
func TestClientSplitsLargeIO(t *testing.T) {
	exp := newMemExport(4 << 20)
	addr := serveExports(t, map[string]Export{"c": exp}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	c.maxPayload = 64 << 10
	ctx := t.Context()
	data := pattern(1<<20+123, 7)
	if err := c.WriteAt(ctx, data, 999, true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(exp.snapshot()[999:999+len(data)], data) {
		t.Fatal("split write did not land")
	}
	got := make([]byte, len(data))
	if err := c.ReadAt(ctx, got, 999); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("split read differs")
	}
	if err := c.WriteZeroes(ctx, 999, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(exp.snapshot()[999:999+len(data)], make([]byte, len(data))) {
		t.Fatal("split write zeroes did not land")
	}
}

// fullExport refuses writes at or past limit for lack of space.
type fullExport struct {
	*memExport
	limit int64
}

func (e fullExport) WriteAt(p []byte, off int64) error {
	if off+int64(len(p)) > e.limit {
		return syscall.ENOSPC
	}
	return e.memExport.WriteAt(p, off)
}

// TestClientSplitWriteOutOfSpace: ENOSPC tells the caller that nothing
// changed, so a split write whose first pieces were stored before a later
// one found no space fails with an error that is not ENOSPC; a split write
// that no piece stored is ENOSPC.
func TestClientSplitWriteOutOfSpace(t *testing.T) {
	exp := fullExport{memExport: newMemExport(4 << 20), limit: 1 << 20}
	addr := serveExports(t, map[string]Export{"c": exp}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	c.maxPayload = 64 << 10
	ctx := t.Context()
	err := c.WriteAt(ctx, pattern(256<<10, 3), 1<<20-128<<10, false)
	if err == nil || errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("split write stored in part: %v, want an error that is not ENOSPC", err)
	}
	if err := c.WriteAt(ctx, pattern(256<<10, 3), 2<<20, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("split write stored nowhere: %v, want ENOSPC", err)
	}
}

func TestClientBlockStatus(t *testing.T) {
	const size = 1 << 20
	exp := newFileExport(t, size)
	var logCalls atomic.Int64
	addr := serveExports(t, map[string]Export{"c": exp}, func(cfg *ServerConfig) {
		cfg.MetaContexts = map[string]MetaContext{
			"chunkraid:log": func(e Export, off, length int64) ([]Extent, error) {
				if e != exp {
					return nil, errors.New("wrong export")
				}
				logCalls.Add(1)
				// Two fixed regions: dirty below 256 KiB, clean above.
				if off < 256<<10 {
					return []Extent{{Length: 256<<10 - off, Flags: 1}, {Length: size - 256<<10}}, nil
				}
				return []Extent{{Length: size - off}}, nil
			},
		}
	})
	c := dial(t, ClientConfig{Addr: addr, Export: "c", MetaContexts: []string{ContextBaseAllocation, "chunkraid:log"}})
	ctx := t.Context()

	ext, err := c.BlockStatus(ctx, ContextBaseAllocation, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Extent{{size, StateHole | StateZero}}; !equalExtents(ext, want) {
		t.Fatalf("empty file: %v, want %v", ext, want)
	}
	if err := c.WriteAt(ctx, pattern(64<<10, 3), 128<<10, false); err != nil {
		t.Fatal(err)
	}
	ext, err = c.BlockStatus(ctx, ContextBaseAllocation, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{128 << 10, StateHole | StateZero}, {64 << 10, 0}, {size - 192<<10, StateHole | StateZero}}
	if !equalExtents(ext, want) {
		t.Fatalf("after write: %v, want %v", ext, want)
	}
	// A query inside the data extent is clipped to the request.
	ext, err = c.BlockStatus(ctx, ContextBaseAllocation, 130<<10, 4096)
	if err != nil || !equalExtents(ext, []Extent{{4096, 0}}) {
		t.Fatalf("clipped query: %v, %v", ext, err)
	}
	ext, err = c.BlockStatus(ctx, "chunkraid:log", 0, size)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Extent{{256 << 10, 1}, {size - 256<<10, 0}}; !equalExtents(ext, want) {
		t.Fatalf("chunkraid:log: %v, want %v", ext, want)
	}
	if logCalls.Load() == 0 {
		t.Fatal("named context function never called")
	}
	if _, err := c.BlockStatus(ctx, "x-other:ctx", 0, size); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("unselected context: %v, want ErrNotSupported", err)
	}
}

func equalExtents(a, b []Extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDialErrors(t *testing.T) {
	addr := serveExports(t, map[string]Export{"c": newMemExport(4096)}, nil)
	tests := []struct {
		name  string
		cfg   ClientConfig
		check func(error) bool
		want  string
	}{
		{
			name: "unknown export carries the server's message",
			cfg:  ClientConfig{Addr: addr, Export: "nope"},
			check: func(err error) bool {
				var oe *OptionError
				return errors.As(err, &oe) && oe.Reply == RepErrUnknown && strings.Contains(err.Error(), `export "nope" does not exist`)
			},
			want: "OptionError NBD_REP_ERR_UNKNOWN with the lookup message",
		},
		{
			name:  "missing meta context",
			cfg:   ClientConfig{Addr: addr, Export: "c", MetaContexts: []string{"x-none:thing"}},
			check: func(err error) bool { return errors.Is(err, ErrNotSupported) },
			want:  "ErrNotSupported",
		},
		{
			name:  "no address",
			cfg:   ClientConfig{Export: "c"},
			check: func(err error) bool { return err != nil && strings.Contains(err.Error(), "Addr") },
			want:  "a config error naming Addr",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(t.Context(), tc.cfg)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !tc.check(err) {
				t.Fatalf("Dial error %v, want %s", err, tc.want)
			}
		})
	}
}

// TestDialTimeoutCoversHandshake dials a listener that accepts and then
// stays silent.
func TestDialTimeoutCoversHandshake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	start := time.Now()
	_, err = Dial(t.Context(), ClientConfig{Addr: ln.Addr().String(), DialTimeout: 200 * time.Millisecond})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Dial took %v", d)
	}
}

func TestClientTimeout(t *testing.T) {
	gate := newGateExport(newMemExport(1 << 20))
	defer gate.open()
	addr := serveExports(t, map[string]Export{"c": gate}, nil)
	const timeout = 300 * time.Millisecond
	c := dial(t, ClientConfig{Addr: addr, Export: "c", Timeout: timeout})
	start := time.Now()
	err := c.ReadAt(t.Context(), make([]byte, 4096), 0)
	d := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("ReadAt = %v, want ErrTimeout", err)
	}
	if d < timeout || d > timeout+time.Second {
		t.Fatalf("timed out after %v, want about %v", d, timeout)
	}
	start = time.Now()
	err = c.WriteAt(t.Context(), []byte("x"), 0, false)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("request after timeout = %v, want ErrClosed", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("request after timeout took %v, want a fast failure", d)
	}
}

// TestConnectionLoss closes the server side while requests are pending.
func TestConnectionLoss(t *testing.T) {
	gate := newGateExport(newMemExport(1 << 20))
	srv, err := NewServer(ServerConfig{
		Lookup: func(string) (Export, error) { return gate, nil },
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan struct{})
	go func() {
		defer close(served)
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		srv.ServeConn(ctx, nc)
	}()
	c := dial(t, ClientConfig{Addr: ln.Addr().String(), Export: "c"})

	const n = 4
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- c.ReadAt(context.Background(), make([]byte, 512), int64(i)*512) }()
	}
	for range n {
		select {
		case <-gate.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("reads never reached the export")
		}
	}
	cancel() // the server closes the connection
	for range n {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("pending read = %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("pending read did not fail after the connection closed")
		}
	}
	start := time.Now()
	if err := c.Flush(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("later request = %v, want ErrClosed", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("later request took %v", d)
	}
	gate.open()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeConn did not return")
	}
}

// TestClientCancel abandons a read and checks that the late reply neither
// touches the caller's buffer nor disturbs the connection.
func TestClientCancel(t *testing.T) {
	mem := newMemExport(1 << 20)
	copy(mem.data, bytes.Repeat([]byte{0xab}, 8192))
	gate := newGateExport(mem)
	addr := serveExports(t, map[string]Export{"c": gate}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})

	ctx, cancel := context.WithCancel(t.Context())
	buf := make([]byte, 8192)
	errc := make(chan error, 1)
	go func() { errc <- c.ReadAt(ctx, buf, 0) }()
	<-gate.entered
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ReadAt = %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("cancelled ReadAt did not return")
	}
	gate.open() // the reply now arrives and must be discarded
	got := make([]byte, 8192)
	if err := c.ReadAt(t.Context(), got, 0); err != nil {
		t.Fatal(err)
	}
	if got[0] != 0xab || got[8191] != 0xab {
		t.Fatal("second read returned wrong data")
	}
	if !bytes.Equal(buf, make([]byte, 8192)) {
		t.Fatal("abandoned buffer was written after ReadAt returned")
	}
}

func TestMultiConn(t *testing.T) {
	exp := newFileExport(t, 1<<20)
	addr := serveExports(t, map[string]Export{"c": exp}, nil)
	a := dial(t, ClientConfig{Addr: addr, Export: "c"})
	b := dial(t, ClientConfig{Addr: addr, Export: "c"})
	if a.neg.flags&FlagCanMultiConn == 0 {
		t.Fatal("server does not advertise CAN_MULTI_CONN")
	}
	data := pattern(8192, 9)
	if err := a.WriteAt(t.Context(), data, 4096, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := b.ReadAt(t.Context(), got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("second connection: err %v equal %v", err, bytes.Equal(got, data))
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	srv, err := NewServer(ServerConfig{Lookup: func(string) (Export, error) { return newMemExport(4096), nil }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c := dial(t, ClientConfig{Addr: ln.Addr().String()})
	if err := c.WriteAt(t.Context(), []byte("x"), 0, false); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Flush(t.Context())
		if errors.Is(err, ErrClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client still works after server shutdown: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Fatal("listener still accepts after shutdown")
	}
}

func TestClientCloseFailsLaterRequests(t *testing.T) {
	addr := serveExports(t, map[string]Export{"c": newMemExport(4096)}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.ReadAt(t.Context(), make([]byte, 10), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadAt after Close = %v, want ErrClosed", err)
	}
}

func TestNewServerValidation(t *testing.T) {
	lookup := func(string) (Export, error) { return nil, errors.New("none") }
	ctxFn := func(Export, int64, int64) ([]Extent, error) { return nil, nil }
	tests := []struct {
		name string
		cfg  ServerConfig
		want string
	}{
		{"no lookup", ServerConfig{}, "Lookup is required"},
		{"negative in flight", ServerConfig{Lookup: lookup, MaxInFlight: -1}, "MaxInFlight"},
		{"context without colon", ServerConfig{Lookup: lookup, MetaContexts: map[string]MetaContext{"nocolon": ctxFn}}, "namespace:leaf"},
		{"reserved namespace", ServerConfig{Lookup: lookup, MetaContexts: map[string]MetaContext{"base:other": ctxFn}}, "reserved"},
		{"empty leaf", ServerConfig{Lookup: lookup, MetaContexts: map[string]MetaContext{"x-a:": ctxFn}}, "namespace:leaf"},
		{"space in namespace", ServerConfig{Lookup: lookup, MetaContexts: map[string]MetaContext{"a b:c": ctxFn}}, "space"},
		{"nil function", ServerConfig{Lookup: lookup, MetaContexts: map[string]MetaContext{"x-a:b": nil}}, "no function"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewServer(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewServer = %v, want error containing %q", err, tc.want)
			}
		})
	}
	if _, err := NewServer(ServerConfig{Lookup: lookup, MetaContexts: map[string]MetaContext{"chunkraid:log": ctxFn}}); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
}

// TestExportNameFallback talks to a fake old server that knows neither
// structured replies nor GO: the client must fall back to EXPORT_NAME and
// still read with simple replies.
func TestExportNameFallback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hflags uint16
	}{
		{"no zeroes", FlagFixedNewstyle | FlagNoZeroes},
		{"padded", FlagFixedNewstyle},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			srvErr := make(chan error, 1)
			go func() { srvErr <- oldServer(ln, tc.hflags) }()
			c := dial(t, ClientConfig{Addr: ln.Addr().String(), Export: "old"})
			if c.Size() != 8192 || c.neg.structured {
				t.Fatalf("size %d structured %v", c.Size(), c.neg.structured)
			}
			got := make([]byte, 8)
			if err := c.ReadAt(t.Context(), got, 16); err != nil {
				t.Fatal(err)
			}
			if string(got) != "fallback" {
				t.Fatalf("read %q", got)
			}
			if err := <-srvErr; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// oldServer answers one connection the way an old server would and serves
// one READ.
func oldServer(ln net.Listener, hflags uint16) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(AppendGreeting(nil, hflags)); err != nil {
		return err
	}
	var b [OptionHeaderSize]byte
	if _, err := io.ReadFull(nc, b[:ClientFlagsSize]); err != nil {
		return err
	}
	cflags := be.Uint32(b[:])
	if (cflags&FlagCNoZeroes != 0) != (hflags&FlagNoZeroes != 0) {
		return fmt.Errorf("client flags %#x do not match handshake flags %#x", cflags, hflags)
	}
	for {
		if _, err := io.ReadFull(nc, b[:]); err != nil {
			return err
		}
		h, err := DecodeOptionHeader(b[:])
		if err != nil {
			return err
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(nc, data); err != nil {
			return err
		}
		if h.Option == OptExportName {
			if string(data) != "old" {
				return fmt.Errorf("export name %q", data)
			}
			_, err := nc.Write(AppendExportNameReply(nil, 8192, FlagHasFlags, hflags&FlagNoZeroes != 0))
			if err != nil {
				return err
			}
			break
		}
		reply := AppendOptionReplyHeader(nil, OptionReplyHeader{Option: h.Option, Type: RepErrUnsup})
		if _, err := nc.Write(reply); err != nil {
			return err
		}
	}
	var rb [RequestHeaderSize]byte
	if _, err := io.ReadFull(nc, rb[:]); err != nil {
		return err
	}
	q, err := DecodeRequest(rb[:])
	if err != nil || q.Type != CmdRead || q.Offset != 16 || q.Length != 8 {
		return fmt.Errorf("request %+v err %v", q, err)
	}
	_, err = nc.Write(append(AppendSimpleReply(nil, SimpleReply{Cookie: q.Cookie}), "fallback"...))
	return err
}

// device repeats the method set raid.Device consumes; this package may not
// import raid, so the check is structural.
type device interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64) error
	Size() int64
}

var _ device = (*Client)(nil)

// TestErrorIsErrno: a server's error is the Linux errno of the same value,
// and no other.
func TestErrorIsErrno(t *testing.T) {
	for v, en := range map[uint32]syscall.Errno{EPERM: syscall.EPERM, EIO: syscall.EIO, ENOMEM: syscall.ENOMEM,
		EINVAL: syscall.EINVAL, ENOSPC: syscall.ENOSPC, EOVERFLOW: syscall.EOVERFLOW, ENOTSUP: syscall.ENOTSUP,
		ESHUTDOWN: syscall.ESHUTDOWN} {
		err := fmt.Errorf("member 1: %w", &Error{Errno: v})
		if !errors.Is(err, en) {
			t.Errorf("%s is not %v", ErrnoName(v), en)
		}
		if v != EIO && errors.Is(err, syscall.EIO) {
			t.Errorf("%s is EIO", ErrnoName(v))
		}
	}
}

// TestServerObserve: every request answered is observed once, with its
// command, length and the error value of its reply.
func TestServerObserve(t *testing.T) {
	type seen struct {
		cmd    uint16
		length uint32
		errno  uint32
	}
	var mu sync.Mutex
	var got []seen
	exp := fullExport{memExport: newMemExport(4 << 20), limit: 1 << 20}
	addr := serveExports(t, map[string]Export{"c": exp}, func(cfg *ServerConfig) {
		cfg.Observe = func(cmd uint16, length, errno uint32, took time.Duration) {
			if took < 0 {
				t.Errorf("negative time %v", took)
			}
			mu.Lock()
			got = append(got, seen{cmd, length, errno})
			mu.Unlock()
		}
	})
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	ctx := t.Context()
	if err := c.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(ctx, make([]byte, 4096), 2<<20, false); !errors.Is(err, syscall.ENOSPC) {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Observed after the reply is queued: wait for the last ones.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 4 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// Observed after the reply is queued: the client may see the reply
	// first, so the order is not checked.
	want := []seen{{CmdWrite, 4096, 0}, {CmdRead, 512, 0}, {CmdWrite, 4096, ENOSPC}, {CmdFlush, 0, 0}}
	order := func(a, b seen) int { return cmp.Or(cmp.Compare(a.cmd, b.cmd), cmp.Compare(a.errno, b.errno)) }
	slices.SortFunc(got, order)
	slices.SortFunc(want, order)
	if !slices.Equal(got, want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}
