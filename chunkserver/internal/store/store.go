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
	"syscall"
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
	// ErrQuarantined is returned (wrapped, with the chunk and the reason)
	// for a chunk whose sidecar or data file is damaged, or that failed
	// after a durability error before the last restart: its files are kept
	// untouched, it is not served and Create does not re-create it.
	ErrQuarantined = errors.New("store: chunk quarantined")
)

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Default LOG bitmap geometry and period (DESIGN §2).
const (
	DefaultLogRegion = 64 << 20
	DefaultLogPeriod = 60 * time.Second
	// LogFineRegion is the granularity of the fine copy of each LOG kept
	// in memory (bitmap.LogConfig.FineRegion): hostd's WIB region, so that
	// a host taking over after another host's death resyncs what was in
	// flight at the WIB's granularity while the chunkservers live on.
	LogFineRegion = 1 << 20
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
	// ObserveSync, if set, is told of every fdatasync of a data file: how
	// long it took and its error.
	ObserveSync func(took time.Duration, err error)
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
	// space says whether the filesystem is nearly full, when every write
	// reserves its range before it changes anything (spaceGuard).
	space spaceGuard

	mu struct {
		sync.Mutex
		chunks map[string]*Chunk // served chunks
		// quarantined are the chunks kept on disk but not served, with
		// the reason.
		quarantined map[string]error
	}
}

// File name suffixes in the store directory (drawn in the package doc).
const (
	suffixData         = ".chunk"
	suffixMeta         = ".meta"
	suffixTmp          = ".meta.tmp"
	suffixIntent       = ".intent"
	suffixFailed       = ".failed"
	suffixMetaSetAside = ".meta.failed"
)

// Open opens (creating if needed) the store in cfg.Dir and loads every chunk
// whose sidecar and data file validate. A chunk whose sidecar or data file
// is damaged, or that carries a failure marker, is quarantined: logged,
// listed by Failed, kept on disk untouched and not served; it is never
// deleted automatically. Every loaded chunk's LOG bitmap starts pinned (its
// host may have died with it), and its first period runs from now.
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
	s.space.fs, s.space.dir = cfg.FS, dir
	s.space.check()
	s.mu.chunks = make(map[string]*Chunk)
	s.mu.quarantined = make(map[string]error)
	ents, err := s.fs.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	files := make(map[string]bool, len(ents))
	for _, e := range ents {
		files[e.Name()] = true
	}
	ids := make(map[string]bool)
	for name := range files {
		if strings.HasSuffix(name, suffixTmp) {
			// An interrupted sidecar replacement: the old sidecar is intact.
			if err := s.fs.Remove(filepath.Join(dir, name)); err != nil {
				s.log.Warn("removing stale sidecar", "file", name, "err", err)
			}
			continue
		}
		for _, suf := range []string{suffixMeta, suffixData, suffixFailed, suffixMetaSetAside} {
			if id, ok := strings.CutSuffix(name, suf); ok && validID.MatchString(id) {
				ids[id] = true
			}
		}
	}
	for id := range ids {
		var err error
		switch {
		case files[id+suffixFailed]:
			b, rerr := vfs.ReadFile(s.fs, s.failedPath(id))
			reason := strings.TrimSpace(string(b))
			if rerr != nil || reason == "" {
				reason = "reason unreadable"
			}
			err = fmt.Errorf("it failed after a durability error before the restart (%s)", reason)
		case files[id+suffixMetaSetAside]:
			err = fmt.Errorf("it failed after a durability error before the restart; its failure marker could not be written and the sidecar was set aside as %s", id+suffixMetaSetAside)
		case !files[id+suffixMeta]:
			err = s.orphanData(id)
		default:
			var c *Chunk
			if c, err = s.load(id); err == nil {
				s.mu.chunks[id] = c
			}
		}
		if err != nil {
			s.quarantineLocked(id, err)
		}
	}
	// Link each clone to its base; one whose base or base snapshot is
	// gone is not served.
	for id, c := range s.mu.chunks {
		if c.baseID == "" {
			continue
		}
		b := s.mu.chunks[c.baseID]
		if b == nil || !b.HasSnapshot(c.baseSnap) {
			delete(s.mu.chunks, id)
			c.close()
			s.quarantineLocked(id, fmt.Errorf("it is a clone of snapshot %q of chunk %s, which is not here", c.baseSnap, c.baseID))
			continue
		}
		c.setBase(b)
	}
	// A snapshot layer file its chunk's sidecar does not record is left by
	// a Snapshot interrupted before its record, or a deletion after it.
	for name := range files {
		id, seq, ok := snapSeqOf(name)
		if c := s.mu.chunks[id]; ok && c != nil && !c.hasLayer(seq) {
			if err := s.fs.Remove(filepath.Join(dir, name)); err != nil {
				s.log.Warn("removing an unrecorded snapshot layer file", "file", name, "err", err)
			}
		}
	}
	return s, nil
}

