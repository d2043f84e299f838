package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/chunkraid/chunkraid/chunkserver/internal/vfs"
)

// Snapshots of a chunk are copy-on-write layers (sidecar version 3, drawn
// above). The data file always holds the live chunk, so every path that
// reads or writes it is unchanged. Layer seq has a sparse file of the
// chunk's size, <id>.snap-<seq>, that holds, at their own offsets, the
// blocks (SnapBlock bytes) the chunk overwrote since the layer was taken
// and before the next one was: their saved map says which.
//
// A snapshot's block b reads from the first layer, from the snapshot's own
// towards the newest, that saved it, else from the data file: a block no
// layer saved is unchanged since.
//
// The first change of a block after the newest snapshot (a write, trim or
// write-zeroes) first saves the block's old bytes in the newest layer's
// file, syncs that file, sets the block's bit and rewrites the sidecar, and
// only then changes the data file. A power loss at any point leaves either
// the bit unset and the data file unchanged, or the bit set over a durable
// copy: the snapshot never reads a block that changed after it. While it
// saves, a change holds the chunk's copy-on-write lock alone; a change to
// blocks already saved shares it.
//
// Taking a snapshot (Snapshot) waits for every I/O in flight, syncs the
// data file, creates and syncs the layer's empty file and the directory,
// then records the layer in the sidecar: a crash before the record leaves
// an orphan file, removed when the store opens.

// SnapBlock is the copy-on-write granularity of new snapshot layers.
const SnapBlock = 64 << 10

// ErrSnapshotExists and ErrNoSnapshot name a snapshot's name clash and an
// unknown snapshot.
var (
	ErrSnapshotExists = errors.New("store: snapshot exists")
	ErrNoSnapshot     = errors.New("store: no such snapshot")
)

var validSnapName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

const suffixSnap = ".snap-"

func (c *Chunk) snapPath(seq uint32) string {
	return filepath.Join(c.dir, c.id+suffixSnap+strconv.FormatUint(uint64(seq), 10))
}

// snapSeqOf parses a layer file's name: the chunk id and the seq.
func snapSeqOf(name string) (id string, seq uint32, ok bool) {
	i := strings.LastIndex(name, suffixSnap)
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(name[i+len(suffixSnap):], 10, 32)
	if err != nil || strconv.FormatUint(n, 10) != name[i+len(suffixSnap):] {
		return "", 0, false
	}
	return name[:i], uint32(n), true
}

// HasSnapshot reports whether the chunk has snapshot name.
func (c *Chunk) HasSnapshot(name string) bool {
	c.cow.RLock()
	defer c.cow.RUnlock()
	return c.layerIndex(name) >= 0
}

// hasLayer reports whether the chunk records layer seq.
func (c *Chunk) hasLayer(seq uint32) bool {
	c.cow.RLock()
	defer c.cow.RUnlock()
	for _, l := range c.snaps {
		if l.Seq == seq {
			return true
		}
	}
	return false
}

func bitSet(m []byte, b int64) bool { return m[b/8]&(1<<(b%8)) != 0 }

// unsetBits lists the bits from first to last (inclusive) that m has not
// set.
func unsetBits(m []byte, first, last int64) []int64 {
	var out []int64
	for b := first; b <= last; b++ {
		if !bitSet(m, b) {
			out = append(out, b)
		}
	}
	return out
}

// Snapshots lists the chunk's snapshot layers, oldest first: names and
// seqs (the saved maps are the store's).
func (c *Chunk) Snapshots() []SnapshotLayer {
	c.cow.RLock()
	defer c.cow.RUnlock()
	out := make([]SnapshotLayer, len(c.snaps))
	for i, l := range c.snaps {
		out[i] = SnapshotLayer{Seq: l.Seq, Name: l.Name, Created: l.Created}
	}
	return out
}

