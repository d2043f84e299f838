package iscsi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Bounds on what one session may queue.
const (
	// maxImmediateCmds bounds SCSI commands sent with the I bit, which sit
	// outside the CmdSN window.
	maxImmediateCmds = 16
	// ctrlSlots bounds responses the reader queues on its own behalf (NOP-In,
	// Reject, Text, TMF responses). When the initiator stops reading, the
	// reader stops too instead of queueing without end.
	ctrlSlots = 32
)

// errLogout ends the read loop after a Logout Request.
var errLogout = errors.New("iscsi: logout")

// inPDU is a received PDU other than Data-Out, with its data segment read
// into a pooled buffer that the handler owns.
type inPDU struct {
	hdr  header
	ahs  []byte
	data []byte
}

func (p *inPDU) free() {
	if p.data != nil {
		putBuf(p.data)
		p.data = nil
	}
}

// session is the full feature phase of a logged-in connection: CmdSN
// window, task table, and the handlers for each request type. One reader
// goroutine (serve) receives PDUs; commands run in their own goroutines;
// the writer sends every response.
type session struct {
	srv       *Server
	conn      *conn
	log       *slog.Logger
	tsih      uint16
	isid      [6]byte
	cid       uint16
	initiator string
	nexus     string  // initiator port name: the I_T nexus for reservations
	target    *target // nil in a discovery session
	lu        *logicalUnit
	discovery bool
	params    sessionParams
	dg        digests // in force from the first PDU of full feature phase
	depth     uint32
	w         *writer
	budget    *semaphore.Weighted // bytes of data buffers held by commands
	ctrl      chan struct{}
	tasks     sync.WaitGroup // commands and task management functions in flight
	// Commands run on worker goroutines that wait on work for the next
	// one, so that a command costs no goroutine start; at most maxIdle
	// wait at a time. quit ends them when the session ends.
	work    chan *task
	quit    chan struct{}
	workers sync.WaitGroup
	idle    atomic.Int32
	ended   chan struct{} // closed when the session is gone

	// initiatorRecvDSL may be redeclared by a Text Request in full feature
	// phase while commands read it.
	initiatorRecvDSL atomic.Uint32
	nextTTT          atomic.Uint32
	ua               unitAttentions

	// Owned by the reader goroutine.
	rd       inPDU // the PDU being dispatched; copied only to be held
	logout   *logoutRequest
	text     textState
	capEpoch uint64 // capacity epoch of the logical unit last reported

	mu struct {
		sync.Mutex
		expCmdSN  uint32
		maxCmdSN  uint32
		inflight  int // non-immediate commands accepted and not yet answered
		immediate int // immediate commands not yet answered
		tasks     map[uint32]*task
		held      map[uint32]*inPDU // commands that arrived ahead of ExpCmdSN
		closing   bool
	}
}

// textState carries a text exchange over several PDUs (C bit).
type textState struct {
	in     []byte // request text continued by the initiator
	inTTT  uint32
	out    []byte // response text still to send
	outTTT uint32
	itt    uint32
}

func newSession(c *conn, m *loginMachine) *session {
	srv := c.srv
	s := &session{
		srv:       srv,
		conn:      c,
		isid:      m.isid,
		cid:       m.cid,
		initiator: m.initiatorName,
		nexus:     initiatorPort(m.initiatorName, m.isid),
		target:    m.target,
		discovery: m.discovery,
		params:    m.neg.final(),
		depth:     uint32(srv.cfg.QueueDepth),
		budget:    semaphore.NewWeighted(int64(srv.cfg.SessionBufferBytes)),
		ctrl:      make(chan struct{}, ctrlSlots),
		ended:     make(chan struct{}),
		work:      make(chan *task),
		quit:      make(chan struct{}),
	}
	if s.target != nil {
		s.lu = s.target.lu
		s.capEpoch = s.lu.capacityEpoch()
	}
	s.initiatorRecvDSL.Store(s.params.InitiatorRecvDSL)
	s.mu.expCmdSN = m.expCmdSN
	s.mu.maxCmdSN = m.expCmdSN + s.depth - 1
	s.mu.tasks = make(map[uint32]*task)
	s.mu.held = make(map[uint32]*inPDU)
	s.dg = s.params.digests()
	s.w = newWriter(c.nc, m.statSN, s.window, s.dg)
	tgt := "discovery"
	if s.target != nil {
		tgt = s.target.iqn
	}
	s.log = c.log.With("initiator", s.initiator, "target", tgt)
	return s
}

