package bench

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/linear"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// Go benchmarks of the hostd data path below the iSCSI target: a linear
// volume over one mirror:2 set, with the members in memory (the cost of the
// RAID and volume layers alone) and behind NBD over loopback (what hostd
// does per write, minus iSCSI and the disk). cpu-ns/op is the process's CPU
// time per operation, which stays meaningful on a busy 2-core machine.

const hotSize = 64 << 20

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// drive runs b.N 4 KiB operations from qd goroutines against dev.
func drive(b *testing.B, dev raid.Device, write bool, qd int) {
	b.SetBytes(4096)
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for w := range qd {
		wg.Go(func() {
			buf := make([]byte, 4096)
			buf[0] = byte(w)
			ctx := context.Background()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				off := (i * 4096 * 7) % dev.Size()
				var err error
				if write {
					err = dev.WriteAt(ctx, buf, off, false)
				} else {
					err = dev.ReadAt(ctx, buf, off)
				}
				if err != nil {
					failed.Store(&err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
}

func mirrorVolume(b *testing.B, members []raid.Device) *linear.Volume {
	m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: members}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	v, err := linear.New([]raid.Device{m})
	if err != nil {
		b.Fatal(err)
	}
	return v
}

func forEachCase(b *testing.B, dev raid.Device) {
	for _, op := range []string{"write", "read"} {
		for _, qd := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/QD%d", op, qd), func(b *testing.B) { drive(b, dev, op == "write", qd) })
		}
	}
}

// BenchmarkVolumeMem4K: linear volume → mirror:2 → two in-memory members.
func BenchmarkVolumeMem4K(b *testing.B) {
	v := mirrorVolume(b, []raid.Device{raidtest.NewMemDevice(hotSize), raidtest.NewMemDevice(hotSize)})
	forEachCase(b, v)
}

// memExport is an nbd.Export in memory.
type memExport struct{ m *MemBackend }

func (e memExport) Size() int64 { return e.m.Size() }
func (e memExport) ReadAt(p []byte, off int64) error {
	return e.m.ReadAt(context.Background(), p, off)
}
func (e memExport) WriteAt(p []byte, off int64) error {
	return e.m.WriteAt(context.Background(), p, off, false)
}
func (e memExport) Sync() error { return nil }
func (e memExport) Trim(off, length int64) error {
	return e.m.WriteAt(context.Background(), make([]byte, length), off, false)
}
func (e memExport) WriteZeroes(off, length int64, noHole bool) error { return e.Trim(off, length) }

// nbdMember serves a memory export on loopback and returns a client of it.
func nbdMember(b *testing.B) *nbd.Client {
	be, err := NewMemBackend(hotSize)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := nbd.NewServer(nbd.ServerConfig{Lookup: func(string) (nbd.Export, error) { return memExport{be}, nil }})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, ln) }()
	c, err := nbd.Dial(ctx, nbd.ClientConfig{Addr: ln.Addr().String(), Export: "chunk", Timeout: 5 * time.Second})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		cancel()
		<-done
	})
	return c
}

// BenchmarkVolumeNBD4K: linear volume → mirror:2 → two NBD clients → two
// NBD servers over loopback with memory exports: hostd's per-write work and
// the chunkservers' protocol work, without the iSCSI target or a disk.
func BenchmarkVolumeNBD4K(b *testing.B) {
	v := mirrorVolume(b, []raid.Device{nbdMember(b), nbdMember(b)})
	forEachCase(b, v)
}

// BenchmarkMemBackend4K is the floor under the memtarget figures: the
// memory back end alone.
func BenchmarkMemBackend4K(b *testing.B) {
	m, err := NewMemBackend(hotSize)
	if err != nil {
		b.Fatal(err)
	}
	for _, op := range []string{"write", "read"} {
		b.Run(op, func(b *testing.B) {
			buf := make([]byte, 4096)
			ctx := context.Background()
			b.SetBytes(4096)
			for i := 0; b.Loop(); i++ {
				off := (int64(i) * 4096 * 7) % hotSize
				var err error
				if op == "write" {
					err = m.WriteAt(ctx, buf, off, false)
				} else {
					err = m.ReadAt(ctx, buf, off)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
