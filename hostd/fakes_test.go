package hostd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/chunktest"
)

// The fakes of hostd's unit tests: chunks held in memory behind a fake
// control API and dialer, and a metaserver that records reports. Every
// call that matters for ordering lands in one event list.

const (
	testChunkSize = 8 << 20
	testRegion    = 1 << 20
)

var errDown = chunktest.ErrDown

// fakeChunk is one member chunk on a fake chunkserver: its bytes and LOG
// (pinned by Pin, unpinned by Unpin) are a chunktest.Chunk.
type fakeChunk struct {
	id   string
	data *chunktest.Chunk
	// guarded by fakeCluster.mu
	minEpoch int64
	conns    []*fakeConn
	// pinGens are the PinGen of every pin and unpin, in the order called.
	pinGens []uint64
	// snaps are the chunk's bytes when each snapshot was taken.
	snaps map[string][]byte
}

// fakeCluster is the fake chunkservers of a test, reached by control and
// NBD addresses "ctl-<chunk>" and "nbd-<chunk>".
type fakeCluster struct {
	t  *testing.T
	mu sync.Mutex
	// guarded by mu
	chunks map[string]*fakeChunk
	events []string
	pinErr error
	meta   *fakeMeta
	// registrations counts RegisterHost calls: the incarnation issued.
	registrations int64
	// pinManyCalls counts PinMany calls by control address.
	pinManyCalls map[string]int
	// snapshotCalls counts Snapshot calls by control address.
	snapshotCalls map[string]int
}

func newFakeCluster(t *testing.T, n int) *fakeCluster {
	c := &fakeCluster{t: t, chunks: map[string]*fakeChunk{}}
	for i := range n {
		id := fmt.Sprintf("c%d", i)
		c.addChunk(id, testChunkSize)
	}
	return c
}

// addChunk adds a chunk of size bytes, zero, on a chunkserver of its own.
func (c *fakeCluster) addChunk(id string, size int64) {
	data, err := chunktest.New(chunktest.Config{Size: size, LogRegion: testRegion, Period: time.Hour})
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks[id] = &fakeChunk{id: id, data: data}
}

func (c *fakeCluster) event(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.eventLocked(format, args...)
}

func (c *fakeCluster) eventLocked(format string, args ...any) {
	c.events = append(c.events, fmt.Sprintf(format, args...))
}

func (c *fakeCluster) eventList() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.events...)
}

func (c *fakeCluster) chunk(id string) *fakeChunk {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.chunks[id]
}

// setDown takes chunk id's chunkserver away (every connection fails, no
// dial or control call succeeds) or brings it back.
func (c *fakeCluster) setDown(id string, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks[id].data.SetReachable(!down)
	if !down {
		c.chunks[id].data.PowerOn()
	}
}

// powerLoss cuts chunk id's chunkserver's power: the writes it had not
// synced are gone; setDown(id, false) restarts it.
func (c *fakeCluster) powerLoss(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks[id].data.PowerLoss()
}

// setLog marks regions in chunk id's LOG, as writes the test did not make
// would have.
func (c *fakeCluster) setLog(id string, regions ...int) {
	c.chunk(id).data.Local(func(l *bitmap.Log) error {
		for _, r := range regions {
			l.Mark(int64(r)*testRegion, testRegion)
		}
		return nil
	})
}

// pinnedChunks are the chunks whose LOG is pinned.
func (c *fakeCluster) pinnedChunks() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for i := range len(c.chunks) {
		ch := c.chunks[fmt.Sprintf("c%d", i)]
		if ch.pinned() {
			out = append(out, ch.id)
		}
	}
	return out
}

func (ch *fakeChunk) pinned() (p bool) {
	ch.data.Local(func(l *bitmap.Log) error {
		p = l.Pinned()
		return nil
	})
	return p
}

// openConns counts the connections of the test not closed yet.
func (c *fakeCluster) openConns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ch := range c.chunks {
		for _, cn := range ch.conns {
			if !cn.closed.Load() {
				n++
			}
		}
	}
	return n
}