// window returns ExpCmdSN and MaxCmdSN for an outgoing PDU. MaxCmdSN leaves
// room for depth commands in flight and never moves backwards.
func (s *session) window() (uint32, uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	free := max(int(s.depth)-s.mu.inflight, 0)
	if m := s.mu.expCmdSN - 1 + uint32(free); serialGreater(m, s.mu.maxCmdSN) {
		s.mu.maxCmdSN = m
	}
	return s.mu.expCmdSN, s.mu.maxCmdSN
}

// serialGreater compares sequence numbers in serial number arithmetic
// (RFC 1982), as CmdSN and StatSN wrap.
func serialGreater(a, b uint32) bool { return a != b && int32(a-b) > 0 }

// serve runs the full feature phase until the connection ends, then
// cancels the remaining commands, waits for them, answers a pending logout
// and releases the TSIH.
func (s *session) serve(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	go s.w.run()

	err := s.readLoop(ctx)
	switch {
	case errors.Is(err, errLogout):
		s.log.Info("iscsi logout", "tsih", s.tsih)
	case !isDisconnect(err): // readLoop returns only on an error
		s.log.Warn("iscsi connection closed on error", "tsih", s.tsih, "err", err)
	default:
		s.log.Info("iscsi connection closed", "tsih", s.tsih)
	}

	s.mu.Lock()
	s.mu.closing = true
	pending := make([]*task, 0, len(s.mu.tasks))
	for _, t := range s.mu.tasks {
		pending = append(pending, t)
	}
	for sn, p := range s.mu.held {
		p.free()
		delete(s.mu.held, sn)
	}
	s.mu.Unlock()
	for _, t := range pending {
		t.abort()
	}
	cancel()
	s.tasks.Wait()
	close(s.quit)
	s.workers.Wait()

	if s.lu != nil {
		s.lu.nexusLost(s.nexus)
	}
	if s.logout != nil {
		s.sendLogoutResponse()
	}
	s.w.close()
	s.conn.close()
	s.srv.release(s)
	close(s.ended)
}

func (s *session) readLoop(ctx context.Context) error {
	c := s.conn
	for {
		ahs, dlen, err := s.dg.readHeader(c.br, &c.hdr, c.ahs[:], int(s.params.TargetRecvDSL))
		if err != nil {
			return err
		}
		switch op := c.hdr.opcode(); op {
		case opDataOut:
			if err := s.handleDataOut(ctx, &c.hdr, dlen); err != nil {
				return err
			}
		case opSCSICommand, opNOPOut, opTextReq, opTaskMgmt, opLogoutReq:
			// The handlers do not keep p: it is reused for the next PDU,
			// and sequence copies it when it must wait for its CmdSN.
			p := &s.rd
			*p = inPDU{hdr: c.hdr, ahs: ahs}
			if dlen > 0 {
				p.data = getBuf(dlen)
				if err := s.dg.readData(c.br, p.data, dlen); err != nil {
					p.free()
					if !errors.Is(err, ErrDataDigest) {
						return err
					}
					if err := s.dataDigestError(ctx, &c.hdr, err); err != nil {
						return err
					}
					continue
				}
			}
			if err := s.sequence(ctx, p); err != nil {
				return err
			}
		case opLoginReq:
			return fmt.Errorf("%w: %s in full feature phase", ErrProtocol, op)
		default:
			if op >= opNOPIn {
				return fmt.Errorf("%w: target opcode %s from the initiator", ErrProtocol, op)
			}
			// SNACK (it needs ErrorRecoveryLevel 1 or more) and the
			// initiator opcodes RFC 7143 leaves reserved or to vendors:
			// rejected as not supported, the connection goes on.
			reason := uint8(rejectCmdNotSupported)
			if err := s.dg.readData(c.br, nil, dlen); errors.Is(err, ErrDataDigest) {
				reason = rejectDataDigest
			} else if err != nil {
				return err
			}
			if err := s.reject(ctx, &c.hdr, reason); err != nil {
				return err
			}
		}
	}
}

