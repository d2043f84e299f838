package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"
)

// ClientConfig configures Dial. Zero values mean defaults.
type ClientConfig struct {
	// Addr is the server's host:port. Required.
	Addr string
	// Export is the export name sent to the server.
	Export string
	// MetaContexts are the meta contexts to select for BlockStatus, e.g.
	// "base:allocation". Dial fails if the server does not offer one.
	MetaContexts []string
	// Timeout bounds each request; 0 means none. A request not answered in
	// time fails with ErrTimeout and the connection is closed, so every
	// other pending request fails with ErrClosed.
	Timeout time.Duration
	// DialTimeout bounds the TCP connect and the handshake; 0 means 10 s.
	DialTimeout time.Duration
}

const defaultDialTimeout = 10 * time.Second

func (cfg *ClientConfig) validate() error {
	switch {
	case cfg.Addr == "":
		return errors.New("nbd: ClientConfig.Addr is required")
	case len(cfg.Export) > MaxStringLength:
		return fmt.Errorf("nbd: export name of %d bytes exceeds %d", len(cfg.Export), MaxStringLength)
	case cfg.Timeout < 0:
		return fmt.Errorf("nbd: ClientConfig.Timeout %v is negative", cfg.Timeout)
	case cfg.DialTimeout < 0:
		return fmt.Errorf("nbd: ClientConfig.DialTimeout %v is negative", cfg.DialTimeout)
	}
	for _, mc := range cfg.MetaContexts {
		if len(mc) > MaxStringLength {
			return fmt.Errorf("nbd: meta context name of %d bytes exceeds %d", len(mc), MaxStringLength)
		}
	}
	return nil
}

// negotiated is what the handshake settled.
type negotiated struct {
	size       uint64
	flags      uint16 // transmission flags
	structured bool
	blockSizes BlockSizes
	contexts   map[string]uint32 // selected meta context name -> id
}

// Client is a connection to one export. Its methods are safe for concurrent
// use; requests are pipelined on the single connection.
type Client struct {
	nc         net.Conn
	br         *bufio.Reader // read only by the reader goroutine
	neg        negotiated
	maxPayload uint32 // largest READ/WRITE sent in one request
	timeout    time.Duration

	wmu sync.Mutex // serializes writes to nc

	mu struct {
		sync.Mutex
		pending map[uint64]*Call // by cookie; nil once the connection is down
		cookie  uint64           // last cookie used
		err     error            // why the client is unusable; wraps ErrClosed
	}

	calls      sync.Pool     // *Call
	readerDone chan struct{} // closed when the reader goroutine exits
}

// Dial connects to an NBD server and negotiates the export. ctx bounds the
// connect and the handshake only. The Client owns a reader goroutine until
// Close is called or the connection fails.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dt := cfg.DialTimeout
	if dt == 0 {
		dt = defaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, dt)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", cfg.Addr, err)
	}
	// The end of ctx (DialTimeout included) interrupts the handshake's
	// reads and writes; the error then wraps ctx.Err().
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(nc, 64<<10)
	neg, err := handshake(nc, br, cfg)
	if !stop() || err != nil {
		nc.Close()
		if err == nil || ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return nil, fmt.Errorf("nbd: handshake with %s: %w", cfg.Addr, err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd: %w", err)
	}
	return newClient(nc, br, neg, cfg.Timeout), nil
}

