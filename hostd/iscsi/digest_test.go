package iscsi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// crc32cBitwise is CRC32C computed one bit at a time from its definition
// (reflected polynomial 0x82F63B78, initial value and final XOR
// 0xFFFFFFFF), independent of hash/crc32's tables and SSE4.2 code.
func crc32cBitwise(b []byte) uint32 {
	crc := ^uint32(0)
	for _, c := range b {
		crc ^= uint32(c)
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0x82f63b78
			} else {
				crc >>= 1
			}
		}
	}
	return ^crc
}

// TestCRC32CVectors checks the digest against the examples of RFC 7143
// Appendix B, which give the digest bytes in the order they are sent.
func TestCRC32CVectors(t *testing.T) {
	inc := make([]byte, 32)
	dec := make([]byte, 32)
	for i := range inc {
		inc[i] = byte(i)
		dec[i] = byte(31 - i)
	}
	read10, _ := hex.DecodeString("01c00000000000000000000000000000" +
		"14000000000004000000001400000018" +
		"28000000000000000000000000000000")
	tests := []struct {
		name string
		in   []byte
		wire string // digest bytes as sent
	}{
		{"32 bytes of zeros", make([]byte, 32), "aa36918a"},
		{"32 bytes of ones", bytes.Repeat([]byte{0xff}, 32), "43aba862"},
		{"32 incrementing bytes", inc, "4e79dd46"},
		{"32 decrementing bytes", dec, "5cdb3f11"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got [4]byte
			putDigest(got[:], dataSum(tc.in))
			if hex.EncodeToString(got[:]) != tc.wire {
				t.Errorf("digest on the wire %x, want %s", got, tc.wire)
			}
			if v := crc32cBitwise(tc.in); v != dataSum(tc.in) {
				t.Errorf("hash/crc32 0x%08x, bitwise definition 0x%08x", dataSum(tc.in), v)
			}
		})
	}
	var h header
	copy(h[:], read10)
	if headerSum(&h, nil) != dataSum(read10) {
		t.Errorf("header digest of a BHS differs from the CRC32C of its bytes")
	}
}

// writerBytes sends PDUs through a writer with the given digests and
// returns what went on the wire.
func writerBytes(t *testing.T, dg digests, pdus ...*outPDU) []byte {
	t.Helper()
	client, server := net.Pipe()
	w := newWriter(server, 7, func() (uint32, uint32) { return 10, 20 }, dg)
	go w.run()
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	w.enqueue(pdus...)
	w.close()
	server.Close()
	select {
	case b := <-got:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("writer output not read")
		return nil
	}
}

func outWith(m pduMessage, sn snMode, data []byte) *outPDU {
	o := newOutPDU()
	m.marshal(&o.hdr)
	o.sn = sn
	o.data = data
	return o
}

// TestDigestFraming sends PDUs through the writer with every combination
// of digests, checks where the digests sit and that the decoders read the
// PDUs back; a data segment that is empty has no data digest.
func TestDigestFraming(t *testing.T) {
	for _, dg := range []digests{{}, {header: true}, {data: true}, {header: true, data: true}} {
		name := map[digests]string{{}: "none", {header: true}: "header", {data: true}: "data", {header: true, data: true}: "both"}[dg]
		t.Run(name, func(t *testing.T) {
			payloads := [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{0x5a}, 8192)}
			var pdus []*outPDU
			for i, p := range payloads {
				pdus = append(pdus, outWith(&nopIn{ITT: uint32(i + 1), TTT: reservedTag}, snAdvance, p))
			}
			wire := writerBytes(t, dg, pdus...)

			// Layout of the first two PDUs, byte by byte.
			off := 0
			for i, p := range payloads[:2] {
				var h header
				copy(h[:], wire[off:])
				if h.opcode() != opNOPIn || h.itt() != uint32(i+1) || be32(h[24:]) != uint32(7+i) {
					t.Fatalf("PDU %d: header %x", i, h)
				}
				off += bhsLen
				if dg.header {
					if got := binary.LittleEndian.Uint32(wire[off:]); got != crc32cBitwise(h[:]) {
						t.Fatalf("PDU %d: header digest 0x%08x, want 0x%08x", i, got, crc32cBitwise(h[:]))
					}
					off += 4
				}
				padded := len(p) + padLen(len(p))
				if !bytes.Equal(wire[off:off+len(p)], p) {
					t.Fatalf("PDU %d: data %q", i, wire[off:off+len(p)])
				}
				if len(p) > 0 && dg.data {
					want := crc32cBitwise(wire[off : off+padded])
					if got := binary.LittleEndian.Uint32(wire[off+padded:]); got != want {
						t.Fatalf("PDU %d: data digest 0x%08x, want 0x%08x", i, got, want)
					}
					off += 4
				}
				off += padded
			}

			// The stream decoder and the slice decoder read them back.
			br := bufio.NewReader(bytes.NewReader(wire))
			rest := wire
			for i, p := range payloads {
				var h header
				ahs := make([]byte, maxAHSLen)
				_, n, err := dg.readHeader(br, &h, ahs, 1<<20)
				if err != nil || n != len(p) || h.itt() != uint32(i+1) {
					t.Fatalf("PDU %d: readHeader: %v, %d bytes", i, err, n)
				}
				got := make([]byte, n)
				if err := dg.readData(br, got, n); err != nil || !bytes.Equal(got, p) {
					t.Fatalf("PDU %d: readData: %v", i, err)
				}
				var d decodedPDU
				d, rest, err = dg.decodePDU(rest, 1<<20)
				if err != nil || d.op != opNOPIn || !bytes.Equal(d.data, p) {
					t.Fatalf("PDU %d: decodePDU: %v %s", i, err, d.op)
				}
				if re := dg.appendPDU(nil, &h, nil, p); !bytes.Equal(re, wire[len(wire)-len(rest)-len(re):len(wire)-len(rest)]) {
					t.Fatalf("PDU %d: appendPDU differs from the writer", i)
				}
			}
			if len(rest) != 0 || br.Buffered() != 0 {
				t.Fatalf("%d bytes left over", len(rest))
			}
		})
	}
}

