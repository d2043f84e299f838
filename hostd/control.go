package hostd

import (
	"context"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// chunkControl is what hostd needs from a chunkserver's control API
// (api/remb.go): fencing, LOG pinning, reading LOG bitmaps, and the intent
// bitmap of bitmap mode internal.
type chunkControl interface {
	Fence(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error)
	Unpin(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error)
	PinMany(ctx context.Context, req api.PinRequest) (*api.PinResponse, error)
	Log(ctx context.Context, chunk string, req api.ControlRequest) (*api.LogBitmap, error)
	WriteIntent(ctx context.Context, chunk string, req api.IntentRequest) (*api.ControlResponse, error)
	ReadIntent(ctx context.Context, chunk string, req api.ControlRequest) (*api.LogBitmap, error)
	Snapshot(ctx context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error)
	DeleteSnapshot(ctx context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error)
	Snapshots(ctx context.Context, chunk string, req api.ControlRequest) (*api.ChunkSnapshots, error)
	SnapshotMaps(ctx context.Context, chunk string, req api.ControlRequest) (*api.ChunkSnapshots, error)
}

// memberConn is a connection to a member chunk: the device the set uses,
// the allocation status GET LBA STATUS asks for, and Close. nbdMember
// satisfies it.
type memberConn interface {
	raid.Device
	BlockStatus(ctx context.Context, metaContext string, off, length int64) ([]nbd.Extent, error)
	Close() error
}

// nbdMember is a member connection over the NBD client. A set sends its
// writes to such members from one goroutine (raid.Starter).
type nbdMember struct{ *nbd.Client }

func (m nbdMember) StartWrite(p []byte, off int64, fua bool) raid.Pending {
	if cl := m.Client.StartWrite(p, off, fua); cl != nil {
		return cl
	}
	return nil // a nil *nbd.Call would make a Pending that is not nil
}

var _ raid.Starter = nbdMember{}

// metaClient is what hostd needs from the metaserver (api.Client).
type metaClient interface {
	RegisterHost(ctx context.Context, req api.RegisterHostRequest) (*api.RegisterHostResponse, error)
	HostHeartbeat(ctx context.Context, id int64) error
	HostVolumes(ctx context.Context, id int64, after int64, wait time.Duration) (*api.HostVolumes, error)
	HostReport(ctx context.Context, id int64, r api.HostReport) error
	ReportSnapshot(ctx context.Context, id int64, r api.SnapshotReport) error
	HostSnapshotExports(ctx context.Context, id int64, volume, snap string) (*api.Volume, error)
	Cluster(ctx context.Context) (*api.Cluster, error)
	// SetToken sets the bearer token of later calls: the join token, then
	// the host's credential.
	SetToken(token string)
}
