package iscsi

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// task is one SCSI command in flight. The reader goroutine creates it and
// feeds it Data-Out; the task's goroutine waits for its data, executes it
// against the logical unit and queues the response.
//
// A task is also the context of its command's back-end calls: it is done
// when the command is aborted, which the session does to every command
// when it ends. One allocation, the task itself, carries a command from
// its SCSI Command PDU to its response; conditions are signalled through
// cond, and channels are made only for callers that ask for them.
type task struct {
	s         *session
	parent    context.Context // the session's: values only
	itt       uint32
	lun       uint64 // LUN field as received, echoed in Data-In and R2T
	immediate bool
	edtl      uint32
	cmd       scsiCmd

	// Write data; set before the goroutine starts, then fixed.
	xfer       uint32 // Data-Out bytes kept: min(EDTL, CDB length)
	unsolLimit uint32 // end of the unsolicited data the initiator may send
	hasData    bool   // the command takes Data-Out (xfer > 0)

	cond sync.Cond // on mu: data phase progress, abort
	mu   struct {
		sync.Mutex
		aborted  bool   // no response will be sent
		answered bool   // the response is queued
		exited   bool   // the goroutine has ended
		failed   *sense // the data phase broke the sequence rules
		// digestErr: a Data-Out failed its data digest; the data phase
		// runs to its end, then the command ends with CHECK CONDITION.
		digestErr bool
		buf       []byte
		early     []byte // unsolicited data received before buf was granted
		ready     bool   // buf is allocated; R2Ts may go out
		received  uint32 // bytes of [0, xfer) received
		complete  bool   // all data arrived, or the data phase failed
		// unsolicited sequence
		unsolNext   uint32
		unsolDataSN uint32
		unsolDone   bool
		// solicited sequences
		r2ts    []r2tState
		nextR2T uint32
		r2tSN   uint32
		// context
		doneCh     chan struct{} // Done(), made on first use
		exitedCh   chan struct{} // closed when the goroutine ends, made by wait
		afterFuncs map[*afterFunc]struct{}
	}
}

// afterFunc is a function registered with task.AfterFunc.
type afterFunc struct{ f func() }

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

	t := &task{
		s:         s,
		parent:    ctx,
		itt:       cmd.ITT,
		lun:       cmd.LUN,
		immediate: cmd.Immediate,
		edtl:      cmd.EDTL,
	}
	t.cond.L = &t.mu.Mutex
	c := &t.cmd
	lun, ok := lunFromWire(cmd.LUN)
	if sn := s.lu.decodeInto(c, cdb, ok && lun == 0, cmd.EDTL); sn != nil {
		s.finishCmd(cmd.Immediate)
		s.sendResult(&cmd, nil, 0, check(sn), dataRelease{})
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
					s.sendResult(&cmd, nil, 0, check(ua), dataRelease{})
					return nil
				}
				c.pending = ua
			}
		}
	}

	if c.dir == dirOut {
		t.xfer = min(cmd.EDTL, c.outLen)
	}
	s.mu.Lock()
	if _, dup := s.mu.tasks[cmd.ITT]; dup || s.mu.closing {
		s.mu.Unlock()
		s.finishCmd(cmd.Immediate)
		return s.reject(ctx, &p.hdr, rejectTaskInProgress)
	}
	s.mu.tasks[cmd.ITT] = t
	s.mu.Unlock()

	if t.xfer > 0 {
		t.startData(&cmd, imm)
		imm = nil // startData owns it
	}
	s.start(t)
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
	t.hasData = true
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
	t.cond.Broadcast()
	t.mu.nextR2T = min(t.mu.unsolNext, t.xfer)
	t.issueR2TsLocked()
}

