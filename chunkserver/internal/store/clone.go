package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Clones. A clone is a chunk that starts as a snapshot of another chunk in
// the same store (its base) and is written on its own from then on: the
// sidecar (version 4, drawn above) names the base and the snapshot and
// carries the owned map. The clone's data file holds the blocks it owns; a
// block it does not own reads from the base snapshot, which never changes.
// So a clone costs nothing until written, and writes to either side never
// show on the other.
//
// The first change of a block the clone does not own (a write, trim or
// write-zeroes) first copies the block from the base snapshot into the data
// file, syncs the data file, sets the block's bit and rewrites the sidecar,
// and only then changes it, like a snapshot's copy-on-write (snapshot.go)
// and before it: the snapshot then saves what the clone showed. A power
// loss at any point leaves the bit unset (the block reads from the base) or
// set over a durable copy. The copy changes none of the clone's bytes, so
// it is not marked in the LOG.
//
// A base chunk, and each of its snapshots a clone reads, cannot be deleted
// while the clone exists (ErrInUse).

// ErrInUse refuses the deletion of a chunk or snapshot a clone reads.
var ErrInUse = errors.New("store: in use by a clone")

// CreateClone makes chunk id a clone of snapshot snap of chunk base, of the
// same size, owning nothing yet. Creating a clone that exists with the
// same base and snapshot is a no-op; otherwise an existing id is
// ErrExists.
func (s *Store) CreateClone(id, base, snap string) (*Chunk, error) {
	if !validID.MatchString(id) || !validID.MatchString(base) {
		return nil, fmt.Errorf("store: invalid chunk id %q or %q", id, base)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.mu.chunks[base]
	if !ok {
		return nil, fmt.Errorf("store: clone %s: no base chunk %s here", id, base)
	}
	if !b.HasSnapshot(snap) {
		return nil, fmt.Errorf("%w: clone %s: chunk %s has no snapshot %q", ErrNoSnapshot, id, base, snap)
	}
	if c, ok := s.mu.chunks[id]; ok {
		if c.baseID != base || c.baseSnap != snap {
			return nil, fmt.Errorf("%w: %s is not a clone of %s@%s", ErrExists, id, base, snap)
		}
		return c, nil
	}
	h := Header{ID: id, Size: b.size, Base: base, BaseSnapshot: snap, CloneBlock: SnapBlock,
		Owned: make([]byte, snapMapLen(b.size, SnapBlock))}
	c, err := s.createLocked(h)
	if err != nil {
		return nil, err
	}
	c.setBase(b)
	return c, nil
}

// setBase links clone c to its base chunk b, which counts c among the
// readers of c's base snapshot.
func (c *Chunk) setBase(b *Chunk) {
	c.base = b
	b.cow.Lock()
	if b.deps == nil {
		b.deps = map[string]int{}
	}
	b.deps[c.baseSnap]++
	b.cow.Unlock()
}

// dropBase undoes setBase when clone c is deleted.
func (c *Chunk) dropBase() {
	if c.base != nil {
		c.base.dropDep(c.baseSnap)
	}
}

// dropDep forgets one clone reading snapshot snap of c.
func (c *Chunk) dropDep(snap string) {
	c.cow.Lock()
	if c.deps[snap]--; c.deps[snap] <= 0 {
		delete(c.deps, snap)
	}
	c.cow.Unlock()
}

// flattenBatch is how many blocks Flatten copies under one hold of the
// copy-on-write lock (one sync and one sidecar write).
const flattenBatch = 64

// Flatten makes a clone an ordinary chunk: it copies every block it does
// not own from its base snapshot (a block the base snapshot has as a hole
// is only marked owned: the clone's data file has it as a hole too), then
// rewrites the sidecar without the base, and the base snapshot is no
// longer read. Writes go on meanwhile; progress, if set, is told the
// blocks done of the total. A crash leaves a clone that owns more blocks,
// and Flatten may run again. A chunk that is not a clone is left alone.
func (c *Chunk) Flatten(progress func(done, total int64)) error {
	c.ioMu.RLock()
	if err := c.check(0, 0); err != nil {
		c.ioMu.RUnlock()
		return err
	}
	if c.base == nil {
		c.ioMu.RUnlock()
		return nil
	}
	ext, err := c.base.SnapshotExtents(c.baseSnap, 0, c.size)
	if err != nil {
		c.ioMu.RUnlock()
		return fmt.Errorf("store: flatten %s: %w", c.id, err)
	}
	block := c.cloneBlock
	total := (c.size + block - 1) / block
	// Blocks wholly in a hole of the base snapshot: owned at no cost.
	holes := make([]byte, len(c.owned))
	pos := int64(0)
	for _, e := range ext {
		if e.Hole {
			for b := (pos + block - 1) / block; (b+1)*block <= pos+e.Length; b++ {
				holes[b/8] |= 1 << (b % 8)
			}
		}
		pos += e.Length
	}
	c.cow.Lock()
	mark := bytes.Clone(c.owned)
	for i := range mark {
		mark[i] |= holes[i]
	}
	err = c.ownHoles(mark)
	c.cow.Unlock()
	for first := int64(0); first < total && err == nil; first += flattenBatch {
		n := min(flattenBatch, total-first)
		c.cow.Lock()
		err = c.copyUp(first*block, min(n*block, c.size-first*block))
		c.cow.Unlock()
		if err == nil && progress != nil {
			progress(first+n, total)
		}
	}
	if err != nil {
		c.ioMu.RUnlock()
		return fmt.Errorf("store: flatten %s: %w", c.id, err)
	}
	c.ioMu.RUnlock()

	// Every block owned: the sidecar drops the base, then the base
	// snapshot is free. No I/O runs meanwhile.
	c.ioMu.Lock()
	defer c.ioMu.Unlock()
	if err := c.check(0, 0); err != nil {
		return err
	}
	if c.base == nil {
		return nil // another Flatten finished first
	}
	b, snap, id := c.base, c.baseSnap, c.baseID
	c.cow.Lock()
	c.sidecarMu.Lock()
	c.baseID, c.baseSnap = "", ""
	err = c.rewriteSidecarLocked()
	if err != nil {
		c.baseID, c.baseSnap = id, snap
	} else {
		c.base, c.owned = nil, nil
	}
	c.sidecarMu.Unlock()
	c.cow.Unlock()
	if err != nil {
		return fmt.Errorf("store: flatten %s: %w", c.id, err)
	}
	b.dropDep(snap)
	return nil
}

// ownHoles records the owned map next, which adds only blocks the base
// snapshot has as holes (and the clone's data file, which never held
// them, too); c.cow is held for writing.
func (c *Chunk) ownHoles(next []byte) error {
	if bytes.Equal(next, c.owned) {
		return nil
	}
	return c.setOwned(next)
}

// setOwned makes next the owned map, durably in the sidecar; c.cow is
// held for writing. The map stays as it was when the sidecar write fails.
func (c *Chunk) setOwned(next []byte) error {
	c.sidecarMu.Lock()
	defer c.sidecarMu.Unlock()
	old := c.owned
	c.owned = next
	if err := c.rewriteSidecarLocked(); err != nil {
		c.owned = old
		return err
	}
	return nil
}

// inUse reports why c cannot be deleted: the snapshots of it clones read.
func (c *Chunk) inUse() error {
	c.cow.RLock()
	defer c.cow.RUnlock()
	for snap, n := range c.deps {
		if n > 0 {
			return fmt.Errorf("%w: chunk %s's snapshot %q is the base of %d clones", ErrInUse, c.id, snap, n)
		}
	}
	return nil
}

// Base reports the chunk and snapshot a clone reads the blocks it does
// not own from; ok is false for a chunk that is not a clone.
func (c *Chunk) Base() (base, snapshot string, ok bool) {
	return c.baseID, c.baseSnap, c.baseID != ""
}

// owns reports whether the clone's data file holds block b (of
// cloneBlock bytes); c.cow is held. Every block of a chunk that is not a
// clone is its own.
func (c *Chunk) owns(b int64) bool { return c.base == nil || bitSet(c.owned, b) }

// allOwned reports whether c owns every block of [off, off+n); c.cow is
// held.
func (c *Chunk) allOwned(off, n int64) bool {
	return c.base == nil || len(unsetBits(c.owned, off/c.cloneBlock, (off+n-1)/c.cloneBlock)) == 0
}

// readLive reads p at off as the chunk shows it now: from the data file,
// or for the blocks a clone does not own from its base snapshot; c.cow is
// held.
func (c *Chunk) readLive(p []byte, off int64) error {
	for done := 0; done < len(p); {
		at := off + int64(done)
		n := len(p) - done
		if c.base != nil {
			n = min(n, int(c.cloneBlock-at%c.cloneBlock))
		}
		piece := p[done : done+n]
		if c.owns(at / max(c.cloneBlock, 1)) {
			if k, err := c.f.ReadAt(piece, at); err != nil && !(err == io.EOF && k == len(piece)) {
				return fmt.Errorf("store: read chunk %s: %w", c.id, err)
			}
		} else if err := c.base.ReadSnapshotAt(c.baseSnap, piece, at); err != nil {
			return fmt.Errorf("store: clone %s: reading its base: %w", c.id, err)
		}
		done += n
	}
	return nil
}

// copyUp makes the clone own every block of [off, off+n), durably (see
// above); c.cow is held for writing. A failed sync fails the chunk; other
// errors change nothing the chunk shows.
func (c *Chunk) copyUp(off, n int64) error {
	blocks := unsetBits(c.owned, off/c.cloneBlock, (off+n-1)/c.cloneBlock)
	if len(blocks) == 0 {
		return nil
	}
	buf := make([]byte, c.cloneBlock)
	for _, b := range blocks {
		p := buf[:min(c.cloneBlock, c.size-b*c.cloneBlock)]
		if err := c.base.ReadSnapshotAt(c.baseSnap, p, b*c.cloneBlock); err != nil {
			return fmt.Errorf("store: clone %s: reading block %d of its base: %w", c.id, b, err)
		}
		if err := c.reserve(b*c.cloneBlock, int64(len(p))); err != nil {
			return fmt.Errorf("store: clone %s: copying block %d: %w", c.id, b, err)
		}
		if _, err := c.f.WriteAt(p, b*c.cloneBlock); err != nil {
			if IsNoSpace(err) {
				c.space.setLow()
			}
			return fmt.Errorf("store: clone %s: copying block %d: %w", c.id, b, err)
		}
		c.setDirty()
	}
	if err := c.syncData(); err != nil {
		return err
	}
	next := bytes.Clone(c.owned)
	for _, b := range blocks {
		next[b/8] |= 1 << (b % 8)
	}
	return c.setOwned(next)
}

// cloneExtents describes [off, off+length) of a clone: the blocks it owns
// as its data file has them, the others as its base snapshot has them.
func (c *Chunk) cloneExtents(off, length int64) ([]Extent, error) {
	own, err := c.fileExtents(off, length)
	if err != nil {
		return nil, err
	}
	base, err := c.base.SnapshotExtents(c.baseSnap, off, length)
	if err != nil {
		return nil, fmt.Errorf("store: clone %s: extents of its base: %w", c.id, err)
	}
	c.cow.RLock()
	owned := bytes.Clone(c.owned)
	block := c.cloneBlock
	c.cow.RUnlock()
	var out []Extent
	add := func(n int64, hole bool) { out = appendExtent(out, n, hole) }
	ownAt, baseAt := extentCursor{list: own, pos: off}, extentCursor{list: base, pos: off}
	end := off + length
	for p := off; p < end; {
		next := min((p/block+1)*block, end)
		from := &baseAt
		if bitSet(owned, p/block) {
			from = &ownAt
		}
		for q := p; q < next; {
			hole, runEnd := from.at(q)
			runEnd = min(runEnd, next)
			add(runEnd-q, hole)
			q = runEnd
		}
		p = next
	}
	return out, nil
}

// extentCursor walks a list of extents that starts at pos, for offsets
// that only grow.
type extentCursor struct {
	list []Extent
	i    int
	pos  int64 // where list[i] starts
}

// at reports whether offset q is in a hole and where its extent ends
// (past the list: a hole to the end).
func (e *extentCursor) at(q int64) (bool, int64) {
	for e.i < len(e.list) && e.pos+e.list[e.i].Length <= q {
		e.pos += e.list[e.i].Length
		e.i++
	}
	if e.i == len(e.list) {
		return true, 1<<63 - 1
	}
	return e.list[e.i].Hole, e.pos + e.list[e.i].Length
}
