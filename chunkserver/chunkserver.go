// Package chunkserver is the daemon that owns a local disk and exports the
// chunks the metaserver assigns to it over NBD. It registers with the
// metaserver, heartbeats its capacity, and reconciles its chunk files
// towards the assignments: it creates active chunks and deletes chunks the
// metaserver marked for deletion. It never deletes a chunk on its own.
//
// # Exports and fencing
//
// A host opens a chunk with the export name
// <chunk>;host=<host>;epoch=<epoch>;token=<token> (api.ExportName); the
// token is an HMAC of (chunk, host, epoch) with the cluster secret that the
// metaserver hands out at registration. The chunkserver refuses, at
// handshake and with a message the client shows, a name that does not parse
// (a bare chunk id included), a wrong token, an unknown or failed chunk, and
// an epoch below the chunk's minimum epoch.
//
// Each connection is tracked with its epoch and the number of its requests
// in flight. Fence(chunk, E) (DESIGN §2 rule 2) raises the chunk's minimum
// epoch to E in the sidecar, closes every connection of the chunk opened
// with an older epoch, and returns only when no request of a closed or
// closing connection (older epoch, or one that dropped on its own) is still
// running. A connection refuses every request from the moment it is fenced
// or stops reading, so a late write of a zombie host can never land after
// the fence returned. Fencing at the current epoch raises nothing and
// drains connections that dropped: a host reconnecting after a timeout uses
// it.
//
// # LOG bitmaps and pinning
//
// Every chunk has a LOG bitmap (bitmap.Log), persisted in its sidecar
// before any write, trim or write-zeroes touches a region whose bit was not
// yet durable; it rotates every T (from the metaserver, 60 s by default).
// A pinned LOG forgets nothing. Besides the explicit pin and unpin control
// calls (DESIGN §2 rule 3), the chunkserver pins on its own when it cannot
// know that a host is still there to recover the set:
//
//   - after a restart, every loaded LOG starts pinned (a host may have died
//     while the chunkserver was down);
//   - when an NBD connection ends without NBD_CMD_DISC (the host died, the
//     link was cut, the client timed out), the chunk's LOG is pinned. A
//     clean disconnect (NBD_CMD_DISC after the client's last request) does
//     not pin;
//   - a fence that closes a connection still in use pins the LOG before it
//     closes it: the old host may have left the set torn and the fencing
//     host may yet fail to attach, so the bits must outlive T until a host
//     brings the set in sync and unpins it.
//
// A live host unpins a chunk once it has brought the chunk's set in sync.
// The pin is in the persisted LOG state.
//
// # Control API and meta context
//
// The control API (fence, pin, unpin, read the LOG) is served over HTTP on
// its own address, advertised at registration; package control documents
// it and holds its client. Every NBD export also publishes its LOG bitmap
// as the meta context "chunkraid:log": extents of region granularity with
// flag 1 (LogDirty) where current|history is set, so that
// nbdinfo --map=chunkraid:log nbd://HOST:PORT/<export name> shows it.
package chunkserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/chunkraid/chunkraid/budget"
	"github.com/chunkraid/chunkraid/chunkserver/internal/store"
	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Config configures a chunkserver. Zero values mean the documented defaults.