func (t *task) checkCompleteLocked() {
	if !t.mu.complete && t.mu.received == t.xfer {
		t.mu.complete = true
		t.cond.Broadcast()
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
		if t.mu.r2ts == nil {
			t.mu.r2ts = make([]r2tState, 0, min(s.params.MaxOutstandingR2T, (t.xfer-t.mu.nextR2T+n-1)/n))
		}
		r := r2tState{ttt: s.newTTT(), next: t.mu.nextR2T, end: t.mu.nextR2T + n}
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
//
// A Data-Out whose data fails its digest is rejected with reason 0x02 and
// its bytes are not used (RFC 7143 7.8): the Reject is queued before
// anything else of the task, the sequence goes on as if the PDU had
// arrived, and once the last expected Data-Out is in, the task ends with
// CHECK CONDITION, ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR without
// reaching the back end. ErrorRecoveryLevel 0 has no recovery R2T.
func (s *session) handleDataOut(ctx context.Context, h *header, dlen int) error {
	var d dataOut
	d.unmarshal(h)
	br := s.conn.br
	s.mu.Lock()
	t := s.mu.tasks[d.ITT]
	s.mu.Unlock()
	if t == nil || !t.hasData {
		err := s.dg.readData(br, nil, dlen)
		if errors.Is(err, ErrDataDigest) {
			s.log.Warn("iscsi data digest error on Data-Out of no task; rejected", "itt", d.ITT, "err", err)
			return s.reject(ctx, h, rejectDataDigest)
		}
		return err
	}
	dst, ok := t.acceptData(&d, uint32(dlen))
	err := s.dg.readData(br, dst, dlen)
	bad := errors.Is(err, ErrDataDigest)
	if err != nil && !bad {
		return err
	}
	if bad {
		s.log.Warn("iscsi data digest error on Data-Out; rejected, the command will end with CHECK CONDITION", "itt", d.ITT, "offset", d.BufferOffset, "err", err)
		if err := s.reject(ctx, h, rejectDataDigest); err != nil {
			return err
		}
	}
	if ok {
		t.dataArrived(&d, uint32(dlen), uint32(len(dst)), bad)
	}
	return nil
}

// acceptData validates a Data-Out against the task's state and returns
// where its bytes go (the part below xfer; the rest is discarded). A
// Data-Out that breaks the sequence rules (offset, DataSN, TTT, length)
// fails the task: it ends with CHECK CONDITION, ABORTED COMMAND, and the
// rest of its data is discarded. The connection stays up, as a digest
// error would leave it at ErrorRecoveryLevel 0.
func (t *task) acceptData(d *dataOut, n uint32) ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.failed != nil || t.mu.aborted {
		return nil, false
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
			return nil, true
		default:
			keep := min(n, t.xfer-off)
			if t.mu.ready {
				return t.mu.buf[off : off+keep], true
			}
			return t.mu.early[off : off+keep], true
		}
		return nil, false
	}
	var r *r2tState
	if i := t.r2tIndexLocked(d.TTT); i >= 0 {
		r = &t.mu.r2ts[i]
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
		return t.mu.buf[off : off+n], true
	}
	return nil, false
}

// r2tIndexLocked returns the index of the outstanding R2T with the given
// tag, or -1.
func (t *task) r2tIndexLocked(ttt uint32) int {
	for i := range t.mu.r2ts {
		if t.mu.r2ts[i].ttt == ttt {
			return i
		}
	}
	return -1
}

// failLocked ends the data phase of the task with an error; the goroutine
// answers CHECK CONDITION with the given ABORTED COMMAND sense.
func (t *task) failLocked(asc uint16, why string) {
	t.s.log.Info("iscsi Data-Out sequence error; command terminated", "itt", t.itt, "err", why)
	t.mu.failed = newSense(senseAbortedCommand, asc)
	t.mu.unsolDone = true
	t.mu.complete = true
	t.cond.Broadcast()
}

