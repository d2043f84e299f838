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
	return a.snapshotOp(ctx, name, true)
}

// dropSnapshot deletes snapshot name from every member chunk.
func (a *attachment) dropSnapshot(ctx context.Context, name string) error {
	_, err := a.snapshotOp(ctx, name, false)
	return err
}

// snapshotOp takes (take) or deletes snapshot name on every member chunk,
// with one control call per chunkserver, all side by side. A take holds
// the volume's commands meanwhile and returns how long.
func (a *attachment) snapshotOp(ctx context.Context, name string, take bool) (time.Duration, error) {
	if !api.ValidSnapshotName(name) {
		return 0, fmt.Errorf("snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", name)
	}
	start := time.Now()
	if take {
		resume, err := a.lu.quiesce(ctx)
		if err != nil {
			return 0, err
		}
		defer resume()
	}
	// Checked with the commands held, after the flush: a member that
	// failed before would miss the snapshot.
	for _, st := range a.setList() {
		for i, s := range st.mirror.States() {
			if s != raid.InSync {
				return 0, fmt.Errorf("%w (set %d member %d is %s): try again once it is", errSnapshotDegraded, st.idx, i, s)
			}
		}
	}
	type server struct {
		ctl  chunkControl
		addr string
		pins []api.ChunkPin
		err  error
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
			for len(sv.pins) > 0 && sv.err == nil {
				n := min(len(sv.pins), api.MaxPins)
				req := api.SnapshotRequest{Name: name, Chunks: sv.pins[:n]}
				var err error
				if take {
					_, err = sv.ctl.Snapshot(ctx, req)
				} else {
					_, err = sv.ctl.DeleteSnapshot(ctx, req)
				}
				if err != nil {
					sv.err = fmt.Errorf("chunkserver %s: %w", sv.addr, err)
				}
				sv.pins = sv.pins[n:]
			}
		})
	}
	wg.Wait()
	pause := time.Since(start)
	var errs []error
	for _, sv := range servers {
		errs = append(errs, sv.err)
	}
	if err := errors.Join(errs...); err != nil {
		return pause, fmt.Errorf("snapshot %q: %w", name, err)
	}
	if take {
		a.log.Info("snapshot taken", "snapshot", name, "chunkservers", len(servers), "pause", pause)
	} else {
		a.log.Info("snapshot deleted", "snapshot", name, "chunkservers", len(servers))
	}
	return pause, nil
}

// applySnapshots starts what v's snapshots ask of the host: take the
// pending ones, delete the deleting ones, each once, and report to the
// metaserver when done.
func (a *attachment) applySnapshots(v api.Volume) {
	a.setReadySnapshots(v)
	asked := map[string]bool{}
	for _, sn := range v.Snapshots {
		switch sn.State {
		case api.SnapshotPending:
			asked[api.SnapshotOpCreate+" "+sn.Name] = true
		case api.SnapshotDeleting:
			asked[api.SnapshotOpDelete+" "+sn.Name] = true
		}
	}
	a.snapMu.Lock()
	for key, done := range a.snapOps {
		if done && !asked[key] {
			delete(a.snapOps, key) // the metaserver has it: forget it
		}
	}
	a.snapMu.Unlock()
	for _, sn := range v.Snapshots {
		op := ""
		switch sn.State {
		case api.SnapshotPending:
			op = api.SnapshotOpCreate
		case api.SnapshotDeleting:
			op = api.SnapshotOpDelete
		default:
			continue
		}
		key := op + " " + sn.Name
		a.snapMu.Lock()
		if a.snapOps == nil {
			a.snapOps = map[string]bool{}
		}
		_, seen := a.snapOps[key]
		if !seen {
			a.snapOps[key] = false
		}
		a.snapMu.Unlock()
		if seen {
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			done := true
			defer func() {
				a.snapMu.Lock()
				if done {
					a.snapOps[key] = true
				} else {
					delete(a.snapOps, key) // not reported: try again
				}
				a.snapMu.Unlock()
			}()
			ctx, cancel := context.WithTimeout(a.ctx, api.SnapshotTimeout)
			defer cancel()
			rep := api.SnapshotReport{Volume: v.Name, Epoch: v.Epoch, Name: sn.Name, Op: op}
			var err error
			if op == api.SnapshotOpCreate {
				var pause time.Duration
				pause, err = a.takeSnapshot(ctx, sn.Name)
				rep.PauseMicros = pause.Microseconds()
			} else {
				err = a.dropSnapshot(ctx, sn.Name)
			}
			if err != nil {
				rep.Error = err.Error()
				a.log.Warn("snapshot "+op+" failed", "snapshot", sn.Name, "err", err)
			}
			if err := a.s.meta.ReportSnapshot(ctx, a.s.id, rep); err != nil {
				done = false
				a.log.Warn("reporting a snapshot to the metaserver", "snapshot", sn.Name, "op", op, "err", err)
			}
		}()
	}
}

// setReadySnapshots records v's ready snapshots, oldest first.
func (a *attachment) setReadySnapshots(v api.Volume) {
	var ready []string
	for _, sn := range v.Snapshots {
		if sn.State == api.SnapshotReady {
			ready = append(ready, sn.Name)
		}
	}
	a.snapMu.Lock()
	a.snapsReady = ready
	a.snapMu.Unlock()
}

func (a *attachment) readySnapshots() []string {
	a.snapMu.Lock()
	defer a.snapMu.Unlock()
	return a.snapsReady
}
