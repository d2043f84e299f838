package iscsi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Backend is the logical unit's storage (a linear volume in hostd).
// Offsets and lengths are in bytes, always multiples of the block size.
//
// Contract: ReadAt fills all of p or returns an error; WriteAt returns nil
// only once all of p is accepted, and with fua only once it is durable;
// Flush makes every write acknowledged before the call durable. All methods
// are called concurrently and must honour ctx: a cancelled command (task
// abort, connection loss, RemoveTarget) waits for them to return. Size must
// not block: it is read for every command, and a change in it is reported
// to initiators as a capacity change.
type Backend interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
}

// Config configures a Server. Zero values mean the defaults given per field.
type Config struct {
	// Logger receives connection and protocol events; nil discards them.
	Logger *slog.Logger
	// BlockSize is the logical block size: a power of two from 512 to
	// 65536. Default 512.
	BlockSize int

	// MaxRecvDataSegmentLength is the largest data segment the target
	// accepts in one PDU, declared at login. Default 256 KiB.
	MaxRecvDataSegmentLength int
	// MaxBurstLength is the target's offer for the largest solicited burst
	// and Data-In sequence. Default 1 MiB.
	MaxBurstLength int
	// FirstBurstLength is the target's offer for unsolicited data per
	// command. Default 256 KiB.
	FirstBurstLength int
	// NoImmediateData makes the target answer ImmediateData=No. By default
	// it accepts immediate data.
	NoImmediateData bool
	// InitialR2T makes the target answer InitialR2T=Yes. By default it
	// accepts unsolicited Data-Out (InitialR2T=No).
	InitialR2T bool
	// MaxOutstandingR2T is the target's offer for R2Ts in flight per
	// command. Default 8.
	MaxOutstandingR2T int

	// QueueDepth is the CmdSN window per session: how many commands may be
	// outstanding at once. Default 128.
	QueueDepth int
	// MaxTransferLength is the largest data transfer of one command in
	// bytes, reported in the Block Limits VPD page. Default 32 MiB.
	MaxTransferLength int
	// SessionBufferBytes bounds the data buffers one session may hold for
	// commands in flight; commands beyond it wait. Default 64 MiB, at least
	// MaxTransferLength.
	SessionBufferBytes int
	// LoginTimeout bounds the whole login phase of a connection. Default
	// 30 s.
	LoginTimeout time.Duration
	// MaxConnections bounds the connections one Serve (one portal) holds
	// at once; one more is closed at once, with a log line. Default 256.
	MaxConnections int
	// RequireHeaderDigest and RequireDataDigest make CRC32C digests
	// mandatory in normal sessions: None is then not a value the target
	// may choose, so an initiator offering None,CRC32C gets CRC32C, and a
	// login that would end without the digest fails. By default the
	// target follows the initiator's order of preference.
	RequireHeaderDigest bool
	RequireDataDigest   bool
	// Observe, if set, is told of every SCSI command a logical unit ran:
	// its name (as in the command table: "WRITE(10)", ...), the status it
	// ended with and how long it ran. It must be fast.
	Observe func(command string, status uint8, took time.Duration)
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.BlockSize, 512)
	def(&c.MaxRecvDataSegmentLength, 256<<10)
	def(&c.MaxBurstLength, 1<<20)
	def(&c.FirstBurstLength, 256<<10)
	def(&c.MaxOutstandingR2T, 8)
	def(&c.QueueDepth, 128)
	def(&c.MaxTransferLength, 32<<20)
	def(&c.SessionBufferBytes, max(64<<20, c.MaxTransferLength))
	if c.LoginTimeout == 0 {
		c.LoginTimeout = 30 * time.Second
	}
	def(&c.MaxConnections, 256)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

