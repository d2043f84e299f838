package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
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
	sets   []*setState
	log    *slog.Logger

	cancel context.CancelFunc // stops the sets' supervisors and the reporter
	wg     sync.WaitGroup
	// reportC asks the reporter goroutine for a report; reports are sent one
	// at a time, newest state each time, so they never arrive out of order.
	reportC chan struct{}
}

// member is one chunk of a set as the host reaches it.
type member struct {
	api  api.Member
	name api.ExportName
	ctl  chunkControl

	mu struct {
		sync.Mutex
		client *nbd.Client // current connection; nil while unreachable
	}
	// needLog is set for a member that was unreachable when the volume was
	// attached after an unclean stop: its LOG bitmap may name writes the
	// others never saw, so it is merged into the WIB when it comes back.
	needLog bool
}

func (m *member) req() api.ControlRequest {
	return api.ControlRequest{Host: m.name.Host, Epoch: m.name.Epoch, Token: m.name.Token}
}

func (m *member) setClient(c *nbd.Client) *nbd.Client {
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
	mirror  redundantSet // a *raid.Mirror or a *raid.EC
	// logUnit scales a member's LOG region to the set's bytes: 1 for a
	// mirror, K for ec:K+M (a member region holds whole stripes).
	logUnit int64
	log     *slog.Logger
	kick    chan struct{} // wakes the supervisor

	mu struct {
		sync.Mutex
		resyncDone, resyncTotal int64 // progress of the current or last resync
		pinned                  bool  // LOGs pinned (by this host, or by the chunkservers after an unclean stop)
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

// attach brings a volume up (DESIGN §2 rule 2): fence every member at the
// volume's epoch, open or create the set's WIB, fold in the members' LOG
// bitmaps when the previous holder did not detach cleanly, connect, and
// serve. Members that cannot be reached start degraded; the supervisor
// brings them back.
func (s *Server) attach(ctx context.Context, v api.Volume) (err error) {
	a := &attachment{s: s, vol: v, log: s.log.With("volume", v.Name, "epoch", v.Epoch), reportC: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			a.close(false)
		}
	}()
	recover := !v.CleanDetach
	var sets []raid.Device
	for _, set := range v.Sets {
		st, err := a.attachSet(ctx, set, recover)
		if err != nil {
			return fmt.Errorf("set %d: %w", set.Index, err)
		}
		a.sets = append(a.sets, st)
		sets = append(sets, st.mirror)
	}
	for _, st := range a.sets {
		if st.mirror.Degraded() {
			// Record the degraded members before serving: a host taking
			// over after our crash must not trust them.
			rctx, cancel := context.WithTimeout(ctx, 2*s.cfg.IOTimeout)
			err := s.meta.HostReport(rctx, s.id, api.HostReport{Volumes: []api.VolumeReport{a.snapshot(false)}})
			cancel()
			if err != nil {
				return fmt.Errorf("recording degraded members with the metaserver: %w", err)
			}
			break
		}
	}
	vol, err := linear.New(sets)
	if err != nil {
		return err
	}
	if vol.Size() < v.SizeBytes {
		return fmt.Errorf("sets hold %d bytes, the volume is %d", vol.Size(), v.SizeBytes)
	}
	a.volume = vol
	var lu iscsi.Backend = &lun{Volume: vol, size: v.SizeBytes}
	if a.mirrorsOnly() {
		lu = &mappedLun{lun: lu.(*lun), a: a}
	}
	if err := s.target.AddTargetWith(v.IQN, lu, targetConfig(v)); err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.reporter(sctx)
	}()
	for _, st := range a.sets {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			st.supervise(sctx)
		}()
		if v.Bitmap == api.BitmapInternal {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				st.clearDaemon(sctx)
			}()
		}
	}
	s.mu.Lock()
	s.mu.attached[v.Name] = a
	s.mu.Unlock()
	var dirty int64
	for _, st := range a.sets {
		dirty += st.wib.Count() * st.wib.RegionSize()
	}
	a.log.Info("volume attached", "iqn", v.IQN, "size", v.SizeBytes, "sets", len(v.Sets),
		"bitmap", v.Bitmap, "recovered", recover, "dirty_bytes", dirty)
	a.report()
	return nil
}