func (c *fakeCluster) control(addr string) chunkControl { return fakeControl{c: c, addr: addr} }

func (c *fakeCluster) dial(ctx context.Context, cfg nbd.ClientConfig) (memberConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := c.chunks[strings.TrimPrefix(cfg.Addr, "nbd-")]
	if ch == nil || !ch.data.Up() {
		return nil, errDown
	}
	if _, snap, ok := strings.Cut(cfg.Export, ";snap="); ok {
		data, ok := ch.snaps[snap]
		if !ok {
			return nil, fmt.Errorf("fake: chunk %s has no snapshot %q", ch.id, snap)
		}
		c.eventLocked("dial %s snapshot %s", ch.id, snap)
		return fakeSnapConn{data: data}, nil
	}
	cn := &fakeConn{Conn: ch.data.Conn(), chunk: ch.id}
	ch.conns = append(ch.conns, cn)
	c.eventLocked("dial %s", ch.id)
	return cn, nil
}

// fakeSnapConn reads a fake chunk's snapshot: every byte allocated.
type fakeSnapConn struct{ data []byte }

func (c fakeSnapConn) Size() int64 { return int64(len(c.data)) }
func (c fakeSnapConn) ReadAt(_ context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > int64(len(c.data)) {
		return raid.ErrOutOfRange
	}
	copy(p, c.data[off:])
	return nil
}
func (c fakeSnapConn) WriteAt(context.Context, []byte, int64, bool) error {
	return errors.New("fake: a snapshot is read-only")
}
func (c fakeSnapConn) Flush(context.Context) error { return nil }
func (c fakeSnapConn) Trim(context.Context, int64, int64) error {
	return errors.New("fake: a snapshot is read-only")
}
func (c fakeSnapConn) BlockStatus(_ context.Context, _ string, off, length int64) ([]nbd.Extent, error) {
	return []nbd.Extent{{Length: min(length, int64(len(c.data))-off)}}, nil
}
func (c fakeSnapConn) Close() error { return nil }

// fakeControl is the control API of the fake chunkservers; addr is the
// control address it was made for.
type fakeControl struct {
	c    *fakeCluster
	addr string
}

func (f fakeControl) call(op, chunk string, do func(ch *fakeChunk) error) (*api.ControlResponse, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	ch := f.c.chunks[chunk]
	if ch == nil {
		return nil, &api.Error{Status: 404, Code: api.CodeNotFound, Message: "no chunk " + chunk}
	}
	if !ch.data.Up() {
		return nil, errDown
	}
	if err := do(ch); err != nil {
		return nil, err
	}
	f.c.eventLocked("%s %s", op, chunk)
	return &api.ControlResponse{MinEpoch: ch.minEpoch, Pinned: ch.pinned()}, nil
}

func (f fakeControl) Fence(_ context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error) {
	return f.call("fence", chunk, func(ch *fakeChunk) error {
		ch.minEpoch = max(ch.minEpoch, req.Epoch)
		return nil
	})
}

func (f fakeControl) Pin(_ context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error) {
	return f.call("pin", chunk, func(ch *fakeChunk) error {
		ch.pinGens = append(ch.pinGens, req.PinGen)
		if f.c.pinErr != nil {
			return f.c.pinErr
		}
		return ch.data.Control(func(l *bitmap.Log) error { l.Pin(); return nil })
	})
}

// Snapshot copies each chunk's bytes as they are into its snapshots.
func (f fakeControl) Snapshot(_ context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error) {
	for _, p := range req.Chunks {
		if _, err := f.call("snapshot "+req.Name, p.Chunk, func(ch *fakeChunk) error {
			if ch.snaps == nil {
				ch.snaps = map[string][]byte{}
			}
			ch.snaps[req.Name] = ch.data.Bytes()
			return nil
		}); err != nil {
			return nil, err
		}
	}
	f.c.mu.Lock()
	if f.c.snapshotCalls == nil {
		f.c.snapshotCalls = map[string]int{}
	}
	f.c.snapshotCalls[f.addr]++
	f.c.mu.Unlock()
	return &api.SnapshotResponse{}, nil
}

