package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Client calls the metaserver's REST API. It is safe for concurrent use.
type Client struct {
	// bases are the metaservers' URLs, each without a trailing slash: a
	// call goes to the one that answered last and fails over to the
	// next (call).
	bases []string
	cur   *atomic.Int32 // index in bases of the one that answered last
	hc    *http.Client
	token *atomic.Pointer[string] // the bearer token, if any; read by hc's transport
}

// SplitURLs splits a comma-separated list of metaserver URLs, as the
// daemons' --metaserver and CHUNKRAID_METASERVER take them.
func SplitURLs(list string) []string {
	var out []string
	for _, u := range strings.Split(list, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			out = append(out, u)
		}
	}
	return out
}

const (
	// RequestTimeout bounds every call but the long polls.
	RequestTimeout = 30 * time.Second
	// longPollGrace is added to a long poll's wait for its request timeout.
	longPollGrace = 15 * time.Second
	// maxResponse bounds the size of a response body the client reads.
	maxResponse = 64 << 20
)

// NewClient returns a client of the metaserver at baseURL (e.g.
// "http://127.0.0.1:8080"), or of the metaservers of a comma-separated
// list of URLs, between which it fails over. With hc nil it uses a client whose connections
// time out on dial but not on read, so that long polls can run; every call
// carries its own deadline (RequestTimeout, or the wait plus a margin for
// long polls) whichever hc is used.
func NewClient(baseURL string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: defaultTransport(nil)}
	}
	return newClient(SplitURLs(baseURL), hc, "")
}

// NewTLSClient is NewClient's default client with the TLS configuration
// tc (say, one that trusts only the cluster CA) for an https:// URL.
func NewTLSClient(baseURL string, tc *tls.Config) *Client {
	return newClient(SplitURLs(baseURL), &http.Client{Transport: defaultTransport(tc)}, "")
}

// NewDaemonClient is the metaserver client of a daemon: an https:// URL is
// verified with tc (the cluster CA's pki.ClientConfig), which it then
// requires; an http:// URL is allowed with a warning on log, since the
// daemon's credential then crosses the network in clear.
func NewDaemonClient(baseURL string, tc *tls.Config, log *slog.Logger) (*Client, error) {
	urls := SplitURLs(baseURL)
	if len(urls) == 0 {
		return nil, fmt.Errorf("no metaserver URL in %q: give one or more, comma-separated", baseURL)
	}
	plain := false
	for _, u := range urls {
		switch {
		case strings.HasPrefix(u, "https://"):
			if tc == nil {
				return nil, fmt.Errorf("the metaserver %s is verified against the cluster CA: give its certificate with --ca-file or CHUNKRAID_CA (the metaserver writes it with its own --ca-file)", u)
			}
		case strings.HasPrefix(u, "http://"):
			log.Warn("talking to the metaserver over plain HTTP: this daemon's credential crosses the network in clear", "metaserver", u)
			plain = true
		default:
			return nil, fmt.Errorf("the metaserver URL %q must start with https:// (or http:// for a metaserver run with --insecure-http)", u)
		}
	}
	if plain && tc == nil {
		return NewClient(baseURL, nil), nil
	}
	return NewTLSClient(baseURL, tc), nil
}