// handshake runs the client side of the fixed newstyle negotiation.
func handshake(nc net.Conn, br *bufio.Reader, cfg ClientConfig) (negotiated, error) {
	var neg negotiated
	var g [GreetingSize]byte
	if _, err := io.ReadFull(br, g[:]); err != nil {
		return neg, fmt.Errorf("read greeting: %w", err)
	}
	hflags, err := DecodeGreeting(g[:])
	if err != nil {
		return neg, err
	}
	if hflags&FlagFixedNewstyle == 0 {
		return neg, fmt.Errorf("%w: server does not offer fixed newstyle negotiation", ErrNotSupported)
	}
	cflags := FlagCFixedNewstyle
	noZeroes := hflags&FlagNoZeroes != 0
	if noZeroes {
		cflags |= FlagCNoZeroes
	}
	if _, err := nc.Write(AppendClientFlags(nil, cflags)); err != nil {
		return neg, err
	}
	o := optClient{nc: nc, br: br, export: cfg.Export}

	// Structured replies: ACK means yes; an error reply means no.
	rep, _, err := o.roundTrip(OptStructuredReply, nil)
	if err != nil {
		return neg, err
	}
	if rep != RepAck && rep&RepFlagError == 0 {
		return neg, fmt.Errorf("%w: %s in reply to NBD_OPT_STRUCTURED_REPLY", ErrProtocol, RepName(rep))
	}
	neg.structured = rep == RepAck

	if len(cfg.MetaContexts) > 0 {
		if !neg.structured {
			return neg, fmt.Errorf("%w: meta contexts need structured replies", ErrNotSupported)
		}
		if neg.contexts, err = o.setMetaContexts(cfg.MetaContexts); err != nil {
			return neg, err
		}
	}

	neg.blockSizes = BlockSizes{Min: 1, Preferred: PreferredBlockSize, Max: MaxPayload}
	unsup, err := o.goExport(&neg)
	if err != nil {
		return neg, err
	}
	if unsup {
		// An old server: EXPORT_NAME cannot report errors, only hang up.
		if err := o.send(OptExportName, []byte(cfg.Export)); err != nil {
			return neg, err
		}
		n := ExportNameReplySize
		if !noZeroes {
			n += ExportNamePadding
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return neg, fmt.Errorf("server closed the connection after NBD_OPT_EXPORT_NAME %q (export refused?): %w", cfg.Export, err)
		}
		neg.size, neg.flags, _ = DecodeExportNameReply(b)
	}
	if neg.size > math.MaxInt64 {
		return neg, fmt.Errorf("%w: export size %d", ErrProtocol, neg.size)
	}
	return neg, nil
}

// optClient sends options and reads their replies during the handshake.
type optClient struct {
	nc     net.Conn
	br     *bufio.Reader
	export string
}

func (o *optClient) send(opt uint32, data []byte) error {
	b := AppendOptionHeader(make([]byte, 0, OptionHeaderSize+len(data)), OptionHeader{Option: opt, Length: uint32(len(data))})
	b = append(b, data...)
	_, err := o.nc.Write(b)
	return err
}

// next reads one reply to opt.
func (o *optClient) next(opt uint32) (uint32, []byte, error) {
	var hb [OptionReplyHeaderSize]byte
	if _, err := io.ReadFull(o.br, hb[:]); err != nil {
		return 0, nil, fmt.Errorf("read reply to %s: %w", OptName(opt), err)
	}
	h, err := DecodeOptionReplyHeader(hb[:])
	if err != nil {
		return 0, nil, err
	}
	if h.Option != opt {
		return 0, nil, fmt.Errorf("%w: reply to %s while waiting for %s", ErrProtocol, OptName(h.Option), OptName(opt))
	}
	data := make([]byte, h.Length)
	if _, err := io.ReadFull(o.br, data); err != nil {
		return 0, nil, fmt.Errorf("read reply to %s: %w", OptName(opt), err)
	}
	return h.Type, data, nil
}

// roundTrip sends an option that has a single reply.
func (o *optClient) roundTrip(opt uint32, data []byte) (uint32, []byte, error) {
	if err := o.send(opt, data); err != nil {
		return 0, nil, err
	}
	return o.next(opt)
}

func (o *optClient) refused(opt, rep uint32, data []byte) error {
	msg := data
	if len(msg) > MaxStringLength {
		msg = msg[:MaxStringLength]
	}
	return &OptionError{Option: opt, Reply: rep, Export: o.export, Message: string(msg)}
}

// setMetaContexts selects the named contexts and returns their ids.
func (o *optClient) setMetaContexts(names []string) (map[string]uint32, error) {
	req := AppendMetaContextRequest(nil, MetaContextRequest{Export: o.export, Queries: names})
	if len(req) > MaxOptionLength {
		return nil, fmt.Errorf("%w: meta context request of %d bytes", ErrTooLong, len(req))
	}
	if err := o.send(OptSetMetaContext, req); err != nil {
		return nil, err
	}
	ids := make(map[string]uint32)
	for range maxOptions {
		rep, data, err := o.next(OptSetMetaContext)
		if err != nil {
			return nil, err
		}
		switch {
		case rep == RepMetaContext:
			id, name, err := DecodeRepMetaContext(data)
			if err != nil {
				return nil, err
			}
			ids[name] = id
		case rep == RepAck:
			for _, n := range names {
				if _, ok := ids[n]; !ok {
					return nil, fmt.Errorf("%w: server does not offer meta context %q", ErrNotSupported, n)
				}
			}
			return ids, nil
		case rep&RepFlagError != 0:
			return nil, o.refused(OptSetMetaContext, rep, data)
		default:
			return nil, fmt.Errorf("%w: %s in reply to NBD_OPT_SET_META_CONTEXT", ErrProtocol, RepName(rep))
		}
	}
	return nil, fmt.Errorf("%w: too many replies to NBD_OPT_SET_META_CONTEXT", ErrProtocol)
}

