package nbd

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// cpuTime returns the CPU time the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkClientServer4K measures 4 KiB writes and reads through the
// client and server over loopback, against the in-memory export, at queue
// depths 1 and 32 (32 goroutines sharing one connection). Besides wall time
// it reports cpu-ns/op, the process's user+system CPU time per operation
// (client and server together), which stays meaningful on a busy machine.
func BenchmarkClientServer4K(b *testing.B) {
	const size = 64 << 20
	exp := newMemExport(size)
	addr := serveExports(b, map[string]Export{"c": exp}, nil)
	c := dial(b, ClientConfig{Addr: addr, Export: "c"})
	for _, op := range []string{"write", "read"} {
		for _, qd := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/QD%d", op, qd), func(b *testing.B) {
				b.SetBytes(4096)
				b.ReportAllocs()
				cpu0 := cpuTime(b)
				b.ResetTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				var failed atomic.Value
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
							off := (i * 4096 * 7) % size
							var err error
							if op == "write" {
								err = c.WriteAt(ctx, buf, off, false)
							} else {
								err = c.ReadAt(ctx, buf, off)
							}
							if err != nil {
								failed.Store(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
				if err, _ := failed.Load().(error); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