// DeleteSnapshot forgets each chunk's snapshot.
func (f fakeControl) DeleteSnapshot(_ context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error) {
	for _, p := range req.Chunks {
		if _, err := f.call("delete snapshot "+req.Name, p.Chunk, func(ch *fakeChunk) error {
			delete(ch.snaps, req.Name)
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return &api.SnapshotResponse{}, nil
}

// Snapshots lists a chunk's snapshots.
func (f fakeControl) Snapshots(_ context.Context, chunk string, _ api.ControlRequest) (*api.ChunkSnapshots, error) {
	out := &api.ChunkSnapshots{Snapshots: []api.ChunkSnapshot{}}
	_, err := f.call("list snapshots", chunk, func(ch *fakeChunk) error {
		for name := range ch.snaps {
			out.Snapshots = append(out.Snapshots, api.ChunkSnapshot{Name: name})
		}
		return nil
	})
	return out, err
}

// SnapshotMaps lists a chunk's snapshots without maps: the fake keeps
// none, so a rebuild compares every allocated block.
func (f fakeControl) SnapshotMaps(ctx context.Context, chunk string, req api.ControlRequest) (*api.ChunkSnapshots, error) {
	return f.Snapshots(ctx, chunk, req)
}

// PinMany pins each chunk as Pin does; the first failure fails the call.
func (f fakeControl) PinMany(ctx context.Context, req api.PinRequest) (*api.PinResponse, error) {
	f.c.mu.Lock()
	if f.c.pinManyCalls == nil {
		f.c.pinManyCalls = map[string]int{}
	}
	f.c.pinManyCalls[f.addr]++
	f.c.mu.Unlock()
	out := &api.PinResponse{}
	for _, p := range req.Pins {
		r, err := f.Pin(ctx, p.Chunk, p.ControlRequest)
		if err != nil {
			return nil, err
		}
		out.Chunks = append(out.Chunks, *r)
	}
	return out, nil
}

func (f fakeControl) Unpin(_ context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error) {
	return f.call("unpin", chunk, func(ch *fakeChunk) error {
		ch.pinGens = append(ch.pinGens, req.PinGen)
		return ch.data.Control(func(l *bitmap.Log) error { l.Unpin(); return nil })
	})
}

func (f fakeControl) Log(_ context.Context, chunk string, _ api.ControlRequest) (*api.LogBitmap, error) {
	var lb api.LogBitmap
	_, err := f.call("log", chunk, func(ch *fakeChunk) error {
		return ch.data.Control(func(l *bitmap.Log) error {
			lb = api.LogBitmap{RegionSize: l.RegionSize(), Size: l.Size(), Bits: l.Snapshot()}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return &lb, nil
}

func (f fakeControl) WriteIntent(_ context.Context, chunk string, req api.IntentRequest) (*api.ControlResponse, error) {
	return f.call("write-intent", chunk, func(*fakeChunk) error { return nil })
}

func (f fakeControl) ReadIntent(_ context.Context, chunk string, _ api.ControlRequest) (*api.LogBitmap, error) {
	if _, err := f.call("read-intent", chunk, func(*fakeChunk) error { return nil }); err != nil {
		return nil, err
	}
	return &api.LogBitmap{}, nil
}

// fakeConn is one NBD connection to a fake chunk.
type fakeConn struct {
	*chunktest.Conn
	chunk  string
	closed atomic.Bool
}

func (c *fakeConn) check() error {
	if c.closed.Load() {
		return errors.New("fake: use of a closed connection")
	}
	return nil
}

func (c *fakeConn) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Conn.ReadAt(ctx, p, off)
}

func (c *fakeConn) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Conn.WriteAt(ctx, p, off, fua)
}

func (c *fakeConn) Flush(ctx context.Context) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Conn.Flush(ctx)
}

func (c *fakeConn) Trim(ctx context.Context, off, length int64) error {
	if err := c.check(); err != nil {
		return err
	}
	return c.Conn.Trim(ctx, off, length)
}

// BlockStatus answers base:allocation from the chunk's bytes: a 64 KiB
// block of zeroes is a hole.
func (c *fakeConn) BlockStatus(ctx context.Context, metaContext string, off, length int64) ([]nbd.Extent, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if metaContext != nbdAllocation {
		return nil, fmt.Errorf("fake: no meta context %q", metaContext)
	}
	p := make([]byte, length)
	if err := c.Conn.ReadAt(ctx, p, off); err != nil {
		return nil, err
	}
	const block = 64 << 10
	var out []nbd.Extent
	for lo := int64(0); lo < length; lo += block {
		n := min(block, length-lo)
		var flags uint32
		if bytes.Count(p[lo:lo+n], []byte{0}) == int(n) {
			flags = nbd.StateHole | nbd.StateZero
		}
		if k := len(out); k > 0 && out[k-1].Flags == flags {
			out[k-1].Length += n
			continue
		}
		out = append(out, nbd.Extent{Length: n, Flags: flags})
	}
	return out, nil
}

func (c *fakeConn) Close() error {
	c.closed.Store(true)
	return nil
}

// fakeMeta is a metaserver that records the reports it is sent.
type fakeMeta struct {
	c       *fakeCluster
	cluster api.Cluster
	// target, when set, tells whether the volume's iSCSI target exists; each
	// report records it.
	target func() bool

	mu sync.Mutex
	// guarded by mu
	reports []metaReport
	fail    func(api.VolumeReport) error
	// volumes, when set, answers HostVolumes without waiting (after 0).
	volumes func() []api.Volume
	// snapReports are the snapshot reports, in order.
	snapReports []api.SnapshotReport
}

// metaReport is one volume report as the fake metaserver received it.
type metaReport struct {
	api.VolumeReport
	serving bool // the volume's target existed when the report arrived
}

func (m *fakeMeta) RegisterHost(context.Context, api.RegisterHostRequest) (*api.RegisterHostResponse, error) {
	m.c.mu.Lock()
	m.c.registrations++
	inc := m.c.registrations
	m.c.mu.Unlock()
	return &api.RegisterHostResponse{ID: 1, Incarnation: inc, IOTimeoutMS: m.cluster.IOTimeoutMS, LogPeriodMS: m.cluster.LogPeriodMS}, nil
}

func (m *fakeMeta) Cluster(context.Context) (*api.Cluster, error) {
	cl := m.cluster
	return &cl, nil
}

func (m *fakeMeta) SetToken(string) {}

func (m *fakeMeta) HostHeartbeat(context.Context, int64) error { return nil }

func (m *fakeMeta) ReportSnapshot(_ context.Context, _ int64, r api.SnapshotReport) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.snapReports = append(m.snapReports, r)
	return nil
}

func (m *fakeMeta) HostVolumes(ctx context.Context, _ int64, after int64, _ time.Duration) (*api.HostVolumes, error) {
	m.mu.Lock()
	vols := m.volumes
	m.mu.Unlock()
	if vols != nil && after == 0 {
		return &api.HostVolumes{Volumes: vols()}, nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// HostSnapshotExports answers the volume the fake serves with each
// member's export name marked as snapshot snap's.
func (m *fakeMeta) HostSnapshotExports(_ context.Context, _ int64, volume, snap string) (*api.Volume, error) {
	m.mu.Lock()
	vols := m.volumes
	m.mu.Unlock()
	if vols == nil {
		return nil, errors.New("fake: no volumes")
	}
	for _, v := range vols() {
		if v.Name != volume {
			continue
		}
		v.Sets = slices.Clone(v.Sets)
		for i := range v.Sets {
			v.Sets[i].Members = slices.Clone(v.Sets[i].Members)
			for j := range v.Sets[i].Members {
				v.Sets[i].Members[j].Export += ";snap=" + snap
			}
		}
		return &v, nil
	}
	return nil, fmt.Errorf("fake: no volume %s", volume)
}

func (m *fakeMeta) HostReport(_ context.Context, _ int64, r api.HostReport) error {
	serving := m.target != nil && m.target()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, vr := range r.Volumes {
		if m.fail != nil {
			if err := m.fail(vr); err != nil {
				return err
			}
		}
	}
	for _, vr := range r.Volumes {
		m.reports = append(m.reports, metaReport{VolumeReport: vr, serving: serving})
		m.c.event("report %s", reportText(vr))
	}
	return nil
}

func (m *fakeMeta) setFail(f func(api.VolumeReport) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fail = f
}

func (m *fakeMeta) reportList() []metaReport {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]metaReport(nil), m.reports...)
}

// reportText is a report in short: "clean" or the member states by chunk.
func reportText(vr api.VolumeReport) string {
	var b strings.Builder
	if vr.CleanDetach {
		b.WriteString("clean ")
	}
	for _, s := range vr.Sets {
		for _, m := range s.Members {
			fmt.Fprintf(&b, "%s=%s ", m.ChunkID, m.State)
		}
	}
	return strings.TrimSpace(b.String())
}

// testVolume is a one-set mirror:n volume of chunks c0..c(n-1), attached
// to this host at epoch 2 after an unclean stop (CleanDetach false).
func testVolume(n int) api.Volume {
	v := api.Volume{Name: "vol", SizeBytes: testChunkSize, Layout: fmt.Sprintf("mirror:%d", n), Bitmap: api.BitmapRemb,
		Host: "h1", Epoch: 2, IQN: "iqn.2025-01.test.chunkraid:vol"}
	set := api.Set{Index: 0}
	for i := range n {
		id := fmt.Sprintf("c%d", i)
		name := api.ExportName{Chunk: id, Host: "h1", Epoch: 2, Token: "t"}
		set.Members = append(set.Members, api.Member{ChunkID: id, Chunkserver: "cs" + id, Addr: "nbd-" + id,
			ControlAddr: "ctl-" + id, Export: name.String(), State: api.MemberInSync})
	}
	v.Sets = []api.Set{set}
	return v
}

// attachClean attaches testVolume(2), detached cleanly by its previous
// holder (nothing to recover), and returns its attachment.
func attachClean(t *testing.T, s *Server) *attachment {
	t.Helper()
	v := testVolume(2)
	v.CleanDetach = true
	if err := s.attach(t.Context(), v); err != nil {
		t.Fatal(err)
	}
	return s.attached("vol")
}

// newTestServer is a hostd over the fake cluster, registered as host 1
// with t_io of 1 s, not yet serving iSCSI.
func newTestServer(t *testing.T, c *fakeCluster) *Server {
	t.Helper()
	meta := &fakeMeta{c: c, cluster: api.Cluster{IOTimeoutMS: 1000, OfflineAfterMS: 10000, OfflineAfterSeconds: 10, LogPeriodMS: 60000}}
	c.meta = meta
	s, err := New(Config{
		Name: "h1", Meta: meta, Control: c.control, Dial: c.dial,
		IOTimeout: time.Second, WIBDir: t.TempDir(), ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.register(t.Context(), "127.0.0.1:3260", nil); err != nil {
		t.Fatal(err)
	}
	meta.target = func() bool { return len(s.target.Targets()) > 0 }
	t.Cleanup(s.detachAll)
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (s *Server) attached(name string) *attachment {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.attached[name]
}

// waitFor polls cond until it holds or 10 s passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func states(a *attachment) []raid.MemberState { return a.setList()[0].mirror.States() }

func allInSync(a *attachment) bool {
	st := a.setList()[0]
	return !st.mirror.Degraded() && st.wib.Count() == 0
}

// fill is n bytes of a pattern of seed.
func fill(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i%251)
	}
	return p
}

// seed writes p at off of chunk id behind the host's back.
func seed(t *testing.T, c *fakeCluster, id string, off int64, p []byte) {
	t.Helper()
	if err := c.chunk(id).data.Conn().WriteAt(t.Context(), p, off, false); err != nil {
		t.Fatal(err)
	}
}
