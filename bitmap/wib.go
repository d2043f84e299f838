package bitmap

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// WIBConfig describes the write-intent bitmap of one RAID set.
type WIBConfig struct {
	// Path is the backing file, normally under /dev/shm so that the bitmap
	// survives a restart of hostd (not a reboot). "" keeps the bitmap in
	// anonymous memory: nothing survives the process.
	Path string
	// Size is the number of bytes the bitmap covers: the set's capacity.
	Size int64
	// RegionSize is the number of bytes one bit stands for: a power of two
	// of at least 512. Zero means 1 MiB.
	RegionSize int64
	// Volume, Set and Epoch identify the set. They are written into the
	// file's header, and a file whose identity differs is refused on
	// reopen, so that a restarted hostd never trusts another set's bits or
	// the bits of an older attachment. Volume is at most 255 bytes; Set is
	// not negative.
	Volume string
	Set    int
	Epoch  uint64
}

func (c *WIBConfig) validate() error {
	if c.RegionSize == 0 {
		c.RegionSize = wibDefaultRegn
	}
	switch {
	case c.Size <= 0:
		return configErr("WIB size %d must be positive", c.Size)
	case !isPow2(c.RegionSize) || c.RegionSize < wibMinRegion:
		return configErr("WIB region size %d must be a power of two of at least %d", c.RegionSize, wibMinRegion)
	case len(c.Volume) > wibMaxVolume:
		return configErr("WIB volume name is %d bytes, at most %d fit in the header", len(c.Volume), wibMaxVolume)
	case c.Set < 0:
		return configErr("WIB set index %d must not be negative", c.Set)
	}
	return nil
}

// Range is a byte range [Off, Off+Len) of a set.
type Range struct {
	Off, Len int64
}

// Token is what Begin returns and End consumes: the regions of one write.
// The zero Token stands for a write that touched no region.
type Token struct {
	first, n int64
}

// ResyncTicket is what ResyncStart returns and ResyncDone consumes.
type ResyncTicket struct {
	region int64
	state  uint64 // the region's state word when the copy started
	owner  bool   // false if another copy of the region was running
}

// Per-region state word, kept in RAM beside the bits (see the package doc).
const (
	stCount   = 1<<32 - 1         // writes in flight (Begin without End)
	stSeqOne  = 1 << 32           // Begin and Mark add one to the sequence
	stSeqMask = (1<<29 - 1) << 32 // 29-bit sequence, wraps
	stResync  = 1 << 61           // a resync copy is running
	stStale   = 1 << 62           // only a resync may clean the region
	stLock    = 1 << 63           // a Clear or ResyncDone is clearing the bit
)

func bumpSeq(s uint64) uint64 { return s&^stSeqMask | (s+stSeqOne)&stSeqMask }

// spin backs off while another goroutine holds a region's state lock, which
// is held for two atomic operations only.
func spin(i int) {
	if i > 4 {
		runtime.Gosched()
	}
}

// WIB is the write-intent bitmap of one RAID set: one bit per region, set
// before a write goes to the members and cleared once every member holds
// it. Its methods are safe for concurrent use, except Close and Remove,
// which must not run concurrently with any other method and after which
// the WIB must not be used.
type WIB struct {
	path       string
	size       int64
	regionSize int64
	regions    int64
	shift      uint

	file  *os.File // nil for anonymous memory
	mem   []byte   // the shared mapping of file; nil for anonymous memory
	words []uint64 // the bits, little-endian words; aliases mem[wibHeaderPage:] when mapped

	state []atomic.Uint64 // per region; RAM only
}

