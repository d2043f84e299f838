package raid

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// setHooks is the driver of a set's health machine: it runs the hooks the
// machine asks for (BeforeDegradedWrite, AfterWhole) one at a time, each in
// a goroutine of its own bounded by the hook timeout, and wakes the writes
// that wait for a record. mu is the set's lock, which guards h.
type setHooks struct {
	mu      *sync.Mutex
	h       *health
	record  func(context.Context) error
	unpin   func(context.Context) error
	timeout time.Duration
	log     *slog.Logger

	// changed is closed and replaced (under mu) whenever a hook ends.
	changed chan struct{}
	stop    context.CancelFunc // cancels the running hook; guarded by mu
	wg      sync.WaitGroup
}

// defaultHookTimeout bounds a hook when the config sets none.
const defaultHookTimeout = 5 * time.Second

func newSetHooks(mu *sync.Mutex, h *health, record, unpin func(context.Context) error, timeout time.Duration, log *slog.Logger) *setHooks {
	if timeout <= 0 {
		timeout = defaultHookTimeout
	}
	return &setHooks{mu: mu, h: h, record: record, unpin: unpin, timeout: timeout, log: log, changed: make(chan struct{})}
}

// pumpLocked starts the next hook the machine wants, if any. mu is held.
func (s *setHooks) pumpLocked() {
	c, ok := s.h.next()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	s.stop = cancel
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		fn := s.record
		if c.kind == hookUnpin {
			fn = s.unpin
		}
		var err error
		if fn != nil {
			err = fn(ctx)
		}
		switch {
		case err == nil:
		case c.kind == hookRecord:
			s.log.Error("recording the degradation (pinning the survivors' LOG bitmaps) failed; degraded writes fail until it succeeds", "gen", c.gen, "err", err)
		default:
			s.log.Warn("unpinning the members' LOG bitmaps failed; they stay pinned", "err", err)
		}
		s.mu.Lock()
		s.h.hookDone(c, err)
		close(s.changed)
		s.changed = make(chan struct{})
		s.stop = nil
		s.pumpLocked()
		s.mu.Unlock()
	}()
}

// awaitRecord blocks a write or flush that some member did not get until
// the degradation it saw is recorded; it fails if the record fails. When it
// succeeds the caller acknowledges the operation, which the members for
// which got is false have missed.
func (s *setHooks) awaitRecord(ctx context.Context, got func(i int) bool) error {
	s.mu.Lock()
	gen := s.h.degradedWrite()
	s.pumpLocked()
	for {
		done, err := s.h.recordedFor(gen)
		if done {
			if err == nil {
				s.h.acked(got)
			}
			s.mu.Unlock()
			return err
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		s.mu.Lock()
	}
}

// close stops the machine, cancels a running hook and waits for it: the
// set's owner may then release what the hooks use.
func (s *setHooks) close() {
	s.mu.Lock()
	s.h.close()
	if s.stop != nil {
		s.stop()
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	s.wg.Wait()
}
