package hostd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// recordBudget is how long the record of a degradation may take, retries
// included, while the writes that need it wait: three times t_io. With the
// t_io it took to fail the member, a degraded write waits at most 4·t_io
// (20 s with the default 5 s) before it is acknowledged or fails with a
// status the initiator retries, well inside the usual 30 s SCSI command
// timeout (DESIGN §5).
func recordBudget(tIO time.Duration) time.Duration { return 3 * tIO }

// recorder records the degradations of one volume's sets together (a group
// commit). One chunkserver failing degrades every set with a member on it
// at once, and each set asks for a record before its first degraded write.
// The sets that ask while a record runs join the next one, which pins the
// survivors of all of them with one call per survivor chunkserver and
// stores the volume's state with one report: a few records for hundreds of
// sets, not one each.
type recorder struct {
	a  *attachment
	wg sync.WaitGroup // the goroutine that runs batches
	mu struct {
		sync.Mutex
		open    *recordBatch       // the batch new requests join; guarded by mu
		running bool               // a goroutine runs batches; guarded by mu
		inBatch int                // sets in the batch being recorded; guarded by mu
		closed  bool               // no batch starts any more; guarded by mu
		cancel  context.CancelFunc // cancels the running batch; guarded by mu
	}
}

// errRecorderClosed fails the records asked for after the volume began to
// detach.
var errRecorderClosed = errors.New("the volume is detaching")

// close cancels the running batch, fails the waiting ones and waits for the
// goroutine, so that the sets and their WIBs can be closed.
func (r *recorder) close() {
	r.mu.Lock()
	r.mu.closed = true
	if r.mu.cancel != nil {
		r.mu.cancel()
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	if b := r.mu.open; b != nil {
		r.mu.open = nil
		b.err = errRecorderClosed
		close(b.done)
	}
	r.mu.Unlock()
}

// recordBatch is one record of the degradations of several sets.
type recordBatch struct {
	sets []*setState
	done chan struct{} // closed when err is set
	err  error
}

// record asks for a record that covers st's degradation as it is now and
// waits for it, or for ctx.
func (r *recorder) record(ctx context.Context, st *setState) error {
	r.mu.Lock()
	if r.mu.closed {
		r.mu.Unlock()
		return errRecorderClosed
	}
	b := r.mu.open
	if b == nil {
		b = &recordBatch{done: make(chan struct{})}
		r.mu.open = b
	}
	b.sets = append(b.sets, st)
	if !r.mu.running {
		r.mu.running = true
		r.wg.Add(1)
		go r.run()
	}
	r.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for the record of the degradation: %w", ctx.Err())
	}
}

// pending returns the number of set requests in the batch being recorded
// and in the one waiting to start.
func (r *recorder) pending() (recording, waiting int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.open != nil {
		waiting = len(r.mu.open.sets)
	}
	return r.mu.inBatch, waiting
}

// run runs the batches one at a time until none is open.
func (r *recorder) run() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		b := r.mu.open
		if b == nil || r.mu.closed {
			r.mu.running, r.mu.inBatch = false, 0
			r.mu.Unlock()
			return
		}
		r.mu.open = nil
		r.mu.inBatch = len(b.sets)
		ctx, cancel := context.WithTimeout(context.Background(), recordBudget(r.a.s.cfg.IOTimeout))
		r.mu.cancel = cancel
		r.mu.Unlock()
		b.err = r.a.recordWithRetries(ctx, b.sets)
		cancel()
		r.mu.Lock()
		r.mu.cancel = nil
		r.mu.Unlock()
		close(b.done)
	}
}

// recordWithRetries records the degradations of sets. A failed attempt (a
// metaserver or chunkserver slow for a moment) is retried, each attempt
// bounded by t_io, until ctx (the record budget) ends; a refusal (the
// volume is no longer this host's) is not retried.
func (a *attachment) recordWithRetries(ctx context.Context, sets []*setState) error {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, a.s.cfg.IOTimeout)
		err := a.recordOnce(actx, sets)
		cancel()
		if err == nil {
			if attempt > 1 {
				a.log.Info("degradation recorded after retries", "attempts", attempt, "sets", len(sets))
			}
			return nil
		}
		var ae *api.Error
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
			return err
		}
		a.log.Warn("recording the degradation failed; retrying", "attempt", attempt, "sets", len(sets), "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d attempts: %w", attempt, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// recordOnce pins the LOG bitmaps of every member the sets still use, one
// call per chunkserver, then stores the volume's state (whose degraded
// members the next host must not trust) with one report.
func (a *attachment) recordOnce(ctx context.Context, sets []*setState) error {
	pinErr := a.pinSurvivors(ctx, sets)
	if pinErr != nil {
		for _, st := range sets {
			// The regions the failed member missed may be forgotten by
			// the survivors' LOGs: a host that takes over must resync the
			// whole set (DESIGN §2 rule 3).
			st.mu.Lock()
			st.mu.logIncomplete = true
			st.mu.Unlock()
		}
		r := a.snapshot(false)
		if err := a.s.meta.HostReport(ctx, a.s.id, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil {
			a.log.Warn("recording that the sets need a full resync after a failed pin", "err", err)
		}
		return pinErr
	}
	r := a.snapshot(false)
	if err := a.s.meta.HostReport(ctx, a.s.id, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil {
		return fmt.Errorf("recording the degraded members with the metaserver: %w", err)
	}
	a.log.Info("degradation recorded: the survivors' LOG bitmaps are pinned", "sets", len(sets))
	return nil
}

// pinSurvivors pins the LOG bitmaps of every member the sets still use,
// with one call per chunkserver (in parallel), and counts the sets' LOGs as
// pinned: some may be even if a call failed.
func (a *attachment) pinSurvivors(ctx context.Context, sets []*setState) error {
	type server struct {
		ctl  chunkControl
		pins []api.ChunkPin
	}
	servers := map[string]*server{}
	var order []string
	for _, st := range sets {
		states := st.mirror.States()
		for i, m := range st.members {
			if states[i] == raid.Failed {
				continue
			}
			sv := servers[m.api.ControlAddr]
			if sv == nil {
				sv = &server{ctl: m.ctl}
				servers[m.api.ControlAddr] = sv
				order = append(order, m.api.ControlAddr)
			}
			sv.pins = append(sv.pins, api.ChunkPin{Chunk: m.api.ChunkID, ControlRequest: a.s.pinReq(m)})
		}
	}
	errs := make([]error, len(order))
	var wg sync.WaitGroup
	for j, addr := range order {
		wg.Go(func() {
			sv := servers[addr]
			for len(sv.pins) > 0 {
				n := min(len(sv.pins), api.MaxPins)
				if _, err := sv.ctl.PinMany(ctx, api.PinRequest{Pins: sv.pins[:n]}); err != nil {
					errs[j] = fmt.Errorf("pinning %d chunks on %s: %w", n, addr, err)
					return
				}
				sv.pins = sv.pins[n:]
			}
		})
	}
	wg.Wait()
	for _, st := range sets {
		st.mu.Lock()
		st.mu.pinned = true
		st.mu.Unlock()
	}
	return errors.Join(errs...)
}
