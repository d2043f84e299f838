package nbd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// raw speaks the protocol byte by byte, through the codec, to test the
// server's answers to exact messages.
type raw struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

// rawDial connects, checks the greeting and sends the client flags.
func rawDial(t *testing.T, addr string, cflags uint32) *raw {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r := &raw{t: t, nc: nc, br: bufio.NewReader(nc)}
	hflags, err := DecodeGreeting(r.read(GreetingSize))
	if err != nil {
		t.Fatal(err)
	}
	if hflags != FlagFixedNewstyle|FlagNoZeroes {
		t.Fatalf("handshake flags %#x", hflags)
	}
	r.write(AppendClientFlags(nil, cflags))
	return r
}

func (r *raw) write(b []byte) {
	r.t.Helper()
	if _, err := r.nc.Write(b); err != nil {
		r.t.Fatal(err)
	}
}

func (r *raw) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r.br, b); err != nil {
		r.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (r *raw) option(opt uint32, data []byte) {
	r.t.Helper()
	r.write(append(AppendOptionHeader(nil, OptionHeader{Option: opt, Length: uint32(len(data))}), data...))
}

// reply reads one option reply and checks it answers opt.
func (r *raw) reply(opt uint32) (uint32, []byte) {
	r.t.Helper()
	h, err := DecodeOptionReplyHeader(r.read(OptionReplyHeaderSize))
	if err != nil {
		r.t.Fatal(err)
	}
	if h.Option != opt {
		r.t.Fatalf("reply to %s, want %s", OptName(h.Option), OptName(opt))
	}
	return h.Type, r.read(int(h.Length))
}

func (r *raw) expect(opt, typ uint32) []byte {
	r.t.Helper()
	got, data := r.reply(opt)
	if got != typ {
		r.t.Fatalf("%s answered %s (%q), want %s", OptName(opt), RepName(got), data, RepName(typ))
	}
	return data
}

func (r *raw) request(q Request, payload []byte) {
	r.t.Helper()
	r.write(append(AppendRequest(nil, q), payload...))
}

func (r *raw) simple() SimpleReply {
	r.t.Helper()
	s, err := DecodeSimpleReply(r.read(SimpleReplySize))
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

func (r *raw) chunk() (ChunkHeader, []byte) {
	r.t.Helper()
	h, err := DecodeChunkHeader(r.read(ChunkHeaderSize))
	if err != nil {
		r.t.Fatal(err)
	}
	return h, r.read(int(h.Length))
}

// closed waits until the server has closed the connection.
func (r *raw) closed() {
	r.t.Helper()
	if err := r.nc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		r.t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, r.br); err != nil {
		r.t.Fatalf("connection not closed by the server: %v", err)
	}
}

func goData(name string, infos ...uint16) []byte {
	return AppendExportRequest(nil, ExportRequest{Name: name, Infos: infos})
}

func TestHandshakeExportName(t *testing.T) {
	exp := newMemExport(1 << 20)
	copy(exp.data, "hello")
	addr := serveExports(t, map[string]Export{"c": exp}, nil)
	for _, tc := range []struct {
		name   string
		cflags uint32
		pad    int
	}{
		{"no zeroes", FlagCFixedNewstyle | FlagCNoZeroes, 0},
		{"padded", FlagCFixedNewstyle, ExportNamePadding},
		{"non-fixed client", 0, ExportNamePadding},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rawDial(t, addr, tc.cflags)
			r.option(OptExportName, []byte("c"))
			size, flags, _ := DecodeExportNameReply(r.read(ExportNameReplySize))
			if size != 1<<20 || flags != transmissionFlags {
				t.Fatalf("size %d flags %#x", size, flags)
			}
			if pad := r.read(tc.pad); !bytes.Equal(pad, make([]byte, tc.pad)) {
				t.Fatal("padding is not zero")
			}
			// Simple replies: the data follows the header.
			r.request(Request{Type: CmdRead, Cookie: 5, Length: 5}, nil)
			if s := r.simple(); s.Cookie != 5 || s.Errno != 0 {
				t.Fatalf("reply %+v", s)
			}
			if got := r.read(5); string(got) != "hello" {
				t.Fatalf("read %q", got)
			}
			r.request(Request{Type: CmdDisc}, nil)
			r.closed()
		})
	}
	t.Run("unknown export hangs up", func(t *testing.T) {
		r := rawDial(t, addr, FlagCFixedNewstyle)
		r.option(OptExportName, []byte("nope"))
		r.closed()
	})
}

