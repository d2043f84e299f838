package bitmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"strconv"
	"sync"
	"time"
)

// LOG state format; the layout is drawn in the package doc.
const (
	logMagic         = "CRLOGBM\x00"
	logVersion       = 1
	logFixedLen      = 40 // bytes before the two halves
	logFlagPinned    = 1
	logMinRegion     = 512
	logDefaultRegion = 64 << 20
	logDefaultPeriod = 60 * time.Second
)

// LogConfig describes the LOG bitmap of one chunk.
type LogConfig struct {
	// Size is the chunk size in bytes.
	Size int64
	// RegionSize is the number of bytes one bit stands for: a power of two
	// of at least 512. Zero means 64 MiB.
	RegionSize int64
	// Period is T, the rotation period. Zero means 60 s. It must respect
	// the timeout budget (budget.Validate); the Log cannot check that alone.
	Period time.Duration
	// Clock tells the time for Rotate and for the rotation time of a new
	// Log. Nil means time.Now.
	Clock func() time.Time
	// FineRegion, if smaller than RegionSize, keeps beside the LOG a fine
	// copy of it in memory, one bit per FineRegion bytes (a power of two
	// of at least 512), that FineSnapshot returns: never persisted, so
	// marking it costs no sync, and it does for a crashed host, whose
	// chunkservers live on, what the coarse LOG does after anything. Zero:
	// none.
	FineRegion int64
}

