// Package hostd is the host daemon: it attaches the volumes the metaserver
// assigns to this host, assembling each from its remote chunks (NBD clients)
// into RAID sets and a linear volume, and serves every attached volume as an
// iSCSI target.
package hostd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/chunkraid/chunkraid/budget"
	"github.com/chunkraid/chunkraid/chunkserver/control"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/internal/atomicfile"
	"github.com/chunkraid/chunkraid/linear"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// Config configures a hostd. Zero values mean the documented defaults.
type Config struct {
	// Name identifies the host in the cluster; unique and stable. Default: the host name.
	Name string
	// Listen is the iSCSI listen address. Default 127.0.0.1:3260.
	Listen string
	// Listener, if set, is used instead of Listen.
	Listener net.Listener
	// Advertise is the iSCSI portal address reported to the metaserver.
	// Default: the listener's address.
	Advertise string
	// Metaserver is the metaserver's base URL. Required.
	Metaserver string
	// MetaTLS verifies an https:// Metaserver: pki.ClientConfig of the
	// cluster CA (--ca-file). Required with https://.
	MetaTLS *tls.Config
	// HeartbeatInterval is how often the host reports that it is alive. Default 2 s.
	HeartbeatInterval time.Duration
	// IOTimeout (t_io) bounds every request to a member chunk; a member that
	// does not answer in time fails. Default: the cluster's t_io (5 s unless
	// the metaserver was configured otherwise). Run refuses to start when it
	// breaks the cluster's timeout budget (DESIGN §5, budget.Validate
	// with the metaserver's offline_after and T).
	IOTimeout time.Duration
	// BlockSize is the logical block size of the iSCSI LUNs. Default 512.
	BlockSize int
	// MaxISCSIConnections bounds the connections the iSCSI portal holds
	// at once (one more is closed at once, with a log line); LoginTimeout
	// bounds a connection's login. Defaults 256 and 30 s.
	MaxISCSIConnections int
	LoginTimeout        time.Duration
	// WIBDir holds the write-intent bitmaps, one file per set. It should be
	// on a RAM file system that survives a hostd restart but not a reboot.
	// Default: /dev/shm/chunkraid-<name>.
	WIBDir string
	// StateDir holds what hostd keeps across reboots: the credential the
	// metaserver issued it when it joined. Default:
	// /var/lib/chunkraid/hostd-<name>.
	StateDir string
	// JoinToken admits the host to the cluster at its first registration
	// (a token of role join); not needed once StateDir holds its
	// credential.
	JoinToken string
	// RegionSize is the WIB granularity. Default 1 MiB.
	RegionSize int64
	// ResyncRate limits resync copying per set, in bytes per second.
	// Default 256 MiB/s; negative means unlimited.
	ResyncRate int64
	// ReconnectMin and ReconnectMax bound the backoff between attempts to
	// reach a failed member. Defaults 200 ms and 5 s.
	ReconnectMin, ReconnectMax time.Duration
	// ProbeInterval is how often each set reads a block of every in-sync
	// member, so that a member that went away is failed (and recorded)
	// within ProbeInterval + IOTimeout even when the volume is idle.
	// Default 2 s.
	ProbeInterval time.Duration
	// QoSWaitCap is the longest a command over its volume's I/O limits
	// waits in the target; past it the command is answered TASK SET FULL.
	// Default DefaultQoSWaitCap.
	QoSWaitCap time.Duration
	// Control returns the control client of a chunkserver's control
	// address. Default: chunkserver/control's HTTPS client, trusting the
	// cluster CA the registration brings.
	Control func(addr string) chunkControl
	// Dial connects a member chunk. Default: the NBD client (nbd.Dial).
	Dial func(ctx context.Context, cfg nbd.ClientConfig) (memberConn, error)
	// Meta is the metaserver client. Default: metaserver/api's HTTP client
	// of Metaserver.
	Meta metaClient
	// Logger receives the daemon's log. nil discards.
	Logger *slog.Logger
	// MetricsListen, if set (or MetricsListener), serves Prometheus metrics
	// at /metrics over TLS, with a certificate the cluster CA signs at
	// registration, to any operator token of the cluster. Metrics receives
	// the series; nil means a registry of its own.
	MetricsListen   string
	MetricsListener net.Listener
	Metrics         *prometheus.Registry
}

