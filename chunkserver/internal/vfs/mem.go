package vfs

import (
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"
)

// memPage is the allocation unit of a MemFS file: SEEK_DATA/SEEK_HOLE and
// hole punching work at this granularity.
const memPage = 4096

// MemCapacity is the capacity MemFS.Usage reports.
const MemCapacity = 1 << 40

// MemFS is an in-memory filesystem that can simulate a power loss:
// CrashClone returns a new MemFS holding only what was durable — each
// file's contents and size as of its last Sync, each directory's entries
// as of its last SyncDir. Directories themselves are durable once made.
// Its methods are safe for concurrent use. The zero value is not usable;
// call NewMem.
type MemFS struct {
	mu struct {
		sync.Mutex
		dirs map[string]*memDir // by clean path
	}
}

type memDir struct {
	entries map[string]*memNode // current
	synced  map[string]*memNode // as of the last SyncDir
}

type memNode struct {
	mu struct {
		sync.Mutex
		size  int64
		pages map[int64]*[memPage]byte // allocated pages, by index
		// dirty pages (written, punched or truncated) since the last Sync.
		dirty      map[int64]struct{}
		syncedSize int64
		synced     map[int64]*[memPage]byte
	}
}

// NewMem returns an empty MemFS with the root directory "/" and ".".
func NewMem() *MemFS {
	m := &MemFS{}
	m.mu.dirs = map[string]*memDir{"/": newMemDir(), ".": newMemDir()}
	return m
}

func newMemDir() *memDir {
	return &memDir{entries: map[string]*memNode{}, synced: map[string]*memNode{}}
}

func newMemNode() *memNode {
	n := &memNode{}
	n.mu.pages = map[int64]*[memPage]byte{}
	n.mu.dirty = map[int64]struct{}{}
	n.mu.synced = map[int64]*[memPage]byte{}
	return n
}

var _ FS = (*MemFS)(nil)

func pathErr(op, name string, err error) error { return &fs.PathError{Op: op, Path: name, Err: err} }

// split returns the directory of a clean name and its base.
func (m *MemFS) lookupLocked(op, name string) (*memDir, string, error) {
	name = filepath.Clean(name)
	d, ok := m.mu.dirs[filepath.Dir(name)]
	if !ok {
		return nil, "", pathErr(op, name, fs.ErrNotExist)
	}
	return d, filepath.Base(name), nil
}

