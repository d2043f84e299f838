package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// Sentinel errors.
var (
	ErrNotFound    = errors.New("store: no such chunk")
	ErrExists      = errors.New("store: chunk exists with another size")
	ErrChunkFailed = errors.New("store: chunk failed after a durability error")
	ErrOutOfRange  = errors.New("store: I/O beyond end of chunk")
	ErrClosed      = errors.New("store: chunk closed")
)

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Default LOG bitmap geometry and period (DESIGN §2).
const (
	DefaultLogRegion = 64 << 20
	DefaultLogPeriod = 60 * time.Second
)

// Config configures a Store. Zero values mean the documented defaults.
type Config struct {
	// Dir holds the chunk files; it is created if missing. Required.
	Dir string
	// FS is the filesystem under Dir; nil means the operating system's
	// (vfs.OS). Tests use vfs.MemFS (crashable) and vfs.ErrorFS.
	FS vfs.FS
	// Logger receives damaged-chunk and rotation reports; nil discards.
	Logger *slog.Logger
	// LogRegion is the region size of the LOG bitmap of a new chunk (and
	// of a chunk upgraded from a version-1 sidecar): a power of two of at
	// least 512. A chunk loaded from disk keeps its persisted region size.
	// Default 64 MiB.
	LogRegion int64
	// LogPeriod is T, the LOG rotation period. Default 60 s.
	LogPeriod time.Duration
	// Clock tells the time for the LOG bitmaps; nil means time.Now.
	Clock func() time.Time
	// WriteSidecar replaces a sidecar atomically and durably. Nil means
	// WriteFileAtomic on FS. Tests inject failures and observe ordering
	// with it.
	WriteSidecar func(path string, data []byte) error
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return errors.New("store: a directory is required")
	}
	if c.FS == nil {
		c.FS = vfs.OS{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.LogRegion == 0 {
		c.LogRegion = DefaultLogRegion
	}
	if c.LogRegion < 512 || c.LogRegion&(c.LogRegion-1) != 0 {
		return fmt.Errorf("store: LOG region size %d must be a power of two of at least 512", c.LogRegion)
	}
	if c.LogPeriod == 0 {
		c.LogPeriod = DefaultLogPeriod
	}
	if c.LogPeriod < 0 {
		return fmt.Errorf("store: LOG period %v must be positive", c.LogPeriod)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.WriteSidecar == nil {
		fsys := c.FS
		c.WriteSidecar = func(path string, data []byte) error { return WriteFileAtomic(fsys, path, data) }
	}
	return nil
}

// Store is the set of chunks in one directory.
type Store struct {
	cfg Config
	dir string
	fs  vfs.FS
	log *slog.Logger

	mu struct {
		sync.Mutex
		chunks map[string]*Chunk // guarded by mu
	}
}

// Open opens (creating if needed) the store in cfg.Dir and loads every chunk
// whose sidecar validates. A chunk whose sidecar or data file is damaged is
// logged and not served; it is never deleted automatically. Every loaded
// chunk's LOG bitmap starts pinned: its host may have died with it.
// Version-1 sidecars are rewritten as version 2.
func Open(cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir := cfg.Dir
	if err := cfg.FS.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &Store{cfg: cfg, dir: dir, fs: cfg.FS, log: cfg.Logger}
	s.mu.chunks = make(map[string]*Chunk)
	ents, err := s.fs.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".meta.tmp") {
			// An interrupted sidecar replacement: the old sidecar is intact.
			if err := s.fs.Remove(filepath.Join(dir, name)); err != nil {
				s.log.Warn("removing stale sidecar", "file", name, "err", err)
			}
			continue
		}
		id, ok := strings.CutSuffix(name, ".meta")
		if !ok {
			continue
		}
		c, err := s.load(id)
		if err != nil {
			s.log.Error("chunk not served", "chunk", id, "err", err)
			continue
		}
		s.mu.chunks[id] = c
	}
	return s, nil
}