type Config struct {
	// Name identifies the chunkserver in the cluster; it must be unique and
	// stable across restarts. Default: the host name.
	Name string
	// DataDir holds the chunk files. Required.
	DataDir string
	// FS is the filesystem under DataDir; nil means the operating system's
	// (vfs.OS). Tests run the server on a crashable in-memory filesystem.
	FS vfs.FS
	// Listen is the NBD listen address. Default 127.0.0.1:10809.
	Listen string
	// Listener, if set, is used instead of Listen.
	Listener net.Listener
	// Advertise is the NBD address hosts dial. Default: the listener's address.
	Advertise string
	// FaultDomain groups chunkservers that can fail together (a rack).
	// Default: the name.
	FaultDomain string
	// Metaserver is the metaserver's base URL, e.g. https://127.0.0.1:8080. Required.
	Metaserver string
	// MetaTLS verifies an https:// Metaserver: pki.ClientConfig of the
	// cluster CA (--ca-file). Required with https://.
	MetaTLS *tls.Config
	// JoinToken admits the chunkserver to the cluster at its first
	// registration (a token of role join); the metaserver then issues it a
	// credential, which it keeps in DataDir/credential and uses from then
	// on. Not needed once that file exists.
	JoinToken string
	// HeartbeatInterval is how often capacity is reported. Default 2 s.
	HeartbeatInterval time.Duration
	// Logger receives the daemon's log. nil discards.
	Logger *slog.Logger
	// ControlListen is the control API listen address (fence, pin, LOG
	// bitmaps). Default 127.0.0.1:10909.
	ControlListen string
	// ControlListener, if set, is used instead of ControlListen.
	ControlListener net.Listener
	// ControlAdvertise is the control address hosts dial. Default: the
	// control listener's address.
	ControlAdvertise string
	// LogRegion is the LOG bitmap region size of new chunks: a power of
	// two of at least 512. Default 64 MiB.
	LogRegion int64
	// LogPeriod overrides T, the LOG rotation period the metaserver
	// announces at registration; meant for tests. Zero: the cluster's
	// value, 60 s if it announces none.
	LogPeriod time.Duration
	// MaxConnections bounds the NBD connections served at once (one more
	// is closed at once, with a log line); 0 means 256.
	MaxConnections int
	// MaxInFlightBytes bounds the payload bytes one NBD connection may
	// have between request and reply; 0 means 64 MiB.
	MaxInFlightBytes int64
	// Metrics receives the chunkserver's Prometheus series, served at
	// /metrics on the control port to any operator token of the cluster;
	// nil means a registry of its own.
	Metrics *prometheus.Registry
	// HandshakeTimeout bounds an NBD connection's handshake; 0 means 30 s.
	HandshakeTimeout time.Duration

	// writeSidecar replaces the store's sidecar writer (tests).
	writeSidecar func(path string, data []byte) error
}

// Defaults of the timeout budget when the metaserver announces none.
const (
	defaultIOTimeout = 5 * time.Second
	defaultLogPeriod = 60 * time.Second
)

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("chunkserver: a data directory is required (--data-dir)")
	}
	if c.Metaserver == "" {
		return errors.New("chunkserver: the metaserver URL is required (--metaserver or CHUNKRAID_METASERVER)")
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("chunkserver: no --name given and the host name is unknown: %w", err)
		}
		c.Name = h
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:10809"
	}
	if c.ControlListen == "" {
		c.ControlListen = "127.0.0.1:10909"
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 2 * time.Second
	}
	if c.HeartbeatInterval < 0 {
		return fmt.Errorf("chunkserver: heartbeat interval %v must be positive", c.HeartbeatInterval)
	}
	if c.LogRegion == 0 {
		c.LogRegion = store.DefaultLogRegion
	}
	if c.LogRegion < 512 || c.LogRegion&(c.LogRegion-1) != 0 {
		return fmt.Errorf("chunkserver: LOG region size %d must be a power of two of at least 512 (--log-region)", c.LogRegion)
	}
	if c.LogPeriod < 0 {
		return fmt.Errorf("chunkserver: LOG period %v must be positive", c.LogPeriod)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.FS == nil {
		c.FS = vfs.OS{}
	}
	return nil
}

// Server is a running chunkserver.
type Server struct {
	cfg  Config
	log  *slog.Logger
	meta *api.Client
	// registry and metrics: the Prometheus series (metrics.go)
	registry *prometheus.Registry
	metrics  *metrics

	// Set by Run before any connection or control call is served.
	store     *store.Store
	id        int64
	secret    string        // cluster secret (hex): verifies export and control tokens
	logPeriod time.Duration // T
	ioTimeout time.Duration // t_io

	chunks struct {
		sync.Mutex
		m map[string]*chunkState // by chunk id
	}
	// ready is closed once the store is open and serving starts (tests).
	ready chan struct{}
	// beforeWrite, if set, runs inside every WRITE of a connection, after
	// it counts as in flight (tests stall writes with it).
	beforeWrite func(off int64)

	// strays are chunks on disk that the metaserver does not assign to this
	// server, already logged once; only the reconcile loop uses it.
	strays map[string]bool
}

