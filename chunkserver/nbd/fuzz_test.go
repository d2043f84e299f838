package nbd

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

func FuzzRequestHeader(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 512}))
	f.Add(AppendRequest(nil, Request{Type: CmdWrite, Flags: CmdFlagFUA, Cookie: 1 << 63, Length: MaxPayload}))
	f.Add(make([]byte, RequestHeaderSize))
	f.Add([]byte{0x25, 0x60, 0x95})
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := DecodeRequest(b)
		valid := len(b) >= RequestHeaderSize && be.Uint32(b) == MagicRequest
		if valid != (err == nil) {
			t.Fatalf("DecodeRequest(% x) error %v", b, err)
		}
		if err == nil && !bytes.Equal(AppendRequest(nil, q), b[:RequestHeaderSize]) {
			t.Fatalf("re-encoding %+v differs from input", q)
		}
	})
}

// handshakeSeed builds a client byte stream: flags, options, then requests.
func handshakeSeed(parts ...[]byte) []byte {
	b := AppendClientFlags(nil, FlagCFixedNewstyle|FlagCNoZeroes)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func opt(o uint32, data []byte) []byte {
	return append(AppendOptionHeader(nil, OptionHeader{Option: o, Length: uint32(len(data))}), data...)
}

// FuzzOptions feeds arbitrary client bytes to a server connection over
// net.Pipe: the server must neither panic nor hang.
func FuzzOptions(f *testing.F) {
	meta := AppendMetaContextRequest(nil, MetaContextRequest{Export: "c", Queries: []string{"base:allocation", "chunkraid:log"}})
	f.Add(handshakeSeed(
		opt(OptStructuredReply, nil), opt(OptSetMetaContext, meta), opt(OptGo, goData("c", InfoBlockSize)),
		AppendRequest(nil, Request{Type: CmdRead, Cookie: 1, Length: 512}),
		AppendRequest(nil, Request{Type: CmdWrite, Cookie: 2, Offset: 100, Length: 3}), []byte("abc"),
		AppendRequest(nil, Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Cookie: 3, Length: 4096}),
		AppendRequest(nil, Request{Type: CmdTrim, Cookie: 4, Length: 4096}),
		AppendRequest(nil, Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole, Cookie: 5, Length: 4096}),
		AppendRequest(nil, Request{Type: CmdFlush, Cookie: 6}),
		AppendRequest(nil, Request{Type: CmdDisc}),
	))
	f.Add(handshakeSeed(opt(OptList, nil), opt(OptListMetaContext, meta), opt(OptInfo, goData("c")), opt(OptAbort, nil)))
	f.Add(handshakeSeed(opt(OptExportName, []byte("c")),
		AppendRequest(nil, Request{Type: CmdRead, Cookie: 1, Offset: 1 << 40, Length: 1})))
	f.Add(handshakeSeed(opt(99, []byte("junk")), opt(OptGo, []byte{0, 0, 0, 1})))
	f.Add([]byte("garbage"))

	exp := newMemExport(64 << 10)
	srv, err := NewServer(ServerConfig{
		Lookup: func(name string) (Export, error) {
			if name == "c" {
				return exp, nil
			}
			return nil, io.ErrUnexpectedEOF
		},
		List:        func() []string { return []string{"c"} },
		MaxInFlight: 4,
		MetaContexts: map[string]MetaContext{
			"chunkraid:log": func(_ Export, off, length int64) ([]Extent, error) {
				return []Extent{{Length: length / 2, Flags: 1}, {Length: length - length/2 + 1}}, nil
			},
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cc, sc := net.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan struct{})
		go func() {
			srv.ServeConn(ctx, sc)
			close(done)
		}()
		go io.Copy(io.Discard, cc)
		cc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		cc.Write(in)
		cc.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("server did not finish the connection")
		}
	})
}

