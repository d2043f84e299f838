package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBackendErrorsAreCheckConditions(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal()

	be.readErr.Store(true)
	r := c.command(cdbRead10(0, 8), 4096, nil, 0)
	if key, asc := r.senseKey(); r.status != statusCheckCondition || key != senseMediumError || asc != ascUnrecoveredReadError {
		t.Errorf("READ with failing back end: status 0x%x sense %x/%04x, want CHECK CONDITION MEDIUM ERROR 0x1100", r.status, key, asc)
	}
	if len(r.data) != 0 {
		t.Errorf("READ with failing back end returned %d bytes of data", len(r.data))
	}
	be.readErr.Store(false)

	be.writeErr.Store(true)
	r = c.command(cdbWrite10(0, 8, false), 4096, make([]byte, 4096), 4096)
	if key, asc := r.senseKey(); r.status != statusCheckCondition || key != senseMediumError || asc != ascWriteError {
		t.Errorf("WRITE with failing back end: status 0x%x sense %x/%04x, want MEDIUM ERROR 0x0c00", r.status, key, asc)
	}
	be.writeErr.Store(false)

	be.flushErr.Store(true)
	r = c.command(cdbSyncCache10(), 0, nil, 0)
	if key, asc := r.senseKey(); r.status != statusCheckCondition || key != senseMediumError || asc != ascWriteError {
		t.Errorf("SYNCHRONIZE CACHE with failing flush: status 0x%x sense %x/%04x, want MEDIUM ERROR 0x0c00", r.status, key, asc)
	}
	be.flushErr.Store(false)
	if r = c.command(cdbSyncCache10(), 0, nil, 0); r.status != statusGood {
		t.Errorf("SYNCHRONIZE CACHE after recovery: status 0x%x", r.status)
	}
	c.logout()
}

func TestFUAReachesBackend(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal()
	if r := c.command(cdbWrite10(8, 1, true), 512, bytes.Repeat([]byte{7}, 512), 512); r.status != statusGood {
		t.Fatalf("WRITE(10) FUA: status 0x%x", r.status)
	}
	if be.fuaCount.Load() != 1 {
		t.Errorf("WRITE(10) with FUA made %d FUA writes, want 1", be.fuaCount.Load())
	}
}