// goExport sends GO. It reports unsup if the server does not know GO.
func (o *optClient) goExport(neg *negotiated) (unsup bool, err error) {
	req := AppendExportRequest(nil, ExportRequest{Name: o.export, Infos: []uint16{InfoBlockSize}})
	if err := o.send(OptGo, req); err != nil {
		return false, err
	}
	gotExport := false
	for range maxOptions {
		rep, data, err := o.next(OptGo)
		if err != nil {
			return false, err
		}
		switch {
		case rep == RepInfo:
			in, err := DecodeInfo(data)
			if err != nil {
				return false, err
			}
			switch in.Type {
			case InfoExport:
				neg.size, neg.flags, gotExport = in.Size, in.Flags, true
			case InfoBlockSize:
				neg.blockSizes = in.BlockSizes
			}
		case rep == RepAck:
			if !gotExport {
				return false, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", ErrProtocol)
			}
			return false, nil
		case rep == RepErrUnsup:
			return true, nil
		case rep&RepFlagError != 0:
			return false, o.refused(OptGo, rep, data)
		default:
			return false, fmt.Errorf("%w: %s in reply to NBD_OPT_GO", ErrProtocol, RepName(rep))
		}
	}
	return false, fmt.Errorf("%w: too many replies to NBD_OPT_GO", ErrProtocol)
}

func newClient(nc net.Conn, br *bufio.Reader, neg negotiated, timeout time.Duration) *Client {
	c := &Client{
		nc:         nc,
		br:         br,
		neg:        neg,
		timeout:    timeout,
		readerDone: make(chan struct{}),
	}
	// Honour the server's maximum, but never send more than MaxPayload,
	// the largest size every server must accept.
	c.maxPayload = MaxPayload
	if m := neg.blockSizes.Max; m > 0 && m < c.maxPayload {
		c.maxPayload = m
	}
	if mb := neg.blockSizes.Min; mb > 1 && mb <= c.maxPayload {
		c.maxPayload -= c.maxPayload % mb
	}
	c.mu.pending = make(map[uint64]*Call)
	go c.readLoop()
	if timeout > 0 {
		go c.watchdog()
	}
	return c
}

// Size returns the export's size in bytes.
func (c *Client) Size() int64 { return int64(c.neg.size) }

// ReadAt reads len(p) bytes at off. If ctx is cancelled while the reply's
// data is being copied into p, ReadAt waits for that copy (bounded by
// Timeout or the connection failing) so that p is never written after it
// returns.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	return c.transfer(ctx, CmdRead, 0, p, off)
}

// WriteAt writes p at off. With fua the data is durable when WriteAt
// returns (through FUA, or a flush if the server lacks FUA). The request,
// p included, is on the wire before the call can return, so p is never
// read afterwards, even when ctx ends first.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	var flags uint16
	flushAfter := false
	if fua {
		switch {
		case c.neg.flags&FlagSendFUA != 0:
			flags = CmdFlagFUA
		case c.neg.flags&FlagSendFlush != 0:
			flushAfter = true
		default:
			return fmt.Errorf("%w: neither FUA nor FLUSH", ErrNotSupported)
		}
	}
	if err := c.transfer(ctx, CmdWrite, flags, p, off); err != nil {
		return err
	}
	if flushAfter {
		return c.Flush(ctx)
	}
	return nil
}

// StartWrite sends a write of p at off, like WriteAt, and returns without
// waiting for its reply: a caller that writes to several servers sends to
// each and then waits for them all, with no goroutine per server. p is on
// the wire when StartWrite returns. The call's Wait must be called once.
// StartWrite returns nil, and sends nothing, when the write takes more than
// one request (more than the maximum payload, or FUA by a flush); the
// caller then uses WriteAt.
func (c *Client) StartWrite(p []byte, off int64, fua bool) *Call {
	if len(p) == 0 || len(p) > int(c.maxPayload) || fua && c.neg.flags&FlagSendFUA == 0 {
		return nil
	}
	var flags uint16
	if fua {
		flags = CmdFlagFUA
	}
	if err := c.checkRange(off, int64(len(p))); err != nil {
		return c.failedCall(err)
	}
	cl, err := c.start(CmdWrite, flags, uint64(off), uint32(len(p)), p)
	if err != nil {
		return c.failedCall(err)
	}
	return cl
}