// OpenWIB opens the bitmap described by cfg, creating its file if it does
// not exist or is empty. A file that exists is reopened only if its header
// is intact and names the same volume, set, epoch, size and region size;
// otherwise OpenWIB returns a *HeaderError that unwraps to ErrCorrupt,
// ErrVersion or ErrMismatch and leaves the file alone: the caller then
// knows nothing about what its set's members hold, removes the file and
// resyncs the set in full. Every region that is dirty in a reopened file
// needs a resync (NeedsResync), since nothing is known about the writes
// that were in flight when the previous owner stopped. A file held by
// another open WIB is refused with ErrLocked.
func OpenWIB(cfg WIBConfig) (*WIB, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	shift := shiftOf(cfg.RegionSize)
	regions := regionCount(cfg.Size, shift)
	w := &WIB{
		path:       cfg.Path,
		size:       cfg.Size,
		regionSize: cfg.RegionSize,
		regions:    regions,
		shift:      shift,
		state:      make([]atomic.Uint64, regions),
	}
	nwords := (regions + 63) / 64
	if cfg.Path == "" {
		w.words = make([]uint64, nwords)
		return w, nil
	}
	want := wibHeader{
		size:       cfg.Size,
		regionSize: cfg.RegionSize,
		regions:    regions,
		epoch:      cfg.Epoch,
		set:        int64(cfg.Set),
		volume:     cfg.Volume,
	}
	if err := w.openFile(want, nwords); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *WIB) openFile(want wibHeader, nwords int64) (err error) {
	f, err := os.OpenFile(w.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("bitmap: open WIB: %w", err)
	}
	defer func() {
		if err != nil {
			if w.mem != nil {
				_ = syscall.Munmap(w.mem)
				w.mem, w.words = nil, nil
			}
			_ = f.Close()
		}
	}()
	fd := int(f.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w: %s", ErrLocked, w.path)
		}
		return fmt.Errorf("bitmap: lock %s: %w", w.path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("bitmap: stat %s: %w", w.path, err)
	}
	length := wibFileLen(want.regions)
	created := fi.Size() == 0
	if created {
		if err := f.Truncate(length); err != nil {
			return fmt.Errorf("bitmap: size %s: %w", w.path, err)
		}
	} else {
		if err := w.checkHeader(f, want); err != nil {
			return err
		}
		if fi.Size() != length {
			return &HeaderError{Path: w.path, Field: "file length", Got: strconv.FormatInt(fi.Size(), 10),
				Want: strconv.FormatInt(length, 10), Err: ErrCorrupt}
		}
	}
	if length > int64(^uint(0)>>1) {
		return configErr("WIB of %d bytes does not fit in the address space", length)
	}
	mem, err := syscall.Mmap(fd, 0, int(length), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("bitmap: map %s: %w", w.path, err)
	}
	w.mem = mem
	w.words = unsafe.Slice((*uint64)(unsafe.Pointer(&mem[wibHeaderPage])), nwords)
	if created {
		want.encode(mem[:wibHeaderLen])
	} else {
		if pad := w.regions & 63; pad != 0 {
			if leWord(atomic.LoadUint64(&w.words[nwords-1]))>>pad != 0 {
				return &HeaderError{Path: w.path, Field: "padding bits", Got: "not zero", Err: ErrCorrupt}
			}
		}
		// Nothing is known about writes that were in flight: every dirty
		// region needs a resync.
		for r := range w.regions {
			if w.bit(r) {
				w.state[r].Store(stStale)
			}
		}
	}
	w.file = f
	return nil
}