// defaultTransport dials with a timeout and never times out a read, so
// that long polls can run; every call carries its own deadline.
func defaultTransport(tc *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tc,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// newClient wraps hc's transport so that every request carries the
// client's bearer token when it has one.
func newClient(bases []string, hc *http.Client, token string) *Client {
	c := &Client{bases: bases, cur: new(atomic.Int32), token: new(atomic.Pointer[string])}
	if token != "" {
		c.token.Store(&token)
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	wrapped := *hc
	wrapped.Transport = bearer{token: c.token, next: next}
	c.hc = &wrapped
	return c
}

// WithToken makes the client send token as its bearer token
// (Authorization: Bearer), as every operator route needs, and returns it.
func (c *Client) WithToken(token string) *Client {
	c.SetToken(token)
	return c
}

// SetToken makes the client send token from now on ("": none). A daemon
// swaps its join token for the credential its registration returns.
func (c *Client) SetToken(token string) {
	if token == "" {
		c.token.Store(nil)
		return
	}
	c.token.Store(&token)
}

// bearer adds the client's bearer token, if any, to every request.
type bearer struct {
	token *atomic.Pointer[string]
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if t := b.token.Load(); t != nil {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+*t)
	}
	return b.next.RoundTrip(r)
}

// ReadExports returns volume name with read-only export names of its
// members (Member.Export), bound to the volume's epoch: what volume verify
// opens the chunks with.
func (c *Client) ReadExports(ctx context.Context, name string) (*Volume, error) {
	return c.ReadSnapshotExports(ctx, name, "")
}

// ReadSnapshotExports is ReadExports of snapshot snap of the volume ("":
// the volume itself).
func (c *Client) ReadSnapshotExports(ctx context.Context, name, snap string) (*Volume, error) {
	var q url.Values
	if snap != "" {
		q = url.Values{"snapshot": {snap}}
	}
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/read-exports", q, nil, RequestTimeout)
}

// CreateToken creates an API token; its secret is in the answer (Secret)
// and nowhere else.
func (c *Client) CreateToken(ctx context.Context, req CreateTokenRequest) (*Token, error) {
	return call[Token](ctx, c, http.MethodPost, "/api/v1/tokens", nil, req, RequestTimeout)
}

// IssueCertificate has the cluster CA sign a certificate (admin).
func (c *Client) IssueCertificate(ctx context.Context, req IssueCertificateRequest) (*IssuedCertificate, error) {
	return call[IssuedCertificate](ctx, c, http.MethodPost, "/api/v1/certificates", nil, req, RequestTimeout)
}

// ListTokens lists the API tokens, without their secrets.
func (c *Client) ListTokens(ctx context.Context) ([]Token, error) {
	return callList[Token](ctx, c, http.MethodGet, "/api/v1/tokens", nil, nil, RequestTimeout)
}

// Whoami answers who the client's token belongs to (any operator token).
func (c *Client) Whoami(ctx context.Context) (*Principal, error) {
	return call[Principal](ctx, c, http.MethodGet, "/api/v1/whoami", nil, nil, RequestTimeout)
}

// As returns a client of the same metaserver, over the same connections,
// that sends token instead of c's.
func (c *Client) As(token string) *Client {
	hc := *c.hc
	hc.Transport = c.hc.Transport.(bearer).next
	n := newClient(c.bases, &hc, token)
	n.cur = c.cur
	return n
}

// ResizeVolume grows a volume to size bytes; its host picks the new size up.
func (c *Client) ResizeVolume(ctx context.Context, name string, size int64) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/resize", nil, ResizeVolumeRequest{SizeBytes: size}, RequestTimeout)
}

// VolumeStats returns the latest figures the volume's host reported.
func (c *Client) VolumeStats(ctx context.Context, name string) (*VolumeStatsReport, error) {
	return call[VolumeStatsReport](ctx, c, http.MethodGet, "/api/v1/volumes/"+url.PathEscape(name)+"/stats", nil, nil, RequestTimeout)
}

// Changes returns the cluster's change version, waiting up to wait for it
// to differ from after.
func (c *Client) Changes(ctx context.Context, after int64, wait time.Duration) (*Changes, error) {
	q := url.Values{}
	q.Set("after", itoa(after))
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	return call[Changes](ctx, c, http.MethodGet, "/api/v1/changes", q, nil, wait+longPollGrace)
}

// RevokeToken deletes an API token.
func (c *Client) RevokeToken(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(name), nil, nil, nil, RequestTimeout)
}

// Health returns nil when the metaserver answers /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil, RequestTimeout)
}

// Cluster returns the cluster settings.
func (c *Client) Cluster(ctx context.Context) (*Cluster, error) {
	return call[Cluster](ctx, c, http.MethodGet, "/api/v1/cluster", nil, nil, RequestTimeout)
}

// RegisterChunkserver registers a chunkserver, or updates it if its name is known.
func (c *Client) RegisterChunkserver(ctx context.Context, req RegisterChunkserverRequest) (*RegisterChunkserverResponse, error) {
	return call[RegisterChunkserverResponse](ctx, c, http.MethodPost, "/api/v1/chunkservers", nil, req, RequestTimeout)
}

// RemoveChunkserver forgets a chunkserver (by name or ID) that is offline
// and holds no set member.
func (c *Client) RemoveChunkserver(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/chunkservers/"+url.PathEscape(name), nil, nil, nil, RequestTimeout)
}