// TestNOPPingKeepsWindow answers a ping after an idle period with the
// current ExpCmdSN and an open window, as QEMU's keepalive expects.
func TestNOPPingKeepsWindow(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal()
	for i := range 3 {
		if r := c.command(cdbRead10(uint32(i), 1), 512, nil, 0); r.status != statusGood {
			t.Fatalf("READ: status 0x%x", r.status)
		}
	}
	time.Sleep(50 * time.Millisecond)
	ping := nopOut{Immediate: true, ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	var h header
	ping.marshal(&h)
	c.send(&h, []byte("ping-data-1234"))
	d := c.recv()
	in, ok := d.msg.(*nopIn)
	if !ok {
		t.Fatalf("ping answered with %s", d.op)
	}
	if in.ITT != ping.ITT || in.TTT != reservedTag || string(d.data) != "ping-data-1234" {
		t.Errorf("NOP-In %+v data %q does not echo the ping", in, d.data)
	}
	if in.ExpCmdSN != c.cmdSN {
		t.Errorf("NOP-In ExpCmdSN %d, want %d (the next CmdSN)", in.ExpCmdSN, c.cmdSN)
	}
	if int32(in.MaxCmdSN-in.ExpCmdSN) < 63 {
		t.Errorf("NOP-In window ExpCmdSN %d MaxCmdSN %d is below 64 commands", in.ExpCmdSN, in.MaxCmdSN)
	}
	// A non-immediate ping consumes a CmdSN.
	ping = nopOut{ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	c.cmdSN++
	ping.marshal(&h)
	c.send(&h, nil)
	d = c.recv()
	if in, ok := d.msg.(*nopIn); !ok || in.ExpCmdSN != c.cmdSN {
		t.Errorf("non-immediate ping: got %s %+v, want ExpCmdSN %d", d.op, d.msg, c.cmdSN)
	}
	if r := c.command(cdbRead10(0, 1), 512, nil, 0); r.status != statusGood {
		t.Fatalf("READ after pings: status 0x%x", r.status)
	}
}

func TestLoginNegotiation(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	keys := c.loginNormal(
		textPair{"ImmediateData", "No"},
		textPair{"InitialR2T", "Yes"},
		textPair{"MaxBurstLength", "16384"},
		textPair{"FirstBurstLength", "65536"},
		textPair{"MaxOutstandingR2T", "2"},
		textPair{"HeaderDigest", "CRC32C,None"},
		textPair{"DataDigest", "CRC32C"},
		textPair{"X-com.example.Unknown", "1"},
		textPair{"ErrorRecoveryLevel", "2"},
		textPair{"DefaultTime2Wait", "0"},
		textPair{"IFMarker", "Yes"},
		textPair{"OFMarkInt", "1~65535"},
	)
	want := map[string]string{
		"ImmediateData":            "No",
		"InitialR2T":               "Yes",
		"MaxBurstLength":           "16384",
		"FirstBurstLength":         "65536",
		"MaxOutstandingR2T":        "2",
		"HeaderDigest":             "CRC32C",
		"DataDigest":               "CRC32C",
		"X-com.example.Unknown":    "NotUnderstood",
		"ErrorRecoveryLevel":       "0",
		"DefaultTime2Wait":         "2",
		"IFMarker":                 "No",
		"OFMarkInt":                "Reject",
		"MaxRecvDataSegmentLength": "262144",
		"TargetPortalGroupTag":     "1",
	}
	for k, v := range want {
		if keys[k] != v {
			t.Errorf("%s = %q, want %q (all answers %v)", k, keys[k], v, keys)
		}
	}
	// ImmediateData=No and InitialR2T=Yes: a write is solicited entirely
	// by R2T, in bursts of MaxBurstLength with at most 2 outstanding.
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	r := c.command(cdbWrite10(0, 128, false), uint32(len(data)), data, 0)
	if r.status != statusGood {
		t.Fatalf("WRITE: status 0x%x", r.status)
	}
	if len(r.r2ts) != 4 {
		t.Errorf("64 KiB write with MaxBurstLength 16384 took %d R2Ts, want 4", len(r.r2ts))
	}
	for i, x := range r.r2ts {
		if x.DesiredLength != 16384 || x.BufferOffset != uint32(i)*16384 || x.R2TSN != uint32(i) {
			t.Errorf("R2T %d: %+v", i, x)
		}
	}
	if r.resp == nil || r.resp.ExpDataSN != 4 {
		t.Errorf("SCSI Response ExpDataSN after 4 R2Ts: %+v", r.resp)
	}
}

func cdbRead10WithFUA(lba uint32, blocks uint16) []byte {
	b := cdbRead10(lba, blocks)
	b[1] = 0x08
	return b
}

func TestDataInHonoursInitiatorLimits(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	pattern := make([]byte, 65536)
	for i := range pattern {
		pattern[i] = byte(i * 7)
	}
	if err := be.WriteAt(context.Background(), pattern, 0, false); err != nil {
		t.Fatal(err)
	}
	c := dialInitiator(t, addr)
	c.recvDSL = 4096
	c.loginNormal(textPair{"MaxBurstLength", "16384"})
	r := c.command(cdbRead10WithFUA(0, 128), 65536, nil, 0)
	if r.status != statusGood || r.resp != nil {
		t.Fatalf("READ: status 0x%x, separate response %v", r.status, r.resp != nil)
	}
	if !bytes.Equal(r.data, pattern) {
		t.Fatalf("READ returned wrong data")
	}
	for i, m := range r.dataIns {
		if r.dataLens[i] > 4096 {
			t.Errorf("Data-In %d carries %d bytes, initiator declared 4096", i, r.dataLens[i])
		}
		if m.DataSN != uint32(i) {
			t.Errorf("Data-In %d has DataSN %d", i, m.DataSN)
		}
		endOfBurst := (int(m.BufferOffset)+r.dataLens[i])%16384 == 0
		if m.Final != endOfBurst {
			t.Errorf("Data-In %d at offset %d: F=%v, want it exactly at 16 KiB sequence ends", i, m.BufferOffset, m.Final)
		}
		if m.HasStatus != (i == len(r.dataIns)-1) {
			t.Errorf("Data-In %d: S=%v", i, m.HasStatus)
		}
	}
}

func TestResidualCounts(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal()
	tests := []struct {
		name       string
		cdb        []byte
		edtl       uint32
		out        []byte
		wantLen    int
		over       bool
		under      bool
		resid      uint32
		wantStatus uint8
	}{
		{"read exact", cdbRead10(0, 1), 512, nil, 512, false, false, 0, statusGood},
		{"read underflow", cdbRead10(0, 1), 10000, nil, 512, false, true, 10000 - 512, statusGood},
		{"read overflow", cdbRead10(0, 2), 512, nil, 512, true, false, 512, statusGood},
		{"read zero edtl", cdbRead10(0, 1), 0, nil, 0, true, false, 512, statusGood},
		{"inquiry short", []byte{0x12, 0, 0, 0, 255, 0}, 255, nil, 74, false, true, 255 - 74, statusGood},
		{"inquiry truncated", []byte{0x12, 0, 0, 0, 36, 0}, 36, nil, 36, false, false, 0, statusGood},
		{"write overflow", cdbWrite10(0, 2, false), 512, make([]byte, 512), 0, true, false, 512, statusGood},
		{"write underflow", cdbWrite10(0, 1, false), 1024, make([]byte, 1024), 0, false, true, 512, statusGood},
		{"write partial block", cdbWrite10(0, 1, false), 200, make([]byte, 200), 0, true, false, 312, statusCheckCondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := c.command(tc.cdb, tc.edtl, tc.out, len(tc.out))
			if r.status != tc.wantStatus || len(r.data) != tc.wantLen || r.over != tc.over || r.under != tc.under || r.residual != tc.resid {
				t.Errorf("status 0x%x len %d over %v under %v residual %d; want 0x%x %d %v %v %d",
					r.status, len(r.data), r.over, r.under, r.residual, tc.wantStatus, tc.wantLen, tc.over, tc.under, tc.resid)
			}
		})
	}
}

func TestLoginRejections(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 1<<20)
	tests := []struct {
		name   string
		tsih   uint16
		pairs  []textPair
		status uint16
	}{
		{"unknown target", 0, []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"TargetName", "iqn.2026-01.test:nope"}}, loginNotFound},
		{"missing initiator", 0, []textPair{{"TargetName", testIQN}}, loginMissingParam},
		{"missing target", 0, []textPair{{"InitiatorName", "iqn.2026-01.test:i"}}, loginMissingParam},
		{"unknown TSIH", 0x1234, []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"TargetName", testIQN}}, loginSessionNotExist},
		{"bad session type", 0, []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"SessionType", "Other"}}, loginSessionType},
		{"key twice", 0, []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"TargetName", testIQN}, {"MaxBurstLength", "512"}, {"MaxBurstLength", "1024"}}, loginInitiatorError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialInitiator(t, addr)
			c.tsih = tc.tsih
			resp, _ := c.login(tc.pairs...)
			if got := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail); got != tc.status {
				t.Errorf("status 0x%04x, want 0x%04x", got, tc.status)
			}
			if err := c.waitClosed(5 * time.Second); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestDiscoverySendTargets(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 1<<20)
	for i := range 40 {
		if err := srv.AddTarget("iqn.2026-11.io.chunkraid:vol-"+strconv.Itoa(i), newMemBackend(1<<20), "s"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	c := dialInitiator(t, addr)
	c.recvDSL = 512 // forces the answer over several Text Responses
	resp, keys := c.login(textPair{"InitiatorName", "iqn.2026-01.test:i"}, textPair{"SessionType", "Discovery"},
		textPair{"MaxRecvDataSegmentLength", "512"}, textPair{"ImmediateData", "Yes"})
	if resp.StatusClass != 0 || keys["ImmediateData"] != "Irrelevant" {
		t.Fatalf("discovery login: %+v %v", resp, keys)
	}
	req := textRequest{Immediate: true, Final: true, ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN}
	var h header
	req.marshal(&h)
	c.send(&h, encodeText([]textPair{{"SendTargets", "All"}}))
	var text []byte
	for pdus := 1; ; pdus++ {
		d := c.recv()
		m, ok := d.msg.(*textResponse)
		if !ok {
			t.Fatalf("got %s", d.op)
		}
		if len(d.data) > 512 {
			t.Errorf("Text Response of %d bytes exceeds MaxRecvDataSegmentLength 512", len(d.data))
		}
		text = append(text, d.data...)
		if m.Final {
			if m.TTT != reservedTag || pdus < 2 {
				t.Errorf("final Text Response TTT 0x%x after %d PDUs", m.TTT, pdus)
			}
			break
		}
		next := textRequest{Immediate: true, Final: true, ITT: req.ITT, TTT: m.TTT, CmdSN: c.cmdSN}
		next.marshal(&h)
		c.send(&h, nil)
	}
	pairs, err := parseText(text)
	if err != nil {
		t.Fatal(err)
	}
	names := 0
	for _, p := range pairs {
		switch p.key {
		case "TargetName":
			names++
		case "TargetAddress":
			if p.value != addr+",1" {
				t.Errorf("TargetAddress %q, want %q", p.value, addr+",1")
			}
		}
	}
	if names != 41 {
		t.Errorf("SendTargets=All listed %d targets, want 41", names)
	}
	// A SCSI command has no place in a discovery session.
	cmd := scsiCommand{ITT: c.nextITT(), CmdSN: c.cmdSN, Final: true}
	copy(cmd.CDB[:], []byte{0x00, 0, 0, 0, 0, 0})
	c.cmdSN++
	cmd.marshal(&h)
	c.send(&h, nil)
	if d := c.recv(); d.op != opReject {
		t.Errorf("SCSI command in discovery session answered with %s, want Reject", d.op)
	}
	c.logout()
}

// TestCommandsRunConcurrently shows that a slow back end does not
// serialise a session: 32 reads of 20 ms each finish in far less than
// 32 × 20 ms.
func TestCommandsRunConcurrently(t *testing.T) {
	srv, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	be := newMemBackend(1 << 20)
	be.delay.Store(int64(20 * time.Millisecond))
	if err := srv.AddTarget(testIQN, be, "slow"); err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, srv)
	c := dialInitiator(t, addr)
	c.loginNormal()
	start := time.Now()
	itts := make(map[uint32]bool)
	for i := range 32 {
		itt := c.nextITT()
		itts[itt] = true
		c.sendCommand(itt, cdbRead10(uint32(i), 1), 512, nil, 0, true)
	}
	for len(itts) > 0 {
		d := c.recv()
		m, ok := d.msg.(*dataIn)
		if !ok || !m.HasStatus || m.Status != statusGood {
			t.Fatalf("got %s %+v", d.op, d.msg)
		}
		delete(itts, m.ITT)
	}
	if el := time.Since(start); el > 300*time.Millisecond {
		t.Errorf("32 reads with 20 ms back-end latency took %v; commands are not running concurrently", el)
	}
}

