package raid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/chunkraid/chunkraid/bitmap"
)

// members is what a set of any kind keeps of its members: their devices and
// the health machine, guarded by mu, and a view of both that the I/O paths
// read without a lock. The view is derived from the machine: publishLocked
// builds it again after every event the machine takes, and nothing else
// changes it.
//
// Member changes are reported to OnStateChange in the order the machine
// took them, by the exported method that caused them, once it has released
// every lock of the set (each exported method defers notify).
type members struct {
	kind string // "mirror" or "ec", for logs
	log  *slog.Logger
	wib  *bitmap.WIB
	// ownWIB says the set created wib itself (SetConfig.WIB nil) and closes it.
	ownWIB   bool
	onChange func(member int, st MemberState, err error)
	hooks    *setHooks // runs BeforeDegradedWrite and AfterWhole for the machine
	rate     int64     // resync bytes per second, 0 unlimited
	// intent, if set, runs before the data of a write that dirties a clean
	// region (MirrorConfig.IntentHook).
	intent func(context.Context) error
	fg     atomic.Int64 // foreground operations begun, for the resync's pace

	// slots is the set of members that count towards the members the set
	// needs in sync: all of them, but an EC set's successors.
	slots uint64

	view    atomic.Pointer[memberView]
	pending atomic.Bool // mu.pending may hold changes to report

	// join is shared by every write and trim for its whole run and taken
	// exclusively by rejoin, so a write that skipped a failed member has
	// ended (and marked its regions) before the member gets new writes.
	join sync.RWMutex
	// regions serializes a resync's repair of a region (exclusive) against
	// user writes to it (shared).
	regions  regionLockTable
	resyncMu sync.Mutex // one resync at a time

	mu struct {
		sync.Mutex
		h       *health        // member states and REMB duties
		devs    []Device       // member i's current connection
		pending []memberChange // changes not yet passed to onChange
	}
}

// memberView is an immutable snapshot of the members, derived from the
// health machine.
type memberView struct {
	devs      []Device
	conn      []uint64 // connection generation of each member
	failed    uint64   // members Failed
	resyncing uint64   // members Resyncing
}

// notInSync is the set of members that must not be read.
func (v *memberView) notInSync() uint64 { return v.failed | v.resyncing }

// state is member i's state.
func (v *memberView) state(i int) MemberState {
	switch {
	case v.failed&(1<<i) != 0:
		return Failed
	case v.resyncing&(1<<i) != 0:
		return Resyncing
	}
	return InSync
}

// all is the set of every member.
func (v *memberView) all() uint64 {
	if len(v.devs) == 64 {
		return ^uint64(0)
	}
	return 1<<len(v.devs) - 1
}

type memberChange struct {
	member int
	state  MemberState
	err    error
}

// init sets up the members of cfg, of which need must be in sync to
// acknowledge a write, over a WIB of size bytes (cfg.WIB, or one in memory).
func (ms *members) init(kind string, cfg SetConfig, need int, size int64) error {
	ms.kind = kind
	ms.log = cfg.Logger
	if ms.log == nil {
		ms.log = slog.New(slog.DiscardHandler)
	}
	ms.onChange, ms.rate = cfg.OnStateChange, cfg.ResyncRate
	h, err := newHealth(len(cfg.Members), need, cfg.Degraded, cfg.Pinned)
	if err != nil {
		return err
	}
	ms.wib = cfg.WIB
	if ms.wib == nil {
		w, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: size})
		if err != nil {
			return err
		}
		ms.wib, ms.ownWIB = w, true
	} else if ms.wib.Size() != size {
		return fmt.Errorf("raid: WIB covers %d bytes, the %s set has %d", ms.wib.Size(), kind, size)
	}
	ms.mu.h = h
	ms.mu.devs = slices.Clone(cfg.Members)
	ms.hooks = newSetHooks(&ms.mu.Mutex, h, cfg.BeforeDegradedWrite, cfg.AfterWhole, cfg.HookTimeout, ms.log)
	ms.publishLocked()
	ms.slots = ms.view.Load().all()
	return nil
}

