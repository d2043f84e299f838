// Package raid assembles member devices into redundant sets: mirrors of 2–3
// copies (Mirror) and Reed-Solomon k+m sets (EC). Both keep a write-intent
// bitmap, keep serving with members failed, and copy only dirty regions to a
// member that rejoins (Resync). A set is itself a Device, so linear volumes
// and tests can treat a set and a single member alike.
//
// Both kinds of set drive one state machine (health.go) for their members'
// lifecycle and the REMB duties that follow from it (DESIGN §2): a write
// some member did not get is acknowledged only after the degradation was
// recorded (survivors' LOGs pinned, members' states with the metaserver);
// LOGs are unpinned only once the set is whole, never overtaking a later
// pin. The invariant they keep with the write-intent bitmap: a region that
// may differ between members is in some durable record (the WIB in
// /dev/shm, a pinned LOG, the metaserver's member states) until every
// member holds it durably — a write's regions stay dirty until a flush of
// every member (or FUA), a member's failure makes every unflushed region
// need a resync, and resync copies are durable (FUA) before a region is
// cleaned or a member promoted.
//
// A partial-parity log would close the EC write hole completely: before a
// partial-stripe write, log old-parity XOR the data delta of the touched
// columns (stripe, column range, sequence number, CRC32C) FUA to a small
// reserved area of that stripe's parity member; on recovery, rebuild the
// parity of each logged stripe from the log and whichever data units are
// present; drop a record once every member acknowledged its write. It costs
// one small extra write per partial-stripe write on a member that is written
// anyway. It is not built: EC refuses reconstruction in suspect stripes
// instead (ErrUnrecoverable) until they are re-encoded.
package raid

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/chunkraid/chunkraid/bitmap"
)

// Device is what a set consumes from each member: a fixed-size byte-addressed
// block device. The chunk client (NBD) satisfies it over the network; memdev
// satisfies it in memory for tests.
//
// Contract:
//   - offsets and lengths are in bytes; off+len(p) must not exceed Size(),
//     otherwise ErrOutOfRange is returned and nothing is transferred;
//   - ReadAt fills all of p or returns an error; a short read is an error;
//   - WriteAt returns nil only once the device has accepted all of p; with
//     fua the bytes are durable when it returns;
//   - Flush makes every write acknowledged before the call durable; an error
//     means durability of earlier writes is unknown and the device has failed;
//   - a WriteAt error that wraps syscall.ENOSPC (or EDQUOT) means the
//     device is out of space and nothing in the range changed; a write
//     that changed part of its range fails with another error;
//   - Trim deallocates a range; later reads of it return zeroes;
//   - all methods are safe for concurrent use and honour ctx cancellation.
type Device interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Trim(ctx context.Context, off, length int64) error
	Size() int64
}

// ErrOutOfRange is returned for I/O beyond the end of a device.
var ErrOutOfRange = errors.New("raid: I/O beyond end of device")

// ErrNoMembers is returned when a set has no usable member left for an I/O.
var ErrNoMembers = errors.New("raid: no usable member")

// ErrNoSpace fails a write that every member it was sent to refused for
// lack of space: nothing changed, no member is failed, and the set serves
// reads and writes to space already allocated as before. A write that some
// member stored while another had no space is acknowledged degraded (the
// member without space is failed, to be resynced or replaced) like any
// other member error.
var ErrNoSpace = errors.New("raid: out of space")

// noSpace reports whether every error in errs is a device's lack of space
// (and there is one): the write changed nothing on any member.
func noSpace(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EDQUOT) {
			return false
		}
	}
	return len(errs) > 0
}

// ErrNotRecorded fails a write or flush that some member missed when the
// degradation could not be recorded (BeforeDegradedWrite failed): the
// operation is not acknowledged, but the set still has its members, and the
// same operation may succeed once a record does. It matches ErrNoMembers
// too: without the record no write may go on without the member.
var ErrNotRecorded = fmt.Errorf("%w: the degradation could not be recorded", ErrNoMembers)

// Set is a redundant set as its owner drives it: a Mirror or an EC. Both
// share one member state machine (see health.go).
type Set interface {
	Device
	// States is a snapshot of the members' states.
	States() []MemberState
	// MemberError is the error that failed member i, if any.
	MemberError(i int) error
	// Degraded reports whether any member is not InSync.
	Degraded() bool
	// Untrusted reports, for each member, whether a host that attaches
	// after this one died must not trust it as a copy: it missed an
	// acknowledged write or flush, or it is Failed while the set can
	// acknowledge writes without it. A Failed member that is the last copy
	// is trusted. This is what the owner records with the metaserver.
	Untrusted() []bool
	// Rejoin gives Failed member i a new connection; it becomes Resyncing.
	Rejoin(i int, d Device) error
	// Resync repairs every region that needs it, then makes Resyncing
	// members InSync.
	Resync(ctx context.Context, progress func(ResyncProgress)) (int64, error)
	// MarkAll marks the whole set as needing a resync.
	MarkAll()
	// Probe reads a block of every in-sync member and fails those that
	// do not answer, as an I/O error would.
	Probe(ctx context.Context)
	// Fail fails member i as an I/O error of its current connection
	// would, for err: the owner learned elsewhere that it may miss writes
	// (the metaserver marked it). A member not in sync is left alone.
	Fail(i int, err error)
	// WIB is the set's write-intent bitmap.
	WIB() *bitmap.WIB
	// Close stops the set's hooks and waits for them.
	Close() error
}

var (
	_ Set = (*Mirror)(nil)
	_ Set = (*EC)(nil)
)
