package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/linear"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// attachment is one volume served by this host.
type attachment struct {
	s      *Server
	vol    api.Volume
	volume *linear.Volume
	lu     *lun // what the target serves (its size grows with the volume)
	stats  *volumeStats
	// setsP holds the sets, appended to by attachSet (at attach and when
	// the volume grows) and read by anything: read them with setList.
	setsP atomic.Pointer[[]*setState]
	log   *slog.Logger

	cancel context.CancelFunc // stops the sets' supervisors and the reporter
	ctx    context.Context    // what cancel ends: the supervisors run in it
	wg     sync.WaitGroup
	// reportC asks the reporter goroutine for a report; reports are sent one
	// at a time, newest state each time, so they never arrive out of order.
	reportC chan struct{}
	// rec records the sets' degradations, several at once.
	rec recorder
	// reattaching is set once a set lost every member it could serve from
	// and the volume is being attached again (Server.reattach).
	reattaching atomic.Bool
	// snapOps holds the snapshot operations ("create NAME", "delete NAME")
	// running (false) or done (true): each is started once, and a done one
	// is not started again while the assignment still shows it as asked
	// for (until the metaserver has applied the report).
	snapMu  sync.Mutex
	snapOps map[string]bool
	// snapsReady are the volume's ready snapshots, oldest first, as the
	// assignment last showed them (guarded by snapMu): a member rebuilt
	// onto a new chunk gets their layers first (seedSnapshots).
	snapsReady []string
}

// setList is the volume's sets, in order.
func (a *attachment) setList() []*setState {
	if p := a.setsP.Load(); p != nil {
		return *p
	}
	return nil
}

// addSet appends st to the sets; attach and grow call it, one at a time
// (Server.applyMu).
func (a *attachment) addSet(st *setState) {
	sets := append(slices.Clone(a.setList()), st)
	a.setsP.Store(&sets)
}

// member is one chunk of a set as the host reaches it.
type member struct {
	api  api.Member
	name api.ExportName
	ctl  chunkControl

	mu struct {
		sync.Mutex
		client memberConn // current connection; nil while unreachable
	}
	// rebuild is set while the member is a new chunk being rebuilt
	// (recorded rebuilding): it rejoins through a rebuild and is reported
	// rebuilding until it is in sync.
	rebuild atomic.Bool
	// rebuiltThrough is how far its rebuild has durably got (a set offset;
	// api.Member.RebuildWatermark): the recorded one at attach, then the
	// resync's progress. A rebuild that starts again begins there.
	rebuiltThrough atomic.Int64
	// seenGen is the highest api.Member.StateGen (the metaserver's own mark
	// of the member) this host has acted on; reports carry it as SeenGen.
	seenGen atomic.Int64
	// needLog is set for a member that was unreachable when the volume was
	// attached after an unclean stop: its LOG bitmap may name writes the
	// others never saw, so it is merged into the WIB when it comes back.
	needLog bool
}

func (m *member) req() api.ControlRequest {
	return api.ControlRequest{Host: m.name.Host, Epoch: m.name.Epoch, Token: m.name.Token}
}

// conn is the member's current connection, nil while it is unreachable.
func (m *member) conn() memberConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.client
}

func (m *member) setClient(c memberConn) memberConn {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.mu.client
	m.mu.client = c
	return old
}

// setState is one RAID set of an attached volume with its supervisor.
type setState struct {
	a       *attachment
	idx     int
	members []*member
	wib     *bitmap.WIB
	mirror  raid.Set // a *raid.Mirror or a *raid.EC
	// logUnit scales a member's LOG region to the set's bytes: 1 for a
	// mirror, K for ec:K+M (a member region holds whole stripes).
	logUnit int64
	// need is how many members in sync the set needs to serve: 1 for a
	// mirror, K for ec:K+M.
	need int
	log  *slog.Logger
	kick chan struct{} // wakes the supervisor

	mu struct {
		sync.Mutex
		resyncDone, resyncTotal int64 // progress of the current or last resync
		pinned                  bool  // LOGs pinned (by this host, or by the chunkservers after an unclean stop)
		// reconciling is set while a resync runs with every member in
		// sync (after an unclean stop); reconciles counts the finished
		// ones since the attach.
		reconciling bool
		reconciles  int64
		// logIncomplete: a region may differ between the members that no
		// pinned LOG records (a record's pins failed); reported as
		// api.SetReport.FullResync until the set is whole again.
		logIncomplete bool
	}
}

func (st *setState) wake() {
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// wibPath names the set's WIB file. The host name keeps two hostds on one
// machine apart.
func (s *Server) wibPath(volume string, set int) string {
	return filepath.Join(s.cfg.WIBDir, fmt.Sprintf("%s.set%d.wib", volume, set))
}

// persistIntent writes the whole WIB to every member the set uses, in
// parallel, and waits (bitmap mode internal, like MD's internal bitmap). It
// fails only if no member stored it: a member that missed it is failed by
// its next data write error, or reads an older record that the others
// cover.
func (st *setState) persistIntent(ctx context.Context) error {
	bits := make([]byte, (st.wib.Regions()+7)/8)
	rs := st.wib.RegionSize()
	for _, r := range st.wib.Dirty() {
		for off := r.Off; off < r.Off+r.Len; off += rs {
			i := off / rs
			bits[i/8] |= 1 << (i % 8)
		}
	}
	states := st.mirror.States()
	ctx, cancel := context.WithTimeout(ctx, st.a.s.cfg.IOTimeout)
	defer cancel()
	errs := make([]error, len(st.members))
	var wg sync.WaitGroup
	ok := 0
	for i, m := range st.members {
		if states[i] == raid.Failed {
			errs[i] = errAbsent
			continue
		}
		ok++
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.ctl.WriteIntent(ctx, m.api.ChunkID, api.IntentRequest{ControlRequest: m.req(), RegionSize: rs, Bits: bits})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil && states[i] != raid.Failed {
			st.log.Warn("storing the intent bitmap on a member failed", "member", i, "err", err)
			ok--
		}
	}
	if ok == 0 {
		return fmt.Errorf("no member stored the intent bitmap: %w", errors.Join(errs...))
	}
	return nil
}

// clearDaemon clears clean regions every few seconds and stores the
// cleared bitmap (bitmap mode internal), as MD's bitmap daemon does.
func (st *setState) clearDaemon(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, ok := st.mirror.(*raid.Mirror)
		if ok && m.ClearClean() > 0 {
			if err := st.persistIntent(ctx); err != nil && ctx.Err() == nil {
				st.log.Warn("storing the cleared intent bitmap", "err", err)
			}
		}
	}
}

