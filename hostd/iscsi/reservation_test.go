package iscsi

import (
	"context"
	"reflect"
	"sync"
	"testing"
	"time"
)

// runAs decodes and executes a command from the given initiator port.
func runAs(t *testing.T, lu *logicalUnit, nexus string, cdb, out []byte) result {
	t.Helper()
	c, s := lu.decodeCDB(cdb, true, uint32(len(out)))
	if s != nil {
		return check(s)
	}
	c.nexus = nexus
	var in []byte
	if c.inLen > 0 {
		in = make([]byte, c.inLen)
	}
	return lu.execute(context.Background(), c, out, in)
}

func prOut(sa, typ byte, key, sark uint64) ([]byte, []byte) {
	cdb := []byte{0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0}
	p := make([]byte, 24)
	put64(p, key)
	put64(p[8:], sark)
	return cdb, p
}

func prIn(sa byte, alloc uint16) []byte {
	b := []byte{0x5e, sa, 0, 0, 0, 0, 0, 0, 0, 0}
	put16(b[7:], alloc)
	return b
}

func TestPersistentReservations(t *testing.T) {
	lu, _ := testLU(t)
	const a, b, c = "iqn.a,i,0x000000000001", "iqn.b,i,0x000000000002", "iqn.c,i,0x000000000003"
	status := func(r result) uint8 { return r.status }
	do := func(n string, sa, typ byte, key, sark uint64) result {
		cdb, p := prOut(sa, typ, key, sark)
		return runAs(t, lu, n, cdb, p)
	}
	keys := func() (uint32, []uint64) {
		d := runAs(t, lu, a, prIn(prinReadKeys, 1024), nil).data
		var ks []uint64
		for i := 8; i+8 <= len(d); i += 8 {
			ks = append(ks, be64(d[i:]))
		}
		return be32(d), ks
	}
	reservation := func() (key uint64, typ byte, ok bool) {
		d := runAs(t, lu, a, prIn(prinReadReservation, 1024), nil).data
		if be32(d[4:]) == 0 {
			return 0, 0, false
		}
		return be64(d[8:]), d[21] & 0xf, true
	}
	read := func(n string) uint8 { return status(runAs(t, lu, n, cdbRead10(0, 1), nil)) }
	write := func(n string) uint8 { return status(runAs(t, lu, n, cdbWrite10(0, 1, false), make([]byte, 512))) }

	if r := do(a, proutRegister, 0, 0, 0x11); r.status != statusGood {
		t.Fatalf("REGISTER: %+v", r)
	}
	if r := do(a, proutRegister, 0, 0, 0x12); r.status != statusReservationConflict {
		t.Errorf("REGISTER of a registered nexus without its key: status %#x", r.status)
	}
	if r := do(b, proutRegisterAndIgnore, 0, 0x99, 0x22); r.status != statusGood {
		t.Fatalf("REGISTER AND IGNORE: %+v", r)
	}
	if gen, ks := keys(); gen != 2 || !reflect.DeepEqual(ks, []uint64{0x11, 0x22}) {
		t.Errorf("READ KEYS: generation %d keys %x", gen, ks)
	}
	if d := runAs(t, lu, a, prIn(prinReadKeys, 8), nil).data; len(d) != 8 || be32(d[4:]) != 16 {
		t.Errorf("READ KEYS truncated to 8 bytes: %x", d)
	}
	if r := do(c, proutReserve, prWriteExclusive, 0x33, 0); r.status != statusReservationConflict {
		t.Errorf("RESERVE from an unregistered nexus: %#x", r.status)
	}

	// Write Exclusive held by a: everyone reads, only a writes.
	if r := do(a, proutReserve, prWriteExclusive, 0x11, 0); r.status != statusGood {
		t.Fatalf("RESERVE WE: %+v", r)
	}
	if k, typ, ok := reservation(); !ok || k != 0x11 || typ != prWriteExclusive {
		t.Errorf("READ RESERVATION: key %x type %d reserved %v", k, typ, ok)
	}
	if read(b) != statusGood || read(c) != statusGood || write(a) != statusGood {
		t.Error("Write Exclusive blocks reads or the holder")
	}
	if write(b) != statusReservationConflict || write(c) != statusReservationConflict {
		t.Error("Write Exclusive lets a non-holder write")
	}
	if s := status(runAs(t, lu, c, []byte{0x12, 0, 0, 0, 96, 0}, nil)); s != statusGood {
		t.Error("INQUIRY blocked by a persistent reservation")
	}
	if r := do(b, proutReserve, prExclusiveAccess, 0x22, 0); r.status != statusReservationConflict {
		t.Errorf("second RESERVE by another registrant: %#x", r.status)
	}
	if r := do(a, proutRelease, prExclusiveAccess, 0x11, 0); r.status != statusCheckCondition || r.sense.asc != ascInvalidReleaseOfPR {
		t.Errorf("RELEASE with the wrong type: %+v", r)
	}
	if r := do(b, proutRelease, prWriteExclusive, 0x22, 0); r.status != statusGood {
		t.Errorf("RELEASE by a registrant that does not hold: %#x", r.status)
	}
	if _, _, ok := reservation(); !ok {
		t.Error("RELEASE by a non-holder ended the reservation")
	}
	if r := do(a, proutRelease, prWriteExclusive, 0x11, 0); r.status != statusGood {
		t.Errorf("RELEASE: %+v", r)
	}
	if _, _, ok := reservation(); ok {
		t.Error("reservation still present after RELEASE")
	}
	if gen, _ := keys(); gen != 2 {
		t.Errorf("RESERVE/RELEASE changed the generation to %d", gen)
	}

	// Exclusive Access Registrants Only: registrants have full access.
	if r := do(a, proutReserve, prExclusiveAccessRegOnly, 0x11, 0); r.status != statusGood {
		t.Fatal("RESERVE EARO failed")
	}
	if read(b) != statusGood || write(b) != statusGood || read(c) != statusReservationConflict {
		t.Error("EARO access rules")
	}
	// b preempts a: a loses its registration, b holds an EA reservation.
	if r := do(b, proutPreempt, prExclusiveAccess, 0x22, 0x11); r.status != statusGood {
		t.Fatalf("PREEMPT: %+v", r)
	}
	if gen, ks := keys(); gen != 3 || !reflect.DeepEqual(ks, []uint64{0x22}) {
		t.Errorf("after PREEMPT: generation %d keys %x", gen, ks)
	}
	if k, typ, _ := reservation(); k != 0x22 || typ != prExclusiveAccess {
		t.Errorf("after PREEMPT: reservation %x type %d", k, typ)
	}
	if read(a) != statusReservationConflict {
		t.Error("preempted nexus can still read under Exclusive Access")
	}
	// RESERVE(6) cannot coexist with registrations.
	if s := status(runAs(t, lu, b, []byte{0x16, 0, 0, 0, 0, 0}, nil)); s != statusReservationConflict {
		t.Errorf("RESERVE(6) with registrations: %#x", s)
	}
	if r := do(b, proutClear, 0, 0x22, 0); r.status != statusGood {
		t.Fatal("CLEAR failed")
	}
	if gen, ks := keys(); gen != 4 || len(ks) != 0 {
		t.Errorf("after CLEAR: generation %d keys %x", gen, ks)
	}
	// APTPL is not offered.
	cdb, p := prOut(proutRegister, 0, 0, 5)
	p[20] = 1
	if r := runAs(t, lu, a, cdb, p); r.status != statusCheckCondition || r.sense.asc != ascInvalidFieldInParamList {
		t.Errorf("REGISTER with APTPL: %+v", r)
	}
	caps := runAs(t, lu, a, prIn(prinReportCaps, 8), nil).data
	if be16(caps) != 8 || caps[3]&0x80 == 0 || caps[4] != 0xea || caps[5] != 0x01 {
		t.Errorf("REPORT CAPABILITIES %x", caps)
	}
}