// OpenFile implements FS.
func (m *MemFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.lookupLocked("open", name)
	if err != nil {
		return nil, err
	}
	if _, ok := m.mu.dirs[filepath.Clean(name)]; ok {
		return nil, pathErr("open", name, syscall.EISDIR)
	}
	n, ok := d.entries[base]
	switch {
	case ok && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, pathErr("open", name, fs.ErrExist)
	case !ok && flag&os.O_CREATE == 0:
		return nil, pathErr("open", name, fs.ErrNotExist)
	case !ok:
		n = newMemNode()
		d.entries[base] = n
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	f := &memFile{name: filepath.Clean(name), n: n, read: acc != os.O_WRONLY, write: acc != os.O_RDONLY}
	if flag&os.O_TRUNC != 0 {
		if !f.write {
			return nil, pathErr("open", name, syscall.EINVAL)
		}
		if err := f.Truncate(0); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Rename implements FS.
func (m *MemFS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	od, ob, err := m.lookupLocked("rename", oldname)
	if err != nil {
		return err
	}
	nd, nb, err := m.lookupLocked("rename", newname)
	if err != nil {
		return err
	}
	n, ok := od.entries[ob]
	if !ok {
		return pathErr("rename", oldname, fs.ErrNotExist)
	}
	delete(od.entries, ob)
	nd.entries[nb] = n
	return nil
}

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.lookupLocked("remove", name)
	if err != nil {
		return err
	}
	if _, ok := d.entries[base]; !ok {
		return pathErr("remove", name, fs.ErrNotExist)
	}
	delete(d.entries, base)
	return nil
}

// Stat implements FS.
func (m *MemFS) Stat(name string) (fs.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mu.dirs[filepath.Clean(name)]; ok {
		return memInfo{name: filepath.Base(name), dir: true}, nil
	}
	d, base, err := m.lookupLocked("stat", name)
	if err != nil {
		return nil, err
	}
	n, ok := d.entries[base]
	if !ok {
		return nil, pathErr("stat", name, fs.ErrNotExist)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return memInfo{name: base, size: n.mu.size}, nil
}

// ReadDir implements FS.
func (m *MemFS) ReadDir(name string) ([]fs.DirEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = filepath.Clean(name)
	d, ok := m.mu.dirs[name]
	if !ok {
		return nil, pathErr("readdir", name, fs.ErrNotExist)
	}
	var out []fs.DirEntry
	for base, n := range d.entries {
		n.mu.Lock()
		out = append(out, fs.FileInfoToDirEntry(memInfo{name: base, size: n.mu.size}))
		n.mu.Unlock()
	}
	for p := range m.mu.dirs {
		if p != name && filepath.Dir(p) == name {
			out = append(out, fs.FileInfoToDirEntry(memInfo{name: filepath.Base(p), dir: true}))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// MkdirAll implements FS.
func (m *MemFS) MkdirAll(name string, perm fs.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = filepath.Clean(name)
	for p := name; ; p = filepath.Dir(p) {
		if _, ok := m.mu.dirs[p]; ok {
			break
		}
		if d, base, err := m.lookupLocked("mkdir", p); err == nil {
			if _, ok := d.entries[base]; ok {
				return pathErr("mkdir", p, syscall.ENOTDIR)
			}
		}
		m.mu.dirs[p] = newMemDir()
		if p == filepath.Dir(p) {
			break
		}
	}
	return nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.mu.dirs[filepath.Clean(name)]
	if !ok {
		return pathErr("syncdir", name, fs.ErrNotExist)
	}
	d.synced = maps.Clone(d.entries)
	return nil
}

// Usage implements FS: MemCapacity, less the bytes allocated.
func (m *MemFS) Usage(dir string) (capacity, free int64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var used int64
	for _, d := range m.mu.dirs {
		for _, n := range d.entries {
			n.mu.Lock()
			used += int64(len(n.mu.pages)) * memPage
			n.mu.Unlock()
		}
	}
	return MemCapacity, MemCapacity - used, nil
}

// CrashClone returns the state a power loss would leave: a new MemFS with
// every directory's entries as of its last SyncDir and every file's
// contents and size as of its last Sync. m itself is unchanged and stays
// usable (files open on it keep working on it, not on the clone).
func (m *MemFS) CrashClone() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := &MemFS{}
	c.mu.dirs = make(map[string]*memDir, len(m.mu.dirs))
	clones := map[*memNode]*memNode{}
	clone := func(n *memNode) *memNode {
		if cn, ok := clones[n]; ok {
			return cn
		}
		cn := newMemNode()
		n.mu.Lock()
		cn.mu.size, cn.mu.syncedSize = n.mu.syncedSize, n.mu.syncedSize
		for i, p := range n.mu.synced {
			cp, sp := *p, *p
			cn.mu.pages[i], cn.mu.synced[i] = &cp, &sp
		}
		n.mu.Unlock()
		clones[n] = cn
		return cn
	}
	for p, d := range m.mu.dirs {
		cd := newMemDir()
		for base, n := range d.synced {
			cn := clone(n)
			cd.entries[base], cd.synced[base] = cn, cn
		}
		c.mu.dirs[p] = cd
	}
	return c
}

// Names lists the files of every directory (for test failure messages).
func (m *MemFS) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for p, d := range m.mu.dirs {
		for base := range d.entries {
			out = append(out, filepath.Join(p, base))
		}
	}
	slices.Sort(out)
	return out
}

type memInfo struct {
	name string
	size int64
	dir  bool
}

func (i memInfo) Name() string { return i.name }
func (i memInfo) Size() int64  { return i.size }
func (i memInfo) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return i.dir }
func (i memInfo) Sys() any           { return nil }

// memFile is an open MemFS file.
type memFile struct {
	name        string
	n           *memNode
	read, write bool
	mu          sync.Mutex // guards closed
	closed      bool
}

// Access a check needs.
const (
	accNone = iota
	accRead
	accWrite
)

func (f *memFile) check(op string, acc int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return pathErr(op, f.name, fs.ErrClosed)
	}
	if acc == accWrite && !f.write || acc == accRead && !f.read {
		return pathErr(op, f.name, syscall.EBADF)
	}
	return nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.check("read", accRead); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, pathErr("read", f.name, syscall.EINVAL)
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if off >= n.mu.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), n.mu.size-off)
	for done := int64(0); done < want; {
		pos := off + done
		i, o := pos/memPage, pos%memPage
		k := min(want-done, memPage-o)
		if pg, ok := n.mu.pages[i]; ok {
			copy(p[done:done+k], pg[o:o+k])
		} else {
			clear(p[done : done+k])
		}
		done += k
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.check("write", accWrite); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, pathErr("write", f.name, syscall.EINVAL)
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	for done := int64(0); done < int64(len(p)); {
		pos := off + done
		i, o := pos/memPage, pos%memPage
		k := min(int64(len(p))-done, memPage-o)
		pg, ok := n.mu.pages[i]
		if !ok {
			pg = new([memPage]byte)
			n.mu.pages[i] = pg
		}
		copy(pg[o:o+k], p[done:done+k])
		n.mu.dirty[i] = struct{}{}
		done += k
	}
	n.mu.size = max(n.mu.size, off+int64(len(p)))
	return len(p), nil
}

func (f *memFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return pathErr("close", f.name, fs.ErrClosed)
	}
	f.closed = true
	return nil
}

