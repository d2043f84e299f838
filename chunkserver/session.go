package chunkserver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/chunkraid/chunkraid/chunkserver/internal/store"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// chunkState is what the chunkserver tracks about one chunk beyond the
// store: its NBD connections (sessions) and the fences in progress.
type chunkState struct {
	c *store.Chunk

	// fenceMu serializes fences of the chunk.
	fenceMu sync.Mutex
	mu      struct {
		sync.Mutex
		// sessions are the connections in transmission, and those that
		// stopped (fenced or dropped) while requests were in flight,
		// until those requests finish.
		sessions map[*session]struct{}
	}
}

// state returns the tracking state of c, creating it on first use. A chunk
// deleted and created again gets a fresh state.
func (s *Server) state(c *store.Chunk) *chunkState {
	s.chunks.Lock()
	defer s.chunks.Unlock()
	cs, ok := s.chunks.m[c.ID()]
	if !ok || cs.c != c {
		cs = &chunkState{c: c}
		cs.mu.sessions = make(map[*session]struct{})
		s.chunks.m[c.ID()] = cs
	}
	return cs
}

// forget drops the tracking state of a deleted chunk.
func (s *Server) forget(id string) {
	s.chunks.Lock()
	defer s.chunks.Unlock()
	delete(s.chunks.m, id)
}

// session is the Export of one NBD connection: Lookup is called for each
// connection (and for NBD_OPT_INFO, whose sessions never start). It counts
// the requests in flight and refuses every request once the connection is
// fenced or has stopped, so that a fence can wait until nothing of an old
// connection can still reach the chunk.
type session struct {
	srv  *Server
	cs   *chunkState
	c    *store.Chunk
	name api.ExportName

	inflight atomic.Int64
	// closing is set when the connection is fenced or stopped reading:
	// from then on every request is refused.
	closing atomic.Bool
	// fenced is set when a fence closed the connection.
	fenced    atomic.Bool
	drained   chan struct{} // closed once closing and no request in flight
	drainOnce sync.Once
	// closeConn closes the connection; set by Attached under cs.mu.
	closeConn func()
}

var (
	_ nbd.Export   = (*session)(nil)
	_ nbd.Extenter = (*session)(nil)
)

// errFenced is the error of a request on a fenced or stopped connection.
func (ss *session) errFenced() error {
	return &nbd.Error{Errno: nbd.EPERM, Message: fmt.Sprintf(
		"chunk %s is fenced at epoch %d; this connection was opened with epoch %d",
		ss.c.ID(), ss.c.MinEpoch(), ss.name.Epoch)}
}

// begin admits a request, or refuses it if the connection is closing or its
// epoch is below the chunk's minimum epoch. The count goes up before the
// checks, so a fence that raised the epoch or set closing either sees the
// request in flight or the request sees the fence.
func (ss *session) begin() error {
	ss.inflight.Add(1)
	if ss.closing.Load() || ss.belowFence() {
		ss.end()
		return ss.errFenced()
	}
	return nil
}

// belowFence reports a connection whose epoch is below the chunk's
// minimum epoch; a snapshot's reader never is (snapshotsUnfenced).
func (ss *session) belowFence() bool {
	return ss.name.Snapshot == "" && ss.name.Epoch < ss.c.MinEpoch()
}

func (ss *session) end() {
	if ss.inflight.Add(-1) == 0 && ss.closing.Load() {
		ss.markDrained()
	}
}

// checkDrained signals drained if the session is closing with nothing in
// flight.
func (ss *session) checkDrained() {
	if ss.closing.Load() && ss.inflight.Load() == 0 {
		ss.markDrained()
	}
}

func (ss *session) markDrained() {
	ss.drainOnce.Do(func() {
		close(ss.drained)
		ss.cs.mu.Lock()
		delete(ss.cs.mu.sessions, ss)
		ss.cs.mu.Unlock()
	})
}

func (ss *session) Size() int64 { return ss.c.Size() }

// ReadOnly reports a read-only export name (mode=ro): the NBD server
// refuses every change through it.
func (ss *session) ReadOnly() bool { return ss.name.ReadOnly }

func (ss *session) ReadAt(p []byte, off int64) error {
	if err := ss.begin(); err != nil {
		return err
	}
	defer ss.end()
	if ss.name.Snapshot != "" {
		return ss.c.ReadSnapshotAt(ss.name.Snapshot, p, off)
	}
	return ss.c.ReadAt(p, off)
}

func (ss *session) WriteAt(p []byte, off int64) error {
	if err := ss.begin(); err != nil {
		return err
	}
	defer ss.end()
	if h := ss.srv.beforeWrite; h != nil {
		h(off)
	}
	return ss.c.WriteAt(p, off)
}

func (ss *session) Sync() error {
	if err := ss.begin(); err != nil {
		return err
	}
	defer ss.end()
	return ss.c.Sync()
}

func (ss *session) Trim(off, length int64) error {
	if err := ss.begin(); err != nil {
		return err
	}
	defer ss.end()
	return ss.c.Trim(off, length)
}