func (a *attachment) attachSet(ctx context.Context, set api.Set, recover bool) (*setState, error) {
	s := a.s
	st := &setState{a: a, idx: set.Index, kick: make(chan struct{}, 1), log: a.log.With("set", set.Index)}
	// After an unclean stop the chunkservers pinned the members' LOGs when
	// the old connections dropped; they are unpinned once the set is clean.
	st.mu.pinned = recover
	size := int64(-1)
	for _, am := range set.Members {
		name, err := api.ParseExportName(am.Export)
		if err != nil {
			return nil, fmt.Errorf("member %s: %w", am.ChunkID, err)
		}
		st.members = append(st.members, &member{api: am, name: name, ctl: s.cfg.Control(am.ControlAddr)})
	}

	// Fence first: from here on no connection of an older epoch can change
	// a member (a zombie host), so the LOG bitmaps read next are complete.
	reachable := make([]bool, len(st.members))
	var wg sync.WaitGroup
	for i, m := range st.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fctx, cancel := context.WithTimeout(ctx, 2*s.cfg.IOTimeout)
			defer cancel()
			// A new volume's chunks may not exist yet: their chunkservers
			// create them on the same notification that brought us the
			// volume. Give them a moment before calling the member absent.
			deadline := time.Now().Add(10 * time.Second)
			for {
				_, err := m.ctl.Fence(fctx, m.api.ChunkID, m.req())
				if err == nil {
					break
				}
				if api.IsNotFound(err) && time.Now().Before(deadline) {
					sleep(fctx, 200*time.Millisecond)
					continue
				}
				st.log.Warn("fencing member failed; it starts degraded", "member", i, "chunkserver", m.api.Chunkserver, "err", err)
				return
			}
			c, err := nbd.Dial(fctx, memberClientConfig(m, s.cfg.IOTimeout))
			if err != nil {
				st.log.Warn("connecting member failed; it starts degraded", "member", i, "chunkserver", m.api.Chunkserver, "err", err)
				return
			}
			m.setClient(c)
			reachable[i] = true
		}()
	}
	wg.Wait()
	var devs []raid.Device
	var degraded []int
	nReach := 0
	for i, m := range st.members {
		if reachable[i] {
			nReach++
			size = m.mu.client.Size()
			devs = append(devs, m.mu.client)
		} else {
			degraded = append(degraded, i)
			devs = append(devs, nil)
		}
	}
	// A member the previous holder recorded as degraded or resyncing missed
	// writes: it must not serve reads or be a resync source, even if it is
	// reachable now. It starts degraded and rejoins through a resync.
	var stale []int
	for i, m := range st.members {
		if reachable[i] && m.api.State != "" && m.api.State != api.MemberInSync {
			stale = append(stale, i)
			degraded = append(degraded, i)
			nReach--
		}
	}
	if len(stale) > 0 {
		st.log.Info("members recorded as not in sync start degraded", "members", stale)
	}
	if nReach == 0 {
		return nil, fmt.Errorf("no in-sync member reachable: %w", raid.ErrNoMembers)
	}
	for i := range devs {
		if devs[i] == nil {
			devs[i] = absent{size: size}
		}
	}

	layout, err := api.ParseLayout(a.vol.Layout)
	if err != nil {
		return nil, err
	}
	if layout.Kind == api.LayoutEC && nReach < layout.K {
		return nil, fmt.Errorf("only %d of %d members reachable, %s needs %d: %w", nReach, len(st.members), layout, layout.K, raid.ErrNoMembers)
	}
	setSize, stripe := size, a.vol.StripeUnit
	if layout.Kind == api.LayoutEC {
		if stripe == 0 {
			stripe = raid.DefaultStripeUnit
		}
		setSize = int64(layout.K) * (size / stripe * stripe)
		st.logUnit = int64(layout.K)
	}
	wib, reused, err := a.openWIB(set.Index, setSize)
	if err != nil {
		return nil, err
	}
	st.wib = wib
	switch {
	case a.vol.Bitmap == api.BitmapNone:
		if recover && a.vol.Epoch > 1 && !reused {
			// No record of what may differ: everything may.
			wib.Mark(0, setSize)
		}
	case recover:
		for i, m := range st.members {
			if !reachable[i] {
				m.needLog = true
				continue
			}
			if err := st.mergeLog(ctx, m); err != nil {
				st.log.Error("reading a member's LOG bitmap failed; resyncing the whole set", "member", i, "err", err)
				wib.Mark(0, setSize)
			}
		}
	}

	onChange := func(i int, ms raid.MemberState, err error) {
		a.report()
		st.wake()
	}
	var rs redundantSet
	if layout.Kind == api.LayoutEC {
		if a.vol.Bitmap == api.BitmapInternal {
			wib.Close()
			return nil, fmt.Errorf("bitmap mode internal is for mirrors; %s volumes use remb or none", layout)
		}
		rs, err = raid.NewEC(raid.ECConfig{
			Members:             devs,
			K:                   layout.K,
			M:                   layout.M,
			StripeUnit:          stripe,
			WIB:                 wib,
			Degraded:            degraded,
			BeforeDegradedWrite: st.recordDegraded,
			ResyncRate:          s.cfg.ResyncRate,
			Logger:              st.log,
			OnStateChange:       onChange,
		})
	} else {
		var intent func(context.Context) error
		if a.vol.Bitmap == api.BitmapInternal {
			intent = st.persistIntent
		}
		rs, err = raid.NewMirror(raid.MirrorConfig{
			Members:             devs,
			WIB:                 wib,
			Degraded:            degraded,
			IntentHook:          intent,
			LazyClear:           intent != nil,
			BeforeDegradedWrite: st.recordDegraded,
			ResyncRate:          s.cfg.ResyncRate,
			Logger:              st.log,
			OnStateChange:       onChange,
		})
	}
	if err != nil {
		wib.Close()
		return nil, err
	}
	st.mirror = rs
	if len(degraded) > 0 {
		// Attaching degraded: the survivors must not forget what the absent
		// members miss from now on.
		if err := st.pinSurvivors(ctx); err != nil {
			st.log.Error("pinning survivors at attach failed", "err", err)
		}
	}
	return st, nil
}

