package raid

import (
	"errors"
	"fmt"
	"strings"
)

// health is the one state machine of a set's members and of the REMB
// duties that follow from their states, shared by Mirror and EC. It does no
// I/O, starts no goroutine and reads no clock: events go in as method
// calls, and the hooks it wants run come out of next (see setHooks, the
// driver). The set guards it with its own mutex.
//
// # Members
//
//	InSync ──fail──▶ Failed ──rejoin──▶ Resyncing ──resynced──▶ InSync
//	                   ▲                    │
//	                   └────────fail────────┘
//
// Every rejoin gives the member a new connection generation; a failure
// reported through an older connection (an I/O that started before the
// rejoin) is ignored. Resyncing members become InSync only through a resync
// that ran entirely while no member was Failed and no member rejoined, and
// that left nothing needing a resync.
//
// # REMB duties (DESIGN §2 rules 2 and 3)
//
// Every failure starts a new degradation generation and asks for a record:
// the BeforeDegradedWrite hook (hostd pins the LOG bitmaps of the members
// still in use and records the members' states with the metaserver). A
// write that some member did not get is acknowledged only once a record of
// a generation at least as new as the one it saw has succeeded: then the
// survivors remember what the absent members miss (their LOGs do not
// forget), and a host taking over after a crash does not trust the absent
// members. A failed record fails the writes waiting for it; the next such
// write asks again.
//
// When the set is whole again (every member InSync, nothing to resync) and
// its LOGs may be pinned — by a record, or by the chunkservers after an
// unclean stop or a fence (Pinned at start) — it asks for an unpin: the
// AfterWhole hook. Hooks run one at a time in the order they were asked
// for, so an unpin can never overtake the pin of a later degradation
// (a member flapping while the set cleans up), and a pin that failed
// leaves the set counting its LOGs as pinned (over-reporting is safe).
//
// The invariant the machine keeps, with the WIB (regions dirty until every
// member flushed them, see bitmap.WIB.FlushStart) and the chunkservers'
// LOGs (bits forgotten only after an fdatasync): a region that may differ
// between members is in some durable record until every member holds it
// durably. checkInvariants states the part that is the machine's.
type health struct {
	state []MemberState
	conn  []uint64 // connection generation of each member
	errs  []error  // what failed each member
	// missed[i]: a write or flush was acknowledged without member i since
	// it was last InSync, so it may lack acknowledged data. A member that
	// fails while the set can no longer acknowledge anything without it
	// (the last copy of a mirror, one of the last k of an EC set) has missed
	// nothing, and the next host trusts it.
	missed []bool
	need   int // InSync members the set needs to acknowledge a write

	degr     uint64 // generation of the newest degradation; bumped by every failure
	recorded uint64 // newest generation whose record succeeded
	failedAt uint64 // newest generation whose record failed
	recErr   error  // the error of that record
	armed    bool   // degraded since the set was last whole
	pinned   bool   // the members' LOGs may be pinned
	closed   bool

	queue   []hookCall // hooks asked for and not started, in order
	running *hookCall  // the hook that runs now
}

type hookKind uint8

const (
	hookRecord hookKind = iota + 1 // BeforeDegradedWrite
	hookUnpin                      // AfterWhole
)

func (k hookKind) String() string {
	switch k {
	case hookRecord:
		return "record"
	case hookUnpin:
		return "unpin"
	}
	return fmt.Sprintf("hookKind(%d)", uint8(k))
}

// hookCall is one run of a hook the machine asked for.
type hookCall struct {
	kind hookKind
	gen  uint64 // the degradation generation it serves
}

func (c hookCall) String() string { return fmt.Sprintf("%v gen=%d", c.kind, c.gen) }

// errAttachDegraded is the error of a member that starts Failed.
var errAttachDegraded = errors.New("unreachable at attach")

// newHealth starts a machine for n members, of which need must be InSync
// to acknowledge a write (1 for a mirror, k for EC). degraded start Failed
// and count as having missed writes: the caller pinned the survivors and
// recorded them before building the set, so their degradation counts as
// recorded. pinned says the members' LOGs start pinned.
func newHealth(n, need int, degraded []int, pinned bool) (*health, error) {
	h := &health{state: make([]MemberState, n), conn: make([]uint64, n), errs: make([]error, n),
		missed: make([]bool, n), need: max(need, 1), pinned: pinned}
	for _, i := range degraded {
		if i < 0 || i >= n {
			return nil, fmt.Errorf("raid: degraded member %d out of range [0, %d)", i, n)
		}
		h.state[i] = Failed
		h.errs[i] = errAttachDegraded
		h.missed[i] = true
	}
	if len(degraded) > 0 {
		h.degr, h.recorded, h.armed, h.pinned = 1, 1, true, true
	}
	return h, nil
}

