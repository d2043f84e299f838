package raid

// What mirror and EC sets share: member states, resync errors and
// progress, the region locks and the probe.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
)

// MemberState is the health of one member of a set as the set sees it.
type MemberState int

const (
	// InSync members hold every acknowledged write and serve reads.
	InSync MemberState = iota
	// Failed members returned an error or timed out; the set is degraded and
	// stops using them until they rejoin.
	Failed
	// Resyncing members have rejoined: they receive every new write, are
	// never read, and become InSync when the resync has copied every region
	// that may differ.
	Resyncing
)

func (s MemberState) String() string {
	switch s {
	case InSync:
		return "in_sync"
	case Failed:
		return "degraded"
	case Resyncing:
		return "resyncing"
	}
	return fmt.Sprintf("MemberState(%d)", int(s))
}

// ErrResyncAborted is returned by Resync when a member failed during the
// copy or the set changed under it; the caller retries later.
var ErrResyncAborted = errors.New("raid: resync aborted")

// regionLocks is the number of striped locks that serialize a resync copy
// of a region against user writes to it.
const regionLocks = 1024

// memberErr decides whether an error is the member's fault. A cancelled or
// expired caller context is not.
func memberErr(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, ErrOutOfRange)
}

// probeSize is what Probe reads of a member: one block at offset 0.
const probeSize = 4096

func probeDevice(ctx context.Context, d Device) error {
	return d.ReadAt(ctx, make([]byte, min(probeSize, d.Size())), 0)
}

// resyncCleanEvery is how often a resync flushes every member so that the
// WIB cleans the regions it has copied.
const resyncCleanEvery = 2 * time.Second

// ResyncProgress is reported while Resync runs.
type ResyncProgress struct {
	DoneBytes, TotalBytes int64
	// Through is the set offset below which every region the resync's
	// first pass had to copy has been copied, durably (FUA), to every
	// resyncing member: a rebuild that starts over may begin there. It
	// does not move in later passes (regions dirtied under the first).
	Through int64
	// BackedOff counts the pauses made so far for foreground I/O that the
	// set served during a copy (pacer).
	BackedOff int
}

// wibNeedsResync reports whether some region of w needs a resync.
func wibNeedsResync(w *bitmap.WIB) bool {
	for from := int64(0); ; {
		r, ok := w.NextDirty(from)
		if !ok {
			return false
		}
		rs := w.RegionSize()
		for off := r.Off; off < r.Off+r.Len; off += rs {
			if w.NeedsResync(off / rs) {
				return true
			}
		}
		from = r.Off + r.Len
	}
}

// SetConfig is what configures a set of any kind; MirrorConfig and
// ECConfig embed it and say what differs.
type SetConfig struct {
	// Members are the set's chunks, all of the same Size.
	Members []Device
	// WIB is the set's write-intent bitmap. nil means an in-memory bitmap
	// with 1 MiB regions (the set then forgets on exit; fine for tests and
	// for bitmap mode none).
	WIB *bitmap.WIB
	// Degraded lists members that start Failed (unreachable at attach).
	Degraded []int
	// BeforeDegradedWrite, if set, is called after a member fails and before
	// the first write that the set acknowledges without it; hostd pins the
	// survivors' LOG bitmaps and records the members' states there (DESIGN
	// §2 rule 3). An error fails the writes and flushes waiting for it; the
	// next one asks again.
	BeforeDegradedWrite func(ctx context.Context) error
	// AfterWhole, if set, is called once the set is whole again (every
	// member in sync, nothing left to resync) after a degradation, or after
	// a start with Pinned; hostd unpins every member's LOG bitmap there.
	// Calls of BeforeDegradedWrite and AfterWhole never overlap and run in
	// the order of the events that asked for them. An error is logged; the
	// LOGs then stay pinned, which only over-reports.
	AfterWhole func(ctx context.Context) error
	// Pinned says the members' LOG bitmaps start pinned (after an unclean
	// stop the chunkservers pin them; a degraded attach pins the
	// survivors): AfterWhole runs once the set is whole.
	Pinned bool
	// HookTimeout bounds one call of BeforeDegradedWrite or AfterWhole; 0
	// means 5 s. hostd passes t_io: a degraded write must not wait longer.
	HookTimeout time.Duration
	// ResyncRate limits resync copying in bytes per second; 0 = unlimited.
	ResyncRate int64
	// Logger receives member failures. nil discards.
	Logger *slog.Logger
	// OnStateChange, if set, is told every change of a member's state
	// (Failed with its error, Resyncing, InSync), in the order the set made
	// them, by the call that made it (a read, write, flush, probe, Rejoin or
	// Resync) before that call returns and once it holds no lock of the
	// set: the callback may call the set. Calls made by concurrent
	// operations may run concurrently.
	OnStateChange func(member int, st MemberState, err error)
}

// Pending is a member request sent and not yet answered.
type Pending interface {
	// Wait waits for the reply and returns the request's result. It is
	// called once.
	Wait(ctx context.Context) error
}

// Starter is optionally implemented by a Device that can send a write
// without waiting for its reply (the NBD client does): a set sends a write
// to each member from one goroutine, then waits for them all, with no
// goroutine per member. StartWrite has the contract of WriteAt split in
// two: p is sent when it returns, and the Pending's Wait returns what
// WriteAt would. It returns nil, having sent nothing, for a write it cannot
// start so; the set then calls WriteAt.
type Starter interface {
	StartWrite(p []byte, off int64, fua bool) Pending
}

// fanOutWrites writes, for every index i in set, the bytes write(i) names
// to its device, in parallel, into errs[i]. Devices that are Starters get
// their write from the calling goroutine; the others each from a goroutine
// of their own.
func fanOutWrites(ctx context.Context, set uint64, errs []error, fua bool, write func(i int) (d Device, p []byte, off int64)) {
	var pend [64]Pending
	rest := uint64(0)
	for j := set; j != 0; j &= j - 1 {
		i := bits.TrailingZeros64(j)
		d, p, off := write(i)
		if s, ok := d.(Starter); ok {
			if pd := s.StartWrite(p, off, fua); pd != nil {
				pend[i] = pd
				continue
			}
		}
		rest |= 1 << i
	}
	fanOut(rest, errs, func(i int) error {
		d, p, off := write(i)
		return d.WriteAt(ctx, p, off, fua)
	})
	for j := set &^ rest; j != 0; j &= j - 1 {
		i := bits.TrailingZeros64(j)
		errs[i] = pend[i].Wait(ctx)
	}
}

// fanOut runs op(i) for every index i in set, in parallel, into errs[i].
func fanOut(set uint64, errs []error, op func(i int) error) {
	if set == 0 {
		return
	}
	var wg sync.WaitGroup
	for {
		i := bits.TrailingZeros64(set)
		set &^= 1 << i
		if set == 0 {
			errs[i] = op(i) // the last one runs here
			break
		}
		wg.Go(func() { errs[i] = op(i) })
	}
	wg.Wait()
}