// openWIB opens the set's WIB in shared memory: a restarted hostd finds the
// one it left (same volume, set and epoch); any other file is stale and
// replaced. It reports whether an existing bitmap was reused.
func (a *attachment) openWIB(set int, size int64) (*bitmap.WIB, bool, error) {
	s := a.s
	if a.vol.Bitmap == api.BitmapNone || a.vol.Bitmap == api.BitmapInternal {
		// none keeps no record; internal keeps its record on the members.
		w, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: size, RegionSize: s.cfg.RegionSize})
		return w, false, err
	}
	if err := os.MkdirAll(s.cfg.WIBDir, 0o700); err != nil {
		return nil, false, err
	}
	cfg := bitmap.WIBConfig{Path: s.wibPath(a.vol.Name, set), Size: size, RegionSize: s.cfg.RegionSize,
		Volume: a.vol.Name, Set: set, Epoch: uint64(a.vol.Epoch)}
	_, statErr := os.Stat(cfg.Path)
	w, err := bitmap.OpenWIB(cfg)
	var he *bitmap.HeaderError
	if errors.As(err, &he) {
		a.log.Info("replacing a stale write-intent bitmap", "path", cfg.Path, "reason", err)
		if rerr := os.Remove(cfg.Path); rerr != nil {
			return nil, false, rerr
		}
		w, err = bitmap.OpenWIB(cfg)
		statErr = os.ErrNotExist
	}
	if err != nil {
		return nil, false, err
	}
	reused := statErr == nil
	if reused {
		a.log.Info("reusing the write-intent bitmap left by a previous hostd", "set", set, "dirty_regions", w.Count())
	}
	return w, reused, nil
}