// dataDigestError answers a PDU other than Data-Out whose data segment
// failed its digest: the PDU is discarded and rejected with reason 0x02
// (RFC 7143 7.8). A discarded immediate PDU needs nothing more. A
// discarded non-immediate one leaves a hole in the CmdSN sequence that
// only the initiator can fill (RFC 7143 7.3), by sending the command again
// or by aborting it; this target cannot fill a hole from an ABORT TASK, so
// after the Reject it closes the connection, the session recovery of
// ErrorRecoveryLevel 0, rather than hold every later command.
func (s *session) dataDigestError(ctx context.Context, h *header, cause error) error {
	if err := s.reject(ctx, h, rejectDataDigest); err != nil {
		return err
	}
	if h.immediate() {
		s.log.Warn("iscsi data digest error; PDU rejected", "op", h.opcode(), "itt", h.itt(), "err", cause)
		return nil
	}
	return fmt.Errorf("%w: %s discarded, its CmdSN is lost", cause, h.opcode())
}

// sequence delivers non-immediate requests in CmdSN order (RFC 7143
// 4.2.2.1). A request outside [ExpCmdSN, MaxCmdSN] is silently dropped; one
// ahead of ExpCmdSN waits until the gap is filled.
func (s *session) sequence(ctx context.Context, p *inPDU) error {
	if p.hdr.immediate() {
		return s.dispatch(ctx, p)
	}
	cmdSN := be32(p.hdr[24:])
	s.mu.Lock()
	switch {
	case cmdSN == s.mu.expCmdSN:
		s.acceptLocked(p)
	case serialGreater(cmdSN, s.mu.expCmdSN) && !serialGreater(cmdSN, s.mu.maxCmdSN):
		if _, dup := s.mu.held[cmdSN]; dup {
			s.mu.Unlock()
			p.free()
			return nil
		}
		q := &inPDU{hdr: p.hdr, ahs: bytes.Clone(p.ahs), data: p.data}
		p.data = nil
		s.mu.held[cmdSN] = q
		s.mu.Unlock()
		return nil
	default:
		exp, maxSN := s.mu.expCmdSN, s.mu.maxCmdSN
		s.mu.Unlock()
		s.log.Debug("iscsi PDU outside the CmdSN window dropped", "op", p.hdr.opcode(), "cmdsn", cmdSN, "expcmdsn", exp, "maxcmdsn", maxSN)
		p.free()
		return nil
	}
	s.mu.Unlock()
	if err := s.dispatch(ctx, p); err != nil {
		return err
	}
	for {
		s.mu.Lock()
		q, ok := s.mu.held[s.mu.expCmdSN]
		if !ok {
			s.mu.Unlock()
			return nil
		}
		delete(s.mu.held, s.mu.expCmdSN)
		s.acceptLocked(q)
		s.mu.Unlock()
		if err := s.dispatch(ctx, q); err != nil {
			return err
		}
	}
}

// acceptLocked consumes ExpCmdSN for p; SCSI commands occupy a window slot
// until they are answered.
func (s *session) acceptLocked(p *inPDU) {
	s.mu.expCmdSN++
	if p.hdr.opcode() == opSCSICommand {
		s.mu.inflight++
	}
}

