package iscsi

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// testInitiator is a minimal iSCSI initiator built on the package's own PDU
// codec, for tests that need to see individual PDUs.
type testInitiator struct {
	t         testing.TB
	nc        net.Conn
	br        *bufio.Reader
	cmdSN     uint32
	expStatSN uint32
	itt       uint32
	recvDSL   int               // our MaxRecvDataSegmentLength
	keys      map[string]string // the target's login answers
	isid      [6]byte
	tsih      uint16
	expCmdSN  uint32
	maxCmdSN  uint32
	dg        digests // in force after a login that negotiated them
}

func dialInitiator(t testing.TB, addr string) *testInitiator {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	n := isidCounter.Add(1)
	return &testInitiator{t: t, nc: nc, br: bufio.NewReader(nc), recvDSL: 8192, cmdSN: 1,
		isid: [6]byte{0x80, 0x12, 0x34, 0x56, byte(n >> 8), byte(n)}}
}

// isidCounter gives every test initiator its own ISID, so that sessions of
// one test do not reinstate each other.
var isidCounter atomic.Uint32

// send writes one PDU.
func (c *testInitiator) send(h *header, data []byte) {
	c.t.Helper()
	if err := c.trySend(h, data); err != nil {
		c.t.Fatalf("send %s: %v", h.opcode(), err)
	}
}

func (c *testInitiator) trySend(h *header, data []byte) error {
	_, err := c.nc.Write(c.dg.appendPDU(nil, h, nil, data))
	return err
}

// recv reads one PDU, failing the test after a timeout.
func (c *testInitiator) recv() decodedPDU {
	c.t.Helper()
	d, err := c.tryRecv(10 * time.Second)
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return d
}

func (c *testInitiator) tryRecv(timeout time.Duration) (decodedPDU, error) {
	_ = c.nc.SetReadDeadline(time.Now().Add(timeout))
	var h header
	ahs := make([]byte, maxAHSLen)
	ahsOut, n, err := c.dg.readHeader(c.br, &h, ahs, 1<<24)
	if err != nil {
		return decodedPDU{}, err
	}
	data := make([]byte, n)
	if err := c.dg.readData(c.br, data, n); err != nil {
		return decodedPDU{}, err
	}
	raw := append(append(append([]byte(nil), h[:]...), ahsOut...), data...)
	raw = append(raw, zeroPad[:padLen(n)]...)
	d, _, err := decodePDU(raw, 1<<24)
	if err != nil {
		return d, err
	}
	switch {
	case h.opcode() == opR2T:
	case h.opcode() == opDataIn && h[1]&0x01 == 0:
	default:
		// Every other target PDU carries a StatSN.
		c.expStatSN = be32(h[24:]) + 1
	}
	c.expCmdSN, c.maxCmdSN = be32(h[28:]), be32(h[32:])
	return d, nil
}

func (c *testInitiator) nextITT() uint32 {
	c.itt++
	return c.itt
}

// login performs a one-PDU login straight into full feature phase with the
// given keys and returns the response and its keys.
func (c *testInitiator) login(pairs ...textPair) (*loginResponse, map[string]string) {
	c.t.Helper()
	req := loginRequest{Transit: true, CSG: stageOperational, NSG: stageFullFeature, ISID: c.isid, TSIH: c.tsih, ITT: c.nextITT(), CmdSN: c.cmdSN}
	var h header
	req.marshal(&h)
	c.send(&h, encodeText(pairs))
	d := c.recv()
	resp, ok := d.msg.(*loginResponse)
	if !ok {
		c.t.Fatalf("login: got %s", d.op)
	}
	c.expStatSN = resp.StatSN + 1
	kv, err := parseText(d.data)
	if err != nil {
		c.t.Fatalf("login response text: %v", err)
	}
	keys := make(map[string]string)
	for _, p := range kv {
		keys[p.key] = p.value
	}
	if resp.StatusClass == 0 {
		c.keys = keys
		c.tsih = resp.TSIH
		if resp.Transit && resp.NSG == stageFullFeature {
			// Digests start with the first PDU after the final Login
			// Response.
			c.dg = digests{header: keys["HeaderDigest"] == "CRC32C", data: keys["DataDigest"] == "CRC32C"}
		}
	}
	return resp, keys
}

// loginNormal logs in to testIQN with the given extra keys.
func (c *testInitiator) loginNormal(extra ...textPair) map[string]string {
	c.t.Helper()
	pairs := append([]textPair{
		{"InitiatorName", "iqn.2026-01.test:initiator"},
		{"TargetName", testIQN},
		{"SessionType", "Normal"},
		{"MaxRecvDataSegmentLength", strconv.Itoa(c.recvDSL)},
	}, extra...)
	resp, keys := c.login(pairs...)
	if resp.StatusClass != 0 || !resp.Transit || resp.NSG != stageFullFeature {
		c.t.Fatalf("login failed: status 0x%02x%02x, keys %v", resp.StatusClass, resp.StatusDetail, keys)
	}
	return keys
}

// scsiResult is what came back for one command.
type scsiResult struct {
	status   uint8
	sense    []byte
	data     []byte
	resp     *scsiResponse // nil when status came in the final Data-In
	dataIns  []*dataIn
	dataLens []int
	r2ts     []*r2t
	residual uint32
	over     bool
	under    bool
}