// mergeLog ORs member m's record of what may differ into the WIB: its
// LOG bitmap (remb) or the intent bitmap the host stored on it (internal).
func (st *setState) mergeLog(ctx context.Context, m *member) error {
	lctx, cancel := context.WithTimeout(ctx, 2*st.a.s.cfg.IOTimeout)
	defer cancel()
	read := m.ctl.Log
	if st.a.vol.Bitmap == api.BitmapInternal {
		read = m.ctl.ReadIntent
	}
	lb, err := read(lctx, m.api.ChunkID, m.req())
	if err != nil {
		return err
	}
	if lb.RegionSize == 0 {
		return nil // no intent bitmap stored yet: nothing was written
	}
	before := st.wib.Count()
	if err := st.wib.Merge(lb.Bits, lb.RegionSize*max(st.logUnit, 1)); err != nil {
		return err
	}
	st.log.Info("merged a member's LOG bitmap", "chunk", m.api.ChunkID, "log_region", lb.RegionSize,
		"dirty_regions_before", before, "dirty_regions_after", st.wib.Count())
	return nil
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

// supervise reconnects failed members with backoff and resyncs until the
// set is clean, then unpins the LOG bitmaps. It runs until ctx ends.
func (st *setState) supervise(ctx context.Context) {
	s := st.a.s
	backoff := s.cfg.ReconnectMin
	for {
		failed := false
		for i, ms := range st.mirror.States() {
			if ms != raid.Failed {
				continue
			}
			if err := st.rejoin(ctx, i); err != nil {
				failed = true
				st.log.Debug("member still unreachable", "member", i, "err", err)
			}
		}
		if !failed && st.needsResync() {
			st.resync(ctx)
		}
		if !failed && !st.mirror.Degraded() && st.wib.Count() == 0 {
			st.unpinIfPinned(ctx)
			backoff = s.cfg.ReconnectMin
		}
		wait := time.Duration(0)
		if failed || st.needsResync() {
			wait = backoff
			backoff = min(backoff*2, s.cfg.ReconnectMax)
		}
		if wait == 0 {
			select {
			case <-ctx.Done():
				return
			case <-st.kick:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-st.kick:
		case <-time.After(wait):
		}
	}
}

func (st *setState) needsResync() bool {
	for _, ms := range st.mirror.States() {
		if ms == raid.Resyncing {
			return true
		}
	}
	for r := int64(0); r < st.wib.Regions(); r++ {
		if st.wib.NeedsResync(r) {
			return true
		}
	}
	return false
}

// rejoin reconnects failed member i: it fences at the current epoch, which
// drains any request of the dead connection still running on the
// chunkserver, reconnects, merges its LOG if it was absent at attach, and
// hands the new connection to the mirror.
func (st *setState) rejoin(ctx context.Context, i int) error {
	s := st.a.s
	m := st.members[i]
	rctx, cancel := context.WithTimeout(ctx, 2*s.cfg.IOTimeout)
	defer cancel()
	if _, err := m.ctl.Fence(rctx, m.api.ChunkID, m.req()); err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	c, err := nbd.Dial(rctx, memberClientConfig(m, s.cfg.IOTimeout))
	if err != nil {
		return err
	}
	if m.needLog {
		if err := st.mergeLog(rctx, m); err != nil {
			c.Close()
			return fmt.Errorf("reading its LOG bitmap: %w", err)
		}
		m.needLog = false
	}
	if st.a.vol.Bitmap == api.BitmapNone {
		st.mirror.MarkAll()
	}
	if err := st.mirror.Rejoin(i, c); err != nil {
		c.Close()
		return err
	}
	if old := m.setClient(c); old != nil {
		old.Close()
	}
	return nil
}

// resync runs one resync of the set with progress reports.
func (st *setState) resync(ctx context.Context) {
	st.log.Info("resync started", "dirty_regions", st.wib.Count())
	start := time.Now()
	lastReport := time.Now()
	copied, err := st.mirror.Resync(ctx, func(p raid.ResyncProgress) {
		st.mu.Lock()
		st.mu.resyncDone, st.mu.resyncTotal = p.DoneBytes, p.TotalBytes
		st.mu.Unlock()
		if time.Since(lastReport) > time.Second {
			lastReport = time.Now()
			st.a.report()
		}
	})
	st.mu.Lock()
	st.mu.resyncDone = copied
	if err == nil {
		st.mu.resyncTotal = copied
	}
	st.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			st.log.Warn("resync interrupted", "copied", copied, "err", err)
		}
		return
	}
	st.log.Info("resync done", "copied_bytes", copied, "took", time.Since(start).Round(time.Millisecond))
	st.a.report()
}