func TestHandshakeOptions(t *testing.T) {
	exp := newMemExport(1 << 20)
	addr := serveExports(t, map[string]Export{"c": exp}, func(cfg *ServerConfig) {
		cfg.MetaContexts = map[string]MetaContext{
			"chunkraid:log": func(Export, int64, int64) ([]Extent, error) { return []Extent{{Length: 1 << 20, Flags: 1}}, nil },
		}
	})
	r := rawDial(t, addr, FlagCFixedNewstyle|FlagCNoZeroes)

	steps := []struct {
		name  string
		opt   uint32
		data  []byte
		reply uint32
		check func(t *testing.T, data []byte)
	}{
		{"unknown option", 99, []byte("skip me"), RepErrUnsup, nil},
		{"starttls", OptStartTLS, nil, RepErrUnsup, nil},
		{"list without List", OptList, nil, RepErrPolicy, nil},
		{"set meta before structured", OptSetMetaContext,
			AppendMetaContextRequest(nil, MetaContextRequest{Export: "c", Queries: []string{"base:allocation"}}), RepErrInvalid, nil},
		{"structured with data", OptStructuredReply, []byte{1}, RepErrInvalid, nil},
		{"structured", OptStructuredReply, nil, RepAck, nil},
		{"info unknown export", OptInfo, goData("nope"), RepErrUnknown, func(t *testing.T, d []byte) {
			if !strings.Contains(string(d), `export "nope" does not exist`) {
				t.Fatalf("message %q lacks the lookup error", d)
			}
		}},
		{"go malformed", OptGo, []byte{0, 0, 0, 200, 'x'}, RepErrInvalid, nil},
		{"meta query without colon", OptListMetaContext,
			AppendMetaContextRequest(nil, MetaContextRequest{Export: "c", Queries: []string{"nocolon"}}), RepErrInvalid, nil},
	}
	for _, s := range steps {
		r.option(s.opt, s.data)
		data := r.expect(s.opt, s.reply)
		if s.check != nil {
			s.check(t, data)
		}
	}

	// LIST_META_CONTEXT: everything, then a namespace wildcard.
	listed := func(queries ...string) []string {
		r.option(OptListMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{Export: "c", Queries: queries}))
		var names []string
		for {
			typ, data := r.reply(OptListMetaContext)
			if typ == RepAck {
				return names
			}
			if typ != RepMetaContext {
				t.Fatalf("LIST_META_CONTEXT answered %s", RepName(typ))
			}
			id, name, err := DecodeRepMetaContext(data)
			if err != nil || id != 0 {
				t.Fatalf("listed context id %d err %v", id, err)
			}
			names = append(names, name)
		}
	}
	if got := strings.Join(listed(), ","); got != "base:allocation,chunkraid:log" {
		t.Fatalf("all contexts: %s", got)
	}
	if got := strings.Join(listed("base:"), ","); got != "base:allocation" {
		t.Fatalf("base: wildcard: %s", got)
	}
	if got := strings.Join(listed("chunkraid:", "x-unknown:thing"), ","); got != "chunkraid:log" {
		t.Fatalf("chunkraid: wildcard: %s", got)
	}

	// SET_META_CONTEXT selects exact names only and ignores unknown ones.
	r.option(OptSetMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{
		Export: "c", Queries: []string{"base:allocation", "x-unknown:a", "base:"},
	}))
	id, name, err := DecodeRepMetaContext(r.expect(OptSetMetaContext, RepMetaContext))
	if err != nil || name != "base:allocation" || id == 0 {
		t.Fatalf("selected %q id %d err %v", name, id, err)
	}
	r.expect(OptSetMetaContext, RepAck)

	// INFO with a block size request, then GO.
	r.option(OptInfo, goData("c", InfoBlockSize, 0x7777))
	var gotExport, gotSizes bool
	for {
		typ, data := r.reply(OptInfo)
		if typ == RepAck {
			break
		}
		in, err := DecodeInfo(data)
		if typ != RepInfo || err != nil {
			t.Fatalf("INFO answered %s err %v", RepName(typ), err)
		}
		switch in.Type {
		case InfoExport:
			gotExport = in.Size == 1<<20 && in.Flags == transmissionFlags|FlagSendDF
		case InfoBlockSize:
			gotSizes = in.BlockSizes == BlockSizes{MinBlockSize, PreferredBlockSize, MaxPayload}
		}
	}
	if !gotExport || !gotSizes {
		t.Fatalf("INFO export ok %v, block sizes ok %v", gotExport, gotSizes)
	}
	r.option(OptGo, goData("c"))
	r.expect(OptGo, RepInfo)
	r.expect(OptGo, RepAck)

	// Transmission with structured replies.
	copy(exp.data[4096:], "payload")
	r.request(Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 7}, nil)
	h, p := r.chunk()
	if h.Type != ReplyTypeOffsetData || h.Flags != ReplyFlagDone || h.Cookie != 1 ||
		be.Uint64(p) != 4096 || string(p[8:]) != "payload" {
		t.Fatalf("READ reply %+v %q", h, p)
	}

	errorReply := func(cookie uint64, errno uint32) {
		t.Helper()
		h, p := r.chunk()
		if h.Type != ReplyTypeError || h.Cookie != cookie || h.Flags != ReplyFlagDone {
			t.Fatalf("want an error chunk for %d, got %+v", cookie, h)
		}
		ec, err := DecodeErrorChunk(h.Type, p)
		if err != nil || ec.Errno != errno || ec.Message == "" {
			t.Fatalf("error chunk %+v err %v, want %s with a message", ec, err, ErrnoName(errno))
		}
	}
	r.request(Request{Type: CmdRead, Cookie: 2, Offset: 1<<20 - 1, Length: 2}, nil)
	errorReply(2, EINVAL)
	r.request(Request{Type: CmdWrite, Cookie: 3, Offset: 1<<20 - 2, Length: 4}, []byte("abcd"))
	errorReply(3, ENOSPC)
	r.request(Request{Type: 42, Cookie: 4}, nil)
	errorReply(4, EINVAL)
	r.request(Request{Type: CmdRead, Flags: CmdFlagNoHole, Cookie: 5, Length: 1}, nil)
	errorReply(5, EINVAL)
	r.request(Request{Type: CmdRead, Cookie: 6, Length: MaxPayload + 1}, nil)
	errorReply(6, EINVAL)
	r.request(Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Cookie: 7, Length: 1}, nil)
	errorReply(7, EINVAL)

	// The stream is still in step after the refused WRITE.
	r.request(Request{Type: CmdRead, Cookie: 8, Length: 0}, nil)
	if h, _ := r.chunk(); h.Type != ReplyTypeNone || h.Flags != ReplyFlagDone || h.Cookie != 8 {
		t.Fatalf("zero-length READ reply %+v", h)
	}
	r.request(Request{Type: CmdFlush, Cookie: 9}, nil)
	if s := r.simple(); s.Cookie != 9 || s.Errno != 0 {
		t.Fatalf("FLUSH reply %+v", s)
	}

	// BLOCK_STATUS: memExport has no Extenter, so everything is data.
	r.request(Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Cookie: 10, Offset: 512, Length: 1000}, nil)
	h, p = r.chunk()
	cid, ds, err := DecodeBlockStatus(p, nil)
	if err != nil || h.Flags != ReplyFlagDone || cid != id || len(ds) != 1 || ds[0] != (Descriptor{Length: 1000}) {
		t.Fatalf("REQ_ONE block status %+v ctx %d %+v %v", h, cid, ds, err)
	}

	r.request(Request{Type: CmdDisc}, nil)
	r.closed()
}