// DrainChunkserver starts moving every set member off a chunkserver.
func (c *Client) DrainChunkserver(ctx context.Context, name string) (*DrainResponse, error) {
	return call[DrainResponse](ctx, c, http.MethodPost, "/api/v1/chunkservers/"+url.PathEscape(name)+"/drain", nil, nil, RequestTimeout)
}

// ListChunkservers lists the chunkservers.
func (c *Client) ListChunkservers(ctx context.Context) ([]Chunkserver, error) {
	return callList[Chunkserver](ctx, c, http.MethodGet, "/api/v1/chunkservers", nil, nil, RequestTimeout)
}

// ChunkserverHeartbeat reports that chunkserver id is alive, with its disks.
func (c *Client) ChunkserverHeartbeat(ctx context.Context, id int64, hb ChunkserverHeartbeat) error {
	return c.do(ctx, http.MethodPost, "/api/v1/chunkservers/"+itoa(id)+"/heartbeat", nil, hb, nil, RequestTimeout)
}

// ChunkAssignments returns the chunks chunkserver id must hold or delete.
// With wait > 0 it long-polls: the call returns when the generation differs
// from after, or when wait (at most MaxWait) has passed, with the current
// assignments either way.
func (c *Client) ChunkAssignments(ctx context.Context, id int64, after int64, wait time.Duration) (*ChunkAssignments, error) {
	q, timeout := longPoll(after, wait)
	return call[ChunkAssignments](ctx, c, http.MethodGet, "/api/v1/chunkservers/"+itoa(id)+"/chunks", q, nil, timeout)
}

// AckChunkDeleted tells the metaserver that chunkserver id deleted chunk,
// which must be in state deleting.
func (c *Client) AckChunkDeleted(ctx context.Context, id int64, chunk string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/chunkservers/"+itoa(id)+"/chunks/"+url.PathEscape(chunk), nil, nil, nil, RequestTimeout)
}

// ListDisks lists the disks of every chunkserver.
func (c *Client) ListDisks(ctx context.Context) ([]Disk, error) {
	return callList[Disk](ctx, c, http.MethodGet, "/api/v1/disks", nil, nil, RequestTimeout)
}

// ListChunks lists every chunk, or with volume != "" the chunks of that volume.
func (c *Client) ListChunks(ctx context.Context, volume string) ([]Chunk, error) {
	var q url.Values
	if volume != "" {
		q = url.Values{"volume": {volume}}
	}
	return callList[Chunk](ctx, c, http.MethodGet, "/api/v1/chunks", q, nil, RequestTimeout)
}

// RegisterHost registers a host, or updates it if its name is known.
func (c *Client) RegisterHost(ctx context.Context, req RegisterHostRequest) (*RegisterHostResponse, error) {
	return call[RegisterHostResponse](ctx, c, http.MethodPost, "/api/v1/hosts", nil, req, RequestTimeout)
}

// ListHosts lists the hosts.
func (c *Client) ListHosts(ctx context.Context) ([]Host, error) {
	return callList[Host](ctx, c, http.MethodGet, "/api/v1/hosts", nil, nil, RequestTimeout)
}

// HostHeartbeat reports that host id is alive.
func (c *Client) HostHeartbeat(ctx context.Context, id int64) error {
	return c.do(ctx, http.MethodPost, "/api/v1/hosts/"+itoa(id)+"/heartbeat", nil, nil, nil, RequestTimeout)
}

// HostVolumes returns the volumes assigned to host id; after and wait
// long-poll as in ChunkAssignments.
func (c *Client) HostVolumes(ctx context.Context, id int64, after int64, wait time.Duration) (*HostVolumes, error) {
	q, timeout := longPoll(after, wait)
	return call[HostVolumes](ctx, c, http.MethodGet, "/api/v1/hosts/"+itoa(id)+"/volumes", q, nil, timeout)
}

// HostReport reports the state of the volumes attached to host id: member
// states, resync progress and dirty bytes. A volume the host no longer holds
// (attached elsewhere, at a newer epoch, or deleted) makes the call fail with
// CodeConflict (IsConflict), naming it; the other volumes of the report are
// stored all the same.
func (c *Client) HostReport(ctx context.Context, id int64, r HostReport) error {
	return c.do(ctx, http.MethodPost, "/api/v1/hosts/"+itoa(id)+"/report", nil, r, nil, RequestTimeout)
}

