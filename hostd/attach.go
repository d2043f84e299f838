package hostd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/linear"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/remb"
)

// attach brings a volume up (DESIGN §2 rule 2): fence every member at the
// volume's epoch, open or create the set's WIB, fold in the members' LOG
// bitmaps when the previous holder did not detach cleanly, connect, and
// serve. Members that cannot be reached start degraded; the supervisor
// brings them back.
func (s *Server) attach(ctx context.Context, v api.Volume) (err error) {
	a := &attachment{s: s, vol: v, log: s.log.With("volume", v.Name, "epoch", v.Epoch), reportC: make(chan struct{}, 1)}
	a.rec.a = a
	a.setReadySnapshots(v)
	defer func() {
		if err != nil {
			a.close(false)
		}
	}()
	recover := !v.CleanDetach
	for _, set := range v.Sets {
		if err := a.attachSet(ctx, set, recover); err != nil {
			return fmt.Errorf("set %d: %w", set.Index, err)
		}
	}
	if err := a.recordAttached(ctx); err != nil {
		return err
	}
	if err := a.serve(); err != nil {
		return err
	}
	a.start()
	s.mu.Lock()
	s.mu.attached[v.Name] = a
	s.mu.Unlock()
	var dirty int64
	for _, st := range a.setList() {
		dirty += st.wib.Count() * st.wib.RegionSize()
	}
	a.log.Info("volume attached", "iqn", v.IQN, "size", v.SizeBytes, "sets", len(v.Sets),
		"bitmap", v.Bitmap, "recovered", recover, "dirty_bytes", dirty)
	a.report()
	return nil
}

// recordAttached reports the volume attached and not clean, with its
// members' states, and waits for the metaserver to store it; attach calls
// it before the target serves. It clears a clean detach the metaserver
// holds for this epoch (a restarted hostd attaches at the same epoch): a
// reboot after the first write would otherwise skip the next recovery. And
// it records the degraded members: a host taking over after our crash
// must not trust them.
func (a *attachment) recordAttached(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 2*a.s.cfg.IOTimeout)
	defer cancel()
	if err := a.s.meta.HostReport(rctx, a.s.id, api.HostReport{Volumes: []api.VolumeReport{a.snapshot(false)}}); err != nil {
		return fmt.Errorf("recording the attach with the metaserver: %w", err)
	}
	return nil
}

// serve concatenates the sets and adds the volume's iSCSI target.
func (a *attachment) serve() error {
	var sets []raid.Device
	for _, st := range a.setList() {
		sets = append(sets, st.mirror)
	}
	vol, err := linear.New(sets)
	if err != nil {
		return err
	}
	if vol.Size() < a.vol.SizeBytes {
		return fmt.Errorf("sets hold %d bytes, the volume is %d", vol.Size(), a.vol.SizeBytes)
	}
	a.volume = vol
	a.stats = newVolumeStats()
	a.lu = &lun{Volume: vol, ops: volumeOps{m: a.s.metrics, name: a.vol.Name, stats: a.stats}, qos: newVolumeQoS(a.s.cfg.QoSWaitCap, a.vol.QoS)}
	a.stats.qos = a.lu.qos
	a.lu.size.Store(a.vol.SizeBytes)
	var lu iscsi.Backend = a.lu
	if a.mirrorsOnly() {
		lu = &mappedLun{lun: a.lu, a: a}
	}
	return a.s.target.AddTargetWith(a.vol.IQN, lu, targetConfig(a.vol))
}

// grow takes a resize of the volume (v, at the same epoch, its sets a.vol's
// and maybe more) without a detach: it attaches the new sets as fresh ones,
// appends them to the volume, then serves the new size, which the target
// reports to each initiator as CAPACITY DATA HAS CHANGED. On an error the
// caller attaches the volume again.
func (a *attachment) grow(ctx context.Context, v api.Volume) error {
	have := len(a.setList())
	for _, set := range v.Sets[have:] {
		if err := a.attachSet(ctx, set, false); err != nil {
			return fmt.Errorf("set %d: %w", set.Index, err)
		}
	}
	added := a.setList()[have:]
	devs := make([]raid.Device, len(added))
	for i, st := range added {
		devs[i] = st.mirror
	}
	if err := a.volume.Grow(devs...); err != nil {
		return err
	}
	if a.volume.Size() < v.SizeBytes {
		return fmt.Errorf("sets hold %d bytes, the volume is %d", a.volume.Size(), v.SizeBytes)
	}
	a.startSets(added)
	a.vol.Sets, a.vol.SizeBytes = v.Sets, v.SizeBytes
	a.lu.size.Store(v.SizeBytes)
	a.log.Info("volume grown in place", "size", v.SizeBytes, "sets", len(v.Sets), "new_sets", len(added))
	a.report()
	return nil
}

