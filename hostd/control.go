package hostd

import (
	"context"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// chunkControl is what hostd needs from a chunkserver's control API
// (api/remb.go): fencing, LOG pinning, reading LOG bitmaps, and the intent
// bitmap of bitmap mode internal.
type chunkControl interface {
	Fence(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error)
	Pin(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error)
	Unpin(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error)
	Log(ctx context.Context, chunk string, req api.ControlRequest) (*api.LogBitmap, error)
	WriteIntent(ctx context.Context, chunk string, req api.IntentRequest) (*api.ControlResponse, error)
	ReadIntent(ctx context.Context, chunk string, req api.ControlRequest) (*api.LogBitmap, error)
}
