package raid_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// bothKinds runs f on a 2-way mirror and on a 2+1 EC set of member
// devices of 1 MiB, built from cfg.
func bothKinds(t *testing.T, cfg func(members []raid.Device) raid.SetConfig, f func(t *testing.T, set raid.Set, devs []*raidtest.MemDevice)) {
	for _, kind := range []string{"mirror", "ec"} {
		t.Run(kind, func(t *testing.T) {
			n := 2
			if kind == "ec" {
				n = 3
			}
			devs := make([]*raidtest.MemDevice, n)
			members := make([]raid.Device, n)
			for i := range devs {
				devs[i] = raidtest.NewMemDevice(1 << 20)
				members[i] = devs[i]
			}
			var set raid.Set
			var err error
			if kind == "ec" {
				set, err = raid.NewEC(raid.ECConfig{SetConfig: cfg(members), K: 2, M: 1, StripeUnit: 4096})
			} else {
				set, err = raid.NewMirror(raid.MirrorConfig{SetConfig: cfg(members)})
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { set.Close() })
			f(t, set, devs)
		})
	}
}

// TestStateChangesSameInBothKinds: OnStateChange hears a member's failure,
// its rejoin and its return to sync, in that order, from both kinds, and
// runs without a lock of the set held: here it rejoins the failed member
// from inside the callback of the write that failed it, which would
// deadlock if the write still held its locks.
func TestStateChangesSameInBothKinds(t *testing.T) {
	ctx := t.Context()
	var (
		mu      sync.Mutex
		changes []string
		set     raid.Set
		devs    []*raidtest.MemDevice
	)
	cfg := func(members []raid.Device) raid.SetConfig {
		return raid.SetConfig{Members: members, OnStateChange: func(i int, st raid.MemberState, err error) {
			mu.Lock()
			changes = append(changes, fmt.Sprintf("%d:%v", i, st))
			mu.Unlock()
			if st == raid.Failed {
				devs[i].SetFailed(false)
				if err := set.Rejoin(i, devs[i]); err != nil {
					t.Errorf("Rejoin from OnStateChange: %v", err)
				}
			}
		}}
	}
	bothKinds(t, cfg, func(t *testing.T, s raid.Set, d []*raidtest.MemDevice) {
		set, devs = s, d
		mu.Lock()
		changes = nil
		mu.Unlock()
		last := len(devs) - 1
		devs[last].SetFailed(true)
		want := bytes.Repeat([]byte{7}, 8192)
		if err := set.WriteAt(ctx, want, 0, false); err != nil {
			t.Fatalf("write that fails a member: %v", err)
		}
		if st := set.States(); st[last] != raid.Resyncing {
			t.Fatalf("states after the write %v, want member %d resyncing (rejoined by the callback)", st, last)
		}
		if _, err := set.Resync(ctx, nil); err != nil {
			t.Fatalf("resync: %v", err)
		}
		mu.Lock()
		got := slices.Clone(changes)
		mu.Unlock()
		wantChanges := []string{fmt.Sprintf("%d:degraded", last), fmt.Sprintf("%d:resyncing", last), fmt.Sprintf("%d:in_sync", last)}
		if !slices.Equal(got, wantChanges) {
			t.Fatalf("OnStateChange heard %v, want %v", got, wantChanges)
		}
		p := make([]byte, len(want))
		if err := set.ReadAt(ctx, p, 0); err != nil || !bytes.Equal(p, want) {
			t.Fatalf("read back after the resync: %v, equal %v", err, bytes.Equal(p, want))
		}
	})
}

