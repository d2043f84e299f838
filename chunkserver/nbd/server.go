package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"
)

// Export is one exported device. Implementations are safe for concurrent use.
type Export interface {
	// Size is the export's size in bytes; it must not change while
	// connections are open.
	Size() int64
	// ReadAt fills all of p from offset off or returns an error.
	ReadAt(p []byte, off int64) error
	// WriteAt writes all of p at offset off or returns an error.
	WriteAt(p []byte, off int64) error
	// Sync makes every completed write durable (fdatasync). FLUSH and FUA
	// use it.
	Sync() error
	// Trim deallocates a range (punches a hole); it reads back as zeroes.
	Trim(off, length int64) error
	// WriteZeroes zeroes a range; with noHole the range stays allocated.
	WriteZeroes(off, length int64, noHole bool) error
}

// ReadOnly is optionally implemented by an Export: when ReadOnly is true
// the export is offered with NBD_FLAG_READ_ONLY and every request that
// would change it (write, trim, write zeroes) fails with EPERM.
type ReadOnly interface {
	ReadOnly() bool
}

func isReadOnly(exp Export) bool {
	ro, ok := exp.(ReadOnly)
	return ok && ro.ReadOnly()
}

// Extenter is optionally implemented by an Export to answer the
// base:allocation meta context. Without it every range is reported as
// allocated data (status 0), which the protocol allows.
type Extenter interface {
	// Extents describes consecutive extents starting at off. It may cover
	// less or more than length, but at least one byte.
	Extents(off, length int64) ([]Extent, error)
}

// ConnHooks is optionally implemented by an Export that Lookup returns, to
// follow the connection that uses it (for example to fence it). For a
// connection that enters transmission with the export, the server calls
// Attached once before it reads the first request and Detached once when it
// stops reading requests. Requests already read may still be executing when
// Detached is called; an export that must know when they finish counts them
// itself. Neither is called for an export opened only for NBD_OPT_INFO, or
// when the handshake fails after Lookup.
type ConnHooks interface {
	// Attached receives a function that closes the connection. It may be
	// called at any time, from any goroutine, more than once; the server
	// then stops reading, finishes the requests it has read and calls
	// Detached.
	Attached(closeConn func())
	// Detached reports how the connection ended: clean is true when the
	// client sent NBD_CMD_DISC, false when the connection broke, the client
	// broke the protocol, closeConn was called or the server shut down.
	Detached(clean bool)
}

// Extent is one run of bytes with the same status. For base:allocation,
// Flags is a combination of StateHole and StateZero.
type Extent struct {
	Length int64
	Flags  uint32
}

// MetaContext answers block status queries for one named meta context (for
// example "chunkraid:log"). It receives the export the connection selected
// and returns consecutive extents starting at off, at least one.
type MetaContext func(exp Export, off, length int64) ([]Extent, error)

// ServerConfig configures a Server. Zero values mean defaults.
type ServerConfig struct {
	// Lookup opens the export a client names, for NBD_OPT_INFO as well as
	// for the options that start transmission; the server never closes an
	// export. An error refuses the export and its text is sent to the client
	// with NBD_REP_ERR_UNKNOWN (NBD_OPT_EXPORT_NAME can only hang up).
	// Required.
	Lookup func(name string) (Export, error)
	// List names the exports for NBD_OPT_LIST; nil refuses listing with
	// NBD_REP_ERR_POLICY.
	List func() []string
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
	// MaxInFlight bounds the requests executed at once per connection;
	// 0 means 64.
	MaxInFlight int
	// MetaContexts are named meta contexts offered besides base:allocation.
	// Names are "namespace:leaf"; the base namespace is reserved.
	MetaContexts map[string]MetaContext
	// HandshakeTimeout bounds the handshake of one connection; 0 means 30 s.
	HandshakeTimeout time.Duration
	// MaxInFlightBytes bounds the payload bytes of one connection's
	// requests between being read and their reply being written (write
	// payloads and read results); 0 means 64 MiB. A request waits for
	// room before its payload is read or its buffer allocated, and the
	// connection is not read meanwhile.
	MaxInFlightBytes int64
	// MaxConns bounds the connections Serve keeps open at once; one more
	// is closed at once, with a log line. 0 means 256.
	MaxConns int
	// Observe, if set, is called once for each request answered, with its
	// command, length, the error value of the reply (0: success) and the
	// time from reading it to queueing its reply. It must be fast.
	Observe func(cmd uint16, length uint32, errno uint32, took time.Duration)
}