// FuzzStructuredReply feeds arbitrary server bytes to a client with four
// requests pending (cookies 1-4: READ 4 KiB at 0, BLOCK_STATUS, WRITE,
// FLUSH). Every call must return, nothing may panic, and the READ buffer
// must not change after ReadAt returned.
func FuzzStructuredReply(f *testing.F) {
	data := func(cookie uint64, flags uint16, off uint64, n int) []byte {
		b := AppendChunkHeader(nil, ChunkHeader{Flags: flags, Type: ReplyTypeOffsetData, Cookie: cookie, Length: uint32(8 + n)})
		b = be.AppendUint64(b, off)
		return append(b, bytes.Repeat([]byte{0xee}, n)...)
	}
	status := func(cookie uint64, flags uint16, id uint32, ds ...Descriptor) []byte {
		p := AppendBlockStatus(nil, id, ds)
		return append(AppendChunkHeader(nil, ChunkHeader{Flags: flags, Type: ReplyTypeBlockStatus, Cookie: cookie, Length: uint32(len(p))}), p...)
	}
	errc := func(cookie uint64, typ uint16, e ErrorChunk) []byte {
		p := AppendErrorChunk(nil, e)
		return append(AppendChunkHeader(nil, ChunkHeader{Flags: ReplyFlagDone, Type: typ, Cookie: cookie, Length: uint32(len(p))}), p...)
	}
	hole := func(cookie uint64, flags uint16, off uint64, n uint32) []byte {
		p := AppendOffsetHole(nil, off, n)
		return append(AppendChunkHeader(nil, ChunkHeader{Flags: flags, Type: ReplyTypeOffsetHole, Cookie: cookie, Length: 12}), p...)
	}
	ok := func(cookie uint64) []byte { return AppendSimpleReply(nil, SimpleReply{Cookie: cookie}) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	f.Add(cat(data(1, ReplyFlagDone, 0, 4096), status(2, 0, 1, Descriptor{4096, 3}), status(2, ReplyFlagDone, 2, Descriptor{1 << 20, 0}), ok(3), ok(4)))
	f.Add(cat(ok(4), data(1, 0, 2048, 2048), hole(1, 0, 0, 2048), AppendChunkHeader(nil, ChunkHeader{Flags: ReplyFlagDone, Cookie: 1}), ok(3)))
	f.Add(cat(errc(1, ReplyTypeError, ErrorChunk{Errno: EIO, Message: "bad sector"}), errc(2, ReplyTypeErrorOffset, ErrorChunk{Errno: EINVAL, HasOffset: true})))
	f.Add(cat(data(1, ReplyFlagDone, 0, 100), AppendSimpleReply(nil, SimpleReply{Errno: ENOSPC, Cookie: 3})))
	f.Add(cat(data(1, 0, 0, 4096), data(1, ReplyFlagDone, 0, 4096)))
	f.Add(cat(errc(3, ReplyTypeFlagError|9, ErrorChunk{Errno: 1, Message: "x"}), ok(4), ok(99)))
	f.Add([]byte{0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1})

	f.Fuzz(func(t *testing.T, in []byte) {
		cc, sc := net.Pipe()
		neg := negotiated{
			size:       1 << 20,
			flags:      transmissionFlags | FlagSendDF,
			structured: true,
			blockSizes: BlockSizes{1, PreferredBlockSize, MaxPayload},
			contexts:   map[string]uint32{ContextBaseAllocation: 1, "chunkraid:log": 2},
		}
		c := newClient(cc, bufio.NewReader(cc), neg, 0)
		defer c.Close()

		// The fake server reads each request before the next is issued,
		// so cookies are 1, 2, 3, 4 in order.
		got := make(chan struct{})
		go func() {
			defer sc.Close()
			var hb [RequestHeaderSize]byte
			for range 4 {
				if _, err := io.ReadFull(sc, hb[:]); err != nil {
					return
				}
				q, err := DecodeRequest(hb[:])
				if err != nil {
					return
				}
				if q.Type == CmdWrite {
					if _, err := io.CopyN(io.Discard, sc, int64(q.Length)); err != nil {
						return
					}
				}
				got <- struct{}{}
			}
			sc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			sc.Write(in)
		}()

		ctx := context.Background()
		buf := make([]byte, 4096)
		var after []byte
		results := make(chan error, 4)
		calls := []func() error{
			func() error {
				err := c.ReadAt(ctx, buf, 0)
				after = bytes.Clone(buf)
				return err
			},
			func() error { _, err := c.BlockStatus(ctx, ContextBaseAllocation, 0, 1<<20); return err },
			func() error { return c.WriteAt(ctx, make([]byte, 512), 0, false) },
			func() error { return c.Flush(ctx) },
		}
		for _, call := range calls {
			go func() { results <- call() }()
			select {
			case <-got:
			case <-time.After(5 * time.Second):
				t.Fatal("request never reached the fake server")
			}
		}
		for range calls {
			select {
			case <-results:
			case <-time.After(10 * time.Second):
				t.Fatal("a call did not return")
			}
		}
		c.Close()
		if !bytes.Equal(after, buf) {
			t.Fatal("READ buffer changed after ReadAt returned")
		}
	})
}