// orphanData judges a data file without a sidecar. Create writes the data
// file before the sidecar, so an interrupted Create leaves a data file that
// holds no data: Create adopts it later. A data file with data but no
// sidecar (a lost sidecar, or an interrupted Delete) is quarantined.
func (s *Store) orphanData(id string) error {
	empty, err := s.holdsNoData(id)
	switch {
	case err != nil:
		return fmt.Errorf("sidecar %s is missing and the data file cannot be checked: %w", id+suffixMeta, err)
	case !empty:
		return fmt.Errorf("sidecar %s is missing but the data file holds data", id+suffixMeta)
	}
	s.log.Info("data file without sidecar holds no data (an interrupted create); it is re-created when assigned", "chunk", id)
	return nil
}

// holdsNoData reports whether the data file of id has no allocated data
// (SEEK_DATA finds none). A filesystem that does not report holes says it
// has data.
func (s *Store) holdsNoData(id string) (bool, error) {
	f, err := s.fs.OpenFile(s.dataPath(id), os.O_RDONLY, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil || size == 0 {
		return size == 0, err
	}
	_, err = f.SeekData(0)
	if errors.Is(err, vfs.ErrNoData) {
		return true, nil
	}
	return false, err
}

// quarantineLocked records id as quarantined; s.mu is held (or s is not
// shared yet).
func (s *Store) quarantineLocked(id string, reason error) {
	s.mu.quarantined[id] = reason
	s.log.Error("chunk quarantined: kept on disk, not served, not re-created", "chunk", id, "reason", reason)
}

func (s *Store) metaPath(id string) string   { return filepath.Join(s.dir, id+suffixMeta) }
func (s *Store) dataPath(id string) string   { return filepath.Join(s.dir, id+suffixData) }
func (s *Store) failedPath(id string) string { return filepath.Join(s.dir, id+suffixFailed) }

// newLog makes the LOG bitmap of a chunk of size bytes.
func (s *Store) newLog(size, regionSize int64) (*bitmap.Log, error) {
	return bitmap.NewLog(bitmap.LogConfig{Size: size, RegionSize: regionSize, Period: s.cfg.LogPeriod, Clock: s.cfg.Clock,
		FineRegion: LogFineRegion})
}

func (s *Store) load(id string) (*Chunk, error) {
	b, err := vfs.ReadFile(s.fs, s.metaPath(id))
	if err != nil {
		return nil, fmt.Errorf("reading the sidecar: %w", err)
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
	// The persisted rotation time has no monotonic reading: measure the
	// first period from now (only keeps bits longer).
	log.RestartPeriod()
	// The host of this chunk may have died while the chunkserver was
	// down: keep every bit until a live host unpins.
	log.Pin()

	f, err := s.fs.OpenFile(s.dataPath(id), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the data file: %w", err)
	}
	size, err := f.Size()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("data file: %w", err)
	}
	if size != h.Size {
		f.Close()
		return nil, fmt.Errorf("data file is %d bytes, the sidecar says %d", size, h.Size)
	}
	c := s.newChunk(h, f, log)
	if err := c.openSnapshots(); err != nil {
		f.Close()
		return nil, err
	}
	if h.Log == nil {
		if err := c.rewriteSidecar(); err != nil {
			f.Close()
			return nil, fmt.Errorf("upgrading the sidecar to version %d: %w", headerVersion, err)
		}
		s.log.Info("chunk sidecar upgraded; its LOG bitmap starts empty and pinned", "chunk", id, "from_version", h.Version)
	}
	return c, nil
}

func (s *Store) newChunk(h Header, f vfs.File, log *bitmap.Log) *Chunk {
	c := &Chunk{
		id: h.ID, size: h.Size, created: h.Created, f: f, lg: log, fs: s.fs, log: s.log,
		metaPath: s.metaPath(h.ID), failedPath: s.failedPath(h.ID), dir: s.dir, writeSidecar: s.cfg.WriteSidecar,
		space: &s.space, observeSync: s.cfg.ObserveSync, clock: s.cfg.Clock,
	}
	// The file may hold writes of an earlier process that never reached
	// the disk (a kill keeps the page cache): the first Sync syncs.
	c.written.Store(1)
	c.minEpoch.Store(h.MinEpoch)
	c.snapBlock, c.snaps = h.SnapBlock, h.Snapshots
	c.nsnaps.Store(int32(len(h.Snapshots)))
	c.baseID, c.baseSnap, c.cloneBlock, c.owned = h.Base, h.BaseSnapshot, h.CloneBlock, h.Owned
	return c
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Create makes a new zero-filled sparse chunk with an empty, unpinned LOG
// bitmap and minimum epoch 0. Creating a chunk that exists with the same
// size is a no-op; with another size it is ErrExists. A quarantined chunk
// is not re-created (ErrQuarantined). Create never truncates a data file
// that holds data: a data file left without a sidecar is adopted only if
// it holds none (an interrupted Create), otherwise the chunk is
// quarantined.
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
		if c.Size() != size || c.baseID != "" {
			return nil, fmt.Errorf("%w: %s has %d bytes (a clone: %t), asked for %d", ErrExists, id, c.Size(), c.baseID != "", size)
		}
		return c, nil
	}
	return s.createLocked(Header{ID: id, Size: size})
}