const (
	defaultMaxInFlight      = 64
	maxMaxInFlight          = 1 << 16
	defaultHandshakeTimeout = 30 * time.Second
	defaultMaxInFlightBytes = 64 << 20
	defaultMaxConns         = 256
	// maxOptions bounds the options of one handshake.
	maxOptions = 1024
	// maxReplyDescriptors bounds the descriptors of one block status
	// chunk sent by the server; the protocol allows answering less than
	// was asked.
	maxReplyDescriptors = 1 << 17
	// transmissionFlags are what every export offers.
	transmissionFlags = FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim |
		FlagSendWriteZeroes | FlagCanMultiConn
)

// Server serves exports over NBD. It holds no per-connection state; one
// Server may serve many listeners.
type Server struct {
	lookup           func(string) (Export, error)
	list             func() []string
	observe          func(cmd uint16, length uint32, errno uint32, took time.Duration)
	log              *slog.Logger
	maxInFlight      int
	maxInFlightBytes int64
	maxConns         int
	handshakeTimeout time.Duration
	contexts         []*metaContext // base:allocation first, then by name

	conns   atomic.Int64 // connections Serve holds open
	refused atomic.Int64 // connections Serve refused (MaxConns)

	bufs bufPool
	reqs sync.Pool // *request
}

type metaContext struct {
	name string
	ns   string
	id   uint32
	fn   MetaContext // nil for base:allocation
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		lookup:           cfg.Lookup,
		list:             cfg.List,
		observe:          cfg.Observe,
		log:              cfg.Logger,
		maxInFlight:      cfg.MaxInFlight,
		maxInFlightBytes: cfg.MaxInFlightBytes,
		maxConns:         cfg.MaxConns,
		handshakeTimeout: cfg.HandshakeTimeout,
	}
	if s.maxInFlightBytes == 0 {
		s.maxInFlightBytes = defaultMaxInFlightBytes
	}
	if s.maxConns == 0 {
		s.maxConns = defaultMaxConns
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxInFlight == 0 {
		s.maxInFlight = defaultMaxInFlight
	}
	if s.handshakeTimeout == 0 {
		s.handshakeTimeout = defaultHandshakeTimeout
	}
	s.contexts = append(s.contexts, &metaContext{name: ContextBaseAllocation, ns: "base"})
	names := make([]string, 0, len(cfg.MetaContexts))
	for n := range cfg.MetaContexts {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		ns, _, _ := strings.Cut(n, ":")
		s.contexts = append(s.contexts, &metaContext{name: n, ns: ns, fn: cfg.MetaContexts[n]})
	}
	for i, mc := range s.contexts {
		mc.id = uint32(i + 1)
	}
	return s, nil
}

func (cfg *ServerConfig) validate() error {
	if cfg.Lookup == nil {
		return errors.New("nbd: ServerConfig.Lookup is required")
	}
	if cfg.MaxInFlight < 0 || cfg.MaxInFlight > maxMaxInFlight {
		return fmt.Errorf("nbd: ServerConfig.MaxInFlight %d out of range [0, %d]", cfg.MaxInFlight, maxMaxInFlight)
	}
	if cfg.HandshakeTimeout < 0 {
		return fmt.Errorf("nbd: ServerConfig.HandshakeTimeout %v is negative", cfg.HandshakeTimeout)
	}
	if cfg.MaxInFlightBytes < 0 || cfg.MaxInFlightBytes > 0 && cfg.MaxInFlightBytes < MaxPayload {
		return fmt.Errorf("nbd: ServerConfig.MaxInFlightBytes %d must be 0 (64 MiB) or at least the maximum payload %d", cfg.MaxInFlightBytes, MaxPayload)
	}
	if cfg.MaxConns < 0 {
		return fmt.Errorf("nbd: ServerConfig.MaxConns %d is negative", cfg.MaxConns)
	}
	for name, fn := range cfg.MetaContexts {
		if err := validContextName(name); err != nil {
			return err
		}
		if fn == nil {
			return fmt.Errorf("nbd: meta context %q has no function", name)
		}
	}
	return nil
}

