package hostd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/hostd/iscsi"
	"github.com/chunkraid/chunkraid/linear"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// Snapshot targets: a snapshot the metaserver assigns to this host
// (chunkraid snapshot attach) is served read-only over iSCSI, so that an
// initiator can copy it out (qemu-img convert). Every member chunk of a
// mirror set holds the snapshot's bytes of the set, so a read goes to one
// member, and to the next when it fails. Nothing is written, so there is
// no write-intent bitmap, no resync and no quiesce: a snapshot target is
// independent of the volume's own attachment, which may be on another host
// or none (a snapshot's export is not fenced when the volume moves; see
// the chunkserver's snapshotsUnfenced).

// snapTarget is one snapshot served read-only.
type snapTarget struct {
	t    api.SnapshotTarget
	sets []*snapSet
	lu   *snapLun
}

// snapLun is a snapshot target as the iSCSI target serves it: exactly the
// snapshot's size, read-only (iscsi.TargetConfig.ReadOnly refuses writes
// before they get here).
type snapLun struct {
	*linear.Volume
	size int64
}

func (l *snapLun) Size() int64 { return l.size }

func (l *snapLun) ReadAt(ctx context.Context, p []byte, off int64) error {
	return scsiClass(l.Volume.ReadAt(ctx, p, off))
}

// snapSet reads one set's part of a snapshot from whichever member holds
// it. It implements raid.Device for linear.Volume; writes are refused.
type snapSet struct {
	s    *Server
	log  *slog.Logger
	size int64
	mu   struct {
		sync.Mutex
		members []*snapMember
	}
}

// snapMember is one member chunk's snapshot export and its connection (nil
// until the first read, and after an error).
type snapMember struct {
	api  api.Member
	mu   sync.Mutex
	conn memberConn
}

var errSnapshotReadOnly = errors.New("a snapshot target is read-only")

func (ss *snapSet) Size() int64                                        { return ss.size }
func (ss *snapSet) WriteAt(context.Context, []byte, int64, bool) error { return errSnapshotReadOnly }
func (ss *snapSet) Trim(context.Context, int64, int64) error           { return errSnapshotReadOnly }
func (ss *snapSet) Flush(context.Context) error                        { return nil }

// ReadAt reads from the members in turn until one answers; it fails with
// raid.ErrNoMembers and every member's error when none does.
func (ss *snapSet) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > ss.size {
		return raid.ErrOutOfRange
	}
	ss.mu.Lock()
	members := ss.mu.members
	ss.mu.Unlock()
	var errs []error
	for _, m := range members {
		err := m.read(ctx, ss.s, p, off)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		ss.log.Warn("reading the snapshot from a member failed: trying the next", "chunk", m.api.ChunkID, "chunkserver", m.api.Chunkserver, "err", err)
		errs = append(errs, fmt.Errorf("member %s on %s: %w", m.api.ChunkID, m.api.Chunkserver, err))
	}
	return fmt.Errorf("%w: %w", raid.ErrNoMembers, errors.Join(errs...))
}

// read reads from m's snapshot export, connecting first if need be; a
// failed read drops the connection, so the next one connects again.
func (m *snapMember) read(ctx context.Context, s *Server, p []byte, off int64) error {
	m.mu.Lock()
	c := m.conn
	if c == nil {
		dctx, cancel := context.WithTimeout(ctx, s.cfg.IOTimeout)
		var err error
		c, err = s.cfg.Dial(dctx, nbd.ClientConfig{Addr: m.api.Addr, Export: m.api.Export, Timeout: s.cfg.IOTimeout})
		cancel()
		if err != nil {
			m.mu.Unlock()
			return err
		}
		m.conn = c
	}
	m.mu.Unlock()
	err := c.ReadAt(ctx, p, off)
	if err != nil && ctx.Err() == nil {
		m.mu.Lock()
		if m.conn == c {
			m.conn = nil
		}
		m.mu.Unlock()
		c.Close()
	}
	return err
}