func (c Config) validate() error {
	if c.BlockSize < 512 || c.BlockSize > 65536 || c.BlockSize&(c.BlockSize-1) != 0 {
		return fmt.Errorf("iscsi: BlockSize %d: must be a power of two from 512 to 65536", c.BlockSize)
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"MaxRecvDataSegmentLength", c.MaxRecvDataSegmentLength},
		{"MaxBurstLength", c.MaxBurstLength},
		{"FirstBurstLength", c.FirstBurstLength},
	} {
		if f.v < 512 || f.v > maxDSL {
			return fmt.Errorf("iscsi: %s %d: must be from 512 to %d", f.name, f.v, maxDSL)
		}
	}
	if c.FirstBurstLength > c.MaxBurstLength {
		return fmt.Errorf("iscsi: FirstBurstLength %d exceeds MaxBurstLength %d", c.FirstBurstLength, c.MaxBurstLength)
	}
	if c.MaxOutstandingR2T < 1 || c.MaxOutstandingR2T > 65535 {
		return fmt.Errorf("iscsi: MaxOutstandingR2T %d: must be from 1 to 65535", c.MaxOutstandingR2T)
	}
	if c.QueueDepth < 1 || c.QueueDepth > 1<<16 {
		return fmt.Errorf("iscsi: QueueDepth %d: must be from 1 to 65536", c.QueueDepth)
	}
	if c.MaxTransferLength < c.BlockSize || c.MaxTransferLength%c.BlockSize != 0 || c.MaxTransferLength > 1<<30 {
		return fmt.Errorf("iscsi: MaxTransferLength %d: must be a multiple of the block size %d, at most 1 GiB", c.MaxTransferLength, c.BlockSize)
	}
	if c.SessionBufferBytes < c.MaxTransferLength {
		return fmt.Errorf("iscsi: SessionBufferBytes %d is below MaxTransferLength %d", c.SessionBufferBytes, c.MaxTransferLength)
	}
	if c.MaxConnections < 0 {
		return fmt.Errorf("iscsi: MaxConnections %d is negative", c.MaxConnections)
	}
	if c.LoginTimeout < 0 {
		return fmt.Errorf("iscsi: LoginTimeout %v is negative", c.LoginTimeout)
	}
	return nil
}

// Errors returned by target management.
var (
	ErrTargetExists   = errors.New("iscsi: target already exists")
	ErrTargetNotFound = errors.New("iscsi: target not found")
	ErrInvalidTarget  = errors.New("iscsi: invalid target")
)

// Server is an iSCSI target server: a set of targets, each with one logical
// unit (LUN 0), served on the listeners given to Serve.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ours sessionParams // the target's side of every negotiation

	mu struct {
		sync.Mutex
		targets map[string]*target
		// redirects are the targets served by other portals (SetRedirects).
		redirects map[string]Redirect
		sessions  map[uint16]*session // normal and discovery sessions, by TSIH
		nextTSIH  uint16
	}
}

// target is one exported volume.
type target struct {
	iqn string
	lu  *logicalUnit
	// cfg is read by each login as it starts; UpdateTarget swaps it.
	cfg atomic.Pointer[TargetConfig]
	// guarded by Server.mu
	sessions map[*session]struct{}
	removed  bool
}

// Sessions counts the sessions logged in: normal ones (to a target) and
// discovery ones.
func (s *Server) Sessions() (normal, discovery int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range s.mu.sessions {
		if ss.discovery {
			discovery++
		} else {
			normal++
		}
	}
	return normal, discovery
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.ours = sessionParams{
		TargetRecvDSL:       uint32(cfg.MaxRecvDataSegmentLength),
		MaxBurstLength:      uint32(cfg.MaxBurstLength),
		FirstBurstLength:    uint32(cfg.FirstBurstLength),
		InitialR2T:          cfg.InitialR2T,
		ImmediateData:       !cfg.NoImmediateData,
		MaxOutstandingR2T:   uint32(cfg.MaxOutstandingR2T),
		DataPDUInOrder:      true,
		DataSequenceInOrder: true,
		DefaultTime2Wait:    2,
		DefaultTime2Retain:  20,
		ErrorRecoveryLevel:  0,
		MaxConnections:      1,
		HeaderDigest:        cfg.RequireHeaderDigest,
		DataDigest:          cfg.RequireDataDigest,
	}
	s.mu.targets = make(map[string]*target)
	s.mu.sessions = make(map[uint16]*session)
	return s, nil
}