// validContextName checks "namespace:leaf": a non-empty namespace of
// printable non-space characters without colons, a non-empty leaf, valid
// UTF-8 within the protocol's string limit, and not in the reserved base
// namespace.
func validContextName(name string) error {
	ns, leaf, ok := strings.Cut(name, ":")
	switch {
	case !ok || ns == "" || leaf == "":
		return fmt.Errorf("nbd: meta context name %q is not namespace:leaf", name)
	case len(name) > MaxStringLength || !utf8.ValidString(name):
		return fmt.Errorf("nbd: meta context name %q is not a valid protocol string", name)
	case ns == "base":
		return fmt.Errorf("nbd: meta context %q uses the reserved base namespace", name)
	case strings.IndexFunc(ns, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0:
		return fmt.Errorf("nbd: meta context namespace %q has unprintable or space characters", ns)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("nbd: meta context name %q contains NUL", name)
	}
	return nil
}

// Serve accepts connections on ln until ctx is done, serving each in its own
// goroutine. When ctx is done it closes ln and every connection, waits for
// their goroutines and returns nil. It returns an error if ln fails for
// another reason (after the same cleanup).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		ln.Close()
		wg.Wait()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: listener closed: %w", err)
			}
			// Running out of file descriptors and the like pass; back off.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd: accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		if n := s.conns.Add(1); n > int64(s.maxConns) {
			s.conns.Add(-1)
			if s.refused.Add(1)%100 == 1 { // one line per 100 refusals under a flood
				s.log.Warn("nbd: refusing a connection: the server holds its maximum", "remote", addrString(nc.RemoteAddr()),
					"max_connections", s.maxConns, "refused_so_far", s.refused.Load())
			}
			nc.Close()
			continue
		}
		wg.Go(func() {
			defer s.conns.Add(-1)
			s.ServeConn(ctx, nc)
		})
	}
}

// Conns is the number of connections Serve holds open; Refused how many
// it closed at once because it held MaxConns.
func (s *Server) Conns() int64   { return s.conns.Load() }
func (s *Server) Refused() int64 { return s.refused.Load() }

// ServeConn serves one connection: the handshake, then requests until the
// client disconnects, the connection fails or ctx is done. It closes nc and
// returns once every request it started has finished.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) {
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()

	c := &conn{
		s:   s,
		nc:  nc,
		br:  bufio.NewReaderSize(nc, 64<<10),
		log: s.log.With("remote", addrString(nc.RemoteAddr())),
	}
	c.log.Debug("nbd: connection opened")
	enter, err := c.handshake()
	if err != nil {
		if errors.Is(err, errAbort) || ctx.Err() != nil {
			c.log.Debug("nbd: handshake ended", "err", err)
		} else {
			c.log.Info("nbd: handshake failed", "err", err)
		}
		return
	}
	if !enter {
		return
	}
	if h, ok := c.exp.(ConnHooks); ok {
		c.hooks = h
		h.Attached(func() { nc.Close() })
	}
	c.transmit()
	c.log.Debug("nbd: connection closed")
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

var errAbort = errors.New("client sent NBD_OPT_ABORT")

// conn is the state of one connection.
type conn struct {
	s   *Server
	nc  net.Conn
	br  *bufio.Reader // all reads from nc go through br
	log *slog.Logger

	// Negotiated during the handshake, read-only in transmission.
	noZeroes   bool
	structured bool
	metaExport string         // export named by the last SET_META_CONTEXT
	meta       []*metaContext // contexts it selected
	exp        Export
	readOnly   bool // c.exp refuses changes
	size       uint64
	hooks      ConnHooks // c.exp's hooks, if it has them

	// sem bounds the requests between being read and their reply being
	// written (MaxInFlight); the reply writer releases it. bytes bounds
	// their payloads (MaxInFlightBytes) the same way.
	sem   chan struct{}
	bytes *byteBudget

	// out queues finished replies. Whichever worker finds no write in
	// progress becomes the writer and drains the queue, many replies per
	// writev; the others return at once. Each reply is written whole.
	out struct {
		sync.Mutex
		queue   []*request // replies waiting, in completion order
		spare   []*request // recycled backing array for queue
		writing bool       // a worker is draining the queue
	}
	iov net.Buffers // scratch of the worker that holds out.writing
}

// ---- handshake ----

