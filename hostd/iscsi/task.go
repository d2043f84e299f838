package iscsi

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
)

// task is one SCSI command in flight. The reader goroutine creates it and
// feeds it Data-Out; the task's goroutine waits for its data, executes it
// against the logical unit and queues the response.
type task struct {
	s         *session
	itt       uint32
	lun       uint64 // LUN field as received, echoed in Data-In and R2T
	immediate bool
	edtl      uint32
	cmd       *scsiCmd
	cancel    context.CancelFunc
	done      chan struct{} // closed when the goroutine has exited

	// Write data. dataDone and unsolDoneCh are set before the goroutine
	// starts and never change.
	xfer        uint32        // Data-Out bytes kept: min(EDTL, CDB length)
	unsolLimit  uint32        // end of the unsolicited data the initiator may send
	dataDone    chan struct{} // closed when xfer bytes have arrived
	unsolDoneCh chan struct{} // closed when unsolicited data has ended

	mu struct {
		sync.Mutex
		aborted  bool   // no response will be sent
		answered bool   // the response is queued
		failed   *sense // the data phase broke the sequence rules
		buf      []byte
		early    []byte // unsolicited data received before buf was granted
		ready    bool   // buf is allocated; R2Ts may go out
		received uint32 // bytes of [0, xfer) received
		complete bool
		// unsolicited sequence
		unsolNext   uint32
		unsolDataSN uint32
		unsolDone   bool
		// solicited sequences
		r2ts    []*r2tState
		nextR2T uint32
		r2tSN   uint32
	}
}

// r2tState tracks one outstanding R2T and its Data-Out sequence.
type r2tState struct {
	ttt    uint32
	next   uint32 // next expected buffer offset
	end    uint32
	dataSN uint32
}

// handleCommand starts a SCSI command. Commands the CDB decoder refuses are
// answered at once; the others get a task and a goroutine.
func (s *session) handleCommand(ctx context.Context, p *inPDU) error {
	var cmd scsiCommand
	cmd.unmarshal(&p.hdr)
	imm := p.data
	p.data = nil
	freeImm := func() {
		if imm != nil {
			putBuf(imm)
			imm = nil
		}
	}
	defer freeImm()

	if cmd.Immediate {
		s.mu.Lock()
		full := s.mu.immediate >= maxImmediateCmds
		if !full {
			s.mu.immediate++
		}
		s.mu.Unlock()
		if full {
			return s.reject(ctx, &p.hdr, rejectImmediateFull)
		}
	}
	if s.discovery {
		s.finishCmd(cmd.Immediate)
		return s.reject(ctx, &p.hdr, rejectProtocolError)
	}
	cdb, err := cdbFromAHS(cmd.CDB[:], p.ahs)
	if err != nil {
		s.finishCmd(cmd.Immediate)
		return err
	}
	if len(imm) > 0 {
		switch {
		case !s.params.ImmediateData:
			err = fmt.Errorf("%w: immediate data not negotiated", ErrProtocol)
		case uint32(len(imm)) > cmd.EDTL:
			err = fmt.Errorf("%w: %d bytes of immediate data, EDTL %d", ErrProtocol, len(imm), cmd.EDTL)
		case uint32(len(imm)) > s.params.FirstBurstLength:
			err = fmt.Errorf("%w: %d bytes of immediate data, FirstBurstLength %d", ErrProtocol, len(imm), s.params.FirstBurstLength)
		}
		if err != nil {
			s.finishCmd(cmd.Immediate)
			return err
		}
	}

	lun, ok := lunFromWire(cmd.LUN)
	c, sn := s.lu.decodeCDB(cdb, ok && lun == 0, cmd.EDTL)
	if sn != nil {
		s.finishCmd(cmd.Immediate)
		s.sendResult(&cmd, nil, 0, check(sn), nil)
		return nil
	}
	c.nexus = s.nexus
	// Unit attentions: a capacity change becomes one for every I_T nexus.
	// Each is reported once, on the next command that is not INQUIRY,
	// REPORT LUNS or REQUEST SENSE; REQUEST SENSE returns it as its data
	// (SPC-4 5.14).
	if c.lunOK {
		if epoch := s.lu.capacityEpoch(); epoch != s.capEpoch {
			s.capEpoch = epoch
			s.ua.add(ascCapacityChanged)
		}
		if c.spec.op == 0x03 || !c.spec.anyLUN {
			if asc, ok := s.ua.next(); ok {
				ua := newSense(senseUnitAttention, asc)
				if c.spec.op != 0x03 {
					s.finishCmd(cmd.Immediate)
					s.sendResult(&cmd, nil, 0, check(ua), nil)
					return nil
				}
				c.pending = ua
			}
		}
	}

	t := &task{
		s:         s,
		itt:       cmd.ITT,
		lun:       cmd.LUN,
		immediate: cmd.Immediate,
		edtl:      cmd.EDTL,
		cmd:       c,
		done:      make(chan struct{}),
	}
	if c.dir == dirOut {
		t.xfer = min(cmd.EDTL, c.outLen)
	}
	tctx, cancel := context.WithCancel(ctx)
	t.cancel = cancel
	s.mu.Lock()
	if _, dup := s.mu.tasks[cmd.ITT]; dup || s.mu.closing {
		s.mu.Unlock()
		cancel()
		s.finishCmd(cmd.Immediate)
		return s.reject(ctx, &p.hdr, rejectTaskInProgress)
	}
	s.mu.tasks[cmd.ITT] = t
	s.mu.Unlock()

	if t.xfer > 0 {
		t.startData(&cmd, imm)
		imm = nil // startData owns it
	}
	s.tasks.Add(1)
	go t.run(tctx)
	return nil
}