// TestDigestErrors corrupts each digest: a bad header digest is
// ErrHeaderDigest, a bad data digest is ErrDataDigest with the stream
// still in step for the next PDU, also when part of the data is
// discarded.
func TestDigestErrors(t *testing.T) {
	dg := digests{header: true, data: true}
	var h header
	(&dataOut{Final: true, ITT: 9, TTT: 3}).marshal(&h)
	data := []byte("0123456789")
	one := dg.appendPDU(nil, &h, nil, data)
	next := dg.appendPDU(nil, &h, nil, []byte("next"))

	badHeader := bytes.Clone(one)
	badHeader[bhsLen] ^= 1
	br := bufio.NewReader(bytes.NewReader(badHeader))
	var hh header
	if _, _, err := dg.readHeader(br, &hh, make([]byte, maxAHSLen), 8192); !errors.Is(err, ErrHeaderDigest) {
		t.Errorf("corrupted header digest: %v", err)
	}
	if _, _, err := dg.decodePDU(badHeader, 8192); !errors.Is(err, ErrHeaderDigest) {
		t.Errorf("decodePDU, corrupted header digest: %v", err)
	}
	badField := bytes.Clone(one)
	badField[20] ^= 0x80 // TTT
	if _, _, err := dg.decodePDU(badField, 8192); !errors.Is(err, ErrHeaderDigest) {
		t.Errorf("decodePDU, corrupted header field: %v", err)
	}

	for _, keep := range []int{len(data), 4, 0} {
		badData := bytes.Clone(one)
		badData[bhsLen+4+2] ^= 0x40
		br = bufio.NewReader(bytes.NewReader(append(badData, next...)))
		_, n, err := dg.readHeader(br, &hh, make([]byte, maxAHSLen), 8192)
		if err != nil {
			t.Fatal(err)
		}
		if err := dg.readData(br, make([]byte, keep), n); !errors.Is(err, ErrDataDigest) {
			t.Errorf("keep %d: corrupted data: %v", keep, err)
		}
		_, n, err = dg.readHeader(br, &hh, make([]byte, maxAHSLen), 8192)
		got := make([]byte, n)
		if err != nil || dg.readData(br, got, n) != nil || string(got) != "next" {
			t.Errorf("keep %d: the PDU after a data digest error: %v %q", keep, err, got)
		}
		if _, rest, err := dg.decodePDU(append(badData, next...), 8192); !errors.Is(err, ErrDataDigest) || !bytes.Equal(rest, next) {
			t.Errorf("decodePDU, corrupted data: %v, %d bytes left", err, len(rest))
		}
	}

	for cut := 1; cut < len(one); cut++ {
		br = bufio.NewReader(bytes.NewReader(one[:cut]))
		_, n, err := dg.readHeader(br, &hh, make([]byte, maxAHSLen), 8192)
		if err == nil {
			err = dg.readData(br, make([]byte, n), n)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Fatalf("PDU cut at %d: %v", cut, err)
		}
		if _, _, err := dg.decodePDU(one[:cut], 8192); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("decodePDU of a PDU cut at %d: %v", cut, err)
		}
	}
}

// sendRaw writes a PDU as the initiator's digests frame it, with corrupt
// applied to the bytes first.
func (c *testInitiator) sendRaw(h *header, data []byte, corrupt func(b []byte)) {
	c.t.Helper()
	b := c.dg.appendPDU(nil, h, nil, data)
	corrupt(b)
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("send %s: %v", h.opcode(), err)
	}
}