// checkHeader reads and validates the header of an existing file against
// the configuration.
func (w *WIB) checkHeader(f *os.File, want wibHeader) error {
	buf := make([]byte, wibHeaderPage)
	if _, err := f.ReadAt(buf, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return &HeaderError{Path: w.path, Field: "length", Got: "shorter than the header", Err: ErrCorrupt}
		}
		return fmt.Errorf("bitmap: read %s: %w", w.path, err)
	}
	got, err := decodeWIBHeader(buf)
	if err != nil {
		var he *HeaderError
		if errors.As(err, &he) {
			he.Path = w.path
		}
		return err
	}
	if !allZero(buf[wibHeaderLen:]) {
		return &HeaderError{Path: w.path, Field: "reserved bytes", Got: "not zero after the header", Err: ErrCorrupt}
	}
	mismatch := func(field, g, x string) error {
		return &HeaderError{Path: w.path, Field: field, Got: g, Want: x, Err: ErrMismatch}
	}
	switch {
	case got.volume != want.volume:
		return mismatch("volume", strconv.Quote(got.volume), strconv.Quote(want.volume))
	case got.set != want.set:
		return mismatch("set", strconv.FormatInt(got.set, 10), strconv.FormatInt(want.set, 10))
	case got.epoch != want.epoch:
		return mismatch("epoch", strconv.FormatUint(got.epoch, 10), strconv.FormatUint(want.epoch, 10))
	case got.size != want.size:
		return mismatch("size", strconv.FormatInt(got.size, 10), strconv.FormatInt(want.size, 10))
	case got.regionSize != want.regionSize:
		return mismatch("region size", strconv.FormatInt(got.regionSize, 10), strconv.FormatInt(want.regionSize, 10))
	}
	return nil
}

// Size returns the number of bytes the bitmap covers.
func (w *WIB) Size() int64 { return w.size }

// RegionSize returns the number of bytes one bit stands for.
func (w *WIB) RegionSize() int64 { return w.regionSize }

// Regions returns the number of regions (bits).
func (w *WIB) Regions() int64 { return w.regions }

// Path returns the backing file, "" for anonymous memory.
func (w *WIB) Path() string { return w.path }

func (w *WIB) setBit(r int64) { atomic.OrUint64(&w.words[r>>6], leWord(1<<(r&63))) }

func (w *WIB) clearBit(r int64) { atomic.AndUint64(&w.words[r>>6], ^leWord(1<<(r&63))) }

func (w *WIB) bit(r int64) bool {
	return atomic.LoadUint64(&w.words[r>>6])&leWord(1<<(r&63)) != 0
}

// Begin records a write of [off, off+length) before it is sent to the
// members: it counts the write as in flight in every region it touches and
// sets their bits. Bytes outside the set are ignored. Every Begin must be
// followed by exactly one End with the returned Token. Begin does no I/O
// and takes no lock; it waits only while a Clear of the same region is
// between its two atomic operations.
func (w *WIB) Begin(off, length int64) Token {
	first, last, ok := span(off, length, w.size, w.shift)
	if !ok {
		return Token{}
	}
	for r := first; r <= last; r++ {
		st := &w.state[r]
		for i := 0; ; i++ {
			s := st.Load()
			if s&stLock != 0 {
				spin(i)
				continue
			}
			if s&stCount == stCount {
				panic("bitmap: more than 2^32-1 writes in flight to one WIB region")
			}
			if st.CompareAndSwap(s, bumpSeq(s)+1) {
				break
			}
		}
		w.setBit(r)
	}
	return Token{first: first, n: last - first + 1}
}

// End records that the write of t has completed. allMembersOK reports
// whether every member of the set now holds it; pass false if any member
// failed it or was not sent it (the set is degraded). The regions of a
// write that did not reach every member stay dirty until a resync
// (ResyncDone) cleans them; Clear refuses them. Ending a Token twice is a
// programming error and panics.
func (w *WIB) End(t Token, allMembersOK bool) {
	for r := t.first; r < t.first+t.n; r++ {
		st := &w.state[r]
		for {
			s := st.Load()
			if s&stCount == 0 {
				panic("bitmap: WIB.End without a matching Begin (a Token ended twice?)")
			}
			n := s - 1
			if !allMembersOK {
				n |= stStale
			}
			if st.CompareAndSwap(s, n) {
				break
			}
		}
	}
}

// Mark records that the members may differ in every region [off,
// off+length) touches, without tracking a write: the bits are set and the
// regions need a resync; Clear will not clean them. Use it for what the set
// knows is inconsistent (a member that is absent or failed, a LOG bitmap
// read after a host died); a write the caller follows to completion uses
// Begin and End. Like Begin it does no I/O and takes no lock.
func (w *WIB) Mark(off, length int64) {
	first, last, ok := span(off, length, w.size, w.shift)
	if !ok {
		return
	}
	for r := first; r <= last; r++ {
		w.markRegion(r)
	}
}