// finishCmd frees the window slot of a command that is answered or gone.
func (s *session) finishCmd(immediate bool) {
	s.mu.Lock()
	if immediate {
		s.mu.immediate--
	} else {
		s.mu.inflight--
	}
	s.mu.Unlock()
}

// removeTask forgets an answered or aborted task and frees its slot.
func (s *session) removeTask(t *task) {
	s.mu.Lock()
	if s.mu.tasks[t.itt] == t {
		delete(s.mu.tasks, t.itt)
	}
	s.mu.Unlock()
	s.finishCmd(t.immediate)
}

// startData sets up the Data-Out reception of a write, before the task's
// goroutine starts. The immediate data becomes the start of the buffer;
// when the session's buffer budget allows, the full buffer is granted now
// and R2Ts can go out at once.
func (t *task) startData(cmd *scsiCommand, imm []byte) {
	s := t.s
	t.dataDone = make(chan struct{})
	t.unsolDoneCh = make(chan struct{})
	n := uint32(len(imm))
	if s.params.InitialR2T {
		t.unsolLimit = n
	} else {
		t.unsolLimit = max(n, min(s.params.FirstBurstLength, t.edtl))
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case n >= t.xfer && s.budget.TryAcquire(int64(t.xfer)):
		t.mu.buf, t.mu.ready = imm[:t.xfer], true
		imm = nil
	case s.budget.TryAcquire(int64(t.xfer)):
		t.mu.buf, t.mu.ready = getBuf(int(t.xfer)), true
		copy(t.mu.buf, imm)
	default:
		// No budget now: hold the unsolicited part (at most
		// FirstBurstLength) until the goroutine is granted the rest.
		t.mu.early = getBuf(int(min(t.unsolLimit, t.xfer)))
		copy(t.mu.early, imm)
	}
	if imm != nil {
		putBuf(imm)
	}
	t.mu.received = min(n, t.xfer)
	t.mu.unsolNext = n
	if cmd.Final || s.params.InitialR2T || n == t.unsolLimit {
		t.endUnsolicitedLocked()
	}
	t.checkCompleteLocked()
}

func (t *task) endUnsolicitedLocked() {
	if t.mu.unsolDone {
		return
	}
	t.mu.unsolDone = true
	close(t.unsolDoneCh)
	t.mu.nextR2T = min(t.mu.unsolNext, t.xfer)
	t.issueR2TsLocked()
}

func (t *task) checkCompleteLocked() {
	if !t.mu.complete && t.mu.received == t.xfer {
		t.mu.complete = true
		close(t.dataDone)
	}
}