// TestCmdSNOutsideWindowIgnored sends a command beyond MaxCmdSN: it must be
// dropped without an answer, and the session must go on.
func TestCmdSNOutsideWindowIgnored(t *testing.T) {
	_, _, addr := newTestServer(t, Config{QueueDepth: 64}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal()
	if r := c.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatal("TEST UNIT READY failed")
	}
	if got := c.maxCmdSN - c.expCmdSN + 1; got < 64 {
		t.Errorf("window of %d commands, want at least 64", got)
	}
	saved := c.cmdSN
	c.cmdSN = c.maxCmdSN + 1
	c.sendCommand(c.nextITT(), []byte{0, 0, 0, 0, 0, 0}, 0, nil, 0, true)
	if d, err := c.tryRecv(300 * time.Millisecond); err == nil {
		t.Fatalf("command outside the window was answered: %s", d.op)
	}
	c.cmdSN = saved
	if r := c.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatal("TEST UNIT READY after the ignored command failed")
	}
}

func TestTaskManagement(t *testing.T) {
	srv, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	be := newMemBackend(1 << 20)
	be.delay.Store(int64(2 * time.Second))
	if err := srv.AddTarget(testIQN, be, "tmf"); err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, srv)
	c := dialInitiator(t, addr)
	c.loginNormal()

	tmf := func(fn uint8, ref uint32) uint8 {
		t.Helper()
		r := taskMgmtRequest{Immediate: true, Function: fn, ITT: c.nextITT(), RefTaskTag: ref, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
		var h header
		r.marshal(&h)
		c.send(&h, nil)
		d := c.recv()
		m, ok := d.msg.(*taskMgmtResponse)
		if !ok || m.ITT != r.ITT {
			t.Fatalf("TMF %d answered with %s %+v", fn, d.op, d.msg)
		}
		return m.Response
	}
	if got := tmf(tmfAbortTask, 0x7777); got != tmfRespNoTask {
		t.Errorf("ABORT TASK of an unknown tag: response %d, want %d", got, tmfRespNoTask)
	}
	// Abort a read stuck in the back end: the TMF completes and the read
	// gets no response.
	itt := c.nextITT()
	c.sendCommand(itt, cdbRead10(0, 1), 512, nil, 0, true)
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	if got := tmf(tmfAbortTask, itt); got != tmfRespComplete {
		t.Errorf("ABORT TASK of a running read: response %d", got)
	}
	if time.Since(start) > time.Second {
		t.Errorf("ABORT TASK waited for the back end instead of cancelling it")
	}
	if got := tmf(tmfLUNReset, reservedTag); got != tmfRespComplete {
		t.Errorf("LUN RESET: response %d", got)
	}
	if got := tmf(tmfClearACA, reservedTag); got != tmfRespNotSupported {
		t.Errorf("CLEAR ACA: response %d, want not supported", got)
	}
	be.delay.Store(0)
	// The LUN reset left a unit attention, reported once.
	if r := c.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusCheckCondition {
		t.Fatalf("TEST UNIT READY after LUN RESET: status %#x, want the unit attention", r.status)
	}
	if r := c.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatal("TEST UNIT READY after task management failed")
	}
}

