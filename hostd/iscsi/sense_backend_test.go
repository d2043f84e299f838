package iscsi

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestBackendSense(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("set 0: %w", err) }
	for _, tc := range []struct {
		name  string
		err   error
		write bool
		key   uint8
		asc   uint16
	}{
		{"not ready, read", wrap(ErrNotReady), false, senseNotReady, 0x0403},
		{"not ready, write", wrap(ErrNotReady), true, senseNotReady, 0x0403},
		{"becoming ready, write", wrap(fmt.Errorf("%w: metaserver: timeout", ErrBecomingReady)), true, senseNotReady, 0x0401},
		{"out of range", wrap(ErrLBAOutOfRange), false, senseIllegalRequest, 0x2100},
		{"no space, write", wrap(ErrNoSpace), true, senseDataProtect, 0x2707},
		{"deadline", wrap(context.DeadlineExceeded), true, senseAbortedCommand, 0x2e02},
		{"cancelled", wrap(context.Canceled), false, senseAbortedCommand, 0x0000},
		{"other read", errors.New("EIO"), false, senseMediumError, 0x1100},
		{"other write", errors.New("EIO"), true, senseMediumError, 0x0c00},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := backendSense(tc.err, tc.write)
			if s.key != tc.key || s.asc != tc.asc {
				t.Fatalf("sense key %#x asc %#04x, want key %#x asc %#04x", s.key, s.asc, tc.key, tc.asc)
			}
		})
	}
}

// failingBackend fails every call with err.
type failingBackend struct{ err error }

func (b failingBackend) Size() int64                                        { return 1 << 20 }
func (b failingBackend) ReadAt(context.Context, []byte, int64) error        { return b.err }
func (b failingBackend) WriteAt(context.Context, []byte, int64, bool) error { return b.err }
func (b failingBackend) Flush(context.Context) error                        { return b.err }

func TestBackendStatusOfRead(t *testing.T) {
	lu := newLogicalUnit(failingBackend{fmt.Errorf("set 0: %w", ErrNotReady)}, 512, 1<<20, 1<<20, "vol", "iqn.test")
	r := execRead(t.Context(), lu, &scsiCmd{lba: 8, blocks: 1}, nil, make([]byte, 512))
	if r.status != statusCheckCondition || r.sense.key != senseNotReady || r.sense.asc != 0x0403 {
		t.Fatalf("status %#x sense %v, want CHECK CONDITION, NOT READY 04h/03h", r.status, r.sense)
	}
}

// TestBackendBusyIsTaskSetFull: a back end that will not take a command now
// (a volume over its I/O limits) gets it answered TASK SET FULL, without
// sense data, so that the initiator retries it.
func TestBackendBusyIsTaskSetFull(t *testing.T) {
	lu := newLogicalUnit(failingBackend{fmt.Errorf("%w: over the volume's limits", ErrBusy)}, 512, 1<<20, 1<<20, "vol", "iqn.test")
	r := execRead(t.Context(), lu, &scsiCmd{lba: 8, blocks: 1}, nil, make([]byte, 512))
	if r.status != statusTaskSetFull || r.sense != nil {
		t.Fatalf("status %#x sense %v, want TASK SET FULL without sense", r.status, r.sense)
	}
}
