package hostd

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/chunktest"
)

// A volume the previous holder detached cleanly is attached without
// recovery; its clean_detach must be cleared with the metaserver before
// the target serves a write, or a reboot before the next report would skip
// the recovery of that write.
func TestAttachClearsCleanDetachBeforeServing(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	v := testVolume(2)
	v.CleanDetach = true
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	reps := c.meta.reportList()
	if len(reps) == 0 || reps[0].serving || reps[0].CleanDetach {
		t.Fatalf("reports %+v: want a report that clears clean_detach before the target serves", reps)
	}
}

func TestAttachFailsWhenCleanDetachCannotBeCleared(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.meta.setFail(func(api.VolumeReport) error { return errors.New("metaserver unreachable") })
	v := testVolume(2)
	v.CleanDetach = true
	if err := s.attach(t.Context(), v); err == nil {
		t.Fatal("attach succeeded although the metaserver still says clean_detach")
	}
	if got := s.target.Targets(); len(got) != 0 {
		t.Fatalf("targets %v after a failed attach", got)
	}
}

func TestAttachFailsWhenSurvivorPinFails(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setDown("c1", true)
	c.pinErr = errors.New("pin: disk full")
	err := s.attach(t.Context(), testVolume(2))
	if err == nil {
		t.Fatal("attach succeeded although the survivor's LOG could not be pinned")
	}
	if got := s.target.Targets(); len(got) != 0 {
		t.Fatalf("targets %v after a failed attach", got)
	}
	if n := c.openConns(); n != 0 {
		t.Errorf("%d connections open after a failed attach", n)
	}
}

func TestAttachFailureClosesClients(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setDown("c0", true)
	v := testVolume(2)
	v.Sets[0].Members[1].State = api.MemberDegraded // reachable, but not a source
	err := s.attach(t.Context(), v)
	if !errors.Is(err, raid.ErrNoMembers) {
		t.Fatalf("attach: %v, want ErrNoMembers", err)
	}
	if n := c.openConns(); n != 0 {
		t.Fatalf("%d connections open after a failed attach", n)
	}
}