// ListEvents returns events, oldest first. With after > 0 it returns the
// events after that ID (at most limit of them, the oldest first), otherwise
// the newest limit events. volume != "" keeps the events of that volume.
// limit <= 0 means the server's default (100); it is capped at MaxEvents.
func (c *Client) ListEvents(ctx context.Context, volume string, after int64, limit int) ([]Event, error) {
	return c.FindEvents(ctx, EventFilter{Volume: volume}, after, limit)
}

// EventFilter keeps the events of one volume, kind and server (each "" for
// any).
type EventFilter struct{ Volume, Kind, Server string }

// FindEvents is ListEvents with every filter.
func (c *Client) FindEvents(ctx context.Context, f EventFilter, after int64, limit int) ([]Event, error) {
	q := url.Values{}
	for k, v := range map[string]string{"volume": f.Volume, "kind": f.Kind, "server": f.Server} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if after > 0 {
		q.Set("after", itoa(after))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return callList[Event](ctx, c, http.MethodGet, "/api/v1/events", q, nil, RequestTimeout)
}

// CreateVolume creates a volume and places its chunks.
func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes", nil, req, RequestTimeout)
}

// ListVolumes lists the volumes with their sets and members.
func (c *Client) ListVolumes(ctx context.Context) ([]Volume, error) {
	return callList[Volume](ctx, c, http.MethodGet, "/api/v1/volumes", nil, nil, RequestTimeout)
}

// GetVolume returns one volume.
func (c *Client) GetVolume(ctx context.Context, name string) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodGet, "/api/v1/volumes/"+url.PathEscape(name), nil, nil, RequestTimeout)
}

// DeleteVolume deletes a volume; its chunks are deleted by their chunkservers.
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/volumes/"+url.PathEscape(name), nil, nil, nil, RequestTimeout)
}

// AttachVolume assigns a volume to host and bumps its epoch; the answer
// carries the new epoch and the export names made for it.
func (c *Client) AttachVolume(ctx context.Context, name, host string) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/attach", nil,
		AttachVolumeRequest{Host: host}, RequestTimeout)
}

// SetVolumeCHAP sets the CHAP credentials of a volume; its host applies
// them to new logins. The answer carries the CHAP user names, never the
// secrets.
func (c *Client) SetVolumeCHAP(ctx context.Context, name string, req SetCHAPRequest) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPut, "/api/v1/volumes/"+url.PathEscape(name)+"/chap", nil, req, RequestTimeout)
}

// ClearVolumeCHAP removes the CHAP credentials of a volume: its target asks
// for no authentication any more.
func (c *Client) ClearVolumeCHAP(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/volumes/"+url.PathEscape(name)+"/chap", nil, nil, nil, RequestTimeout)
}

// SetVolumeQoS replaces the I/O limits of a volume by q and returns the
// volume; its host applies them without a detach.
func (c *Client) SetVolumeQoS(ctx context.Context, name string, q QoS) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPut, "/api/v1/volumes/"+url.PathEscape(name)+"/qos", nil, q, RequestTimeout)
}

// ClearVolumeQoS removes the I/O limits of a volume.
func (c *Client) ClearVolumeQoS(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/volumes/"+url.PathEscape(name)+"/qos", nil, nil, nil, RequestTimeout)
}

// CreateSnapshot takes snapshot name of a volume: it returns once the
// volume's host took it (State ready).
func (c *Client) CreateSnapshot(ctx context.Context, volume, name string) (*Snapshot, error) {
	return call[Snapshot](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(volume)+"/snapshots", nil,
		CreateSnapshotRequest{Name: name}, SnapshotTimeout+RequestTimeout)
}

// ListSnapshots lists a volume's snapshots, oldest first.
func (c *Client) ListSnapshots(ctx context.Context, volume string) ([]Snapshot, error) {
	out, err := call[[]Snapshot](ctx, c, http.MethodGet, "/api/v1/volumes/"+url.PathEscape(volume)+"/snapshots", nil, nil, RequestTimeout)
	if err != nil {
		return nil, err
	}
	return *out, nil
}