// New validates cfg and returns a Server ready to Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	meta, err := api.NewDaemonClient(cfg.Metaserver, cfg.MetaTLS, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("chunkserver: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, meta: meta, ready: make(chan struct{})}
	s.registry = cfg.Metrics
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(s, s.registry)
	s.chunks.m = make(map[string]*chunkState)
	return s, nil
}

// Run registers with the metaserver, opens the chunk store and serves NBD
// and the control API until ctx is done, then closes every connection and
// chunk.
func (s *Server) Run(ctx context.Context) error {
	if err := s.cfg.FS.MkdirAll(s.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("chunkserver: data directory: %w", err)
	}
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Listen); err != nil {
			return fmt.Errorf("chunkserver: NBD listen: %w", err)
		}
	}
	defer ln.Close()
	cln := s.cfg.ControlListener
	if cln == nil {
		var err error
		if cln, err = net.Listen("tcp", s.cfg.ControlListen); err != nil {
			return fmt.Errorf("chunkserver: control API listen: %w", err)
		}
	}
	defer cln.Close()
	adv := s.cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	cadv := s.cfg.ControlAdvertise
	if cadv == "" {
		cadv = cln.Addr().String()
	}

	tlsCfg, err := s.register(ctx, adv, cadv)
	if err != nil {
		return err
	}
	cln = tls.NewListener(cln, tlsCfg)
	st, err := store.Open(store.Config{
		Dir:          s.cfg.DataDir,
		FS:           s.cfg.FS,
		Logger:       s.log.With("component", "store"),
		LogRegion:    s.cfg.LogRegion,
		LogPeriod:    s.logPeriod,
		WriteSidecar: s.cfg.writeSidecar,
		ObserveSync:  s.metrics.observeSync,
	})
	if err != nil {
		return err
	}
	s.store = st
	defer func() {
		if err := st.Close(); err != nil {
			s.log.Error("closing chunk store", "err", err)
		}
	}()

	srv, err := nbd.NewServer(nbd.ServerConfig{
		Lookup:           s.lookup,
		List:             st.List,
		Logger:           s.log.With("component", "nbd"),
		MetaContexts:     map[string]nbd.MetaContext{LogContext: logContext},
		MaxConns:         s.cfg.MaxConnections,
		MaxInFlightBytes: s.cfg.MaxInFlightBytes,
		HandshakeTimeout: s.cfg.HandshakeTimeout,
		Observe:          s.metrics.observeNBD,
	})
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           s.controlHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.log.Info("chunkserver started", "name", s.cfg.Name, "id", s.id, "nbd", adv, "control", cadv,
		"data_dir", s.cfg.DataDir, "log_period", s.logPeriod, "io_timeout", s.ioTimeout, "log_region", s.cfg.LogRegion)

	g, gctx := errgroup.WithContext(ctx)
	close(s.ready)
	g.Go(func() error { return srv.Serve(gctx, ln) })
	g.Go(func() error {
		if err := hs.Serve(cln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("chunkserver: control API: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
		return nil
	})
	g.Go(func() error { return s.heartbeatLoop(gctx) })
	g.Go(func() error { return s.reconcileLoop(gctx) })
	g.Go(func() error { return s.rotateLoop(gctx) })
	err = g.Wait()
	if ctx.Err() != nil {
		s.log.Info("chunkserver stopped")
		return nil
	}
	return err
}

// LogContext is the NBD meta context that publishes each chunk's LOG
// bitmap: block status extents of region granularity, flag LogDirty where
// current|history has the region's bit.
const LogContext = "chunkraid:log"

// rotateLoop rotates the LOG bitmaps: every chunk's Log rotates once T has
// passed since its last rotation. Ticking at T/10 makes a rotation at most
// T/10 late, which only keeps bits longer.
func (s *Server) rotateLoop(ctx context.Context) error {
	tick := min(max(s.logPeriod/10, 10*time.Millisecond), 5*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if err := s.store.RotateLogs(now); err != nil {
				s.log.Error("rotating LOG bitmaps", "err", err)
			}
		}
	}
}