func (w *WIB) markRegion(r int64) {
	st := &w.state[r]
	for i := 0; ; i++ {
		s := st.Load()
		if s&stLock != 0 {
			spin(i)
			continue
		}
		if st.CompareAndSwap(s, bumpSeq(s)|stStale) {
			break
		}
	}
	w.setBit(r)
}

// Clear cleans region (an index, not an offset) lazily: it clears the bit
// if no write to the region is in flight, every write to it since the last
// resync reached every member, and no resync copy of it is running. It
// reports whether the region is clean when it returns. An index outside
// the bitmap reports false.
func (w *WIB) Clear(region int64) bool {
	if region < 0 || region >= w.regions {
		return false
	}
	st := &w.state[region]
	for i := 0; ; i++ {
		s := st.Load()
		if s&(stCount|stStale|stResync) != 0 {
			return false
		}
		if s&stLock != 0 {
			spin(i)
			continue
		}
		if st.CompareAndSwap(s, s|stLock) {
			w.clearBit(region)
			st.Store(s)
			return true
		}
	}
}

// ClearRange calls Clear for every region [off, off+length) touches and
// reports whether all of them are clean.
func (w *WIB) ClearRange(off, length int64) bool {
	first, last, ok := span(off, length, w.size, w.shift)
	if !ok {
		return true
	}
	clean := true
	for r := first; r <= last; r++ {
		if !w.Clear(r) {
			clean = false
		}
	}
	return clean
}

// ResyncStart is called before a resync copies region (an index) from an
// in-sync member to the others; ResyncDone after the copy reached every
// member. In between, Clear leaves the region alone. ResyncDone makes the
// region no longer need a resync — it stays dirty until a flush of every
// member (FlushStart/FlushDone), because the source's bytes may not be
// durable yet — only if no write to it was in flight when ResyncStart ran, none
// is in flight now, no write began and no Mark touched it in between, and
// no other copy of it was running. Otherwise it reports false and leaves
// the region dirty and needing a resync — even a region that needed none
// before, because the copy may have overwritten a concurrent write on some
// member — and the resync copies it again later. DESIGN rule 4 (writes
// wait for the one region under copy) keeps such refusals rare; this check
// keeps the bitmap right even when they happen. Every ResyncStart must be
// followed by one ResyncDone.
func (w *WIB) ResyncStart(region int64) ResyncTicket {
	if region < 0 || region >= w.regions {
		return ResyncTicket{region: -1}
	}
	st := &w.state[region]
	for i := 0; ; i++ {
		s := st.Load()
		if s&stLock != 0 {
			spin(i)
			continue
		}
		if s&stResync != 0 {
			return ResyncTicket{region: region, state: s}
		}
		if st.CompareAndSwap(s, s|stResync) {
			return ResyncTicket{region: region, state: s, owner: true}
		}
	}
}

// ResyncDone ends the copy that ResyncStart began (see there). It reports whether the region no longer
// needs a resync.
func (w *WIB) ResyncDone(t ResyncTicket) bool {
	if t.region < 0 || t.region >= w.regions {
		return false
	}
	if !t.owner {
		w.markRegion(t.region)
		return false
	}
	st := &w.state[t.region]
	for i := 0; ; i++ {
		s := st.Load()
		if s&stLock != 0 {
			spin(i)
			continue
		}
		if t.state&stCount == 0 && s&stCount == 0 && s&stSeqMask == t.state&stSeqMask {
			// The copy is durable on the members it went to (FUA), but
			// the source's own bytes may not be: the region stays dirty,
			// no longer needing a resync, until a flush of every member.
			if st.CompareAndSwap(s, bumpSeq(s)&^(stStale|stResync)) {
				return true
			}
			continue
		}
		// Refused. The bit is set before the resync flag, which keeps Clear
		// away, is dropped.
		w.setBit(t.region)
		if st.CompareAndSwap(s, bumpSeq(s)&^stResync|stStale) {
			return false
		}
	}
}

