package hostd

import (
	"fmt"
	"sync"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// TestOneFailureOneRecord: one chunkserver fails under a volume of 300
// mirror sets, each with a member on it; a write to every set runs at
// once. Every write waits for the record of its set's degradation, and the
// records are made together: one pin call on the surviving chunkserver per
// record and one report, not one each per set (the first record is held
// until every set has asked, so the count does not depend on timing).
// Every write and the flush after them succeed, and the metaserver holds
// every set's member degraded. (The other reports are the state reports
// that follow the members' state changes, coalesced.)
func TestOneFailureOneRecord(t *testing.T) {
	const sets = 300
	const chunk = testRegion // one WIB region per set
	c := newFakeCluster(t, 0)
	v := api.Volume{Name: "vol", SizeBytes: sets * chunk, Layout: "mirror:2", Bitmap: api.BitmapRemb,
		Host: "h1", Epoch: 2, IQN: "iqn.2025-01.test.chunkraid:vol", CleanDetach: true}
	for i := range sets {
		set := api.Set{Index: i}
		for _, cs := range []string{"A", "B"} {
			id := fmt.Sprintf("%s%d", cs, i)
			c.addChunk(id, chunk)
			name := api.ExportName{Chunk: id, Host: "h1", Epoch: 2, Token: "t"}
			set.Members = append(set.Members, api.Member{ChunkID: id, Chunkserver: "cs" + cs, Addr: "nbd-" + id,
				ControlAddr: "ctl-" + cs, Export: name.String(), State: api.MemberInSync})
		}
		v.Sets = append(v.Sets, set)
	}
	s := newTestServer(t, c)
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	a := s.attached("vol")

	gate := make(chan struct{})
	var once sync.Once
	var degradedReports int
	c.meta.setFail(func(vr api.VolumeReport) error {
		for _, sr := range vr.Sets {
			for _, m := range sr.Members {
				if m.State == api.MemberDegraded {
					degradedReports++ // under the fake metaserver's lock
					once.Do(func() { <-gate })
					return nil
				}
			}
		}
		return nil
	})
	for i := range sets {
		c.setDown(fmt.Sprintf("B%d", i), true)
	}
	errs := make([]error, sets)
	var wg sync.WaitGroup
	for i := range sets {
		wg.Go(func() { errs[i] = a.volume.WriteAt(t.Context(), fill(4096, byte(i)), int64(i)*chunk, false) })
	}
	waitFor(t, "every set to ask for its record", func() bool {
		recording, waiting := a.rec.pending()
		return recording+waiting == sets
	})
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("degraded write to set %d: %v", i, err)
		}
	}
	if err := a.volume.Flush(t.Context()); err != nil {
		t.Fatalf("flush after the degraded writes: %v", err)
	}
	c.mu.Lock()
	pinCalls, pinCallsB := c.pinManyCalls["ctl-A"], c.pinManyCalls["ctl-B"]
	c.mu.Unlock()
	c.meta.mu.Lock()
	reports := degradedReports
	c.meta.mu.Unlock()
	t.Logf("%d sets degraded by one chunkserver: %d pin calls to the survivor, %d reports with degraded members", sets, pinCalls, reports)
	if pinCalls < 1 || pinCalls > 2 || pinCallsB != 0 {
		t.Errorf("pin calls: %d to the survivor (want 1 or 2: the held record and the one after it), %d to the failed chunkserver", pinCalls, pinCallsB)
	}
	if reports >= sets/10 {
		t.Errorf("%d reports with degraded members for one failure of %d sets: the records are not batched", reports, sets)
	}
	if st := states(a); st[0] != raid.InSync || st[1] != raid.Failed {
		t.Fatalf("set 0 members %v, want in sync and failed", st)
	}
	last := c.meta.reportList()
	final := last[len(last)-1]
	for _, sr := range final.Sets {
		if sr.Members[1].State != api.MemberDegraded {
			t.Fatalf("last report: set %d member B is %s, want degraded", sr.Index, sr.Members[1].State)
		}
	}
}