func (s *session) dispatch(ctx context.Context, p *inPDU) error {
	switch p.hdr.opcode() {
	case opSCSICommand:
		return s.handleCommand(ctx, p)
	case opNOPOut:
		return s.handleNOPOut(ctx, p)
	case opTextReq:
		return s.handleText(ctx, p)
	case opTaskMgmt:
		return s.handleTaskMgmt(ctx, p)
	case opLogoutReq:
		var r logoutRequest
		r.unmarshal(&p.hdr)
		p.free()
		s.logout = &r
		return errLogout
	}
	p.free()
	return nil
}

// sendControl queues a PDU the reader produced, waiting for a control slot.
func (s *session) sendControl(ctx context.Context, o *outPDU) error {
	select {
	case s.ctrl <- struct{}{}:
	case <-ctx.Done():
		release(o)
		return ctx.Err()
	}
	prev := o.done
	o.done = func() {
		if prev != nil {
			prev()
		}
		<-s.ctrl
	}
	s.w.enqueue(o)
	return nil
}

// reject answers a PDU with a Reject carrying its header.
func (s *session) reject(ctx context.Context, h *header, reason uint8) error {
	o := newOutPDU()
	r := rejectPDU{Reason: reason}
	r.marshal(&o.hdr)
	o.sn = snAdvance
	o.data = append(make([]byte, 0, bhsLen), h[:]...)
	return s.sendControl(ctx, o)
}

func (s *session) handleNOPOut(ctx context.Context, p *inPDU) error {
	var n nopOut
	n.unmarshal(&p.hdr)
	if n.ITT == reservedTag {
		// An answer to a NOP-In ping, or a bare CmdSN update: no reply.
		p.free()
		return nil
	}
	s.log.Debug("iscsi NOP-Out ping", "itt", n.ITT, "immediate", n.Immediate, "cmdsn", n.CmdSN)
	o := newOutPDU()
	r := nopIn{LUN: n.LUN, ITT: n.ITT, TTT: reservedTag}
	r.marshal(&o.hdr)
	o.sn = snAdvance
	if len(p.data) > 0 {
		data := p.data
		o.data = data[:min(len(data), int(s.initiatorRecvDSL.Load()))]
		o.rel = dataRelease{buf: data}
	}
	return s.sendControl(ctx, o)
}

// handleText answers a Text Request in full feature phase: SendTargets and
// a redeclared MaxRecvDataSegmentLength. Long requests and responses span
// several PDUs with the C bit and a Target Transfer Tag.
func (s *session) handleText(ctx context.Context, p *inPDU) error {
	var r textRequest
	r.unmarshal(&p.hdr)
	data := p.data
	defer p.free()
	st := &s.text

	if r.TTT != reservedTag {
		switch {
		case st.out != nil && r.TTT == st.outTTT && r.ITT == st.itt:
			return s.sendTextChunk(ctx, &r)
		case st.in != nil && r.TTT == st.inTTT && r.ITT == st.itt:
			st.in = append(st.in, data...)
		default:
			*st = textState{}
			return s.reject(ctx, &p.hdr, rejectInvalidPDUField)
		}
	} else {
		*st = textState{itt: r.ITT, in: append([]byte(nil), data...)}
	}
	if len(st.in) > maxTextLen {
		*st = textState{}
		return s.reject(ctx, &p.hdr, rejectProtocolError)
	}
	if r.Continue {
		st.inTTT = s.newTTT()
		return s.sendTextResponse(ctx, &r, nil, false, st.inTTT)
	}
	pairs, err := parseText(st.in)
	st.in = nil
	if err != nil {
		*st = textState{}
		return s.reject(ctx, &p.hdr, rejectProtocolError)
	}
	var out []textPair
	for _, kv := range pairs {
		switch kv.key {
		case "SendTargets":
			out = append(out, s.srv.sendTargets(kv.value, s.target, s.initiator, portalAddress(s.conn.nc.LocalAddr()))...)
		case "MaxRecvDataSegmentLength":
			v, ok := parseNumber(kv.value)
			if !ok || v < 512 || v > maxDSL {
				out = append(out, textPair{kv.key, valReject})
				continue
			}
			s.initiatorRecvDSL.Store(uint32(v))
		default:
			if _, lo := operationalKeys[kv.key]; lo {
				// Leading-only keys cannot change after login.
				out = append(out, textPair{kv.key, valReject})
			} else {
				out = append(out, textPair{kv.key, valNotUnderstood})
			}
		}
	}
	st.out = encodeText(out)
	st.itt = r.ITT
	return s.sendTextChunk(ctx, &r)
}