func TestListExports(t *testing.T) {
	addr := serveExports(t, map[string]Export{}, func(cfg *ServerConfig) {
		cfg.List = func() []string { return []string{"a", "b"} }
	})
	r := rawDial(t, addr, FlagCFixedNewstyle)
	r.option(OptList, []byte{1})
	r.expect(OptList, RepErrInvalid)
	r.option(OptList, nil)
	for _, want := range []string{"a", "b"} {
		name, _, err := DecodeRepServer(r.expect(OptList, RepServer))
		if err != nil || name != want {
			t.Fatalf("listed %q err %v, want %q", name, err, want)
		}
	}
	r.expect(OptList, RepAck)
	r.option(OptAbort, nil)
	r.expect(OptAbort, RepAck)
	r.closed()
}

func TestSimpleRepliesWithoutStructured(t *testing.T) {
	addr := serveExports(t, map[string]Export{"c": newMemExport(4096)}, nil)
	r := rawDial(t, addr, FlagCFixedNewstyle|FlagCNoZeroes)
	r.option(OptGo, goData("c"))
	in, _ := DecodeInfo(r.expect(OptGo, RepInfo))
	if in.Flags&FlagSendDF != 0 {
		t.Fatal("SEND_DF advertised without structured replies")
	}
	r.expect(OptGo, RepAck)
	r.request(Request{Type: CmdRead, Cookie: 1, Offset: 4000, Length: 200}, nil)
	if s := r.simple(); s.Errno != EINVAL || s.Cookie != 1 {
		t.Fatalf("out of range READ %+v", s)
	}
	r.request(Request{Type: CmdBlockStatus, Cookie: 2, Length: 10}, nil)
	if s := r.simple(); s.Errno != EINVAL || s.Cookie != 2 {
		t.Fatalf("BLOCK_STATUS without contexts %+v", s)
	}
	r.request(Request{Type: CmdWrite, Cookie: 3, Length: 3}, []byte("abc"))
	if s := r.simple(); s.Errno != 0 || s.Cookie != 3 {
		t.Fatalf("WRITE %+v", s)
	}
}

