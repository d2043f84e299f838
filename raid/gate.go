package raid

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// degradeGate runs a set's BeforeDegradedWrite once per degradation and
// makes every write the set acknowledges without a member wait for it
// (DESIGN §2 rule 3: pin the survivors, and record the degradation, before
// continuing degraded). If it fails, those writes fail — the set cannot
// prove it will remember what the absent member misses — and the next
// degraded write tries again.
type degradeGate struct {
	fn  func(context.Context) error
	log *slog.Logger

	mu struct {
		sync.Mutex
		closed bool          // the set is closing: no new attempts
		stop   func()        // cancels a running attempt
		armed  bool          // a member failed since the set was last whole
		ok     bool          // fn succeeded for the current degradation
		run    chan struct{} // closed when the running attempt ends; nil when none runs
		err    error         // the last attempt's error
	}
}

// arm records that a member failed: a degraded write now needs fn.
func (g *degradeGate) arm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.mu.armed {
		g.mu.armed, g.mu.ok = true, false
	}
	if g.mu.run == nil && !g.mu.ok {
		g.startLocked()
	}
}

// done marks the gate passed without running fn (the caller did the work,
// e.g. attaching degraded after pinning).
func (g *degradeGate) done() {
	g.mu.Lock()
	g.mu.armed, g.mu.ok = true, true
	g.mu.Unlock()
}

// reset records that the set is whole again.
func (g *degradeGate) reset() {
	g.mu.Lock()
	g.mu.armed, g.mu.ok = false, false
	g.mu.Unlock()
}

func (g *degradeGate) startLocked() {
	if g.mu.closed {
		return
	}
	ch := make(chan struct{})
	g.mu.run = ch
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	g.mu.stop = cancel
	go func() {
		defer cancel()
		var err error
		if g.fn != nil {
			err = g.fn(ctx)
		}
		if err != nil {
			g.log.Error("recording the degradation (pinning the survivors' LOG bitmaps) failed; degraded writes fail until it succeeds", "err", err)
		}
		g.mu.Lock()
		g.mu.run = nil
		g.mu.err = err
		if err == nil && g.mu.armed {
			g.mu.ok = true
		}
		g.mu.Unlock()
		close(ch)
	}()
}

// wait blocks a degraded write until fn has succeeded for the current
// degradation, starting an attempt if none runs.
func (g *degradeGate) wait(ctx context.Context) error {
	g.mu.Lock()
	if !g.mu.armed || g.mu.ok {
		g.mu.Unlock()
		return nil
	}
	if g.mu.run == nil {
		g.startLocked()
	}
	ch := g.mu.run
	g.mu.Unlock()
	if ch == nil {
		return fmt.Errorf("%w: the set is closing", ErrNoMembers)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.ok || !g.mu.armed {
		return nil
	}
	return fmt.Errorf("%w: the degradation could not be recorded: %w", ErrNoMembers, g.mu.err)
}

// close cancels a running attempt, waits for it and refuses new ones: the
// set's owner may then release what fn uses.
func (g *degradeGate) close() {
	g.mu.Lock()
	g.mu.closed = true
	ch, stop := g.mu.run, g.mu.stop
	g.mu.Unlock()
	if ch != nil {
		stop()
		<-ch
	}
}
