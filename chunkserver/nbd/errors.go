package nbd

import (
	"errors"
	"fmt"
	"syscall"
)

// Conditions callers branch on. Errors returned by this package wrap them.
var (
	// ErrClosed means the client was closed or its connection broke; every
	// pending and later request fails with an error wrapping it.
	ErrClosed = errors.New("nbd: connection closed")
	// ErrTimeout means a request was not answered within
	// ClientConfig.Timeout; the connection is closed as a consequence.
	ErrTimeout = errors.New("nbd: request timed out")
	// ErrNotSupported means the server did not offer what the call needs
	// (a transmission flag, structured replies or a meta context).
	ErrNotSupported = errors.New("nbd: not supported by the server")
	// ErrOutOfRange is returned for I/O that does not lie within the
	// export; nothing is sent to the server.
	ErrOutOfRange = errors.New("nbd: I/O beyond end of export")
	// ErrProtocol means the peer broke the protocol.
	ErrProtocol = errors.New("nbd: protocol violation")
)

// Error is an error the server reported for one request. An Export may
// also return an *Error to choose the value the client sees.
type Error struct {
	Errno   uint32 // EIO, EINVAL, ...
	Message string // from a structured error chunk; may be empty
}

// Is makes errors.Is(err, syscall.ENOSPC) (and every other errno) true of
// the server's error with that value: NBD's error values are Linux's.
func (e *Error) Is(target error) bool {
	en, ok := target.(syscall.Errno)
	return ok && e.Errno != 0 && uint32(en) == e.Errno
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "nbd: server error " + ErrnoName(e.Errno)
	}
	return "nbd: server error " + ErrnoName(e.Errno) + ": " + e.Message
}

// OptionError is a handshake option the server refused, with the message
// it gave.
type OptionError struct {
	Option  uint32 // OptGo, OptSetMetaContext, ...
	Reply   uint32 // RepErrUnknown, RepErrPolicy, ...
	Export  string
	Message string
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd: server refused %s for export %q: %s", OptName(e.Option), e.Export, RepName(e.Reply))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// errnoFor maps an error from an Export to the value sent on the wire.
func errnoFor(err error) uint32 {
	var ne *Error
	if errors.As(err, &ne) && ne.Errno != 0 {
		return ne.Errno
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return EPERM
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EINVAL:
			return EINVAL
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EOPNOTSUPP:
			return ENOTSUP
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
	}
	return EIO
}
