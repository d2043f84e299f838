package iscsi

import (
	"testing"
	"time"
)

func TestUnitAttentionQueue(t *testing.T) {
	var u unitAttentions
	if _, ok := u.next(); ok {
		t.Fatal("empty queue reported a condition")
	}
	u.add(ascBusDeviceReset)
	u.add(ascCapacityChanged)
	u.add(ascBusDeviceReset) // already pending
	for i := 0; i < 2*maxPendingUA; i++ {
		u.add(uint16(0x3f00 + i))
	}
	want := []uint16{ascBusDeviceReset, ascCapacityChanged}
	for i := 0; i < maxPendingUA-2; i++ {
		want = append(want, uint16(0x3f00+i))
	}
	for i, w := range want {
		if got, ok := u.next(); !ok || got != w {
			t.Fatalf("condition %d = %#x %v, want %#x", i, got, ok, w)
		}
	}
	if _, ok := u.next(); ok || u.n.Load() != 0 {
		t.Fatal("queue not empty after reporting everything")
	}
}

// tmfRequest sends a task management function and returns its response.
func (c *testInitiator) tmf(fn uint8, ref uint32) uint8 {
	c.t.Helper()
	r := taskMgmtRequest{Immediate: true, Function: fn, ITT: c.nextITT(), RefTaskTag: ref, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	var h header
	r.marshal(&h)
	c.send(&h, nil)
	for {
		d := c.recv()
		if m, ok := d.msg.(*taskMgmtResponse); ok && m.ITT == r.ITT {
			return m.Response
		}
	}
}

var cdbTUR = []byte{0, 0, 0, 0, 0, 0}

// expectUA runs TEST UNIT READY and checks that it reports the unit
// attention asc, or GOOD when asc is 0.
func (c *testInitiator) expectUA(asc uint16) {
	c.t.Helper()
	r := c.command(cdbTUR, 0, nil, 0)
	key, got := r.senseKey()
	switch {
	case asc == 0 && r.status != statusGood:
		c.t.Fatalf("TEST UNIT READY: status %#x sense %x/%#04x, want GOOD", r.status, key, got)
	case asc != 0 && (r.status != statusCheckCondition || key != senseUnitAttention || got != asc):
		c.t.Fatalf("TEST UNIT READY: status %#x sense %x/%#04x, want UNIT ATTENTION %#04x", r.status, key, got, asc)
	}
}

// TestResetUnitAttentions checks the conditions each reset leaves for the
// issuing session and another one, and that RESERVE(6) does not survive a
// reset while persistent reservations do.
func TestResetUnitAttentions(t *testing.T) {
	srv, be, addr := newTestServer(t, Config{}, 1<<20)
	a, b := dialInitiator(t, addr), dialInitiator(t, addr)
	a.loginNormal()
	b.loginNormal()

	// ABORT TASK SET leaves nothing behind.
	if got := a.tmf(tmfAbortTaskSet, reservedTag); got != tmfRespComplete {
		t.Fatalf("ABORT TASK SET: %d", got)
	}
	a.expectUA(0)
	b.expectUA(0)

	// LUN RESET: every nexus, the issuer's too; RESERVE(6) ends.
	if r := a.command([]byte{0x16, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatalf("RESERVE(6): %#x", r.status)
	}
	if got := a.tmf(tmfLUNReset, reservedTag); got != tmfRespComplete {
		t.Fatalf("LUN RESET: %d", got)
	}
	// INQUIRY does not consume the condition.
	if r := b.command([]byte{0x12, 0, 0, 0, 36, 0}, 36, nil, 0); r.status != statusGood {
		t.Fatalf("INQUIRY with a unit attention pending: %#x", r.status)
	}
	a.expectUA(ascBusDeviceReset)
	a.expectUA(0)
	b.expectUA(ascBusDeviceReset)
	if r := b.command([]byte{0x16, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Errorf("RESERVE(6) from another nexus after LUN RESET: %#x, want GOOD", r.status)
	}
	if r := b.command([]byte{0x17, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatalf("RELEASE(6): %#x", r.status)
	}

	// TARGET WARM RESET: every nexus, reported through REQUEST SENSE.
	if got := b.tmf(tmfTargetWarmReset, reservedTag); got != tmfRespComplete {
		t.Fatalf("TARGET WARM RESET: %d", got)
	}
	for _, c := range []*testInitiator{a, b} {
		r := c.command([]byte{0x03, 0, 0, 0, 18, 0}, 18, nil, 0)
		if r.status != statusGood || len(r.data) < 14 || r.data[2]&0xf != senseUnitAttention || be16(r.data[12:]) != ascReset {
			t.Errorf("REQUEST SENSE after TARGET WARM RESET: status %#x data %x", r.status, r.data)
		}
		c.expectUA(0)
	}

	// CLEAR TASK SET: the other nexus that lost a command is told.
	be.delay.Store(int64(3 * time.Second))
	itt := b.nextITT()
	b.sendCommand(itt, cdbRead10(0, 1), 512, nil, 0, true)
	time.Sleep(50 * time.Millisecond)
	if got := a.tmf(tmfClearTaskSet, reservedTag); got != tmfRespComplete {
		t.Fatalf("CLEAR TASK SET: %d", got)
	}
	be.delay.Store(0)
	a.expectUA(0)
	b.expectUA(ascCommandsCleared)
	b.expectUA(0)
	if n := srv.sessionCount(); n != 2 {
		t.Errorf("%d sessions after the resets, want 2", n)
	}
}

// TestPersistentReservationUnitAttentions follows the conditions that
// PREEMPT, RELEASE and CLEAR establish for other registrants.
func TestPersistentReservationUnitAttentions(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	a, b := dialInitiator(t, addr), dialInitiator(t, addr)
	a.loginNormal()
	b.loginNormal()
	prout := func(c *testInitiator, sa, typ byte, key, sark uint64) {
		t.Helper()
		cdb, data := prOut(sa, typ, key, sark)
		if r := c.command(cdb, uint32(len(data)), data, len(data)); r.status != statusGood {
			t.Fatalf("PERSISTENT RESERVE OUT %d: status %#x", sa, r.status)
		}
	}
	prout(a, proutRegister, 0, 0, 0xa)
	prout(b, proutRegister, 0, 0, 0xb)

	// RELEASE of a registrants-only reservation: the other registrant.
	prout(a, proutReserve, prWriteExclusiveRegOnly, 0xa, 0)
	prout(a, proutRelease, prWriteExclusiveRegOnly, 0xa, 0)
	a.expectUA(0)
	b.expectUA(ascReservationsReleased)

	// RELEASE of a Write Exclusive reservation: nobody.
	prout(a, proutReserve, prWriteExclusive, 0xa, 0)
	prout(a, proutRelease, prWriteExclusive, 0xa, 0)
	b.expectUA(0)

	// PREEMPT: the preempted registrant.
	prout(a, proutReserve, prWriteExclusive, 0xa, 0)
	prout(b, proutPreempt, prExclusiveAccess, 0xb, 0xa)
	a.expectUA(ascRegistrationsPreempted)
	b.expectUA(0)

	// CLEAR: every other registrant.
	prout(a, proutRegister, 0, 0, 0xa)
	prout(b, proutClear, 0, 0xb, 0)
	a.expectUA(ascReservationsPreempted)
	b.expectUA(0)

	// PREEMPT AND ABORT: the preempted registrant's commands are aborted
	// before the command completes.
	prout(a, proutRegister, 0, 0, 0xa)
	prout(b, proutRegister, 0, 0, 0xb)
	be.delay.Store(int64(time.Second))
	a.sendCommand(a.nextITT(), cdbRead10(0, 1), 512, nil, 0, true)
	time.Sleep(50 * time.Millisecond)
	prout(b, proutPreemptAndAbort, prWriteExclusive, 0xb, 0xa)
	be.delay.Store(0)
	a.expectUA(ascRegistrationsPreempted)
	a.expectUA(0)
	if d, err := a.tryRecv(1500 * time.Millisecond); err == nil {
		t.Errorf("the preempted read was answered (%s) instead of aborted", d.op)
	}
}