func TestMalformedPDUClosesOnlyItsConnection(t *testing.T) {
	_, _, addr := newTestServer(t, Config{MaxRecvDataSegmentLength: 8192}, 1<<20)
	good := dialInitiator(t, addr)
	good.loginNormal()

	bad := dialInitiator(t, addr)
	bad.loginNormal()
	// A NOP-Out announcing more data than the target declared.
	var h header
	n := nopOut{Immediate: true, ITT: 1, TTT: reservedTag}
	n.marshal(&h)
	h.setDataLength(8193)
	if _, err := bad.nc.Write(h[:]); err != nil {
		t.Fatal(err)
	}
	if err := bad.waitClosed(5 * time.Second); err != nil {
		t.Errorf("oversized data segment: %v", err)
	}
	// A PDU with a target opcode.
	bad2 := dialInitiator(t, addr)
	bad2.loginNormal()
	var h2 header
	(&nopIn{ITT: 1}).marshal(&h2)
	bad2.send(&h2, nil)
	if err := bad2.waitClosed(5 * time.Second); err != nil {
		t.Errorf("target opcode from initiator: %v", err)
	}
	if r := good.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatal("other session broke")
	}
	// SNACK and an unassigned initiator opcode are rejected; the session
	// goes on.
	for _, op := range []opcode{opSNACK, 0x0c} {
		var hh header
		hh.setOpcode(op, false)
		hh[1] = 0x80
		put32(hh[16:], 77)
		good.send(&hh, []byte("abc"))
		d := good.recv()
		if d.op != opReject || d.msg.(*rejectPDU).Reason != rejectCmdNotSupported || !bytes.Equal(d.data, hh[:]) {
			t.Errorf("%s answered with %s %+v", op, d.op, d.msg)
		}
	}
	if r := good.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatal("session broke after a rejected PDU")
	}
}