// DeleteSnapshot deletes a snapshot of a volume: it returns once the
// volume's host deleted it from every member chunk.
func (c *Client) DeleteSnapshot(ctx context.Context, volume, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/volumes/"+url.PathEscape(volume)+"/snapshots/"+url.PathEscape(name), nil, nil, nil,
		SnapshotTimeout+RequestTimeout)
}

// AttachSnapshot has host serve snapshot name of volume read-only over
// iSCSI.
func (c *Client) AttachSnapshot(ctx context.Context, volume, name, host string) (*Snapshot, error) {
	return call[Snapshot](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(volume)+"/snapshots/"+url.PathEscape(name)+"/attach", nil,
		AttachSnapshotRequest{Host: host}, RequestTimeout)
}

// DetachSnapshot stops serving snapshot name of volume.
func (c *Client) DetachSnapshot(ctx context.Context, volume, name string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(volume)+"/snapshots/"+url.PathEscape(name)+"/detach", nil, nil, nil, RequestTimeout)
}

// CloneVolume makes volume name a writable clone of snapshot snap of
// volume parent; host, if set, attaches it.
func (c *Client) CloneVolume(ctx context.Context, parent, snap, name, host string) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(parent)+"/clone", nil,
		CloneVolumeRequest{Snapshot: snap, Name: name, Host: host}, RequestTimeout)
}

// FlattenVolume makes clone volume name an ordinary volume that shares no
// block with its parent's snapshot; it answers once every chunk is copied.
func (c *Client) FlattenVolume(ctx context.Context, name string) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/flatten", nil, nil, 10*time.Minute)
}

// DetachVolume detaches a volume from its host.
func (c *Client) DetachVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/detach", nil, nil, nil, RequestTimeout)
}

// RollbackVolume makes a detached volume hold snapshot snap again.
func (c *Client) RollbackVolume(ctx context.Context, name, snap string) error {
	return c.do(ctx, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/rollback", nil, RollbackRequest{Snapshot: snap}, nil, 10*time.Minute)
}

// HostSnapshotExports returns volume (which host id serves) with read-only
// export names of snapshot snap of its members for the host (a host's
// call).
func (c *Client) HostSnapshotExports(ctx context.Context, id int64, volume, snap string) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/hosts/"+strconv.FormatInt(id, 10)+"/snapshot-exports", nil,
		HostSnapshotExportsRequest{Volume: volume, Snapshot: snap}, RequestTimeout)
}

// ReportSnapshot tells the metaserver that host id took or deleted a
// snapshot (a host's call).
func (c *Client) ReportSnapshot(ctx context.Context, id int64, r SnapshotReport) error {
	return c.do(ctx, http.MethodPost, "/api/v1/hosts/"+strconv.FormatInt(id, 10)+"/snapshots", nil, r, nil, RequestTimeout)
}

// SnapshotTimeout bounds how long the metaserver waits for a volume's host
// to take or delete a snapshot before it answers that the host has not.
const SnapshotTimeout = 30 * time.Second

// UpdateInitiators changes the initiator allowlist of a volume (see
// InitiatorsRequest) and returns the volume.
func (c *Client) UpdateInitiators(ctx context.Context, name string, req InitiatorsRequest) (*Volume, error) {
	return call[Volume](ctx, c, http.MethodPost, "/api/v1/volumes/"+url.PathEscape(name)+"/initiators", nil, req, RequestTimeout)
}

// AllowInitiators adds iSCSI initiator names to the allowlist of a volume.
func (c *Client) AllowInitiators(ctx context.Context, name string, iqns ...string) (*Volume, error) {
	return c.UpdateInitiators(ctx, name, InitiatorsRequest{Allow: iqns})
}

// DisallowInitiators removes iSCSI initiator names from the allowlist of a
// volume; each must be in it, and the list may not become empty (use
// UpdateInitiators with Clear for that).
func (c *Client) DisallowInitiators(ctx context.Context, name string, iqns ...string) (*Volume, error) {
	return c.UpdateInitiators(ctx, name, InitiatorsRequest{Disallow: iqns})
}