func (ss *session) WriteZeroes(off, length int64, noHole bool) error {
	if err := ss.begin(); err != nil {
		return err
	}
	defer ss.end()
	return ss.c.WriteZeroes(off, length, noHole)
}

// Extents answers base:allocation from SEEK_DATA/SEEK_HOLE.
func (ss *session) Extents(off, length int64) ([]nbd.Extent, error) {
	if err := ss.begin(); err != nil {
		return nil, err
	}
	defer ss.end()
	var (
		ext []store.Extent
		err error
	)
	if ss.name.Snapshot != "" {
		ext, err = ss.c.SnapshotExtents(ss.name.Snapshot, off, length)
	} else {
		ext, err = ss.c.Extents(off, length)
	}
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

// Attached registers the connection with its chunk. A fence that raised
// the epoch between Lookup and now closes it at once.
func (ss *session) Attached(closeConn func()) {
	ss.cs.mu.Lock()
	ss.closeConn = closeConn
	if ss.belowFence() {
		ss.cs.mu.Unlock()
		ss.fenced.Store(true)
		ss.closing.Store(true)
		closeConn()
		ss.checkDrained()
		return
	}
	ss.cs.mu.sessions[ss] = struct{}{}
	ss.cs.mu.Unlock()
	ss.srv.log.Debug("connection opened", "chunk", ss.c.ID(), "host", ss.name.Host, "epoch", ss.name.Epoch)
}

// Detached is called when the connection stops reading requests. Unless
// the client ended it with NBD_CMD_DISC or a fence closed it, the chunk's
// LOG bitmap is pinned: the host may have died, and whoever recovers the
// set needs every bit (see the package doc).
func (ss *session) Detached(clean bool) {
	ss.closing.Store(true)
	log := ss.srv.log.With("chunk", ss.c.ID(), "host", ss.name.Host, "epoch", ss.name.Epoch)
	switch {
	case clean:
		log.Debug("connection closed by the host")
	case ss.fenced.Load():
		log.Info("fenced connection closed")
	case ss.name.ReadOnly:
		log.Debug("read-only connection ended; it wrote nothing, so nothing to pin")
	default:
		// The persist is bounded by the disk; nothing waits on this but
		// the connection's own goroutine.
		switch err := ss.c.Pin(context.Background()); {
		case err == nil:
			log.Info("connection ended without NBD_CMD_DISC; LOG bitmap pinned until a host unpins it")
		case errors.Is(err, store.ErrClosed):
			log.Debug("connection of a closed chunk ended")
		default:
			log.Error("pinning the LOG bitmap after an unclean disconnect", "err", err)
		}
	}
	ss.checkDrained()
}

// fence raises c's minimum epoch to epoch (persisted), closes every
// connection of c opened with that epoch or an older one and waits until no
// request of a closed or closing connection is in flight. Closing the
// connections of the fencing epoch too means a host that fences before it
// reconnects (after a timeout) never leaves behind a stuck connection the
// server has not noticed yet: its late writes cannot land after the fence. It returns the minimum
// epoch after the call; if ctx ends first, the epoch stays raised and the
// error says how many connections were still draining.
func (s *Server) fence(ctx context.Context, c *store.Chunk, epoch int64) (int64, error) {
	cs := s.state(c)
	cs.fenceMu.Lock()
	defer cs.fenceMu.Unlock()

	cs.mu.Lock()
	minEpoch, err := c.RaiseMinEpoch(epoch)
	if err != nil {
		cs.mu.Unlock()
		return minEpoch, err
	}
	var wait []*session
	live := 0 // connections this fence takes from a host that was using them
	for ss := range cs.mu.sessions {
		switch {
		case ss.name.Snapshot != "":
			// A snapshot's reader cannot change the chunk: no fence
			// needs it gone (snapshotsUnfenced).
		case ss.name.Epoch <= minEpoch:
			if !ss.closing.Load() {
				live++
			}
			ss.fenced.Store(true)
			ss.closing.Store(true)
			wait = append(wait, ss)
		case ss.closing.Load():
			wait = append(wait, ss) // dropped, requests still running
		}
	}
	cs.mu.Unlock()

	// The host whose connections are closed here may have left the set
	// torn, and the fencing host may still fail to attach (an EC set with
	// fewer than K members reachable): the LOG must keep every bit until a
	// host brings the set in sync and unpins it (DESIGN §2 rule 3). The pin
	// is durable before the first connection closes.
	if live > 0 {
		if err := c.Pin(ctx); err != nil {
			for _, ss := range wait {
				if ss.fenced.Load() && ss.closeConn != nil {
					ss.closeConn()
				}
				ss.checkDrained()
			}
			return minEpoch, fmt.Errorf("chunk %s fenced at epoch %d, but pinning its LOG bitmap failed: %w", c.ID(), minEpoch, err)
		}
	}

	for _, ss := range wait {
		if ss.fenced.Load() && ss.closeConn != nil {
			ss.closeConn()
		}
		ss.checkDrained()
	}
	for i, ss := range wait {
		select {
		case <-ss.drained:
		case <-ctx.Done():
			return minEpoch, fmt.Errorf("chunk %s fenced at epoch %d, but %d closed connections still have requests in flight: %w",
				c.ID(), minEpoch, len(wait)-i, ctx.Err())
		}
	}
	if len(wait) > 0 {
		s.log.Info("chunk fenced", "chunk", c.ID(), "min_epoch", minEpoch, "connections_closed_or_drained", len(wait))
	}
	return minEpoch, nil
}

// closeSessions closes every connection of c (the chunk is being deleted).
func (s *Server) closeSessions(c *store.Chunk) {
	cs := s.state(c)
	cs.mu.Lock()
	var all []*session
	for ss := range cs.mu.sessions {
		ss.fenced.Store(true)
		ss.closing.Store(true)
		all = append(all, ss)
	}
	cs.mu.Unlock()
	for _, ss := range all {
		if ss.closeConn != nil {
			ss.closeConn()
		}
		ss.checkDrained()
	}
}

// openSessions reports the connections of c in transmission (for tests and
// logs).
func (s *Server) openSessions(c *store.Chunk) int {
	cs := s.state(c)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	n := 0
	for ss := range cs.mu.sessions {
		if !ss.closing.Load() {
			n++
		}
	}
	return n
}

// lookup opens the export a host names: <chunk>;host=H;epoch=N;token=T
// with a valid token and an epoch at or above the chunk's minimum epoch.
//
// snapshotsUnfenced: a snapshot's export (read-only, snap=NAME) is not
// bound to the chunk's minimum epoch. A fence keeps an old host's writes
// from landing after a new host took the chunk over; a snapshot's reader
// writes nothing, and what it reads does not change when the volume moves,
// so a read-only snapshot target keeps serving while its volume is
// detached, attached elsewhere or rolled back. Its token still binds the
// chunk, host, epoch and snapshot name.
func (s *Server) lookup(name string) (nbd.Export, error) {
	en, err := api.ParseExportName(name)
	if err != nil {
		return nil, fmt.Errorf("export name %q refused: the name must be <chunk>;host=<host>;epoch=<epoch>;token=<token> "+
			"as the metaserver issues it (a bare chunk id carries no epoch or access token)", name)
	}
	if !en.ValidToken(s.secret) {
		return nil, fmt.Errorf("bad access token for chunk %s (host %s, epoch %d)", en.Chunk, en.Host, en.Epoch)
	}
	c, err := s.store.Get(en.Chunk)
	if err != nil {
		return nil, fmt.Errorf("no chunk %s on chunkserver %s", en.Chunk, s.cfg.Name)
	}
	if c.Failed() {
		return nil, fmt.Errorf("chunk %s failed after a durability error and is not served", en.Chunk)
	}
	if m := c.MinEpoch(); en.Epoch < m && en.Snapshot == "" {
		return nil, fmt.Errorf("chunk %s is fenced at epoch %d; this host presented epoch %d", en.Chunk, m, en.Epoch)
	}
	if en.Snapshot != "" && !c.HasSnapshot(en.Snapshot) {
		return nil, fmt.Errorf("chunk %s has no snapshot %q", en.Chunk, en.Snapshot)
	}
	return &session{srv: s, cs: s.state(c), c: c, name: en, drained: make(chan struct{})}, nil
}

// logContext answers the NBD meta context "chunkraid:log": extents of LOG
// region granularity, flag 1 where the region is dirty (current|history).
func logContext(exp nbd.Export, off, length int64) ([]nbd.Extent, error) {
	ss, ok := exp.(*session)
	if !ok {
		return nil, errors.New("chunkraid:log: not a chunk export")
	}
	return logExtents(ss.c.Log().Snapshot(), ss.c.Log().RegionSize(), ss.c.Size(), off, length), nil
}

// maxLogExtents bounds the extents of one chunkraid:log answer; the
// protocol lets a server describe less than was asked.
const maxLogExtents = 1 << 16

// LogDirty is the chunkraid:log status flag of a region whose LOG bit is set.
const LogDirty = 1

// logExtents describes [off, off+length) of a chunk of size bytes in
// region-sized extents, clipped to the range, flag LogDirty where bits
// (LSB first) has the region's bit set.
func logExtents(bits []byte, regionSize, size, off, length int64) []nbd.Extent {
	end := min(off+length, size)
	var out []nbd.Extent
	for pos := off; pos < end && len(out) < maxLogExtents; {
		r := pos / regionSize
		next := min((r+1)*regionSize, end)
		var flags uint32
		if int(r/8) < len(bits) && bits[r/8]&(1<<(r%8)) != 0 {
			flags = LogDirty
		}
		if n := len(out); n > 0 && out[n-1].Flags == flags {
			out[n-1].Length += next - pos
		} else {
			out = append(out, nbd.Extent{Length: next - pos, Flags: flags})
		}
		pos = next
	}
	return out
}