func (c *LogConfig) validate() error {
	if c.RegionSize == 0 {
		c.RegionSize = logDefaultRegion
	}
	if c.Period == 0 {
		c.Period = logDefaultPeriod
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	switch {
	case c.Size <= 0:
		return configErr("LOG size %d must be positive", c.Size)
	case !isPow2(c.RegionSize) || c.RegionSize < logMinRegion:
		return configErr("LOG region size %d must be a power of two of at least %d", c.RegionSize, logMinRegion)
	case c.Period < 0:
		return configErr("LOG rotation period %v must be positive", c.Period)
	case c.FineRegion != 0 && (!isPow2(c.FineRegion) || c.FineRegion < logMinRegion):
		return configErr("fine LOG region size %d must be a power of two of at least %d", c.FineRegion, logMinRegion)
	}
	if c.FineRegion >= c.RegionSize {
		c.FineRegion = 0 // no finer than the LOG itself
	}
	return nil
}

// Log is the LOG bitmap of one chunk: two halves, current and history, one
// bit per region each. A write sets its regions' bits in current, durably,
// before its data is written; every Period the owner rotates (history :=
// current; current := 0), so current|history records every write of the
// last Period (Theorem 1). Its methods are safe for concurrent use. Make
// one with NewLog; the zero Log is only a target for UnmarshalBinary.
type Log struct {
	size       int64
	regionSize int64
	regions    int64
	shift      uint
	period     time.Duration
	clock      func() time.Time

	mu struct {
		sync.Mutex
		current []uint64 // bits, host order (only the persisted form is fixed)
		history []uint64
		// setGen[r] is the generation in which region r's current bit was
		// set; 0 if clear or set in a generation that is durable.
		setGen       []uint64
		pinned       bool
		pinGen       uint64 // generation in which pinned was set
		lastRotation time.Time
		gen          uint64        // generation of the in-memory state
		durable      uint64        // newest generation known to be persisted
		syncing      bool          // a persist is running
		syncDone     chan struct{} // closed when the running persist ends
		failed       error         // set once a persist failed; permanent
		// The fine copy (LogConfig.FineRegion), nil without one: its two
		// halves, marked and rotated with the LOG's; and, in LOG regions,
		// the halves of the bits this Log did not see set (restored by
		// UnmarshalBinary), rotated alike: where one of those is set the
		// fine copy does not know which fine regions the writes touched.
		fineCur, fineHist       []uint64
		untrackCur, untrackHist []uint64
	}
	fineRegion int64 // 0: no fine copy
	fineShift  uint
	fineCount  int64 // fine regions
}

// NewLog returns an empty Log whose rotation time is now.
func NewLog(cfg LogConfig) (*Log, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l := &Log{}
	l.init(cfg.Size, cfg.RegionSize, cfg.Period, cfg.Clock)
	if cfg.FineRegion != 0 {
		l.fineRegion, l.fineShift = cfg.FineRegion, shiftOf(cfg.FineRegion)
		l.fineCount = regionCount(cfg.Size, l.fineShift)
		n := (l.fineCount + 63) / 64
		l.mu.fineCur, l.mu.fineHist = make([]uint64, n), make([]uint64, n)
		l.mu.untrackCur, l.mu.untrackHist = make([]uint64, len(l.mu.current)), make([]uint64, len(l.mu.current))
	}
	l.mu.lastRotation = l.clock()
	return l, nil
}

func (l *Log) init(size, regionSize int64, period time.Duration, clock func() time.Time) {
	l.size, l.regionSize, l.period, l.clock = size, regionSize, period, clock
	l.shift = shiftOf(regionSize)
	l.regions = regionCount(size, l.shift)
	n := (l.regions + 63) / 64
	l.mu.current = make([]uint64, n)
	l.mu.history = make([]uint64, n)
	l.mu.setGen = make([]uint64, l.regions)
}

// Size returns the chunk size the Log covers.
func (l *Log) Size() int64 { return l.size }

// RegionSize returns the number of bytes one bit stands for.
func (l *Log) RegionSize() int64 { return l.regionSize }

// Regions returns the number of regions (bits per half).
func (l *Log) Regions() int64 { return l.regions }

// Period returns T, the rotation period.
func (l *Log) Period() time.Duration { return l.period }

// Mark records a write of [off, off+length) that has arrived at the chunk,
// before its data is written. It sets the regions' bits in current and
// returns gen, the generation of the LOG state that must be durable before
// the data write may start, or 0 if what the write needs is durable
// already. flipped reports whether this call set a bit (0→1); a write whose
// bits another write set but has not yet made durable gets flipped ==
// false and gen != 0, and must wait as well. The caller then runs Sync(ctx,
// gen, persist) — whoever comes first persists, the others wait. Bytes
// outside the chunk are ignored. Mark does no I/O and does not allocate.
func (l *Log) Mark(off, length int64) (gen uint64, flipped bool) {
	first, last, ok := span(off, length, l.size, l.shift)
	if !ok {
		return 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fineRegion != 0 {
		f0, f1, _ := span(off, length, l.size, l.fineShift)
		for r := f0; r <= f1; r++ {
			l.mu.fineCur[r>>6] |= 1 << (r & 63)
		}
	}
	for r := first; r <= last; r++ {
		w, m := r>>6, uint64(1)<<(r&63)
		if l.mu.current[w]&m == 0 {
			if !flipped {
				flipped = true
				l.mu.gen++
			}
			l.mu.current[w] |= m
			l.mu.setGen[r] = l.mu.gen
		}
		gen = max(gen, l.mu.setGen[r])
	}
	if gen <= l.mu.durable {
		gen = 0
	}
	return gen, flipped
}

// Sync returns once generation gen of the LOG state is durable. If it is
// not, and no persist is running, the caller runs persist with the
// marshalled state (MarshalBinary); concurrent callers wait for that
// persist, and a caller whose generation it does not cover runs the next
// one: persists never overlap, and each one writes a state at least as new
// as the one before. persist must write the bytes durably (e.g. into the
// chunk sidecar, fsynced) or return an error; every caller of a Log must
// pass a persist that writes to the same place. If a persist fails with an
// error wrapping ErrNotPersisted, Sync returns it and the Log goes on (the
// state on disk is an older one, which keeps at least the bits that were
// durable before). If a persist fails otherwise, the Log is failed for good: this and every later Sync return an error that wraps
// ErrLogFailed and the persist error, and the chunk must stop taking
// writes. Sync returns ctx.Err() if ctx ends while it waits; a persist that
// has started runs to its end. gen 0 returns nil at once.
func (l *Log) Sync(ctx context.Context, gen uint64, persist func(state []byte) error) error {
	if gen == 0 {
		return nil
	}
	l.mu.Lock()
	for {
		if l.mu.durable >= gen {
			l.mu.Unlock()
			return nil
		}
		if err := l.mu.failed; err != nil {
			l.mu.Unlock()
			return err
		}
		if l.mu.syncing {
			done := l.mu.syncDone
			l.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return ctx.Err()
			}
			l.mu.Lock()
			continue
		}
		if err := ctx.Err(); err != nil {
			l.mu.Unlock()
			return err
		}
		done := make(chan struct{})
		l.mu.syncing, l.mu.syncDone = true, done
		state, sgen := l.marshalLocked(), l.mu.gen
		l.mu.Unlock()

		err := persist(state)

		l.mu.Lock()
		l.mu.syncing = false
		close(done)
		if errors.Is(err, ErrNotPersisted) {
			l.mu.Unlock()
			return err
		}
		if err != nil {
			l.mu.failed = fmt.Errorf("%w: %w", ErrLogFailed, err)
		} else if sgen > l.mu.durable {
			l.mu.durable = sgen
		}
	}
}

// Durable reports whether generation gen of the LOG state is durable.
func (l *Log) Durable(gen uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return gen <= l.mu.durable
}

// Rotate starts a new period at once: history := current; current := 0;
// the rotation time becomes the Clock's now. A pinned Log forgets nothing:
// it rotates history |= current instead. Rotate is unconditional; an owner
// that rotates on a timer calls MaybeRotate, which never rotates sooner
// than Period after the previous rotation — rotating sooner would break
// Theorem 1. A rotation needs no persist of its own: the state on disk
// keeps more bits until the next persist, which is always safe.
func (l *Log) Rotate() {
	now := l.clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rotateLocked(now)
}

// MaybeRotate rotates if at least Period has passed since the last
// rotation, measured with now, and reports whether it did. A clock that
// went backwards does not rotate.
func (l *Log) MaybeRotate(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.mu.lastRotation) < l.period {
		return false
	}
	l.rotateLocked(now)
	return true
}

