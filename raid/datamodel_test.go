package raid

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/raid/chunktest"
	"github.com/chunkraid/chunkraid/remb"
)

// TestSetDataModel runs mirrors and EC sets over members that behave as the
// chunkservers do (a LOG bitmap marked before every write, rotated every T
// after an fdatasync if the chunk was written, pinned on an unclean
// disconnect and after a restart, a power loss dropping every write not
// flushed or FUA) and a host that behaves as hostd does (a WIB in RAM lost
// when the host dies, the members' LOGs merged at an attach after an
// unclean stop, members recorded as not in sync with the metaserver start
// degraded, the survivors pinned before a degraded write, every LOG unpinned
// once the set is whole). Random steps interleave writes, flushes (some
// overtaken: the members' flushes take what they sync, a write lands, then
// the flush is answered), reads, member power losses and link cuts, returns
// and rejoins (on EC, some while a write waits for the record of a
// degradation), resyncs, LOG rotations, failing pins and host crashes.
//
// After every step it checks, on a copy of the cluster, the worst that can
// follow: every machine loses power at once and a new host attaches. Every
// write the host acknowledged and then flushed (or wrote FUA) must read back,
// and after the new host's resync the members must agree. Reads during the
// run must return a value the model allows.
//
// Replay one run with -datamodel.seed=N -datamodel.config=mirror2 -v.
func TestSetDataModel(t *testing.T) {
	seeds, steps := *dmSeeds, *dmSteps
	if seeds == 0 {
		seeds = 40
		if raceOn {
			seeds = 3
		}
	}
	for _, cfg := range dmConfigs {
		if *dmOnly != "" && cfg.name != *dmOnly {
			continue
		}
		t.Run(cfg.name, func(t *testing.T) {
			for s := range seeds {
				seed := uint64(s)
				if *dmSeed >= 0 {
					seed = uint64(*dmSeed)
				}
				w := newDMWorld(t, cfg, seed)
				for step := range steps {
					w.step(step)
					if t.Failed() {
						t.Fatalf("seed %d step %d; steps so far:\n%s", seed, step, strings.Join(w.trace, "\n"))
					}
				}
				w.close()
				if *dmSeed >= 0 {
					break
				}
			}
		})
	}
}

var (
	dmSeeds = flag.Int("datamodel.seeds", 0, "seeds per configuration of TestSetDataModel (0: 3 with the race detector, 40 without)")
	dmSteps = flag.Int("datamodel.steps", 150, "steps per seed of TestSetDataModel")
	dmSeed  = flag.Int("datamodel.seed", -1, "run only this seed of TestSetDataModel")
	dmOnly  = flag.String("datamodel.config", "", "run only this configuration of TestSetDataModel")
)

type dmConfig struct {
	name string
	n    int // members
	k, m int // EC; k == 0 for a mirror
}

var dmConfigs = []dmConfig{
	{name: "mirror2", n: 2},
	{name: "mirror3", n: 3},
	{name: "ec2+1", n: 3, k: 2, m: 1},
	{name: "ec2+2", n: 4, k: 2, m: 2},
}

const (
	dmBlock  = 4096      // the unit of the model's writes
	dmRegion = 16 << 10  // WIB and LOG region
	dmSize   = 256 << 10 // member size
	dmPeriod = time.Minute
)

// dmHost is an attached host: its set and its WIB (RAM).
type dmHost struct {
	set     Set
	needLog []bool
}

type dmWorld struct {
	t      *testing.T
	cfg    dmConfig
	seed   uint64
	rng    *rand.Rand
	now    time.Time
	chunks []*chunktest.Chunk
	trace  []string

	metaMu   sync.Mutex
	recorded []bool // the metaserver's record: member i is not in sync
	// fullResync: the metaserver's record that the set's LOG record is not
	// complete (a record's pins failed): the next attach resyncs it whole.
	fullResync bool
	pinFails   bool // the record hook fails (a survivor unreachable for the pin)
	// rejoinInRecord is a member to rejoin inside the next record hook of
	// the host, or -1.
	rejoinInRecord int

	host *dmHost

	// The model of the data, per logical block: the values a read may
	// return now, and the values that may survive the death of every
	// machine (an acknowledged write stays in the second set until a flush
	// or FUA makes it the only value).
	next    uint32
	allowed []map[uint32]bool
	durable []map[uint32]bool
}

