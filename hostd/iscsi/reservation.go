package iscsi

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// accessKind classifies a command for persistent reservation conflicts
// (SPC-4 5.12.1, table 65).
type accessKind uint8

const (
	accAllowed accessKind = iota // never blocked by a persistent reservation
	accRead                      // blocked by the Exclusive Access types
	accWrite                     // blocked by every reservation type
	accReserve                   // RESERVE/RELEASE(6)/(10): own rules
	accPR                        // PERSISTENT RESERVE IN/OUT: own rules
)

// Persistent reservation types.
const (
	prWriteExclusive         = 1
	prExclusiveAccess        = 3
	prWriteExclusiveRegOnly  = 5
	prExclusiveAccessRegOnly = 6
	prWriteExclusiveAllRegs  = 7
	prExclusiveAccessAllRegs = 8
)

func validPRType(t byte) bool {
	switch t {
	case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRegOnly, prExclusiveAccessRegOnly, prWriteExclusiveAllRegs, prExclusiveAccessAllRegs:
		return true
	}
	return false
}

// allRegistrants types make every registrant a reservation holder.
func allRegistrants(t byte) bool {
	return t == prWriteExclusiveAllRegs || t == prExclusiveAccessAllRegs
}

// registrantsAccess types give every registrant full access.
func registrantsAccess(t byte) bool {
	return t == prWriteExclusiveRegOnly || t == prExclusiveAccessRegOnly || allRegistrants(t)
}

func exclusiveAccess(t byte) bool {
	return t == prExclusiveAccess || t == prExclusiveAccessRegOnly || t == prExclusiveAccessAllRegs
}

// prState is the persistent reservation state of a logical unit (SPC-4
// 5.12). It lives in memory: APTPL is not supported, so it does not survive
// a restart of hostd.
type prState struct {
	generation uint32
	regs       map[string]uint64 // registered I_T nexus (initiator port) -> reservation key
	holder     string            // reservation holder; unused for all-registrants types
	resType    byte              // 0: no reservation
}

func (p *prState) registered(nexus string) (uint64, bool) {
	k, ok := p.regs[nexus]
	return k, ok
}

// isHolder reports whether nexus holds the reservation.
func (p *prState) isHolder(nexus string) bool {
	if p.resType == 0 {
		return false
	}
	if allRegistrants(p.resType) {
		_, ok := p.regs[nexus]
		return ok
	}
	return p.holder == nexus
}

func (p *prState) release() {
	p.resType, p.holder = 0, ""
}

// unregister removes a registration; a holder that unregisters loses its
// reservation, and an all-registrants reservation ends with its last
// registrant.
func (p *prState) unregister(nexus string) {
	delete(p.regs, nexus)
	if p.resType == 0 {
		return
	}
	if allRegistrants(p.resType) {
		if len(p.regs) == 0 {
			p.release()
		}
	} else if p.holder == nexus {
		p.release()
	}
}