// dataArrived records a placed Data-Out and moves the transfer on. With
// badDigest the bytes placed are not the initiator's: the task is marked
// before its data can be complete, so it never executes.
func (t *task) dataArrived(d *dataOut, n, kept uint32, badDigest bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.failed != nil || t.mu.aborted {
		return
	}
	if badDigest {
		t.mu.digestErr = true
	}
	if d.TTT == reservedTag {
		t.mu.unsolNext += n
		t.mu.unsolDataSN++
		t.mu.received += kept
		if d.Final || t.mu.unsolNext == t.unsolLimit {
			t.endUnsolicitedLocked()
		}
	} else if i := t.r2tIndexLocked(d.TTT); i >= 0 {
		r := &t.mu.r2ts[i]
		r.next += n
		r.dataSN++
		t.mu.received += n
		if r.next == r.end {
			t.mu.r2ts = append(t.mu.r2ts[:i], t.mu.r2ts[i+1:]...)
			t.issueR2TsLocked()
		}
	}
	t.checkCompleteLocked()
}

// abort stops the task without a response: its context is cancelled and
// its waits end. It returns false when the response is already queued, so
// the task cannot be aborted any more.
func (t *task) abort() bool {
	t.mu.Lock()
	if t.mu.answered {
		t.mu.Unlock()
		return false
	}
	t.cancelLocked()
	t.mu.Unlock()
	return true
}

// cancelLocked marks the task aborted and cancels its context.
func (t *task) cancelLocked() {
	if t.mu.aborted {
		return
	}
	t.mu.aborted = true
	t.cond.Broadcast()
	if t.mu.doneCh != nil {
		close(t.mu.doneCh)
	}
	for a := range t.mu.afterFuncs {
		go a.f()
	}
	t.mu.afterFuncs = nil
}

// wait returns once the task's goroutine has ended.
func (t *task) wait() {
	t.mu.Lock()
	if t.mu.exited {
		t.mu.Unlock()
		return
	}
	if t.mu.exitedCh == nil {
		t.mu.exitedCh = make(chan struct{})
	}
	ch := t.mu.exitedCh
	t.mu.Unlock()
	<-ch
}

// Deadline is part of context.Context: a command has none of its own.
func (t *task) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done is part of context.Context: closed when the command is aborted.
func (t *task) Done() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.doneCh == nil {
		t.mu.doneCh = make(chan struct{})
		if t.mu.aborted {
			close(t.mu.doneCh)
		}
	}
	return t.mu.doneCh
}

// Err is part of context.Context.
func (t *task) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.aborted {
		return context.Canceled
	}
	return nil
}

// Value is part of context.Context: the session's values.
func (t *task) Value(key any) any { return t.parent.Value(key) }

// AfterFunc arranges for f to run in its own goroutine when the command is
// aborted. The context package uses it for contexts derived from a task,
// which then need no goroutine of their own to follow it.
func (t *task) AfterFunc(f func()) (stop func() bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.aborted {
		go f()
		return func() bool { return false }
	}
	a := &afterFunc{f: f}
	if t.mu.afterFuncs == nil {
		t.mu.afterFuncs = make(map[*afterFunc]struct{})
	}
	t.mu.afterFuncs[a] = struct{}{}
	return func() bool {
		t.mu.Lock()
		defer t.mu.Unlock()
		_, ok := t.mu.afterFuncs[a]
		delete(t.mu.afterFuncs, a)
		return ok
	}
}

// acquire takes n bytes of the session's buffer budget, waiting if need be
// until the command is aborted.
func (t *task) acquire(n int64) bool {
	if t.s.budget.TryAcquire(n) {
		return true
	}
	return t.s.budget.Acquire(t, n) == nil
}

