// Package vfs is the filesystem seam under the chunk store: the few
// operations the store performs on files and directories, behind an
// interface with three implementations — OS (the real filesystem, used in
// production), MemFS (in memory, crashable: CrashClone yields what a power
// loss would leave) and ErrorFS (a wrapper that injects errors such as EIO
// on the Nth sync or ENOSPC on writes). Its model is pebble's vfs.
//
// Durability contract, which MemFS enforces and the store relies on:
//
//   - File.Sync (fdatasync) makes the file's contents and size durable; it
//     does not make the file's directory entry durable.
//   - FS.SyncDir makes the entries of a directory (creates, renames,
//     removes) durable.
//
// Hole punching, zeroing a range in place and SEEK_DATA/SEEK_HOLE are File
// methods: OS maps them to fallocate and lseek; MemFS tracks allocation in
// 4 KiB pages.
package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// ErrNoData is returned (wrapped) by File.SeekData and File.SeekHole when
// no data, or nothing at all, lies at or after the offset (ENXIO).
var ErrNoData = syscall.ENXIO

// ErrUnsupported is returned (wrapped) by File.ZeroRange when the
// filesystem cannot zero a range in place (EOPNOTSUPP); the caller then
// writes zeroes.
var ErrUnsupported = syscall.EOPNOTSUPP

// FS is a filesystem. Names are paths as for package os.
type FS interface {
	// OpenFile opens a file with the os flags O_RDONLY, O_WRONLY, O_RDWR,
	// O_CREATE, O_EXCL and O_TRUNC.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Rename renames a file, replacing newname if it exists.
	Rename(oldname, newname string) error
	// Remove removes a file.
	Remove(name string) error
	// Stat describes a file or directory.
	Stat(name string) (fs.FileInfo, error)
	// ReadDir lists a directory, sorted by name.
	ReadDir(name string) ([]fs.DirEntry, error)
	// MkdirAll creates a directory and its parents.
	MkdirAll(name string, perm fs.FileMode) error
	// SyncDir makes the directory's entries durable (fsync of the
	// directory).
	SyncDir(name string) error
	// Usage reports the capacity and free bytes of the filesystem that
	// holds dir.
	Usage(dir string) (capacity, free int64, err error)
}

// File is an open file.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Sync makes the file's contents and size durable (fdatasync).
	Sync() error
	// Truncate changes the file's size.
	Truncate(size int64) error
	// Size is the file's size.
	Size() (int64, error)
	// PunchHole deallocates [off, off+length) without changing the size;
	// the range reads back as zeroes.
	PunchHole(off, length int64) error
	// ZeroRange zeroes [off, off+length) keeping it allocated, without
	// changing the size; ErrUnsupported if the filesystem cannot.
	ZeroRange(off, length int64) error
	// Allocate reserves space for [off, off+length) without changing the
	// size or the contents: a write there cannot fail for lack of space
	// afterwards. On ENOSPC the contents are unchanged too (fallocate(2)
	// may leave some of the range allocated, reading as zeroes as before).
	Allocate(off, length int64) error
	// SeekData returns the first offset ≥ off that holds data, or
	// ErrNoData.
	SeekData(off int64) (int64, error)
	// SeekHole returns the first offset ≥ off in a hole (the size counts
	// as one), or ErrNoData if off is at or beyond the size.
	SeekHole(off int64) (int64, error)
}

// ReadFile reads a whole file.
func ReadFile(fsys FS, name string) ([]byte, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if m, err := f.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && int64(m) == n) {
		return nil, err
	}
	return b, nil
}

// OS is the real filesystem of the operating system. The zero value is
// ready to use.
type OS struct{}

var _ FS = OS{}

// OpenFile implements FS.
func (OS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Rename implements FS.
func (OS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

// Remove implements FS.
func (OS) Remove(name string) error { return os.Remove(name) }

// Stat implements FS.
func (OS) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }

// ReadDir implements FS.
func (OS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }

// MkdirAll implements FS.
func (OS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }

// SyncDir implements FS.
func (OS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// Usage implements FS with statfs(2).
func (OS) Usage(dir string) (capacity, free int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// osFile is an *os.File; a value type, so that wrapping it in the File
// interface does not allocate beyond the *os.File itself.
type osFile struct{ f *os.File }

const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
	seekData        = 3
	seekHole        = 4
)

func (f osFile) ReadAt(p []byte, off int64) (int, error)  { return f.f.ReadAt(p, off) }
func (f osFile) WriteAt(p []byte, off int64) (int, error) { return f.f.WriteAt(p, off) }
func (f osFile) Close() error                             { return f.f.Close() }
func (f osFile) Truncate(size int64) error                { return f.f.Truncate(size) }

func (f osFile) Sync() error {
	if err := syscall.Fdatasync(int(f.f.Fd())); err != nil {
		return &fs.PathError{Op: "fdatasync", Path: f.f.Name(), Err: err}
	}
	return nil
}

func (f osFile) Size() (int64, error) {
	st, err := f.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (f osFile) PunchHole(off, length int64) error {
	if err := syscall.Fallocate(int(f.f.Fd()), fallocPunchHole|fallocKeepSize, off, length); err != nil {
		return &fs.PathError{Op: "fallocate punch", Path: f.f.Name(), Err: err}
	}
	return nil
}

func (f osFile) Allocate(off, length int64) error {
	if err := syscall.Fallocate(int(f.f.Fd()), fallocKeepSize, off, length); err != nil {
		return &fs.PathError{Op: "fallocate", Path: f.f.Name(), Err: err}
	}
	return nil
}

func (f osFile) ZeroRange(off, length int64) error {
	if err := syscall.Fallocate(int(f.f.Fd()), fallocZeroRange|fallocKeepSize, off, length); err != nil {
		return &fs.PathError{Op: "fallocate zero", Path: f.f.Name(), Err: err}
	}
	return nil
}

// SeekData and SeekHole use lseek(2) directly: it returns the position it
// found, so the shared file offset (which ReadAt and WriteAt do not use)
// needs no lock.
func (f osFile) SeekData(off int64) (int64, error) { return f.seek(off, seekData) }
func (f osFile) SeekHole(off int64) (int64, error) { return f.seek(off, seekHole) }

func (f osFile) seek(off int64, whence int) (int64, error) {
	pos, err := syscall.Seek(int(f.f.Fd()), off, whence)
	if err != nil {
		return 0, &fs.PathError{Op: fmt.Sprintf("lseek(%d)", whence), Path: f.f.Name(), Err: err}
	}
	return pos, nil
}
