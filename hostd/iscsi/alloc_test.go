package iscsi

import (
	"io"
	"runtime"
	"testing"
	"time"
)

// TestHotPathAllocations counts the heap allocations of the whole process
// while an initiator that allocates nothing runs 4 KiB reads and writes
// (with immediate data) through a session at queue depth 1. The target
// allocates one task record per command and nothing per PDU; a few more
// allocations are allowed for the runtime, but not one per PDU.
func TestHotPathAllocations(t *testing.T) {
	_, _, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.recvDSL = 65536
	c.loginNormal()
	_ = c.nc.SetDeadline(time.Now().Add(30 * time.Second))

	const n = 2000
	pdu := make([]byte, bhsLen+4096)
	var rh header
	data := make([]byte, 4096)
	run := func(write bool, i int) {
		cmd := scsiCommand{Final: true, Read: !write, Write: write, ITT: uint32(i + 1000), EDTL: 4096, CmdSN: c.cmdSN, ExpStatSN: c.expStatSN, Attr: 1}
		cdb := cdbRead10(uint32(i%64)*8, 8)
		if write {
			cdb[0] = 0x2a
		}
		copy(cmd.CDB[:], cdb)
		c.cmdSN++
		var h header
		cmd.marshal(&h)
		out := pdu[:bhsLen]
		if write {
			h.setDataLength(4096)
			out = pdu
		}
		copy(pdu, h[:])
		if _, err := c.nc.Write(out); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c.br, rh[:]); err != nil {
			t.Fatal(err)
		}
		if dl := rh.dataLength(); dl > 0 {
			if _, err := io.ReadFull(c.br, data[:dl+padLen(dl)]); err != nil {
				t.Fatal(err)
			}
		}
		op, final, status := rh.opcode(), rh[1]&0x81, rh[3]
		switch {
		case write && (op != opSCSIResponse || status != statusGood),
			!write && (op != opDataIn || final != 0x81 || status != statusGood):
			t.Fatalf("command %d: %s flags %#x status %#x", i, op, rh[1], status)
		}
		c.expStatSN = be32(rh[24:]) + 1
	}
	for i := range 200 { // warm the pools
		run(i%2 == 0, i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		run(i%2 == 0, i)
	}
	runtime.ReadMemStats(&after)
	perCmd := float64(after.Mallocs-before.Mallocs) / n
	t.Logf("%.2f heap allocations per command", perCmd)
	limit := 2.5
	if raceEnabled {
		limit = 4
	}
	if perCmd > limit {
		t.Errorf("%.2f heap allocations per command, want about 1 (the task)", perCmd)
	}
}
