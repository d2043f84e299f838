package raid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// MemberState is the health of one member of a set as the set sees it.
type MemberState int

const (
	// InSync members hold every acknowledged write and serve reads.
	InSync MemberState = iota
	// Failed members returned an error; the set stops using them. Bringing a
	// failed member back requires a resync, which is not done by Mirror itself.
	Failed
)

func (s MemberState) String() string {
	switch s {
	case InSync:
		return "in_sync"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("MemberState(%d)", int(s))
}

// MirrorConfig configures a mirror set.
type MirrorConfig struct {
	// Members are the copies; all must have the same Size. 2 or 3.
	Members []Device
	// MinWriteMembers is how many members must acknowledge a write for it to
	// succeed. 0 means 1, the RAID-1 minimum.
	MinWriteMembers int
	// Logger receives member failures. nil discards.
	Logger *slog.Logger
	// OnStateChange, if set, is called (without locks held) after a member
	// changes state.
	OnStateChange func(member int, st MemberState, err error)
}

// Mirror is a RAID-1 set: every write goes to every in-sync member in
// parallel; a read goes to one in-sync member, round-robin, and falls over to
// another if it fails. A member that returns an error is marked Failed and is
// neither read nor written again by this Mirror.
type Mirror struct {
	members  []Device
	minWrite int
	size     int64
	log      *slog.Logger
	onChange func(int, MemberState, error)
	next     atomic.Uint32 // round-robin read cursor

	mu struct {
		sync.Mutex
		state []MemberState // guarded by mu
	}
}

// NewMirror builds a mirror set over cfg.Members.
func NewMirror(cfg MirrorConfig) (*Mirror, error) {
	if n := len(cfg.Members); n < 1 || n > 3 {
		return nil, fmt.Errorf("raid: mirror needs 1 to 3 members, got %d", n)
	}
	size := cfg.Members[0].Size()
	for i, m := range cfg.Members {
		if m.Size() != size {
			return nil, fmt.Errorf("raid: mirror member %d has size %d, member 0 has %d: members must be equal", i, m.Size(), size)
		}
	}
	minWrite := cfg.MinWriteMembers
	if minWrite == 0 {
		minWrite = 1
	}
	if minWrite < 1 || minWrite > len(cfg.Members) {
		return nil, fmt.Errorf("raid: MinWriteMembers %d must be between 1 and the member count %d", minWrite, len(cfg.Members))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Mirror{members: cfg.Members, minWrite: minWrite, size: size, log: log, onChange: cfg.OnStateChange}
	m.mu.state = make([]MemberState, len(cfg.Members))
	return m, nil
}

// Size is the capacity of the set, the size of one member.
func (m *Mirror) Size() int64 { return m.size }

// States returns a snapshot of the members' states.
func (m *Mirror) States() []MemberState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]MemberState(nil), m.mu.state...)
}

func (m *Mirror) usable() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	idx := make([]int, 0, len(m.members))
	for i, st := range m.mu.state {
		if st == InSync {
			idx = append(idx, i)
		}
	}
	return idx
}

func (m *Mirror) fail(i int, err error) {
	m.mu.Lock()
	changed := m.mu.state[i] != Failed
	m.mu.state[i] = Failed
	m.mu.Unlock()
	if changed {
		m.log.Error("mirror member failed", "member", i, "err", err)
		if m.onChange != nil {
			m.onChange(i, Failed, err)
		}
	}
}

func (m *Mirror) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > m.size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, m.size)
	}
	return nil
}

// memberErr decides whether an error is the member's fault. A cancelled or
// expired caller context is not.
func memberErr(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, ErrOutOfRange)
}

// ReadAt reads from one in-sync member, trying the others if it fails.
func (m *Mirror) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	var lastErr error
	for {
		idx := m.usable()
		if len(idx) == 0 {
			if lastErr != nil {
				return fmt.Errorf("%w: last error: %w", ErrNoMembers, lastErr)
			}
			return ErrNoMembers
		}
		i := idx[int(m.next.Add(1))%len(idx)]
		err := m.members[i].ReadAt(ctx, p, off)
		if err == nil {
			return nil
		}
		if !memberErr(ctx, err) {
			return err
		}
		lastErr = err
		m.fail(i, err)
	}
}

// fanOut runs op on every in-sync member in parallel and succeeds when every
// member that did not fail acknowledged and at least minWrite did.
func (m *Mirror) fanOut(ctx context.Context, op func(d Device) error) error {
	idx := m.usable()
	if len(idx) < m.minWrite {
		return fmt.Errorf("%w: %d in-sync members, %d required", ErrNoMembers, len(idx), m.minWrite)
	}
	errs := make([]error, len(idx))
	if len(idx) == 1 {
		errs[0] = op(m.members[idx[0]])
	} else {
		var wg sync.WaitGroup
		for j, i := range idx {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[j] = op(m.members[i])
			}()
		}
		wg.Wait()
	}
	ok := 0
	var firstErr error
	for j, err := range errs {
		switch {
		case err == nil:
			ok++
		case memberErr(ctx, err):
			m.fail(idx[j], err)
			if firstErr == nil {
				firstErr = err
			}
		default:
			// The caller's context ended or the request was invalid: the
			// member is not at fault, and the operation failed.
			return err
		}
	}
	if ok < m.minWrite {
		return fmt.Errorf("%w: %d of %d members acknowledged, %d required: %w", ErrNoMembers, ok, len(idx), m.minWrite, firstErr)
	}
	return nil
}

// WriteAt writes p to every in-sync member in parallel.
func (m *Mirror) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	return m.fanOut(ctx, func(d Device) error { return d.WriteAt(ctx, p, off, fua) })
}

// Flush flushes every in-sync member. A member whose flush fails is failed:
// its durability is unknown, so it must not be trusted again.
func (m *Mirror) Flush(ctx context.Context) error {
	return m.fanOut(ctx, func(d Device) error { return d.Flush(ctx) })
}

// Trim deallocates a range on every in-sync member.
func (m *Mirror) Trim(ctx context.Context, off, length int64) error {
	if err := m.check(off, length); err != nil {
		return err
	}
	return m.fanOut(ctx, func(d Device) error { return d.Trim(ctx, off, length) })
}