// failedCall is a call that ends with err without being sent.
func (c *Client) failedCall(err error) *Call {
	cl := c.getCall()
	cl.state = stateDone
	cl.err = err
	cl.done <- struct{}{}
	return cl
}

// Wait waits for the reply of a call StartWrite sent and returns its
// result. If ctx ends first the call is abandoned (the request still runs on
// the server) and ctx's error returned. cl must not be used afterwards.
func (cl *Call) Wait(ctx context.Context) error { return cl.c.finish(ctx, cl) }

// Flush makes every write acknowledged before it durable.
func (c *Client) Flush(ctx context.Context) error {
	if c.neg.flags&FlagSendFlush == 0 {
		return fmt.Errorf("%w: FLUSH", ErrNotSupported)
	}
	cl, err := c.start(CmdFlush, 0, 0, 0, nil)
	if err != nil {
		return err
	}
	return c.finish(ctx, cl)
}

// Trim deallocates [off, off+length); the range reads back as zeroes with
// this project's server.
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	if c.neg.flags&FlagSendTrim == 0 {
		return fmt.Errorf("%w: TRIM", ErrNotSupported)
	}
	if err := c.checkRange(off, length); err != nil {
		return err
	}
	return c.effect(ctx, CmdTrim, 0, off, length)
}

// WriteZeroes zeroes [off, off+length), allowing the server to punch holes.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64) error {
	if c.neg.flags&FlagSendWriteZeroes == 0 {
		return fmt.Errorf("%w: WRITE_ZEROES", ErrNotSupported)
	}
	if err := c.checkRange(off, length); err != nil {
		return err
	}
	return c.effect(ctx, CmdWriteZeroes, 0, off, length)
}

// BlockStatus returns the extents of the named meta context (selected at
// Dial) starting at off. The extents are consecutive, cover at least one
// byte and at most length bytes; a server may describe less than asked.
func (c *Client) BlockStatus(ctx context.Context, metaContext string, off, length int64) ([]Extent, error) {
	id, ok := c.neg.contexts[metaContext]
	if !ok {
		return nil, fmt.Errorf("%w: meta context %q was not selected at Dial", ErrNotSupported, metaContext)
	}
	if err := c.checkRange(off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	// The length is a hint; keep it within 32 bits and block-aligned.
	length = min(length, int64(math.MaxUint32)&^(PreferredBlockSize-1))
	cl, err := c.send(CmdBlockStatus, 0, uint64(off), uint32(length), nil, nil, id)
	if err != nil {
		return nil, err
	}
	owned, err := c.wait(ctx, cl)
	if !owned {
		return nil, err
	}
	if err != nil {
		c.putCall(cl)
		return nil, err
	}
	var out []Extent
	var sum int64
	for _, d := range cl.desc {
		l := min(int64(d.Length), length-sum)
		out = append(out, Extent{Length: l, Flags: d.Flags})
		if sum += l; sum >= length {
			break
		}
	}
	c.putCall(cl)
	return out, nil
}

// Close sends a disconnect request and closes the connection. Requests still
// pending fail with ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.mu.err != nil {
		c.mu.Unlock()
		<-c.readerDone
		return nil
	}
	c.mu.err = ErrClosed
	c.mu.Unlock()

	c.wmu.Lock()
	// Best effort: the server may already be gone.
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.nc.Write(AppendRequest(nil, Request{Type: CmdDisc}))
	c.wmu.Unlock()
	err := c.nc.Close()
	<-c.readerDone
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (c *Client) checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > c.Size() || n > c.Size()-off {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, c.Size())
	}
	return nil
}

// ---- requests ----

// call states, guarded by Client.mu.
const (
	statePending   = iota // waiting for (more of) its reply
	stateReceiving        // the reader is copying data into buf
	stateAbandoned        // the caller gave up; the reader discards the reply
	stateDone             // reply complete
)

