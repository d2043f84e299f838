// Package chunkserver is the daemon that owns a local disk and exports the
// chunks the metaserver assigns to it over NBD. It registers with the
// metaserver, heartbeats its capacity, and reconciles its chunk files
// towards the assignments: it creates active chunks and deletes chunks the
// metaserver marked for deletion. It never deletes a chunk on its own.
package chunkserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/chunkraid/chunkraid/chunkserver/internal/store"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Config configures a chunkserver. Zero values mean the documented defaults.
type Config struct {
	// Name identifies the chunkserver in the cluster; it must be unique and
	// stable across restarts. Default: the host name.
	Name string
	// DataDir holds the chunk files. Required.
	DataDir string
	// Listen is the NBD listen address. Default 127.0.0.1:10809.
	Listen string
	// Listener, if set, is used instead of Listen.
	Listener net.Listener
	// Advertise is the NBD address hosts dial. Default: the listener's address.
	Advertise string
	// FaultDomain groups chunkservers that can fail together (a rack).
	// Default: the name.
	FaultDomain string
	// Metaserver is the metaserver's base URL, e.g. http://127.0.0.1:8080. Required.
	Metaserver string
	// HeartbeatInterval is how often capacity is reported. Default 2 s.
	HeartbeatInterval time.Duration
	// Logger receives the daemon's log. nil discards.
	Logger *slog.Logger
}

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
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 2 * time.Second
	}
	if c.HeartbeatInterval < 0 {
		return fmt.Errorf("chunkserver: heartbeat interval %v must be positive", c.HeartbeatInterval)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Server is a running chunkserver.
type Server struct {
	cfg   Config
	log   *slog.Logger
	meta  *api.Client
	store *store.Store
	id    int64
	// strays are chunks on disk that the metaserver does not assign to this
	// server, already logged once; only the reconcile loop uses it.
	strays map[string]bool
}

// New validates cfg and returns a Server ready to Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: cfg.Logger, meta: api.NewClient(cfg.Metaserver, nil)}, nil
}

// Run serves until ctx is done, then closes every connection and chunk.
func (s *Server) Run(ctx context.Context) error {
	st, err := store.Open(store.Config{Dir: s.cfg.DataDir, Logger: s.log})
	if err != nil {
		return err
	}
	s.store = st
	defer func() {
		if err := st.Close(); err != nil {
			s.log.Error("closing chunk store", "err", err)
		}
	}()

	ln := s.cfg.Listener
	if ln == nil {
		ln, err = net.Listen("tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("chunkserver: NBD listen: %w", err)
		}
	}
	defer ln.Close()
	adv := s.cfg.Advertise
	if adv == "" {
		adv = ln.Addr().String()
	}

	srv, err := nbd.NewServer(nbd.ServerConfig{
		Lookup: s.lookup,
		List:   st.List,
		Logger: s.log.With("component", "nbd"),
	})
	if err != nil {
		return err
	}

	if err := s.register(ctx, adv); err != nil {
		return err
	}
	s.log.Info("chunkserver started", "name", s.cfg.Name, "id", s.id, "nbd", adv, "data_dir", s.cfg.DataDir)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Serve(gctx, ln) })
	g.Go(func() error { return s.heartbeatLoop(gctx) })
	g.Go(func() error { return s.reconcileLoop(gctx) })
	err = g.Wait()
	if ctx.Err() != nil {
		s.log.Info("chunkserver stopped")
		return nil
	}
	return err
}

func (s *Server) lookup(name string) (nbd.Export, error) {
	c, err := s.store.Get(name)
	if err != nil {
		return nil, fmt.Errorf("no chunk %q on chunkserver %s", name, s.cfg.Name)
	}
	return export{c}, nil
}

func (s *Server) disks() ([]api.DiskInfo, error) {
	capacity, free, err := s.store.Usage()
	if err != nil {
		return nil, err
	}
	return []api.DiskInfo{{Path: s.store.Dir(), CapacityBytes: capacity, FreeBytes: free}}, nil
}

// register registers with the metaserver, retrying with backoff until it
// answers or ctx ends.
func (s *Server) register(ctx context.Context, adv string) error {
	backoff := 200 * time.Millisecond
	for {
		disks, err := s.disks()
		if err != nil {
			return err
		}
		resp, err := s.meta.RegisterChunkserver(ctx, api.RegisterChunkserverRequest{
			Name: s.cfg.Name, Addr: adv, FaultDomain: s.cfg.FaultDomain, Disks: disks,
		})
		if err == nil {
			s.id = resp.ID
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
			return fmt.Errorf("chunkserver: registration refused: %w", err)
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
		disks, err := s.disks()
		if err != nil {
			s.log.Error("reading capacity", "err", err)
			continue
		}
		if err := s.meta.ChunkserverHeartbeat(ctx, s.id, api.ChunkserverHeartbeat{Disks: disks}); err != nil && ctx.Err() == nil {
			s.log.Warn("heartbeat failed", "err", err)
		}
	}
}

// reconcileLoop long-polls the assignments and applies them.
func (s *Server) reconcileLoop(ctx context.Context) error {
	var gen int64
	for ctx.Err() == nil {
		as, err := s.meta.ChunkAssignments(ctx, s.id, gen, 30*time.Second)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("fetching chunk assignments", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if s.apply(ctx, as) {
			gen = as.Generation
		} else {
			// Something failed: retry the same generation after a pause.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
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
			if _, err := s.store.Create(a.ID, a.SizeBytes); err != nil {
				s.log.Error("creating chunk", "chunk", a.ID, "err", err)
				ok = false
				continue
			}
			s.log.Info("chunk created", "chunk", a.ID, "size", a.SizeBytes)
		case api.ChunkDeleting:
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

// export adapts a store chunk to nbd.Export.
type export struct{ c *store.Chunk }

func (e export) Size() int64                       { return e.c.Size() }
func (e export) ReadAt(p []byte, off int64) error  { return e.c.ReadAt(p, off) }
func (e export) WriteAt(p []byte, off int64) error { return e.c.WriteAt(p, off) }
func (e export) Sync() error                       { return e.c.Sync() }
func (e export) Trim(off, length int64) error      { return e.c.Trim(off, length) }
func (e export) WriteZeroes(off, length int64, noHole bool) error {
	return e.c.WriteZeroes(off, length, noHole)
}

func (e export) Extents(off, length int64) ([]nbd.Extent, error) {
	ext, err := e.c.Extents(off, length)
	if err != nil {
		return nil, err
	}
	out := make([]nbd.Extent, len(ext))
	for i, x := range ext {
		out[i].Length = x.Length
		if x.Hole {
			out[i].Flags = nbd.StateHole | nbd.StateZero
		}
	}
	return out, nil
}
