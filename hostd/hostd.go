// Package hostd is the host daemon: it attaches the volumes the metaserver
// assigns to this host, assembling each from its remote chunks (NBD clients)
// into RAID sets and a linear volume, and serves every attached volume as an
// iSCSI target.
package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/hostd/iscsi"
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
	// HeartbeatInterval is how often the host reports that it is alive. Default 2 s.
	HeartbeatInterval time.Duration
	// IOTimeout (t_io) bounds every request to a member chunk; a member that
	// does not answer in time fails. Default 5 s.
	IOTimeout time.Duration
	// BlockSize is the logical block size of the iSCSI LUNs. Default 512.
	BlockSize int
	// Logger receives the daemon's log. nil discards.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Metaserver == "" {
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
	if c.IOTimeout == 0 {
		c.IOTimeout = 5 * time.Second
	}
	if c.HeartbeatInterval < 0 || c.IOTimeout < 0 {
		return errors.New("hostd: intervals and timeouts must be positive")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Server is a running hostd.
type Server struct {
	cfg    Config
	log    *slog.Logger
	meta   *api.Client
	target *iscsi.Server
	id     int64

	mu struct {
		sync.Mutex
		attached map[string]*attachment // by volume name; guarded by mu
	}
}

// attachment is one volume served by this host.
type attachment struct {
	vol     api.Volume
	volume  *linear.Volume
	clients []*nbd.Client
	sets    []*raid.Mirror
}

// New validates cfg and returns a Server ready to Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	t, err := iscsi.New(iscsi.Config{Logger: cfg.Logger.With("component", "iscsi"), BlockSize: cfg.BlockSize})
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, meta: api.NewClient(cfg.Metaserver, nil), target: t}
	s.mu.attached = make(map[string]*attachment)
	return s, nil
}

// Run serves until ctx is done, then detaches every volume cleanly.
func (s *Server) Run(ctx context.Context) error {
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
	if err := s.register(ctx, adv); err != nil {
		return err
	}
	s.log.Info("hostd started", "name", s.cfg.Name, "id", s.id, "iscsi", adv)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.target.Serve(gctx, ln) })
	g.Go(func() error { return s.heartbeatLoop(gctx) })
	g.Go(func() error { return s.reconcileLoop(gctx) })
	err := g.Wait()
	s.detachAll()
	if ctx.Err() != nil {
		s.log.Info("hostd stopped")
		return nil
	}
	return err
}

func (s *Server) register(ctx context.Context, adv string) error {
	backoff := 200 * time.Millisecond
	for {
		resp, err := s.meta.RegisterHost(ctx, api.RegisterHostRequest{Name: s.cfg.Name, ISCSIAddr: adv})
		if err == nil {
			s.id = resp.ID
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
			return fmt.Errorf("hostd: registration refused: %w", err)
		}
		s.log.Warn("metaserver not reachable, retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Server) heartbeatLoop(ctx context.Context) error {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.meta.HostHeartbeat(ctx, s.id); err != nil && ctx.Err() == nil {
			s.log.Warn("heartbeat failed", "err", err)
		}
	}
}

// reconcileLoop long-polls the volumes assigned to this host and attaches
// or detaches until the served set matches.
func (s *Server) reconcileLoop(ctx context.Context) error {
	var gen int64
	for ctx.Err() == nil {
		hv, err := s.meta.HostVolumes(ctx, s.id, gen, 30*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("fetching assigned volumes", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		if s.apply(ctx, hv.Volumes) {
			gen = hv.Generation
		} else {
			sleep(ctx, time.Second)
		}
	}
	return nil
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
	want := make(map[string]api.Volume, len(vols))
	for _, v := range vols {
		want[v.Name] = v
	}
	s.mu.Lock()
	var stale []string
	for name, a := range s.mu.attached {
		v, ok := want[name]
		if !ok || v.Epoch != a.vol.Epoch || !samePlacement(v, a.vol) {
			stale = append(stale, name)
		}
	}
	s.mu.Unlock()
	for _, name := range stale {
		s.detach(name)
	}
	ok := true
	for _, v := range vols {
		s.mu.Lock()
		_, have := s.mu.attached[v.Name]
		s.mu.Unlock()
		if have {
			continue
		}
		if err := s.attach(ctx, v); err != nil {
			s.log.Error("attaching volume", "volume", v.Name, "err", err)
			ok = false
		}
	}
	return ok
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

// attach connects to every member, builds the sets and the volume and adds
// the iSCSI target. Every member must be reachable: attaching a mirror with a
// member missing would need a resync record to bring it back safely.
func (s *Server) attach(ctx context.Context, v api.Volume) (err error) {
	a := &attachment{vol: v}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	var sets []raid.Device
	for _, set := range v.Sets {
		var members []raid.Device
		for _, m := range set.Members {
			c, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: m.Addr, Export: m.Export, Timeout: s.cfg.IOTimeout})
			if err != nil {
				return fmt.Errorf("set %d member %s on %s (%s): %w", set.Index, m.ChunkID, m.Chunkserver, m.Addr, err)
			}
			a.clients = append(a.clients, c)
			members = append(members, c)
		}
		setIdx := set.Index
		mir, err := raid.NewMirror(raid.MirrorConfig{
			Members: members,
			Logger:  s.log.With("volume", v.Name, "set", setIdx),
		})
		if err != nil {
			return fmt.Errorf("set %d: %w", set.Index, err)
		}
		a.sets = append(a.sets, mir)
		sets = append(sets, mir)
	}
	vol, err := linear.New(sets)
	if err != nil {
		return err
	}
	if vol.Size() < v.SizeBytes {
		return fmt.Errorf("sets hold %d bytes, the volume is %d", vol.Size(), v.SizeBytes)
	}
	a.volume = vol
	lu := &lun{Volume: vol, size: v.SizeBytes}
	serial := strings.ReplaceAll(v.Name, ".", "-")
	if err := s.target.AddTarget(v.IQN, lu, serial); err != nil {
		return err
	}
	s.mu.Lock()
	s.mu.attached[v.Name] = a
	s.mu.Unlock()
	s.log.Info("volume attached", "volume", v.Name, "iqn", v.IQN, "size", v.SizeBytes, "sets", len(v.Sets), "epoch", v.Epoch)
	return nil
}

// lun exposes exactly the volume's size, which may be less than the sum of
// its sets.
type lun struct {
	*linear.Volume
	size int64
}

func (l *lun) Size() int64 { return l.size }

func (s *Server) detach(name string) {
	s.mu.Lock()
	a, ok := s.mu.attached[name]
	delete(s.mu.attached, name)
	s.mu.Unlock()
	if !ok {
		return
	}
	if err := s.target.RemoveTarget(a.vol.IQN); err != nil {
		s.log.Warn("removing target", "iqn", a.vol.IQN, "err", err)
	}
	// Every write the initiator saw acknowledged is on the members already;
	// a final flush makes them durable before the connections close.
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.IOTimeout)
	if err := a.volume.Flush(ctx); err != nil {
		s.log.Error("final flush of detached volume failed", "volume", name, "err", err)
	}
	cancel()
	a.close()
	s.log.Info("volume detached", "volume", name)
}

func (s *Server) detachAll() {
	s.mu.Lock()
	var names []string
	for n := range s.mu.attached {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		s.detach(n)
	}
}

func (a *attachment) close() {
	for _, c := range a.clients {
		c.Close()
	}
}