// reservationConflict applies RESERVE(6)/(10) and persistent reservations
// to a command from c.nexus.
func (lu *logicalUnit) reservationConflict(c *scsiCmd) bool {
	if !lu.reserved.Load() {
		return false
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if h := lu.mu.legacyHolder; h != "" && h != c.nexus && !c.spec.legacyOK {
		return true
	}
	p := &lu.mu.pr
	if p.resType == 0 {
		return false
	}
	switch c.spec.access {
	case accRead, accWrite:
	case accReserve:
		// RESERVE and RELEASE conflict with any persistent reservation
		// (SPC-3 5.6.3); RELEASE from a nexus that holds nothing is
		// handled as a no-op by execRelease.
		return c.spec.op == 0x16 || c.spec.op == 0x56
	default:
		return false
	}
	if p.isHolder(c.nexus) {
		return false
	}
	if _, reg := p.registered(c.nexus); reg && registrantsAccess(p.resType) {
		return false
	}
	return c.spec.access == accWrite || exclusiveAccess(p.resType)
}

// syncReservedLocked publishes whether any reservation exists, so that
// commands skip the lock in the common case.
func (lu *logicalUnit) syncReservedLocked() {
	lu.reserved.Store(lu.mu.legacyHolder != "" || lu.mu.pr.resType != 0)
}

// execReserve takes a RESERVE(6)/(10) reservation for the I_T nexus.
func execReserve(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	if c.spec.op == 0x56 && c.cdb[1]&0x12 != 0 { // 3RDPTY, LONGID
		return check(invalidField(1, 4))
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if h := lu.mu.legacyHolder; h != "" && h != c.nexus || len(lu.mu.pr.regs) > 0 {
		return result{status: statusReservationConflict}
	}
	lu.mu.legacyHolder = c.nexus
	lu.syncReservedLocked()
	return good(nil)
}

// execRelease drops the nexus's RESERVE(6)/(10) reservation; from any
// other nexus it does nothing.
func execRelease(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	if c.spec.op == 0x57 && c.cdb[1]&0x12 != 0 {
		return check(invalidField(1, 4))
	}
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.mu.legacyHolder == c.nexus {
		lu.mu.legacyHolder = ""
	}
	lu.syncReservedLocked()
	return good(nil)
}

// nexusLost releases what an I_T nexus held only for the life of the
// nexus: its RESERVE(6)/(10) reservation. Persistent registrations stay.
func (lu *logicalUnit) nexusLost(nexus string) {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	if lu.mu.legacyHolder == nexus {
		lu.mu.legacyHolder = ""
	}
	lu.syncReservedLocked()
}

// reset is a logical unit reset: RESERVE(6)/(10) reservations end,
// persistent reservations stay (SPC-4 5.12.1).
func (lu *logicalUnit) reset() {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	lu.mu.legacyHolder = ""
	lu.syncReservedLocked()
}

// PERSISTENT RESERVE IN and OUT service actions.
const (
	prinReadKeys        = 0
	prinReadReservation = 1
	prinReportCaps      = 2
	prinReadFullStatus  = 3

	proutRegister          = 0
	proutReserve           = 1
	proutRelease           = 2
	proutClear             = 3
	proutPreempt           = 4
	proutPreemptAndAbort   = 5
	proutRegisterAndIgnore = 6
)

// proutParamLen is the length of the basic PERSISTENT RESERVE OUT parameter
// list; SPEC_I_PT and REGISTER AND MOVE, which need longer lists, are not
// supported.
const proutParamLen = 24

func persistentReserveSpecs() []*cmdSpec {
	var specs []*cmdSpec
	for _, sa := range []byte{prinReadKeys, prinReadReservation, prinReportCaps, prinReadFullStatus} {
		specs = append(specs, &cmdSpec{
			name: "PERSISTENT RESERVE IN", op: 0x5e, sa: sa, hasSA: true, access: accPR,
			usage:  []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0},
			decode: decodePRIn, exec: execPRIn,
		})
	}
	for _, sa := range []byte{proutRegister, proutReserve, proutRelease, proutClear, proutPreempt, proutPreemptAndAbort, proutRegisterAndIgnore} {
		specs = append(specs, &cmdSpec{
			name: "PERSISTENT RESERVE OUT", op: 0x5f, sa: sa, hasSA: true, access: accPR,
			usage:  []byte{0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0},
			decode: decodePROut, exec: execPROut,
		})
	}
	return specs
}

func decodePRIn(lu *logicalUnit, c *scsiCmd) *sense {
	c.dir = dirIn
	c.alloc = uint32(be16(c.cdb[7:]))
	return nil
}

func execPRIn(_ context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	lu.mu.Lock()
	defer lu.mu.Unlock()
	p := &lu.mu.pr
	var b []byte
	switch c.cdb[1] & 0x1f {
	case prinReadKeys:
		// Keys in a stable order: by initiator port name.
		b = make([]byte, 8, 8+8*len(p.regs))
		put32(b, p.generation)
		for _, n := range slices.Sorted(maps.Keys(p.regs)) {
			b = be64append(b, p.regs[n])
		}
		put32(b[4:], uint32(len(b)-8))
	case prinReadReservation:
		b = make([]byte, 8)
		put32(b, p.generation)
		if p.resType != 0 {
			d := make([]byte, 16)
			if !allRegistrants(p.resType) {
				put64(d, p.regs[p.holder])
			}
			d[13] = p.resType // SCOPE 0 (logical unit) | TYPE
			b = append(b, d...)
			put32(b[4:], 16)
		}
	case prinReportCaps:
		b = make([]byte, 8)
		put16(b, 8)
		b[2] = 0    // CRH, SIP_C, ATP_C and PTPL_C not supported
		b[3] = 0x80 // TMV: the type mask is valid; ALLOW COMMANDS 0
		b[4] = 0xea // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		b[5] = 0x01 // EX_AC_AR
	case prinReadFullStatus:
		b = make([]byte, 8)
		put32(b, p.generation)
		for _, n := range slices.Sorted(maps.Keys(p.regs)) {
			tid := transportID(n)
			d := make([]byte, 24, 24+len(tid))
			put64(d, p.regs[n])
			if p.isHolder(n) {
				d[12] = 0x01 // R_HOLDER
				d[13] = p.resType
			}
			put16(d[18:], 1) // RELATIVE TARGET PORT IDENTIFIER
			put32(d[20:], uint32(len(tid)))
			b = append(append(b, d...), tid...)
		}
		put32(b[4:], uint32(len(b)-8))
	}
	return good(truncate(b, c.alloc))
}

func be64append(b []byte, v uint64) []byte {
	var x [8]byte
	put64(x[:], v)
	return append(b, x[:]...)
}

// transportID is the iSCSI TransportID of an initiator port (SPC-4
// 7.6.4.6, format 01b): the name with its ISID, NUL-terminated and padded.
func transportID(port string) []byte {
	name := scsiName(port)
	if len(name) < 20 {
		name = append(name, make([]byte, 20-len(name))...)
	}
	b := make([]byte, 4, 4+len(name))
	b[0] = 0x40 | protoISCSI
	put16(b[2:], uint16(len(name)))
	return append(b, name...)
}

func decodePROut(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	sa := cdb[1] & 0x1f
	switch sa {
	case proutReserve, proutRelease, proutPreempt, proutPreemptAndAbort:
		if cdb[2]>>4 != 0 { // SCOPE: only LU_SCOPE
			return invalidField(2, 7)
		}
		if !validPRType(cdb[2] & 0x0f) {
			return invalidField(2, 3)
		}
	}
	if n := be32(cdb[5:]); n != proutParamLen {
		return senseParamLength
	}
	c.dir, c.outLen = dirOut, proutParamLen
	return nil
}

var conflict = result{status: statusReservationConflict}

// execPROut carries out a PERSISTENT RESERVE OUT service action (SPC-4
// 6.17 and 5.12).
func execPROut(_ context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if len(out) < proutParamLen {
		return check(senseParamLength)
	}
	key, sark := be64(out), be64(out[8:])
	if out[20]&0x08 != 0 { // SPEC_I_PT
		return check(invalidParam(20, 3))
	}
	if out[20]&0x01 != 0 { // APTPL: persistence through power loss is not offered
		return check(invalidParam(20, 0))
	}
	sa, typ := c.cdb[1]&0x1f, c.cdb[2]&0x0f
	n := c.nexus

	lu.mu.Lock()
	defer lu.mu.Unlock()
	defer lu.syncReservedLocked()
	if h := lu.mu.legacyHolder; h != "" && h != n {
		return conflict
	}
	p := &lu.mu.pr
	if p.regs == nil {
		p.regs = make(map[string]uint64)
	}
	cur, reg := p.registered(n)

	switch sa {
	case proutRegister, proutRegisterAndIgnore:
		if sa == proutRegister && (reg && key != cur || !reg && key != 0) {
			return conflict
		}
		switch {
		case sark == 0 && reg:
			typ, held := p.resType, p.isHolder(n) && !allRegistrants(p.resType)
			p.unregister(n)
			res := good(nil)
			if held && registrantsAccess(typ) {
				// The holder of a registrants-only reservation left it
				// (SPC-4 5.12.11.2.3).
				res.events = p.notifyOthers(n, ascReservationsReleased)
			}
			p.generation++
			return res
		case sark == 0:
			return good(nil)
		default:
			p.regs[n] = sark
		}
		p.generation++
		return good(nil)
	}

	// Every other service action needs a registered nexus with its key.
	if !reg || key != cur {
		return conflict
	}
	switch sa {
	case proutReserve:
		if p.resType == 0 {
			p.resType, p.holder = typ, n
			return good(nil)
		}
		if p.isHolder(n) && p.resType == typ {
			return good(nil)
		}
		return conflict
	case proutRelease:
		if !p.isHolder(n) {
			return good(nil)
		}
		if p.resType != typ {
			return check(newSense(senseIllegalRequest, ascInvalidReleaseOfPR))
		}
		res := good(nil)
		if registrantsAccess(typ) {
			// Other registrants had access through the reservation
			// (SPC-4 5.12.11.2.2).
			res.events = p.notifyOthers(n, ascReservationsReleased)
		}
		p.release()
		return res
	case proutClear:
		res := good(nil)
		res.events = p.notifyOthers(n, ascReservationsPreempted)
		clear(p.regs)
		p.release()
		p.generation++
		return res
	case proutPreempt, proutPreemptAndAbort:
		return p.preempt(n, sark, typ, sa == proutPreemptAndAbort)
	}
	return check(invalidField(1, 4))
}

// notifyOthers returns a unit attention for every registered I_T nexus
// but n.
func (p *prState) notifyOthers(n string, asc uint16) []nexusEvent {
	var ev []nexusEvent
	for _, other := range slices.Sorted(maps.Keys(p.regs)) {
		if other != n {
			ev = append(ev, nexusEvent{nexus: other, asc: asc})
		}
	}
	return ev
}

// preempt removes the registrations with key sark and, when they held the
// reservation, moves it to nexus n with type typ (SPC-4 5.12.11.4). The
// nexuses that lost their registration get REGISTRATIONS PREEMPTED, and
// with abort their commands are aborted; if the reservation changed type,
// the remaining registrants get RESERVATIONS RELEASED.
func (p *prState) preempt(n string, sark uint64, typ byte, abort bool) result {
	var removed []string
	removeKey := func(k uint64, keep string) {
		for _, other := range slices.Sorted(maps.Keys(p.regs)) {
			if p.regs[other] == k && other != keep {
				delete(p.regs, other)
				removed = append(removed, other)
			}
		}
	}
	oldType := p.resType
	switch {
	case p.resType != 0 && allRegistrants(p.resType) && sark == 0:
		for _, other := range slices.Sorted(maps.Keys(p.regs)) {
			if other != n {
				delete(p.regs, other)
				removed = append(removed, other)
			}
		}
		p.resType, p.holder = typ, n
	case p.resType != 0 && !allRegistrants(p.resType) && sark == p.regs[p.holder]:
		removeKey(sark, n)
		p.resType, p.holder = typ, n
	case sark == 0:
		return check(invalidParam(8, -1))
	default:
		removeKey(sark, "")
		if len(removed) == 0 {
			return conflict
		}
		if p.resType != 0 && allRegistrants(p.resType) && len(p.regs) == 0 {
			p.release()
		}
	}
	p.generation++
	res := good(nil)
	for _, r := range removed {
		res.events = append(res.events, nexusEvent{nexus: r, asc: ascRegistrationsPreempted, abort: abort})
	}
	if oldType != 0 && p.resType != oldType {
		res.events = append(res.events, p.notifyOthers(n, ascReservationsReleased)...)
	}
	return res
}

// initiatorPort is the SCSI initiator port name of an iSCSI session:
// the initiator name, ",i,0x" and the ISID in hex (RFC 7143 10.1.1).
func initiatorPort(name string, isid [6]byte) string {
	return fmt.Sprintf("%s,i,0x%012x", strings.ToLower(name), isid[:])
}
