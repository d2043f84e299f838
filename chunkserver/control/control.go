// Package control is the client of a chunkserver's control API: the calls a
// host makes to fence a chunk at a new volume epoch, to pin and unpin its
// LOG bitmap, and to read that bitmap when it rebuilds its write-intent
// bitmap (DESIGN §2, rules 2 and 3).
//
// The API is HTTPS (TLS 1.3) with JSON bodies: the chunkserver's certificate
// is signed by the cluster CA at each registration, for the control address
// it registers (pki.Chunkserver), and hosts verify it with HTTPClient. The types are those of metaserver/api
// (ControlRequest, ControlResponse, LogBitmap):
//
//	POST /v1/chunks/{chunk}/fence   body ControlRequest → ControlResponse
//	POST /v1/chunks/{chunk}/pin     body ControlRequest → ControlResponse
//	POST /v1/chunks/{chunk}/unpin   body ControlRequest → ControlResponse
//	POST /v1/pins                   body PinRequest → PinResponse (many chunks, one call)
//	GET  /v1/chunks/{chunk}/log?host=H&epoch=N&token=T  → LogBitmap
//
// Every call carries the credentials of an export: the host, the volume
// epoch and the token api.ExportToken(secret, chunk, host, epoch). Errors are
// the envelope api.Error {code, message} with these statuses:
//
//	400 invalid_argument  malformed body or query
//	401 unauthenticated   token missing or wrong for (chunk, host, epoch)
//	403 fenced            epoch below the chunk's minimum epoch
//	404 not_found         the chunkserver holds no such chunk (or no such route)
//	405 method_not_allowed  the route exists for another method
//	500 internal          the chunk failed (e.g. its sidecar could not be persisted)
//	503 unavailable       the chunkserver is shutting down
//
// Fence may raise the minimum epoch (an epoch at or above it is accepted);
// the other calls need epoch ≥ minimum epoch.
package control

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Error codes of the control API beyond those of metaserver/api.
const (
	// CodeUnauthenticated (401): the token does not match (chunk, host, epoch).
	CodeUnauthenticated = "unauthenticated"
	// CodeFenced (403): the epoch is below the chunk's minimum epoch.
	CodeFenced = "fenced"
	// CodeMethodNotAllowed (405): the route exists for another method.
	CodeMethodNotAllowed = "method_not_allowed"
)

// HTTPStatus returns the HTTP status that carries a control API error code.
func HTTPStatus(code string) int {
	switch code {
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	case CodeFenced:
		return http.StatusForbidden
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	default:
		return api.HTTPStatus(code)
	}
}

// IsFenced reports whether err is a control API error with CodeFenced.
func IsFenced(err error) bool { return api.ErrorCode(err) == CodeFenced }

// IsUnauthenticated reports whether err is a control API error with CodeUnauthenticated.
func IsUnauthenticated(err error) bool { return api.ErrorCode(err) == CodeUnauthenticated }

// Route patterns of the control API (chi syntax), shared with the server.
const (
	RouteFence  = "/v1/chunks/{chunk}/fence"
	RoutePin    = "/v1/chunks/{chunk}/pin"
	RouteUnpin  = "/v1/chunks/{chunk}/unpin"
	RouteLog    = "/v1/chunks/{chunk}/log"
	RouteIntent = "/v1/chunks/{chunk}/intent"
	RoutePins   = "/v1/pins"
	// RouteSnapshots takes snapshots, RouteSnapshotsDelete deletes them
	// (api.SnapshotRequest); RouteChunkSnapshots lists a chunk's.
	RouteSnapshots       = "/v1/snapshots"
	RouteSnapshotsDelete = "/v1/snapshots/delete"
	// RouteSnapshotsRollback rolls chunks back to a snapshot.
	RouteSnapshotsRollback = "/v1/snapshots/rollback"
	// RouteSnapshotsFlatten makes clones of a snapshot (Name) ordinary
	// chunks, copying what they share with it.
	RouteSnapshotsFlatten = "/v1/snapshots/flatten"
	RouteChunkSnapshots   = "/v1/chunks/{chunk}/snapshots"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// maxResponse bounds the size of a response body the client reads (a LOG
// bitmap of a 10 GiB chunk at 64 MiB regions is 20 bytes; JSON errors are small).
const maxResponse = 16 << 20

// Client calls one chunkserver's control API. It is safe for concurrent use.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient returns a client of the control API at addr, either "host:port"
// (as advertised in api.RegisterChunkserverRequest.ControlAddr: the API is
// served over TLS) or a URL. hc is HTTPClient's client for the cluster's CA;
// nil is a client that trusts only the system's roots.
func NewClient(addr string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: transport(nil)}
	}
	base := strings.TrimRight(addr, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "https://" + base
	}
	return &Client{base: base, hc: hc}
}

// HTTPClient is a client of every chunkserver's control API that trusts
// only chunkserver certificates of the cluster CA caPEM (pki.ClientConfig).
// Share one among the Clients of a process: it keeps their connections.
func HTTPClient(caPEM []byte) (*http.Client, error) {
	tc, err := pki.ClientConfig(caPEM, pki.Chunkserver)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: transport(tc)}, nil
}