// start runs the reporter and, per set, the supervisor (and the clear
// daemon of bitmap mode internal) until close.
func (a *attachment) start() {
	sctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.reporter(sctx)
	}()
	a.ctx = sctx
	a.startSets(a.setList())
}

// startSets runs the supervisor (and the clear daemon of bitmap mode
// internal) of each of sets until close.
func (a *attachment) startSets(sets []*setState) {
	for _, st := range sets {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			st.supervise(a.ctx)
		}()
		if a.vol.Bitmap == api.BitmapInternal {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				st.clearDaemon(a.ctx)
			}()
		}
	}
}

// attachSet brings one set up and adds it to a.setList(): it fences and
// connects the members, plans which of them serve, opens the WIB, folds in
// the LOG bitmaps and builds the raid set. The set joins a.setList() as soon as
// it exists, so that close releases whatever it holds (connections, WIB,
// set) when the attach fails half-way.
func (a *attachment) attachSet(ctx context.Context, set api.Set, recover bool) error {
	st, err := a.newSetState(set, recover)
	if err != nil {
		return err
	}
	a.addSet(st)
	layout, err := api.ParseLayout(a.vol.Layout)
	if err != nil {
		return err
	}
	reachable := st.connect(ctx)
	st.need = 1
	if layout.Kind == api.LayoutEC {
		st.need = layout.K
	}
	fullResync := func(in *remb.AttachInput) { in.FullResync = set.FullResync }
	p, err := planSet(st.members, reachable, st.need, a.vol, recover, fullResync)
	if err != nil {
		return err
	}
	if len(p.Stale) > 0 {
		st.log.Info("members recorded as not in sync start degraded", "members", p.Stale)
	}
	setSize, stripe := p.size, a.vol.StripeUnit
	if layout.Kind == api.LayoutEC {
		if stripe == 0 {
			stripe = raid.DefaultStripeUnit
		}
		setSize = int64(layout.K) * (p.size / stripe * stripe)
		st.logUnit = int64(layout.K)
	}
	wib, reused, err := a.openWIB(set.Index, setSize)
	if err != nil {
		return err
	}
	st.wib = wib
	if reused {
		// The plan was made before the WIB was found: a reused one is
		// itself a record of what may differ.
		if p, err = planSet(st.members, reachable, st.need, a.vol, recover, fullResync, withReusedWIB); err != nil {
			return err
		}
	}
	st.recoverWIB(ctx, p.AttachPlan, setSize)
	rs, err := st.buildSet(p, layout, stripe)
	if err != nil {
		return err
	}
	st.mirror = rs
	if p.PinSurvivors {
		// Attaching degraded: the survivors must not forget what the absent
		// members miss from now on.
		// Serving without the pin would let them forget it after T.
		if err := a.pinSurvivors(ctx, []*setState{st}); err != nil {
			return fmt.Errorf("pinning the survivors' LOG bitmaps: %w", err)
		}
		st.log.Info("pinned the survivors' LOG bitmaps")
	}
	return nil
}

// newSetState is set's state before any member is contacted.
func (a *attachment) newSetState(set api.Set, recover bool) (*setState, error) {
	st := &setState{a: a, idx: set.Index, kick: make(chan struct{}, 1), log: a.log.With("set", set.Index)}
	// After an unclean stop the chunkservers pinned the members' LOGs when
	// the old connections dropped; they are unpinned once the set is clean.
	st.mu.pinned = recover
	// A record the previous holder could not complete stays until the set
	// is whole again.
	st.mu.logIncomplete = set.FullResync
	for _, am := range set.Members {
		name, err := api.ParseExportName(am.Export)
		if err != nil {
			return nil, fmt.Errorf("member %s: %w", am.ChunkID, err)
		}
		m := &member{api: am, name: name, ctl: a.s.cfg.Control(am.ControlAddr)}
		// The plan already treats a member the metaserver marked degraded
		// as recorded degraded.
		m.seenGen.Store(am.StateGen)
		m.rebuild.Store(am.State == api.MemberRebuilding)
		if am.State == api.MemberRebuilding {
			m.rebuiltThrough.Store(am.RebuildWatermark)
		}
		st.members = append(st.members, m)
	}
	return st, nil
}

// connect fences every member at the volume's epoch and then dials it, all
// members in parallel. It reports which members are connected; the others
// start degraded.
func (st *setState) connect(ctx context.Context) []bool {
	s := st.a.s
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
			c, err := s.cfg.Dial(fctx, memberClientConfig(m, s.cfg.IOTimeout))
			if err != nil {
				st.log.Warn("connecting member failed; it starts degraded", "member", i, "chunkserver", m.api.Chunkserver, "err", err)
				return
			}
			m.setClient(s.metrics.meter(c, st.a.vol.Name, st.idx, i))
			reachable[i] = true
		}()
	}
	wg.Wait()
	return reachable
}

// setPlan is the attach plan of a set (remb.PlanAttach) with the members'
// devices: the connections of the reachable ones, absent for the others.
type setPlan struct {
	remb.AttachPlan
	devs []raid.Device
	size int64 // the members' size
}