// issueR2TsLocked solicits the data not yet asked for, up to
// MaxOutstandingR2T sequences of at most MaxBurstLength each.
func (t *task) issueR2TsLocked() {
	if !t.mu.ready || !t.mu.unsolDone || t.mu.aborted {
		return
	}
	s := t.s
	for uint32(len(t.mu.r2ts)) < s.params.MaxOutstandingR2T && t.mu.nextR2T < t.xfer {
		n := min(s.params.MaxBurstLength, t.xfer-t.mu.nextR2T)
		r := &r2tState{ttt: s.newTTT(), next: t.mu.nextR2T, end: t.mu.nextR2T + n}
		t.mu.r2ts = append(t.mu.r2ts, r)
		o := newOutPDU()
		p := r2t{LUN: t.lun, ITT: t.itt, TTT: r.ttt, R2TSN: t.mu.r2tSN, BufferOffset: r.next, DesiredLength: n}
		p.marshal(&o.hdr)
		o.sn = snCurrent
		s.w.enqueue(o)
		t.mu.r2tSN++
		t.mu.nextR2T += n
	}
}

// handleDataOut places the data of one Data-Out PDU. Data for a task that
// is gone (answered early or aborted) or that expects none is discarded;
// data that breaks the sequence rules is a protocol error.
func (s *session) handleDataOut(h *header, dlen int) error {
	var d dataOut
	d.unmarshal(h)
	br := s.conn.br
	s.mu.Lock()
	t := s.mu.tasks[d.ITT]
	s.mu.Unlock()
	if t == nil || t.dataDone == nil {
		return discardData(br, dlen)
	}
	dst, r := t.acceptData(&d, uint32(dlen))
	if err := readDataInto(br, dst, dlen); err != nil {
		return err
	}
	t.dataArrived(&d, uint32(dlen), uint32(len(dst)), r)
	return nil
}

// acceptData validates a Data-Out against the task's state and returns
// where its bytes go (the part below xfer; the rest is discarded). A
// Data-Out that breaks the sequence rules (offset, DataSN, TTT, length)
// fails the task: it ends with CHECK CONDITION, ABORTED COMMAND, and the
// rest of its data is discarded. The connection stays up, as a digest
// error would leave it at ErrorRecoveryLevel 0.
func (t *task) acceptData(d *dataOut, n uint32) ([]byte, *r2tState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.failed != nil || t.mu.aborted {
		return nil, nil
	}
	off := d.BufferOffset
	if d.TTT == reservedTag {
		switch {
		case t.mu.unsolDone:
			t.failLocked(ascTooMuchWriteData, "unsolicited Data-Out after the unsolicited sequence ended")
		case off != t.mu.unsolNext:
			t.failLocked(ascDataOffsetError, fmt.Sprintf("Data-Out offset %d, expected %d", off, t.mu.unsolNext))
		case d.DataSN != t.mu.unsolDataSN:
			t.failLocked(ascDataPhaseError, fmt.Sprintf("Data-Out DataSN %d, expected %d", d.DataSN, t.mu.unsolDataSN))
		case uint64(off)+uint64(n) > uint64(t.unsolLimit):
			t.failLocked(ascTooMuchWriteData, "unsolicited data beyond FirstBurstLength or EDTL")
		case off >= t.xfer:
			return nil, nil
		default:
			keep := min(n, t.xfer-off)
			if t.mu.ready {
				return t.mu.buf[off : off+keep], nil
			}
			return t.mu.early[off : off+keep], nil
		}
		return nil, nil
	}
	var r *r2tState
	for _, x := range t.mu.r2ts {
		if x.ttt == d.TTT {
			r = x
		}
	}
	switch {
	case r == nil:
		t.failLocked(ascInvalidTTT, fmt.Sprintf("Data-Out with unknown TTT 0x%x", d.TTT))
	case off != r.next:
		t.failLocked(ascDataOffsetError, fmt.Sprintf("Data-Out offset %d, expected %d", off, r.next))
	case d.DataSN != r.dataSN:
		t.failLocked(ascDataPhaseError, fmt.Sprintf("Data-Out DataSN %d, expected %d", d.DataSN, r.dataSN))
	case uint64(off)+uint64(n) > uint64(r.end):
		t.failLocked(ascTooMuchWriteData, "Data-Out beyond its R2T")
	case d.Final && off+n != r.end:
		t.failLocked(ascDataPhaseError, "Data-Out sequence ended before the R2T was satisfied")
	default:
		return t.mu.buf[off : off+n], r
	}
	return nil, nil
}