// TestTSIHReleased logs in and out repeatedly and checks that sessions and
// their TSIHs are freed, and that allocation skips TSIHs in use and zero.
func TestTSIHReleased(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 1<<20)
	seen := make(map[uint16]bool)
	for range 20 {
		c := dialInitiator(t, addr)
		c.loginNormal()
		seen[c.tsih] = true
		c.logout()
	}
	if len(seen) != 20 {
		t.Errorf("20 sessions got %d distinct TSIHs", len(seen))
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.sessionCount() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := srv.sessionCount(); n != 0 {
		t.Fatalf("%d sessions left after logout", n)
	}

	// Wrap-around: with TSIH 0xffff in use, the next allocation after
	// 0xfffe skips it and zero.
	srv.mu.Lock()
	srv.mu.nextTSIH = 0xfffe
	srv.mu.sessions[0xffff] = &session{}
	srv.mu.sessions[1] = &session{}
	srv.mu.Unlock()
	c := dialInitiator(t, addr)
	c.loginNormal()
	if c.tsih != 2 {
		t.Errorf("TSIH after wrap-around = %d, want 2", c.tsih)
	}
}

func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.sessions)
}

// TestRemoveTargetUnderIO removes a target while sessions do I/O on it and
// on another target, then adds it back.
func TestRemoveTargetUnderIO(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 4<<20)
	const other = "iqn.2026-11.io.chunkraid:other"
	if err := srv.AddTarget(other, newMemBackend(4<<20), "other"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ioLoop(t, addr, testIQN, i, stop)
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if err := srv.RemoveTarget(testIQN); err != nil {
		t.Fatal(err)
	}
	if got := srv.Targets(); len(got) != 1 || got[0] != other {
		t.Errorf("Targets() = %v", got)
	}
	if err := srv.RemoveTarget(testIQN); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("second RemoveTarget: %v", err)
	}
	close(stop)
	wg.Wait()
	if err := srv.AddTarget(testIQN, newMemBackend(1<<20), "again"); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(testIQN, newMemBackend(1<<20), "again"); !errors.Is(err, ErrTargetExists) {
		t.Errorf("duplicate AddTarget: %v", err)
	}
	c := dialInitiator(t, addr)
	c.loginNormal()
	if r := c.command(cdbRead10(0, 1), 512, nil, 0); r.status != statusGood {
		t.Errorf("READ after re-adding the target: 0x%x", r.status)
	}
}