// openSnapshots opens the files of the layers a loaded sidecar records;
// a missing or short one is damage.
func (c *Chunk) openSnapshots() error {
	for _, l := range c.snaps {
		f, err := c.fs.OpenFile(c.snapPath(l.Seq), os.O_RDWR, 0)
		if err != nil {
			c.closeSnapshots()
			return fmt.Errorf("snapshot %q: opening its layer file: %w", l.Name, err)
		}
		c.snapFiles = append(c.snapFiles, f)
		if size, err := f.Size(); err != nil || size != c.size {
			c.closeSnapshots()
			return fmt.Errorf("snapshot %q: its layer file is %d bytes (%v), the chunk %d", l.Name, size, err, c.size)
		}
	}
	return nil
}

func (c *Chunk) closeSnapshots() error {
	var errs []error
	for _, f := range c.snapFiles {
		errs = append(errs, f.Close())
	}
	c.snapFiles = nil
	return errors.Join(errs...)
}

// Snapshot records the chunk as it is now as snapshot name. It waits for
// the I/O in flight and makes the chunk durable first; the snapshot exists
// once it returns nil. A name in use is ErrSnapshotExists.
func (c *Chunk) Snapshot(name string) error {
	if !validSnapName.MatchString(name) {
		return fmt.Errorf("store: invalid snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", name)
	}
	c.ioMu.Lock()
	defer c.ioMu.Unlock()
	if err := c.check(0, 0); err != nil {
		return err
	}
	c.cow.Lock()
	defer c.cow.Unlock()
	for _, l := range c.snaps {
		if l.Name == name {
			return fmt.Errorf("%w: chunk %s has a snapshot %q", ErrSnapshotExists, c.id, name)
		}
	}
	if len(c.snaps) >= MaxSnapshots {
		return fmt.Errorf("store: chunk %s has %d snapshots, the most it keeps", c.id, MaxSnapshots)
	}
	// What the snapshot shows must survive a power loss.
	if err := c.syncData(); err != nil {
		return err
	}
	seq := uint32(1)
	if n := len(c.snaps); n > 0 {
		seq = c.snaps[n-1].Seq + 1
	}
	path := c.snapPath(seq)
	f, err := c.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("store: snapshot %s of chunk %s: %w", name, c.id, err)
	}
	undo := func(err error) error {
		f.Close()
		c.fs.Remove(path)
		return fmt.Errorf("store: snapshot %s of chunk %s: %w", name, c.id, err)
	}
	if err := f.Truncate(c.size); err != nil {
		return undo(err)
	}
	if err := f.Sync(); err != nil {
		return undo(err)
	}
	if err := c.fs.SyncDir(c.dir); err != nil {
		return undo(err)
	}
	block := c.snapBlock
	if len(c.snaps) == 0 {
		block = SnapBlock
	}
	layer := SnapshotLayer{Seq: seq, Name: name, Created: c.clock().UnixNano(), Saved: make([]byte, snapMapLen(c.size, block))}
	c.sidecarMu.Lock()
	oldBlock, old := c.snapBlock, c.snaps
	c.snapBlock, c.snaps = block, append(append([]SnapshotLayer(nil), old...), layer)
	err = c.rewriteSidecarLocked()
	if err != nil {
		c.snapBlock, c.snaps = oldBlock, old
	}
	c.sidecarMu.Unlock()
	if err != nil {
		return undo(err)
	}
	c.snapFiles = append(c.snapFiles, f)
	c.nsnaps.Store(int32(len(c.snaps)))
	return nil
}

// beforeChange runs before a change of [off, off+n) to the data file, with
// ioMu held for reading: with snapshot layers, it saves the blocks the
// newest layer has not saved yet (see above) and returns holding the
// copy-on-write lock, which the change releases with the function it
// returns once the data file is changed.
func (c *Chunk) beforeChange(off, n int64) (func(), error) {
	if c.nsnaps.Load() == 0 && c.base == nil || n == 0 {
		return func() {}, nil
	}
	c.cow.RLock()
	if c.allOwned(off, n) && (c.nsnaps.Load() == 0 || c.allSaved(off, n)) {
		return c.cow.RUnlock, nil
	}
	c.cow.RUnlock()
	c.cow.Lock()
	// A clone owns the blocks first (clone.go), so that a snapshot saves
	// what the clone showed.
	if c.base != nil {
		if err := c.copyUp(off, n); err != nil {
			c.cow.Unlock()
			return nil, err
		}
	}
	if c.nsnaps.Load() > 0 {
		if err := c.saveBlocks(off, n); err != nil {
			c.cow.Unlock()
			return nil, err
		}
	}
	return c.cow.Unlock, nil
}

