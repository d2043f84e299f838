package hostd

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestQoSRate: commands past the burst pass no faster than the rate (a
// lower bound on the time taken, which cannot flake), and a read limit
// leaves writes alone.
func TestQoSRate(t *testing.T) {
	ctx := t.Context()
	q := newVolumeQoS(time.Second, api.QoS{ReadIOPS: api.Limit{Rate: 200, Burst: 10}})
	start := time.Now()
	for range 50 {
		if err := q.wait(ctx, true, 4096); err != nil {
			t.Fatal(err)
		}
	}
	if q.throttled.Load() != 0 {
		t.Fatalf("%d writes throttled by a read limit", q.throttled.Load())
	}
	for range 50 {
		if err := q.wait(ctx, false, 4096); err != nil {
			t.Fatal(err)
		}
	}
	if least := 40 * time.Second / 200; time.Since(start) < least {
		t.Errorf("50 reads at 200 IOPS with a burst of 10 took %s, less than %s", time.Since(start), least)
	}
	if q.throttled.Load() == 0 || q.throttledNs.Load() == 0 {
		t.Error("no throttled command or time counted")
	}
}

// TestQoSBytesInPieces: a command larger than a byte limit's burst waits
// for all its bytes.
func TestQoSBytesInPieces(t *testing.T) {
	q := newVolumeQoS(time.Second, api.QoS{WriteBPS: api.Limit{Rate: 1 << 20, Burst: 64 << 10}})
	start := time.Now()
	if err := q.wait(t.Context(), true, 256<<10); err != nil {
		t.Fatal(err)
	}
	if least := time.Second * 192 / 1024; time.Since(start) < least {
		t.Errorf("256 KiB at 1 MiB/s with a burst of 64 KiB passed in %s, less than %s", time.Since(start), least)
	}
}

// TestQoSBusy: a command that would wait past the cap, or past its own
// deadline, fails at once with iscsi.ErrBusy and takes no tokens.
func TestQoSBusy(t *testing.T) {
	q := newVolumeQoS(100*time.Millisecond, api.QoS{IOPS: api.Limit{Rate: 5, Burst: 1}})
	ctx := t.Context()
	if err := q.wait(ctx, true, 4096); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := q.wait(ctx, false, 4096)
	if !errors.Is(err, iscsi.ErrBusy) {
		t.Fatalf("a command 200ms over the limit with a cap of 100ms: %v, want ErrBusy", err)
	}
	if time.Since(start) > 50*time.Millisecond {
		t.Errorf("the refusal took %s: it must not wait", time.Since(start))
	}
	q.waitCap = time.Second
	dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := q.wait(dctx, false, 4096); !errors.Is(err, iscsi.ErrBusy) {
		t.Fatalf("a command that would wait past its deadline: %v, want ErrBusy", err)
	}
	if q.busy.Load() != 2 {
		t.Errorf("busy = %d, want 2", q.busy.Load())
	}
	// The refused commands took nothing: the next waits at most one
	// interval (200ms), not three.
	start = time.Now()
	if err := q.wait(ctx, false, 4096); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Errorf("the command after two refusals waited %s: the refusals took tokens", d)
	}
}

// TestQoSLiveChange: limits change in place; removing them lets commands
// pass at once, and an unchanged set reports no change.
func TestQoSLiveChange(t *testing.T) {
	ctx := t.Context()
	lim := api.QoS{WriteIOPS: api.Limit{Rate: 1, Burst: 1}}
	q := newVolumeQoS(5*time.Second, lim)
	if q.set(lim) {
		t.Error("setting the same limits reported a change")
	}
	if err := q.wait(ctx, true, 512); err != nil {
		t.Fatal(err)
	}
	// The bucket is empty: at 1 IOPS the next write would wait a second.
	if !q.set(api.QoS{WriteIOPS: api.Limit{Rate: 1000, Burst: 1}}) {
		t.Fatal("a new rate reported no change")
	}
	start := time.Now()
	for range 20 {
		if err := q.wait(ctx, true, 512); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("20 writes at 1000 IOPS took %s: the old rate still held", d)
	}
	if !q.set(api.QoS{}) || q.limits() != (api.QoS{}) {
		t.Fatal("clearing the limits did not take")
	}
	if err := q.wait(ctx, true, 512); err != nil || q.buckets.Load() != nil {
		t.Fatalf("with no limits: %v", err)
	}
}

// TestQoSConcurrentCommands: commands from many goroutines together pass
// no faster than the rate. A rate.Limiter asked at a time earlier than its
// last request counts the time between twice, so reservations made with
// times taken outside one lock let more through than the rate.
func TestQoSConcurrentCommands(t *testing.T) {
	const (
		rate, burst   = 2000, 10
		workers, each = 32, 50
	)
	q := newVolumeQoS(5*time.Second, api.QoS{WriteIOPS: api.Limit{Rate: rate, Burst: burst}})
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range each {
				if err := q.wait(t.Context(), true, 4096); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := workers * each
	if least := time.Duration(float64(n-burst) / rate * float64(time.Second)); time.Since(start) < least {
		t.Errorf("%d commands at %d a second (burst %d) passed in %s, less than %s", n, rate, burst, time.Since(start), least)
	}
}