func (c *Config) validate() error {
	if c.Metaserver == "" && c.Meta == nil {
		return errors.New("hostd: the metaserver URL is required (--metaserver or CHUNKRAID_METASERVER)")
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("hostd: no --name given and the host name is unknown: %w", err)
		}
		c.Name = h
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:3260"
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 2 * time.Second
	}
	if c.HeartbeatInterval < 0 || c.IOTimeout < 0 {
		return errors.New("hostd: intervals and timeouts must be positive")
	}
	if c.WIBDir == "" {
		c.WIBDir = filepath.Join("/dev/shm", "chunkraid-"+c.Name)
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join("/var/lib/chunkraid", "hostd-"+c.Name)
	}
	if c.RegionSize == 0 {
		c.RegionSize = 1 << 20
	}
	if c.RegionSize < 4096 || c.RegionSize&(c.RegionSize-1) != 0 {
		return fmt.Errorf("hostd: WIB region size %d must be a power of two of at least 4096", c.RegionSize)
	}
	switch {
	case c.ResyncRate == 0:
		c.ResyncRate = 256 << 20
	case c.ResyncRate < 0:
		c.ResyncRate = 0
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = 2 * time.Second
	}
	if c.ProbeInterval < 0 {
		return errors.New("hostd: the probe interval must be positive")
	}
	if c.QoSWaitCap == 0 {
		c.QoSWaitCap = DefaultQoSWaitCap
	}
	if c.QoSWaitCap < 0 {
		return errors.New("hostd: the QoS wait cap must be positive")
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 200 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 5 * time.Second
	}
	if c.Dial == nil {
		c.Dial = func(ctx context.Context, cfg nbd.ClientConfig) (memberConn, error) {
			cl, err := nbd.Dial(ctx, cfg)
			if err != nil {
				return nil, err
			}
			return nbdMember{cl}, nil
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Meta == nil {
		meta, err := api.NewDaemonClient(c.Metaserver, c.MetaTLS, c.Logger)
		if err != nil {
			return fmt.Errorf("hostd: %w", err)
		}
		c.Meta = meta
	}
	return nil
}

// Server is a running hostd.
type Server struct {
	cfg    Config
	log    *slog.Logger
	meta   metaClient
	target *iscsi.Server
	// controlHC is the chunkservers' control API client of the default
	// Control, set at registration; nil with Config.Control.
	controlHC *atomic.Pointer[http.Client]
	id        int64
	// incarnation is this start's registration, issued by the metaserver,
	// and reportSeq numbers its volume reports from 1
	// (api.VolumeReport.Incarnation and Seq): the reports of a restarted
	// hostd order after those of the one before because the metaserver
	// issues a higher incarnation, whatever the clock says.
	incarnation atomic.Int64
	reportSeq   atomic.Int64
	// pinSeq numbers this start's pin and unpin calls (pinReq).
	pinSeq atomic.Uint64
	// runCtx is Run's context, for work Run's goroutines start on their own
	// (a re-attach); nil before Run.
	runCtx atomic.Pointer[context.Context]
	// applyMu serializes attaching and detaching by the assignments (apply)
	// with a re-attach.
	applyMu sync.Mutex

	mu struct {
		sync.Mutex
		attached map[string]*attachment // by volume name; guarded by mu
		// snapTargets are the snapshots served read-only, by IQN.
		snapTargets map[string]*snapTarget
	}

	registry               *prometheus.Registry
	metrics                *metrics
	metricsCSR, metricsKey []byte // the metrics listener's key (metricsListener)
}

// New validates cfg and returns a Server ready to Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, meta: cfg.Meta}
	t, err := iscsi.New(iscsi.Config{Logger: cfg.Logger.With("component", "iscsi"), BlockSize: cfg.BlockSize,
		MaxConnections: cfg.MaxISCSIConnections, LoginTimeout: cfg.LoginTimeout,
		Observe: func(command string, status uint8, took time.Duration) { s.metrics.observeSCSI(command, status, took) }})
	if err != nil {
		return nil, err
	}
	s.target = t
	if s.cfg.Control == nil {
		// The control API's client trusts the cluster CA, which the
		// registration brings.
		s.controlHC = new(atomic.Pointer[http.Client])
		s.cfg.Control = func(addr string) chunkControl { return control.NewClient(addr, s.controlHC.Load()) }
	}
	s.mu.attached = make(map[string]*attachment)
	s.mu.snapTargets = make(map[string]*snapTarget)
	s.registry = cfg.Metrics
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(s, s.registry)
	return s, nil
}