// withReusedWIB makes planSet plan with the WIB a previous hostd left.
func withReusedWIB(in *remb.AttachInput) { in.WIBReused = true }

// planSet asks remb.PlanAttach which members of a set serve at attach and
// what the attach must do: a member the previous holder recorded as
// degraded or resyncing missed writes (remb.Member.Missed). It fails with
// raid.ErrNoMembers when too few members that missed nothing are reachable.
func planSet(members []*member, reachable []bool, need int, v api.Volume, recover bool, opts ...func(*remb.AttachInput)) (setPlan, error) {
	in := remb.AttachInput{Need: need, Mode: remb.Mode(v.Bitmap), Clean: !recover, Epoch: v.Epoch}
	p := setPlan{size: -1}
	for i, m := range members {
		in.Members = append(in.Members, remb.Member{Reachable: reachable[i], Rebuild: m.rebuild.Load(),
			Missed: m.api.State != "" && m.api.State != api.MemberInSync})
		if reachable[i] {
			c := m.conn()
			p.size = c.Size()
			p.devs = append(p.devs, c)
		} else {
			p.devs = append(p.devs, nil)
		}
	}
	for _, o := range opts {
		o(&in)
	}
	ap, err := remb.PlanAttach(in)
	p.AttachPlan = ap
	if err != nil {
		return p, fmt.Errorf("%w: %w", raid.ErrNoMembers, err)
	}
	for i := range p.devs {
		if p.devs[i] == nil {
			p.devs[i] = absent{size: p.size}
		}
	}
	return p, nil
}

// recoverWIB carries out the plan's record of what may differ between the
// members: the bitmaps to merge now and on return, or everything.
func (st *setState) recoverWIB(ctx context.Context, p remb.AttachPlan, setSize int64) {
	if p.MarkAll {
		st.wib.Mark(0, setSize)
	}
	for _, i := range p.MergeOnReturn {
		st.members[i].needLog = true
	}
	for _, i := range p.MergeNow {
		if err := st.mergeLog(ctx, st.members[i]); err != nil {
			st.log.Error("reading a member's LOG bitmap failed; resyncing the whole set", "member", i, "err", err)
			st.wib.Mark(0, setSize)
		}
	}
}

// buildSet builds the mirror or EC set of plan p over the set's WIB.
func (st *setState) buildSet(p setPlan, layout api.Layout, stripe int64) (raid.Set, error) {
	a, s := st.a, st.a.s
	set := raid.SetConfig{
		Members:             p.devs,
		WIB:                 st.wib,
		Degraded:            p.Degraded,
		BeforeDegradedWrite: st.recordDegraded,
		AfterWhole:          st.unpinAll,
		Pinned:              st.startPinned(p),
		HookTimeout:         recordBudget(s.cfg.IOTimeout),
		ResyncRate:          s.cfg.ResyncRate,
		Logger:              st.log,
		OnStateChange: func(i int, ms raid.MemberState, err error) {
			a.report()
			st.wake()
		},
	}
	if layout.Kind == api.LayoutEC {
		if a.vol.Bitmap == api.BitmapInternal {
			return nil, fmt.Errorf("bitmap mode internal is for mirrors; %s volumes use remb or none", layout)
		}
		succ, err := st.successors()
		if err != nil {
			return nil, err
		}
		return raid.NewEC(raid.ECConfig{SetConfig: set, K: layout.K, M: layout.M, StripeUnit: stripe, Stale: p.Missed, Successors: succ})
	}
	var intent func(context.Context) error
	if a.vol.Bitmap == api.BitmapInternal {
		intent = st.persistIntent
	}
	return raid.NewMirror(raid.MirrorConfig{SetConfig: set, IntentHook: intent, LazyClear: intent != nil})
}

// successors maps each member a drain added to the member it succeeds
// (raid.ECConfig.Successors).
func (st *setState) successors() (map[int]int, error) {
	var succ map[int]int
	for j, m := range st.members {
		if m.api.Replaces == "" {
			continue
		}
		i := slices.IndexFunc(st.members, func(o *member) bool { return o.api.ChunkID == m.api.Replaces })
		if i < 0 {
			return nil, fmt.Errorf("member %d (chunk %s) succeeds chunk %s, which is not in the set", j, m.api.ChunkID, m.api.Replaces)
		}
		if succ == nil {
			succ = map[int]int{}
		}
		succ[j] = i
	}
	return succ, nil
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

// memberClientConfig is how hostd dials a member: with t_io as the request
// timeout and base:allocation for GET LBA STATUS.
func memberClientConfig(m *member, tIO time.Duration) nbd.ClientConfig {
	return nbd.ClientConfig{Addr: m.api.Addr, Export: m.api.Export, Timeout: tIO, MetaContexts: []string{nbdAllocation}}
}

const nbdAllocation = "base:allocation"