// TargetConfig is the configuration of one target beyond its back end.
type TargetConfig struct {
	// Serial is the unit serial number (VPD page 0x80), unique per volume:
	// printable ASCII, 1 to 200 bytes. The logical unit's NAA and T10
	// designators derive from it.
	Serial string
	// CHAP, if set, makes initiators authenticate with CHAP; nil lets any
	// initiator in with AuthMethod=None.
	CHAP *CHAP
	// AllowedInitiators, if not empty, lists the initiator names (IQN, EUI
	// or NAA) that may log in; names compare without regard to ASCII case.
	// Others get a login reject with status 0x0202 and do not see the
	// target in discovery.
	AllowedInitiators []string
	// ReadOnly write-protects the logical unit: MODE SENSE reports WP and
	// every command that would change the medium is answered DATA
	// PROTECT, WRITE PROTECTED. It is fixed when the target is added.
	ReadOnly bool
}

// clone returns a deep copy, so that the caller's slices and CHAP value
// cannot change a stored configuration.
func (c TargetConfig) clone() *TargetConfig {
	out := c
	if c.CHAP != nil {
		ch := *c.CHAP
		out.CHAP = &ch
	}
	out.AllowedInitiators = slices.Clone(c.AllowedInitiators)
	return &out
}

func (c *TargetConfig) validate() error {
	if len(c.Serial) == 0 || len(c.Serial) > 200 {
		return errors.New("serial must be 1 to 200 bytes")
	}
	for i := 0; i < len(c.Serial); i++ {
		if c.Serial[i] < 0x20 || c.Serial[i] > 0x7e {
			return fmt.Errorf("serial %q is not printable ASCII", c.Serial)
		}
	}
	if c.CHAP != nil {
		if err := c.CHAP.validate(); err != nil {
			return err
		}
	}
	for _, n := range c.AllowedInitiators {
		if !validISCSIName(n) {
			return fmt.Errorf("allowed initiator %q: want iqn., eui. or naa. followed by printable ASCII, at most 223 bytes", n)
		}
	}
	return nil
}

// allows reports whether the initiator may log in.
func (c *TargetConfig) allows(initiator string) bool {
	if len(c.AllowedInitiators) == 0 {
		return true
	}
	for _, n := range c.AllowedInitiators {
		if strings.EqualFold(n, initiator) {
			return true
		}
	}
	return false
}

// AddTarget exports lu as target iqn, LUN 0, open to every initiator
// without authentication. serial is as TargetConfig.Serial.
func (s *Server) AddTarget(iqn string, lu Backend, serial string) error {
	return s.AddTargetWith(iqn, lu, TargetConfig{Serial: serial})
}

// AddTargetWith exports lu as target iqn, LUN 0, with the given serial,
// authentication and initiator allowlist.
func (s *Server) AddTargetWith(iqn string, lu Backend, cfg TargetConfig) error {
	if !validISCSIName(iqn) {
		return fmt.Errorf("%w: name %q: want iqn., eui. or naa. followed by printable ASCII, at most 223 bytes", ErrInvalidTarget, iqn)
	}
	if lu == nil {
		return fmt.Errorf("%w: %s: nil backend", ErrInvalidTarget, iqn)
	}
	if size := lu.Size(); size < int64(s.cfg.BlockSize) {
		return fmt.Errorf("%w: %s: size %d is below one block of %d bytes", ErrInvalidTarget, iqn, size, s.cfg.BlockSize)
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidTarget, iqn, err)
	}
	t := &target{
		iqn:      iqn,
		lu:       newLogicalUnit(lu, uint32(s.cfg.BlockSize), s.cfg.MaxTransferLength, s.cfg.MaxBurstLength, cfg.Serial, iqn),
		sessions: make(map[*session]struct{}),
	}
	t.lu.log = s.log.With("target", iqn, "serial", cfg.Serial)
	t.lu.readOnly = cfg.ReadOnly
	t.cfg.Store(cfg.clone())
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.mu.targets[iqn]; ok {
		return fmt.Errorf("%w: %s", ErrTargetExists, iqn)
	}
	s.mu.targets[iqn] = t
	s.log.Info("iscsi target added", "target", iqn, "serial", cfg.Serial, "bytes", lu.Size(),
		"chap", cfg.CHAP != nil, "mutual chap", cfg.CHAP != nil && cfg.CHAP.MutualUser != "", "allowed initiators", len(cfg.AllowedInitiators),
		"read_only", cfg.ReadOnly)
	return nil
}