// TestServerClosesOnViolation checks the hard disconnects.
func TestServerClosesOnViolation(t *testing.T) {
	addr := serveExports(t, map[string]Export{"c": newMemExport(4096)}, nil)
	transmission := func(t *testing.T) *raw {
		r := rawDial(t, addr, FlagCFixedNewstyle|FlagCNoZeroes)
		r.option(OptExportName, []byte("c"))
		r.read(ExportNameReplySize)
		return r
	}
	tests := []struct {
		name string
		do   func(t *testing.T) *raw
	}{
		{"unknown client flags", func(t *testing.T) *raw { return rawDial(t, addr, 1<<5) }},
		{"bad option magic", func(t *testing.T) *raw {
			r := rawDial(t, addr, FlagCFixedNewstyle)
			r.write(make([]byte, OptionHeaderSize))
			return r
		}},
		{"option longer than 64 KiB", func(t *testing.T) *raw {
			r := rawDial(t, addr, FlagCFixedNewstyle)
			r.write(AppendOptionHeader(nil, OptionHeader{Option: OptGo, Length: MaxOptionLength + 1}))
			return r
		}},
		{"bad request magic", func(t *testing.T) *raw {
			r := transmission(t)
			r.write(make([]byte, RequestHeaderSize))
			return r
		}},
		{"write payload over 32 MiB", func(t *testing.T) *raw {
			r := transmission(t)
			r.request(Request{Type: CmdWrite, Length: MaxPayload + 1}, nil)
			return r
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.do(t).closed()
		})
	}
}