// createLocked creates the chunk h describes (its ID, Size and, for a
// clone, base fields), with s.mu held.
func (s *Store) createLocked(h Header) (*Chunk, error) {
	id, size := h.ID, h.Size
	if reason, ok := s.mu.quarantined[id]; ok {
		return nil, fmt.Errorf("%w: %s: %w; not re-created", ErrQuarantined, id, reason)
	}
	// Files Open did not load (they appeared since, or Open quarantined
	// nothing because the sidecar is there): never overwrite them.
	for _, p := range []string{s.metaPath(id), s.failedPath(id), filepath.Join(s.dir, id+suffixMetaSetAside)} {
		if _, err := s.fs.Stat(p); err == nil {
			reason := fmt.Errorf("%s exists but the chunk was not loaded", filepath.Base(p))
			s.quarantineLocked(id, reason)
			return nil, fmt.Errorf("%w: %s: %w; not re-created", ErrQuarantined, id, reason)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("store: create %s: %w", id, err)
		}
	}
	log, err := s.newLog(size, s.cfg.LogRegion)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	f, err := s.fs.OpenFile(s.dataPath(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		empty, cerr := s.holdsNoData(id)
		if cerr != nil {
			return nil, fmt.Errorf("store: create %s: checking the existing data file: %w", id, cerr)
		}
		if !empty {
			reason := errors.New("a data file with data exists without a sidecar")
			s.quarantineLocked(id, reason)
			return nil, fmt.Errorf("%w: %s: %w; not re-created", ErrQuarantined, id, reason)
		}
		f, err = s.fs.OpenFile(s.dataPath(id), os.O_RDWR, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	fail := func(err error) (*Chunk, error) {
		f.Close()
		// The data file holds no data yet: removing it loses nothing.
		if rerr := s.fs.Remove(s.dataPath(id)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn("removing the data file of a failed create", "chunk", id, "err", rerr)
		}
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	if err := f.Truncate(size); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	h.Created = s.cfg.Clock().UnixNano()
	c := s.newChunk(h, f, log)
	// The sidecar write fsyncs the directory, which makes the data file's
	// entry durable too.
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
	return WriteFileAtomicMode(fsys, path, data, 0o644)
}

// WriteFileAtomicMode is WriteFileAtomic with the mode of a new file.
// An error before the rename wraps ErrNotReplaced: path is as it was.
func WriteFileAtomicMode(fsys vfs.FS, path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotReplaced, err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return fmt.Errorf("%w: %w", ErrNotReplaced, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("%w: %w", ErrNotReplaced, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReplaced, err)
	}
	// rename(2) is atomic: if it fails, path is as it was.
	if err := fsys.Rename(tmp, path); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReplaced, err)
	}
	return fsys.SyncDir(filepath.Dir(path))
}

// ErrNotReplaced is wrapped by a WriteFileAtomic error that left the file
// as it was.
var ErrNotReplaced = errors.New("store: file not replaced")

// IsNoSpace reports whether err is the filesystem's lack of space (ENOSPC,
// or a quota: EDQUOT).
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Get returns a served chunk. A quarantined chunk gives an error wrapping
// ErrQuarantined that names the reason; an unknown one ErrNotFound.
func (s *Store) Get(id string) (*Chunk, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.mu.chunks[id]
	if !ok {
		if reason, q := s.mu.quarantined[id]; q {
			return nil, fmt.Errorf("%w: %s: %w", ErrQuarantined, id, reason)
		}
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return c, nil
}

// List returns the ids of the served chunks, sorted (failed ones included:
// they are still held, and refuse I/O).
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

// Allocated is the disk space the served chunks' data files take: their
// allocated blocks, not their sizes, since chunks are sparse.
func (s *Store) Allocated() (int64, error) {
	var n int64
	for _, id := range s.List() {
		fi, err := s.fs.Stat(s.dataPath(id))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return 0, err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			n += st.Blocks * 512
		} else {
			n += fi.Size()
		}
	}
	return n, nil
}

// FailedChunk is a chunk the store holds but does not serve.
type FailedChunk struct {
	ID string
	// Quarantined is set for a chunk Open (or Create) refused; unset for
	// a served chunk that failed since.
	Quarantined bool
	Reason      error
}

// Failed lists the quarantined chunks and the chunks that failed after a
// durability error, sorted by id.
func (s *Store) Failed() []FailedChunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []FailedChunk
	for id, reason := range s.mu.quarantined {
		out = append(out, FailedChunk{ID: id, Quarantined: true, Reason: reason})
	}
	for id, c := range s.mu.chunks {
		if c.Failed() {
			out = append(out, FailedChunk{ID: id, Reason: c.FailReason()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Delete closes a chunk (waiting for the I/O in progress) and removes its
// files. It also removes a quarantined chunk: only the metaserver asks for
// a deletion. Deleting a chunk that does not exist is not an error.
func (s *Store) Delete(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("store: invalid chunk id %q", id)
	}
	s.mu.Lock()
	c, ok := s.mu.chunks[id]
	if ok {
		if err := c.inUse(); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	delete(s.mu.chunks, id)
	delete(s.mu.quarantined, id)
	s.mu.Unlock()
	if ok {
		c.dropBase()
		if err := c.close(); err != nil {
			s.log.Warn("closing a deleted chunk", "chunk", id, "err", err)
		}
		// Wait for a sidecar write in progress; later ones see the chunk
		// closed and write nothing, so the sidecar cannot come back.
		c.sidecarMu.Lock()
		defer c.sidecarMu.Unlock()
	}
	// Sidecar first: a chunk without a sidecar is never served again. The
	// failure markers go last, so an interrupted Delete of a failed chunk
	// leaves it quarantined.
	names := []string{id + suffixMeta, id + suffixData, id + suffixIntent}
	ents, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("store: delete %s: %w", id, err)
	}
	for _, e := range ents {
		if lid, _, ok := snapSeqOf(e.Name()); ok && lid == id {
			names = append(names, e.Name())
		}
	}
	names = append(names, id+suffixMetaSetAside, id+suffixFailed)
	for _, name := range names {
		p := filepath.Join(s.dir, name)
		if err := s.fs.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: delete %s: %w", id, err)
		}
	}
	if err := s.fs.SyncDir(s.dir); err != nil {
		return fmt.Errorf("store: delete %s: %w", id, err)
	}
	return nil
}

// OutOfSpace reports whether a request was refused, or failed, for lack of
// space since the free space last measured above the nearly-full mark.
func (s *Store) OutOfSpace() bool { return s.space.refused.Load() }

// Usage reports the capacity and free bytes of the file system under the store.
func (s *Store) Usage() (capacity, free int64, err error) {
	capacity, free, err = s.fs.Usage(s.dir)
	if err != nil {
		return 0, 0, fmt.Errorf("store: %w", err)
	}
	s.space.update(capacity, free)
	return capacity, free, nil
}

// RotateLogs rotates the LOG bitmap of every chunk whose period has passed
// at now (Chunk.RotateLog). A failure fails that chunk; the errors are
// returned joined.
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

// Close closes every chunk, waiting for the I/O in progress. It does not
// sync: what a host has not flushed is as durable as a power loss leaves
// it, and the LOG records it.
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
// durability failure (a failed fsync of the data, of the intent bitmap or
// of a sidecar write) the chunk is failed: every later call returns
// ErrChunkFailed, because the durability of earlier writes or of its LOG
// bitmap is unknown, and a failure marker keeps it failed across restarts
// (package doc).
type Chunk struct {
	id       string
	size     int64
	created  int64
	f        vfs.File
	lg       *bitmap.Log
	fs       vfs.FS
	log      *slog.Logger
	dir      string
	minEpoch atomic.Int64 // written under sidecarMu, after the sidecar holds it
	failed   atomic.Bool
	// failReason is the durability error that failed the chunk.
	failReason atomic.Pointer[error]
	// written counts the data writes, trims and write-zeroes that reached
	// the file. A sync covers the count it read before its fdatasync
	// started; a Sync whose caller's changes are not covered by a finished
	// fdatasync runs one of its own (never returns early because another
	// sync is in progress).
	written atomic.Uint64
	// syncMu serializes fdatasyncs of the data file; it guards synced, the
	// value of written that the last successful fdatasync covers.
	syncMu sync.Mutex
	synced uint64

	// ioMu keeps the data file open while an operation uses it: every I/O
	// path holds it for reading, close holds it for writing, so a Delete
	// waits for the I/O in progress and later I/O sees ErrClosed, never a
	// closed (or reused) file descriptor.
	ioMu   sync.RWMutex
	closed atomic.Bool // set under ioMu held for writing

	metaPath, failedPath string
	writeSidecar         func(path string, data []byte) error
	space                *spaceGuard
	observeSync          func(took time.Duration, err error)
	// sidecarMu serializes sidecar writes (and the failure marker), so the
	// sidecar never holds an older minimum epoch than one already
	// reported. It guards snapBlock and snaps, the snapshot layers the
	// sidecar carries (every rewrite keeps them).
	sidecarMu sync.Mutex
	snapBlock int64
	snaps     []SnapshotLayer
	// cow is the copy-on-write lock (snapshot.go): a change that saves
	// blocks for a snapshot holds it alone, other changes and snapshot
	// reads share it. snaps changes only with cow held for writing and
	// sidecarMu held; snapFiles (the layers' files, as snaps) and nsnaps
	// with cow held for writing and ioMu for writing or cow.
	cow       sync.RWMutex
	snapFiles []vfs.File
	nsnaps    atomic.Int32
	clock     func() time.Time

	// A clone's base (clone.go): the chunk and snapshot it reads the
	// blocks it does not own from, fixed at creation; base is set when the
	// store links the clone to it. owned, the owned map of cloneBlock
	// blocks, changes with cow held for writing and sidecarMu held. deps
	// counts, per snapshot of this chunk, the clones that read it (cow).
	baseID, baseSnap string
	base             *Chunk
	cloneBlock       int64
	owned            []byte
	deps             map[string]int

	intentMu sync.Mutex // guards intent
	intent   vfs.File   // the intent bitmap file, opened on first use

	// order is the (epoch, generation) of the last ordered pin or unpin
	// applied (PinOrdered); its mutex also serializes those calls.
	order struct {
		sync.Mutex
		epoch int64  // guarded by order
		gen   uint64 // guarded by order
	}
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

// FailReason is the durability error that failed the chunk, nil if it has
// not failed.
func (c *Chunk) FailReason() error {
	if p := c.failReason.Load(); p != nil {
		return *p
	}
	return nil
}

func (c *Chunk) close() error {
	c.ioMu.Lock()
	defer c.ioMu.Unlock()
	if c.closed.Swap(true) {
		return nil
	}
	var errs []error
	c.intentMu.Lock()
	if c.intent != nil {
		errs = append(errs, c.intent.Close())
		c.intent = nil
	}
	c.intentMu.Unlock()
	errs = append(errs, c.f.Close())
	c.cow.Lock()
	errs = append(errs, c.closeSnapshots())
	c.cow.Unlock()
	return errors.Join(errs...)
}

// fail fails the chunk for good after the durability error cause and
// returns the error to give the caller (wrapping ErrChunkFailed and
// cause). The first failure is made durable (persistFailureLocked);
// sidecarHeld says whether the caller holds c.sidecarMu.
func (c *Chunk) fail(cause error, sidecarHeld bool) error {
	err := fmt.Errorf("%w: %w", ErrChunkFailed, cause)
	if !c.failed.CompareAndSwap(false, true) {
		return err
	}
	c.failReason.Store(&cause)
	if !sidecarHeld {
		c.sidecarMu.Lock()
		defer c.sidecarMu.Unlock()
	}
	if c.closed.Load() {
		return err // being deleted (or the store closed)
	}
	c.persistFailureLocked(cause)
	return err
}

// persistFailureLocked makes the failure durable; c.sidecarMu is held.
// First choice: the marker file <id>.failed (reason text, fsynced, the
// directory fsynced). If that cannot be written, the sidecar is renamed to
// <id>.meta.failed (a rename often succeeds where a write does not, e.g.
// on a full disk) and the directory fsynced. Either makes the next Open
// quarantine the chunk. If both fail, the failure is in memory only: the
// chunk refuses I/O until the process ends, and an error is logged that
// says so; after a restart the chunk would be served again, and only the
// host's record of the member's degradation (it saw the failed request)
// keeps it from being trusted.
func (c *Chunk) persistFailureLocked(cause error) {
	log := c.log.With("chunk", c.id, "cause", cause)
	merr := c.writeFailureMarker(cause)
	if merr == nil {
		log.Error("chunk failed after a durability error; failure marker written", "marker", c.failedPath)
		return
	}
	aside := c.metaPath[:len(c.metaPath)-len(suffixMeta)] + suffixMetaSetAside
	rerr := c.fs.Rename(c.metaPath, aside)
	if rerr == nil {
		rerr = c.fs.SyncDir(c.dir)
	}
	if rerr == nil {
		log.Error("chunk failed after a durability error; the failure marker could not be written, the sidecar was set aside instead",
			"marker_err", merr, "sidecar", aside)
		return
	}
	log.Error("chunk failed after a durability error, and the failure cannot be recorded on disk: "+
		"it refuses I/O until the chunkserver stops, but would be served again after a restart",
		"marker_err", merr, "set_aside_err", rerr)
}

func (c *Chunk) writeFailureMarker(cause error) error {
	f, err := c.fs.OpenFile(c.failedPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("%s %s\n", time.Now().UTC().Format(time.RFC3339), cause)
	if _, err := f.WriteAt([]byte(msg), 0); err != nil {
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
	return c.fs.SyncDir(c.dir)
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
	b, err := Header{ID: c.id, Size: c.size, MinEpoch: minEpoch, Created: c.created, Log: log,
		SnapBlock: c.snapBlock, Snapshots: c.snaps,
		Base: c.baseID, BaseSnapshot: c.baseSnap, CloneBlock: c.cloneBlock, Owned: c.owned}.MarshalBinary()
	if err != nil {
		return err
	}
	if err := c.writeSidecar(c.metaPath, b); err != nil {
		if errors.Is(err, ErrNotReplaced) && IsNoSpace(err) {
			// A full disk refused the new sidecar; the old one stands
			// whole. The chunk is sound: what needed the new state (a
			// write to a region not yet in the LOG) is refused instead.
			c.space.setLow()
			return fmt.Errorf("writing sidecar: %w: %w", bitmap.ErrNotPersisted, err)
		}
		return c.fail(fmt.Errorf("writing sidecar: %w", err), true)
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
	return c.rewriteSidecarLocked()
}

// rewriteSidecarLocked is rewriteSidecar with c.sidecarMu held.
func (c *Chunk) rewriteSidecarLocked() error {
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
			return c.fail(err, false)
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

// PinOrdered pins (pin true) or unpins the LOG bitmap for a host, in the
// host's order: a call whose (epoch, gen) is not above the last one
// applied is stale (say an unpin that timed out on the host and arrives
// after its next pin) and changes nothing; applied says which. gen 0 is
// unordered: always applied. The chunkserver's own pins (a connection lost
// without a disconnect) use Pin and are not ordered.
func (c *Chunk) PinOrdered(ctx context.Context, pin bool, epoch int64, gen uint64) (applied bool, err error) {
	c.order.Lock()
	defer c.order.Unlock()
	if gen != 0 {
		if epoch < c.order.epoch || epoch == c.order.epoch && gen <= c.order.gen {
			return false, nil
		}
	}
	if pin {
		err = c.Pin(ctx)
	} else {
		err = c.Unpin()
	}
	if err != nil {
		return false, err
	}
	if gen != 0 {
		c.order.epoch, c.order.gen = epoch, gen
	}
	return true, nil
}

// RotateLog rotates the LOG bitmap if its period has passed at now. A
// rotation may forget bits (history is replaced), and a LOG bit may be
// forgotten only once its write is durable: so if the chunk was written
// since its last sync, the data is fdatasynced first, and if that fails the
// chunk fails and nothing rotates. A clean chunk costs no sync. If the
// rotation forgot bits, the sidecar is rewritten (lazily: until then it
// over-reports).
func (c *Chunk) RotateLog(now time.Time) error {
	if c.closed.Load() || c.failed.Load() {
		return nil
	}
	if now.Sub(c.lg.LastRotation()) < c.lg.Period() {
		return nil
	}
	// The bits this rotation may forget were set at least one period
	// ago. A write marks its bit and then writes its data, both under
	// ioMu shared: taking ioMu exclusively once waits for every write in
	// flight, however long it was held up between the two, so the sync
	// below covers the data of every bit set so far (and costs nothing
	// when a finished one already did). Without it, a write stalled
	// across two rotations lost its bit before its data was durable.
	c.ioMu.Lock()
	//lint:ignore SA2001 a barrier: the lock is only waited for
	c.ioMu.Unlock()
	if err := c.Sync(); err != nil {
		if errors.Is(err, ErrClosed) {
			return nil
		}
		return fmt.Errorf("syncing before a LOG rotation: %w", err)
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

// setDirty records that a change reached the file: the next Sync must
// cover it.
func (c *Chunk) setDirty() { c.written.Add(1) }

// ReadAt reads len(p) bytes at off; holes read as zeroes.
func (c *Chunk) ReadAt(p []byte, off int64) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	if c.base != nil {
		c.cow.RLock()
		defer c.cow.RUnlock()
		return c.readLive(p, off)
	}
	n, err := c.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("store: read chunk %s: %w", c.id, err)
	}
	return nil
}

// WriteAt writes p at off (not durable until Sync), after its regions are
// durably marked in the LOG bitmap. A failed write (e.g. ENOSPC) returns
// an error wrapping the cause and does not fail the chunk: the region is in
// the LOG, so a host resyncs it.
func (c *Chunk) WriteAt(p []byte, off int64) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	if err := c.reserve(off, int64(len(p))); err != nil {
		return fmt.Errorf("store: write chunk %s: %w", c.id, err)
	}
	done, err := c.beforeChange(off, int64(len(p)))
	if err != nil {
		return err
	}
	defer done()
	if err := c.mark(off, int64(len(p))); err != nil {
		return err
	}
	_, err = c.f.WriteAt(p, off)
	c.setDirty()
	if err != nil {
		return c.writeError("write", err)
	}
	return nil
}

// reserve reserves [off, off+n) when the filesystem is nearly full, so that
// the write after it cannot run out of space half way. An error wrapping
// ENOSPC means nothing changed.
func (c *Chunk) reserve(off, n int64) error {
	if n == 0 || !c.space.wrote(n) {
		return nil
	}
	err := c.f.Allocate(off, n)
	if errors.Is(err, vfs.ErrUnsupported) {
		return nil // the write goes unguarded (writeError)
	}
	if IsNoSpace(err) {
		c.space.setLow()
	}
	return err
}

// writeError is the error of a write that reached the file and failed. A
// write that runs out of space may have changed part of its range (and
// os.File.WriteAt does not count the bytes of the call that failed): it is
// an I/O error to the host, which then distrusts the member for that range
// (a resync), never ENOSPC, which says nothing changed. Only a refused
// reservation (reserve) is ENOSPC.
func (c *Chunk) writeError(op string, err error) error {
	if IsNoSpace(err) {
		c.space.setLow()
		return fmt.Errorf("store: %s chunk %s: out of space with no reservation, part of the range may be written: %v", op, c.id, err)
	}
	return fmt.Errorf("store: %s chunk %s: %w", op, c.id, err)
}

// Sync makes every completed write durable (fdatasync). It costs nothing
// if nothing was written since the last sync. A failure fails the chunk
// for good.
func (c *Chunk) Sync() error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(0, 0); err != nil {
		return err
	}
	return c.syncData()
}

// syncData is Sync with ioMu held (for reading or writing).
func (c *Chunk) syncData() error {
	// Every change the caller saw complete is counted in want. An
	// fdatasync that was already running when they completed may not
	// cover them: wait for it, then run one that does unless a later one
	// already has.
	want := c.written.Load()
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if c.synced >= want {
		return nil
	}
	if c.failed.Load() {
		return ErrChunkFailed
	}
	covers := c.written.Load()
	start := time.Now()
	err := c.f.Sync()
	if c.observeSync != nil {
		c.observeSync(time.Since(start), err)
	}
	if err != nil {
		return c.fail(fmt.Errorf("fdatasync: %w", err), false)
	}
	c.synced = covers
	return nil
}

// Trim deallocates [off, off+length); it reads back as zeroes. Like a
// write, it is marked in the LOG bitmap first.
func (c *Chunk) Trim(off, length int64) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	done, err := c.beforeChange(off, length)
	if err != nil {
		return err
	}
	defer done()
	if err := c.mark(off, length); err != nil {
		return err
	}
	err = c.f.PunchHole(off, length)
	c.setDirty()
	if err != nil {
		return fmt.Errorf("store: trim chunk %s: %w", c.id, err)
	}
	return nil
}

// WriteZeroes zeroes [off, off+length). With noHole the range stays
// allocated; otherwise it is punched. Like a write, it is marked in the LOG
// bitmap first.
func (c *Chunk) WriteZeroes(off, length int64, noHole bool) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	done, err := c.beforeChange(off, length)
	if err != nil {
		return err
	}
	defer done()
	if err := c.mark(off, length); err != nil {
		return err
	}
	defer c.setDirty()
	if !noHole {
		if err := c.f.PunchHole(off, length); err != nil {
			return fmt.Errorf("store: write zeroes to chunk %s: %w", c.id, err)
		}
		return nil
	}
	if err := c.reserve(off, length); err != nil {
		return fmt.Errorf("store: write zeroes to chunk %s: %w", c.id, err)
	}
	err = c.f.ZeroRange(off, length)
	if errors.Is(err, vfs.ErrUnsupported) {
		// The file system cannot zero a range in place: write zeroes.
		buf := make([]byte, min(length, 1<<20))
		for done := int64(0); done < length; {
			n := min(int64(len(buf)), length-done)
			if _, err := c.f.WriteAt(buf[:n], off+done); err != nil {
				return fmt.Errorf("store: write zeroes to chunk %s: %w", c.id, err)
			}
			done += n
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: write zeroes to chunk %s: %w", c.id, err)
	}
	return nil
}

// Extent is a run of the chunk that is either allocated data or a hole.
type Extent struct {
	Length int64
	Hole   bool
}

// Extents describes [off, off+length) as data and hole runs, using
// SEEK_DATA/SEEK_HOLE. File systems that do not report holes give one data
// extent. A clone's blocks it does not own are as its base snapshot has
// them.
func (c *Chunk) Extents(off, length int64) ([]Extent, error) {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(off, length); err != nil {
		return nil, err
	}
	if c.base != nil {
		return c.cloneExtents(off, length)
	}
	return c.fileExtents(off, length)
}

// fileExtents is Extents of the data file, with ioMu held.
func (c *Chunk) fileExtents(off, length int64) ([]Extent, error) {
	end := off + length
	var out []Extent
	for pos := off; pos < end; {
		data, err := c.f.SeekData(pos)
		if errors.Is(err, vfs.ErrNoData) {
			data = end // no data after pos
		} else if err != nil {
			return nil, fmt.Errorf("store: extents of chunk %s: %w", c.id, err)
		}
		data = min(data, end)
		if data > pos {
			out = append(out, Extent{Length: data - pos, Hole: true})
			pos = data
			continue
		}
		hole, err := c.f.SeekHole(pos)
		if err != nil {
			return nil, fmt.Errorf("store: extents of chunk %s: %w", c.id, err)
		}
		hole = min(hole, end)
		out = append(out, Extent{Length: hole - pos})
		pos = hole
	}
	return out, nil
}

// spaceGuard says whether the store's filesystem is nearly full. While it
// is, every write and write-zeroes first reserves its range (File.Allocate),
// so that running out of space fails the request before it changes
// anything: the host then keeps the member, and the write fails for every
// member alike. Without the reservation a write that runs out half way
// changes part of its range, which the host must treat as an I/O error.
// Reserving costs a system call per write, so it is done only near the end
// of the space: below lowSpaceFloor or lowSpaceShare of the capacity free.
// The free space is measured at Open, at every Store.Usage (each
// heartbeat) and whenever lowSpaceRecheck bytes were written since the
// last measure, so the store's own writes cannot cross the floor unseen; a
// request that met ENOSPC makes it nearly full until a measure says
// otherwise. Another writer filling the filesystem fast can still beat it:
// then the first write to run out of space is an I/O error (writeError).
type spaceGuard struct {
	fs    vfs.FS
	dir   string
	low   atomic.Bool
	since atomic.Int64 // bytes written since the last measure
	// refused: a request met ENOSPC while low was set (OutOfSpace)
	refused atomic.Bool
}

const (
	lowSpaceFloor   = 256 << 20
	lowSpaceShare   = 50 // 1/50 = 2 %
	lowSpaceRecheck = 32 << 20
)

func (g *spaceGuard) isLow() bool { return g.low.Load() }

// setLow records a request that met ENOSPC.
func (g *spaceGuard) setLow() {
	g.low.Store(true)
	g.refused.Store(true)
}

// wrote counts n bytes about to be written, measures the free space again
// when enough were, and reports whether the filesystem is nearly full.
func (g *spaceGuard) wrote(n int64) bool {
	if g.since.Add(n) >= lowSpaceRecheck {
		g.check()
	}
	return g.low.Load()
}

// check measures the free space.
func (g *spaceGuard) check() {
	if g.fs == nil {
		return
	}
	g.since.Store(0)
	if capacity, free, err := g.fs.Usage(g.dir); err == nil {
		g.update(capacity, free)
	}
}

func (g *spaceGuard) update(capacity, free int64) {
	g.since.Store(0)
	low := free < max(lowSpaceFloor, capacity/lowSpaceShare)
	g.low.Store(low)
	if !low {
		g.refused.Store(false)
	}
}
