package raid

import (
	"context"
	"sync/atomic"
	"time"
)

// pacer paces a resync (or a rebuild, which is a resync of a new member):
// at most rate bytes per second overall (0: no limit), and, whenever the
// set served foreground I/O while the last region was copied, a pause as
// long as that copy took, so that the copy yields at least half the time
// to the I/O it competes with and runs at full speed on an idle set.
type pacer struct {
	rate     int64
	start    time.Time
	fg       *atomic.Int64 // the set's count of foreground operations
	lastFG   int64
	backoffs int
}

func newPacer(rate int64, fg *atomic.Int64) *pacer {
	return &pacer{rate: rate, start: time.Now(), fg: fg, lastFG: fg.Load()}
}

// after waits as the pace wants once a copy that took took has brought
// the bytes copied to copied. It returns ctx's error if ctx ends first.
func (p *pacer) after(ctx context.Context, copied int64, took time.Duration) error {
	var d time.Duration
	if p.rate > 0 {
		want := time.Duration(float64(copied) / float64(p.rate) * float64(time.Second))
		d = want - time.Since(p.start)
	}
	if n := p.fg.Load(); n != p.lastFG {
		p.lastFG = n
		p.backoffs++
		d = max(d, took)
	}
	if d <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