func digestKeys(header, data string) []textPair {
	return []textPair{{"HeaderDigest", header}, {"DataDigest", data}}
}

func TestDigestNegotiationInLogin(t *testing.T) {
	tests := []struct {
		header, data string
		want         digests
	}{
		{"CRC32C,None", "CRC32C,None", digests{true, true}},
		{"None,CRC32C", "None,CRC32C", digests{}},
		{"CRC32C", "None", digests{header: true}},
		{"None", "CRC32C", digests{data: true}},
	}
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	for _, tc := range tests {
		t.Run(tc.header+"/"+tc.data, func(t *testing.T) {
			c := dialInitiator(t, addr)
			keys := c.loginNormal(digestKeys(tc.header, tc.data)...)
			if c.dg != tc.want {
				t.Fatalf("answers HeaderDigest=%s DataDigest=%s, want %+v", keys["HeaderDigest"], keys["DataDigest"], tc.want)
			}
			// Both directions use them: a write with immediate data and
			// R2T'd data, a read, a ping with data.
			data := bytes.Repeat([]byte("digest!!"), 4096) // 32 KiB
			if r := c.command(cdbWrite10(8, 64, false), uint32(len(data)), data, 8192); r.status != statusGood {
				t.Fatalf("WRITE: status 0x%x", r.status)
			}
			if r := c.command(cdbRead10(8, 64), uint32(len(data)), nil, 0); r.status != statusGood || !bytes.Equal(r.data, data) {
				t.Fatalf("READ: status 0x%x, %d bytes", r.status, len(r.data))
			}
			if !bytes.Equal(be.snapshot(8*512, len(data)), data) {
				t.Fatal("back end does not hold the data written")
			}
			c.ping(t, []byte("ping!"))
			c.logout()
		})
	}
}

