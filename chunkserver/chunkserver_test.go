package chunkserver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/budget"
	"github.com/chunkraid/chunkraid/chunkserver/control"
	"github.com/chunkraid/chunkraid/chunkserver/internal/store"
	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

func TestRegistrationAdvertisesControlAddr(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	reg := meta.lastRegistration()
	if reg.ControlAddr != cs.ctlAddr || reg.Addr != cs.nbdAddr {
		t.Fatalf("registered addr %q control %q, want %q and %q", reg.Addr, reg.ControlAddr, cs.nbdAddr, cs.ctlAddr)
	}
	if cs.s.logPeriod != time.Minute || cs.s.ioTimeout != 5*time.Second || cs.s.secret != testSecret {
		t.Fatalf("configured T=%v t_io=%v secret %q", cs.s.logPeriod, cs.s.ioTimeout, cs.s.secret)
	}
}

// TestHandshakeRefusals: wrong token, old epoch, bare id and unknown chunk
// are refused at handshake, with a message the client shows.
func TestHandshakeRefusals(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	if _, err := cs.ctl.Fence(t.Context(), "c1", cred("c1", "h1", 5)); err != nil {
		t.Fatal(err)
	}
	badToken := api.ExportName{Chunk: "c1", Host: "h1", Epoch: 5, Token: api.ExportToken("00", "c1", "h1", 5)}.String()
	tests := []struct {
		name, export, want string
	}{
		{"wrong token", badToken, "bad access token for chunk c1"},
		{"token of another host", strings.Replace(exportName("c1", "h1", 5), "host=h1", "host=h2", 1), "bad access token for chunk c1"},
		{"old epoch", exportName("c1", "h1", 4), "chunk c1 is fenced at epoch 5; this host presented epoch 4"},
		{"bare chunk id", "c1", "<chunk>;host=<host>;epoch=<epoch>;token=<token>"},
		{"unknown chunk", exportName("c9", "h1", 5), "no chunk c9 on chunkserver cs1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: cs.nbdAddr, Export: tt.export, DialTimeout: 5 * time.Second})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("nbd client: %v, want a refusal saying %q", err, tt.want)
			}
			// libnbd 1.14 prints the server's message in its debug
			// log ("server error message: ..."), not in the error.
			out, err := runToolEnv(t, []string{"LIBNBD_DEBUG=1"}, "nbdinfo", "nbd://"+cs.nbdAddr+"/"+tt.export)
			if err == nil || !strings.Contains(out, "server error message: ") || !strings.Contains(out, tt.want) {
				t.Fatalf("nbdinfo: %v\n%s\nwant a refusal saying %q", err, out, tt.want)
			}
		})
	}
	// The current epoch and a newer one are accepted.
	for _, e := range []int64{5, 6} {
		c := cs.dial(t, exportName("c1", "h1", e), nil)
		if c.Size() != testChunkSize {
			t.Fatalf("size %d", c.Size())
		}
	}
	out, err := runTool(t, "nbdinfo", "nbd://"+cs.nbdAddr+"/"+exportName("c1", "h1", 5))
	if err != nil || !strings.Contains(out, "export-size: 8388608") {
		t.Fatalf("nbdinfo with a valid name: %v\n%s", err, out)
	}
	// nbdinfo's NBD_OPT_INFO registers nothing, and it ends with
	// NBD_CMD_DISC: the LOG stays unpinned.
	c, _ := cs.s.store.Get("c1")
	waitFor(t, "nbdinfo's connection to end", func() bool { return cs.s.openSessions(c) == 2 })
	if c.Log().Pinned() {
		t.Fatal("nbdinfo's clean disconnect pinned the LOG")
	}
}

// TestDeleteClosesConnections: a chunk the metaserver deletes loses its
// connections and is no longer served.
func TestDeleteClosesConnections(t *testing.T) {
	meta := newFakeMeta(t, "c1", "c2")
	cs := startCS(t, meta, t.TempDir(), nil)
	c := cs.dial(t, exportName("c1", "h1", 1), nil)
	keep := cs.dial(t, exportName("c2", "h1", 1), nil)
	meta.setChunks([]api.ChunkAssignment{
		{ID: "c1", SizeBytes: testChunkSize, State: api.ChunkDeleting},
		{ID: "c2", SizeBytes: testChunkSize, State: api.ChunkActive},
	})
	waitFor(t, "c1 to be deleted", func() bool { _, err := cs.s.store.Get("c1"); return err != nil })
	waitFor(t, "c1's connection to close", func() bool {
		return errors.Is(c.ReadAt(t.Context(), make([]byte, 512), 0), nbd.ErrClosed)
	})
	if _, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: cs.nbdAddr, Export: exportName("c1", "h1", 1)}); err == nil ||
		!strings.Contains(err.Error(), "no chunk c1") {
		t.Fatalf("open of a deleted chunk: %v", err)
	}
	if err := keep.WriteAt(t.Context(), []byte("k"), 0, true); err != nil {
		t.Fatalf("other chunk: %v", err)
	}
}