// ioLoop writes and reads on its own connection until stop or until the
// target drops the connection.
func ioLoop(t *testing.T, addr, iqn string, id int, stop <-chan struct{}) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer nc.Close()
	c := &testInitiator{t: t, nc: nc, cmdSN: 1, recvDSL: 65536}
	c.br = bufio.NewReader(nc)
	c.isid = [6]byte{0x80, 0, 0, 0, 0, byte(id)}
	var h header
	req := loginRequest{Transit: true, CSG: 1, NSG: 3, ISID: c.isid, ITT: 1, CmdSN: 1}
	req.marshal(&h)
	if err := c.trySend(&h, encodeText([]textPair{{"InitiatorName", "iqn.2026-01.test:io" + strconv.Itoa(id)}, {"TargetName", iqn}})); err != nil {
		t.Error(err)
		return
	}
	if _, err := c.tryRecv(5 * time.Second); err != nil {
		t.Error(err)
		return
	}
	buf := make([]byte, 8192)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		itt := uint32(i + 2)
		lba := uint32(id*1000 + i%100)
		if err := c.trySendCommand(itt, cdbWrite10(lba, 16, false), 8192, buf, 8192, true); err != nil {
			return // the target closed the connection
		}
		for {
			d, err := c.tryRecv(5 * time.Second)
			if err != nil {
				if !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "closed") {
					t.Errorf("I/O loop %d: %v", id, err)
				}
				return
			}
			if d.op == opSCSIResponse {
				break
			}
		}
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	srv, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(testIQN, newMemBackend(1<<20), "x"); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	c := dialInitiator(t, ln.Addr().String())
	c.loginNormal()
	idle, err := net.Dial("tcp", ln.Addr().String()) // never logs in
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if err := c.waitClosed(2 * time.Second); err != nil {
		t.Error(err)
	}
}

func TestConfigValidation(t *testing.T) {
	bad := []Config{
		{BlockSize: 1000},
		{BlockSize: 256},
		{MaxRecvDataSegmentLength: 100},
		{FirstBurstLength: 2 << 20, MaxBurstLength: 1 << 20},
		{MaxTransferLength: 1000},
		{SessionBufferBytes: 1 << 20, MaxTransferLength: 8 << 20},
		{QueueDepth: -1},
	}
	for _, cfg := range bad {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted an invalid config", cfg)
		}
	}
	srv, err := New(Config{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		iqn    string
		be     Backend
		serial string
	}{
		{"not-an-iqn", newMemBackend(1 << 20), "s"},
		{testIQN, nil, "s"},
		{testIQN, newMemBackend(1000), "s"},
		{testIQN, newMemBackend(1 << 20), ""},
		{testIQN, newMemBackend(1 << 20), "bad\x01serial"},
	} {
		if err := srv.AddTarget(tc.iqn, tc.be, tc.serial); !errors.Is(err, ErrInvalidTarget) {
			t.Errorf("AddTarget(%q, serial %q) = %v, want ErrInvalidTarget", tc.iqn, tc.serial, err)
		}
	}
}

// TestSessionReinstatement logs in twice with the same initiator port: the
// second login replaces the first session (RFC 7143 6.3.5).
func TestSessionReinstatement(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 1<<20)
	first := dialInitiator(t, addr)
	first.loginNormal()
	second := dialInitiator(t, addr)
	second.isid = first.isid
	second.loginNormal()
	if err := first.waitClosed(5 * time.Second); err != nil {
		t.Errorf("old session: %v", err)
	}
	if r := second.command([]byte{0, 0, 0, 0, 0, 0}, 0, nil, 0); r.status != statusGood {
		t.Fatal("new session does not work")
	}
	if n := srv.sessionCount(); n != 1 {
		t.Errorf("%d sessions registered, want 1", n)
	}
}