// publishLocked derives the view from the machine and the devices. mu is
// held (or the set is not shared yet).
func (ms *members) publishLocked() {
	h := ms.mu.h
	v := &memberView{devs: slices.Clone(ms.mu.devs), conn: slices.Clone(h.conn)}
	for i, st := range h.state {
		switch st {
		case Failed:
			v.failed |= 1 << i
		case Resyncing:
			v.resyncing |= 1 << i
		}
	}
	ms.view.Store(v)
}

// changedLocked queues a member change for onChange and starts the hook the
// machine may want now. mu is held.
func (ms *members) changedLocked(i int, st MemberState, err error) {
	ms.publishLocked()
	ms.hooks.pumpLocked()
	if ms.onChange != nil {
		ms.mu.pending = append(ms.mu.pending, memberChange{member: i, state: st, err: err})
		ms.pending.Store(true)
	}
}

// notify passes the queued member changes to OnStateChange. Every exported
// method of a set defers it, so it runs once the method released its locks.
func (ms *members) notify() {
	if !ms.pending.Load() {
		return
	}
	ms.mu.Lock()
	p := ms.mu.pending
	ms.mu.pending = nil
	ms.pending.Store(false)
	ms.mu.Unlock()
	for _, c := range p {
		ms.onChange(c.member, c.state, c.err)
	}
}

// usable returns ErrNoMembers when fewer members are in sync than the set
// needs to acknowledge anything.
func (ms *members) usable(v *memberView) error {
	out := bits.OnesCount64(v.notInSync() & ms.slots)
	if n := bits.OnesCount64(ms.slots); n-out < ms.mu.h.need {
		return fmt.Errorf("%w: %d of %d members in sync, %d needed (%d failed, %d resyncing)",
			ErrNoMembers, n-out, n, ms.mu.h.need, bits.OnesCount64(v.failed), bits.OnesCount64(v.resyncing))
	}
	return nil
}

// fail marks member i Failed for err if v still names its current
// connection (an I/O of an older one is ignored). The change is reported by
// notify.
func (ms *members) fail(i int, v *memberView, err error) {
	ms.mu.Lock()
	if !ms.mu.h.fail(i, v.conn[i], err) {
		// Already failed, or rejoined since the I/O started.
		ms.mu.Unlock()
		return
	}
	// What the member acknowledged but did not flush may be gone with it.
	ms.wib.MarkDirty()
	ms.changedLocked(i, Failed, err)
	failed := bits.OnesCount64(ms.view.Load().failed)
	ms.mu.Unlock()
	ms.log.Error(ms.kind+" member failed; set degraded", "member", i, "failed_members", failed, "err", err)
}

// rejoin replaces Failed member i by d (a new connection to the same chunk)
// and makes it Resyncing. It first waits for the writes in flight, which
// may have skipped the member, so that their regions are marked by then.
func (ms *members) rejoin(i int, d Device) error {
	if d == nil {
		return fmt.Errorf("raid: %s rejoining member %d is nil", ms.kind, i)
	}
	ms.join.Lock()
	defer ms.join.Unlock()
	ms.mu.Lock()
	if _, err := ms.mu.h.rejoin(i); err != nil {
		ms.mu.Unlock()
		return err
	}
	ms.mu.devs[i] = d
	ms.changedLocked(i, Resyncing, nil)
	ms.mu.Unlock()
	ms.log.Info(ms.kind+" member rejoined; resyncing", "member", i)
	return nil
}

// sameMembers returns ErrResyncAborted if a member failed, or one rejoined,
// since the view start.
func sameMembers(start, cur *memberView) error {
	if cur.failed != 0 {
		return fmt.Errorf("%w: member %d failed", ErrResyncAborted, bits.TrailingZeros64(cur.failed))
	}
	for i := range cur.conn {
		if cur.conn[i] != start.conn[i] {
			return fmt.Errorf("%w: member %d rejoined during the resync", ErrResyncAborted, i)
		}
	}
	return nil
}