func newDMWorld(t *testing.T, cfg dmConfig, seed uint64) *dmWorld {
	w := &dmWorld{t: t, cfg: cfg, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5e7da7a)),
		now: time.Unix(1_000_000, 0), recorded: make([]bool, cfg.n), rejoinInRecord: -1}
	for range cfg.n {
		c, err := chunktest.New(chunktest.Config{Size: dmSize, LogRegion: dmRegion, Period: dmPeriod, Clock: func() time.Time { return w.now }})
		if err != nil {
			t.Fatal(err)
		}
		w.chunks = append(w.chunks, c)
	}
	blocks := w.setSize() / dmBlock
	for range blocks {
		w.allowed = append(w.allowed, map[uint32]bool{0: true})
		w.durable = append(w.durable, map[uint32]bool{0: true})
	}
	// The first attach: a new volume, nothing to recover.
	w.host = w.attach(w.chunks, w.recorded, &w.fullResync, false, &w.metaMu)
	if w.host == nil {
		t.Fatal("first attach failed")
	}
	return w
}

func (w *dmWorld) setSize() int64 {
	if w.cfg.k > 0 {
		return int64(w.cfg.k) * dmSize
	}
	return dmSize
}

// logUnit is the set bytes one LOG bit stands for (k member regions for EC).
func (w *dmWorld) logUnit() int64 { return dmRegion * int64(max(w.cfg.k, 1)) }

func (w *dmWorld) logf(format string, args ...any) {
	w.trace = append(w.trace, fmt.Sprintf(format, args...))
}

func (w *dmWorld) close() {
	if w.host != nil {
		w.host.set.Close()
	}
}