// sendTextChunk sends as much of the pending response text as the
// initiator accepts in one PDU.
func (s *session) sendTextChunk(ctx context.Context, r *textRequest) error {
	st := &s.text
	lim := int(s.initiatorRecvDSL.Load())
	chunk := st.out
	if len(chunk) > lim {
		chunk = chunk[:lim]
		st.out = st.out[lim:]
		st.outTTT = s.newTTT()
		return s.sendTextResponse(ctx, r, chunk, false, st.outTTT)
	}
	*st = textState{}
	return s.sendTextResponse(ctx, r, chunk, true, reservedTag)
}

func (s *session) sendTextResponse(ctx context.Context, r *textRequest, data []byte, final bool, ttt uint32) error {
	o := newOutPDU()
	resp := textResponse{Final: final, Continue: !final && len(data) > 0, LUN: r.LUN, ITT: r.ITT, TTT: ttt}
	resp.marshal(&o.hdr)
	o.sn = snAdvance
	o.data = data
	return s.sendControl(ctx, o)
}

// portalAddress formats the local address of a connection as a
// TargetAddress value with portal group tag 1.
func portalAddress(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String() + ",1"
	}
	port := strconv.Itoa(ta.Port)
	if v4 := ta.IP.To4(); v4 != nil {
		return v4.String() + ":" + port + ",1"
	}
	return "[" + ta.IP.String() + "]:" + port + ",1"
}

func (s *session) newTTT() uint32 {
	for {
		if v := s.nextTTT.Add(1); v != reservedTag {
			return v
		}
	}
}

func (s *session) sendLogoutResponse() {
	r := logoutResponse{ITT: s.logout.ITT}
	switch s.logout.Reason {
	case logoutCloseSession:
	case logoutCloseConnection:
		if s.logout.CID != s.cid {
			r.Response = logoutRespNoCID
		}
	default:
		r.Response = logoutRespNoRecovery
	}
	o := newOutPDU()
	r.marshal(&o.hdr)
	o.sn = snAdvance
	s.w.enqueue(o)
}

// handleTaskMgmt starts a task management function. It runs in its own
// goroutine because aborting waits for the affected commands to end.
func (s *session) handleTaskMgmt(ctx context.Context, p *inPDU) error {
	var r taskMgmtRequest
	r.unmarshal(&p.hdr)
	p.free()
	s.tasks.Add(1)
	go func() {
		defer s.tasks.Done()
		resp, after := s.taskManagement(&r)
		o := newOutPDU()
		m := taskMgmtResponse{Response: resp, ITT: r.ITT}
		m.marshal(&o.hdr)
		o.sn = snAdvance
		o.done = after
		_ = s.sendControl(ctx, o)
	}()
	return nil
}