func transport(tc *tls.Config) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
}

// Fence raises chunk's minimum epoch to req.Epoch, closes every NBD
// connection of the chunk opened with an older epoch and returns once no
// request of a closed connection is in flight any more. Fencing at the
// current minimum epoch drains connections that already dropped.
func (c *Client) Fence(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error) {
	var out api.ControlResponse
	if err := c.do(ctx, http.MethodPost, chunkPath(chunk, "fence"), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Pin stops chunk's LOG bitmap from forgetting until Unpin.
func (c *Client) Pin(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error) {
	var out api.ControlResponse
	if err := c.do(ctx, http.MethodPost, chunkPath(chunk, "pin"), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Unpin lets chunk's LOG bitmap forget again at its next rotations.
func (c *Client) Unpin(ctx context.Context, chunk string, req api.ControlRequest) (*api.ControlResponse, error) {
	var out api.ControlResponse
	if err := c.do(ctx, http.MethodPost, chunkPath(chunk, "unpin"), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PinMany pins the LOG bitmaps of several chunks of this chunkserver in one
// call; it fails if any pin fails.
func (c *Client) PinMany(ctx context.Context, req api.PinRequest) (*api.PinResponse, error) {
	var out api.PinResponse
	if err := c.do(ctx, http.MethodPost, RoutePins, nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Snapshot takes snapshot req.Name of every chunk of req on this
// chunkserver.
func (c *Client) Snapshot(ctx context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error) {
	var out api.SnapshotResponse
	if err := c.do(ctx, http.MethodPost, RouteSnapshots, nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteSnapshot deletes snapshot req.Name of every chunk of req.
func (c *Client) DeleteSnapshot(ctx context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error) {
	var out api.SnapshotResponse
	if err := c.do(ctx, http.MethodPost, RouteSnapshotsDelete, nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RollbackSnapshot makes every chunk of req hold snapshot req.Name again.
func (c *Client) RollbackSnapshot(ctx context.Context, req api.SnapshotRequest) (*api.SnapshotResponse, error) {
	var out api.SnapshotResponse
	if err := c.do(ctx, http.MethodPost, RouteSnapshotsRollback, nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Snapshots lists chunk's snapshots.
func (c *Client) Snapshots(ctx context.Context, chunk string, req api.ControlRequest) (*api.ChunkSnapshots, error) {
	q := url.Values{
		"host":  {req.Host},
		"epoch": {strconv.FormatInt(req.Epoch, 10)},
		"token": {req.Token},
	}
	var out api.ChunkSnapshots
	if err := c.do(ctx, http.MethodGet, chunkPath(chunk, "snapshots"), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SnapshotMaps lists chunk's snapshots with, for each, the map of the
// blocks the chunk changed after it (api.ChunkSnapshot.Changed).
func (c *Client) SnapshotMaps(ctx context.Context, chunk string, req api.ControlRequest) (*api.ChunkSnapshots, error) {
	q := url.Values{
		"host":    {req.Host},
		"epoch":   {strconv.FormatInt(req.Epoch, 10)},
		"token":   {req.Token},
		"changed": {"1"},
	}
	var out api.ChunkSnapshots
	if err := c.do(ctx, http.MethodGet, chunkPath(chunk, "snapshots"), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Log returns chunk's LOG bitmap (current|history).
func (c *Client) Log(ctx context.Context, chunk string, req api.ControlRequest) (*api.LogBitmap, error) {
	q := url.Values{
		"host":  {req.Host},
		"epoch": {strconv.FormatInt(req.Epoch, 10)},
		"token": {req.Token},
	}
	var out api.LogBitmap
	if err := c.do(ctx, http.MethodGet, chunkPath(chunk, "log"), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// WriteIntent stores the host's intent bitmap on the chunk durably (bitmap
// mode internal).
func (c *Client) WriteIntent(ctx context.Context, chunk string, req api.IntentRequest) (*api.ControlResponse, error) {
	var out api.ControlResponse
	if err := c.do(ctx, http.MethodPut, chunkPath(chunk, "intent"), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ReadIntent returns the intent bitmap stored on the chunk.
func (c *Client) ReadIntent(ctx context.Context, chunk string, req api.ControlRequest) (*api.LogBitmap, error) {
	q := url.Values{
		"host":  {req.Host},
		"epoch": {strconv.FormatInt(req.Epoch, 10)},
		"token": {req.Token},
	}
	var out api.LogBitmap
	if err := c.do(ctx, http.MethodGet, chunkPath(chunk, "intent"), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func chunkPath(chunk, op string) string {
	return "/v1/chunks/" + url.PathEscape(chunk) + "/" + op
}

// do sends one request with a JSON body (in != nil) and decodes the JSON
// answer into out. A non-2xx answer becomes an *api.Error (with Status set),
// or an *api.StatusError when the body is not the error envelope.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	return api.DoJSON(ctx, c.hc, c.base+path, method, q, in, out, maxResponse)
}