// blockRange is the first and last block [off, off+n) touches.
func (c *Chunk) blockRange(off, n int64) (int64, int64) {
	return off / c.snapBlock, (off + n - 1) / c.snapBlock
}

// allSaved reports whether the newest layer saved every block of
// [off, off+n); c.cow is held.
func (c *Chunk) allSaved(off, n int64) bool {
	top := c.snaps[len(c.snaps)-1].Saved
	first, last := c.blockRange(off, n)
	for b := first; b <= last; b++ {
		if !bitSet(top, b) {
			return false
		}
	}
	return true
}

// saveBlocks saves in the newest layer the blocks of [off, off+n) it has
// not saved, durably; c.cow is held for writing. A failed sync of the
// layer file fails the chunk; other errors change nothing the chunk shows.
func (c *Chunk) saveBlocks(off, n int64) error {
	top := len(c.snaps) - 1
	f, saved := c.snapFiles[top], c.snaps[top].Saved
	first, last := c.blockRange(off, n)
	unsaved := unsetBits(saved, first, last)
	if len(unsaved) == 0 {
		return nil
	}
	buf := make([]byte, c.snapBlock)
	for _, b := range unsaved {
		p := buf[:min(c.snapBlock, c.size-b*c.snapBlock)]
		if k, err := c.f.ReadAt(p, b*c.snapBlock); err != nil && !(err == io.EOF && k == len(p)) {
			return fmt.Errorf("store: chunk %s: reading block %d to save it for snapshot %q: %w", c.id, b, c.snaps[top].Name, err)
		}
		if _, err := f.WriteAt(p, b*c.snapBlock); err != nil {
			// The chunk is unchanged: out of space is ENOSPC here.
			if IsNoSpace(err) {
				c.space.setLow()
			}
			return fmt.Errorf("store: chunk %s: saving block %d for snapshot %q: %w", c.id, b, c.snaps[top].Name, err)
		}
	}
	if err := f.Sync(); err != nil {
		return c.fail(fmt.Errorf("syncing snapshot %q's layer file: %w", c.snaps[top].Name, err), false)
	}
	next := bytes.Clone(saved)
	for _, b := range unsaved {
		next[b/8] |= 1 << (b % 8)
	}
	c.sidecarMu.Lock()
	defer c.sidecarMu.Unlock()
	old := c.snaps
	c.snaps = append([]SnapshotLayer(nil), old...)
	c.snaps[top].Saved = next
	if err := c.rewriteSidecarLocked(); err != nil {
		c.snaps = old
		return err
	}
	return nil
}

// ReadSnapshotAt reads p at off as the chunk was when snapshot name was
// taken.
func (c *Chunk) ReadSnapshotAt(name string, p []byte, off int64) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(off, int64(len(p))); err != nil {
		return err
	}
	c.cow.RLock()
	defer c.cow.RUnlock()
	k := -1
	for i, l := range c.snaps {
		if l.Name == name {
			k = i
		}
	}
	if k < 0 {
		return fmt.Errorf("%w: chunk %s has no snapshot %q", ErrNoSnapshot, c.id, name)
	}
	for done := 0; done < len(p); {
		at := off + int64(done)
		b := at / c.snapBlock
		piece := p[done:min(len(p), done+int(c.snapBlock-at%c.snapBlock))]
		var src vfs.File
		for j := k; j < len(c.snaps); j++ {
			if bitSet(c.snaps[j].Saved, b) {
				src = c.snapFiles[j]
				break
			}
		}
		if src == nil {
			// Unchanged since: as the chunk shows it now.
			if err := c.readLive(piece, at); err != nil {
				return err
			}
		} else if n, err := src.ReadAt(piece, at); err != nil && !(err == io.EOF && n == len(piece)) {
			return fmt.Errorf("store: read snapshot %q of chunk %s: %w", name, c.id, err)
		}
		done += len(piece)
	}
	return nil
}