// slowExport blocks ReadAt at offset 0 until released and counts the
// requests executing at once.
type slowExport struct {
	*memExport
	release chan struct{}
	running atomic.Int32
	peak    atomic.Int32
}

func (s *slowExport) ReadAt(p []byte, off int64) error {
	n := s.running.Add(1)
	defer s.running.Add(-1)
	for {
		old := s.peak.Load()
		if n <= old || s.peak.CompareAndSwap(old, n) {
			break
		}
	}
	if off == 0 {
		<-s.release
	}
	return s.memExport.ReadAt(p, off)
}

// TestRepliesOutOfOrder shows pipelining: a slow READ does not hold up a
// WRITE sent after it.
func TestRepliesOutOfOrder(t *testing.T) {
	slow := &slowExport{memExport: newMemExport(1 << 20), release: make(chan struct{})}
	addr := serveExports(t, map[string]Export{"c": slow}, nil)
	r := rawDial(t, addr, FlagCFixedNewstyle|FlagCNoZeroes)
	r.option(OptExportName, []byte("c"))
	r.read(ExportNameReplySize)
	r.request(Request{Type: CmdRead, Cookie: 1, Offset: 0, Length: 512}, nil)
	r.request(Request{Type: CmdWrite, Cookie: 2, Offset: 4096, Length: 4}, []byte("wxyz"))
	if s := r.simple(); s.Cookie != 2 || s.Errno != 0 {
		t.Fatalf("first reply %+v, want the WRITE's", s)
	}
	close(slow.release)
	if s := r.simple(); s.Cookie != 1 || s.Errno != 0 {
		t.Fatalf("second reply %+v, want the READ's", s)
	}
	r.read(512)
}

func TestMaxInFlight(t *testing.T) {
	checkReadsBounded(t, func(cfg *ServerConfig) { cfg.MaxInFlight = 2 }, 512, 200*time.Millisecond, "MaxInFlight = 2")
}

// checkReadsBounded pipelines 6 reads of n bytes that the export holds
// under a server configured by tweak: exactly 2 may execute at once (what
// the limit named allows), and all complete once released.
func checkReadsBounded(t *testing.T, tweak func(*ServerConfig), n int, settle time.Duration, limit string) {
	t.Helper()
	slow := &slowExport{memExport: newMemExport(max(n, 1<<20)), release: make(chan struct{})}
	addr := serveExports(t, map[string]Export{"c": slow}, tweak)
	c := dial(t, ClientConfig{Addr: addr, Export: "c"})
	errs := make(chan error, 6)
	for range 6 {
		go func() { errs <- c.ReadAt(t.Context(), make([]byte, n), 0) }()
	}
	time.Sleep(settle)
	if got := slow.running.Load(); got != 2 {
		t.Fatalf("%d reads of %d bytes executing, want 2 (%s)", got, n, limit)
	}
	close(slow.release)
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if p := slow.peak.Load(); p > 2 {
		t.Fatalf("peak of %d reads executing, want at most 2", p)
	}
}

// failingExport fails every operation with a chosen error.
type failingExport struct {
	*memExport
	err error
}

func (f *failingExport) WriteAt([]byte, int64) error { return f.err }

func TestExportErrorsReachTheClient(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		errno uint32
		msg   string
	}{
		{"typed", &Error{Errno: EPERM, Message: "epoch fenced"}, EPERM, "epoch fenced"},
		{"wrapped typed", fmt.Errorf("chunk 7: %w", &Error{Errno: ESHUTDOWN, Message: "closing"}), ESHUTDOWN,
			"chunk 7: nbd: server error ESHUTDOWN: closing"},
		{"io", errors.New("disk on fire"), EIO, "disk on fire"},
		{"nospace", &net.OpError{Op: "write", Err: syscall.ENOSPC}, ENOSPC, "write: no space left on device"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exp := &failingExport{memExport: newMemExport(4096), err: tc.err}
			addr := serveExports(t, map[string]Export{"c": exp}, nil)
			c := dial(t, ClientConfig{Addr: addr, Export: "c"})
			err := c.WriteAt(t.Context(), []byte("x"), 0, false)
			var ne *Error
			if !errors.As(err, &ne) || ne.Errno != tc.errno {
				t.Fatalf("WriteAt = %v, want errno %s", err, ErrnoName(tc.errno))
			}
			if ne.Message != tc.msg {
				t.Fatalf("message %q, want %q", ne.Message, tc.msg)
			}
			// The connection survives a failed request.
			if err := c.ReadAt(t.Context(), make([]byte, 1), 0); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	addr := serveExports(t, map[string]Export{"c": newMemExport(4096)}, func(cfg *ServerConfig) {
		cfg.HandshakeTimeout = 100 * time.Millisecond
	})
	r := rawDial(t, addr, FlagCFixedNewstyle)
	start := time.Now()
	r.closed()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("silent client kept for %v", d)
	}
}