func TestLoginTimeout(t *testing.T) {
	_, _, addr := newTestServer(t, Config{LoginTimeout: 200 * time.Millisecond}, 1<<20)
	silent := dialInitiator(t, addr)
	partial := dialInitiator(t, addr)
	if _, err := partial.nc.Write(make([]byte, 20)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testInitiator{silent, partial} {
		if err := c.waitClosed(3 * time.Second); err != nil {
			t.Error(err)
		}
	}
}

// TestWriteBuffersBounded sends more large writes than the session's
// buffer budget holds: data is solicited (R2T) only for the writes that fit,
// the rest wait without buffers, and each completed write lets the next
// one in.
func TestWriteBuffersBounded(t *testing.T) {
	_, _, addr := newTestServer(t, Config{MaxTransferLength: 1 << 20, SessionBufferBytes: 2 << 20}, 8<<20)
	c := dialInitiator(t, addr)
	c.recvDSL = 65536
	c.loginNormal(textPair{"ImmediateData", "No"}, textPair{"InitialR2T", "Yes"})
	data := make([]byte, 1<<20)
	const n = 6
	for i := range n {
		c.sendCommand(uint32(100+i), cdbWrite10(uint32(i)*2048, 2048, false), 1<<20, data, 0, true)
	}
	solicited := map[uint32]bool{}
	var first []*r2t
	for {
		d, err := c.tryRecv(300 * time.Millisecond)
		if err != nil {
			break
		}
		m, ok := d.msg.(*r2t)
		if !ok {
			t.Fatalf("got %s before any data was sent", d.op)
		}
		solicited[m.ITT] = true
		first = append(first, m)
	}
	if len(solicited) != 2 {
		t.Fatalf("R2Ts went out for %d writes of 1 MiB with a 2 MiB budget, want 2", len(solicited))
	}
	// Serve the solicited writes; the others follow as buffers free up.
	pending := first
	done := 0
	for done < n {
		for _, r := range pending {
			c.answerR2T(r, data, int(r.BufferOffset), int(r.DesiredLength))
		}
		pending = nil
		d := c.recv()
		switch m := d.msg.(type) {
		case *r2t:
			pending = append(pending, m)
		case *scsiResponse:
			if m.Status != statusGood {
				t.Fatalf("write %d: status %#x", m.ITT, m.Status)
			}
			done++
		default:
			t.Fatalf("got %s", d.op)
		}
	}
}

// TestWriteUnsolicitedDataWhileWaiting sends writes with immediate and
// unsolicited data beyond the buffer budget: the target holds the
// unsolicited part until the write gets its buffer, and every byte lands
// where it belongs.
func TestWriteUnsolicitedDataWhileWaiting(t *testing.T) {
	_, be, addr := newTestServer(t, Config{MaxTransferLength: 1 << 20, SessionBufferBytes: 2 << 20}, 8<<20)
	c := dialInitiator(t, addr)
	c.recvDSL = 65536
	keys := c.loginNormal(textPair{"FirstBurstLength", "262144"}, textPair{"MaxBurstLength", "262144"}, textPair{"InitialR2T", "No"})
	if keys["InitialR2T"] != "No" {
		t.Fatalf("InitialR2T=%s", keys["InitialR2T"])
	}
	const n = 4
	const size = 1 << 20
	const fbl = 262144
	data := make([][]byte, n)
	for i := range data {
		data[i] = bytes.Repeat([]byte{byte(0x10 + i)}, size)
		itt := uint32(200 + i)
		c.sendCommand(itt, cdbWrite10(uint32(i)*2048, 2048, false), size, data[i], 65536, false)
		// Unsolicited Data-Out up to FirstBurstLength, 64 KiB per PDU.
		for off, sn := 65536, uint32(0); off < fbl; off, sn = off+65536, sn+1 {
			d := dataOut{Final: off+65536 == fbl, ITT: itt, TTT: reservedTag, DataSN: sn, BufferOffset: uint32(off)}
			var h header
			d.marshal(&h)
			c.send(&h, data[i][off:off+65536])
		}
	}
	for done := 0; done < n; {
		d := c.recv()
		switch m := d.msg.(type) {
		case *r2t:
			c.answerR2T(m, data[m.ITT-200], int(m.BufferOffset), int(m.DesiredLength))
		case *scsiResponse:
			if m.Status != statusGood {
				t.Fatalf("write %d: status %#x sense %x", m.ITT, m.Status, d.data)
			}
			done++
		default:
			t.Fatalf("got %s", d.op)
		}
	}
	for i := range n {
		if !bytes.Equal(be.snapshot(i*size, size), data[i]) {
			t.Errorf("write %d: data in the back end differs", i)
		}
	}
}

// textExchange sends one Text Request and returns the answered pairs.
func (c *testInitiator) textExchange(pairs ...textPair) map[string][]string {
	c.t.Helper()
	req := textRequest{Final: true, ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN}
	c.cmdSN++
	var h header
	req.marshal(&h)
	c.send(&h, encodeText(pairs))
	d := c.recv()
	m, ok := d.msg.(*textResponse)
	if !ok || !m.Final || m.ITT != req.ITT {
		c.t.Fatalf("Text Response: %s %+v", d.op, d.msg)
	}
	kv, err := parseText(d.data)
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string][]string{}
	for _, p := range kv {
		out[p.key] = append(out[p.key], p.value)
	}
	return out
}