// Call is one request in flight: StartWrite returns it, and Wait awaits its reply.
type Call struct {
	c      *Client
	cookie uint64
	cmd    uint16
	off    uint64
	length uint32
	buf    []byte // READ destination (the caller's memory)
	ctxID  uint32 // BLOCK_STATUS: the context the caller asked for

	deadline time.Time // zero without Timeout
	state    int       // guarded by Client.mu

	// Written by the reader goroutine only, read by the caller after done.
	err      error        // result
	chunkErr error        // first error chunk of a structured reply
	spans    []span       // content chunks received (READ)
	desc     []Descriptor // descriptors for ctxID (BLOCK_STATUS)
	gotDesc  bool

	done chan struct{} // receives one value when the reply is complete
	hdr  [RequestHeaderSize]byte
	out  net.Buffers
	vec  [2][]byte
}

type span struct{ off, end uint64 }

func (c *Client) getCall() *Call {
	if cl, ok := c.calls.Get().(*Call); ok {
		return cl
	}
	return &Call{c: c, done: make(chan struct{}, 1)}
}

func (c *Client) putCall(cl *Call) {
	cl.buf = nil
	cl.err, cl.chunkErr = nil, nil
	cl.spans = cl.spans[:0]
	cl.desc = cl.desc[:0]
	if cap(cl.desc) > 4096 {
		cl.desc = nil // do not keep a huge block status reply pooled
	}
	cl.gotDesc = false
	cl.vec = [2][]byte{}
	cl.out = nil
	c.calls.Put(cl)
}

// start registers a request without data and sends it.
func (c *Client) start(cmd, flags uint16, off uint64, length uint32, data []byte) (*Call, error) {
	return c.send(cmd, flags, off, length, data, nil, 0)
}

// send registers a request and sends it: data is the WRITE payload, buf the
// READ destination, ctxID the meta context a BLOCK_STATUS caller wants. A
// failed send is not returned here: it breaks the connection, and the call
// then completes with an error wrapping ErrClosed.
func (c *Client) send(cmd, flags uint16, off uint64, length uint32, data, buf []byte, ctxID uint32) (*Call, error) {
	cl := c.getCall()
	cl.cmd, cl.off, cl.length, cl.buf, cl.ctxID = cmd, off, length, buf, ctxID
	cl.state = statePending
	if c.timeout > 0 {
		cl.deadline = time.Now().Add(c.timeout)
	}
	c.mu.Lock()
	if c.mu.err != nil {
		err := c.mu.err
		c.mu.Unlock()
		c.putCall(cl)
		return nil, err
	}
	c.mu.cookie++
	cl.cookie = c.mu.cookie
	c.mu.pending[cl.cookie] = cl
	c.mu.Unlock()

	hdr := AppendRequest(cl.hdr[:0], Request{Flags: flags, Type: cmd, Cookie: cl.cookie, Offset: off, Length: length})
	c.wmu.Lock()
	var err error
	if len(data) == 0 {
		_, err = c.nc.Write(hdr)
	} else {
		cl.vec = [2][]byte{hdr, data}
		cl.out = cl.vec[:]
		_, err = cl.out.WriteTo(c.nc)
	}
	c.wmu.Unlock()
	if err != nil {
		// A partial write leaves the stream unusable. The reader fails
		// every pending call, this one included.
		c.fail(fmt.Errorf("send %s: %w", CmdName(cmd), err))
	}
	return cl, nil
}

// wait waits for a call. owned reports whether the caller owns cl again
// (and must put it back); otherwise the reader recycles it.
func (c *Client) wait(ctx context.Context, cl *Call) (owned bool, err error) {
	select {
	case <-cl.done:
		return true, cl.err
	case <-ctx.Done():
	}
	c.mu.Lock()
	if cl.state == statePending {
		cl.state = stateAbandoned
		c.mu.Unlock()
		return false, ctx.Err()
	}
	c.mu.Unlock()
	// The reply is complete or its data is being copied into the
	// caller's buffer: that ends soon, or with the connection.
	<-cl.done
	return true, ctx.Err()
}

// finish waits for a call and recycles it.
func (c *Client) finish(ctx context.Context, cl *Call) error {
	owned, err := c.wait(ctx, cl)
	if owned {
		c.putCall(cl)
	}
	return err
}

// abandon gives up a call without waiting for its reply.
func (c *Client) abandon(cl *Call) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.finish(ctx, cl)
}