// failLocked ends the data phase of the task with an error; the goroutine
// answers CHECK CONDITION with the given ABORTED COMMAND sense.
func (t *task) failLocked(asc uint16, why string) {
	t.s.log.Info("iscsi Data-Out sequence error; command terminated", "itt", t.itt, "err", why)
	t.mu.failed = newSense(senseAbortedCommand, asc)
	if !t.mu.unsolDone {
		t.mu.unsolDone = true
		close(t.unsolDoneCh)
	}
	if !t.mu.complete {
		t.mu.complete = true
		close(t.dataDone)
	}
}

// dataArrived records a placed Data-Out and moves the transfer on.
func (t *task) dataArrived(d *dataOut, n, kept uint32, r *r2tState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.failed != nil || t.mu.aborted {
		return
	}
	if r == nil {
		t.mu.unsolNext += n
		t.mu.unsolDataSN++
		t.mu.received += kept
		if d.Final || t.mu.unsolNext == t.unsolLimit {
			t.endUnsolicitedLocked()
		}
	} else {
		r.next += n
		r.dataSN++
		t.mu.received += n
		if r.next == r.end {
			for i, x := range t.mu.r2ts {
				if x == r {
					t.mu.r2ts = append(t.mu.r2ts[:i], t.mu.r2ts[i+1:]...)
					break
				}
			}
			t.issueR2TsLocked()
		}
	}
	t.checkCompleteLocked()
}

// abort stops the task without a response. It returns false when the
// response is already queued, so the task cannot be aborted any more.
func (t *task) abort() bool {
	t.mu.Lock()
	if t.mu.answered {
		t.mu.Unlock()
		return false
	}
	t.mu.aborted = true
	t.mu.Unlock()
	t.cancel()
	return true
}

// run is the task's goroutine.
func (t *task) run(ctx context.Context) {
	s := t.s
	defer s.tasks.Done()
	defer close(t.done)
	defer t.cancel()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("iscsi command panic", "panic", r, "stack", string(debug.Stack()))
			s.conn.close()
		}
		t.mu.Lock()
		gone := !t.mu.answered
		t.mu.aborted = t.mu.aborted || gone
		t.mu.Unlock()
		if gone {
			s.removeTask(t)
		}
	}()

	c := t.cmd
	var out []byte
	if t.xfer > 0 {
		var ok bool
		if out, ok = t.waitData(ctx); !ok {
			return
		}
		defer s.budget.Release(int64(t.xfer))
		t.mu.Lock()
		failed := t.mu.failed
		t.mu.Unlock()
		if failed != nil {
			// The buffer may still be written by stray Data-Out; it is not
			// reused.
			t.respond(check(failed), nil)
			return
		}
	}
	var in []byte
	if c.inLen > 0 {
		if err := s.budget.Acquire(ctx, int64(c.inLen)); err != nil {
			return
		}
		in = getBuf(int(c.inLen))
	}
	res := s.lu.execute(ctx, c, out, in)
	if len(res.events) > 0 {
		s.deliver(res.events)
	}
	if out != nil {
		putBuf(out)
	}
	var releaseIn func()
	if in != nil {
		releaseIn = func() {
			putBuf(in)
			s.budget.Release(int64(c.inLen))
		}
	}
	if ctx.Err() != nil {
		// Aborted or the connection is closing: no response.
		if releaseIn != nil {
			releaseIn()
		}
		return
	}
	t.respond(res, releaseIn)
}