// fail records that member i failed with err through connection
// generation conn. It reports whether the state changed.
func (h *health) fail(i int, conn uint64, err error) bool {
	if h.conn[i] != conn || h.state[i] == Failed {
		return false // an I/O of an older connection, or already failed
	}
	h.state[i] = Failed
	h.errs[i] = err
	h.armed = true
	h.degr++
	h.ask(hookCall{kind: hookRecord, gen: h.degr})
	return true
}

// rejoin makes Failed member i Resyncing with a new connection and returns
// the connection's generation.
//
// A member that missed nothing (the last copy) could become InSync at once
// when no member is InSync; that is not done yet: such a set waits for the
// next attach, which trusts the member (see untrusted).
func (h *health) rejoin(i int) (uint64, error) {
	if i < 0 || i >= len(h.state) {
		return 0, fmt.Errorf("raid: member %d out of range [0, %d)", i, len(h.state))
	}
	if h.state[i] != Failed {
		return 0, fmt.Errorf("raid: member %d is %v, not failed", i, h.state[i])
	}
	h.conn[i]++
	h.errs[i] = nil
	h.state[i] = Resyncing
	return h.conn[i], nil
}

// inSync counts the InSync members.
func (h *health) inSync() int {
	n := 0
	for _, st := range h.state {
		if st == InSync {
			n++
		}
	}
	return n
}

// acked notes that a write or flush was acknowledged that member i got only
// if got(i): the others have missed it.
func (h *health) acked(got func(i int) bool) {
	for i := range h.missed {
		if !got(i) {
			h.missed[i] = true
		}
	}
}

// untrusted reports whether a host that attaches after this one died must
// not trust member i as a copy: it missed an acknowledged write, or it is
// not in sync (Failed, or Resyncing and so perhaps without writes it lost or
// missed) while the set can acknowledge writes without it: the record of a
// degradation is taken before the writes it covers are acknowledged, so it
// must already count such a member out. When too few members are in sync
// to acknowledge anything, a member that missed nothing is a copy to trust.
func (h *health) untrusted(i int) bool {
	return h.missed[i] || h.state[i] != InSync && h.inSync() >= h.need
}

// resynced reports a finished resync that started when the connection
// generations were conns; clean says nothing needs a resync now. It
// returns the members that became InSync.
func (h *health) resynced(conns []uint64, clean bool) (joined []int) {
	if !clean || h.anyFailed() {
		return nil
	}
	for i := range h.conn {
		if h.conn[i] != conns[i] {
			return nil // a member rejoined under the resync: it has not been copied
		}
	}
	for i, st := range h.state {
		if st == Resyncing {
			h.state[i] = InSync
			joined = append(joined, i)
		}
	}
	clear(h.missed)
	h.whole()
	return joined
}

// whole notes that every member is InSync and nothing needs a resync.
func (h *health) whole() {
	h.armed = false
	if !h.pinned && !h.asked(hookRecord) {
		return
	}
	// An unpin that is queued already and not followed by a record will
	// do; otherwise one more goes after whatever is queued.
	if n := len(h.queue); n > 0 && h.queue[n-1].kind == hookUnpin {
		return
	}
	if len(h.queue) == 0 && h.running != nil && h.running.kind == hookUnpin {
		return
	}
	h.ask(hookCall{kind: hookUnpin, gen: h.degr})
}

func (h *health) anyFailed() bool {
	for _, st := range h.state {
		if st == Failed {
			return true
		}
	}
	return false
}

// degraded reports whether any member is not InSync.
func (h *health) degraded() bool {
	for _, st := range h.state {
		if st != InSync {
			return true
		}
	}
	return false
}

// degradedWrite is asked by a write that some member did not get, before
// it is acknowledged. It returns the generation whose record the write
// needs; the write may be acknowledged once recordedFor(gen) is true. It
// asks for a record if none of that generation is queued or running (a
// retry after a failed record).
func (h *health) degradedWrite() uint64 {
	g := h.degr
	if h.recorded < g && !h.recording(g) {
		h.ask(hookCall{kind: hookRecord, gen: g})
	}
	return g
}

// recordedFor reports whether a write that needs the record of gen may be
// acknowledged (done true, err nil), must fail (done true, err set: the
// record failed, or the set is closing), or must wait.
func (h *health) recordedFor(gen uint64) (done bool, err error) {
	switch {
	case h.recorded >= gen:
		return true, nil
	case h.closed:
		return true, fmt.Errorf("%w: the set is closing", ErrNoMembers)
	case h.failedAt >= gen && !h.recording(gen):
		return true, fmt.Errorf("%w: %w", ErrNotRecorded, h.recErr)
	}
	return false, nil
}

