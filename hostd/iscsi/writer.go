package iscsi

import (
	"net"
	"sync"
	"time"
)

// writeTimeout bounds one batched write to the initiator. An initiator that
// reads nothing for this long loses its connection; until then the data it
// has not read stays bounded by the command window and the session's
// buffer budget.
const writeTimeout = 60 * time.Second

// snMode says how the writer fills the StatSN field of a PDU.
type snMode uint8

const (
	snNone    snMode = iota // field reserved (Data-In without status)
	snCurrent               // next StatSN, not advanced (R2T, unsolicited NOP-In)
	snAdvance               // this PDU consumes a StatSN (responses)
)

// outPDU is one PDU queued for sending. data is not copied: its owner keeps
// it alive until done runs.
type outPDU struct {
	hdr  header
	hdig [4]byte // header digest, when header digests are on
	ddig [4]byte // data digest, when data digests are on
	data []byte
	sn   snMode
	rel  dataRelease // buffer and budget to give back once written or dropped
	done func()      // runs once the PDU was written or dropped; may be nil
}

var outPDUPool = sync.Pool{New: func() any { return new(outPDU) }}

func newOutPDU() *outPDU {
	p := outPDUPool.Get().(*outPDU)
	*p = outPDU{}
	return p
}

// windowFunc returns the ExpCmdSN and MaxCmdSN to stamp on outgoing PDUs.
type windowFunc func() (expCmdSN, maxCmdSN uint32)

// writer is the single sender of a connection. Any goroutine queues PDUs;
// the writer goroutine stamps sequence numbers at send time, so StatSN
// follows the order of the wire, and sends batches with one writev.
type writer struct {
	nc     net.Conn
	window windowFunc
	dg     digests
	wake   chan struct{}
	exited chan struct{}
	statSN uint32 // owned by the writer goroutine
	// iov is the vector of the batch being written, owned by the writer
	// goroutine; WriteTo consumes it, and as a field it needs no
	// allocation per batch.
	iov net.Buffers

	mu struct {
		sync.Mutex
		queue   []*outPDU
		closing bool // no more PDUs will be queued; exit once drained
		failed  bool // a write failed; queued PDUs are dropped
	}
}

func newWriter(nc net.Conn, statSN uint32, window windowFunc, dg digests) *writer {
	return &writer{
		nc:     nc,
		window: window,
		dg:     dg,
		statSN: statSN,
		wake:   make(chan struct{}, 1),
		exited: make(chan struct{}),
	}
}

// enqueue queues PDUs in order. It never blocks. After a write failure or
// close the PDUs are dropped and their done functions run at once.
func (w *writer) enqueue(ps ...*outPDU) {
	w.mu.Lock()
	if w.mu.failed || w.mu.closing {
		w.mu.Unlock()
		for _, p := range ps {
			release(p)
		}
		return
	}
	w.mu.queue = append(w.mu.queue, ps...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// close makes the writer exit after sending what is queued, and waits.
func (w *writer) close() {
	w.mu.Lock()
	w.mu.closing = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	<-w.exited
}

func release(p *outPDU) {
	p.rel.run()
	if p.done != nil {
		p.done()
	}
	*p = outPDU{}
	outPDUPool.Put(p)
}

// maxBatch bounds the PDUs of one writev.
const maxBatch = 64

func (w *writer) run() {
	defer close(w.exited)
	var batch []*outPDU
	// At most five pieces per PDU: header, header digest, data, padding,
	// data digest.
	bufs := make(net.Buffers, 0, 5*maxBatch)
	for {
		w.mu.Lock()
		for len(w.mu.queue) == 0 && !w.mu.closing {
			w.mu.Unlock()
			<-w.wake
			w.mu.Lock()
		}
		if len(w.mu.queue) == 0 { // closing and drained
			w.mu.Unlock()
			return
		}
		n := min(len(w.mu.queue), maxBatch)
		batch = append(batch[:0], w.mu.queue[:n]...)
		rest := copy(w.mu.queue, w.mu.queue[n:])
		clear(w.mu.queue[rest:])
		w.mu.queue = w.mu.queue[:rest]
		w.mu.Unlock()

		exp, maxSN := w.window()
		bufs = bufs[:0]
		for _, p := range batch {
			switch p.sn {
			case snNone:
				p.hdr.setSN(0, exp, maxSN)
			case snCurrent:
				p.hdr.setSN(w.statSN, exp, maxSN)
			case snAdvance:
				p.hdr.setSN(w.statSN, exp, maxSN)
				w.statSN++
			}
			p.hdr.setDataLength(len(p.data))
			bufs = append(bufs, p.hdr[:])
			// The digests are computed here, after the sequence numbers
			// are stamped; target PDUs carry no AHS.
			if w.dg.header {
				putDigest(p.hdig[:], headerSum(&p.hdr, nil))
				bufs = append(bufs, p.hdig[:])
			}
			if len(p.data) > 0 {
				bufs = append(bufs, p.data)
				if pad := padLen(len(p.data)); pad > 0 {
					bufs = append(bufs, zeroPad[:pad])
				}
				if w.dg.data {
					putDigest(p.ddig[:], dataSum(p.data))
					bufs = append(bufs, p.ddig[:])
				}
			}
		}
		_ = w.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		w.iov = bufs
		_, err := w.iov.WriteTo(w.nc)
		w.iov = nil
		for i, p := range batch {
			release(p)
			batch[i] = nil
		}
		if err != nil {
			w.fail()
			return
		}
	}
}

// fail drops everything queued and refuses further PDUs. The connection is
// closed so that the reader notices.
func (w *writer) fail() {
	_ = w.nc.Close()
	w.mu.Lock()
	w.mu.failed = true
	q := w.mu.queue
	w.mu.queue = nil
	w.mu.Unlock()
	for _, p := range q {
		release(p)
	}
}