func (s *Server) disks() ([]api.DiskInfo, error) {
	usage := func() (int64, int64, error) { return s.cfg.FS.Usage(s.cfg.DataDir) }
	if s.store != nil { // opened after the registration
		usage = s.store.Usage // which also tells the store whether it is nearly full
	}
	capacity, free, err := usage()
	if err != nil {
		return nil, err
	}
	d := api.DiskInfo{Path: s.cfg.DataDir, CapacityBytes: capacity, FreeBytes: free}
	if s.store != nil {
		d.OutOfSpace = s.store.OutOfSpace()
		if d.AllocatedBytes, err = s.store.Allocated(); err != nil {
			return nil, err
		}
	}
	return []api.DiskInfo{d}, nil
}

// register registers with the metaserver, retrying with backoff until it
// answers or ctx ends, and takes the cluster secret and the timeout budget
// from its answer.
// register registers the chunkserver (with a fresh certificate request for
// the control API's key) and returns the control API's TLS configuration.
func (s *Server) register(ctx context.Context, adv, cadv string) (*tls.Config, error) {
	cred, err := s.loadCredential()
	if err != nil {
		return nil, err
	}
	csr, key, err := pki.NewRequest("chunkserver " + s.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("chunkserver: %w", err)
	}
	switch {
	case cred != "":
		s.meta.SetToken(cred)
	case s.cfg.JoinToken != "":
		s.meta.SetToken(s.cfg.JoinToken)
	}
	var resp *api.RegisterChunkserverResponse
	err = api.Register(ctx, s.log, func(ctx context.Context) error {
		disks, err := s.disks()
		if err != nil {
			return err
		}
		resp, err = s.meta.RegisterChunkserver(ctx, api.RegisterChunkserverRequest{
			Name: s.cfg.Name, Addr: adv, ControlAddr: cadv, ControlCSR: string(csr), FaultDomain: s.cfg.FaultDomain, Disks: disks,
		})
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("chunkserver: registration refused: %w", err)
	}
	if _, err := pki.Verify([]byte(resp.ClusterCA), []byte(resp.ControlCert), pki.Chunkserver); err != nil {
		return nil, fmt.Errorf("chunkserver: the control API certificate the metaserver signed: %w", err)
	}
	tlsCfg, err := pki.ServerConfig([]byte(resp.ControlCert), key)
	if err != nil {
		return nil, fmt.Errorf("chunkserver: %w", err)
	}
	if resp.Credential != "" {
		if err := store.WriteFileAtomicMode(s.cfg.FS, s.credentialPath(), []byte(resp.Credential+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("chunkserver: keeping the credential the metaserver issued (revoke token %s:%s and restart with a join token): %w", api.RoleChunkserver, s.cfg.Name, err)
		}
		s.meta.SetToken(resp.Credential)
		s.log.Info("joined the cluster: credential kept", "file", s.credentialPath())
	}
	s.id = resp.ID
	return tlsCfg, s.configure(ctx, resp)
}

func (s *Server) credentialPath() string { return filepath.Join(s.cfg.DataDir, "credential") }

// loadCredential reads the credential the chunkserver keeps; "" if it has
// none yet.
func (s *Server) loadCredential() (string, error) {
	f, err := s.cfg.FS.OpenFile(s.credentialPath(), os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("chunkserver: credential: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 4096))
	if err != nil {
		return "", fmt.Errorf("chunkserver: credential: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// configure takes the secret, t_io and T from a registration answer and
// checks them against the timeout budget (budget.Validate).
func (s *Server) configure(ctx context.Context, resp *api.RegisterChunkserverResponse) error {
	s.secret = resp.ClusterSecret
	if s.secret == "" {
		s.log.Warn("the metaserver announced no cluster secret: export and control tokens are made with an empty key and can be forged")
	}
	s.ioTimeout = time.Duration(resp.IOTimeoutMS) * time.Millisecond
	if s.ioTimeout <= 0 {
		s.ioTimeout = defaultIOTimeout
	}
	s.logPeriod = time.Duration(resp.LogPeriodMS) * time.Millisecond
	if s.logPeriod <= 0 {
		s.logPeriod = defaultLogPeriod
	}
	if s.cfg.LogPeriod > 0 {
		s.logPeriod = s.cfg.LogPeriod
	}
	var offlineAfter time.Duration
	if cl, err := s.meta.Cluster(ctx); err == nil {
		offlineAfter = time.Duration(cl.OfflineAfterSeconds * float64(time.Second))
	} else {
		s.log.Warn("reading the cluster settings; checking the timeout budget without offline_after", "err", err)
	}
	if err := checkBudget(s.ioTimeout, offlineAfter, s.logPeriod); err != nil {
		return fmt.Errorf("chunkserver: %w", err)
	}
	return nil
}

// checkBudget validates t_io and T (and offline_after when known, > 0)
// with budget.Validate.
func checkBudget(ioTimeout, offlineAfter, logPeriod time.Duration) error {
	if offlineAfter > 0 {
		return budget.Validate(ioTimeout, offlineAfter, logPeriod)
	}
	// offline_after unknown: check only the rules that do not involve it.
	var errs []error
	for _, err := range unjoin(budget.Validate(ioTimeout, 0, logPeriod)) {
		var be *budget.Error
		if errors.As(err, &be) && strings.Contains(be.Rule, "offline_after") {
			continue
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unjoin splits an errors.Join result.
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func (s *Server) heartbeatLoop(ctx context.Context) error {
	api.Heartbeat(ctx, s.log, s.cfg.HeartbeatInterval, func(ctx context.Context) error {
		disks, err := s.disks()
		if err != nil {
			return err
		}
		hb := api.ChunkserverHeartbeat{Disks: disks}
		for _, f := range s.store.Failed() {
			reason := "unknown"
			if f.Reason != nil {
				reason = f.Reason.Error()
			}
			hb.FailedChunks = append(hb.FailedChunks, api.FailedChunk{ID: f.ID, Quarantined: f.Quarantined, Reason: reason})
		}
		return s.meta.ChunkserverHeartbeat(ctx, s.id, hb)
	})
	return nil
}

// reconcileLoop long-polls the assignments and applies them.
func (s *Server) reconcileLoop(ctx context.Context) error {
	api.Follow(ctx, s.log, "chunk assignments",
		func(ctx context.Context, after int64) (*api.ChunkAssignments, int64, error) {
			as, err := s.meta.ChunkAssignments(ctx, s.id, after, 30*time.Second)
			if err != nil {
				return nil, 0, err
			}
			return as, as.Generation, nil
		},
		func(as *api.ChunkAssignments) bool { return s.apply(ctx, as) })
	return nil
}

// apply creates and deletes chunks; it reports whether everything succeeded.
func (s *Server) apply(ctx context.Context, as *api.ChunkAssignments) bool {
	ok := true
	known := make(map[string]bool, len(as.Chunks))
	for _, a := range as.Chunks {
		known[a.ID] = true
		switch a.State {
		case api.ChunkActive:
			if _, err := s.store.Get(a.ID); err == nil {
				continue
			}
			if a.Base != "" {
				if _, err := s.store.CreateClone(a.ID, a.Base, a.BaseSnapshot); err != nil {
					s.log.Error("creating a clone chunk", "chunk", a.ID, "base", a.Base, "snapshot", a.BaseSnapshot, "err", err)
					ok = false
					continue
				}
				s.log.Info("clone chunk created", "chunk", a.ID, "base", a.Base, "snapshot", a.BaseSnapshot)
				continue
			}
			if _, err := s.store.Create(a.ID, a.SizeBytes); err != nil {
				s.log.Error("creating chunk", "chunk", a.ID, "err", err)
				ok = false
				continue
			}
			s.log.Info("chunk created", "chunk", a.ID, "size", a.SizeBytes)
		case api.ChunkDeleting:
			if c, err := s.store.Get(a.ID); err == nil {
				// Close its connections; nothing may write to it any more.
				s.closeSessions(c)
			}
			if err := s.store.Delete(a.ID); err != nil {
				s.log.Error("deleting chunk", "chunk", a.ID, "err", err)
				ok = false
				continue
			}
			if err := s.meta.AckChunkDeleted(ctx, s.id, a.ID); err != nil {
				s.log.Warn("acknowledging deletion", "chunk", a.ID, "err", err)
				ok = false
				continue
			}
			s.forget(a.ID)
			s.log.Info("chunk deleted", "chunk", a.ID)
		}
	}
	if s.strays == nil {
		s.strays = make(map[string]bool)
	}
	for _, id := range s.store.List() {
		if !known[id] && !s.strays[id] {
			s.strays[id] = true
			s.log.Warn("chunk on disk is not assigned to this server; keeping it", "chunk", id)
		}
	}
	return ok
}