// ask queues a hook call. A record merges into a record that is last in
// the queue (the newer generation covers the older); never into one that an
// unpin follows, which would move the pin before the unpin.
func (h *health) ask(c hookCall) {
	if h.closed {
		return
	}
	if n := len(h.queue); c.kind == hookRecord && n > 0 && h.queue[n-1].kind == hookRecord {
		h.queue[n-1].gen = max(h.queue[n-1].gen, c.gen)
		return
	}
	h.queue = append(h.queue, c)
}

// recording reports whether a record of generation gen or newer is queued
// or running.
func (h *health) recording(gen uint64) bool {
	if h.running != nil && h.running.kind == hookRecord && h.running.gen >= gen {
		return true
	}
	for _, c := range h.queue {
		if c.kind == hookRecord && c.gen >= gen {
			return true
		}
	}
	return false
}

// asked reports whether a call of kind is queued or running.
func (h *health) asked(kind hookKind) bool {
	if h.running != nil && h.running.kind == kind {
		return true
	}
	for _, c := range h.queue {
		if c.kind == kind {
			return true
		}
	}
	return false
}

// next returns the hook call to start now, if no call runs and one is
// queued. The driver must report its end with hookDone.
func (h *health) next() (hookCall, bool) {
	if h.running != nil || len(h.queue) == 0 || h.closed {
		return hookCall{}, false
	}
	c := h.queue[0]
	h.queue = h.queue[1:]
	h.running = &c
	return c, true
}

// hookDone reports the end of the running hook call.
func (h *health) hookDone(c hookCall, err error) {
	if h.running == nil || *h.running != c {
		panic(fmt.Sprintf("raid: hookDone(%v) but %v is running", c, h.running))
	}
	h.running = nil
	switch c.kind {
	case hookRecord:
		// Some LOGs may be pinned even if the call failed.
		h.pinned = true
		if err != nil {
			h.failedAt, h.recErr = max(h.failedAt, c.gen), err
			return
		}
		h.recorded = max(h.recorded, c.gen)
	case hookUnpin:
		if err == nil && !h.armed && !h.asked(hookRecord) {
			h.pinned = false
		}
	}
}

// close stops the machine: no hook starts any more, and writes waiting for
// a record fail.
func (h *health) close() {
	h.closed = true
	h.queue = nil
}

// checkInvariants returns an error if the machine is in a state its rules
// forbid. Tests call it after every step.
func (h *health) checkInvariants() error {
	var errs []error
	if h.recorded > h.degr || h.failedAt > h.degr {
		errs = append(errs, fmt.Errorf("record generation %d/%d beyond the degradation %d", h.recorded, h.failedAt, h.degr))
	}
	if h.degraded() && !h.armed && h.anyFailed() {
		errs = append(errs, errors.New("a member is failed but the set is not armed"))
	}
	if h.armed && h.recorded < h.degr && !h.closed && !h.recording(h.degr) && h.failedAt < h.degr {
		errs = append(errs, fmt.Errorf("degradation %d is neither recorded nor being recorded", h.degr))
	}
	if h.armed && !h.pinned && h.recorded >= h.degr && h.degr > 0 {
		errs = append(errs, errors.New("degradation recorded but the LOGs are not counted as pinned"))
	}
	for i, st := range h.state {
		if st == Failed && h.errs[i] == nil {
			errs = append(errs, fmt.Errorf("member %d failed without an error", i))
		}
	}
	for j, c := range h.queue {
		if c.kind == hookUnpin && j+1 < len(h.queue) && h.queue[j+1].kind == hookUnpin {
			errs = append(errs, errors.New("two unpins queued back to back"))
		}
	}
	return errors.Join(errs...)
}

// String describes the machine for scenario tests and logs.
func (h *health) String() string {
	var b strings.Builder
	b.WriteString("members:")
	for i, st := range h.state {
		fmt.Fprintf(&b, " %d=%v", i, st)
		if h.conn[i] > 0 {
			fmt.Fprintf(&b, "/c%d", h.conn[i])
		}
	}
	fmt.Fprintf(&b, "\ndegradation=%d recorded=%d", h.degr, h.recorded)
	if h.failedAt > 0 {
		fmt.Fprintf(&b, " record-failed=%d", h.failedAt)
	}
	fmt.Fprintf(&b, " armed=%v pinned=%v", h.armed, h.pinned)
	if h.closed {
		b.WriteString(" closed")
	}
	if h.running != nil {
		fmt.Fprintf(&b, "\nrunning: %v", *h.running)
	}
	if len(h.queue) > 0 {
		b.WriteString("\nqueued:")
		for _, c := range h.queue {
			fmt.Fprintf(&b, " [%v]", c)
		}
	}
	return b.String()
}

// untrustedAll is untrusted for every member.
func (h *health) untrustedAll() []bool {
	out := make([]bool, len(h.state))
	for i := range out {
		out[i] = h.untrusted(i)
	}
	return out
}
