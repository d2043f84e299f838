package iscsi

import (
	"testing"
)

// BenchmarkTarget measures 4 KiB reads and writes through a loopback
// session at queue depths 1 and 32, with the package's own initiator and an
// in-memory back end: the cost of the target itself.
func BenchmarkTarget(b *testing.B) {
	for _, bc := range []struct {
		name  string
		write bool
		depth int
	}{
		{"read/QD1", false, 1}, {"read/QD32", false, 32},
		{"write/QD1", true, 1}, {"write/QD32", true, 32},
	} {
		b.Run(bc.name, func(b *testing.B) {
			_, _, addr := newTestServer(b, Config{}, 64<<20)
			c := dialInitiator(b, addr)
			c.recvDSL = 262144
			c.loginNormal()
			buf := make([]byte, 4096)
			var out []byte
			if bc.write {
				out = buf
			}
			inflight := 0
			next := 0
			b.SetBytes(4096)
			b.ResetTimer()
			for done := 0; done < b.N; {
				for inflight < bc.depth && next < b.N {
					lba := uint32(next%16384) * 8
					cdb := cdbRead10(lba, 8)
					if bc.write {
						cdb = cdbWrite10(lba, 8, false)
					}
					c.sendCommand(c.nextITT(), cdb, 4096, out, 4096, true)
					inflight++
					next++
				}
				d := c.recv()
				switch m := d.msg.(type) {
				case *dataIn:
					if m.HasStatus {
						inflight--
						done++
					}
				case *scsiResponse:
					if m.Status != statusGood {
						b.Fatalf("status %#x", m.Status)
					}
					inflight--
					done++
				}
			}
		})
	}
}