// call sends a request and decodes its answer into a new T.
func call[T any](ctx context.Context, c *Client, method, path string, q url.Values, in any, timeout time.Duration) (*T, error) {
	var out T
	if err := c.do(ctx, method, path, q, in, &out, timeout); err != nil {
		return nil, err
	}
	return &out, nil
}

// callList is call for list answers; it never returns a nil slice without an error.
func callList[T any](ctx context.Context, c *Client, method, path string, q url.Values, in any, timeout time.Duration) ([]T, error) {
	out := []T{}
	if err := c.do(ctx, method, path, q, in, &out, timeout); err != nil {
		return nil, err
	}
	if out == nil {
		out = []T{}
	}
	return out, nil
}

func itoa(id int64) string { return strconv.FormatInt(id, 10) }

// longPoll returns the query and the request timeout of a long poll.
func longPoll(after int64, wait time.Duration) (url.Values, time.Duration) {
	q := url.Values{"after": {itoa(after)}}
	if wait <= 0 {
		return q, RequestTimeout
	}
	wait = min(wait, MaxWait)
	q.Set("wait", wait.String())
	return q, wait + longPollGrace
}

// do sends one request with a JSON body (in != nil) and decodes a JSON answer
// into out (out != nil). A non-2xx answer becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if len(c.bases) == 0 {
		return fmt.Errorf("%s %s: no metaserver URL", method, path)
	}
	start := int(c.cur.Load())
	var err error
	for i := range c.bases {
		k := (start + i) % len(c.bases)
		err = DoJSON(ctx, c.hc, c.bases[k]+path, method, q, in, out, maxResponse)
		if i == len(c.bases)-1 || ctx.Err() != nil || !failOver(err, method) {
			if err == nil || statusOf(err) != 0 {
				c.cur.Store(int32(k)) // it answered
			}
			return err
		}
	}
	return err
}

// failOver reports whether a call that failed with err may be sent to
// another metaserver: one that never reached this one (the dial failed),
// or a read (GET) that got no answer or a 503 (a metaserver starting or
// without its database). A write that may have been applied is not sent
// twice: its caller retries.
func failOver(err error, method string) bool {
	if err == nil {
		return false
	}
	if st := statusOf(err); st != 0 {
		return st == http.StatusServiceUnavailable && method == http.MethodGet
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return method == http.MethodGet
}

// URLs returns the metaserver URLs of the client, the one that answered
// last first.
func (c *Client) URLs() []string {
	k := int(c.cur.Load())
	return append(append([]string(nil), c.bases[k:]...), c.bases[:k]...)
}

// DoJSON sends one HTTP request to target with in (if not nil) as its JSON
// body and decodes a JSON answer of at most limit bytes into out (if not
// nil). A non-2xx answer becomes an *Error when its body is the error
// envelope, otherwise a *StatusError. Clients of the project's JSON APIs
// (the metaserver's, a chunkserver's control API) share it.
func DoJSON(ctx context.Context, hc *http.Client, target, method string, q url.Values, in, out any, limit int) error {
	path := target
	if u, err := url.Parse(target); err == nil {
		path = u.Path
	}
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if len(data) > limit {
		return fmt.Errorf("%s %s: response larger than %d bytes", method, path, limit)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(method, path, resp.StatusCode, data)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// decodeError turns a non-2xx answer into an *Error, or into a plain error
// quoting the start of the body when it is not the API's error envelope
// (e.g. from a proxy).
func decodeError(method, path string, status int, data []byte) error {
	var e Error
	if err := json.Unmarshal(data, &e); err == nil && e.Code != "" {
		e.Status = status
		return &e
	}
	snippet := strings.TrimSpace(string(data))
	if len(snippet) > 200 {
		snippet = snippet[:200] + "..."
	}
	if snippet == "" {
		snippet = "(empty body)"
	}
	return &StatusError{Method: method, Path: path, Status: status, Body: snippet}
}

// StatusError is a non-2xx answer whose body is not the API's error envelope.
type StatusError struct {
	Method, Path string
	Status       int
	Body         string // the start of the body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Body)
}

// statusOf returns the HTTP status of an *Error or *StatusError in err's chain, or 0.
func statusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// IsClientError reports whether the metaserver refused the request as
// invalid (an HTTP 4xx answer): retrying the same request will not help.
func IsClientError(err error) bool {
	s := statusOf(err)
	return s >= 400 && s < 500
}