// UpdateTarget replaces the authentication and allowlist of target iqn.
// The change applies to logins that start afterwards; sessions already
// logged in stay. The serial cannot change: cfg.Serial must be empty or
// equal to the target's.
func (s *Server) UpdateTarget(iqn string, cfg TargetConfig) error {
	t, ok := s.lookupTarget(iqn)
	if !ok {
		return fmt.Errorf("%w: %s", ErrTargetNotFound, iqn)
	}
	if cfg.Serial == "" {
		cfg.Serial = t.lu.serial
	}
	if cfg.Serial != t.lu.serial {
		return fmt.Errorf("%w: %s: the serial of an exported target cannot change", ErrInvalidTarget, iqn)
	}
	if cfg.ReadOnly != t.lu.readOnly {
		return fmt.Errorf("%w: %s: an exported target cannot change between read-only and writable", ErrInvalidTarget, iqn)
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidTarget, iqn, err)
	}
	t.cfg.Store(cfg.clone())
	s.log.Info("iscsi target updated", "target", iqn,
		"chap", cfg.CHAP != nil, "mutual chap", cfg.CHAP != nil && cfg.CHAP.MutualUser != "", "allowed initiators", len(cfg.AllowedInitiators))
	return nil
}

// RemoveTarget stops exporting target iqn: new logins are refused, its
// sessions are closed and their in-flight commands cancelled, and it
// returns once they are all gone.
func (s *Server) RemoveTarget(iqn string) error {
	s.mu.Lock()
	t, ok := s.mu.targets[iqn]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrTargetNotFound, iqn)
	}
	delete(s.mu.targets, iqn)
	t.removed = true
	sessions := make([]*session, 0, len(t.sessions))
	for sess := range t.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.conn.close()
	}
	for _, sess := range sessions {
		<-sess.ended
	}
	s.log.Info("iscsi target removed", "target", iqn, "sessions closed", len(sessions))
	return nil
}

// Targets returns the names of the exported targets, sorted.
func (s *Server) Targets() []string {
	s.mu.Lock()
	names := make([]string, 0, len(s.mu.targets))
	for n := range s.mu.targets {
		names = append(names, n)
	}
	s.mu.Unlock()
	slices.Sort(names)
	return names
}

// Redirect is a target served by another portal: a login for it is
// answered with "target moved temporarily" (RFC 7143 11.13.5) and that
// portal's address, and SendTargets lists it with that address, in both
// cases only to the initiators its allowlist admits.
type Redirect struct {
	Addr              string   // host:port of the portal that serves it
	AllowedInitiators []string // as TargetConfig.AllowedInitiators
}

func (r Redirect) allows(initiator string) bool {
	return (&TargetConfig{AllowedInitiators: r.AllowedInitiators}).allows(initiator)
}

// SetRedirects replaces the targets served by other portals. A target this
// server exports itself is never redirected.
func (s *Server) SetRedirects(r map[string]Redirect) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.redirects = maps.Clone(r)
}

func (s *Server) lookupRedirect(name string) (Redirect, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.mu.redirects[name]
	return r, ok
}

func (s *Server) lookupTarget(name string) (*target, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.mu.targets[name]
	return t, ok
}

func (s *Server) sessionExists(tsih uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.mu.sessions[tsih]
	return ok
}