func (r *scsiResult) senseKey() (key uint8, asc uint16) {
	if len(r.sense) < 14 {
		return 0, 0
	}
	return r.sense[2] & 0xf, uint16(r.sense[12])<<8 | uint16(r.sense[13])
}

// command runs one SCSI command to completion: immediate data as the
// session allows, Data-Out for every R2T, Data-In collected.
func (c *testInitiator) command(cdb []byte, edtl uint32, out []byte, immediate int) *scsiResult {
	c.t.Helper()
	itt := c.nextITT()
	c.sendCommand(itt, cdb, edtl, out, immediate, true)
	return c.complete(itt, out)
}

func (c *testInitiator) sendCommand(itt uint32, cdb []byte, edtl uint32, out []byte, immediate int, final bool) {
	c.t.Helper()
	if err := c.trySendCommand(itt, cdb, edtl, out, immediate, final); err != nil {
		c.t.Fatalf("send SCSI command: %v", err)
	}
}

func (c *testInitiator) trySendCommand(itt uint32, cdb []byte, edtl uint32, out []byte, immediate int, final bool) error {
	cmd := scsiCommand{Final: final, Read: out == nil && edtl > 0, Write: out != nil, ITT: itt, EDTL: edtl, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN, Attr: 1}
	copy(cmd.CDB[:], cdb)
	c.cmdSN++
	var h header
	cmd.marshal(&h)
	return c.trySend(&h, out[:min(immediate, len(out))])
}

// complete collects the response of itt, answering R2Ts from out.
func (c *testInitiator) complete(itt uint32, out []byte) *scsiResult {
	c.t.Helper()
	res := &scsiResult{}
	for {
		d := c.recv()
		switch m := d.msg.(type) {
		case *dataIn:
			if m.ITT != itt {
				c.t.Fatalf("Data-In for ITT %d while waiting for %d", m.ITT, itt)
			}
			if int(m.BufferOffset) != len(res.data) {
				c.t.Fatalf("Data-In offset %d, expected %d", m.BufferOffset, len(res.data))
			}
			res.data = append(res.data, d.data...)
			res.dataIns = append(res.dataIns, m)
			res.dataLens = append(res.dataLens, len(d.data))
			if m.HasStatus {
				res.status, res.residual, res.over, res.under = m.Status, m.Residual, m.Overflow, m.Underflow
				return res
			}
		case *r2t:
			res.r2ts = append(res.r2ts, m)
			c.answerR2T(m, out, int(m.BufferOffset), int(m.DesiredLength))
		case *scsiResponse:
			if m.ITT != itt {
				c.t.Fatalf("SCSI Response for ITT %d while waiting for %d", m.ITT, itt)
			}
			res.resp = m
			res.status, res.residual, res.over, res.under = m.Status, m.Residual, m.Overflow, m.Underflow
			if len(d.data) >= 2 {
				n := int(be16(d.data))
				res.sense = d.data[2 : 2+n]
			}
			return res
		default:
			c.t.Fatalf("unexpected %s while waiting for ITT %d", d.op, itt)
		}
	}
}

// answerR2T sends the requested range as Data-Out PDUs of at most the
// target's MaxRecvDataSegmentLength.
func (c *testInitiator) answerR2T(r *r2t, out []byte, off, n int) {
	c.t.Helper()
	seg := 8192
	if v, err := strconv.Atoi(c.keys["MaxRecvDataSegmentLength"]); err == nil {
		seg = v
	}
	var sn uint32
	for done := 0; done < n; {
		k := min(seg, n-done)
		d := dataOut{Final: done+k == n, ITT: r.ITT, TTT: r.TTT, ExpStatSN: c.expStatSN, DataSN: sn, BufferOffset: uint32(off + done)}
		var h header
		d.marshal(&h)
		c.send(&h, out[off+done:off+done+k])
		done += k
		sn++
	}
}

// logout closes the session and checks the response.
func (c *testInitiator) logout() {
	c.t.Helper()
	r := logoutRequest{Immediate: true, Reason: logoutCloseSession, ITT: c.nextITT(), CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	var h header
	r.marshal(&h)
	c.send(&h, nil)
	d := c.recv()
	if m, ok := d.msg.(*logoutResponse); !ok || m.Response != logoutRespOK {
		c.t.Fatalf("logout: got %s %+v", d.op, d.msg)
	}
	if _, err := c.tryRecv(5 * time.Second); err == nil {
		c.t.Fatalf("connection still open after logout")
	}
}

// waitClosed reports whether the target closed the connection.
func (c *testInitiator) waitClosed(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		_, err := c.tryRecv(time.Until(deadline))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("connection still open after %v", timeout)
			}
			return nil
		}
	}
	return fmt.Errorf("connection still open after %v", timeout)
}

// CDB builders.

func cdbRead10(lba uint32, blocks uint16) []byte {
	b := make([]byte, 10)
	b[0] = 0x28
	put32(b[2:], lba)
	put16(b[7:], blocks)
	return b
}

func cdbWrite10(lba uint32, blocks uint16, fua bool) []byte {
	b := cdbRead10(lba, blocks)
	b[0] = 0x2a
	if fua {
		b[1] = 0x08
	}
	return b
}

func cdbSyncCache10() []byte { return []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0} }