// TestRecordRefusedFailsWritesInBothKinds: while the record of a
// degradation fails, both kinds fail the writes that need it. The member
// then rejoins: it is resyncing and lacks that write, yet the metaserver
// never heard it is not in sync. A flush that reaches every member must not
// be acknowledged until the record lands: a host that took over after a
// total power loss would otherwise trust the stale member as a resync
// source and copy its old bytes over the flushed ones. (Found by
// TestSetDataModel, mirror2 seed 355 of the soak.) Once the record lands
// the flush succeeds and the member is untrusted.
func TestRecordRefusedFailsWritesInBothKinds(t *testing.T) {
	ctx := t.Context()
	var refuse atomic.Bool
	cfg := func(members []raid.Device) raid.SetConfig {
		return raid.SetConfig{Members: members, BeforeDegradedWrite: func(context.Context) error {
			if refuse.Load() {
				return errors.New("pin refused")
			}
			return nil
		}}
	}
	bothKinds(t, cfg, func(t *testing.T, set raid.Set, devs []*raidtest.MemDevice) {
		refuse.Store(true)
		last := len(devs) - 1
		devs[last].SetFailed(true)
		if err := set.WriteAt(ctx, bytes.Repeat([]byte{2}, 8192), 0, false); !errors.Is(err, raid.ErrNotRecorded) {
			t.Fatalf("degraded write with the record refused: %v, want ErrNotRecorded", err)
		}
		devs[last].SetFailed(false)
		if err := set.Rejoin(last, devs[last]); err != nil {
			t.Fatal(err)
		}
		if err := set.Flush(ctx); !errors.Is(err, raid.ErrNotRecorded) {
			t.Fatalf("flush with a resyncing member whose degradation is not recorded: %v, want ErrNotRecorded", err)
		}
		refuse.Store(false)
		if err := set.Flush(ctx); err != nil {
			t.Fatalf("flush once the record can land: %v", err)
		}
		if u := set.Untrusted(); !u[last] {
			t.Fatalf("Untrusted = %v after a flush acknowledged while member %d resyncs", u, last)
		}
	})
}

// starterDev is a member that takes writes of at most 4 KiB by StartWrite,
// as the NBD client does: the write is made when its Pending is waited for,
// so a set that returned before waiting would be caught by the data check.
type starterDev struct {
	*raidtest.MemDevice
	started atomic.Int64
	fail    atomic.Bool // the started writes' replies are errors
}

type startedWrite struct {
	d     *starterDev
	p     []byte
	off   int64
	fua   bool
	fails bool
}

func (d *starterDev) StartWrite(p []byte, off int64, fua bool) raid.Pending {
	if len(p) > 4096 {
		return nil
	}
	d.started.Add(1)
	return &startedWrite{d: d, p: p, off: off, fua: fua, fails: d.fail.Load()}
}

func (w *startedWrite) Wait(ctx context.Context) error {
	if w.fails {
		return errors.New("connection reset")
	}
	return w.d.WriteAt(ctx, w.p, w.off, w.fua)
}

// TestStartedWrites: both kinds send writes to members that can start
// them without a goroutine each (raid.Starter), wait for every reply, and
// fall back to WriteAt for a write the member does not start; a started
// write whose reply is an error fails its member like a failed WriteAt.
func TestStartedWrites(t *testing.T) {
	ctx := t.Context()
	for _, kind := range []string{"mirror", "ec"} {
		t.Run(kind, func(t *testing.T) {
			n := 2
			if kind == "ec" {
				n = 3
			}
			devs := make([]*starterDev, n)
			members := make([]raid.Device, n)
			for i := range devs {
				devs[i] = &starterDev{MemDevice: raidtest.NewMemDevice(1 << 20)}
				members[i] = devs[i]
			}
			var set raid.Set
			var err error
			if kind == "ec" {
				set, err = raid.NewEC(raid.ECConfig{SetConfig: raid.SetConfig{Members: members}, K: 2, M: 1, StripeUnit: 4096})
			} else {
				set, err = raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: members}})
			}
			if err != nil {
				t.Fatal(err)
			}
			defer set.Close()
			want := make([]byte, 1<<20)
			write := func(off int64, n int) {
				t.Helper()
				p := bytes.Repeat([]byte{byte(off>>12) + 1}, n)
				if err := set.WriteAt(ctx, p, off, false); err != nil {
					t.Fatalf("write %d+%d: %v", off, n, err)
				}
				copy(want[off:], p)
			}
			check := func() {
				t.Helper()
				got := make([]byte, len(want))
				if err := set.ReadAt(ctx, got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("the set reads back other bytes than were written")
				}
			}
			write(0, 4096)
			write(64<<10, 64<<10) // the mirror's members refuse to start it
			started := int64(0)
			for _, d := range devs {
				started += d.started.Load()
			}
			if started == 0 {
				t.Fatal("no write was started")
			}
			check()
			if kind == "mirror" {
				// Every member was sent the small write by StartWrite and
				// took the large one by WriteAt.
				for i, d := range devs {
					if d.started.Load() != 1 || d.Writes() != 2 {
						t.Errorf("member %d: %d writes started, %d made; want 1 and 2", i, d.started.Load(), d.Writes())
					}
				}
			}
			devs[1].fail.Store(true)
			write(8192, 4096)
			if st := set.States(); st[1] != raid.Failed {
				t.Fatalf("member 1 is %v after its started write failed, want Failed", st[1])
			}
			check()
		})
	}
}