func (l *Log) rotateLocked(now time.Time) {
	rotateHalves(l.mu.current, l.mu.history, l.mu.pinned)
	if l.fineRegion != 0 {
		rotateHalves(l.mu.fineCur, l.mu.fineHist, l.mu.pinned)
		rotateHalves(l.mu.untrackCur, l.mu.untrackHist, l.mu.pinned)
	}
	clear(l.mu.setGen)
	l.mu.lastRotation = now
}

// rotateHalves rotates a pair of halves: history := current (history |=
// current if pinned); current := 0.
func rotateHalves(cur, hist []uint64, pinned bool) {
	for i, c := range cur {
		if pinned {
			hist[i] |= c
		} else {
			hist[i] = c
		}
		cur[i] = 0
	}
}

// RestartPeriod starts the current period anew at the Clock's now,
// without rotating. An owner calls it on a Log it has just restored with
// UnmarshalBinary after a restart: the persisted rotation time is a
// wall-clock reading with no monotonic one, so a period measured from it
// could end early (the owner was down, or the wall clock was stepped) and
// the Log would forget sooner than Period after the restart. Measuring
// from the restart, on the monotonic clock, only keeps bits longer.
func (l *Log) RestartPeriod() {
	now := l.clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.lastRotation = now
}

// LastRotation returns the time of the last rotation (for a Log restored
// by UnmarshalBinary, the persisted one, which carries no monotonic
// reading, until RestartPeriod).
func (l *Log) LastRotation() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.lastRotation
}

// Pin makes the Log forget nothing until Unpin: rotations then merge
// current into history instead of dropping history. hostd pins the
// surviving members of a degraded set (DESIGN rule 3) so that the record of
// what the absent member missed outlives any number of periods. The pin is
// part of the persisted state and must be durable before hostd relies on
// it: Pin returns the generation to pass to Sync, or 0 if it is durable
// already. Pin is idempotent, so a retried control call needs no matching
// Unpin.
func (l *Log) Pin() (gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.mu.pinned {
		l.mu.pinned = true
		l.mu.gen++
		l.mu.pinGen = l.mu.gen
	}
	if l.mu.pinGen <= l.mu.durable {
		return 0
	}
	return l.mu.pinGen
}

// Unpin lets the Log forget again from the next rotation on: bits already
// in history go at the rotation after that. hostd unpins after the resync
// that made the set whole. No persist is needed: a persisted pin only keeps
// more bits.
func (l *Log) Unpin() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mu.pinned = false
}