func TestTextInNormalSession(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 1<<20)
	if err := srv.AddTarget("iqn.2026-11.io.chunkraid:second", newMemBackend(1<<20), "second"); err != nil {
		t.Fatal(err)
	}
	c := dialInitiator(t, addr)
	c.loginNormal()
	if got := c.textExchange(textPair{"SendTargets", ""}); len(got["TargetName"]) != 1 || got["TargetName"][0] != testIQN {
		t.Errorf("SendTargets= in a normal session: %v", got)
	}
	if got := c.textExchange(textPair{"SendTargets", "All"}); len(got["TargetName"]) != 2 || len(got["TargetAddress"]) != 2 {
		t.Errorf("SendTargets=All: %v", got)
	}
	if got := c.textExchange(textPair{"SendTargets", "iqn.2026-11.io.chunkraid:second"}); len(got["TargetName"]) != 1 {
		t.Errorf("SendTargets=<iqn>: %v", got)
	}
	got := c.textExchange(textPair{"MaxBurstLength", "512"}, textPair{"X-vendor.Key", "1"}, textPair{"MaxRecvDataSegmentLength", "4096"})
	if got["MaxBurstLength"][0] != "Reject" || got["X-vendor.Key"][0] != "NotUnderstood" || got["MaxRecvDataSegmentLength"] != nil {
		t.Errorf("text negotiation in full feature phase: %v", got)
	}
	// The redeclared MaxRecvDataSegmentLength applies to Data-In.
	r := c.command(cdbRead10(0, 32), 16384, nil, 0)
	if r.status != statusGood || len(r.dataIns) != 4 {
		t.Errorf("16 KiB read after MaxRecvDataSegmentLength=4096: status %#x, %d Data-In PDUs", r.status, len(r.dataIns))
	}
}

// TestCapacityChangeUnitAttention grows the back end: each session's next
// command reports CAPACITY DATA HAS CHANGED once, and READ CAPACITY then
// shows the new size.
func TestCapacityChangeUnitAttention(t *testing.T) {
	_, be, addr := newTestServer(t, Config{}, 1<<20)
	a := dialInitiator(t, addr)
	a.loginNormal()
	b := dialInitiator(t, addr)
	b.loginNormal()
	tur := []byte{0, 0, 0, 0, 0, 0}
	be.grow(1 << 20)

	if r := a.command([]byte{0x12, 0, 0, 0, 96, 0}, 96, nil, 0); r.status != statusGood {
		t.Errorf("INQUIRY held by the unit attention")
	}
	r := a.command(tur, 0, nil, 0)
	if key, asc := r.senseKey(); r.status != statusCheckCondition || key != senseUnitAttention || asc != ascCapacityChanged {
		t.Fatalf("first command after growth: status %#x sense %x/%04x", r.status, key, asc)
	}
	if r := a.command(tur, 0, nil, 0); r.status != statusGood {
		t.Errorf("unit attention reported twice")
	}
	rc := a.command([]byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8, nil, 0)
	if rc.status != statusGood || be32(rc.data) != 4095 {
		t.Errorf("READ CAPACITY after growth: %x", rc.data)
	}
	// REQUEST SENSE on the other session returns the unit attention and
	// clears it.
	rs := b.command([]byte{0x03, 0, 0, 0, 18, 0}, 18, nil, 0)
	if rs.status != statusGood || len(rs.data) < 14 || rs.data[2] != senseUnitAttention || rs.data[12] != 0x2a || rs.data[13] != 0x09 {
		t.Errorf("REQUEST SENSE: %x", rs.data)
	}
	if r := b.command(tur, 0, nil, 0); r.status != statusGood {
		t.Errorf("unit attention still pending after REQUEST SENSE")
	}
}

// TestMaxConnections: a portal holding MaxConnections connections closes
// one more at once; when one ends, a new one logs in.
func TestMaxConnections(t *testing.T) {
	_, _, addr := newTestServer(t, Config{MaxConnections: 2}, 1<<20)
	a := dialInitiator(t, addr)
	a.loginNormal()
	b := dialInitiator(t, addr)
	b.loginNormal()
	extra := dialInitiator(t, addr)
	if err := extra.waitClosed(3 * time.Second); err != nil {
		t.Fatalf("a third connection with MaxConnections = 2: %v", err)
	}
	a.nc.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := dialInitiator(t, addr)
		if c.waitClosed(200*time.Millisecond) != nil { // still open: served
			c.loginNormal()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection served after one of two closed")
		}
	}
}