// report asks the reporter to send the volume's state to the metaserver.
func (a *attachment) report() {
	select {
	case a.reportC <- struct{}{}:
	default: // a report is already pending; it will carry the newest state
	}
}

// reporter sends state reports one at a time (best effort), and again every
// few seconds so a lost report is repaired.
func (a *attachment) reporter(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.reportC:
		case <-t.C:
		}
		r := a.snapshot(false)
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := a.s.meta.HostReport(rctx, a.s.id, api.HostReport{Volumes: []api.VolumeReport{r}}); err != nil && ctx.Err() == nil {
			a.log.Debug("reporting volume state", "err", err)
		}
		cancel()
	}
}

func (a *attachment) snapshot(clean bool) api.VolumeReport {
	r := api.VolumeReport{Name: a.vol.Name, Epoch: a.vol.Epoch, CleanDetach: clean}
	for _, st := range a.sets {
		if st.mirror == nil {
			continue
		}
		sr := api.SetReport{Index: st.idx, DirtyBytes: st.wib.Count() * st.wib.RegionSize()}
		st.mu.Lock()
		done, total := st.mu.resyncDone, st.mu.resyncTotal
		st.mu.Unlock()
		for i, ms := range st.mirror.States() {
			mr := api.MemberReport{ChunkID: st.members[i].api.ChunkID}
			switch ms {
			case raid.InSync:
				mr.State = api.MemberInSync
				mr.ResyncDoneBytes, mr.ResyncTotalBytes = done, total // the last resync's totals
			case raid.Failed:
				mr.State = api.MemberDegraded
				if err := st.mirror.MemberError(i); err != nil {
					mr.Error = err.Error()
				}
			case raid.Resyncing:
				mr.State = api.MemberResyncing
				mr.ResyncDoneBytes, mr.ResyncTotalBytes = done, total
			}
			sr.Members = append(sr.Members, mr)
		}
		r.Sets = append(r.Sets, sr)
	}
	return r
}

// close stops the supervisors, removes the target, flushes and closes. With
// clean, a volume whose sets are all in sync and flushed removes its WIB
// files and reports a clean detach, so the next attach skips recovery.
func (a *attachment) close(clean bool) {
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
	for _, st := range a.sets {
		if st.mirror != nil && (st.mirror.Degraded() || st.wib.Count() > 0) {
			clean = false
		}
	}
	var report api.VolumeReport
	if clean {
		report = a.snapshot(true)
	}
	for _, st := range a.sets {
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
			a.log.Warn("reporting the clean detach", "err", err)
		}
	}
}

// memberClientConfig is how hostd dials a member: with t_io as the request
// timeout and base:allocation for GET LBA STATUS.
func memberClientConfig(m *member, tIO time.Duration) nbd.ClientConfig {
	return nbd.ClientConfig{Addr: m.api.Addr, Export: m.api.Export, Timeout: tIO, MetaContexts: []string{nbdAllocation}}
}

const nbdAllocation = "base:allocation"

func (a *attachment) mirrorsOnly() bool {
	for _, st := range a.sets {
		if _, ok := st.mirror.(*raid.Mirror); !ok {
			return false
		}
	}
	return len(a.sets) > 0
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
	setSize := l.a.sets[0].mirror.Size()
	idx := off / setSize
	if idx >= int64(len(l.a.sets)) {
		return nil, fmt.Errorf("offset %d beyond the volume", off)
	}
	st := l.a.sets[idx]
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

// redundantSet is what hostd drives: a mirror or an erasure-coded set.
type redundantSet interface {
	raid.Device
	States() []raid.MemberState
	MemberError(i int) error
	Degraded() bool
	Rejoin(i int, d raid.Device) error
	Resync(ctx context.Context, progress func(raid.ResyncProgress)) (int64, error)
	MarkAll()
	WIB() *bitmap.WIB
	Close() error
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