// transfer runs a READ or WRITE, split into requests of at most maxPayload
// bytes that are all in flight together.
func (c *Client) transfer(ctx context.Context, cmd, flags uint16, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if len(p) <= int(c.maxPayload) {
		cl, err := c.piece(cmd, flags, p, off)
		if err != nil {
			return err
		}
		return c.finish(ctx, cl)
	}
	calls := make([]*Call, 0, (len(p)+int(c.maxPayload)-1)/int(c.maxPayload))
	for done := 0; done < len(p); done += int(c.maxPayload) {
		n := min(len(p)-done, int(c.maxPayload))
		cl, err := c.piece(cmd, flags, p[done:done+n], off+int64(done))
		if err != nil {
			for _, cl := range calls {
				c.abandon(cl)
			}
			return err
		}
		calls = append(calls, cl)
	}
	var first error
	stored := 0
	for i, cl := range calls {
		switch err := c.finish(ctx, cl); {
		case err == nil:
			stored += min(len(p)-i*int(c.maxPayload), int(c.maxPayload))
		case first == nil:
			first = err
		}
	}
	if first != nil && stored > 0 && cmd != CmdRead && errors.Is(first, syscall.ENOSPC) {
		// Out of space means nothing changed; here some pieces did.
		return fmt.Errorf("nbd: %d of %d bytes stored, then: %s", stored, len(p), first)
	}
	return first
}

func (c *Client) piece(cmd, flags uint16, p []byte, off int64) (*Call, error) {
	if cmd == CmdRead {
		return c.send(cmd, flags, uint64(off), uint32(len(p)), nil, p, 0)
	}
	return c.start(cmd, flags, uint64(off), uint32(len(p)), p)
}

// effect runs TRIM or WRITE_ZEROES, split like transfer.
func (c *Client) effect(ctx context.Context, cmd, flags uint16, off, length int64) error {
	if length == 0 {
		return nil
	}
	step := int64(c.maxPayload)
	var calls []*Call
	for done := int64(0); done < length; done += step {
		n := min(length-done, step)
		cl, err := c.start(cmd, flags, uint64(off+done), uint32(n), nil)
		if err != nil {
			for _, cl := range calls {
				c.abandon(cl)
			}
			return err
		}
		calls = append(calls, cl)
	}
	var first error
	for _, cl := range calls {
		if err := c.finish(ctx, cl); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ---- connection failure and timeouts ----

// fail marks the client unusable and closes the connection; the reader then
// fails every pending call. The first cause wins.
func (c *Client) fail(cause error) {
	c.mu.Lock()
	if c.mu.err == nil {
		c.mu.err = closedError(cause)
	}
	c.mu.Unlock()
	c.nc.Close()
}

func closedError(cause error) error {
	if errors.Is(cause, ErrClosed) {
		return cause
	}
	return fmt.Errorf("%w: %w", ErrClosed, cause)
}

// watchdog fails the connection when a request outlives Timeout.
func (c *Client) watchdog() {
	tick := max(c.timeout/8, 5*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-c.readerDone:
			return
		case now := <-t.C:
			var late *Call
			c.mu.Lock()
			for _, cl := range c.mu.pending {
				if now.After(cl.deadline) {
					late = cl
					break
				}
			}
			var cmd uint16
			if late != nil {
				cmd = late.cmd
			}
			c.mu.Unlock()
			if late != nil {
				c.fail(fmt.Errorf("%w: %s not answered within %v", ErrTimeout, CmdName(cmd), c.timeout))
				return
			}
		}
	}
}

// ---- reply reader ----

// readLoop reads replies until the connection fails, then fails every
// pending call. It is the only goroutine that writes into callers' buffers.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	err := c.readReplies()
	c.mu.Lock()
	if c.mu.err == nil {
		c.mu.err = closedError(err)
	}
	cause := c.mu.err
	pending := c.mu.pending
	c.mu.pending = nil
	c.mu.Unlock()
	c.nc.Close()
	for _, cl := range pending {
		c.complete(cl, cause)
	}
}

// maxChunkPayload bounds a structured reply chunk: the largest data chunk,
// or the largest block status chunk, whichever is more.
const maxChunkPayload = max(MaxPayload+8, 4+DescriptorSize*MaxDescriptors)