func (s *Store) metaPath(id string) string { return filepath.Join(s.dir, id+".meta") }
func (s *Store) dataPath(id string) string { return filepath.Join(s.dir, id+".chunk") }

// newLog makes the LOG bitmap of a chunk of size bytes.
func (s *Store) newLog(size, regionSize int64) (*bitmap.Log, error) {
	return bitmap.NewLog(bitmap.LogConfig{Size: size, RegionSize: regionSize, Period: s.cfg.LogPeriod, Clock: s.cfg.Clock})
}

func (s *Store) load(id string) (*Chunk, error) {
	b, err := vfs.ReadFile(s.fs, s.metaPath(id))
	if err != nil {
		return nil, err
	}
	var h Header
	if err := h.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	if h.ID != id {
		return nil, fmt.Errorf("%w: sidecar names chunk %q", ErrCorruptHeader, h.ID)
	}
	regionSize := s.cfg.LogRegion
	if h.Log != nil {
		var probe bitmap.Log
		if err := probe.UnmarshalBinary(h.Log); err != nil {
			return nil, fmt.Errorf("%w: LOG state: %w", ErrCorruptHeader, err)
		}
		regionSize = probe.RegionSize()
	}
	log, err := s.newLog(h.Size, regionSize)
	if err != nil {
		return nil, err
	}
	if h.Log != nil {
		if err := log.UnmarshalBinary(h.Log); err != nil {
			return nil, fmt.Errorf("%w: LOG state: %w", ErrCorruptHeader, err)
		}
	}
	// The host of this chunk may have died while the chunkserver was
	// down: keep every bit until a live host unpins.
	log.Pin()

	f, err := s.fs.OpenFile(s.dataPath(id), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	size, err := f.Size()
	if err != nil {
		f.Close()
		return nil, err
	}
	if size != h.Size {
		f.Close()
		return nil, fmt.Errorf("store: data file is %d bytes, header says %d", size, h.Size)
	}
	c := s.newChunk(h, f, log)
	if h.Log == nil {
		if err := c.rewriteSidecar(); err != nil {
			f.Close()
			return nil, fmt.Errorf("store: upgrading the sidecar to version %d: %w", headerVersion, err)
		}
		s.log.Info("chunk sidecar upgraded; its LOG bitmap starts empty and pinned", "chunk", id, "from_version", h.Version)
	}
	return c, nil
}

func (s *Store) newChunk(h Header, f vfs.File, log *bitmap.Log) *Chunk {
	c := &Chunk{
		id: h.ID, size: h.Size, created: h.Created, f: f, lg: log,
		metaPath: s.metaPath(h.ID), writeSidecar: s.cfg.WriteSidecar,
	}
	c.minEpoch.Store(h.MinEpoch)
	return c
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Create makes a new zero-filled sparse chunk with an empty, unpinned LOG
// bitmap and minimum epoch 0. Creating a chunk that exists with the same
// size is a no-op; with another size it is ErrExists.
func (s *Store) Create(id string, size int64) (*Chunk, error) {
	if !validID.MatchString(id) {
		return nil, fmt.Errorf("store: invalid chunk id %q", id)
	}
	if size <= 0 || size%4096 != 0 {
		return nil, fmt.Errorf("store: chunk size %d must be a positive multiple of 4096", size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.mu.chunks[id]; ok {
		if c.Size() != size {
			return nil, fmt.Errorf("%w: %s has %d bytes, asked for %d", ErrExists, id, c.Size(), size)
		}
		return c, nil
	}
	log, err := s.newLog(size, s.cfg.LogRegion)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	f, err := s.fs.OpenFile(s.dataPath(id), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	fail := func(err error) (*Chunk, error) {
		f.Close()
		s.fs.Remove(s.dataPath(id))
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	if err := f.Truncate(size); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	c := s.newChunk(Header{ID: id, Size: size, Created: s.cfg.Clock().UnixNano()}, f, log)
	if err := c.rewriteSidecar(); err != nil {
		return fail(err)
	}
	s.mu.chunks[id] = c
	return c, nil
}

// WriteFileAtomic replaces the file at path on fsys with data atomically
// and durably: it writes path+".tmp", fsyncs it, renames it over path and
// fsyncs the directory.
func WriteFileAtomic(fsys vfs.FS, path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return err
	}
	return fsys.SyncDir(filepath.Dir(path))
}

// Get returns a served chunk.
func (s *Store) Get(id string) (*Chunk, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.mu.chunks[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return c, nil
}

// List returns the ids of the served chunks, sorted.
func (s *Store) List() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.mu.chunks))
	for id := range s.mu.chunks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Delete closes a chunk and removes its files. Deleting a chunk that does not
// exist is not an error.
func (s *Store) Delete(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("store: invalid chunk id %q", id)
	}
	s.mu.Lock()
	c, ok := s.mu.chunks[id]
	delete(s.mu.chunks, id)
	s.mu.Unlock()
	if ok {
		c.close()
		// Wait for a sidecar write in progress; later ones see the chunk
		// closed and write nothing, so the sidecar cannot come back.
		c.sidecarMu.Lock()
		defer c.sidecarMu.Unlock()
	}
	// Sidecar first: a chunk without a sidecar is never served again.
	for _, p := range []string{s.metaPath(id), s.dataPath(id), s.intentPath(id)} {
		if err := s.fs.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: delete %s: %w", id, err)
		}
	}
	return s.fs.SyncDir(s.dir)
}

// Usage reports the capacity and free bytes of the file system under the store.
func (s *Store) Usage() (capacity, free int64, err error) {
	capacity, free, err = s.fs.Usage(s.dir)
	if err != nil {
		return 0, 0, fmt.Errorf("store: %w", err)
	}
	return capacity, free, nil
}

// RotateLogs rotates the LOG bitmap of every chunk whose period has passed
// at now (bitmap.Log.MaybeRotate) and rewrites the sidecar of each chunk
// whose rotation forgot bits. A failed rewrite fails that chunk; the errors
// are returned joined.
func (s *Store) RotateLogs(now time.Time) error {
	s.mu.Lock()
	chunks := make([]*Chunk, 0, len(s.mu.chunks))
	for _, c := range s.mu.chunks {
		chunks = append(chunks, c)
	}
	s.mu.Unlock()
	var errs []error
	for _, c := range chunks {
		if err := c.RotateLog(now); err != nil {
			errs = append(errs, fmt.Errorf("chunk %s: %w", c.ID(), err))
		}
	}
	return errors.Join(errs...)
}

// Close closes every chunk.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, c := range s.mu.chunks {
		errs = append(errs, c.close())
	}
	return errors.Join(errs...)
}