// close stops the supervisors, removes the target, flushes and closes. With
// clean, a volume whose sets are all in sync and flushed removes its WIB
// files and reports a clean detach, so the next attach skips recovery. It
// returns whether the detach was clean: asked for, every set in sync and
// flushed, and the metaserver told so.
func (a *attachment) close(clean bool) bool {
	if a.cancel != nil {
		a.cancel()
		a.wg.Wait()
	}
	if a.volume != nil {
		if err := a.s.target.RemoveTarget(a.vol.IQN); err != nil {
			a.log.Warn("removing target", "err", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*a.s.cfg.IOTimeout)
		if err := a.volume.Flush(ctx); err != nil {
			a.log.Error("final flush of the volume failed", "err", err)
			clean = false
		}
		cancel()
	}
	for _, st := range a.setList() {
		if st.mirror != nil && (st.mirror.Degraded() || st.wib.Count() > 0) {
			clean = false
		}
	}
	var report api.VolumeReport
	if clean {
		report = a.snapshot(true)
	}
	// No record may read the sets while they close.
	a.rec.close()
	for _, st := range a.setList() {
		for _, m := range st.members {
			if c := m.setClient(nil); c != nil {
				// NBD_CMD_DISC: a clean disconnect does not pin the LOG.
				c.Close()
			}
		}
		if st.mirror != nil {
			// Stops a degradation being recorded, which reads the WIB.
			st.mirror.Close()
		}
		if st.wib != nil {
			if clean {
				st.wib.Remove()
			} else {
				st.wib.Close()
			}
		}
	}
	if clean && a.s.id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.s.meta.HostReport(ctx, a.s.id, api.HostReport{Volumes: []api.VolumeReport{report}}); err != nil {
			a.log.Warn("reporting the clean detach failed: the next attach recovers from the LOG bitmaps", "err", err)
			return false
		}
	}
	return clean
}

func (a *attachment) mirrorsOnly() bool {
	for _, st := range a.setList() {
		if _, ok := st.mirror.(*raid.Mirror); !ok {
			return false
		}
	}
	return len(a.setList()) > 0
}

// mappedLun answers GET LBA STATUS for a volume of mirrors from the
// chunks' allocation (NBD base:allocation of an in-sync member).
type mappedLun struct {
	*lun
	a *attachment
}

// Allocated implements iscsi.Mapper: it describes [off, off+length) from
// off as data and hole extents, at most to the end of one set.
func (l *mappedLun) Allocated(ctx context.Context, off, length int64) ([]iscsi.Extent, error) {
	sets := l.a.setList()
	setSize := sets[0].mirror.Size()
	idx := off / setSize
	if idx >= int64(len(sets)) {
		return nil, fmt.Errorf("offset %d beyond the volume", off)
	}
	st := sets[idx]
	setOff := off - idx*setSize
	n := min(length, setSize-setOff, 1<<30)
	for i, ms := range st.mirror.States() {
		if ms != raid.InSync {
			continue
		}
		st.members[i].mu.Lock()
		c := st.members[i].mu.client
		st.members[i].mu.Unlock()
		if c == nil {
			continue
		}
		ext, err := c.BlockStatus(ctx, nbdAllocation, setOff, n)
		if err != nil {
			continue
		}
		out := make([]iscsi.Extent, 0, len(ext))
		for _, e := range ext {
			out = append(out, iscsi.Extent{Length: e.Length, Hole: e.Flags&nbd.StateHole != 0})
		}
		if len(out) > 0 {
			return out, nil
		}
	}
	// No member could tell: every block counts as mapped, which SBC allows.
	return []iscsi.Extent{{Length: n}}, nil
}

// targetConfig is the iSCSI configuration of a volume: its serial, CHAP
// credentials and initiator allowlist.
func targetConfig(v api.Volume) iscsi.TargetConfig {
	cfg := iscsi.TargetConfig{Serial: v.Name, AllowedInitiators: v.Auth.AllowedInitiators}
	if v.Auth.CHAPUser != "" {
		cfg.CHAP = &iscsi.CHAP{User: v.Auth.CHAPUser, Secret: v.Auth.CHAPSecret,
			MutualUser: v.Auth.MutualUser, MutualSecret: v.Auth.MutualSecret}
	}
	return cfg
}

// absent stands in for a member that could not be reached at attach; the
// mirror never sends it I/O because it starts Failed.
type absent struct{ size int64 }

var errAbsent = errors.New("member not connected")

func (a absent) ReadAt(context.Context, []byte, int64) error        { return errAbsent }
func (a absent) WriteAt(context.Context, []byte, int64, bool) error { return errAbsent }
func (a absent) Flush(context.Context) error                        { return errAbsent }
func (a absent) Trim(context.Context, int64, int64) error           { return errAbsent }
func (a absent) Size() int64                                        { return a.size }