// Run serves until ctx is done, then detaches every volume cleanly.
func (s *Server) Run(ctx context.Context) error {
	s.runCtx.Store(&ctx)
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("hostd: iSCSI listen: %w", err)
		}
	}
	defer ln.Close()
	adv := s.cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}
	mln, err := s.metricsListener()
	if err != nil {
		return err
	}
	if mln != nil {
		defer mln.Close()
	}
	metricsCert, err := s.register(ctx, adv, mln)
	if err != nil {
		return err
	}
	s.log.Info("hostd started", "name", s.cfg.Name, "id", s.id, "iscsi", adv)

	g, gctx := errgroup.WithContext(ctx)
	if mln != nil {
		g.Go(func() error { return s.serveMetrics(gctx, mln, metricsCert) })
		s.log.Info("serving metrics", "addr", mln.Addr().String())
	}
	g.Go(func() error { return s.target.Serve(gctx, ln) })
	g.Go(func() error { return s.heartbeatLoop(gctx) })
	g.Go(func() error { return s.reconcileLoop(gctx) })
	err = g.Wait()
	s.detachAll()
	s.stopSnapshots()
	if ctx.Err() != nil {
		s.log.Info("hostd stopped")
		return nil
	}
	return err
}

// register registers the host and returns the certificate of its metrics
// listener mln (nil: none).
func (s *Server) register(ctx context.Context, adv string, mln net.Listener) (string, error) {
	credFile := filepath.Join(s.cfg.StateDir, "credential")
	cred, err := os.ReadFile(credFile)
	switch {
	case err == nil:
		s.meta.SetToken(strings.TrimSpace(string(cred)))
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("hostd: credential: %w", err)
	case s.cfg.JoinToken != "":
		s.meta.SetToken(s.cfg.JoinToken)
	}
	var resp *api.RegisterHostResponse
	err = api.Register(ctx, s.log, func(ctx context.Context) error {
		var err error
		req := api.RegisterHostRequest{Name: s.cfg.Name, ISCSIAddr: adv}
		if mln != nil {
			req.MetricsAddr, req.MetricsCSR = mln.Addr().String(), string(s.metricsCSR)
		}
		resp, err = s.meta.RegisterHost(ctx, req)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("hostd: registration refused: %w", err)
	}
	if resp.Credential != "" {
		if err := atomicfile.Write(credFile, []byte(resp.Credential+"\n"), 0o600); err != nil {
			return "", fmt.Errorf("hostd: keeping the credential the metaserver issued (revoke token %s:%s and restart with a join token): %w", api.RoleHost, s.cfg.Name, err)
		}
		s.meta.SetToken(resp.Credential)
		s.log.Info("joined the cluster: credential kept", "file", credFile)
	}
	if s.controlHC != nil {
		hc, err := control.HTTPClient([]byte(resp.ClusterCA))
		if err != nil {
			return "", fmt.Errorf("hostd: the cluster CA the metaserver sent: %w", err)
		}
		s.controlHC.Store(hc)
	}
	s.id = resp.ID
	s.incarnation.Store(resp.Incarnation)
	if s.cfg.IOTimeout == 0 {
		s.cfg.IOTimeout = time.Duration(resp.IOTimeoutMS) * time.Millisecond
	}
	if s.cfg.IOTimeout <= 0 {
		s.cfg.IOTimeout = 5 * time.Second
	}
	var cl *api.Cluster
	err = api.Register(ctx, s.log, func(ctx context.Context) error {
		var err error
		cl, err = s.meta.Cluster(ctx)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("hostd: reading the cluster's timeout budget: %w", err)
	}
	if mln != nil && resp.MetricsCert == "" {
		return "", errors.New("hostd: the metaserver signed no certificate for the metrics listener: is it older than this hostd?")
	}
	return resp.MetricsCert, checkBudget(s.cfg.IOTimeout, cl, resp.LogPeriodMS)
}

// checkBudget checks t_io against the cluster's offline_after and T with
// the rules the metaserver applies to its own (budget.Validate): a
// host whose members' requests may stay in flight longer than the LOG
// bitmaps remember them must not serve.
func checkBudget(tIO time.Duration, cl *api.Cluster, logPeriodMS int64) error {
	offlineAfter := time.Duration(cl.OfflineAfterMS) * time.Millisecond
	if offlineAfter == 0 {
		offlineAfter = time.Duration(cl.OfflineAfterSeconds * float64(time.Second))
	}
	T := time.Duration(cl.LogPeriodMS) * time.Millisecond
	if T == 0 {
		T = time.Duration(logPeriodMS) * time.Millisecond
	}
	if err := budget.Validate(tIO, offlineAfter, T); err != nil {
		return fmt.Errorf("hostd: t_io (--io-timeout) breaks the cluster's timeout budget: %w", err)
	}
	return nil
}

func (s *Server) heartbeatLoop(ctx context.Context) error {
	api.Heartbeat(ctx, s.log, s.cfg.HeartbeatInterval, func(ctx context.Context) error {
		return s.meta.HostHeartbeat(ctx, s.id)
	})
	return nil
}

// reconcileLoop long-polls the volumes and snapshots assigned to this host
// and attaches or detaches until the served set matches.
func (s *Server) reconcileLoop(ctx context.Context) error {
	api.Follow(ctx, s.log, "assigned volumes",
		func(ctx context.Context, after int64) (*api.HostVolumes, int64, error) {
			hv, err := s.meta.HostVolumes(ctx, s.id, after, 30*time.Second)
			if err != nil {
				return nil, 0, err
			}
			s.setRedirects(hv.Elsewhere)
			return hv, hv.Generation, nil
		},
		func(hv *api.HostVolumes) bool {
			ok := s.apply(ctx, hv.Volumes)
			return s.applySnapshotTargets(hv.SnapshotTargets) && ok
		})
	return nil
}

// setRedirects points logins and SendTargets for the volumes other hosts
// serve at their portals.
func (s *Server) setRedirects(elsewhere []api.ServedElsewhere) {
	r := make(map[string]iscsi.Redirect, len(elsewhere))
	for _, e := range elsewhere {
		r[e.IQN] = iscsi.Redirect{Addr: e.Portal, AllowedInitiators: e.AllowedInitiators}
	}
	s.target.SetRedirects(r)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// apply attaches new volumes, reattaches volumes whose epoch or placement
// changed, and detaches volumes no longer assigned. It reports whether the
// served set now matches vols.
func (s *Server) apply(ctx context.Context, vols []api.Volume) bool {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	want := make(map[string]api.Volume, len(vols))
	for _, v := range vols {
		want[v.Name] = v
	}
	s.mu.Lock()
	var stale []string
	grown := map[string]*attachment{}
	for name, a := range s.mu.attached {
		v, ok := want[name]
		switch {
		case ok && v.Epoch == a.vol.Epoch && grows(a.vol, v):
			grown[name] = a
		case !ok || v.Epoch != a.vol.Epoch || !samePlacement(v, a.vol):
			stale = append(stale, name)
		}
	}
	s.mu.Unlock()
	for name, a := range grown {
		if err := a.grow(ctx, want[name]); err != nil {
			a.log.Error("growing the volume in place failed: attaching it again", "err", err)
			stale = append(stale, name)
		}
	}
	for _, name := range stale {
		s.detach(name, false)
	}
	ok := true
	for _, v := range vols {
		s.mu.Lock()
		a, have := s.mu.attached[v.Name]
		s.mu.Unlock()
		if have {
			a.applyMarks(v)
			if !reflect.DeepEqual(a.vol.Auth, v.Auth) {
				// CHAP or the allowlist changed: new logins use it at once.
				if err := s.target.UpdateTarget(v.IQN, targetConfig(v)); err != nil {
					s.log.Error("updating the target's access control", "volume", v.Name, "err", err)
					ok = false
					continue
				}
				a.vol.Auth = v.Auth
				s.log.Info("volume access control updated", "volume", v.Name,
					"chap", v.Auth.CHAPUser != "", "mutual", v.Auth.MutualUser != "", "allowed_initiators", len(v.Auth.AllowedInitiators))
			}
			a.applySnapshots(v)
			if a.lu.qos.set(v.QoS) {
				a.vol.QoS = v.QoS
				s.log.Info("volume I/O limits applied", "volume", v.Name, "qos", v.QoS.String())
			}
			continue
		}
		if err := s.attach(ctx, v); err != nil {
			s.log.Error("attaching volume", "volume", v.Name, "err", err)
			ok = false
		}
	}
	return ok
}

// grows reports whether b is a grown a: a larger size, every set of a
// placed as it was, and maybe more sets after them.
func grows(a, b api.Volume) bool {
	if b.SizeBytes <= a.SizeBytes || len(b.Sets) < len(a.Sets) {
		return false
	}
	prefix := b
	prefix.Sets, prefix.SizeBytes = b.Sets[:len(a.Sets)], a.SizeBytes
	return samePlacement(a, prefix)
}

func samePlacement(a, b api.Volume) bool {
	if a.SizeBytes != b.SizeBytes || len(a.Sets) != len(b.Sets) {
		return false
	}
	for i := range a.Sets {
		if len(a.Sets[i].Members) != len(b.Sets[i].Members) {
			return false
		}
		for j := range a.Sets[i].Members {
			ma, mb := a.Sets[i].Members[j], b.Sets[i].Members[j]
			if ma.ChunkID != mb.ChunkID || ma.Addr != mb.Addr || ma.Export != mb.Export {
				return false
			}
		}
	}
	return true
}

// lun is a volume as the iSCSI target serves it: exactly the volume's size,
// which may be less than the sum of its sets, and errors in the target's
// classes (scsiClass).
type lun struct {
	*linear.Volume
	size atomic.Int64 // grows with the volume (attachment.grow)
	ops  volumeOps
	qos  *volumeQoS // the volume's I/O limits, checked before the sets
	// gate is held shared by every command while it runs on the volume,
	// and alone by a quiesce (a snapshot): commands then wait.
	gate sync.RWMutex
}

func (l *lun) Size() int64 { return l.size.Load() }

func (l *lun) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := l.qos.wait(ctx, false, len(p)); err != nil {
		return err
	}
	l.gate.RLock()
	defer l.gate.RUnlock()
	start := time.Now()
	err := l.Volume.ReadAt(ctx, p, off)
	l.ops.observe("read", len(p), err, start)
	return scsiClass(err)
}

func (l *lun) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := l.qos.wait(ctx, true, len(p)); err != nil {
		return err
	}
	l.gate.RLock()
	defer l.gate.RUnlock()
	start := time.Now()
	err := l.Volume.WriteAt(ctx, p, off, fua)
	l.ops.observe("write", len(p), err, start)
	return scsiClass(err)
}

func (l *lun) Flush(ctx context.Context) error {
	l.gate.RLock()
	defer l.gate.RUnlock()
	start := time.Now()
	err := l.Volume.Flush(ctx)
	l.ops.observe("flush", 0, err, start)
	return scsiClass(err)
}

func (l *lun) Trim(ctx context.Context, off, length int64) error {
	if err := l.qos.wait(ctx, true, 0); err != nil {
		return err
	}
	l.gate.RLock()
	defer l.gate.RUnlock()
	start := time.Now()
	err := l.Volume.Trim(ctx, off, length)
	l.ops.observe("trim", 0, err, start)
	return scsiClass(err)
}

// scsiClass says which of the iSCSI target's classes a RAID error is (the
// target imports no back end): a write or flush that a member missed and
// whose degradation could not be recorded may be retried (becoming ready);
// a set without the members it needs cannot serve (not ready); an offset
// beyond the end is out of range; a write every member refused for lack of
// space is a space allocation failure. Anything else is a medium error.
func scsiClass(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raid.ErrNoSpace):
		return fmt.Errorf("%w: %w", iscsi.ErrNoSpace, err)
	case errors.Is(err, raid.ErrNotRecorded):
		return fmt.Errorf("%w: %w", iscsi.ErrBecomingReady, err)
	case errors.Is(err, raid.ErrNoMembers):
		return fmt.Errorf("%w: %w", iscsi.ErrNotReady, err)
	case errors.Is(err, raid.ErrOutOfRange):
		return fmt.Errorf("%w: %w", iscsi.ErrLBAOutOfRange, err)
	}
	return err
}

// detach stops serving a volume. clean reports a clean detach to the
// metaserver when every set is in sync and flushed.
func (s *Server) detach(name string, clean bool) {
	s.mu.Lock()
	a, ok := s.mu.attached[name]
	delete(s.mu.attached, name)
	s.mu.Unlock()
	if !ok {
		return
	}
	s.log.Info("volume detached", "volume", name, "clean", a.close(clean))
	s.metrics.forget(name)
}

func (s *Server) detachAll() {
	s.mu.Lock()
	var names []string
	for n := range s.mu.attached {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		s.detach(n, true)
	}
}
