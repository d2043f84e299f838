package hostd

import (
	"context"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// reattach attaches the volume again, once, when a set lost every member it
// could serve from and they are all back (a NIC flap, or a pause of hostd
// longer than t_io, fails every member during a write). The set has no
// member to resync from, but the health machine knows which members missed
// no acknowledged write, and the reports said so: attaching again from the
// metaserver's record trusts those, reconciles their LOG regions (mirror:
// copied from one; EC: parity re-encoded) and serves again, as after a host
// crash. Writes waiting for a record when the old attachment closes fail
// unacknowledged.
func (a *attachment) reattach() {
	if !a.reattaching.CompareAndSwap(false, true) {
		return
	}
	go a.s.reattach(a)
}

// reattach runs attachment a's re-attach: the record made current first
// (a synchronous report, retried), then a detach and an attach from the
// volume the metaserver assigns, retried until it succeeds, the volume is
// no longer this host's at a's epoch, or hostd stops.
func (s *Server) reattach(a *attachment) {
	ctx := context.Background()
	if p := s.runCtx.Load(); p != nil {
		ctx = *p
	}
	a.log.Warn("a set lost every member it could serve from and they are back; attaching the volume again from the metaserver's record")
	backoff := s.cfg.ReconnectMin
	wait := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, s.cfg.ReconnectMax)
		return true
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.IOTimeout)
		err := s.meta.HostReport(rctx, s.id, api.HostReport{Volumes: []api.VolumeReport{a.snapshot(false)}})
		cancel()
		if err == nil {
			break
		}
		a.log.Warn("recording the members' states before attaching again", "err", err)
		if !wait() {
			return
		}
	}
	for {
		if !s.reattachOnce(ctx, a) {
			return
		}
		if !wait() {
			return
		}
	}
}

// reattachOnce makes one attempt; it reports whether to try again.
func (s *Server) reattachOnce(ctx context.Context, a *attachment) bool {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	name := a.vol.Name
	s.mu.Lock()
	cur, attached := s.mu.attached[name]
	s.mu.Unlock()
	switch {
	case attached && cur != a:
		return false // attached again already
	case attached:
		s.detach(name, false)
	}
	qctx, cancel := context.WithTimeout(ctx, s.cfg.IOTimeout)
	hv, err := s.meta.HostVolumes(qctx, s.id, 0, 0)
	cancel()
	if err != nil {
		a.log.Warn("reading the volume to attach it again", "err", err)
		return true
	}
	for _, v := range hv.Volumes {
		if v.Name != name {
			continue
		}
		if v.Epoch != a.vol.Epoch {
			return false // attached elsewhere or again: the assignments decide
		}
		if err := s.attach(ctx, v); err != nil {
			a.log.Warn("attaching the volume again failed; retrying", "err", err)
			return true
		}
		a.log.Info("volume attached again after every member of a set failed")
		return false
	}
	return false // no longer assigned to this host
}