// FlushTicket is what FlushStart returns and FlushDone consumes: the
// regions a flush of every member may clean.
type FlushTicket struct {
	regions []int64
	states  []uint64
}

// FlushStart is called before a set flushes its members. A region stays
// dirty after its writes reached every member until they are durable there
// (DESIGN §2: a region is cleaned only after the members flushed it);
// FlushStart notes every dirty region with no write in flight, no resync
// copy running and no need for a resync, with its sequence. Every write to
// such a region was acknowledged before the flush starts, so a flush that
// succeeds on every member makes them durable; then FlushDone cleans them.
func (w *WIB) FlushStart() FlushTicket {
	var t FlushTicket
	for r := w.nextBit(0, true); r < w.regions; r = w.nextBit(r+1, true) {
		s := w.state[r].Load()
		if s&(stCount|stStale|stResync|stLock) == 0 {
			t.regions = append(t.regions, r)
			t.states = append(t.states, s)
		}
	}
	return t
}

// FlushDone cleans the regions of t that no write began on, no Mark touched
// and no resync copied since FlushStart; call it only after every member of
// the set flushed successfully. It returns the number of regions cleaned.
func (w *WIB) FlushDone(t FlushTicket) int {
	n := 0
	for j, r := range t.regions {
		st := &w.state[r]
		want := t.states[j]
		if st.CompareAndSwap(want, want|stLock) {
			w.clearBit(r)
			st.Store(want)
			n++
		}
	}
	return n
}

// MarkDirty makes every dirty region need a resync: a member just failed,
// and the writes it acknowledged in those regions may not be durable on it
// (a chunkserver that loses power loses what it had not synced).
func (w *WIB) MarkDirty() {
	for r := w.nextBit(0, true); r < w.regions; r = w.nextBit(r+1, true) {
		w.markRegion(r)
	}
}

// NeedsResync reports whether region (an index) may differ between members
// and so can only be cleaned by a resync.
func (w *WIB) NeedsResync(region int64) bool {
	if region < 0 || region >= w.regions {
		return false
	}
	return w.state[region].Load()&stStale != 0
}

// IsDirty reports whether any region that [off, off+length) touches is
// dirty. Reads of a mirror avoid members in dirty regions.
func (w *WIB) IsDirty(off, length int64) bool {
	first, last, ok := span(off, length, w.size, w.shift)
	if !ok {
		return false
	}
	for r := first; r <= last; r++ {
		if w.bit(r) {
			return true
		}
	}
	return false
}

// Count returns the number of dirty regions.
func (w *WIB) Count() int64 {
	var n int
	for i := range w.words {
		n += bits.OnesCount64(atomic.LoadUint64(&w.words[i]))
	}
	return int64(n)
}

// word returns word i of the bits in little-endian reading: bit j is
// region 64i+j.
func (w *WIB) word(i int64) uint64 { return leWord(atomic.LoadUint64(&w.words[i])) }

// nextBit returns the first region at or after r whose bit equals set, or
// w.regions if there is none.
func (w *WIB) nextBit(r int64, set bool) int64 {
	for i := r >> 6; i < int64(len(w.words)); i++ {
		v := w.word(i)
		if !set {
			v = ^v
		}
		if i == r>>6 {
			v &^= 1<<(r&63) - 1
		}
		if v != 0 {
			return min(i<<6+int64(bits.TrailingZeros64(v)), w.regions)
		}
	}
	return w.regions
}