// ping sends an immediate NOP-Out with data and checks the echo.
func (c *testInitiator) ping(t *testing.T, data []byte) {
	t.Helper()
	n := nopOut{Immediate: true, ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	var h header
	n.marshal(&h)
	c.send(&h, data)
	d := c.recv()
	if m, ok := d.msg.(*nopIn); !ok || m.ITT != n.ITT || !bytes.Equal(d.data, data) {
		t.Fatalf("ping: got %s %+v %q", d.op, d.msg, d.data)
	}
}

// TestHeaderDigestErrorCloses sends a PDU whose header digest is wrong:
// the target closes the connection, logs it once and does not execute it.
func TestHeaderDigestErrorCloses(t *testing.T) {
	h := &countingHandler{counts: map[string]int{}}
	_, be, addr := newTestServer(t, Config{Logger: slog.New(h)}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal(digestKeys("CRC32C", "None")...)
	data := bytes.Repeat([]byte{0xee}, 512)
	cmd := scsiCommand{Final: true, Write: true, ITT: c.nextITT(), EDTL: 512, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	copy(cmd.CDB[:], cdbWrite10(0, 1, false))
	var hh header
	cmd.marshal(&hh)
	c.sendRaw(&hh, data, func(b []byte) { b[bhsLen+3] ^= 0x10 })
	if err := c.waitClosed(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(be.snapshot(0, 512), make([]byte, 512)) {
		t.Error("a command with a bad header digest reached the back end")
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.count("iscsi connection closed on error") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h.count("iscsi connection closed on error"); n != 1 {
		t.Errorf("logged %d times, want once", n)
	}
}

// expectDigestReject reads a Reject with reason 0x02 carrying the header h.
func (c *testInitiator) expectDigestReject(t *testing.T, h *header) {
	t.Helper()
	d := c.recv()
	r, ok := d.msg.(*rejectPDU)
	if !ok || r.Reason != rejectDataDigest {
		t.Fatalf("got %s %+v, want a Reject with reason 0x02", d.op, d.msg)
	}
	if !bytes.Equal(d.data, h[:]) {
		t.Fatalf("Reject carries header %x, want %x", d.data, h[:])
	}
}

// TestDataDigestErrorDataOut corrupts the data digest of the first of two
// solicited Data-Out PDUs: the target rejects it with reason 0x02, waits
// for the rest of the sequence, answers CHECK CONDITION, ABORTED COMMAND,
// PROTOCOL SERVICE CRC ERROR, writes nothing, and the session goes on.
func TestDataDigestErrorDataOut(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal(append(digestKeys("CRC32C", "CRC32C"), textPair{"ImmediateData", "No"}, textPair{"InitialR2T", "Yes"})...)
	data := bytes.Repeat([]byte{0xab}, 16384)
	itt := c.nextITT()
	c.sendCommand(itt, cdbWrite10(0, 32, false), uint32(len(data)), data, 0, true)
	d := c.recv()
	r, ok := d.msg.(*r2t)
	if !ok || r.DesiredLength != uint32(len(data)) {
		t.Fatalf("got %s %+v, want an R2T for the whole write", d.op, d.msg)
	}
	first := dataOut{ITT: itt, TTT: r.TTT, ExpStatSN: c.expStatSN, DataSN: 0, BufferOffset: 0}
	var h1 header
	first.marshal(&h1)
	c.sendRaw(&h1, data[:8192], func(b []byte) { b[bhsLen+4+100] ^= 0xff })
	c.expectDigestReject(t, &h1)
	if d, err := c.tryRecv(300 * time.Millisecond); err == nil {
		t.Fatalf("%s before the last Data-Out of the sequence", d.op)
	}
	second := dataOut{Final: true, ITT: itt, TTT: r.TTT, ExpStatSN: c.expStatSN, DataSN: 1, BufferOffset: 8192}
	var h2 header
	second.marshal(&h2)
	c.send(&h2, data[8192:])
	res := c.complete(itt, data)
	if key, asc := res.senseKey(); res.status != statusCheckCondition || key != senseAbortedCommand || asc != ascProtocolCRCError {
		t.Fatalf("status 0x%x sense %x/%04x, want CHECK CONDITION, ABORTED COMMAND, 47h/05h", res.status, key, asc)
	}
	if !bytes.Equal(be.snapshot(0, len(data)), make([]byte, len(data))) {
		t.Fatal("data of a write with a data digest error reached the back end")
	}
	// The connection is still in step: the write again, with good digests.
	if r := c.command(cdbWrite10(0, 32, false), uint32(len(data)), data, 0); r.status != statusGood {
		t.Fatalf("WRITE after the digest error: status 0x%x", r.status)
	}
	if !bytes.Equal(be.snapshot(0, len(data)), data) {
		t.Fatal("the retried write did not reach the back end")
	}
	c.logout()
}

// TestDataDigestErrorImmediateData corrupts the data digest of commands
// and pings. An immediate ping is rejected and the connection goes on; a
// write with immediate data is rejected, not executed, and, since its
// CmdSN is lost, the connection closes after the Reject.
func TestDataDigestErrorImmediateData(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal(digestKeys("None", "CRC32C")...)

	n := nopOut{Immediate: true, ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	var hn header
	n.marshal(&hn)
	c.sendRaw(&hn, []byte("ping"), func(b []byte) { b[bhsLen] ^= 1 })
	c.expectDigestReject(t, &hn)
	c.ping(t, []byte("still here"))

	data := bytes.Repeat([]byte{0xcd}, 4096)
	cmd := scsiCommand{Final: true, Write: true, ITT: c.nextITT(), EDTL: 4096, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN, Attr: 1}
	copy(cmd.CDB[:], cdbWrite10(0, 8, false))
	var hc header
	cmd.marshal(&hc)
	c.sendRaw(&hc, data, func(b []byte) { b[len(b)-1] ^= 1 })
	c.expectDigestReject(t, &hc)
	if err := c.waitClosed(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(be.snapshot(0, len(data)), make([]byte, len(data))) {
		t.Fatal("a command whose immediate data failed its digest reached the back end")
	}
}

// TestDigestRequired: a target that requires both digests picks CRC32C
// from None,CRC32C, refuses a login that offers only None or does not
// offer the keys at all, and leaves discovery sessions alone.
func TestDigestRequired(t *testing.T) {
	_, _, addr := newTestServer(t, Config{RequireHeaderDigest: true, RequireDataDigest: true}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal(digestKeys("None,CRC32C", "None,CRC32C")...)
	if c.dg != (digests{true, true}) {
		t.Fatalf("digests %+v with None,CRC32C offered to a target that requires them", c.dg)
	}
	c.ping(t, []byte("digested"))
	c.logout()

	for _, offer := range [][]textPair{digestKeys("CRC32C", "None"), digestKeys("None", "CRC32C"), nil} {
		c := dialInitiator(t, addr)
		pairs := append([]textPair{{"InitiatorName", "iqn.2026-01.test:initiator"}, {"TargetName", testIQN}, {"SessionType", "Normal"}}, offer...)
		resp, keys := c.login(pairs...)
		if resp.StatusClass == 0 {
			t.Errorf("offer %v: logged in (answers %v)", offer, keys)
		}
	}

	d := dialInitiator(t, addr)
	resp, keys := d.login(textPair{"InitiatorName", "iqn.2026-01.test:initiator"}, textPair{"SessionType", "Discovery"}, textPair{"HeaderDigest", "None"})
	if resp.StatusClass != 0 || keys["HeaderDigest"] != "None" {
		t.Errorf("discovery session: status 0x%02x, answers %v", resp.StatusClass, keys)
	}
}
