package store

import (
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

// Store is the set of chunks in one directory.
type Store struct {
	dir string
	log *slog.Logger

	mu struct {
		sync.Mutex
		chunks map[string]*Chunk // guarded by mu
	}
}

// Open opens (creating if needed) the store in dir and loads every chunk
// whose sidecar validates. A chunk whose sidecar or data file is damaged is
// logged and not served; it is never deleted automatically.
func Open(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &Store{dir: dir, log: log}
	s.mu.chunks = make(map[string]*Chunk)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".meta.tmp") {
			// An interrupted sidecar replacement: the old sidecar is intact.
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				log.Warn("removing stale sidecar", "file", name, "err", err)
			}
			continue
		}
		id, ok := strings.CutSuffix(name, ".meta")
		if !ok {
			continue
		}
		c, err := s.load(id)
		if err != nil {
			log.Error("chunk not served", "chunk", id, "err", err)
			continue
		}
		s.mu.chunks[id] = c
	}
	return s, nil
}

func (s *Store) metaPath(id string) string { return filepath.Join(s.dir, id+".meta") }
func (s *Store) dataPath(id string) string { return filepath.Join(s.dir, id+".chunk") }

func (s *Store) load(id string) (*Chunk, error) {
	b, err := os.ReadFile(s.metaPath(id))
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
	f, err := os.OpenFile(s.dataPath(id), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() != h.Size {
		f.Close()
		return nil, fmt.Errorf("store: data file is %d bytes, header says %d", st.Size(), h.Size)
	}
	return &Chunk{hdr: h, f: f}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Create makes a new zero-filled sparse chunk. Creating a chunk that exists
// with the same size is a no-op; with another size it is ErrExists.
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
	f, err := os.OpenFile(s.dataPath(id), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	fail := func(err error) (*Chunk, error) {
		f.Close()
		os.Remove(s.dataPath(id))
		return nil, fmt.Errorf("store: create %s: %w", id, err)
	}
	if err := f.Truncate(size); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	h := Header{ID: id, Size: size, Created: time.Now().UnixNano()}
	if err := s.writeHeader(h); err != nil {
		return fail(err)
	}
	c := &Chunk{hdr: h, f: f}
	s.mu.chunks[id] = c
	return c, nil
}

// writeHeader replaces the sidecar of h.ID atomically and durably.
func (s *Store) writeHeader(h Header) error {
	b, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	tmp := s.metaPath(h.ID) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
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
	if err := os.Rename(tmp, s.metaPath(h.ID)); err != nil {
		return err
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
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
	}
	// Sidecar first: a chunk without a sidecar is never served again.
	for _, p := range []string{s.metaPath(id), s.dataPath(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: delete %s: %w", id, err)
		}
	}
	return syncDir(s.dir)
}

// Usage reports the capacity and free bytes of the file system under the store.
func (s *Store) Usage() (capacity, free int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return 0, 0, fmt.Errorf("store: statfs %s: %w", s.dir, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
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

// Chunk is one open chunk. Its I/O methods are safe for concurrent use. After
// a failed fsync the chunk is failed: every later call returns
// ErrChunkFailed, because the durability of earlier writes is unknown.
type Chunk struct {
	hdr    Header
	f      *os.File
	failed atomic.Bool
	closed atomic.Bool
	seekMu sync.Mutex // SEEK_DATA/SEEK_HOLE move the shared file offset
}

// ID is the chunk's id.
func (c *Chunk) ID() string { return c.hdr.ID }

// Size is the chunk's size in bytes.
func (c *Chunk) Size() int64 { return c.hdr.Size }

func (c *Chunk) close() error {
	if c.closed.Swap(true) {
		return nil
	}
	return c.f.Close()
}

func (c *Chunk) check(off, n int64) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if c.failed.Load() {
		return ErrChunkFailed
	}
	if off < 0 || n < 0 || off+n > c.hdr.Size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, c.hdr.Size)
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

// WriteAt writes p at off (not durable until Sync).
func (c *Chunk) WriteAt(p []byte, off int64) error {
	if err := c.check(off, int64(len(p))); err != nil {
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
	if err := syscall.Fdatasync(int(c.f.Fd())); err != nil {
		c.failed.Store(true)
		return fmt.Errorf("%w: fdatasync: %w", ErrChunkFailed, err)
	}
	return nil
}

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Trim deallocates [off, off+length); it reads back as zeroes.
func (c *Chunk) Trim(off, length int64) error {
	if err := c.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	return syscall.Fallocate(int(c.f.Fd()), fallocPunchHole|fallocKeepSize, off, length)
}

// WriteZeroes zeroes [off, off+length). With noHole the range stays
// allocated; otherwise it is punched.
func (c *Chunk) WriteZeroes(off, length int64, noHole bool) error {
	if err := c.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if !noHole {
		return syscall.Fallocate(int(c.f.Fd()), fallocPunchHole|fallocKeepSize, off, length)
	}
	err := syscall.Fallocate(int(c.f.Fd()), fallocZeroRange|fallocKeepSize, off, length)
	if errors.Is(err, syscall.EOPNOTSUPP) {
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

const (
	seekData = 3
	seekHole = 4
)

// Extents describes [off, off+length) as data and hole runs, using
// SEEK_DATA/SEEK_HOLE. File systems that do not report holes give one data
// extent.
func (c *Chunk) Extents(off, length int64) ([]Extent, error) {
	if err := c.check(off, length); err != nil {
		return nil, err
	}
	c.seekMu.Lock()
	defer c.seekMu.Unlock()
	end := off + length
	var out []Extent
	for pos := off; pos < end; {
		data, err := c.f.Seek(pos, seekData)
		if errors.Is(err, syscall.ENXIO) {
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
		hole, err := c.f.Seek(pos, seekHole)
		if err != nil {
			return nil, err
		}
		hole = min(hole, end)
		out = append(out, Extent{Length: hole - pos})
		pos = hole
	}
	return out, nil
}