// DeleteSnapshot deletes snapshot name. The blocks its layer saved that the
// layer before it did not are what that older snapshot reads: they move to
// the older layer's file first (synced), and one sidecar write then records
// them there and drops the layer. Writes to the chunk wait meanwhile.
func (c *Chunk) DeleteSnapshot(name string) error {
	c.ioMu.RLock()
	defer c.ioMu.RUnlock()
	if err := c.check(0, 0); err != nil {
		return err
	}
	c.cow.Lock()
	defer c.cow.Unlock()
	i := c.layerIndex(name)
	if i < 0 {
		return fmt.Errorf("%w: chunk %s has no snapshot %q", ErrNoSnapshot, c.id, name)
	}
	if n := c.deps[name]; n > 0 {
		return fmt.Errorf("%w: snapshot %q of chunk %s is the base of %d clones", ErrInUse, name, c.id, n)
	}
	next := append([]SnapshotLayer(nil), c.snaps[:i]...)
	next = append(next, c.snaps[i+1:]...)
	if i > 0 {
		older, from, to := c.snaps[i-1], c.snapFiles[i], c.snapFiles[i-1]
		saved := bytes.Clone(older.Saved)
		buf := make([]byte, c.snapBlock)
		moved := false
		for b := int64(0); b < int64(len(saved))*8; b++ {
			if !bitSet(c.snaps[i].Saved, b) || bitSet(saved, b) {
				continue
			}
			p := buf[:min(c.snapBlock, c.size-b*c.snapBlock)]
			if k, err := from.ReadAt(p, b*c.snapBlock); err != nil && !(err == io.EOF && k == len(p)) {
				return fmt.Errorf("store: delete snapshot %q of chunk %s: %w", name, c.id, err)
			}
			if _, err := to.WriteAt(p, b*c.snapBlock); err != nil {
				return fmt.Errorf("store: delete snapshot %q of chunk %s: moving block %d to snapshot %q: %w", name, c.id, b, older.Name, err)
			}
			saved[b/8] |= 1 << (b % 8)
			moved = true
		}
		if moved {
			if err := to.Sync(); err != nil {
				return c.fail(fmt.Errorf("syncing snapshot %q's layer file: %w", older.Name, err), false)
			}
		}
		next[i-1].Saved = saved
	}
	c.sidecarMu.Lock()
	old := c.snaps
	c.snaps = next
	err := c.rewriteSidecarLocked()
	if err != nil {
		c.snaps = old
	}
	c.sidecarMu.Unlock()
	if err != nil {
		return err
	}
	f := c.snapFiles[i]
	c.snapFiles = append(c.snapFiles[:i:i], c.snapFiles[i+1:]...)
	c.nsnaps.Store(int32(len(c.snaps)))
	f.Close()
	// The layer is gone from the sidecar: its file is an orphan now,
	// removed here or when the store next opens.
	if err := c.fs.Remove(c.snapPath(old[i].Seq)); err != nil {
		c.log.Warn("removing a deleted snapshot's layer file", "chunk", c.id, "snapshot", name, "err", err)
	}
	return nil
}

// layerIndex is the index of snapshot name in c.snaps, or -1; c.cow is
// held.
func (c *Chunk) layerIndex(name string) int {
	for i, l := range c.snaps {
		if l.Name == name {
			return i
		}
	}
	return -1
}