// Chunk is one open chunk. Its methods are safe for concurrent use. After a
// durability failure (a failed fsync of the data or a failed sidecar write)
// the chunk is failed: every later call returns ErrChunkFailed, because the
// durability of earlier writes or of its LOG bitmap is unknown.
type Chunk struct {
	id       string
	size     int64
	created  int64
	f        vfs.File
	lg       *bitmap.Log
	minEpoch atomic.Int64 // written under sidecarMu, after the sidecar holds it
	failed   atomic.Bool
	closed   atomic.Bool

	metaPath     string
	writeSidecar func(path string, data []byte) error
	// sidecarMu serializes sidecar writes, so the sidecar never holds an
	// older minimum epoch than one already reported.
	sidecarMu sync.Mutex

	intentMu sync.Mutex // guards intent
	intent   vfs.File   // the intent bitmap file, opened on first use
}

// ID is the chunk's id.
func (c *Chunk) ID() string { return c.id }

// Size is the chunk's size in bytes.
func (c *Chunk) Size() int64 { return c.size }

// MinEpoch is the chunk's minimum epoch: exports and control calls with an
// older epoch are refused.
func (c *Chunk) MinEpoch() int64 { return c.minEpoch.Load() }

// Log is the chunk's LOG bitmap, for reading (Snapshot, Pinned,
// RegionSize). Change it only through the Chunk (Pin, Unpin, writes), which
// persist it.
func (c *Chunk) Log() *bitmap.Log { return c.lg }