func (c *Client) readReplies() error {
	var hb [ChunkHeaderSize]byte
	var scratch []byte
	for {
		if _, err := io.ReadFull(c.br, hb[:4]); err != nil {
			return err
		}
		switch be.Uint32(hb[:]) {
		case MagicSimpleReply:
			if _, err := io.ReadFull(c.br, hb[4:SimpleReplySize]); err != nil {
				return err
			}
			r, _ := DecodeSimpleReply(hb[:SimpleReplySize])
			if err := c.simpleReply(r); err != nil {
				return err
			}
		case MagicStructuredReply:
			if !c.neg.structured {
				return fmt.Errorf("%w: structured reply without negotiation", ErrProtocol)
			}
			if _, err := io.ReadFull(c.br, hb[4:ChunkHeaderSize]); err != nil {
				return err
			}
			h, _ := DecodeChunkHeader(hb[:])
			var err error
			if scratch, err = c.chunk(h, scratch); err != nil {
				return err
			}
			if cap(scratch) > 1<<20 {
				scratch = nil
			}
		default:
			return fmt.Errorf("%w: reply starts with %#x", ErrBadMagic, be.Uint32(hb[:]))
		}
	}
}

// lookup finds the call a reply belongs to.
func (c *Client) lookup(cookie uint64) (*Call, error) {
	c.mu.Lock()
	cl := c.mu.pending[cookie]
	c.mu.Unlock()
	if cl == nil {
		return nil, fmt.Errorf("%w: reply for unknown cookie %d", ErrProtocol, cookie)
	}
	return cl, nil
}

// claim takes the right to write into cl.buf; it fails if the caller
// abandoned the call.
func (c *Client) claim(cl *Call) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl.state != statePending {
		return false
	}
	cl.state = stateReceiving
	return true
}

func (c *Client) release(cl *Call) {
	c.mu.Lock()
	cl.state = statePending
	c.mu.Unlock()
}

// complete ends a call: the waiting caller is woken, or an abandoned call
// is recycled.
func (c *Client) complete(cl *Call, err error) {
	c.mu.Lock()
	if c.mu.pending != nil {
		delete(c.mu.pending, cl.cookie)
	}
	abandoned := cl.state == stateAbandoned
	cl.state = stateDone
	c.mu.Unlock()
	if abandoned {
		c.putCall(cl)
		return
	}
	cl.err = err
	cl.done <- struct{}{}
}

func (c *Client) simpleReply(r SimpleReply) error {
	cl, err := c.lookup(r.Cookie)
	if err != nil {
		return err
	}
	if r.Errno != 0 {
		c.complete(cl, &Error{Errno: r.Errno})
		return nil
	}
	if cl.cmd == CmdRead {
		if c.neg.structured {
			return fmt.Errorf("%w: simple reply with data to a READ after structured replies were negotiated", ErrProtocol)
		}
		if c.claim(cl) {
			if _, err := io.ReadFull(c.br, cl.buf); err != nil {
				return err
			}
			c.release(cl)
		} else if _, err := c.br.Discard(int(cl.length)); err != nil {
			return err
		}
	} else if cl.cmd == CmdBlockStatus {
		return fmt.Errorf("%w: simple success reply to BLOCK_STATUS", ErrProtocol)
	}
	c.complete(cl, nil)
	return nil
}

// chunk handles one structured reply chunk.
func (c *Client) chunk(h ChunkHeader, scratch []byte) ([]byte, error) {
	if h.Length > maxChunkPayload {
		return scratch, fmt.Errorf("%w: chunk of %d bytes", ErrTooLong, h.Length)
	}
	cl, err := c.lookup(h.Cookie)
	if err != nil {
		return scratch, err
	}
	switch t := h.Type; {
	case t == ReplyTypeNone:
		if h.Length != 0 || h.Flags&ReplyFlagDone == 0 {
			return scratch, fmt.Errorf("%w: NONE chunk with length %d flags %#x", ErrProtocol, h.Length, h.Flags)
		}
	case t == ReplyTypeOffsetData || t == ReplyTypeOffsetHole:
		if err := c.content(cl, h); err != nil {
			return scratch, err
		}
	case t == ReplyTypeBlockStatus:
		if cl.cmd != CmdBlockStatus {
			return scratch, fmt.Errorf("%w: BLOCK_STATUS chunk for %s", ErrProtocol, CmdName(cl.cmd))
		}
		if h.Length < 4+DescriptorSize {
			return scratch, fmt.Errorf("%w: BLOCK_STATUS chunk of %d bytes", ErrProtocol, h.Length)
		}
		scratch = slices.Grow(scratch[:0], int(h.Length))[:h.Length]
		if _, err := io.ReadFull(c.br, scratch); err != nil {
			return scratch, err
		}
		if id := be.Uint32(scratch); id == cl.ctxID && !cl.gotDesc {
			if cl.desc, err = decodeBlockStatusInto(scratch, cl.desc[:0]); err != nil {
				return scratch, err
			}
			cl.gotDesc = true
		} else if _, err := decodeBlockStatusInto(scratch, nil); err != nil {
			// Another selected context, or a repeat: checked, not kept.
			return scratch, err
		}
	case t&ReplyTypeFlagError != 0:
		if h.Length > MaxOptionLength {
			return scratch, fmt.Errorf("%w: error chunk of %d bytes", ErrTooLong, h.Length)
		}
		scratch = slices.Grow(scratch[:0], int(h.Length))[:h.Length]
		if _, err := io.ReadFull(c.br, scratch); err != nil {
			return scratch, err
		}
		ec, err := DecodeErrorChunk(t, scratch)
		if err != nil {
			return scratch, err
		}
		if ec.Errno == 0 {
			// Unexpected values count as EINVAL.
			ec.Errno = EINVAL
		}
		if cl.chunkErr == nil {
			cl.chunkErr = &Error{Errno: ec.Errno, Message: ec.Message}
		}
	default:
		return scratch, fmt.Errorf("%w: unknown chunk type %#x", ErrProtocol, t)
	}
	if h.Flags&ReplyFlagDone != 0 {
		c.complete(cl, c.result(cl))
	}
	return scratch, nil
}