// promote ends a resync that started with the view start and left nothing
// needing one: the Resyncing members become InSync, unless a member failed
// or rejoined meanwhile (ErrResyncAborted).
func (ms *members) promote(start *memberView, done int64) error {
	ms.mu.Lock()
	if err := sameMembers(start, ms.view.Load()); err != nil {
		ms.mu.Unlock()
		return err
	}
	joined := ms.mu.h.resynced(start.conn, !wibNeedsResync(ms.wib))
	for _, i := range joined {
		ms.changedLocked(i, InSync, nil)
	}
	ms.hooks.pumpLocked()
	ms.mu.Unlock()
	for _, i := range joined {
		ms.log.Info(ms.kind+" member in sync", "member", i, "resynced", done)
	}
	return nil
}

// States returns a snapshot of the members' states.
func (ms *members) States() []MemberState {
	v := ms.view.Load()
	st := make([]MemberState, len(v.devs))
	for i := range st {
		st[i] = v.state(i)
	}
	return st
}

// MemberError returns the error that failed member i, if any.
func (ms *members) MemberError(i int) error {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if i < 0 || i >= len(ms.mu.h.errs) {
		return nil
	}
	return ms.mu.h.errs[i]
}

// Degraded reports whether any member is not InSync.
func (ms *members) Degraded() bool { return ms.view.Load().notInSync() != 0 }

// Untrusted implements Set.
func (ms *members) Untrusted() []bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.mu.h.untrustedAll()
}

// WIB is the set's write-intent bitmap.
func (ms *members) WIB() *bitmap.WIB { return ms.wib }

// MarkAll marks the whole set as needing resync: bitmap mode none, or a
// lost record (DESIGN §2 rule 3: the only acceptable fallback).
func (ms *members) MarkAll() { ms.wib.Mark(0, ms.wib.Size()) }

// Close stops a running hook and waits for it, then releases an in-memory
// WIB the set created itself. The set must not be used after.
func (ms *members) Close() error {
	ms.hooks.close()
	if ms.ownWIB {
		return ms.wib.Close()
	}
	return nil
}

// Fail fails member i for err, as an I/O error of its connection would. A
// member not in sync is left alone.
func (ms *members) Fail(i int, err error) {
	defer ms.notify()
	v := ms.view.Load()
	if i < 0 || i >= len(v.devs) || v.notInSync()&(1<<i) != 0 {
		return
	}
	ms.fail(i, v, err)
}

// Probe reads one block of every in-sync member, in parallel, and fails
// the members whose read fails, as an I/O error would: an idle set notices
// a member that went away without waiting for the next write.
func (ms *members) Probe(ctx context.Context) {
	defer ms.notify()
	v := ms.view.Load()
	var wg sync.WaitGroup
	for i, d := range v.devs {
		if v.notInSync()&(1<<i) != 0 {
			continue
		}
		wg.Go(func() {
			if err := probeDevice(ctx, d); memberErr(ctx, err) {
				ms.fail(i, v, fmt.Errorf("probe: %w", err))
			}
		})
	}
	wg.Wait()
}

// writeOp is the state one write or trim shares across its member requests.
type writeOp struct {
	fua bool
	// partial is set when some member that holds a part of the write did
	// not get it: it was Failed, or its write failed.
	partial atomic.Bool
}

// modify is the one write skeleton of both kinds: do sends a write or trim
// of the set's bytes [off, off+n) to the members, under the join lock and
// the shared locks of the regions it touches, inside WIB.Begin/End. A write
// that some member did not get (op.partial) leaves its regions needing a
// resync and is acknowledged only once its degradation is recorded; it
// counts as missed by the members Failed when it ended.
//
// Once sent, a write is finished on every member whatever the caller's
// context does (members bound their own request time; do uses ctx only to
// decide not to start): a write abandoned on the wire would leave members
// that differ without the set knowing. Even a FUA write leaves its regions
// dirty: an earlier write to the same region may still be volatile on some
// member. The next flush of every member cleans them.
func (ms *members) modify(ctx context.Context, off, n int64, fua bool, do func(op *writeOp) error) error {
	ms.join.RLock()
	unlock := ms.regions.rlockRange(ms.wib.RegionSize(), off, n)
	wasDirty := ms.intent != nil && ms.allDirty(off, n)
	tok := ms.wib.Begin(off, n)
	op := &writeOp{fua: fua}
	var err error
	allOK := true
	if ms.intent != nil && !wasDirty {
		if ierr := ms.intent(ctx); ierr != nil {
			err, allOK = fmt.Errorf("raid: persisting the write-intent bitmap: %w", ierr), false
		}
	}
	if err == nil {
		err = ctx.Err() // nothing sent
	}
	if err == nil {
		err = do(op)
		// A write every member refused for lack of space changed no member.
		allOK = (err == nil || errors.Is(err, ErrNoSpace)) && !op.partial.Load()
	}
	ms.wib.End(tok, allOK)
	// The members that got the write are the ones not Failed now, while
	// the join lock keeps a member that failed it from rejoining: after the
	// unlock, one may rejoin while the record runs, and must still count as
	// having missed the write.
	v := ms.view.Load()
	got := v.all() &^ v.failed
	unlock()
	ms.join.RUnlock()
	if err != nil {
		return err
	}
	if !allOK {
		return ms.hooks.awaitRecord(ctx, gotMask(got))
	}
	return nil
}