// stallWrites makes every WRITE whose offset is at stallOff wait for
// release, once it counts as in flight; entered receives a value when one
// is waiting.
type stall struct {
	off     int64
	entered chan struct{}
	release chan struct{}
}

func newStall(off int64) *stall {
	return &stall{off: off, entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (s *stall) hook(off int64) {
	if off != s.off {
		return
	}
	s.entered <- struct{}{}
	<-s.release
}

// TestFenceWaitsForInFlightWrite: a connection at epoch 1 has a slow write
// in flight; Fence(2) closes it and returns only after that write has
// landed; an epoch-1 open is refused afterwards.
func TestFenceWaitsForInFlightWrite(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	st := newStall(3 * testRegion)
	cs.s.beforeWrite = st.hook
	old := cs.dial(t, exportName("c1", "h1", 1), nil)

	payload := bytes.Repeat([]byte("late"), 1024)
	writeErr := make(chan error, 1)
	go func() { writeErr <- old.WriteAt(context.Background(), payload, 3*testRegion, false) }()
	<-st.entered

	fenced := make(chan error, 1)
	go func() {
		_, err := cs.ctl.Fence(context.Background(), "c1", cred("c1", "h2", 2))
		fenced <- err
	}()
	// The old connection is closed at once: its client fails the write.
	select {
	case err := <-writeErr:
		if !errors.Is(err, nbd.ErrClosed) {
			t.Fatalf("write on the fenced connection: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fenced connection not closed")
	}
	select {
	case err := <-fenced:
		t.Fatalf("fence returned (%v) while a write of the old connection was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	c, _ := cs.s.store.Get("c1")
	if got := c.MinEpoch(); got != 2 {
		t.Fatalf("min epoch %d during the fence, want 2", got)
	}
	// The write was admitted before the fence: it lands, and the fence
	// returns only after it has.
	close(st.release)
	select {
	case err := <-fenced:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fence did not return after the write finished")
	}
	got := make([]byte, len(payload))
	if err := c.ReadAt(got, 3*testRegion); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("when the fence returned the late write was not in the chunk (%v)", err)
	}

	if _, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: cs.nbdAddr, Export: exportName("c1", "h1", 1)}); err == nil ||
		!strings.Contains(err.Error(), "fenced at epoch 2; this host presented epoch 1") {
		t.Fatalf("epoch-1 open after the fence: %v", err)
	}
	other := cs.dial(t, exportName("c1", "h1", 2), nil) // opened after the fence, at its epoch
	if err := other.WriteAt(t.Context(), []byte("new"), 0, true); err != nil {
		t.Fatalf("connection at the new epoch: %v", err)
	}
	if n := cs.s.openSessions(c); n != 1 {
		t.Fatalf("%d open connections after the fence, want 1", n)
	}
}

// TestFenceAtCurrentEpochDrainsDroppedConnection: a host whose connection
// timed out fences at its own epoch; the fence waits for the dropped
// connection's write and closes every connection of that epoch, and a new
// connection at the epoch works.
func TestFenceAtCurrentEpochDrainsDroppedConnection(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	st := newStall(testRegion)
	cs.s.beforeWrite = st.hook
	live := cs.dial(t, exportName("c1", "h1", 3), nil)
	dead := cs.dial(t, exportName("c1", "h1", 3), func(c *nbd.ClientConfig) { c.Timeout = 100 * time.Millisecond })
	if err := dead.WriteAt(t.Context(), []byte("x"), testRegion, false); !errors.Is(err, nbd.ErrTimeout) {
		t.Fatalf("stalled write: %v, want ErrTimeout", err)
	}
	<-st.entered
	c, _ := cs.s.store.Get("c1")
	waitFor(t, "the server to see the dropped connection", func() bool { return cs.s.openSessions(c) == 1 })
	fenced := make(chan error, 1)
	go func() {
		_, err := cs.ctl.Fence(context.Background(), "c1", cred("c1", "h1", 3))
		fenced <- err
	}()
	select {
	case err := <-fenced:
		t.Fatalf("fence returned (%v) while the dropped connection's write was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(st.release)
	select {
	case err := <-fenced:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("fence did not return")
	}
	if err := live.WriteAt(t.Context(), []byte("closed"), 0, true); err == nil {
		t.Fatal("a connection of the fenced epoch still writes after the fence")
	}
	again := cs.dial(t, exportName("c1", "h1", 3), nil)
	if err := again.WriteAt(t.Context(), []byte("new connection"), 0, true); err != nil {
		t.Fatalf("new connection at the fenced epoch: %v", err)
	}
}

// TestDisconnectPinning: a clean disconnect leaves the LOG unpinned; a
// client timeout and a cut link pin it; unpin through the control API
// works; a restart loads every LOG pinned.
func TestDisconnectPinning(t *testing.T) {
	meta := newFakeMeta(t, "clean", "timeout", "cut")
	dir := t.TempDir()
	cs := startCS(t, meta, dir, nil)
	pinned := func(chunk string) bool { return cs.logBits(t, chunk, 1).Pinned }

	c := cs.dial(t, exportName("clean", "h1", 1), nil)
	if err := c.WriteAt(t.Context(), []byte("a"), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	clean, _ := cs.s.store.Get("clean")
	waitFor(t, "the clean connection to end", func() bool { return cs.s.openSessions(clean) == 0 })
	time.Sleep(50 * time.Millisecond)
	if pinned("clean") {
		t.Fatal("a clean disconnect pinned the LOG")
	}

	st := newStall(2 * testRegion)
	cs.s.beforeWrite = st.hook
	c = cs.dial(t, exportName("timeout", "h1", 1), func(c *nbd.ClientConfig) { c.Timeout = 100 * time.Millisecond })
	if err := c.WriteAt(t.Context(), []byte("b"), 2*testRegion, false); !errors.Is(err, nbd.ErrTimeout) {
		t.Fatalf("stalled write: %v, want ErrTimeout", err)
	}
	waitFor(t, "a timed-out connection to pin", func() bool { return pinned("timeout") })
	close(st.release)

	p := newProxy(t, cs.nbdAddr)
	c, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: p.addr(), Export: exportName("cut", "h1", 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteAt(t.Context(), []byte("c"), 0, false); err != nil {
		t.Fatal(err)
	}
	if pinned("cut") {
		t.Fatal("pinned while connected")
	}
	p.cut()
	waitFor(t, "a cut connection to pin", func() bool { return pinned("cut") })

	resp, err := cs.ctl.Unpin(t.Context(), "cut", cred("cut", "h1", 1))
	if err != nil || resp.Pinned {
		t.Fatalf("unpin: %+v %v", resp, err)
	}
	if pinned("cut") {
		t.Fatal("still pinned after unpin")
	}

	cs.stop(t)
	cs = startCS(t, meta, dir, nil)
	for _, chunk := range []string{"clean", "timeout", "cut"} {
		if lb := cs.logBits(t, chunk, 1); !lb.Pinned || len(dirty(lb.Bits)) != 1 {
			t.Fatalf("%s after restart: pinned %v regions %v, want pinned with its one region", chunk, lb.Pinned, dirty(lb.Bits))
		}
	}
}

// TestRotationForgetsOnlyWhenUnpinned runs with T = 300 ms.
func TestRotationForgetsOnlyWhenUnpinned(t *testing.T) {
	meta := newFakeMeta(t, "a", "b")
	meta.resp.IOTimeoutMS, meta.resp.LogPeriodMS, meta.offlineAfter = 50, 300, 0.1
	cs := startCS(t, meta, t.TempDir(), nil)
	if cs.s.logPeriod != 300*time.Millisecond {
		t.Fatalf("T = %v, want the cluster's 300ms", cs.s.logPeriod)
	}
	if _, err := cs.ctl.Pin(t.Context(), "b", cred("b", "h1", 1)); err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []string{"a", "b"} {
		c := cs.dial(t, exportName(chunk, "h1", 1), nil)
		if err := c.WriteAt(t.Context(), []byte("w"), 5*testRegion, false); err != nil {
			t.Fatal(err)
		}
		if got := dirty(cs.logBits(t, chunk, 1).Bits); !sameInts(got, []int{5}) {
			t.Fatalf("%s after a write: %v, want [5]", chunk, got)
		}
	}
	waitFor(t, "the unpinned LOG to forget", func() bool { return len(dirty(cs.logBits(t, "a", 1).Bits)) == 0 })
	time.Sleep(700 * time.Millisecond) // more than two periods
	if got := dirty(cs.logBits(t, "b", 1).Bits); !sameInts(got, []int{5}) {
		t.Fatalf("pinned LOG after >2 periods: %v, want [5]", got)
	}
	if _, err := cs.ctl.Unpin(t.Context(), "b", cred("b", "h1", 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the unpinned LOG to forget", func() bool { return len(dirty(cs.logBits(t, "b", 1).Bits)) == 0 })
}

// TestLogMetaContext: chunkraid:log shows the dirty regions, through the
// nbd client and through nbdinfo --map.
func TestLogMetaContext(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	name := exportName("c1", "h1", 1)
	c := cs.dial(t, name, func(c *nbd.ClientConfig) { c.MetaContexts = []string{LogContext} })
	for _, off := range []int64{1*testRegion + 7, 3 * testRegion, 4*testRegion - 1} {
		if err := c.WriteAt(t.Context(), []byte("xy"), off, false); err != nil {
			t.Fatal(err)
		}
	}
	// Regions 1, 3 (twice) and 4 (the write at the end of 3 spills over).
	wantDirty := map[int64]bool{1: true, 3: true, 4: true}
	ext, err := c.BlockStatus(t.Context(), LogContext, 0, testChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	var pos int64
	for _, e := range ext {
		for r := pos / testRegion; r < (pos+e.Length)/testRegion; r++ {
			if got := e.Flags == LogDirty; got != wantDirty[r] {
				t.Fatalf("client: region %d dirty=%v, want %v (%+v)", r, got, wantDirty[r], ext)
			}
		}
		if pos%testRegion != 0 || e.Length%testRegion != 0 {
			t.Fatalf("extent not region aligned: %+v", ext)
		}
		pos += e.Length
	}
	if pos != testChunkSize {
		t.Fatalf("extents cover %d bytes, want %d", pos, testChunkSize)
	}

	out, err := runTool(t, "nbdinfo", "--map="+LogContext, "nbd://"+cs.nbdAddr+"/"+name)
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	var covered int64
	for _, line := range mapLines(t, out) {
		for r := line.off / testRegion; r < (line.off+line.length)/testRegion; r++ {
			if got := line.flags&LogDirty != 0; got != wantDirty[r] {
				t.Fatalf("nbdinfo: region %d dirty=%v, want %v\n%s", r, got, wantDirty[r], out)
			}
		}
		covered += line.length
	}
	if covered != testChunkSize {
		t.Fatalf("nbdinfo map covers %d bytes\n%s", covered, out)
	}
}

// TestPersistFailureFailsChunk: when the sidecar cannot be written, the
// write that needed it fails, every later request fails, new opens and
// control calls are refused.
func TestPersistFailureFailsChunk(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	var fail sync.Map
	cs := startCS(t, meta, t.TempDir(), func(c *Config) {
		c.writeSidecar = func(path string, data []byte) error {
			if _, ok := fail.Load("on"); ok {
				return errors.New("injected: disk gone")
			}
			return store.WriteFileAtomic(vfs.OS{}, path, data)
		}
	})
	c := cs.dial(t, exportName("c1", "h1", 1), nil)
	if err := c.WriteAt(t.Context(), []byte("ok"), 0, false); err != nil {
		t.Fatal(err)
	}
	fail.Store("on", true)
	if err := c.WriteAt(t.Context(), []byte("no"), 2*testRegion, false); err == nil {
		t.Fatal("write needing a failed persist succeeded")
	}
	fail.Delete("on")
	buf := make([]byte, 2)
	if err := c.ReadAt(t.Context(), buf, 0); err == nil {
		t.Fatal("read of a failed chunk succeeded")
	}
	if err := c.WriteAt(t.Context(), []byte("ok"), 0, false); err == nil {
		t.Fatal("write to an already marked region of a failed chunk succeeded")
	}
	if err := c.Flush(t.Context()); err == nil {
		t.Fatal("flush of a failed chunk succeeded")
	}
	if _, err := nbd.Dial(t.Context(), nbd.ClientConfig{Addr: cs.nbdAddr, Export: exportName("c1", "h1", 1)}); err == nil ||
		!strings.Contains(err.Error(), "failed after a durability error") {
		t.Fatalf("open of a failed chunk: %v", err)
	}
	_, err := cs.ctl.Pin(t.Context(), "c1", cred("c1", "h1", 1))
	if e := apiError(t, err); e.Status != http.StatusInternalServerError || e.Code != api.CodeInternal {
		t.Fatalf("pin of a failed chunk: %v (status %d)", err, e.Status)
	}
}

// TestControlAPI: authentication, authorization and the happy paths.
func TestControlAPI(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	if resp, err := cs.ctl.Fence(ctx, "c1", cred("c1", "h1", 3)); err != nil || resp.MinEpoch != 3 || resp.Pinned {
		t.Fatalf("fence: %+v %v", resp, err)
	}

	type call func(req api.ControlRequest) error
	calls := map[string]func(chunk string) call{
		"fence": func(chunk string) call {
			return func(r api.ControlRequest) error { _, err := cs.ctl.Fence(ctx, chunk, r); return err }
		},
		"pin": func(chunk string) call {
			return func(r api.ControlRequest) error { _, err := cs.ctl.Pin(ctx, chunk, r); return err }
		},
		"unpin": func(chunk string) call {
			return func(r api.ControlRequest) error { _, err := cs.ctl.Unpin(ctx, chunk, r); return err }
		},
		"log": func(chunk string) call {
			return func(r api.ControlRequest) error { _, err := cs.ctl.Log(ctx, chunk, r); return err }
		},
	}
	wrong := cred("c1", "h1", 3)
	wrong.Token = api.ExportToken("abcd", "c1", "h1", 3)
	tests := []struct {
		name   string
		chunk  string
		req    api.ControlRequest
		status int
		code   string
		only   string // the only call the case applies to
	}{
		{"wrong token", "c1", wrong, 401, control.CodeUnauthenticated, ""},
		{"token of another chunk", "c1", cred("c2", "h1", 3), 401, control.CodeUnauthenticated, ""},
		{"no token", "c1", api.ControlRequest{Host: "h1", Epoch: 3}, 401, control.CodeUnauthenticated, ""},
		{"no host", "c1", api.ControlRequest{Epoch: 3, Token: "aa"}, 401, control.CodeUnauthenticated, ""},
		{"old epoch", "c1", cred("c1", "h1", 2), 403, control.CodeFenced, ""},
		{"unknown chunk", "c9", cred("c9", "h1", 3), 404, api.CodeNotFound, ""},
	}
	for _, tt := range tests {
		for op, mk := range calls {
			t.Run(tt.name+"/"+op, func(t *testing.T) {
				err := mk(tt.chunk)(tt.req)
				e := apiError(t, err)
				if e.Status != tt.status || e.Code != tt.code || e.Message == "" {
					t.Fatalf("%v: status %d code %q, want %d %q", err, e.Status, e.Code, tt.status, tt.code)
				}
			})
		}
	}

	// Happy paths.
	if resp, err := cs.ctl.Pin(ctx, "c1", cred("c1", "h1", 3)); err != nil || !resp.Pinned || resp.MinEpoch != 3 {
		t.Fatalf("pin: %+v %v", resp, err)
	}
	c := cs.dial(t, exportName("c1", "h1", 3), nil)
	if err := c.WriteAt(ctx, []byte("z"), 6*testRegion, false); err != nil {
		t.Fatal(err)
	}
	lb, err := cs.ctl.Log(ctx, "c1", cred("c1", "h1", 4)) // a newer epoch is fine
	if err != nil {
		t.Fatal(err)
	}
	if lb.RegionSize != testRegion || lb.Size != testChunkSize || !lb.Pinned || !sameInts(dirty(lb.Bits), []int{6}) {
		t.Fatalf("log: %+v (regions %v)", lb, dirty(lb.Bits))
	}
	if resp, err := cs.ctl.Unpin(ctx, "c1", cred("c1", "h1", 3)); err != nil || resp.Pinned {
		t.Fatalf("unpin: %+v %v", resp, err)
	}
	if resp, err := cs.ctl.Fence(ctx, "c1", cred("c1", "h1", 3)); err != nil || resp.MinEpoch != 3 {
		t.Fatalf("fence at the current epoch: %+v %v", resp, err)
	}
	if err := c.WriteAt(ctx, []byte("z"), 0, false); err == nil {
		t.Fatal("a connection of the fenced epoch still writes after a fence at it")
	}
	c = cs.dial(t, exportName("c1", "h1", 3), nil)
	if err := c.WriteAt(ctx, []byte("z"), 0, false); err != nil {
		t.Fatalf("new connection at the current epoch after a fence at it: %v", err)
	}

	// Plain HTTP is not answered: the control API speaks TLS only.
	if resp, err := http.Post("http://"+cs.ctlAddr+"/v1/chunks/c1/pin", "application/json", strings.NewReader(`{}`)); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "HTTPS") {
			t.Fatalf("plain HTTP to the control API: %d %s", resp.StatusCode, b)
		}
	}

	// Malformed requests.
	for _, tt := range []struct {
		method, path, body string
		status             int
	}{
		{"POST", "/v1/chunks/c1/pin", "{", 400},
		{"POST", "/v1/chunks/c1/pin", `{"host":"h1","epoch":3,"token":"x","extra":1}`, 400},
		{"GET", "/v1/chunks/c1/log?host=h1&epoch=x&token=y", "", 400},
		{"GET", "/v1/chunks/c1/pin", "", 405},
		{"GET", "/v1/nothing", "", 404},
	} {
		req, err := http.NewRequestWithContext(ctx, tt.method, "https://"+cs.ctlAddr+tt.path, strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cs.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Fatalf("%s %s %q: status %d, want %d", tt.method, tt.path, tt.body, resp.StatusCode, tt.status)
		}
	}
}

func TestCheckBudget(t *testing.T) {
	tests := []struct {
		name        string
		tIO, off, T time.Duration
		ok          bool
		rule        string
	}{
		{"defaults", 5 * time.Second, 10 * time.Second, time.Minute, true, ""},
		{"T too short", 5 * time.Second, 10 * time.Second, 12 * time.Second, false, "T >= 3*t_io"},
		{"T not above offline_after", time.Second, 10 * time.Second, 10 * time.Second, false, "T > offline_after"},
		{"offline_after unknown, fine", 50 * time.Millisecond, 0, 300 * time.Millisecond, true, ""},
		{"offline_after unknown, T too short", 5 * time.Second, 0, 10 * time.Second, false, "T >= 3*t_io"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkBudget(tt.tIO, tt.off, tt.T)
			if tt.ok != (err == nil) {
				t.Fatalf("checkBudget: %v, want ok=%v", err, tt.ok)
			}
			var be *budget.Error
			if !tt.ok && (!errors.As(err, &be) || be.Rule != tt.rule) {
				t.Fatalf("checkBudget: %v, want rule %q", err, tt.rule)
			}
		})
	}
}

func TestBudgetViolationStopsStart(t *testing.T) {
	meta := newFakeMeta(t)
	meta.resp.IOTimeoutMS, meta.resp.LogPeriodMS = 5000, 10000
	s, err := New(Config{Name: "cs1", DataDir: t.TempDir(), Listen: "127.0.0.1:0", ControlListen: "127.0.0.1:0", Metaserver: meta.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(t.Context()); !errors.Is(err, budget.ErrBudget) {
		t.Fatalf("Run with T < 3·t_io: %v, want ErrBudget", err)
	}
}

func TestLogExtents(t *testing.T) {
	bits := []byte{0b0001_0110} // regions 1, 2, 4 of 8
	tests := []struct {
		name        string
		off, length int64
		want        []nbd.Extent
	}{
		{"whole", 0, 800, []nbd.Extent{{Length: 100, Flags: 0}, {Length: 200, Flags: 1}, {Length: 100, Flags: 0}, {Length: 100, Flags: 1}, {Length: 300, Flags: 0}}},
		{"inside one region", 110, 20, []nbd.Extent{{Length: 20, Flags: 1}}},
		{"unaligned start", 50, 200, []nbd.Extent{{Length: 50, Flags: 0}, {Length: 150, Flags: 1}}},
		{"past the end", 750, 100, []nbd.Extent{{Length: 50, Flags: 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := logExtents(bits, 100, 800, tt.off, tt.length)
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

// TestFencePinsTakenConnections: a fence that closes a connection still in
// use pins the LOG before it returns, so a takeover that then fails to
// attach cannot let a rotation forget the old host's writes (DESIGN §2
// rule 3). A fence that closes nothing pins nothing.
func TestFencePinsTakenConnections(t *testing.T) {
	meta := newFakeMeta(t, "taken", "idle")
	cs := startCS(t, meta, t.TempDir(), nil)
	pinned := func(chunk string) bool { return cs.logBits(t, chunk, 2).Pinned }

	old := cs.dial(t, exportName("taken", "h1", 1), nil)
	if err := old.WriteAt(t.Context(), []byte("torn"), 2*testRegion, false); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.ctl.Fence(t.Context(), "taken", cred("taken", "h2", 2)); err != nil {
		t.Fatal(err)
	}
	if !pinned("taken") {
		t.Fatal("a fence closed the old host's connection without pinning the LOG")
	}
	if lb := cs.logBits(t, "taken", 2); len(dirty(lb.Bits)) != 1 {
		t.Fatalf("LOG regions after the fence %v, want the old host's one region", dirty(lb.Bits))
	}

	if _, err := cs.ctl.Fence(t.Context(), "idle", cred("idle", "h2", 2)); err != nil {
		t.Fatal(err)
	}
	if pinned("idle") {
		t.Fatal("a fence that closed no connection pinned the LOG")
	}
}

// TestStaleUnpinIgnored: a host's pins and unpins of a chunk carry its
// order; an unpin that timed out on the host and lands after the host's
// next pin must not unpin the LOG of a degraded set.
func TestStaleUnpinIgnored(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	at := func(epoch int64, gen uint64) api.ControlRequest {
		r := cred("c1", "h1", epoch)
		r.PinGen = gen
		return r
	}
	steps := []struct {
		name   string
		pin    bool
		req    api.ControlRequest
		pinned bool
	}{
		{"pin 2", true, at(1, 2), true},
		{"late unpin 1", false, at(1, 1), true},
		{"unpin 2 again", false, at(1, 2), true},
		{"unpin 3", false, at(1, 3), false},
		{"late pin 2", true, at(1, 2), false},
		{"pin 1 of a higher epoch", true, at(2, 1), true},
		{"unpin 9 of the lower epoch", false, at(1, 9), true},
		{"unordered unpin", false, at(2, 0), false},
	}
	for _, st := range steps {
		call := cs.ctl.Unpin
		if st.pin {
			call = cs.ctl.Pin
		}
		resp, err := call(ctx, "c1", st.req)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if resp.Pinned != st.pinned {
			t.Fatalf("%s: pinned %v, want %v", st.name, resp.Pinned, st.pinned)
		}
	}
}

// TestPinMany: one call pins several chunks, each with its own
// credentials; a bad credential fails the call with the chunk named, and an
// empty request is refused.
func TestPinMany(t *testing.T) {
	meta := newFakeMeta(t, "a", "b", "c")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	pin := func(chunk string) api.ChunkPin {
		return api.ChunkPin{Chunk: chunk, ControlRequest: cred(chunk, "h1", 1)}
	}
	resp, err := cs.ctl.PinMany(ctx, api.PinRequest{Pins: []api.ChunkPin{pin("a"), pin("b")}})
	if err != nil || len(resp.Chunks) != 2 || !resp.Chunks[0].Pinned || !resp.Chunks[1].Pinned {
		t.Fatalf("PinMany a, b: %+v %v", resp, err)
	}
	for _, chunk := range []string{"a", "b", "c"} {
		if got, want := cs.logBits(t, chunk, 1).Pinned, chunk != "c"; got != want {
			t.Errorf("chunk %s pinned %v, want %v", chunk, got, want)
		}
	}
	bad := pin("c")
	bad.Token = "forged"
	if _, err := cs.ctl.PinMany(ctx, api.PinRequest{Pins: []api.ChunkPin{bad}}); !control.IsUnauthenticated(err) || !strings.Contains(err.Error(), "chunk c") {
		t.Errorf("PinMany with a forged token: %v, want unauthenticated naming chunk c", err)
	}
	if _, err := cs.ctl.PinMany(ctx, api.PinRequest{}); api.ErrorCode(err) != api.CodeInvalidArgument {
		t.Errorf("empty PinRequest: %v, want invalid_argument", err)
	}
}

// TestFailedChunkInHeartbeat: a chunk whose fdatasync fails fails for good,
// and the chunkserver's heartbeats name it with the reason, so the
// metaserver can show it.
func TestFailedChunkInHeartbeat(t *testing.T) {
	meta := newFakeMeta(t, "a", "b")
	efs := vfs.NewErrorFS(vfs.OS{}, nil)
	cs := startCS(t, meta, t.TempDir(), func(c *Config) { c.FS = efs })
	c := cs.dial(t, exportName("a", "h1", 1), nil)
	if err := c.WriteAt(t.Context(), []byte("x"), 0, false); err != nil {
		t.Fatal(err)
	}
	efs.SetInjector(vfs.OnOp(vfs.OpSync, "a.chunk", syscall.EIO))
	if err := c.Flush(t.Context()); err == nil {
		t.Fatal("a flush whose fdatasync fails succeeded")
	}
	waitFor(t, "a heartbeat naming the failed chunk", func() bool {
		meta.mu.Lock()
		defer meta.mu.Unlock()
		fc := meta.mu.heartbeat.FailedChunks
		return len(fc) == 1 && fc[0].ID == "a" && !fc[0].Quarantined && strings.Contains(fc[0].Reason, "input/output error")
	})
}

// TestReadOnlyExport: a read-only export name (what the metaserver issues
// for volume verify) reads the chunk, refuses every write with EPERM,
// leaves the LOG alone when its connection is cut, and opens no control
// call; a read-only token on a read-write name is refused.
func TestReadOnlyExport(t *testing.T) {
	meta := newFakeMeta(t, "c1")
	cs := startCS(t, meta, t.TempDir(), nil)
	ctx := t.Context()
	w := cs.dial(t, exportName("c1", "h1", 1), nil)
	if err := w.WriteAt(ctx, []byte("data"), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ro := api.ExportName{Chunk: "c1", Host: "verify", Epoch: 1, ReadOnly: true, Token: api.ReadOnlyExportToken(testSecret, "c1", "verify", 1)}
	p := newProxy(t, cs.nbdAddr)
	c, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: p.addr(), Export: ro.String()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, 4)
	if err := c.ReadAt(ctx, got, 0); err != nil || string(got) != "data" {
		t.Fatalf("read through the read-only name: %q, %v", got, err)
	}
	var ne *nbd.Error
	if err := c.WriteAt(ctx, []byte("evil"), 0, false); !errors.As(err, &ne) || ne.Errno != nbd.EPERM {
		t.Fatalf("write through the read-only name: %v, want EPERM", err)
	}
	p.cut()
	time.Sleep(100 * time.Millisecond)
	if lb := cs.logBits(t, "c1", 1); lb.Pinned {
		t.Fatal("a cut read-only connection pinned the LOG")
	}
	if _, err := cs.ctl.Fence(ctx, "c1", api.ControlRequest{Host: ro.Host, Epoch: 1 << 62, Token: ro.Token}); err == nil {
		t.Fatal("a read-only token fenced the chunk")
	}
	forged := ro
	forged.ReadOnly = false
	if _, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: cs.nbdAddr, Export: forged.String()}); err == nil {
		t.Fatal("a read-only token opened a read-write name")
	}
	r := cs.dial(t, exportName("c1", "h1", 1), nil)
	if err := r.ReadAt(ctx, got, 0); err != nil || string(got) != "data" {
		t.Fatalf("after the refused write: %q, %v", got, err)
	}
}

// TestHeartbeatReportsAllocated: heartbeats carry what the chunk files
// take on disk — their allocated blocks, not their (sparse) sizes.
func TestHeartbeatReportsAllocated(t *testing.T) {
	meta := newFakeMeta(t, "c1", "c2")
	cs := startCS(t, meta, t.TempDir(), nil)
	if _, err := cs.ctl.Fence(t.Context(), "c1", cred("c1", "h1", 1)); err != nil {
		t.Fatal(err)
	}
	allocated := func() int64 {
		meta.mu.Lock()
		defer meta.mu.Unlock()
		if len(meta.mu.heartbeat.Disks) != 1 {
			return -1
		}
		return meta.mu.heartbeat.Disks[0].AllocatedBytes
	}
	waitFor(t, "a heartbeat", func() bool { return allocated() >= 0 })
	before := allocated()
	if before >= testChunkSize {
		t.Fatalf("two empty chunks of %d bytes take %d: sizes counted, not blocks", testChunkSize, before)
	}
	c := cs.dial(t, exportName("c1", "h1", 1), nil)
	if err := c.WriteAt(t.Context(), bytes.Repeat([]byte{7}, 4<<20), 0, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the written 4 MiB in a heartbeat", func() bool { return allocated() >= before+4<<20 })
	t.Logf("allocated: %d bytes before, %d after writing 4 MiB (chunks of %d)", before, allocated(), testChunkSize)
}
