package hostd

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// Snapshot layers on a rebuilt member. A member rebuilt onto a new chunk
// (a replacement, or a drain's successor) gets the volume's snapshots
// before it joins the set: for each ready snapshot, oldest first, the new
// chunk is made to hold what the member held at that snapshot, and then
// takes the snapshot itself. Its copy-on-write saves, into the older
// layer, every block the next snapshot's bytes change, exactly as the
// other members' chunks did when the volume was written. The rebuild then
// copies the live bytes, and the chunk saves the newest snapshot's blocks
// as it goes. The chunk takes no write of the set before that, so nothing
// else changes it meanwhile; a snapshot the chunk already has was complete
// when it was taken, so a rebuild that starts again goes on from the next.
//
// Only blocks whose bytes differ are written: the layers take what the
// other members' layers take (at most one seedBlock more per difference),
// not a full copy per snapshot.

// seedBlock is the granularity of the comparison: the chunk store's
// copy-on-write block.
const seedBlock = 64 << 10

// seedPiece is how much is read at a time.
const seedPiece = 1 << 20

// seedSnapshots gives new member i, connected as c and not yet in the set,
// the volume's ready snapshots it lacks. It reports whether it wrote any.
func (st *setState) seedSnapshots(ctx context.Context, i int, c memberConn) (bool, error) {
	snaps := st.a.readySnapshots()
	if len(snaps) == 0 {
		return false, nil
	}
	m := st.members[i]
	have, err := m.ctl.Snapshots(ctx, m.api.ChunkID, m.req())
	if err != nil {
		return false, fmt.Errorf("listing the new chunk's snapshots: %w", err)
	}
	has := map[string]bool{}
	for _, sn := range have.Snapshots {
		has[sn.Name] = true
	}
	seeded := false
	prev := "" // the newest snapshot the new chunk has, before name
	for _, name := range snaps {
		if has[name] {
			prev = name
			continue
		}
		start := time.Now()
		n, compared, err := st.seedSnapshot(ctx, i, c, name, prev)
		if err != nil {
			return seeded, fmt.Errorf("snapshot %s: %w", name, err)
		}
		seeded = true
		st.log.Info("snapshot layer copied onto the rebuilt member", "member", i, "chunk", m.api.ChunkID,
			"snapshot", name, "after", prev, "compared_bytes", compared, "written_bytes", n, "took", time.Since(start).Round(time.Millisecond))
		prev = name
	}
	return seeded, nil
}

// seedSnapshot makes member i's new chunk (c) hold what the member held at
// snapshot name, then has the chunk take the snapshot. prev, if set, is the
// snapshot the new chunk took last, which it holds now: then only the
// blocks the other members changed after prev (their layers' maps) can
// differ. It returns the bytes written and compared.
func (st *setState) seedSnapshot(ctx context.Context, i int, c memberConn, name, prev string) (written, compared int64, err error) {
	a, s := st.a, st.a.s
	v, err := s.meta.HostSnapshotExports(ctx, s.id, a.vol.Name, name)
	if err != nil {
		return 0, 0, err
	}
	var set *api.Set
	for k := range v.Sets {
		if v.Sets[k].Index == st.idx {
			set = &v.Sets[k]
		}
	}
	if set == nil || len(set.Members) != len(st.members) {
		return 0, 0, fmt.Errorf("the metaserver's set %d does not match the attached one", st.idx)
	}
	layout, err := api.ParseLayout(a.vol.Layout)
	if err != nil {
		return 0, 0, err
	}
	size := c.Size()
	// The other members' copies of the snapshot. One that cannot be opened
	// (away, or itself new) is left out.
	var open []memberConn
	defer func() {
		for _, sc := range open {
			sc.Close()
		}
	}()
	devs := make([]raid.Device, len(set.Members))
	var sources []memberConn
	var sourceIdx []int
	for j, am := range set.Members {
		devs[j] = absent{size: size}
		if j == i || am.Replaces != "" && layout.Kind == api.LayoutEC {
			continue
		}
		sc, err := s.cfg.Dial(ctx, nbd.ClientConfig{Addr: am.Addr, Export: am.Export, Timeout: s.cfg.IOTimeout, MetaContexts: []string{nbdAllocation}})
		if err != nil {
			st.log.Warn("a member's copy of the snapshot cannot be read", "member", j, "snapshot", name, "err", err)
			continue
		}
		open = append(open, sc)
		devs[j] = sc
		sources = append(sources, sc)
		sourceIdx = append(sourceIdx, j)
	}
	if len(sources) == 0 {
		return 0, 0, errors.New("no other member's copy of the snapshot can be read")
	}
	var read func(p []byte, off int64) error
	if layout.Kind == api.LayoutEC {
		src := i
		if r := st.members[i].api.Replaces; r != "" {
			// A drain's successor holds the units of the member it replaces.
			src = -1
			for j, am := range set.Members {
				if am.ChunkID == r {
					src = j
				}
			}
			if src < 0 {
				return 0, 0, fmt.Errorf("member %d replaces chunk %s, which is not in the set", i, r)
			}
		}
		unit := a.vol.StripeUnit
		if unit == 0 {
			unit = raid.DefaultStripeUnit
		}
		r, err := raid.NewECReader(devs[:layout.Width()], layout.K, layout.M, unit)
		if err != nil {
			return 0, 0, err
		}
		read = func(p []byte, off int64) error { return r.ReadMember(ctx, p, src, off) }
	} else {
		read = func(p []byte, off int64) error {
			var errs []error
			for _, sc := range sources {
				err := sc.ReadAt(ctx, p, off)
				if err == nil {
					return nil
				}
				errs = append(errs, err)
			}
			return errors.Join(errs...)
		}
	}
	// What may differ: the blocks the other members changed after prev,
	// or without that whatever the snapshot's copies or the new chunk
	// have allocated.
	ranges, ok := st.changedAfter(ctx, sourceIdx, prev, size)
	if !ok {
		if ranges, err = allocatedUnion(ctx, append(sources, c), size); err != nil {
			return 0, 0, err
		}
	}
	want, have := make([]byte, seedPiece), make([]byte, seedPiece)
	for _, rg := range ranges {
		end := min((rg[1]+seedBlock-1)/seedBlock*seedBlock, size)
		for off := rg[0] / seedBlock * seedBlock; off < end; off += seedPiece {
			n := min(int64(seedPiece), end-off)
			compared += n
			if err := read(want[:n], off); err != nil {
				return written, compared, fmt.Errorf("reading the snapshot at %d: %w", off, err)
			}
			if err := c.ReadAt(ctx, have[:n], off); err != nil {
				return written, compared, fmt.Errorf("reading the new chunk at %d: %w", off, err)
			}
			for b := int64(0); b < n; b += seedBlock {
				e := min(b+seedBlock, n)
				if bytes.Equal(want[b:e], have[b:e]) {
					continue
				}
				if err := c.WriteAt(ctx, want[b:e], off+b, false); err != nil {
					return written, compared, fmt.Errorf("writing the new chunk at %d: %w", off+b, err)
				}
				written += e - b
			}
		}
	}
	if err := c.Flush(ctx); err != nil {
		return written, compared, fmt.Errorf("flushing the new chunk: %w", err)
	}
	m := st.members[i]
	if _, err := m.ctl.Snapshot(ctx, api.SnapshotRequest{Name: name, Chunks: []api.ChunkPin{{Chunk: m.api.ChunkID, ControlRequest: m.req()}}}); err != nil {
		return written, compared, fmt.Errorf("taking the snapshot on the new chunk: %w", err)
	}
	return written, compared, nil
}