// attach brings a set up over chunks as hostd does after reading the
// metaserver's record: it asks hostd's planner (remb.PlanAttach) and
// carries the plan out: the members it degrades start Failed, the LOGs it
// names are merged into a fresh WIB now or when their member rejoins, the
// survivors are pinned before serving. It returns nil if the plan says too
// few in-sync members are reachable.
func (w *dmWorld) attach(chunks []*chunktest.Chunk, recorded []bool, fullResync *bool, recover bool, metaMu *sync.Mutex) *dmHost {
	n := len(chunks)
	h := &dmHost{needLog: make([]bool, n)}
	devs := make([]Device, n)
	metaMu.Lock()
	rec := slices.Clone(recorded)
	full := *fullResync
	metaMu.Unlock()
	need := 1
	if w.cfg.k > 0 {
		need = w.cfg.k
	}
	in := remb.AttachInput{Need: need, Mode: remb.ModeRemb, Clean: !recover, Epoch: 2, FullResync: full}
	for i, c := range chunks {
		devs[i] = c.Conn()
		in.Members = append(in.Members, remb.Member{Reachable: c.Up(), Missed: rec[i]})
	}
	plan, err := remb.PlanAttach(in)
	if errors.Is(err, remb.ErrTooFew) {
		return nil
	} else if err != nil {
		w.t.Fatal(err)
	}
	degraded, stale := plan.Degraded, plan.Missed
	wib, err := bitmap.OpenWIB(bitmap.WIBConfig{Size: w.setSize(), RegionSize: dmRegion})
	if err != nil {
		w.t.Fatal(err)
	}
	if plan.MarkAll {
		wib.Mark(0, w.setSize())
	}
	for _, i := range plan.MergeOnReturn {
		h.needLog[i] = true
	}
	for _, i := range plan.MergeNow {
		if err := mergeLog(wib, chunks[i], w.logUnit()); err != nil {
			w.t.Fatal(err)
		}
	}
	pinUp := func() (all bool) {
		all = true
		for _, c := range chunks {
			if c.Control(pin) != nil {
				all = false
			}
		}
		return all
	}
	if plan.PinSurvivors {
		pinUp() // pinSurvivors before serving
	}
	var set Set
	record := func(ctx context.Context) error {
		metaMu.Lock()
		main := metaMu == &w.metaMu
		fail := main && w.pinFails
		metaMu.Unlock()
		if i := w.rejoinInRecord; main && i >= 0 {
			w.rejoinInRecord = -1
			if set.States()[i] == Failed {
				w.rejoin(h, i, "  (during the record)")
			}
		}
		if fail {
			// hostd still tells the metaserver that the LOGs may not hold
			// what the members differ in (DESIGN §2 rule 3's fallback).
			metaMu.Lock()
			*fullResync = true
			metaMu.Unlock()
			return errors.New("pin refused")
		}
		// pinSurvivors: every member the set still uses.
		states := set.States()
		for i, c := range chunks {
			if states[i] != Failed {
				_ = c.Control(pin) // a member that is not up fails the set's next I/O
			}
		}
		untrusted := set.Untrusted()
		metaMu.Lock()
		copy(recorded, untrusted)
		metaMu.Unlock()
		return nil
	}
	unpin := func(ctx context.Context) error {
		var errs []error
		for i, c := range chunks {
			if err := c.Control(unpin); err != nil {
				errs = append(errs, fmt.Errorf("member %d: %w", i, err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		metaMu.Lock()
		*fullResync = false // the set is whole: nothing differs
		metaMu.Unlock()
		return nil
	}
	onChange := func(i int, ms MemberState, err error) {
		if ms == InSync {
			metaMu.Lock()
			recorded[i] = false
			metaMu.Unlock()
		}
	}
	var serr error
	if w.cfg.k > 0 {
		set, serr = NewEC(ECConfig{SetConfig: SetConfig{Members: devs, WIB: wib, Degraded: degraded, BeforeDegradedWrite: record, AfterWhole: unpin, Pinned: plan.StartPinned, OnStateChange: onChange}, K: w.cfg.k, M: w.cfg.m, StripeUnit: 4096, Stale: stale})
	} else {
		set, serr = NewMirror(MirrorConfig{SetConfig: SetConfig{Members: devs, WIB: wib, Degraded: degraded, BeforeDegradedWrite: record, AfterWhole: unpin, Pinned: plan.StartPinned, OnStateChange: onChange}})
	}
	if serr != nil {
		w.t.Fatalf("building the set: %v", serr)
	}
	h.set = set
	// recordAttached: the members' states are with the metaserver before
	// the set serves.
	untrusted := set.Untrusted()
	metaMu.Lock()
	copy(recorded, untrusted)
	metaMu.Unlock()
	return h
}

func pin(l *bitmap.Log) error   { l.Pin(); return nil }
func unpin(l *bitmap.Log) error { l.Unpin(); return nil }

// mergeLog merges c's LOG into w, each bit standing for unit set bytes.
func mergeLog(w *bitmap.WIB, c *chunktest.Chunk, unit int64) error {
	return c.Control(func(l *bitmap.Log) error { return w.Merge(l.Snapshot(), unit) })
}

// rejoin rejoins Failed member i of h's set as hostd's supervisor does:
// it asks hostd's planner (remb.PlanRejoin) and carries the plan out.
func (w *dmWorld) rejoin(h *dmHost, i int, when string) {
	c := w.chunks[i]
	if !c.Up() {
		w.logf("%s rejoin %d: gone again", when, i)
		return
	}
	plan := remb.PlanRejoin(remb.RejoinInput{Mode: remb.ModeRemb, MergeOnReturn: h.needLog[i]})
	if plan.MergeLog {
		if err := mergeLog(h.set.WIB(), c, w.logUnit()); err != nil {
			w.t.Error(err) // from the hook's goroutine: no Fatal
			return
		}
		h.needLog[i] = false
	}
	if plan.MarkAll {
		h.set.MarkAll()
	}
	err := h.set.Rejoin(i, c.Conn())
	w.logf("%s rejoin %d: %v, states %v", when, i, err, h.set.States())
}

// quiesce waits until the set's hooks have run.
func quiesce(s Set) {
	switch s := s.(type) {
	case *Mirror:
		s.hooks.wg.Wait()
	case *EC:
		s.hooks.wg.Wait()
	}
}

func blockData(v uint32) []byte {
	p := make([]byte, dmBlock)
	if v == 0 {
		return p
	}
	for i := 0; i < dmBlock; i += 4 {
		binary.LittleEndian.PutUint32(p[i:], v)
	}
	return p
}

// valueOf decodes a block's value, or reports that it is torn.
func valueOf(p []byte) (uint32, bool) {
	v := binary.LittleEndian.Uint32(p)
	return v, bytes.Equal(p, blockData(v))
}

func keys(m map[uint32]bool) []uint32 {
	var out []uint32
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (w *dmWorld) step(step int) {
	ctx := context.Background()
	if w.host == nil {
		w.host = w.attach(w.chunks, w.recorded, &w.fullResync, true, &w.metaMu)
		w.logf("%d attach after host crash: ok=%v", step, w.host != nil)
	}
	r := w.rng.IntN(100)
	switch {
	case r < 30 && w.host != nil:
		w.write(ctx, step)
	case r < 37 && w.host != nil:
		err := w.host.set.Flush(ctx)
		w.logf("%d flush: %v", step, err)
		if err == nil {
			for b := range w.allowed {
				w.durable[b] = cloneSet(w.allowed[b])
			}
		}
	case r < 40 && w.host != nil:
		w.overtakenFlush(ctx, step)
	case r < 50 && w.host != nil:
		b := w.rng.IntN(len(w.allowed))
		p := make([]byte, dmBlock)
		err := w.host.set.ReadAt(ctx, p, int64(b)*dmBlock)
		w.logf("%d read block %d: %v", step, b, err)
		if err == nil {
			w.checkBlock("read", b, p, w.allowed[b])
		} else if !w.readMayFail(b, err) {
			w.t.Errorf("read block %d: %v; states %v", b, err, w.host.set.States())
		}
	case r < 58:
		i := w.rng.IntN(len(w.chunks))
		c := w.chunks[i]
		c.PowerLoss()
		w.logf("%d member %d loses power", step, i)
	case r < 64:
		i := w.rng.IntN(len(w.chunks))
		c := w.chunks[i]
		if c.SetReachable(false) {
			_ = c.Local(pin) // the connection ended without NBD_CMD_DISC (no-op if off)
		}
		w.logf("%d member %d cut off", step, i)
	case r < 76:
		i := w.rng.IntN(len(w.chunks))
		c := w.chunks[i]
		c.PowerOn() // a restarted chunkserver loads every LOG pinned
		c.SetReachable(true)
		w.logf("%d member %d back", step, i)
		if w.host != nil && w.host.set.States()[i] == Failed {
			if w.cfg.k > 0 && w.rng.IntN(3) == 0 {
				// hostd's supervisor rejoins it while a write waits for
				// the record of a degradation (an EC write does so
				// outside the set's join lock; a mirror write holds it).
				w.rejoinInRecord = i
				w.logf("%d rejoin %d deferred into the next record", step, i)
				break
			}
			w.rejoin(w.host, i, fmt.Sprint(step))
		}
	case r < 86 && w.host != nil:
		n, err := w.host.set.Resync(ctx, nil)
		w.logf("%d resync: %d bytes, %v; states %v", step, n, err, w.host.set.States())
	case r < 92:
		w.now = w.now.Add(dmPeriod/2 + time.Duration(w.rng.IntN(int(dmPeriod/2))))
		for _, c := range w.chunks {
			c.Tick(w.now)
		}
		w.logf("%d time passes", step)
	case r < 95:
		w.metaMu.Lock()
		w.pinFails = !w.pinFails
		f := w.pinFails
		w.metaMu.Unlock()
		w.logf("%d pins fail: %v", step, f)
	case r < 100 && w.host != nil:
		// The host dies: its WIB is gone, its connections end without
		// NBD_CMD_DISC (the chunkservers pin), writes it acknowledged but
		// never flushed may be lost.
		w.host.set.Close()
		w.host = nil
		w.rejoinInRecord = -1
		for _, c := range w.chunks {
			c.DropConns()
			_ = c.Local(pin) // no-op if off
		}
		for b := range w.allowed {
			w.allowed[b] = cloneSet(w.durable[b])
		}
		w.logf("%d host crash", step)
	}
	if w.host != nil {
		quiesce(w.host.set)
	}
	w.checkAgree(step)
	w.checkTotalCrash(step)
}

// write writes a new value to a random block and records what may be read
// and what may survive now. It returns the block.
func (w *dmWorld) write(ctx context.Context, step int) (b int, v uint32, acked, fua bool) {
	b = w.rng.IntN(len(w.allowed))
	fua = w.rng.IntN(5) == 0
	w.next++
	v = w.next
	err := w.host.set.WriteAt(ctx, blockData(v), int64(b)*dmBlock, fua)
	w.logf("%d write block %d value %d fua %v: %v", step, b, v, fua, err)
	switch {
	case err == nil && fua:
		w.allowed[b] = map[uint32]bool{v: true}
		w.durable[b] = map[uint32]bool{v: true}
	case err == nil:
		w.allowed[b] = map[uint32]bool{v: true}
		w.durable[b][v] = true
	default:
		w.allowed[b][v] = true
		w.durable[b][v] = true
	}
	return b, v, err == nil, fua
}

// overtakenFlush runs a set flush whose member flushes are held after they
// took what they sync, and a write meanwhile: the flush, answered after
// the write, makes durable only what was acknowledged when it began. The
// write's region must stay in some record until the write is durable on
// every member.
func (w *dmWorld) overtakenFlush(ctx context.Context, step int) {
	g := &chunktest.FlushGate{Entered: make(chan struct{}, len(w.chunks)), Open: make(chan struct{})}
	for _, c := range w.chunks {
		c.HoldFlushes(g)
	}
	before := make([]map[uint32]bool, len(w.allowed))
	for b := range w.allowed {
		before[b] = cloneSet(w.allowed[b])
	}
	done := make(chan error, 1)
	go func() { done <- w.host.set.Flush(ctx) }()
	var err error
	held := false
	select {
	case <-g.Entered:
		held = true
	case err = <-done: // no member took the flush
	}
	var b int
	var v uint32
	var acked, fua bool
	if held {
		b, v, acked, fua = w.write(ctx, step)
	}
	for _, c := range w.chunks {
		c.HoldFlushes(nil)
	}
	close(g.Open)
	if held {
		err = <-done
	}
	w.logf("%d flush overtaken by that write: %v", step, err)
	if err != nil {
		return
	}
	for blk := range w.durable {
		if held && blk == b {
			if !acked || !fua {
				w.durable[b] = cloneSet(before[b])
				w.durable[b][v] = true
			}
			continue
		}
		w.durable[blk] = cloneSet(before[blk])
	}
}

// readMayFail says whether a read of block b may fail with err: too few
// members are in sync to serve it, or (EC) its unit is on a member not in
// sync and its stripe may be torn, so that no k units can be trusted to
// rebuild it.
func (w *dmWorld) readMayFail(b int, err error) bool {
	states := w.host.set.States()
	inSync := 0
	for _, st := range states {
		if st == InSync {
			inSync++
		}
	}
	switch {
	case errors.Is(err, ErrNoMembers):
		return inSync < max(w.cfg.k, 1)
	case errors.Is(err, ErrUnrecoverable) && w.cfg.k > 0:
		e := w.host.set.(*EC)
		s := int64(b) / int64(w.cfg.k)
		return e.isSuspect(s) && states[e.shardMember(s, b%w.cfg.k)] != InSync
	}
	return false
}

func cloneSet(m map[uint32]bool) map[uint32]bool {
	out := make(map[uint32]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func (w *dmWorld) checkBlock(what string, b int, p []byte, allowed map[uint32]bool) {
	v, ok := valueOf(p)
	if !ok {
		w.t.Errorf("%s: block %d is torn (starts with value %d); allowed %v", what, b, v, keys(allowed))
		return
	}
	if !allowed[v] {
		w.t.Errorf("%s: block %d reads value %d; allowed %v", what, b, v, keys(allowed))
	}
}

// checkAgree: a whole set with a clean WIB has members that agree.
func (w *dmWorld) checkAgree(step int) {
	if w.host == nil || w.host.set.Degraded() || w.host.set.WIB().Count() != 0 {
		return
	}
	devs := make([]Device, len(w.chunks))
	for i, c := range w.chunks {
		devs[i] = c.Conn()
		if !c.Up() {
			return
		}
	}
	w.verify("the whole, clean set", devs)
}

func (w *dmWorld) verify(what string, devs []Device) {
	ctx := context.Background()
	var bad []int64
	var err error
	if w.cfg.k > 0 {
		bad, err = VerifyEC(ctx, devs, w.cfg.k, w.cfg.m, 4096, nil)
	} else {
		bad, err = VerifyMirror(ctx, devs, dmRegion, nil)
	}
	if err != nil {
		w.t.Errorf("%s: verify: %v", what, err)
	} else if len(bad) > 0 {
		w.t.Errorf("%s: members disagree at %v", what, bad)
	}
}

// checkTotalCrash: on a copy of the cluster, every machine loses power, a
// new host attaches after the unclean stop and resyncs; every block must
// hold a value that may survive, and the members must agree.
func (w *dmWorld) checkTotalCrash(step int) {
	ctx := context.Background()
	chunks := make([]*chunktest.Chunk, len(w.chunks))
	for i, c := range w.chunks {
		nc, err := c.AfterPowerLoss()
		if err != nil {
			w.t.Fatal(err)
		}
		chunks[i] = nc
	}
	var mu sync.Mutex
	w.metaMu.Lock()
	recorded := slices.Clone(w.recorded)
	full := w.fullResync
	w.metaMu.Unlock()
	h := w.attach(chunks, recorded, &full, true, &mu)
	if h == nil {
		w.t.Errorf("after every machine lost power no attach is possible: recorded %v", recorded)
		return
	}
	defer h.set.Close()
	for i, st := range h.set.States() {
		if st == Failed { // recorded as not in sync: rejoins through the resync
			if err := h.set.Rejoin(i, chunks[i].Conn()); err != nil {
				w.t.Errorf("after every machine lost power: rejoin %d: %v", i, err)
				return
			}
		}
	}
	// The EC write hole: a stripe the dead host may have been writing
	// (its region in some LOG) whose data unit is on a member that missed
	// writes cannot be rebuilt, since its parity may be stale. EC refuses
	// such units (ErrUnrecoverable) instead of reconstructing garbage, and
	// only those: the unit's member is recorded as having missed writes and
	// its region is still dirty after the resync. What it does return must
	// be right.
	hole := false
	if _, err := h.set.Resync(ctx, nil); err != nil {
		if w.cfg.k == 0 || !errors.Is(err, ErrUnrecoverable) || !slices.Contains(recorded, true) {
			w.t.Errorf("after every machine lost power: resync: %v", err)
			return
		}
		hole = true
	}
	quiesce(h.set)
	if hole {
		p := make([]byte, dmBlock)
		for b := range w.durable {
			err := h.set.ReadAt(ctx, p, int64(b)*dmBlock)
			switch {
			case errors.Is(err, ErrUnrecoverable):
				n, k, st := int64(w.cfg.n), int64(w.cfg.k), int64(b)/int64(w.cfg.k)
				mem := (int64(b)%k - st%n + n) % n
				if dirty := h.set.WIB().IsDirty(int64(b)*dmBlock, dmBlock); !recorded[mem] || !dirty {
					w.t.Errorf("after every machine lost power (EC write hole): block %d unreadable, but its member %d recorded as missing writes %v, its region dirty %v", b, mem, recorded[mem], dirty)
				}
			case err != nil:
				w.t.Errorf("after every machine lost power (EC write hole): read block %d: %v", b, err)
			default:
				w.checkBlock("after every machine lost power (EC write hole)", b, p, w.durable[b])
			}
		}
		return
	}
	if h.set.Degraded() {
		w.t.Errorf("after every machine lost power: states %v after the resync", h.set.States())
		return
	}
	p := make([]byte, dmBlock)
	for b := range w.durable {
		if err := h.set.ReadAt(ctx, p, int64(b)*dmBlock); err != nil {
			w.t.Errorf("after every machine lost power: read block %d: %v", b, err)
			continue
		}
		w.checkBlock("after every machine lost power", b, p, w.durable[b])
	}
	devs := make([]Device, len(chunks))
	for i, c := range chunks {
		devs[i] = c.Conn()
	}
	w.verify("after every machine lost power and the resync", devs)
}