// handshake runs the option haggling. It returns true when the client chose
// an export and transmission begins.
func (c *conn) handshake() (bool, error) {
	if err := c.nc.SetDeadline(time.Now().Add(c.s.handshakeTimeout)); err != nil {
		return false, err
	}
	if _, err := c.nc.Write(AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes)); err != nil {
		return false, fmt.Errorf("write greeting: %w", err)
	}
	var hb [OptionHeaderSize]byte
	if _, err := io.ReadFull(c.br, hb[:ClientFlagsSize]); err != nil {
		return false, fmt.Errorf("read client flags: %w", err)
	}
	cf, _ := DecodeClientFlags(hb[:ClientFlagsSize])
	if cf&^(FlagCFixedNewstyle|FlagCNoZeroes) != 0 {
		return false, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, cf)
	}
	c.noZeroes = cf&FlagCNoZeroes != 0

	for range maxOptions {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			return false, fmt.Errorf("read option: %w", err)
		}
		h, err := DecodeOptionHeader(hb[:])
		if err != nil {
			return false, err
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, fmt.Errorf("read %s data: %w", OptName(h.Option), err)
		}
		enter, err := c.option(h.Option, data)
		if err != nil || enter {
			if enter {
				err = c.nc.SetDeadline(time.Time{})
			}
			return enter, err
		}
	}
	return false, fmt.Errorf("%w: more than %d options", ErrProtocol, maxOptions)
}

// option handles one option. It returns true when transmission begins.
func (c *conn) option(opt uint32, data []byte) (bool, error) {
	switch opt {
	case OptExportName:
		// No error reply is possible: a refusal is a hard disconnect.
		name := string(data)
		if len(name) > MaxStringLength {
			return false, fmt.Errorf("%w: export name of %d bytes", ErrTooLong, len(name))
		}
		exp, err := c.open(name)
		if err != nil {
			return false, fmt.Errorf("export %q refused: %w", name, err)
		}
		c.enter(name, exp)
		if _, err := c.nc.Write(AppendExportNameReply(nil, c.size, c.transmissionFlags(exp), c.noZeroes)); err != nil {
			return false, fmt.Errorf("write export reply: %w", err)
		}
		return true, nil
	case OptInfo, OptGo:
		return c.optExport(opt, data)
	case OptList:
		return false, c.optList(data)
	case OptAbort:
		// The client may already have gone: the reply is best effort.
		_ = c.optReply(opt, RepAck, nil)
		return false, errAbort
	case OptStructuredReply:
		if len(data) != 0 {
			return false, c.optError(opt, RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, c.optReply(opt, RepAck, nil)
	case OptListMetaContext, OptSetMetaContext:
		return false, c.optMeta(opt, data)
	default:
		return false, c.optError(opt, RepErrUnsup, OptName(opt)+" is not supported")
	}
}

// open looks an export up.
func (c *conn) open(name string) (Export, error) {
	exp, err := c.s.lookup(name)
	if err != nil {
		return nil, err
	}
	if exp == nil {
		return nil, errors.New("no such export")
	}
	if exp.Size() < 0 {
		return nil, fmt.Errorf("export has negative size %d", exp.Size())
	}
	return exp, nil
}

// enter records the chosen export. Meta contexts selected for another
// export name do not apply to it.
func (c *conn) enter(name string, exp Export) {
	c.exp = exp
	c.readOnly = isReadOnly(exp)
	c.size = uint64(exp.Size())
	if c.metaExport != name {
		c.meta = nil
	}
}

func (c *conn) transmissionFlags(exp Export) uint16 {
	f := transmissionFlags
	if isReadOnly(exp) {
		f |= FlagReadOnly
	}
	if c.structured {
		// Reads are always answered with a single content chunk.
		f |= FlagSendDF
	}
	return f
}

func (c *conn) optExport(opt uint32, data []byte) (bool, error) {
	req, err := DecodeExportRequest(data)
	if err != nil {
		return false, c.optError(opt, RepErrInvalid, err.Error())
	}
	exp, err := c.open(req.Name)
	if err != nil {
		return false, c.optError(opt, RepErrUnknown, err.Error())
	}
	size := uint64(exp.Size())
	if err := c.optReply(opt, RepInfo, AppendInfoExport(nil, size, c.transmissionFlags(exp))); err != nil {
		return false, err
	}
	if slices.Contains(req.Infos, InfoBlockSize) {
		bs := BlockSizes{Min: MinBlockSize, Preferred: PreferredBlockSize, Max: MaxPayload}
		if err := c.optReply(opt, RepInfo, AppendInfoBlockSize(nil, bs)); err != nil {
			return false, err
		}
	}
	if err := c.optReply(opt, RepAck, nil); err != nil {
		return false, err
	}
	if opt != OptGo {
		return false, nil
	}
	c.enter(req.Name, exp)
	return true, nil
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optError(OptList, RepErrInvalid, "NBD_OPT_LIST takes no data")
	}
	if c.s.list == nil {
		return c.optError(OptList, RepErrPolicy, "export listing is disabled")
	}
	for _, name := range c.s.list() {
		if len(name) > MaxStringLength {
			continue
		}
		if err := c.optReply(OptList, RepServer, AppendRepServer(nil, name)); err != nil {
			return err
		}
	}
	return c.optReply(OptList, RepAck, nil)
}

func (c *conn) optMeta(opt uint32, data []byte) error {
	set := opt == OptSetMetaContext
	if set {
		// A SET replaces the selection even when it fails.
		c.meta, c.metaExport = nil, ""
	}
	if !c.structured {
		return c.optError(opt, RepErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY first")
	}
	req, err := DecodeMetaContextRequest(data)
	if err != nil {
		return c.optError(opt, RepErrInvalid, err.Error())
	}
	var sel []*metaContext
	if !set && len(req.Queries) == 0 {
		sel = c.s.contexts
	}
	for _, q := range req.Queries {
		ns, leaf, ok := strings.Cut(q, ":")
		if !ok {
			return c.optError(opt, RepErrInvalid, fmt.Sprintf("query %q has no namespace", q))
		}
		for _, mc := range c.s.contexts {
			// An empty leaf lists a whole namespace; it selects nothing.
			match := mc.name == q || (!set && leaf == "" && mc.ns == ns)
			if match && !slices.Contains(sel, mc) {
				sel = append(sel, mc)
			}
		}
	}
	for _, mc := range sel {
		var id uint32
		if set {
			id = mc.id
		}
		if err := c.optReply(opt, RepMetaContext, AppendRepMetaContext(nil, id, mc.name)); err != nil {
			return err
		}
	}
	if set {
		c.meta, c.metaExport = sel, req.Export
	}
	return c.optReply(opt, RepAck, nil)
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 0, OptionReplyHeaderSize+len(data))
	b = AppendOptionReplyHeader(b, OptionReplyHeader{Option: opt, Type: typ, Length: uint32(len(data))})
	b = append(b, data...)
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("write %s reply: %w", OptName(opt), err)
	}
	return nil
}