type roExport struct{ *memExport }

func (roExport) ReadOnly() bool { return true }

// TestReadOnlyExport: an export that says it is read-only is offered with
// NBD_FLAG_READ_ONLY; writes, trims and write-zeroes fail with EPERM and
// change nothing; reads work.
func TestReadOnlyExport(t *testing.T) {
	mem := newMemExport(8192)
	if err := mem.WriteAt([]byte("kept"), 100); err != nil {
		t.Fatal(err)
	}
	addr := serveExports(t, map[string]Export{"ro": roExport{mem}, "rw": newMemExport(8192)}, nil)
	c := dial(t, ClientConfig{Addr: addr, Export: "ro"})
	if c.neg.flags&FlagReadOnly == 0 {
		t.Fatalf("transmission flags %#x lack NBD_FLAG_READ_ONLY", c.neg.flags)
	}
	ctx := t.Context()
	for name, err := range map[string]error{
		"write":        c.WriteAt(ctx, []byte("gone"), 100, false),
		"write FUA":    c.WriteAt(ctx, []byte("gone"), 100, true),
		"trim":         c.Trim(ctx, 0, 4096),
		"write zeroes": c.WriteZeroes(ctx, 0, 4096),
	} {
		var ne *Error
		if !errors.As(err, &ne) || ne.Errno != EPERM {
			t.Errorf("%s on a read-only export: %v, want EPERM", name, err)
		}
	}
	got := make([]byte, 4)
	if err := c.ReadAt(ctx, got, 100); err != nil || string(got) != "kept" {
		t.Fatalf("read: %q, %v", got, err)
	}
	if rw := dial(t, ClientConfig{Addr: addr, Export: "rw"}); rw.neg.flags&FlagReadOnly != 0 {
		t.Error("a writable export is offered read-only")
	}
}

// TestMaxInFlightBytes: with room for 64 MiB, 6 reads of 32 MiB that the
// export holds run two at a time, whatever MaxInFlight allows; the rest
// wait unread, and all complete once released.
func TestMaxInFlightBytes(t *testing.T) {
	checkReadsBounded(t, func(cfg *ServerConfig) { cfg.MaxInFlightBytes = 2 * MaxPayload }, MaxPayload, 300*time.Millisecond,
		fmt.Sprintf("MaxInFlightBytes = %d", 2*MaxPayload))
}

// TestMaxConns: a server holding MaxConns connections closes one more at
// once; when one ends, a new one is served.
func TestMaxConns(t *testing.T) {
	addr := serveExports(t, map[string]Export{"c": newMemExport(4096)}, func(cfg *ServerConfig) { cfg.MaxConns = 2 })
	a := dial(t, ClientConfig{Addr: addr, Export: "c"})
	dial(t, ClientConfig{Addr: addr, Export: "c"})
	if _, err := Dial(t.Context(), ClientConfig{Addr: addr, Export: "c", DialTimeout: 2 * time.Second}); err == nil {
		t.Fatal("a third connection was served with MaxConns = 2")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := Dial(t.Context(), ClientConfig{Addr: addr, Export: "c", DialTimeout: 2 * time.Second})
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of two closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