func TestLegacyReservation(t *testing.T) {
	lu, _ := testLU(t)
	const a, b = "iqn.a,i,0x000000000001", "iqn.b,i,0x000000000002"
	st := func(n string, cdb []byte) uint8 { return runAs(t, lu, n, cdb, nil).status }
	tur := []byte{0, 0, 0, 0, 0, 0}
	reserve6 := []byte{0x16, 0, 0, 0, 0, 0}
	if st(a, reserve6) != statusGood {
		t.Fatal("RESERVE(6)")
	}
	if st(a, reserve6) != statusGood {
		t.Fatal("RESERVE(6) repeated by the holder")
	}
	if st(b, []byte{0x16, 0, 0, 0, 0, 0}) != statusReservationConflict || st(b, tur) != statusReservationConflict {
		t.Error("another nexus is not blocked")
	}
	if st(b, []byte{0x12, 0, 0, 0, 96, 0}) != statusGood || st(b, []byte{0x17, 0, 0, 0, 0, 0}) != statusGood {
		t.Error("INQUIRY or RELEASE blocked for another nexus")
	}
	if st(b, tur) != statusReservationConflict {
		t.Error("RELEASE by another nexus released the reservation")
	}
	lu.nexusLost(a)
	if st(b, tur) != statusGood {
		t.Error("reservation survived the loss of its nexus")
	}
	if st(b, []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}) != statusGood || st(a, tur) != statusReservationConflict {
		t.Error("RESERVE(10)")
	}
	lu.reset()
	if st(a, tur) != statusGood {
		t.Error("reservation survived a logical unit reset")
	}
}