func (c *conn) optError(opt, typ uint32, msg string) error {
	if len(msg) > MaxStringLength {
		msg = msg[:MaxStringLength]
	}
	c.log.Debug("nbd: option refused", "option", OptName(opt), "reply", RepName(typ), "msg", msg)
	return c.optReply(opt, typ, []byte(msg))
}

// ---- transmission ----

// request is one request in flight. Requests are pooled per Server.
type request struct {
	req    Request
	weight int64     // bytes of MaxInFlightBytes it holds
	data   *[]byte   // WRITE payload or READ result, from the pool
	hdr    [32]byte  // reply header scratch
	reply  [2][]byte // reply header and data, as queued for writing
	tmp    []byte    // error and block status payloads
}

func (s *Server) getRequest() *request {
	if r, ok := s.reqs.Get().(*request); ok {
		return r
	}
	return new(request)
}

func (s *Server) putRequest(r *request) {
	if r.data != nil {
		s.bufs.put(r.data)
		r.data = nil
	}
	r.reply = [2][]byte{}
	if cap(r.tmp) > 64<<10 {
		r.tmp = nil
	}
	s.reqs.Put(r)
}

// transmit reads requests and queues them for a pool of workers; at most
// MaxInFlight requests are between being read and their reply being
// written. Workers are started as concurrency demands and live as long as
// the connection. transmit returns when the client disconnects or the
// connection fails, after every worker has finished. The export's
// ConnHooks learn that reading stopped before the workers finish.
func (c *conn) transmit() {
	c.sem = make(chan struct{}, c.s.maxInFlight)
	c.bytes = newByteBudget(c.s.maxInFlightBytes)
	work := make(chan *request, c.s.maxInFlight) // never full: sem bounds it
	var wg sync.WaitGroup
	workers := 0
	clean := false // the client sent NBD_CMD_DISC
	defer func() {
		if c.hooks != nil {
			c.hooks.Detached(clean)
		}
		close(work)
		wg.Wait()
	}()
	var hb [RequestHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				c.log.Debug("nbd: read request", "err", err)
			}
			return
		}
		q, err := DecodeRequest(hb[:])
		if err != nil {
			c.log.Warn("nbd: closing connection", "err", err)
			c.nc.Close()
			return
		}
		if q.Type == CmdDisc {
			// Finish what is in flight (wg.Wait), then close.
			c.log.Debug("nbd: client disconnected")
			clean = true
			return
		}
		if q.Type == CmdWrite && q.Length > MaxPayload {
			// The payload cannot be skipped cheaply; the protocol allows
			// a hard disconnect.
			c.log.Warn("nbd: closing connection: write payload too large",
				"length", q.Length, "max", MaxPayload)
			c.nc.Close()
			return
		}
		c.sem <- struct{}{}
		r := c.s.getRequest()
		r.req = q
		// Room for the payload (a write's, or a read's result) before it
		// is read or allocated: the connection is not read meanwhile.
		if q.Type == CmdWrite || q.Type == CmdRead {
			r.weight = min(int64(q.Length), c.s.maxInFlightBytes)
			c.bytes.acquire(r.weight)
		}
		if q.Type == CmdWrite {
			r.data = c.s.bufs.get(int(q.Length))
			if _, err := io.ReadFull(c.br, *r.data); err != nil {
				c.log.Debug("nbd: read write payload", "err", err)
				c.release(r)
				return
			}
		}
		work <- r
		if workers < len(c.sem) {
			workers++
			wg.Go(func() {
				for r := range work {
					c.serve(r)
				}
			})
		}
	}
}