// Sync makes the contents and size durable.
func (f *memFile) Sync() error {
	if err := f.check("sync", accNone); err != nil {
		return err
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := range n.mu.dirty {
		if pg, ok := n.mu.pages[i]; ok {
			cp := *pg
			n.mu.synced[i] = &cp
		} else {
			delete(n.mu.synced, i)
		}
	}
	clear(n.mu.dirty)
	n.mu.syncedSize = n.mu.size
	return nil
}

func (f *memFile) Truncate(size int64) error {
	if err := f.check("truncate", accWrite); err != nil {
		return err
	}
	if size < 0 {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if size < n.mu.size {
		n.zeroLocked(size, n.mu.size-size, true)
		for i := range n.mu.pages {
			if i*memPage >= size {
				delete(n.mu.pages, i)
				n.mu.dirty[i] = struct{}{}
			}
		}
	}
	n.mu.size = size
	return nil
}

func (f *memFile) Size() (int64, error) {
	if err := f.check("stat", accNone); err != nil {
		return 0, err
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	return f.n.mu.size, nil
}

// zeroLocked zeroes [off, off+length); whole pages are deallocated if
// punch is set, else kept allocated.
func (n *memNode) zeroLocked(off, length int64, punch bool) {
	for done := int64(0); done < length; {
		pos := off + done
		i, o := pos/memPage, pos%memPage
		k := min(length-done, memPage-o)
		pg, ok := n.mu.pages[i]
		switch {
		case punch && k == memPage:
			if ok {
				delete(n.mu.pages, i)
				n.mu.dirty[i] = struct{}{}
			}
		case ok:
			clear(pg[o : o+k])
			n.mu.dirty[i] = struct{}{}
		case !punch:
			n.mu.pages[i] = new([memPage]byte)
			n.mu.dirty[i] = struct{}{}
		}
		done += k
	}
}

func (f *memFile) PunchHole(off, length int64) error { return f.zero("punch", off, length, true) }
func (f *memFile) ZeroRange(off, length int64) error { return f.zero("zero range", off, length, false) }

// Allocate checks its arguments only: MemFS never runs out of space.
func (f *memFile) Allocate(off, length int64) error {
	if err := f.check("allocate", accWrite); err != nil {
		return err
	}
	if off < 0 || length <= 0 {
		return pathErr("allocate", f.name, syscall.EINVAL)
	}
	return nil
}

func (f *memFile) zero(op string, off, length int64, punch bool) error {
	if err := f.check(op, accWrite); err != nil {
		return err
	}
	if off < 0 || length <= 0 {
		return pathErr(op, f.name, syscall.EINVAL)
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	end := min(off+length, n.mu.size) // the size never changes
	if end > off {
		n.zeroLocked(off, end-off, punch)
	}
	return nil
}

func (f *memFile) SeekData(off int64) (int64, error) { return f.seek(off, true) }
func (f *memFile) SeekHole(off int64) (int64, error) { return f.seek(off, false) }

func (f *memFile) seek(off int64, data bool) (int64, error) {
	op := "seek hole"
	if data {
		op = "seek data"
	}
	if err := f.check(op, accNone); err != nil {
		return 0, err
	}
	n := f.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if off < 0 || off >= n.mu.size {
		return 0, pathErr(op, f.name, ErrNoData)
	}
	last := (n.mu.size - 1) / memPage
	for i := off / memPage; i <= last; i++ {
		if _, ok := n.mu.pages[i]; ok == data {
			return max(off, i*memPage), nil
		}
	}
	if data {
		return 0, pathErr(op, f.name, ErrNoData)
	}
	return n.mu.size, nil
}

// String describes the file (for test messages).
func (f *memFile) String() string { return fmt.Sprintf("memfile %s", f.name) }