// run carries out the command on a worker goroutine.
func (t *task) run() {
	s := t.s
	defer s.tasks.Done()
	defer func() {
		t.mu.Lock()
		t.mu.exited = true
		if t.mu.exitedCh != nil {
			close(t.mu.exitedCh)
		}
		t.mu.Unlock()
	}()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("iscsi command panic", "panic", r, "stack", string(debug.Stack()))
			s.conn.close()
		}
		t.mu.Lock()
		gone := !t.mu.answered
		if gone {
			t.cancelLocked()
		}
		t.mu.Unlock()
		if gone {
			s.removeTask(t)
		}
	}()

	c := &t.cmd
	var out []byte
	if t.xfer > 0 {
		var ok bool
		if out, ok = t.waitData(); !ok {
			return
		}
		defer s.budget.Release(int64(t.xfer))
		t.mu.Lock()
		failed := t.mu.failed
		if failed == nil && t.mu.digestErr {
			failed = newSense(senseAbortedCommand, ascProtocolCRCError)
		}
		t.mu.Unlock()
		if failed != nil {
			// The buffer may still be written by stray Data-Out; it is not
			// reused.
			t.respond(check(failed), dataRelease{})
			return
		}
	}
	var in []byte
	if c.inLen > 0 {
		if !t.acquire(int64(c.inLen)) {
			return
		}
		in = getBuf(int(c.inLen))
	}
	start := time.Now()
	res := s.lu.execute(t, c, out, in)
	if observe := s.srv.cfg.Observe; observe != nil {
		observe(c.spec.name, res.status, time.Since(start))
	}
	if len(res.events) > 0 {
		s.deliver(res.events)
	}
	if out != nil {
		putBuf(out)
	}
	var rel dataRelease
	if in != nil {
		rel = dataRelease{buf: in, budget: s.budget, n: int64(c.inLen)}
	}
	if t.Err() != nil {
		// Aborted or the connection is closing: no response.
		rel.run()
		return
	}
	t.respond(res, rel)
}

// waitData obtains the data buffer (budget permitting) and waits until all
// write data has arrived. On false the task was aborted; any budget taken
// is given back.
func (t *task) waitData() ([]byte, bool) {
	s := t.s
	t.mu.Lock()
	ready := t.mu.ready
	t.mu.Unlock()
	if !ready {
		if !t.acquire(int64(t.xfer)) {
			return nil, false
		}
		// The early buffer is written by the reader until the unsolicited
		// sequence ends; only then may it be copied.
		t.mu.Lock()
		for !t.mu.unsolDone && !t.mu.aborted {
			t.cond.Wait()
		}
		aborted := t.mu.aborted
		t.mu.Unlock()
		if aborted {
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
	t.mu.Lock()
	defer t.mu.Unlock()
	for !t.mu.complete && !t.mu.aborted {
		t.cond.Wait()
	}
	if t.mu.aborted {
		// The reader may still be placing data in the buffer; it is left
		// to the garbage collector rather than reused.
		s.budget.Release(int64(t.xfer))
		return nil, false
	}
	return t.mu.buf[:t.xfer], true
}

// respond queues the task's response unless it was aborted.
func (t *task) respond(res result, rel dataRelease) {
	t.mu.Lock()
	if t.mu.aborted {
		t.mu.Unlock()
		rel.run()
		return
	}
	t.mu.answered = true
	r2ts := t.mu.r2tSN
	t.mu.Unlock()
	t.s.removeTask(t)
	cmd := scsiCommand{ITT: t.itt, LUN: t.lun, EDTL: t.edtl}
	t.s.sendResult(&cmd, &t.cmd, r2ts, res, rel)
}

// dataRelease gives back a Data-In buffer and its share of the session's
// budget once the PDUs that carry it are sent or dropped.
type dataRelease struct {
	buf    []byte
	budget *semaphore.Weighted
	n      int64
}

func (r dataRelease) run() {
	if r.buf != nil {
		putBuf(r.buf)
	}
	if r.budget != nil {
		r.budget.Release(r.n)
	}
}

// sendResult queues the Data-In PDUs and status of a command. Data is cut
// to the initiator's MaxRecvDataSegmentLength per PDU and MaxBurstLength per
// sequence; GOOD status rides on the last Data-In (S bit), anything else
// goes in a SCSI Response with the sense data. release runs once the PDUs
// are sent or dropped.
func (s *session) sendResult(cmd *scsiCommand, c *scsiCmd, r2ts uint32, res result, rel dataRelease) {
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
	var small [8]*outPDU
	pdus := small[:0]
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
	pdus[len(pdus)-1].rel = rel
	s.w.enqueue(pdus...)
}