// waitData obtains the data buffer (budget permitting) and waits until all
// write data has arrived. On false the task was cancelled; any budget taken
// is given back.
func (t *task) waitData(ctx context.Context) ([]byte, bool) {
	s := t.s
	t.mu.Lock()
	ready := t.mu.ready
	t.mu.Unlock()
	if !ready {
		if err := s.budget.Acquire(ctx, int64(t.xfer)); err != nil {
			return nil, false
		}
		// The early buffer is written by the reader until the unsolicited
		// sequence ends; only then may it be copied.
		select {
		case <-t.unsolDoneCh:
		case <-ctx.Done():
			s.budget.Release(int64(t.xfer))
			return nil, false
		}
		buf := getBuf(int(t.xfer))
		t.mu.Lock()
		copy(buf, t.mu.early)
		early := t.mu.early
		t.mu.early = nil
		t.mu.buf, t.mu.ready = buf, true
		t.issueR2TsLocked()
		t.mu.Unlock()
		putBuf(early)
	}
	select {
	case <-t.dataDone:
		t.mu.Lock()
		buf := t.mu.buf
		t.mu.Unlock()
		return buf[:t.xfer], true
	case <-ctx.Done():
		// The reader may still be placing data in the buffer; it is left
		// to the garbage collector rather than reused.
		s.budget.Release(int64(t.xfer))
		return nil, false
	}
}

// respond queues the task's response unless it was aborted.
func (t *task) respond(res result, release func()) {
	t.mu.Lock()
	if t.mu.aborted {
		t.mu.Unlock()
		if release != nil {
			release()
		}
		return
	}
	t.mu.answered = true
	r2ts := t.mu.r2tSN
	t.mu.Unlock()
	t.s.removeTask(t)
	cmd := scsiCommand{ITT: t.itt, LUN: t.lun, EDTL: t.edtl}
	t.s.sendResult(&cmd, t.cmd, r2ts, res, release)
}

// sendResult queues the Data-In PDUs and status of a command. Data is cut
// to the initiator's MaxRecvDataSegmentLength per PDU and MaxBurstLength per
// sequence; GOOD status rides on the last Data-In (S bit), anything else
// goes in a SCSI Response with the sense data. release runs once the PDUs
// are sent or dropped.
func (s *session) sendResult(cmd *scsiCommand, c *scsiCmd, r2ts uint32, res result, release func()) {
	var want uint32
	if c != nil {
		switch c.dir {
		case dirIn:
			want = uint32(len(res.data))
		case dirOut:
			want = c.outLen
		}
	}
	edtl := cmd.EDTL
	over, under := want > edtl, want < edtl
	var resid uint32
	if over {
		resid = want - edtl
	} else if under {
		resid = edtl - want
	}
	data := res.data
	if uint32(len(data)) > edtl {
		data = data[:edtl]
	}

	seg := int(s.initiatorRecvDSL.Load())
	burst := int(s.params.MaxBurstLength)
	pdus := make([]*outPDU, 0, len(data)/seg+2)
	var dataSN uint32
	for off := 0; off < len(data); {
		end := min(off+burst, len(data))
		for off < end {
			n := min(seg, end-off)
			d := dataIn{Final: off+n == end, LUN: cmd.LUN, ITT: cmd.ITT, TTT: reservedTag, DataSN: dataSN, BufferOffset: uint32(off)}
			o := newOutPDU()
			o.sn = snNone
			if off+n == len(data) && res.status == statusGood {
				d.HasStatus, d.Status = true, statusGood
				d.Overflow, d.Underflow, d.Residual = over, under, resid
				o.sn = snAdvance
			}
			d.marshal(&o.hdr)
			o.data = data[off : off+n]
			pdus = append(pdus, o)
			off += n
			dataSN++
		}
	}
	if len(data) == 0 || res.status != statusGood {
		r := scsiResponse{Status: res.status, ITT: cmd.ITT, Overflow: over, Underflow: under, Residual: resid, ExpDataSN: dataSN}
		if c != nil && c.dir == dirOut {
			r.ExpDataSN = r2ts
		}
		o := newOutPDU()
		o.sn = snAdvance
		r.marshal(&o.hdr)
		if res.sense != nil {
			sd := res.sense.marshal()
			o.data = make([]byte, 2+len(sd))
			put16(o.data, uint16(len(sd)))
			copy(o.data[2:], sd)
		}
		pdus = append(pdus, o)
	}
	pdus[len(pdus)-1].done = release
	s.w.enqueue(pdus...)
}
