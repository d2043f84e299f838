package hostd

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// DefaultQoSWaitCap is how long a command over its volume's I/O limits may
// wait in the target before it is answered TASK SET FULL: well under the
// command timeouts of initiators (Linux 30 s, and qemu retries a TASK SET
// FULL within seconds).
const DefaultQoSWaitCap = 2 * time.Second

// volumeQoS enforces a volume's I/O limits (api.QoS) in front of its sets,
// one token bucket (rate.Limiter) per limit. A command takes one token of
// each command limit that applies and its bytes of each byte limit that
// applies, and waits until all are available; a command that would wait
// longer than waitCap, or past its own deadline, takes nothing and fails
// with iscsi.ErrBusy. Resync and rebuild copies go to the sets directly and
// never pass here.
//
// set changes the limits in place: a bucket that stays keeps its tokens,
// so a live change neither grants a fresh burst nor starves the volume.
type volumeQoS struct {
	waitCap time.Duration

	mu      sync.Mutex // serializes set
	buckets atomic.Pointer[qosBuckets]
	// reserve serializes the reservations of commands, so that each
	// takes its tokens at a time no earlier than the last one's: a
	// rate.Limiter asked at an earlier time than its last counts the time
	// between twice, and lets more through than its rate.
	reserve sync.Mutex

	throttled   atomic.Int64 // commands that waited
	throttledNs atomic.Int64 // their total wait
	busy        atomic.Int64 // commands refused with TASK SET FULL
}

// qosBuckets are the buckets of one set of limits; nil is unlimited.
type qosBuckets struct {
	q                         api.QoS
	iops, readIOPS, writeIOPS *rate.Limiter
	bps, readBPS, writeBPS    *rate.Limiter
}

func newVolumeQoS(waitCap time.Duration, q api.QoS) *volumeQoS {
	v := &volumeQoS{waitCap: waitCap}
	v.set(q)
	return v
}

// limits are the limits in force.
func (v *volumeQoS) limits() api.QoS {
	if b := v.buckets.Load(); b != nil {
		return b.q
	}
	return api.QoS{}
}

// set puts q in force. It reports whether the limits changed.
func (v *volumeQoS) set(q api.QoS) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.buckets.Load()
	var was qosBuckets
	if old != nil {
		was = *old
	}
	if was.q == q {
		return false
	}
	if q.IsZero() {
		v.buckets.Store(nil)
		return true
	}
	now := time.Now()
	bucket := func(prev *rate.Limiter, l api.Limit) *rate.Limiter {
		switch {
		case l.Rate == 0:
			return nil
		case prev == nil:
			return rate.NewLimiter(rate.Limit(l.Rate), int(l.Burst))
		}
		prev.SetLimitAt(now, rate.Limit(l.Rate))
		prev.SetBurstAt(now, int(l.Burst))
		return prev
	}
	v.buckets.Store(&qosBuckets{
		q:         q,
		iops:      bucket(was.iops, q.IOPS),
		readIOPS:  bucket(was.readIOPS, q.ReadIOPS),
		writeIOPS: bucket(was.writeIOPS, q.WriteIOPS),
		bps:       bucket(was.bps, q.BPS),
		readBPS:   bucket(was.readBPS, q.ReadBPS),
		writeBPS:  bucket(was.writeBPS, q.WriteBPS),
	})
	return true
}

// wait admits a command of n bytes (a write when write), waiting as its
// limits require. It returns an error wrapping iscsi.ErrBusy when the wait
// would exceed the cap or ctx's deadline, and ctx's error when ctx ends
// while waiting; the command took no tokens then.
func (v *volumeQoS) wait(ctx context.Context, write bool, n int) error {
	b := v.buckets.Load()
	if b == nil {
		return nil
	}
	cmdLim, byteLim := b.readIOPS, b.readBPS
	if write {
		cmdLim, byteLim = b.writeIOPS, b.writeBPS
	}
	var (
		rs    []*rate.Reservation
		delay time.Duration
		now   time.Time
	)
	take := func(l *rate.Limiter, n int) {
		if l == nil || n == 0 {
			return
		}
		// A command larger than the burst takes its bytes in pieces of
		// the burst: it waits for all of them and never exceeds the rate.
		for n > 0 {
			k := min(n, l.Burst())
			r := l.ReserveN(now, k)
			rs = append(rs, r)
			delay = max(delay, r.DelayFrom(now))
			n -= k
		}
	}
	v.reserve.Lock()
	now = time.Now()
	take(b.iops, 1)
	take(cmdLim, 1)
	take(b.bps, n)
	take(byteLim, n)
	v.reserve.Unlock()
	if delay == 0 {
		return nil
	}
	cancel := func() {
		v.reserve.Lock()
		defer v.reserve.Unlock()
		at := time.Now()
		for _, r := range rs {
			r.CancelAt(at)
		}
	}
	if delay > v.waitCap {
		cancel()
		v.busy.Add(1)
		return fmt.Errorf("%w: the volume is over its I/O limits (%s): this command would wait %s, more than %s",
			iscsi.ErrBusy, b.q, delay.Round(time.Millisecond), v.waitCap)
	}
	if d, ok := ctx.Deadline(); ok && now.Add(delay).After(d) {
		cancel()
		v.busy.Add(1)
		return fmt.Errorf("%w: the volume is over its I/O limits (%s): this command would wait %s, past its deadline",
			iscsi.ErrBusy, b.q, delay.Round(time.Millisecond))
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
	v.throttled.Add(1)
	v.throttledNs.Add(int64(delay))
	return nil
}