// Rollback makes the chunk hold what snapshot name holds. Every block that
// changed since the snapshot is written back, through the chunk's write
// path (marked in the LOG, and saved first for newer snapshots, which
// stay), then the chunk is synced. Its host must not write meanwhile.
func (c *Chunk) Rollback(name string) error {
	c.cow.RLock()
	k := c.layerIndex(name)
	var changed []int64
	if k >= 0 {
		for b := int64(0); b < (c.size+c.snapBlock-1)/c.snapBlock; b++ {
			for j := k; j < len(c.snaps); j++ {
				if bitSet(c.snaps[j].Saved, b) {
					changed = append(changed, b)
					break
				}
			}
		}
	}
	block := c.snapBlock
	c.cow.RUnlock()
	if k < 0 {
		return fmt.Errorf("%w: chunk %s has no snapshot %q", ErrNoSnapshot, c.id, name)
	}
	buf := make([]byte, block)
	for _, b := range changed {
		p := buf[:min(block, c.size-b*block)]
		if err := c.ReadSnapshotAt(name, p, b*block); err != nil {
			return err
		}
		if err := c.WriteAt(p, b*block); err != nil {
			return fmt.Errorf("store: roll chunk %s back to snapshot %q: %w", c.id, name, err)
		}
	}
	return c.Sync()
}

// SnapshotExtents describes [off, off+length) of snapshot name as data
// and holes: a block some layer from the snapshot's on saved is data, any
// other range is as the chunk has it now (unchanged since).
func (c *Chunk) SnapshotExtents(name string, off, length int64) ([]Extent, error) {
	live, err := c.Extents(off, length)
	if err != nil {
		return nil, err
	}
	c.cow.RLock()
	k := c.layerIndex(name)
	var saved []byte
	if k >= 0 {
		saved = make([]byte, len(c.snaps[k].Saved))
		for _, l := range c.snaps[k:] {
			for i, b := range l.Saved {
				saved[i] |= b
			}
		}
	}
	block := c.snapBlock
	c.cow.RUnlock()
	if k < 0 {
		return nil, fmt.Errorf("%w: chunk %s has no snapshot %q", ErrNoSnapshot, c.id, name)
	}
	var out []Extent
	add := func(n int64, hole bool) { out = appendExtent(out, n, hole) }
	pos := off
	for _, e := range live {
		end := pos + e.Length
		if !e.Hole {
			add(e.Length, false)
			pos = end
			continue
		}
		for p := pos; p < end; {
			b := p / block
			next := min((b+1)*block, end)
			add(next-p, !bitSet(saved, b))
			p = next
		}
		pos = end
	}
	return out, nil
}

// SnapshotChanged is the map of the blocks (of block bytes, bit b LSB
// first) the chunk changed after snapshot name and before the next
// snapshot, or now for the newest: where the next snapshot (or the chunk)
// may differ from it. A copy.
func (c *Chunk) SnapshotChanged(name string) (block int64, changed []byte, err error) {
	c.cow.RLock()
	defer c.cow.RUnlock()
	i := c.layerIndex(name)
	if i < 0 {
		return 0, nil, fmt.Errorf("%w: chunk %s has no snapshot %q", ErrNoSnapshot, c.id, name)
	}
	return c.snapBlock, bytes.Clone(c.snaps[i].Saved), nil
}

// appendExtent appends a run of n bytes to out, merged into the last run
// when it is of the same kind.
func appendExtent(out []Extent, n int64, hole bool) []Extent {
	if m := len(out); m > 0 && out[m-1].Hole == hole {
		out[m-1].Length += n
		return out
	}
	return append(out, Extent{Length: n, Hole: hole})
}

// SnapshotUsage is the chunk's snapshot layers and the bytes they hold
// (the blocks saved for them).
func (c *Chunk) SnapshotUsage() (layers int, saved int64) {
	c.cow.RLock()
	defer c.cow.RUnlock()
	for _, l := range c.snaps {
		for i, b := range l.Saved {
			for ; b != 0; b &= b - 1 {
				blk := int64(i)*8 + int64(bits.TrailingZeros8(b))
				saved += min(c.snapBlock, c.size-blk*c.snapBlock)
			}
		}
	}
	return len(c.snaps), saved
}

// SnapshotUsage sums Chunk.SnapshotUsage over the store's chunks.
func (s *Store) SnapshotUsage() (layers int, saved int64) {
	for _, id := range s.List() {
		if c, err := s.Get(id); err == nil {
			n, b := c.SnapshotUsage()
			layers, saved = layers+n, saved+b
		}
	}
	return layers, saved
}