func (m *snapMember) close() {
	m.mu.Lock()
	c := m.conn
	m.conn = nil
	m.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// setMembers gives ss the members of set; a member whose chunk, address
// or export name changed gets a new connection at its next read.
func (ss *snapSet) setMembers(set api.Set) {
	ss.mu.Lock()
	old := ss.mu.members
	byChunk := make(map[string]*snapMember, len(old))
	for _, m := range old {
		byChunk[m.api.ChunkID] = m
	}
	members := make([]*snapMember, 0, len(set.Members))
	for _, am := range set.Members {
		if m, ok := byChunk[am.ChunkID]; ok && m.api.Addr == am.Addr && m.api.Export == am.Export {
			members = append(members, m)
			delete(byChunk, am.ChunkID)
			continue
		}
		members = append(members, &snapMember{api: am})
	}
	// Members that are in sync first: a member rebuilt since the snapshot
	// does not hold it.
	ordered := make([]*snapMember, 0, len(members))
	for _, inSync := range []bool{true, false} {
		for _, m := range members {
			if (m.api.State == api.MemberInSync || m.api.State == "") == inSync {
				ordered = append(ordered, m)
			}
		}
	}
	ss.mu.members = ordered
	ss.mu.Unlock()
	for _, m := range byChunk {
		m.close()
	}
}

func (ss *snapSet) close() {
	ss.mu.Lock()
	members := ss.mu.members
	ss.mu.members = nil
	ss.mu.Unlock()
	for _, m := range members {
		m.close()
	}
}

// snapTargetConfig is the iSCSI configuration of a snapshot target: the
// volume's access control, a serial of its own, read-only.
func snapTargetConfig(t api.SnapshotTarget) iscsi.TargetConfig {
	cfg := targetConfig(api.Volume{Name: t.Volume + "@" + t.Snapshot, Auth: t.Auth})
	cfg.ReadOnly = true
	return cfg
}

// sameSnapLayout reports whether b is a with the same volume, snapshot,
// size and sets (member export names and states may differ).
func sameSnapLayout(a, b api.SnapshotTarget) bool {
	if a.Volume != b.Volume || a.Snapshot != b.Snapshot || a.SizeBytes != b.SizeBytes || len(a.Sets) != len(b.Sets) {
		return false
	}
	for i := range a.Sets {
		if a.Sets[i].SizeBytes != b.Sets[i].SizeBytes {
			return false
		}
	}
	return true
}

// serveSnapshot adds snapshot target t.
func (s *Server) serveSnapshot(t api.SnapshotTarget) (*snapTarget, error) {
	layout, err := api.ParseLayout(t.Layout)
	if err != nil {
		return nil, err
	}
	if layout.Kind != api.LayoutMirror {
		return nil, fmt.Errorf("snapshots of %s volumes cannot be served: only mirrors", t.Layout)
	}
	st := &snapTarget{t: t}
	devs := make([]raid.Device, 0, len(t.Sets))
	for _, set := range t.Sets {
		ss := &snapSet{s: s, size: set.SizeBytes, log: s.log.With("snapshot", t.Snapshot, "volume", t.Volume, "set", set.Index)}
		ss.setMembers(set)
		st.sets = append(st.sets, ss)
		devs = append(devs, ss)
	}
	vol, err := linear.New(devs)
	if err != nil {
		return nil, err
	}
	if vol.Size() < t.SizeBytes {
		return nil, fmt.Errorf("sets hold %d bytes, the snapshot is %d", vol.Size(), t.SizeBytes)
	}
	st.lu = &snapLun{Volume: vol, size: t.SizeBytes}
	if err := s.target.AddTargetWith(t.IQN, st.lu, snapTargetConfig(t)); err != nil {
		st.close()
		return nil, err
	}
	return st, nil
}

func (st *snapTarget) close() {
	for _, ss := range st.sets {
		ss.close()
	}
}

// applySnapshotTargets serves the snapshots of targets and stops serving
// the others. It reports whether every target is served.
func (s *Server) applySnapshotTargets(targets []api.SnapshotTarget) bool {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	want := make(map[string]api.SnapshotTarget, len(targets))
	for _, t := range targets {
		want[t.IQN] = t
	}
	s.mu.Lock()
	var stale []*snapTarget
	for iqn, st := range s.mu.snapTargets {
		if t, ok := want[iqn]; !ok || !sameSnapLayout(st.t, t) {
			stale = append(stale, st)
			delete(s.mu.snapTargets, iqn)
		}
	}
	s.mu.Unlock()
	for _, st := range stale {
		s.stopSnapshot(st)
	}
	ok := true
	for _, t := range targets {
		s.mu.Lock()
		st, have := s.mu.snapTargets[t.IQN]
		s.mu.Unlock()
		if have {
			for i, set := range t.Sets {
				st.sets[i].setMembers(set)
			}
			if !reflect.DeepEqual(st.t.Auth, t.Auth) {
				if err := s.target.UpdateTarget(t.IQN, snapTargetConfig(t)); err != nil {
					s.log.Error("updating the snapshot target's access control", "iqn", t.IQN, "err", err)
					ok = false
					continue
				}
			}
			st.t = t
			continue
		}
		st, err := s.serveSnapshot(t)
		if err != nil {
			s.log.Error("serving a snapshot", "volume", t.Volume, "snapshot", t.Snapshot, "err", err)
			ok = false
			continue
		}
		s.mu.Lock()
		s.mu.snapTargets[t.IQN] = st
		s.mu.Unlock()
		s.log.Info("snapshot served read-only", "volume", t.Volume, "snapshot", t.Snapshot, "iqn", t.IQN, "size", t.SizeBytes)
	}
	return ok
}

// stopSnapshot stops serving st: its sessions end, its connections close.
func (s *Server) stopSnapshot(st *snapTarget) {
	if err := s.target.RemoveTarget(st.t.IQN); err != nil && !errors.Is(err, iscsi.ErrTargetNotFound) {
		s.log.Error("removing a snapshot target", "iqn", st.t.IQN, "err", err)
	}
	st.close()
	s.log.Info("snapshot no longer served", "volume", st.t.Volume, "snapshot", st.t.Snapshot, "iqn", st.t.IQN)
}

// stopSnapshots stops serving every snapshot (at shutdown).
func (s *Server) stopSnapshots() {
	s.applySnapshotTargets(nil)
}
