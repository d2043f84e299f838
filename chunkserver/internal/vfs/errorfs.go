package vfs

import (
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
)

// Op is a kind of filesystem operation, as ErrorFS reports it to an
// Injector.
type Op int

// The operations ErrorFS can fail.
const (
	OpOpen Op = iota
	OpRead
	OpWrite
	OpSync // File.Sync
	OpTruncate
	OpPunch     // File.PunchHole
	OpZeroRange // File.ZeroRange
	OpSeek
	OpClose
	OpRename
	OpRemove
	OpStat
	OpReadDir
	OpMkdir
	OpSyncDir
	OpAllocate // File.Allocate
)

var opNames = [...]string{"open", "read", "write", "sync", "truncate", "punch", "zero range", "seek", "close",
	"rename", "remove", "stat", "readdir", "mkdir", "syncdir", "allocate"}

func (o Op) String() string {
	if o >= 0 && int(o) < len(opNames) {
		return opNames[o]
	}
	return "op?"
}

// An Injector decides whether an operation fails: MaybeError returns the
// error to return instead of performing op on path, or nil.
type Injector interface {
	MaybeError(op Op, path string) error
}

// InjectorFunc is an Injector.
type InjectorFunc func(op Op, path string) error

// MaybeError implements Injector.
func (f InjectorFunc) MaybeError(op Op, path string) error { return f(op, path) }

// OnOp fails every op on a path ending in suffix with err.
func OnOp(op Op, suffix string, err error) Injector {
	return InjectorFunc(func(o Op, path string) error {
		if o == op && strings.HasSuffix(path, suffix) {
			return &fs.PathError{Op: o.String(), Path: path, Err: err}
		}
		return nil
	})
}

// OnNth fails the nth (1-based) op on a path ending in suffix with err;
// the ones before and after succeed.
func OnNth(op Op, suffix string, n int, err error) Injector {
	var mu sync.Mutex
	seen := 0
	return InjectorFunc(func(o Op, path string) error {
		if o != op || !strings.HasSuffix(path, suffix) {
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if seen++; seen == n {
			return &fs.PathError{Op: o.String(), Path: path, Err: err}
		}
		return nil
	})
}

// ErrorFS wraps an FS and fails the operations its Injector picks, before
// they reach the wrapped FS. The Injector can be replaced at any time.
type ErrorFS struct {
	fs  FS
	inj atomic.Pointer[Injector]
}

var _ FS = (*ErrorFS)(nil)

// NewErrorFS wraps fsys; inj may be nil (no errors).
func NewErrorFS(fsys FS, inj Injector) *ErrorFS {
	e := &ErrorFS{fs: fsys}
	e.SetInjector(inj)
	return e
}

// SetInjector replaces the Injector; nil injects nothing.
func (e *ErrorFS) SetInjector(inj Injector) { e.inj.Store(&inj) }

func (e *ErrorFS) maybe(op Op, path string) error {
	if p := e.inj.Load(); p != nil && *p != nil {
		return (*p).MaybeError(op, path)
	}
	return nil
}

// OpenFile implements FS.
func (e *ErrorFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	if err := e.maybe(OpOpen, name); err != nil {
		return nil, err
	}
	f, err := e.fs.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &errFile{e: e, f: f, name: name}, nil
}

// Rename implements FS.
func (e *ErrorFS) Rename(oldname, newname string) error {
	if err := e.maybe(OpRename, newname); err != nil {
		return err
	}
	return e.fs.Rename(oldname, newname)
}

// Remove implements FS.
func (e *ErrorFS) Remove(name string) error {
	if err := e.maybe(OpRemove, name); err != nil {
		return err
	}
	return e.fs.Remove(name)
}

// Stat implements FS.
func (e *ErrorFS) Stat(name string) (fs.FileInfo, error) {
	if err := e.maybe(OpStat, name); err != nil {
		return nil, err
	}
	return e.fs.Stat(name)
}

// ReadDir implements FS.
func (e *ErrorFS) ReadDir(name string) ([]fs.DirEntry, error) {
	if err := e.maybe(OpReadDir, name); err != nil {
		return nil, err
	}
	return e.fs.ReadDir(name)
}

// MkdirAll implements FS.
func (e *ErrorFS) MkdirAll(name string, perm fs.FileMode) error {
	if err := e.maybe(OpMkdir, name); err != nil {
		return err
	}
	return e.fs.MkdirAll(name, perm)
}

// SyncDir implements FS.
func (e *ErrorFS) SyncDir(name string) error {
	if err := e.maybe(OpSyncDir, name); err != nil {
		return err
	}
	return e.fs.SyncDir(name)
}

// Usage implements FS.
func (e *ErrorFS) Usage(dir string) (int64, int64, error) {
	if err := e.maybe(OpStat, dir); err != nil {
		return 0, 0, err
	}
	return e.fs.Usage(dir)
}

type errFile struct {
	e    *ErrorFS
	f    File
	name string
}

func (f *errFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.e.maybe(OpRead, f.name); err != nil {
		return 0, err
	}
	return f.f.ReadAt(p, off)
}

func (f *errFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.e.maybe(OpWrite, f.name); err != nil {
		return 0, err
	}
	return f.f.WriteAt(p, off)
}

func (f *errFile) Close() error {
	if err := f.e.maybe(OpClose, f.name); err != nil {
		f.f.Close()
		return err
	}
	return f.f.Close()
}

func (f *errFile) Sync() error {
	if err := f.e.maybe(OpSync, f.name); err != nil {
		return err
	}
	return f.f.Sync()
}

func (f *errFile) Truncate(size int64) error {
	if err := f.e.maybe(OpTruncate, f.name); err != nil {
		return err
	}
	return f.f.Truncate(size)
}

func (f *errFile) Size() (int64, error) {
	if err := f.e.maybe(OpStat, f.name); err != nil {
		return 0, err
	}
	return f.f.Size()
}

func (f *errFile) PunchHole(off, length int64) error {
	if err := f.e.maybe(OpPunch, f.name); err != nil {
		return err
	}
	return f.f.PunchHole(off, length)
}

func (f *errFile) ZeroRange(off, length int64) error {
	if err := f.e.maybe(OpZeroRange, f.name); err != nil {
		return err
	}
	return f.f.ZeroRange(off, length)
}

func (f *errFile) Allocate(off, length int64) error {
	if err := f.e.maybe(OpAllocate, f.name); err != nil {
		return err
	}
	return f.f.Allocate(off, length)
}

func (f *errFile) SeekData(off int64) (int64, error) {
	if err := f.e.maybe(OpSeek, f.name); err != nil {
		return 0, err
	}
	return f.f.SeekData(off)
}

func (f *errFile) SeekHole(off int64) (int64, error) {
	if err := f.e.maybe(OpSeek, f.name); err != nil {
		return 0, err
	}
	return f.f.SeekHole(off)
}