// A chunkserver that loses power loses the writes it had not synced. The
// set keeps their regions dirty until every member flushed them, and the
// member's failure makes them need a resync, so the member gets them back
// when it rejoins — without reading any LOG (finding 3).
func TestRejoinAfterPowerLossResyncsUnflushedWrites(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	a := attachClean(t, s)
	// A flush of c1 (the set settling after the attach may run one) is
	// held until after the power loss, which it then does not survive.
	gate := &chunktest.FlushGate{Entered: make(chan struct{}, 16), Open: make(chan struct{})}
	c.chunk("c1").data.HoldFlushes(gate)
	data := fill(testRegion, 5)
	if err := a.volume.WriteAt(t.Context(), data, 3*testRegion, false); err != nil {
		t.Fatal(err)
	}
	// c1 loses power before any flush: its copy of region 3 is gone.
	c.powerLoss("c1")
	close(gate.Open)
	c.chunk("c1").data.HoldFlushes(nil)
	if bytes.Equal(c.chunk("c1").data.Bytes()[3*testRegion:4*testRegion], data) {
		t.Fatal("the power loss kept an unsynced write")
	}
	if err := a.volume.WriteAt(t.Context(), fill(4096, 9), 0, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c1 to fail", func() bool { return states(a)[1] == raid.Failed })
	c.setDown("c1", false)
	a.setList()[0].wake()
	waitFor(t, "c1 to rejoin and resync", func() bool { return allInSync(a) })
	if !bytes.Equal(c.chunk("c1").data.Bytes()[3*testRegion:4*testRegion], data) {
		t.Fatal("region 3, acknowledged by c1 but lost to its power loss, was not resynced on rejoin")
	}
}

func TestRegisterChecksBudget(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tIO     time.Duration
		wantErr string
	}{
		{"within", 2 * time.Second, ""},
		{"t_io reaches offline_after", 12 * time.Second, "must be less than offline_after=10s"},
		{"T below 3 t_io", 9 * time.Second, "must be at least 3×t_io"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCluster(t, 1)
			s := newTestServer(t, c)
			c.meta.cluster.LogPeriodMS = 25000
			s.cfg.IOTimeout = tc.tIO
			_, err := s.register(t.Context(), "127.0.0.1:3260", nil)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("register: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("register: %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

func TestReportsNumbered(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setDown("c1", true)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	c.setDown("c1", false)
	a.setList()[0].wake()
	waitFor(t, "c1 to rejoin", func() bool { return allInSync(a) })
	s.detach("vol", true)
	reps := c.meta.reportList()
	if len(reps) < 2 {
		t.Fatalf("%d reports", len(reps))
	}
	for i, r := range reps {
		if r.Seq != int64(i+1) || r.Incarnation != s.incarnation.Load() {
			t.Fatalf("report %d: incarnation %d seq %d, want incarnation %d (the registration's) and seq %d",
				i, r.Incarnation, r.Seq, s.incarnation.Load(), i+1)
		}
	}
	// Its pins and unpins of a chunk are numbered in the order it made
	// them, so that a chunkserver ignores one that arrives late.
	c.mu.Lock()
	gens := slices.Clone(c.chunks["c0"].pinGens)
	c.mu.Unlock()
	if len(gens) < 2 {
		t.Fatalf("c0 saw %d pins and unpins, want a pin and an unpin", len(gens))
	}
	for i, g := range gens {
		if g == 0 || i > 0 && g <= gens[i-1] || g>>32 != uint64(s.incarnation.Load()) {
			t.Fatalf("pin generations of c0: %v, want increasing, under incarnation %d", gens, s.incarnation.Load())
		}
	}
	// A restarted hostd reports under the higher incarnation the metaserver
	// issues at its registration, not a number of its own clock.
	s2 := newTestServer(t, c)
	if s2.incarnation.Load() <= s.incarnation.Load() || s2.reportSeq.Load() != 0 {
		t.Fatalf("a restarted hostd has incarnation %d (the one before %d) and starts at seq %d, want a higher incarnation from seq 0",
			s2.incarnation.Load(), s.incarnation.Load(), s2.reportSeq.Load())
	}
}

// TestDegradationRecordRetried: the metaserver fails the first records of
// a degradation (a moment of overload); the degraded write waits while the
// record is retried and is acknowledged once it succeeds, instead of
// failing at the first error.
func TestDegradationRecordRetried(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	var failures atomic.Int32
	c.meta.setFail(func(vr api.VolumeReport) error {
		for _, sr := range vr.Sets {
			for _, m := range sr.Members {
				if m.State == api.MemberDegraded && failures.Add(1) <= 2 {
					return errors.New("metaserver: too busy")
				}
			}
		}
		return nil
	})
	c.setDown("c1", true)
	if err := a.volume.WriteAt(t.Context(), fill(4096, 3), 0, false); err != nil {
		t.Fatalf("degraded write with a record that succeeds on its third attempt: %v", err)
	}
	if n := failures.Load(); n < 3 {
		t.Fatalf("the record was tried %d times, want 3", n)
	}
	if st := states(a); st[1] != raid.Failed {
		t.Fatalf("member states %v, want c1 failed", st)
	}
}

// TestDetachSaysWhetherItWasClean: a detach asked to be clean is clean only
// when every set is in sync and flushed and the metaserver was told; the
// log line and the report follow what happened, not what was asked.
func TestDetachSaysWhetherItWasClean(t *testing.T) {
	for _, tc := range []struct {
		name      string
		degrade   bool
		metaFails bool
		want      bool
	}{
		{"healthy", false, false, true},
		{"a member down", true, false, false},
		{"metaserver unreachable", false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCluster(t, 2)
			s := newTestServer(t, c)
			a := attachClean(t, s)
			if tc.degrade {
				c.setDown("c1", true)
				if err := a.volume.WriteAt(t.Context(), fill(4096, 1), 0, false); err != nil {
					t.Fatal(err)
				}
			}
			if tc.metaFails {
				c.meta.setFail(func(api.VolumeReport) error { return errors.New("metaserver unreachable") })
			}
			s.mu.Lock()
			delete(s.mu.attached, "vol")
			s.mu.Unlock()
			if got := a.close(true); got != tc.want {
				t.Fatalf("close(clean=true) reported clean=%v, want %v", got, tc.want)
			}
		})
	}
}

// TestReconcileReported: after an unclean stop the LOG bitmaps name a
// region that may differ between members, all of them in sync; the resync
// that makes them equal is reported as the set's own, with its bytes, so
// the metaserver can show it (issue: it used to be invisible).
func TestReconcileReported(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	c.setLog("c1", 2)
	if err := s.attach(t.Context(), testVolume(2)); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")
	waitFor(t, "the reconcile to finish", func() bool { return a.setList()[0].wib.Count() == 0 })
	a.report()
	waitFor(t, "a report of the finished reconcile", func() bool {
		for _, r := range c.meta.reportList() {
			if rc := r.Sets[0].Reconcile; rc != nil && !rc.Running && rc.Finished == 1 && rc.DoneBytes == testRegion {
				return true
			}
		}
		return false
	})
}

// TestSCSIClass: RAID errors reach the iSCSI target in its own classes.
func TestSCSIClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{fmt.Errorf("set 1: %w", raid.ErrNoMembers), iscsi.ErrNotReady},
		{fmt.Errorf("set 1: %w: metaserver: timeout", raid.ErrNotRecorded), iscsi.ErrBecomingReady},
		{raid.ErrOutOfRange, iscsi.ErrLBAOutOfRange},
		{fmt.Errorf("set 0: stripe 3: %w", raid.ErrNoSpace), iscsi.ErrNoSpace},
	} {
		got := scsiClass(tc.err)
		if !errors.Is(got, tc.want) || !errors.Is(got, tc.err) {
			t.Errorf("scsiClass(%v) = %v, want it wrapped in %v", tc.err, got, tc.want)
		}
	}
	if got := scsiClass(raid.ErrNotRecorded); errors.Is(got, iscsi.ErrNotReady) {
		t.Errorf("a degradation not recorded is %v: it must be retried, not need an operator", got)
	}
	for _, err := range []error{nil, raid.ErrUnrecoverable, errors.New("EIO")} {
		if got := scsiClass(err); got != err {
			t.Errorf("scsiClass(%v) = %v, want it unchanged (a medium error)", err, got)
		}
	}
}

// TestFailedPinAsksForFullResync: when the pins of a degradation record
// fail, the survivors' LOGs may forget where the members differ; the host
// still tells the metaserver so (the set's full_resync), and clears it once
// the set is whole again.
func TestFailedPinAsksForFullResync(t *testing.T) {
	c := newFakeCluster(t, 2)
	s := newTestServer(t, c)
	a := attachClean(t, s)
	c.mu.Lock()
	c.pinErr = errors.New("pin: refused")
	c.mu.Unlock()
	c.setDown("c1", true)
	if err := a.volume.WriteAt(t.Context(), fill(4096, 1), 0, false); err == nil {
		t.Fatal("a degraded write was acknowledged although its record could not pin")
	}
	lastFull := func() bool {
		reps := c.meta.reportList()
		return len(reps) > 0 && reps[len(reps)-1].Sets[0].FullResync
	}
	waitFor(t, "a report asking for a full resync", lastFull)
	c.mu.Lock()
	c.pinErr = nil
	c.mu.Unlock()
	c.setDown("c1", false)
	a.setList()[0].wake()
	waitFor(t, "the set whole again", func() bool { return allInSync(a) && a.setList()[0].wib.Count() == 0 })
	a.report()
	waitFor(t, "a report without the full resync", func() bool { return !lastFull() })
}

// TestGrows: only a larger size with every set placed as before (and maybe
// more sets) is taken in place.
func TestGrows(t *testing.T) {
	set := func(i int, chunk string) api.Set {
		return api.Set{Index: i, Members: []api.Member{{ChunkID: chunk, Addr: "a", Export: "e-" + chunk}}}
	}
	a := api.Volume{SizeBytes: 100, Sets: []api.Set{set(0, "c0"), set(1, "c1")}}
	for _, tc := range []struct {
		name string
		b    api.Volume
		want bool
	}{
		{"larger, same sets", api.Volume{SizeBytes: 120, Sets: []api.Set{set(0, "c0"), set(1, "c1")}}, true},
		{"larger, a set more", api.Volume{SizeBytes: 200, Sets: []api.Set{set(0, "c0"), set(1, "c1"), set(2, "c2")}}, true},
		{"same size", api.Volume{SizeBytes: 100, Sets: []api.Set{set(0, "c0"), set(1, "c1")}}, false},
		{"smaller", api.Volume{SizeBytes: 80, Sets: []api.Set{set(0, "c0"), set(1, "c1")}}, false},
		{"a member moved", api.Volume{SizeBytes: 200, Sets: []api.Set{set(0, "c0"), set(1, "cX"), set(2, "c2")}}, false},
		{"a set fewer", api.Volume{SizeBytes: 200, Sets: []api.Set{set(0, "c0")}}, false},
	} {
		if got := grows(a, tc.b); got != tc.want {
			t.Errorf("%s: grows = %v", tc.name, got)
		}
	}
}