// Pinned reports whether the Log is pinned.
func (l *Log) Pinned() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.pinned
}

// Snapshot returns current|history, the LOG bitmap proper, in region
// units: bit i%8 of byte i/8 stands for the chunk's bytes [i*RegionSize,
// (i+1)*RegionSize). This is what the chunkserver publishes as the NBD meta
// context "chunkraid:log" and what a new host ORs into its WIB.
func (l *Log) Snapshot() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]byte, (l.regions+7)/8)
	for i := range l.mu.current {
		putBitsLE(out, i, l.mu.current[i]|l.mu.history[i])
	}
	return out
}

// FineSnapshot is Snapshot at the fine copy's granularity
// (LogConfig.FineRegion): it returns that region size and the bits, in
// Snapshot's layout, of the fine regions written in the last period — or,
// for the LOG regions whose bits this Log restored rather than saw set
// (after a restart), every fine region of them. A Log without a fine copy
// returns RegionSize and Snapshot. It records every write Snapshot does
// (Theorem 1 holds for it alike), and a host that reads it after another
// host died resyncs only the fine regions in flight, not whole LOG
// regions.
func (l *Log) FineSnapshot() (regionSize int64, snapshot []byte) {
	if l.fineRegion == 0 {
		return l.regionSize, l.Snapshot()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]byte, (l.fineCount+7)/8)
	for i := range l.mu.fineCur {
		putBitsLE(out, i, l.mu.fineCur[i]|l.mu.fineHist[i])
	}
	per := int64(1) << (l.shift - l.fineShift) // fine regions per LOG region
	for i := range l.mu.untrackCur {
		for w := l.mu.untrackCur[i] | l.mu.untrackHist[i]; w != 0; w &= w - 1 {
			r := int64(i)*64 + int64(bits.TrailingZeros64(w))
			for f := r * per; f < min((r+1)*per, l.fineCount); f++ {
				out[f/8] |= 1 << (f % 8)
			}
		}
	}
	return l.fineRegion, out
}

// putBitsLE writes word i of a host-order bitmap into b, bit j of the word
// going to bit j%8 of byte 8i+j/8; bytes beyond b are dropped (they hold
// only padding bits, which are zero).
func putBitsLE(b []byte, i int, w uint64) {
	for k := range 8 {
		if p := i*8 + k; p < len(b) {
			b[p] = byte(w >> (8 * k))
		}
	}
}

func getBitsLE(b []byte, i int) uint64 {
	var w uint64
	for k := range 8 {
		if p := i*8 + k; p < len(b) {
			w |= uint64(b[p]) << (8 * k)
		}
	}
	return w
}

// MarshalBinary returns the persisted form of the Log (format in the
// package doc). Pending generations are not part of it.
func (l *Log) MarshalBinary() ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.marshalLocked(), nil
}

func (l *Log) marshalLocked() []byte {
	n := int((l.regions + 7) / 8)
	b := make([]byte, logFixedLen+2*n+4)
	copy(b[0:8], logMagic)
	binary.LittleEndian.PutUint16(b[8:], logVersion)
	var flags uint16
	if l.mu.pinned {
		flags |= logFlagPinned
	}
	binary.LittleEndian.PutUint16(b[10:], flags)
	binary.LittleEndian.PutUint64(b[16:], uint64(l.size))
	binary.LittleEndian.PutUint64(b[24:], uint64(l.regionSize))
	binary.LittleEndian.PutUint64(b[32:], uint64(l.mu.lastRotation.UnixNano()))
	cur, hist := b[logFixedLen:logFixedLen+n], b[logFixedLen+n:logFixedLen+2*n]
	for i := range l.mu.current {
		putBitsLE(cur, i, l.mu.current[i])
		putBitsLE(hist, i, l.mu.history[i])
	}
	binary.LittleEndian.PutUint32(b[logFixedLen+2*n:], crc32.Checksum(b[:logFixedLen+2*n], castagnoli))
	return b
}