// admit registers a session whose login is completing: it reinstates
// (closes) an older session of the same initiator port (InitiatorName and
// ISID) on the same target, allocates a TSIH and records the session.
func (s *Server) admit(sess *session) error {
	if !sess.discovery {
		s.mu.Lock()
		var old *session
		for o := range sess.target.sessions {
			if o.isid == sess.isid && o.initiator == sess.initiator {
				old = o
			}
		}
		s.mu.Unlock()
		if old != nil {
			s.log.Info("iscsi session reinstatement", "target", sess.target.iqn, "initiator", sess.initiator, "old tsih", old.tsih)
			old.conn.close()
			<-old.ended
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess.target != nil && sess.target.removed {
		return rejectLogin(loginTargetRemoved, "target %s was removed", sess.target.iqn)
	}
	if len(s.mu.sessions) >= 0xffff {
		return rejectLogin(loginOutOfResources, "no free TSIH")
	}
	for {
		s.mu.nextTSIH++
		if s.mu.nextTSIH == 0 {
			continue
		}
		if _, used := s.mu.sessions[s.mu.nextTSIH]; !used {
			break
		}
	}
	sess.tsih = s.mu.nextTSIH
	s.mu.sessions[sess.tsih] = sess
	if sess.target != nil {
		sess.target.sessions[sess] = struct{}{}
	}
	return nil
}

// release forgets a session and frees its TSIH.
func (s *Server) release(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.sessions[sess.tsih] == sess {
		delete(s.mu.sessions, sess.tsih)
	}
	if sess.target != nil {
		delete(sess.target.sessions, sess)
	}
}

// targetSessions returns the sessions logged in to t.
func (s *Server) targetSessions(t *target) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*session, 0, len(t.sessions))
	for sess := range t.sessions {
		out = append(out, sess)
	}
	return out
}

// sendTargets returns the targets named by a SendTargets value, each with
// its TargetAddress: all of them for "All", the session's own for an empty
// value, or the one named. A target of this server has the address of the
// connection (local); one served elsewhere, its portal's. Only targets
// whose allowlist admits the initiator are listed.
func (s *Server) sendTargets(value string, own *target, initiator, local string) []textPair {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	switch value {
	case "All":
		for n := range s.mu.targets {
			names = append(names, n)
		}
		for n := range s.mu.redirects {
			if _, ok := s.mu.targets[n]; !ok {
				names = append(names, n)
			}
		}
		slices.Sort(names)
	case "":
		if own != nil {
			names = []string{own.iqn}
		}
	default:
		names = []string{value}
	}
	var out []textPair
	for _, n := range names {
		if t, ok := s.mu.targets[n]; ok {
			if t.cfg.Load().allows(initiator) {
				out = append(out, textPair{"TargetName", n}, textPair{"TargetAddress", local})
			}
		} else if r, ok := s.mu.redirects[n]; ok && r.allows(initiator) {
			out = append(out, textPair{"TargetName", n}, textPair{"TargetAddress", r.Addr + ",1"})
		}
	}
	return out
}

// Serve accepts iSCSI connections on ln until ctx is done, then closes the
// listener and every connection it accepted and returns once all their
// goroutines have exited. It returns nil after ctx is done, or the error
// that stopped accepting.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	var open, refused atomic.Int64 // connections of this portal held, refused
	backoff := 5 * time.Millisecond
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("iscsi: accept: %w", err)
			}
			s.log.Warn("iscsi accept failed", "err", err, "retry in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if open.Add(1) > int64(s.cfg.MaxConnections) {
			open.Add(-1)
			if n := refused.Add(1); n%100 == 1 { // one line per 100 under a flood
				s.log.Warn("iscsi: refusing a connection: the portal holds its maximum", "remote", nc.RemoteAddr().String(),
					"max_connections", s.cfg.MaxConnections, "refused_so_far", n)
			}
			nc.Close()
			continue
		}
		c := newConn(s, nc)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer open.Add(-1)
			c.serve(ctx)
		}()
	}
}