// taskManagement performs a task management function and returns the
// response code and, for a cold reset, what to do once it is sent. Unit
// attentions are established before the response goes out, so the next
// command of every affected I_T nexus sees them: COMMANDS CLEARED BY
// ANOTHER INITIATOR after CLEAR TASK SET for the other nexuses that lost
// commands, BUS DEVICE RESET FUNCTION OCCURRED after LUN RESET and POWER ON,
// RESET, OR BUS DEVICE RESET OCCURRED after TARGET WARM RESET (a hard
// reset, for which SAM-5 allows the generic code) for every nexus, the
// issuer's included. Both resets end RESERVE(6)/(10) reservations;
// persistent reservations stay. A cold reset closes every connection of
// the target, so no nexus is left to notify.
func (s *session) taskManagement(r *taskMgmtRequest) (uint8, func()) {
	lun, ok := lunFromWire(r.LUN)
	lunOK := ok && lun == 0 && !s.discovery
	switch r.Function {
	case tmfAbortTask:
		s.mu.Lock()
		t := s.mu.tasks[r.RefTaskTag]
		s.mu.Unlock()
		if t == nil || !t.abort() {
			return tmfRespNoTask, nil
		}
		t.wait()
		return tmfRespComplete, nil
	case tmfAbortTaskSet:
		if !lunOK {
			return tmfRespNoLUN, nil
		}
		s.abortAll()
		return tmfRespComplete, nil
	case tmfClearTaskSet, tmfLUNReset, tmfTargetWarmReset, tmfTargetColdReset:
		if !lunOK && r.Function != tmfTargetWarmReset && r.Function != tmfTargetColdReset {
			return tmfRespNoLUN, nil
		}
		if s.target == nil {
			return tmfRespNotSupported, nil
		}
		others := s.srv.targetSessions(s.target)
		for _, o := range others {
			n := o.abortAll()
			switch {
			case r.Function == tmfClearTaskSet && n > 0 && o != s:
				o.ua.add(ascCommandsCleared)
			case r.Function == tmfLUNReset:
				o.ua.add(ascBusDeviceReset)
			case r.Function == tmfTargetWarmReset:
				o.ua.add(ascReset)
			}
		}
		if r.Function != tmfClearTaskSet {
			s.lu.reset()
		}
		if r.Function == tmfTargetColdReset {
			// A cold reset drops every connection of the target, this one
			// after its response is on the wire.
			for _, o := range others {
				if o != s {
					o.conn.close()
				}
			}
			return tmfRespComplete, s.conn.close
		}
		return tmfRespComplete, nil
	case tmfTaskReassign:
		return 4, nil // task allegiance reassignment needs ErrorRecoveryLevel 2
	}
	return tmfRespNotSupported, nil
}

// maxIdleWorkers bounds the worker goroutines of a session that wait for
// a command; more run while more commands are in flight.
const maxIdleWorkers = 32

// start runs a command on an idle worker, or on a new one.
func (s *session) start(t *task) {
	s.tasks.Add(1)
	select {
	case s.work <- t:
	default:
		s.workers.Add(1)
		go s.worker(t)
	}
}

// worker runs commands until there are enough idle workers or the session
// ends.
func (s *session) worker(t *task) {
	defer s.workers.Done()
	for {
		t.run()
		if s.idle.Add(1) > maxIdleWorkers {
			s.idle.Add(-1)
			return
		}
		select {
		case t = <-s.work:
			s.idle.Add(-1)
		case <-s.quit:
			s.idle.Add(-1)
			return
		}
	}
}

// abortAll aborts every command of the session, waits until they ended
// and returns how many it aborted.
func (s *session) abortAll() int {
	s.mu.Lock()
	ts := make([]*task, 0, len(s.mu.tasks))
	for _, t := range s.mu.tasks {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	n := 0
	for _, t := range ts {
		if t.abort() {
			t.wait()
			n++
		}
	}
	return n
}

// deliver applies the events of a command to the sessions of the target
// whose I_T nexus they name: a unit attention, and for PREEMPT AND ABORT
// the abort of their commands (the issuing session's own excepted).
func (s *session) deliver(events []nexusEvent) {
	for _, o := range s.srv.targetSessions(s.target) {
		for _, e := range events {
			if e.nexus != o.nexus {
				continue
			}
			o.ua.add(e.asc)
			if e.abort && o != s {
				o.abortAll()
			}
		}
	}
}
