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

// A crash-consistent snapshot of a volume: the host quiesces the volume
// (new commands wait in the target, the commands running finish, and every
// set is flushed), every member chunk of every set records the snapshot at
// that point, with one control call per chunkserver, all side by side, and
// commands resume. Every member holds the same bytes at that point, so
// every copy of the snapshot is the same.

// quiesce stops the volume's commands: new ones wait, the running ones
// finish, then every set is flushed. The commands resume when resume is
// called; on an error they have resumed already.
func (l *lun) quiesce(ctx context.Context) (resume func(), err error) {
	l.gate.Lock()
	if err := l.Volume.Flush(ctx); err != nil {
		l.gate.Unlock()
		return nil, fmt.Errorf("flushing the volume before the snapshot: %w", err)
	}
	return l.gate.Unlock, nil
}

// errSnapshotDegraded refuses a snapshot while a member is not in sync: it
// would miss the snapshot.
var errSnapshotDegraded = errors.New("a member of the volume is not in sync")

// takeSnapshot takes snapshot name of the volume and returns how long its
// commands were held.
func (a *attachment) takeSnapshot(ctx context.Context, name string) (time.Duration, error) {
	if !api.ValidSnapshotName(name) {
		return 0, fmt.Errorf("snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", name)
	}
	for _, st := range a.setList() {
		for i, s := range st.mirror.States() {
			if s != raid.InSync {
				return 0, fmt.Errorf("%w (set %d member %d is %s): take the snapshot once it is", errSnapshotDegraded, st.idx, i, s)
			}
		}
	}
	start := time.Now()
	resume, err := a.lu.quiesce(ctx)
	if err != nil {
		return 0, err
	}
	defer resume()
	type server struct {
		ctl   chunkControl
		addr  string
		pins  []api.ChunkPin
		took  time.Duration
		error error
	}
	servers := map[string]*server{}
	for _, st := range a.setList() {
		for _, m := range st.members {
			sv := servers[m.api.ControlAddr]
			if sv == nil {
				sv = &server{ctl: m.ctl, addr: m.api.ControlAddr}
				servers[m.api.ControlAddr] = sv
			}
			sv.pins = append(sv.pins, api.ChunkPin{Chunk: m.api.ChunkID, ControlRequest: m.req()})
		}
	}
	var wg sync.WaitGroup
	for _, sv := range servers {
		wg.Go(func() {
			t := time.Now()
			for len(sv.pins) > 0 && sv.error == nil {
				n := min(len(sv.pins), api.MaxPins)
				if _, err := sv.ctl.Snapshot(ctx, api.SnapshotRequest{Name: name, Chunks: sv.pins[:n]}); err != nil {
					sv.error = fmt.Errorf("chunkserver %s: %w", sv.addr, err)
				}
				sv.pins = sv.pins[n:]
			}
			sv.took = time.Since(t)
		})
	}
	wg.Wait()
	pause := time.Since(start)
	var errs []error
	for _, sv := range servers {
		errs = append(errs, sv.error)
	}
	if err := errors.Join(errs...); err != nil {
		return pause, fmt.Errorf("snapshot %q: %w", name, err)
	}
	a.log.Info("snapshot taken", "snapshot", name, "chunkservers", len(servers), "pause", pause)
	return pause, nil
}