// byteBudget is a count of bytes that one goroutine (the connection's
// reader) takes and any goroutine gives back.
type byteBudget struct {
	mu   sync.Mutex
	cond sync.Cond
	free int64
}

func newByteBudget(n int64) *byteBudget {
	b := &byteBudget{free: n}
	b.cond.L = &b.mu
	return b
}

// acquire waits until n bytes are free and takes them.
func (b *byteBudget) acquire(n int64) {
	b.mu.Lock()
	for b.free < n {
		b.cond.Wait()
	}
	b.free -= n
	b.mu.Unlock()
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// release returns r to the pool and its room to the connection's bounds.
func (c *conn) release(r *request) {
	if r.weight > 0 {
		c.bytes.release(r.weight)
		r.weight = 0
	}
	c.s.putRequest(r)
	<-c.sem
}

// reqError is a request the server refuses before touching the export.
func reqError(errno uint32, format string, args ...any) error {
	return &Error{Errno: errno, Message: fmt.Sprintf(format, args...)}
}

// serve executes one request and queues its reply; every path sends
// exactly one reply, after which r belongs to the reply writer. With
// ServerConfig.Observe, the request is counted once answered.
func (c *conn) serve(r *request) {
	observe := c.s.observe
	if observe == nil {
		c.execute(r)
		return
	}
	cmd, length, start := r.req.Type, r.req.Length, time.Now()
	errno := c.execute(r)
	observe(cmd, length, errno, time.Since(start))
}

// execute is serve's work; it returns the error value of the reply (0 for
// success).
func (c *conn) execute(r *request) uint32 {
	q := &r.req
	var err error
	switch q.Type {
	case CmdRead:
		if err = c.read(r); err == nil {
			return 0
		}
	case CmdWrite:
		switch err = c.check(q, 0, ENOSPC); {
		case err != nil:
		case c.readOnly:
			err = reqError(EPERM, "the export is read-only")
		default:
			err = c.exp.WriteAt(*r.data, int64(q.Offset))
		}
		err = c.fua(q, err)
	case CmdFlush:
		if err = c.check(q, 0, EINVAL); err == nil {
			err = c.exp.Sync()
		}
	case CmdTrim:
		switch err = c.check(q, 0, EINVAL); {
		case err != nil:
		case c.readOnly:
			err = reqError(EPERM, "the export is read-only")
		case q.Length > 0:
			err = c.exp.Trim(int64(q.Offset), int64(q.Length))
		}
		err = c.fua(q, err)
	case CmdWriteZeroes:
		switch err = c.check(q, CmdFlagNoHole, ENOSPC); {
		case err != nil:
		case c.readOnly:
			err = reqError(EPERM, "the export is read-only")
		case q.Length > 0:
			err = c.exp.WriteZeroes(int64(q.Offset), int64(q.Length), q.Flags&CmdFlagNoHole != 0)
		}
		err = c.fua(q, err)
	case CmdBlockStatus:
		if err = c.blockStatus(r); err == nil {
			return 0
		}
	default:
		err = reqError(EINVAL, "unknown command %d", q.Type)
	}
	if err == nil {
		c.replyOK(r)
		return 0
	}
	msg := err.Error()
	var re *Error
	if errors.As(err, &re) {
		// A refusal: the server's own or the export's choice of error.
		c.log.Debug("nbd: request refused", "cmd", CmdName(q.Type), "offset", q.Offset, "length", q.Length, "err", err)
		if e, ok := err.(*Error); ok && e.Message != "" {
			msg = e.Message // unwrapped: the client adds its own prefix
		}
	} else {
		c.log.Warn("nbd: request failed", "cmd", CmdName(q.Type), "offset", q.Offset, "length", q.Length, "err", err)
	}
	errno := errnoFor(err)
	c.replyError(r, errno, msg)
	return errno
}

// check validates flags (FUA is accepted on every command) and the range.
// beyond is the error value for a range past the end of the export.
func (c *conn) check(q *Request, allowed uint16, beyond uint32) error {
	if bad := q.Flags &^ (allowed | CmdFlagFUA); bad != 0 {
		return reqError(EINVAL, "command flags %#x are not valid for %s", bad, CmdName(q.Type))
	}
	if q.Offset > c.size || uint64(q.Length) > c.size-q.Offset {
		return reqError(beyond, "range %d+%d exceeds export size %d", q.Offset, q.Length, c.size)
	}
	return nil
}

// fua syncs after a successful write-type command carrying FUA.
func (c *conn) fua(q *Request, err error) error {
	if err == nil && q.Flags&CmdFlagFUA != 0 {
		return c.exp.Sync()
	}
	return err
}

// read serves READ. On success it has sent the reply.
func (c *conn) read(r *request) error {
	q := &r.req
	var df uint16
	if c.structured {
		df = CmdFlagDF
	}
	if err := c.check(q, df, EINVAL); err != nil {
		return err
	}
	if q.Length > MaxPayload {
		return reqError(EINVAL, "read of %d bytes exceeds the maximum payload %d", q.Length, MaxPayload)
	}
	if q.Length == 0 {
		c.replyOK(r)
		return nil
	}
	r.data = c.s.bufs.get(int(q.Length))
	if err := c.exp.ReadAt(*r.data, int64(q.Offset)); err != nil {
		return err
	}
	var hdr []byte
	if c.structured {
		hdr = AppendChunkHeader(r.hdr[:0], ChunkHeader{
			Flags: ReplyFlagDone, Type: ReplyTypeOffsetData, Cookie: q.Cookie, Length: 8 + q.Length,
		})
		hdr = be.AppendUint64(hdr, q.Offset)
	} else {
		hdr = AppendSimpleReply(r.hdr[:0], SimpleReply{Cookie: q.Cookie})
	}
	c.send(r, hdr, *r.data)
	return nil
}

// blockStatus serves BLOCK_STATUS. On success it has sent the reply: one
// chunk per selected meta context, the last one flagged DONE.
func (c *conn) blockStatus(r *request) error {
	q := &r.req
	if !c.structured || len(c.meta) == 0 {
		return reqError(EINVAL, "no meta context was negotiated")
	}
	if err := c.check(q, CmdFlagReqOne, EINVAL); err != nil {
		return err
	}
	if q.Length == 0 {
		return reqError(EINVAL, "block status of length 0")
	}
	reqOne := q.Flags&CmdFlagReqOne != 0
	b := r.tmp[:0]
	for i, mc := range c.meta {
		start := len(b)
		var flags uint16
		if i == len(c.meta)-1 {
			flags = ReplyFlagDone
		}
		b = AppendChunkHeader(b, ChunkHeader{Flags: flags, Type: ReplyTypeBlockStatus, Cookie: q.Cookie})
		b = be.AppendUint32(b, mc.id)
		var err error
		b, err = c.appendStatus(b, mc, q.Offset, q.Length, reqOne)
		if err != nil {
			r.tmp = b
			return err
		}
		be.PutUint32(b[start+16:], uint32(len(b)-start-ChunkHeaderSize))
	}
	r.tmp = b
	c.send(r, b, nil)
	return nil
}

// appendStatus appends the descriptors of one context for [off, off+length).
func (c *conn) appendStatus(b []byte, mc *metaContext, off uint64, length uint32, reqOne bool) ([]byte, error) {
	var ext []Extent
	var err error
	switch {
	case mc.fn != nil:
		ext, err = mc.fn(c.exp, int64(off), int64(length))
	default:
		if x, ok := c.exp.(Extenter); ok {
			ext, err = x.Extents(int64(off), int64(length))
		}
		if err == nil && len(ext) == 0 {
			// Status 0 (allocated, contents unknown) is always true.
			return appendDescriptors(b, []Extent{{Length: int64(length)}}, length, reqOne)
		}
	}
	if err != nil {
		return b, err
	}
	return appendDescriptors(b, ext, length, reqOne)
}

// appendDescriptors encodes extents as descriptors, merging neighbours with
// equal flags, cutting the list at length bytes (so no descriptor reaches
// past the request) and at one descriptor with reqOne.
func appendDescriptors(b []byte, ext []Extent, length uint32, reqOne bool) ([]byte, error) {
	limit := maxReplyDescriptors
	if reqOne {
		limit = 1
	}
	var sum uint64
	var cur Descriptor
	n := 0
	for _, e := range ext {
		if e.Length <= 0 {
			return b, fmt.Errorf("meta context returned an extent of length %d", e.Length)
		}
		if sum >= uint64(length) {
			break
		}
		l := min(uint64(e.Length), uint64(length)-sum)
		sum += l
		if cur.Length != 0 && cur.Flags == e.Flags {
			cur.Length += uint32(l) // total <= length, so no overflow
			continue
		}
		if cur.Length != 0 {
			b = be.AppendUint32(b, cur.Length)
			b = be.AppendUint32(b, cur.Flags)
			if n++; n == limit {
				return b, nil
			}
		}
		cur = Descriptor{Length: uint32(l), Flags: e.Flags}
	}
	if cur.Length == 0 {
		return b, errors.New("meta context returned no extents")
	}
	b = be.AppendUint32(b, cur.Length)
	b = be.AppendUint32(b, cur.Flags)
	return b, nil
}

// replyOK sends a successful reply without data.
func (c *conn) replyOK(r *request) {
	q := &r.req
	var hdr []byte
	if c.structured && q.Type == CmdRead {
		hdr = AppendChunkHeader(r.hdr[:0], ChunkHeader{Flags: ReplyFlagDone, Type: ReplyTypeNone, Cookie: q.Cookie})
	} else {
		hdr = AppendSimpleReply(r.hdr[:0], SimpleReply{Cookie: q.Cookie})
	}
	c.send(r, hdr, nil)
}

// replyError sends an error reply: a structured ERROR chunk with the
// message when structured replies were negotiated, else a simple reply.
func (c *conn) replyError(r *request, errno uint32, msg string) {
	q := &r.req
	if !c.structured {
		c.send(r, AppendSimpleReply(r.hdr[:0], SimpleReply{Errno: errno, Cookie: q.Cookie}), nil)
		return
	}
	b := AppendChunkHeader(r.tmp[:0], ChunkHeader{Flags: ReplyFlagDone, Type: ReplyTypeError, Cookie: q.Cookie})
	b = AppendErrorChunk(b, ErrorChunk{Errno: errno, Message: msg})
	be.PutUint32(b[16:], uint32(len(b)-ChunkHeaderSize))
	r.tmp = b
	c.send(r, b, nil)
}

// send queues the reply of r (header and optional data) and, unless another
// worker is writing, writes the queue until it is empty. r must not be used
// by the caller afterwards: the writer recycles it once written. A failed
// write closes the connection, which stops the request reader; replies
// queued after that are dropped.
func (c *conn) send(r *request, hdr, data []byte) {
	r.reply = [2][]byte{hdr, data}
	c.out.Lock()
	c.out.queue = append(c.out.queue, r)
	if c.out.writing {
		c.out.Unlock()
		return
	}
	c.out.writing = true
	for len(c.out.queue) > 0 {
		batch := c.out.queue
		c.out.queue = c.out.spare[:0]
		c.out.Unlock()

		c.iov = c.iov[:0]
		for _, r := range batch {
			c.iov = append(c.iov, r.reply[0])
			if len(r.reply[1]) > 0 {
				c.iov = append(c.iov, r.reply[1])
			}
		}
		w := c.iov // WriteTo consumes its receiver
		if _, err := w.WriteTo(c.nc); err != nil {
			c.log.Debug("nbd: write reply", "err", err)
			c.nc.Close()
		}
		clear(c.iov)
		for i, r := range batch {
			c.release(r)
			batch[i] = nil
		}

		c.out.Lock()
		c.out.spare = batch[:0]
	}
	c.out.writing = false
	c.out.Unlock()
}