// UnmarshalBinary restores a Log from its persisted form; the restored
// state counts as durable. On a Log made by NewLog the geometry in data
// must equal the Log's (else an error that unwraps to ErrMismatch), and
// Period and Clock stay as configured; on a zero Log the geometry comes
// from data, Period is 60 s and Clock time.Now. Damaged data is refused
// with a *HeaderError that unwraps to ErrCorrupt or ErrVersion, and the Log
// is left unchanged. Restore a Log before it is used: UnmarshalBinary
// replaces the state that concurrent Marks rely on.
func (l *Log) UnmarshalBinary(data []byte) error {
	d, err := decodeLog(data)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.regions == 0 {
		l.init(d.size, d.regionSize, logDefaultPeriod, time.Now)
	} else if d.size != l.size || d.regionSize != l.regionSize {
		field, got, want := "size", d.size, l.size
		if d.size == l.size {
			field, got, want = "region size", d.regionSize, l.regionSize
		}
		return &HeaderError{Field: field, Got: strconv.FormatInt(got, 10), Want: strconv.FormatInt(want, 10),
			Err: ErrMismatch}
	}
	for i := range l.mu.current {
		l.mu.current[i] = getBitsLE(d.current, i)
		l.mu.history[i] = getBitsLE(d.history, i)
	}
	if l.fineRegion != 0 {
		// This Log did not see these bits set: the fine copy stands for
		// them whole until they are rotated out.
		copy(l.mu.untrackCur, l.mu.current)
		copy(l.mu.untrackHist, l.mu.history)
		clear(l.mu.fineCur)
		clear(l.mu.fineHist)
	}
	clear(l.mu.setGen)
	l.mu.pinned = d.pinned
	l.mu.lastRotation = d.lastRotation
	l.mu.durable = l.mu.gen
	l.mu.pinGen = 0
	return nil
}

type decodedLog struct {
	size, regionSize int64
	pinned           bool
	lastRotation     time.Time
	current, history []byte
}

func decodeLog(b []byte) (decodedLog, error) {
	bad := func(field, got string) (decodedLog, error) {
		return decodedLog{}, &HeaderError{Field: field, Got: got, Err: ErrCorrupt}
	}
	if len(b) < logFixedLen+4 {
		return bad("length", fmt.Sprintf("%d bytes, shorter than the %d-byte minimum", len(b), logFixedLen+4))
	}
	if string(b[0:8]) != logMagic {
		return bad("magic", strconv.Quote(string(b[0:8])))
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != logVersion {
		return decodedLog{}, &HeaderError{Field: "version", Got: strconv.Itoa(int(v)),
			Want: strconv.Itoa(logVersion), Err: ErrVersion}
	}
	end := len(b) - 4
	if sum, want := crc32.Checksum(b[:end], castagnoli), binary.LittleEndian.Uint32(b[end:]); sum != want {
		return bad("crc", fmt.Sprintf("computed %08x, stored %08x", sum, want))
	}
	flags := binary.LittleEndian.Uint16(b[10:])
	if flags&^logFlagPinned != 0 {
		return bad("flags", fmt.Sprintf("%#04x", flags))
	}
	if !allZero(b[12:16]) {
		return bad("reserved bytes", "not zero")
	}
	d := decodedLog{
		size:         int64(binary.LittleEndian.Uint64(b[16:])),
		regionSize:   int64(binary.LittleEndian.Uint64(b[24:])),
		pinned:       flags&logFlagPinned != 0,
		lastRotation: time.Unix(0, int64(binary.LittleEndian.Uint64(b[32:]))),
	}
	if d.size <= 0 {
		return bad("size", strconv.FormatInt(d.size, 10))
	}
	if !isPow2(d.regionSize) || d.regionSize < logMinRegion {
		return bad("region size", strconv.FormatInt(d.regionSize, 10))
	}
	regions := regionCount(d.size, shiftOf(d.regionSize))
	n := (regions + 7) / 8
	if int64(end-logFixedLen) != 2*n {
		return bad("length", fmt.Sprintf("%d bytes of bits for %d regions (want %d)", end-logFixedLen, regions, 2*n))
	}
	d.current = b[logFixedLen : logFixedLen+n]
	d.history = b[logFixedLen+n : end]
	if pad := regions & 7; pad != 0 {
		if d.current[n-1]>>pad != 0 || d.history[n-1]>>pad != 0 {
			return bad("padding bits", "not zero")
		}
	}
	return d, nil
}