// Failed reports whether the chunk failed after a durability error.
func (c *Chunk) Failed() bool { return c.failed.Load() }

func (c *Chunk) close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.intentMu.Lock()
	if c.intent != nil {
		c.intent.Close()
		c.intent = nil
	}
	c.intentMu.Unlock()
	return c.f.Close()
}

// writeHeaderLocked writes the sidecar with the given LOG state and
// minimum epoch; c.sidecarMu is held. A failure fails the chunk.
func (c *Chunk) writeHeaderLocked(log []byte, minEpoch int64) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.failed.Load() {
		return ErrChunkFailed
	}
	b, err := Header{ID: c.id, Size: c.size, MinEpoch: minEpoch, Created: c.created, Log: log}.MarshalBinary()
	if err == nil {
		err = c.writeSidecar(c.metaPath, b)
	}
	if err != nil {
		c.failed.Store(true)
		return fmt.Errorf("%w: writing sidecar: %w", ErrChunkFailed, err)
	}
	return nil
}

// persistLog is the persist function of the chunk's LOG bitmap (Log.Sync).
func (c *Chunk) persistLog(state []byte) error {
	c.sidecarMu.Lock()
	defer c.sidecarMu.Unlock()
	return c.writeHeaderLocked(state, c.minEpoch.Load())
}

// rewriteSidecar writes the sidecar with the current LOG state. The state
// is taken under sidecarMu, so it is never older than one a concurrent
// persistLog wrote before it.
func (c *Chunk) rewriteSidecar() error {
	c.sidecarMu.Lock()
	defer c.sidecarMu.Unlock()
	state, err := c.lg.MarshalBinary()
	if err != nil {
		return err
	}
	return c.writeHeaderLocked(state, c.minEpoch.Load())
}

// RaiseMinEpoch raises the minimum epoch to epoch, durably, and returns the
// minimum epoch after the call. An epoch at or below the current minimum
// changes nothing. A failed sidecar write fails the chunk.
func (c *Chunk) RaiseMinEpoch(epoch int64) (int64, error) {
	c.sidecarMu.Lock()
	defer c.sidecarMu.Unlock()
	cur := c.minEpoch.Load()
	if epoch <= cur {
		if c.failed.Load() {
			return cur, ErrChunkFailed
		}
		return cur, nil
	}
	state, err := c.lg.MarshalBinary()
	if err != nil {
		return cur, err
	}
	if err := c.writeHeaderLocked(state, epoch); err != nil {
		return cur, err
	}
	c.minEpoch.Store(epoch)
	return epoch, nil
}

// syncLog makes generation gen of the LOG bitmap durable. A failure fails
// the chunk.
func (c *Chunk) syncLog(ctx context.Context, gen uint64) error {
	if gen == 0 {
		return nil
	}
	if err := c.lg.Sync(ctx, gen, c.persistLog); err != nil {
		if errors.Is(err, bitmap.ErrLogFailed) {
			c.failed.Store(true)
			return fmt.Errorf("%w: %w", ErrChunkFailed, err)
		}
		return err
	}
	return nil
}

// mark records a write of [off, off+n) in the LOG bitmap and returns once
// the record is durable: the data may be written after it returns nil.
func (c *Chunk) mark(off, n int64) error {
	gen, _ := c.lg.Mark(off, n)
	// The persist is bounded by the disk, not by a caller: no deadline.
	return c.syncLog(context.Background(), gen)
}

// Pin makes the LOG bitmap keep every bit until Unpin, durably (DESIGN §2
// rule 3). It is idempotent.
func (c *Chunk) Pin(ctx context.Context) error {
	if err := c.check(0, 0); err != nil {
		return err
	}
	return c.syncLog(ctx, c.lg.Pin())
}