// content handles OFFSET_DATA and OFFSET_HOLE chunks of a READ.
func (c *Client) content(cl *Call, h ChunkHeader) error {
	if cl.cmd != CmdRead {
		return fmt.Errorf("%w: content chunk for %s", ErrProtocol, CmdName(cl.cmd))
	}
	var ob [12]byte
	var off, n uint64
	if h.Type == ReplyTypeOffsetData {
		if h.Length < 9 {
			return fmt.Errorf("%w: OFFSET_DATA of %d bytes", ErrProtocol, h.Length)
		}
		if _, err := io.ReadFull(c.br, ob[:8]); err != nil {
			return err
		}
		off, n = be.Uint64(ob[:]), uint64(h.Length-8)
	} else {
		if h.Length != 12 {
			return fmt.Errorf("%w: OFFSET_HOLE of %d bytes", ErrProtocol, h.Length)
		}
		if _, err := io.ReadFull(c.br, ob[:]); err != nil {
			return err
		}
		o, size, err := DecodeOffsetHole(ob[:])
		if err != nil {
			return err
		}
		off, n = o, uint64(size)
	}
	if off < cl.off || off-cl.off > uint64(cl.length) || n > uint64(cl.length)-(off-cl.off) {
		return fmt.Errorf("%w: content %d+%d outside request %d+%d", ErrProtocol, off, n, cl.off, cl.length)
	}
	s := span{off, off + n}
	for _, o := range cl.spans {
		if s.off < o.end && o.off < s.end {
			return fmt.Errorf("%w: content chunks overlap at %d", ErrProtocol, max(s.off, o.off))
		}
	}
	cl.spans = append(cl.spans, s)
	lo, hi := off-cl.off, off-cl.off+n
	if c.claim(cl) {
		if h.Type == ReplyTypeOffsetData {
			if _, err := io.ReadFull(c.br, cl.buf[lo:hi]); err != nil {
				return err
			}
		} else {
			clear(cl.buf[lo:hi])
		}
		c.release(cl)
	} else if h.Type == ReplyTypeOffsetData {
		if _, err := c.br.Discard(int(n)); err != nil {
			return err
		}
	}
	return nil
}

// decodeBlockStatusInto decodes a BLOCK_STATUS payload, appending to dst.
func decodeBlockStatusInto(b []byte, dst []Descriptor) ([]Descriptor, error) {
	_, ds, err := DecodeBlockStatus(b, dst)
	return ds, err
}

// result is the outcome of a finished structured reply.
func (c *Client) result(cl *Call) error {
	if cl.chunkErr != nil {
		return cl.chunkErr
	}
	switch cl.cmd {
	case CmdRead:
		var got uint64
		for _, s := range cl.spans {
			got += s.end - s.off
		}
		if got != uint64(cl.length) {
			return fmt.Errorf("%w: READ reply covered %d of %d bytes", ErrProtocol, got, cl.length)
		}
	case CmdBlockStatus:
		if !cl.gotDesc {
			return fmt.Errorf("%w: no block status for the requested context", ErrProtocol)
		}
	}
	return nil
}