// allDirty reports whether every region [off, off+n) touches is dirty.
func (ms *members) allDirty(off, n int64) bool {
	rs := ms.wib.RegionSize()
	for r := off / rs; r <= (off+max(n, 1)-1)/rs; r++ {
		if !ms.wib.IsDirty(r*rs, 1) {
			return false
		}
	}
	return true
}

// gotMask says, for a bitmask of the members that got a write or flush,
// whether member i did.
func gotMask(got uint64) func(i int) bool {
	return func(i int) bool { return got&(1<<i) != 0 }
}

// flushMembers is the one flush of both kinds: it flushes every member that
// is not Failed, in parallel, and fails those whose flush fails (their
// durability is unknown). When every member of the set flushed, the regions
// whose writes all ended before it began are cleaned in the WIB, unless
// lazy (the owner cleans them with ClearClean).
//
// A flush acknowledged without some member is a promise made without it,
// as a degraded write is: it waits until the degradation is recorded, and
// the member counts as having missed it. So does one acknowledged with a
// resyncing member (say back from a power loss that took writes it had
// acknowledged): a flush makes durable only what a member holds, and it
// lacks what it missed, so a host that takes over must never trust it.
func (ms *members) flushMembers(ctx context.Context, lazy bool) error {
	t := ms.wib.FlushStart()
	v := ms.view.Load()
	if err := ms.usable(v); err != nil {
		return err
	}
	set := v.all() &^ v.failed
	errs := make([]error, len(v.devs))
	fanOut(set, errs, func(i int) error { return v.devs[i].Flush(ctx) })
	got, firstMember, first := ms.settle(ctx, v, set, errs)
	if first != nil {
		return first // the caller's context ended
	}
	holds := got &^ v.resyncing
	if bits.OnesCount64(holds) < ms.mu.h.need {
		return fmt.Errorf("%w: %d of %d members flushed, %d of them in sync, %d needed: %w",
			ErrNoMembers, bits.OnesCount64(got), bits.OnesCount64(set), bits.OnesCount64(holds), ms.mu.h.need, firstMember)
	}
	allOK := got == v.all()
	if allOK && !lazy {
		ms.wib.FlushDone(t)
	}
	if !allOK || v.resyncing != 0 {
		return ms.hooks.awaitRecord(ctx, gotMask(holds))
	}
	return nil
}

// settle looks at the errors errs[i] of requests to the members in set of
// v: got is the members that succeeded; the members whose request failed
// are failed, and memberErr is the first of their errors; callerErr is the
// first error that is not a member's fault (the caller's context ended, or
// the request was invalid).
func (ms *members) settle(ctx context.Context, v *memberView, set uint64, errs []error) (got uint64, memberErr1, callerErr error) {
	for j := set; j != 0; j &= j - 1 {
		i := bits.TrailingZeros64(j)
		switch err := errs[i]; {
		case err == nil:
			got |= 1 << i
		case memberErr(ctx, err):
			ms.fail(i, v, err)
			if memberErr1 == nil {
				memberErr1 = err
			}
		case callerErr == nil:
			callerErr = err
		}
	}
	return got, memberErr1, callerErr
}