// NextDirty returns the run of consecutive dirty regions that starts at or
// after the region holding byte offset from, as a byte range clipped to the
// set's size; ok is false when no region from there on is dirty. Iterate
// with from = r.Off + r.Len.
func (w *WIB) NextDirty(from int64) (r Range, ok bool) {
	if from < 0 {
		from = 0
	}
	if from >= w.size {
		return Range{}, false
	}
	start := w.nextBit(from>>w.shift, true)
	if start >= w.regions {
		return Range{}, false
	}
	end := w.nextBit(start, false)
	off := start << w.shift
	return Range{Off: off, Len: min(end<<w.shift, w.size) - off}, true
}

// Dirty returns every run of consecutive dirty regions, in order.
func (w *WIB) Dirty() []Range {
	var out []Range
	for r, ok := w.NextDirty(0); ok; r, ok = w.NextDirty(r.Off + r.Len) {
		out = append(out, r)
	}
	return out
}

// Merge ORs a coarser bitmap into the WIB, as Mark does: bit i of bits
// (bit i%8 of byte i/8, the layout of Log.Snapshot) stands for the set's
// bytes [i*unit, (i+1)*unit). For a mirror, unit is the LOG region size;
// for an EC set whose stripe unit divides the LOG region size, a LOG region
// of a member holds whole stripes and stands for k times as many bytes of
// the set. A set bit beyond the set's size means the bitmap is not this
// set's: Merge then changes nothing and returns an error that unwraps to
// ErrMismatch.
func (w *WIB) Merge(bitmap []byte, unit int64) error {
	if unit <= 0 {
		return configErr("merge unit %d must be positive", unit)
	}
	maxBit := (w.size - 1) / unit
	for i := len(bitmap) - 1; i >= 0; i-- {
		if c := bitmap[i]; c != 0 {
			if top := int64(i)*8 + int64(bits.Len8(c)) - 1; top > maxBit {
				return &HeaderError{Path: w.path, Field: "merged bitmap", Err: ErrMismatch,
					Got:  fmt.Sprintf("bit %d set, unit %d", top, unit),
					Want: fmt.Sprintf("bits below %d for a set of %d bytes", maxBit+1, w.size)}
			}
			break
		}
	}
	for i, c := range bitmap {
		for c != 0 {
			j := int64(bits.TrailingZeros8(c))
			c &= c - 1
			w.Mark((int64(i)*8+j)*unit, unit)
		}
	}
	return nil
}

// MergeLog ORs a chunk's LOG bitmap into the WIB of a mirror set, whose
// members have the set's size. It refuses a Log of another size with an
// error that unwraps to ErrMismatch.
func (w *WIB) MergeLog(l *Log) error {
	if l.Size() != w.size {
		return &HeaderError{Path: w.path, Field: "LOG size", Err: ErrMismatch,
			Got: strconv.FormatInt(l.Size(), 10), Want: strconv.FormatInt(w.size, 10)}
	}
	return w.Merge(l.Snapshot(), l.RegionSize())
}

// Close unmaps the bitmap and closes its file; the bits stay in the file
// for the next OpenWIB. A closed WIB must not be used.
func (w *WIB) Close() error {
	var err error
	if w.mem != nil {
		if e := syscall.Munmap(w.mem); e != nil {
			err = fmt.Errorf("bitmap: unmap %s: %w", w.path, e)
		}
		w.mem = nil
	}
	w.words = nil
	if w.file != nil {
		if e := w.file.Close(); e != nil && err == nil {
			err = fmt.Errorf("bitmap: close %s: %w", w.path, e)
		}
		w.file = nil
	}
	return err
}

// Remove deletes the backing file and closes the WIB: for a set that is
// detached cleanly or that is being resynced in full. The file is unlinked
// while it is still locked, so no other opener can see it half-gone.
func (w *WIB) Remove() error {
	var err error
	if w.file != nil {
		if e := os.Remove(w.path); e != nil {
			err = fmt.Errorf("bitmap: remove WIB: %w", e)
		}
	}
	if e := w.Close(); e != nil && err == nil {
		err = e
	}
	return err
}