// Unpin lets the LOG bitmap forget again from its next rotation on. The
// sidecar keeps the pin until its next write, which only over-reports.
func (c *Chunk) Unpin() error {
	if err := c.check(0, 0); err != nil {
		return err
	}
	c.lg.Unpin()
	return nil
}

// RotateLog rotates the LOG bitmap if its period has passed at now and, if
// the rotation forgot bits, rewrites the sidecar.
func (c *Chunk) RotateLog(now time.Time) error {
	if c.closed.Load() || c.failed.Load() {
		return nil
	}
	pinned := c.lg.Pinned()
	before := c.lg.Snapshot()
	if !c.lg.MaybeRotate(now) || pinned || allZero(before) {
		// Nothing forgotten, or nothing to forget: the sidecar is at
		// worst a superset.
		return nil
	}
	return c.rewriteSidecar()
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func (c *Chunk) check(off, n int64) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.failed.Load() {
		return ErrChunkFailed
	}
	if off < 0 || n < 0 || off+n > c.size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, c.size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off; holes read as zeroes.
func (c *Chunk) ReadAt(p []byte, off int64) error {
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	n, err := c.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return err
}

// WriteAt writes p at off (not durable until Sync), after its regions are
// durably marked in the LOG bitmap.
func (c *Chunk) WriteAt(p []byte, off int64) error {
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	if err := c.mark(off, int64(len(p))); err != nil {
		return err
	}
	_, err := c.f.WriteAt(p, off)
	return err
}

// Sync makes every completed write durable (fdatasync). A failure fails the
// chunk for good.
func (c *Chunk) Sync() error {
	if err := c.check(0, 0); err != nil {
		return err
	}
	if err := c.f.Sync(); err != nil {
		c.failed.Store(true)
		return fmt.Errorf("%w: fdatasync: %w", ErrChunkFailed, err)
	}
	return nil
}

// Trim deallocates [off, off+length); it reads back as zeroes. Like a
// write, it is marked in the LOG bitmap first.
func (c *Chunk) Trim(off, length int64) error {
	if err := c.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if err := c.mark(off, length); err != nil {
		return err
	}
	return c.f.PunchHole(off, length)
}

// WriteZeroes zeroes [off, off+length). With noHole the range stays
// allocated; otherwise it is punched. Like a write, it is marked in the LOG
// bitmap first.
func (c *Chunk) WriteZeroes(off, length int64, noHole bool) error {
	if err := c.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if err := c.mark(off, length); err != nil {
		return err
	}
	if !noHole {
		return c.f.PunchHole(off, length)
	}
	err := c.f.ZeroRange(off, length)
	if errors.Is(err, vfs.ErrUnsupported) {
		// The file system cannot zero a range in place: write zeroes.
		buf := make([]byte, min(length, 1<<20))
		for done := int64(0); done < length; {
			n := min(int64(len(buf)), length-done)
			if _, err := c.f.WriteAt(buf[:n], off+done); err != nil {
				return err
			}
			done += n
		}
		return nil
	}
	return err
}

// Extent is a run of the chunk that is either allocated data or a hole.
type Extent struct {
	Length int64
	Hole   bool
}

// Extents describes [off, off+length) as data and hole runs, using
// SEEK_DATA/SEEK_HOLE. File systems that do not report holes give one data
// extent.
func (c *Chunk) Extents(off, length int64) ([]Extent, error) {
	if err := c.check(off, length); err != nil {
		return nil, err
	}
	end := off + length
	var out []Extent
	for pos := off; pos < end; {
		data, err := c.f.SeekData(pos)
		if errors.Is(err, vfs.ErrNoData) {
			data = end // no data after pos
		} else if err != nil {
			return nil, err
		}
		data = min(data, end)
		if data > pos {
			out = append(out, Extent{Length: data - pos, Hole: true})
			pos = data
			continue
		}
		hole, err := c.f.SeekHole(pos)
		if err != nil {
			return nil, err
		}
		hole = min(hole, end)
		out = append(out, Extent{Length: hole - pos})
		pos = hole
	}
	return out, nil
}
