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
// member, and to the next when it fails; an erasure-coded set's reads go
// to the data unit's member, and are rebuilt from k others when it fails
// (raid.ECReader). Nothing is written, so there is
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

// snapSet reads one set's part of a snapshot: a mirror's from whichever
// member holds it, an EC set's through ec. It implements raid.Device for
// linear.Volume; writes are refused.
type snapSet struct {
	s    *Server
	log  *slog.Logger
	size int64
	ec   *raid.ECReader // nil for a mirror
	mu   struct {
		sync.Mutex
		members []*snapMember // in member order
	}
}

// snapMemberDev is member i of a snapshot's EC set as the raid.ECReader
// sees it: whichever member the assignment has there now.
type snapMemberDev struct {
	ss   *snapSet
	i    int
	size int64
}

func (d snapMemberDev) Size() int64 { return d.size }
func (d snapMemberDev) WriteAt(context.Context, []byte, int64, bool) error {
	return errSnapshotReadOnly
}
func (d snapMemberDev) Trim(context.Context, int64, int64) error { return errSnapshotReadOnly }
func (d snapMemberDev) Flush(context.Context) error              { return nil }

func (d snapMemberDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.ss.mu.Lock()
	members := d.ss.mu.members
	d.ss.mu.Unlock()
	if d.i >= len(members) {
		return fmt.Errorf("no member %d", d.i)
	}
	return members[d.i].read(ctx, d.ss.s, p, off)
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

// ReadAt reads an EC set through its reader, and a mirror's from the
// members in turn, in-sync ones first (a member rebuilt since the snapshot
// does not hold it), until one answers; it fails with raid.ErrNoMembers
// and every member's error when none does.
func (ss *snapSet) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > ss.size {
		return raid.ErrOutOfRange
	}
	if ss.ec != nil {
		return ss.ec.ReadAt(ctx, p, off)
	}
	ss.mu.Lock()
	members := make([]*snapMember, 0, len(ss.mu.members))
	for _, inSync := range []bool{true, false} {
		for _, m := range ss.mu.members {
			if (m.api.State == api.MemberInSync || m.api.State == "") == inSync {
				members = append(members, m)
			}
		}
	}
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

// setMembers gives ss the members of set (of an EC set, those that hold
// a shard: not a drain's successors); a member whose chunk, address or
// export name changed gets a new connection at its next read.
func (ss *snapSet) setMembers(set api.Set) {
	ss.mu.Lock()
	old := ss.mu.members
	byChunk := make(map[string]*snapMember, len(old))
	for _, m := range old {
		byChunk[m.api.ChunkID] = m
	}
	members := make([]*snapMember, 0, len(set.Members))
	for _, am := range set.Members {
		if ss.ec != nil && am.Replaces != "" {
			continue
		}
		if m, ok := byChunk[am.ChunkID]; ok && m.api.Addr == am.Addr && m.api.Export == am.Export {
			members = append(members, m)
			delete(byChunk, am.ChunkID)
			continue
		}
		members = append(members, &snapMember{api: am})
	}
	ss.mu.members = members
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
// size and layout (member export names and states may differ).
func sameSnapLayout(a, b api.SnapshotTarget) bool {
	return a.Volume == b.Volume && a.Snapshot == b.Snapshot && a.SizeBytes == b.SizeBytes && a.Layout == b.Layout &&
		a.StripeUnit == b.StripeUnit && a.ChunkBytes == b.ChunkBytes && len(a.Sets) == len(b.Sets)
}

// serveSnapshot adds snapshot target t.
func (s *Server) serveSnapshot(t api.SnapshotTarget) (*snapTarget, error) {
	layout, err := api.ParseLayout(t.Layout)
	if err != nil {
		return nil, err
	}
	if t.ChunkBytes <= 0 {
		return nil, fmt.Errorf("the assignment gives no chunk size (%d)", t.ChunkBytes)
	}
	st := &snapTarget{t: t}
	devs := make([]raid.Device, 0, len(t.Sets))
	for _, set := range t.Sets {
		ss := &snapSet{s: s, size: t.ChunkBytes, log: s.log.With("snapshot", t.Snapshot, "volume", t.Volume, "set", set.Index)}
		if layout.Kind == api.LayoutEC {
			mdevs := make([]raid.Device, layout.Width())
			for i := range mdevs {
				mdevs[i] = snapMemberDev{ss: ss, i: i, size: t.ChunkBytes}
			}
			if ss.ec, err = raid.NewECReader(mdevs, layout.K, layout.M, t.StripeUnit); err != nil {
				return nil, err
			}
			ss.size = ss.ec.Size()
		}
		ss.setMembers(set)
		if ss.ec != nil && len(ss.mu.members) != layout.Width() {
			return nil, fmt.Errorf("set %d has %d members holding shards, %s needs %d", set.Index, len(ss.mu.members), t.Layout, layout.Width())
		}
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
