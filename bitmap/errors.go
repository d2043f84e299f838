package bitmap

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers branch on them with errors.Is; the typed errors
// below wrap them and carry the details.
var (
	// ErrCorrupt reports bytes that are not a valid WIB file or LOG state:
	// bad magic, bad checksum, wrong length, non-zero reserved fields or
	// padding bits. The record is unusable: the caller falls back to a full
	// resync.
	ErrCorrupt = errors.New("bitmap: corrupt")
	// ErrVersion reports a format version this package does not read.
	ErrVersion = errors.New("bitmap: unsupported format version")
	// ErrMismatch reports a valid record that belongs to another set, epoch
	// or geometry than the caller asked for.
	ErrMismatch = errors.New("bitmap: identity or geometry mismatch")
	// ErrLocked reports a WIB file that another open WIB (in this or another
	// process) holds.
	ErrLocked = errors.New("bitmap: WIB file is in use")
	// ErrConfig reports an invalid WIBConfig or LogConfig.
	ErrConfig = errors.New("bitmap: invalid configuration")
	// ErrLogFailed reports that persisting a LOG bitmap failed. The failure
	// is permanent for that Log (a durability failure is fatal to the
	// chunk): every later Sync returns it.
	ErrLogFailed = errors.New("bitmap: persisting the LOG bitmap failed")
	// ErrNotPersisted, wrapped by a persist function's error, says that
	// nothing reached the disk and the state persisted last stands whole
	// (say a full disk refused the new state before it replaced the old).
	// Log.Sync returns that error without failing the Log; a later Sync
	// tries again.
	ErrNotPersisted = errors.New("bitmap: LOG state not persisted; the previous one stands")
)

// HeaderError describes why a WIB file or a LOG state was refused. It
// unwraps to ErrCorrupt, ErrVersion or ErrMismatch.
type HeaderError struct {
	Path  string // the WIB file, "" for a LOG state or anonymous memory
	Field string // what failed: "magic", "crc", "size", "volume", …
	Want  string // expected value, when there is one
	Got   string // value found
	Err   error  // ErrCorrupt, ErrVersion or ErrMismatch
}

func (e *HeaderError) Error() string {
	msg := e.Err.Error()
	if e.Path != "" {
		msg += ": " + e.Path
	}
	switch {
	case e.Want != "":
		return fmt.Sprintf("%s: %s is %s, want %s", msg, e.Field, e.Got, e.Want)
	case e.Got != "":
		return fmt.Sprintf("%s: %s: %s", msg, e.Field, e.Got)
	}
	return msg + ": " + e.Field
}

func (e *HeaderError) Unwrap() error { return e.Err }

func configErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
}