// TestCompareAndWriteIsAtomic increments a counter from several goroutines
// with COMPARE AND WRITE over a slow back end: without atomicity, updates
// would be lost.
func TestCompareAndWriteIsAtomic(t *testing.T) {
	lu, be := testLU(t)
	be.delay.Store(int64(200 * time.Microsecond))
	const workers, each = 4, 15
	cawCDB := func() []byte { b := cdb16(0x89, 10, 0); b[13] = 1; return b }()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < each; {
				cur := runAs(t, lu, "x", cdbRead10(10, 1), nil).data
				buf := make([]byte, 1024)
				copy(buf, cur)
				copy(buf[512:], cur)
				put64(buf[512:], be64(cur)+1)
				switch r := runAs(t, lu, "x", cawCDB, buf); {
				case r.status == statusGood:
					done++
				case r.sense != nil && r.sense.key == senseMiscompare:
				default:
					t.Errorf("COMPARE AND WRITE: %+v", r)
					return
				}
				// Plain writes elsewhere in the same stripe run alongside.
				runAs(t, lu, "y", cdbWrite10(11, 1, false), make([]byte, 512))
			}
		}()
	}
	wg.Wait()
	if got := be64(be.snapshot(10*512, 8)); got != workers*each {
		t.Errorf("counter = %d after %d atomic increments", got, workers*each)
	}
}

func TestStripeSet(t *testing.T) {
	tests := []struct {
		off, n int64
		want   stripeMask
	}{
		{0, 512, 1 << 0},
		{1<<20 - 512, 1024, 1<<0 | 1<<1},
		{63 << 20, 2 << 20, 1<<0 | 1<<63},
		{5 << 20, 64 << 20, ^stripeMask(0)},
		{70 << 20, 0, 1 << 6},
	}
	for _, tc := range tests {
		if got := stripeSet(tc.off, tc.n); got != tc.want {
			t.Errorf("stripeSet(%d, %d) = %#x, want %#x", tc.off, tc.n, got, tc.want)
		}
	}
	// Exclusive holders exclude shared ones over overlapping stripes only.
	var l extentLocks
	h := l.exclusive(0, 2<<20)
	other := l.shared(5<<20, 512) // stripe 5: free
	other.unlock()
	locked := make(chan struct{})
	go func() {
		l.shared(1<<20, 512).unlock()
		close(locked)
	}()
	select {
	case <-locked:
		t.Fatal("a shared lock overlapping an exclusive one was granted")
	case <-time.After(20 * time.Millisecond):
	}
	h.unlock()
	<-locked
}

func TestWriteSameAndOrWrite(t *testing.T) {
	lu, be := testLU(t)
	blk := make([]byte, 512)
	for i := range blk {
		blk[i] = byte(i)
	}
	if r := runAs(t, lu, "x", []byte{0x41, 0, 0, 0, 0, 4, 0, 0, 3, 0}, blk); r.status != statusGood {
		t.Fatalf("WRITE SAME(10): %+v", r)
	}
	for i := range 3 {
		if got := be.snapshot((4+i)*512, 512); !reflect.DeepEqual(got, blk) {
			t.Errorf("block %d after WRITE SAME differs", 4+i)
		}
	}
	ndob := cdb16(0x93, 5, 1)
	ndob[1] = 1
	if r := runAs(t, lu, "x", ndob, nil); r.status != statusGood {
		t.Fatalf("WRITE SAME(16) NDOB: %+v", r)
	}
	if got := be.snapshot(5*512, 512); !reflect.DeepEqual(got, make([]byte, 512)) {
		t.Error("WRITE SAME(16) NDOB did not write zeros")
	}
	or := make([]byte, 512)
	for i := range or {
		or[i] = 0x80
	}
	if r := runAs(t, lu, "x", cdb16(0x8b, 4, 1), or); r.status != statusGood {
		t.Fatalf("ORWRITE: %+v", r)
	}
	if got := be.snapshot(4*512, 512); got[1] != 0x81 || got[0x90] != 0x90 {
		t.Errorf("ORWRITE result %x...", got[:4])
	}
}
