package hostd

import (
	"context"
	"errors"
	"fmt"

	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// recordDegraded runs before the set acknowledges its first write without
// a member: it pins the survivors' LOG bitmaps and records the member's
// state with the metaserver, so that a host taking the volume over after
// a crash neither forgets what the member missed nor trusts it.
func (st *setState) recordDegraded(ctx context.Context) error {
	if err := st.pinSurvivors(ctx); err != nil {
		return err
	}
	r := st.a.snapshot(false)
	if err := st.a.s.meta.HostReport(ctx, st.a.s.id, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil {
		return fmt.Errorf("recording the degraded member with the metaserver: %w", err)
	}
	return nil
}

// pinSurvivors pins the LOG bitmaps of every member the set still uses.
func (st *setState) pinSurvivors(ctx context.Context) error {
	states := st.mirror.States()
	var errs []error
	for i, m := range st.members {
		if states[i] == raid.Failed {
			continue
		}
		if _, err := m.ctl.Pin(ctx, m.api.ChunkID, m.req()); err != nil {
			errs = append(errs, fmt.Errorf("member %d: %w", i, err))
		}
	}
	st.mu.Lock()
	st.mu.pinned = true
	st.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	st.log.Info("pinned the survivors' LOG bitmaps")
	return nil
}

// unpinAll lets every member's LOG forget again once the set is in sync.
func (st *setState) unpinAll(ctx context.Context) {
	for i, m := range st.members {
		if _, err := m.ctl.Unpin(ctx, m.api.ChunkID, m.req()); err != nil {
			st.log.Warn("unpinning a member's LOG bitmap failed", "member", i, "err", err)
		}
	}
	st.mu.Lock()
	st.mu.pinned = false
	st.mu.Unlock()
}

// unpinIfPinned unpins every member's LOG bitmap if the set pinned them;
// supervise calls it once the set is clean.
func (st *setState) unpinIfPinned(ctx context.Context) {
	st.mu.Lock()
	pinned := st.mu.pinned
	st.mu.Unlock()
	if pinned {
		st.unpinAll(ctx)
	}
}