// changedAfter returns the ranges of the blocks that the members of
// sources changed after snapshot prev (the union of their layers' maps),
// below size; ok is false when there is no prev or a member cannot say.
func (st *setState) changedAfter(ctx context.Context, sources []int, prev string, size int64) ([][2]int64, bool) {
	if prev == "" {
		return nil, false
	}
	var union []byte
	var block int64
	for _, j := range sources {
		m := st.members[j]
		list, err := m.ctl.SnapshotMaps(ctx, m.api.ChunkID, m.req())
		if err != nil {
			st.log.Warn("a member's snapshot maps cannot be read: comparing every allocated block", "member", j, "err", err)
			return nil, false
		}
		found := false
		for _, sn := range list.Snapshots {
			if sn.Name != prev || sn.Block <= 0 || sn.Changed == nil {
				continue
			}
			if block != 0 && sn.Block != block || union != nil && len(sn.Changed) != len(union) {
				return nil, false
			}
			block, found = sn.Block, true
			if union == nil {
				union = make([]byte, len(sn.Changed))
			}
			for k, b := range sn.Changed {
				union[k] |= b
			}
		}
		if !found {
			return nil, false
		}
	}
	if union == nil {
		return nil, false
	}
	var out [][2]int64
	for b := int64(0); b < int64(len(union))*8; b++ {
		if union[b/8]&(1<<(b%8)) == 0 {
			continue
		}
		lo, hi := b*block, min((b+1)*block, size)
		if lo >= size {
			break
		}
		if n := len(out); n > 0 && out[n-1][1] == lo {
			out[n-1][1] = hi
		} else {
			out = append(out, [2]int64{lo, hi})
		}
	}
	return out, true
}

// allocatedUnion returns the sorted, merged [lo, hi) ranges that any of
// conns reports allocated (NBD base:allocation) below size.
func allocatedUnion(ctx context.Context, conns []memberConn, size int64) ([][2]int64, error) {
	var all [][2]int64
	for _, c := range conns {
		for off := int64(0); off < size; {
			ext, err := c.BlockStatus(ctx, nbdAllocation, off, min(size-off, 1<<30))
			if err != nil {
				return nil, fmt.Errorf("allocation: %w", err)
			}
			if len(ext) == 0 {
				return nil, fmt.Errorf("allocation: no extent at %d", off)
			}
			for _, e := range ext {
				if e.Length <= 0 {
					return nil, fmt.Errorf("allocation: an empty extent at %d", off)
				}
				if e.Flags&nbd.StateHole == 0 {
					all = append(all, [2]int64{off, min(off+e.Length, size)})
				}
				off += e.Length
			}
		}
	}
	return mergeRanges(all), nil
}

// mergeRanges sorts rs and merges those that overlap or touch.
func mergeRanges(rs [][2]int64) [][2]int64 {
	if len(rs) == 0 {
		return nil
	}
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
	out := [][2]int64{sorted[0]}
	for _, r := range sorted[1:] {
		last := &out[len(out)-1]
		if r[0] <= last[1] {
			last[1] = max(last[1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}
