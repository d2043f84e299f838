package chunkserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/chunkraid/chunkraid/chunkserver/control"
	"github.com/chunkraid/chunkraid/chunkserver/internal/store"
	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// controlAPI serves the control API (package control documents it).
type controlAPI struct{ s *Server }

// maxControlBody bounds the body of a control request.
const maxControlBody = 64 << 10

func (s *Server) controlHandler() http.Handler {
	h := controlAPI{s}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+control.RouteFence, h.fence)
	mux.HandleFunc("POST "+control.RoutePin, h.pin)
	mux.HandleFunc("POST "+control.RouteUnpin, h.unpin)
	mux.HandleFunc("POST "+control.RoutePins, h.pinMany)
	mux.HandleFunc("GET "+control.RouteLog, h.log)
	mux.HandleFunc("PUT "+control.RouteIntent, h.writeIntent)
	mux.HandleFunc("GET "+control.RouteIntent, h.readIntent)
	mux.HandleFunc("POST "+control.RouteSnapshots, h.snapshots(snapTake))
	mux.HandleFunc("POST "+control.RouteSnapshotsDelete, h.snapshots(snapDelete))
	mux.HandleFunc("POST "+control.RouteSnapshotsRollback, h.snapshots(snapRollback))
	mux.HandleFunc("POST "+control.RouteSnapshotsFlatten, h.snapshots(snapFlatten))
	mux.HandleFunc("GET "+control.RouteChunkSnapshots, h.chunkSnapshots)
	mux.Handle("GET /metrics", scrape.Handler(s.registry, scrape.WithMetaserver(s.meta), s.log))
	for _, route := range []string{control.RouteFence, control.RoutePin, control.RouteUnpin, control.RouteLog, control.RouteIntent, control.RoutePins,
		control.RouteSnapshots, control.RouteSnapshotsDelete, control.RouteSnapshotsRollback, control.RouteSnapshotsFlatten, control.RouteChunkSnapshots} {
		mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			writeError(w, api.Errorf(control.CodeMethodNotAllowed, "%s does not take %s", r.URL.Path, r.Method))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "no control route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *api.Error) {
	writeJSON(w, control.HTTPStatus(e.Code), e)
}

// authorize checks the credentials of a control call on chunk: a valid
// token (401 otherwise), a chunk this server holds (404), not failed (500)
// and, unless raise is set, an epoch at or above the chunk's minimum (403).
func (h controlAPI) authorize(chunk string, req api.ControlRequest, raise bool) (*store.Chunk, *api.Error) {
	if req.Host == "" || req.Token == "" || req.Epoch < 1 {
		return nil, api.Errorf(control.CodeUnauthenticated,
			"chunk %s: host, epoch (≥ 1) and token are required", chunk)
	}
	en := api.ExportName{Chunk: chunk, Host: req.Host, Epoch: req.Epoch, Token: req.Token}
	if !en.ValidToken(h.s.secret) {
		return nil, api.Errorf(control.CodeUnauthenticated, "bad access token for chunk %s (host %s, epoch %d)",
			chunk, req.Host, req.Epoch)
	}
	c, err := h.s.store.Get(chunk)
	if err != nil {
		return nil, api.Errorf(api.CodeNotFound, "no chunk %s on chunkserver %s", chunk, h.s.cfg.Name)
	}
	if c.Failed() {
		return nil, api.Errorf(api.CodeInternal, "chunk %s failed after a durability error", chunk)
	}
	if m := c.MinEpoch(); !raise && req.Epoch < m {
		return nil, api.Errorf(control.CodeFenced, "chunk %s is fenced at epoch %d; this host presented epoch %d",
			chunk, m, req.Epoch)
	} else if raise && req.Epoch < m {
		return nil, api.Errorf(control.CodeFenced, "chunk %s is fenced at epoch %d; cannot fence at the older epoch %d",
			chunk, m, req.Epoch)
	}
	return c, nil
}

// decode reads a ControlRequest body.
func decode(r *http.Request) (api.ControlRequest, *api.Error) {
	var req api.ControlRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, api.Errorf(api.CodeInvalidArgument, "body must be a JSON ControlRequest {host, epoch, token}: %v", err)
	}
	return req, nil
}

// post runs a POST route: decode, authorize, act, answer with the chunk's state.
func (h controlAPI) post(w http.ResponseWriter, r *http.Request, raise bool, act func(ctx context.Context, c *store.Chunk, req api.ControlRequest) error) {
	chunk := r.PathValue("chunk")
	req, aerr := decode(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	c, aerr := h.authorize(chunk, req, raise)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := act(r.Context(), c, req); err != nil {
		code := api.CodeInternal
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			code = api.CodeUnavailable
		}
		writeError(w, api.Errorf(code, "%s", err.Error()))
		return
	}
	writeJSON(w, http.StatusOK, api.ControlResponse{MinEpoch: c.MinEpoch(), Pinned: c.Log().Pinned()})
}

func (h controlAPI) fence(w http.ResponseWriter, r *http.Request) {
	h.post(w, r, true, func(ctx context.Context, c *store.Chunk, req api.ControlRequest) error {
		_, err := h.s.fence(ctx, c, req.Epoch)
		if err == nil {
			h.s.log.Info("fence", "chunk", c.ID(), "host", req.Host, "epoch", req.Epoch)
		}
		return err
	})
}

func (h controlAPI) pin(w http.ResponseWriter, r *http.Request) {
	h.post(w, r, false, func(ctx context.Context, c *store.Chunk, req api.ControlRequest) error {
		applied, err := c.PinOrdered(ctx, true, req.Epoch, req.PinGen)
		if err != nil {
			return fmt.Errorf("pinning chunk %s: %w", c.ID(), err)
		}
		if !applied {
			h.s.log.Info("stale pin ignored: a later pin or unpin of the host was applied", "chunk", c.ID(),
				"host", req.Host, "epoch", req.Epoch, "pin_gen", req.PinGen)
			return nil
		}
		h.s.log.Info("LOG bitmap pinned", "chunk", c.ID(), "host", req.Host, "epoch", req.Epoch, "pin_gen", req.PinGen)
		return nil
	})
}

func (h controlAPI) unpin(w http.ResponseWriter, r *http.Request) {
	h.post(w, r, false, func(ctx context.Context, c *store.Chunk, req api.ControlRequest) error {
		applied, err := c.PinOrdered(ctx, false, req.Epoch, req.PinGen)
		if err != nil {
			return fmt.Errorf("unpinning chunk %s: %w", c.ID(), err)
		}
		if !applied {
			h.s.log.Info("stale unpin ignored: a later pin or unpin of the host was applied", "chunk", c.ID(),
				"host", req.Host, "epoch", req.Epoch, "pin_gen", req.PinGen)
			return nil
		}
		h.s.log.Info("LOG bitmap unpinned", "chunk", c.ID(), "host", req.Host, "epoch", req.Epoch, "pin_gen", req.PinGen)
		return nil
	})
}

// maxPinsBody bounds the body of a PinRequest (api.MaxPins pins).
const maxPinsBody = 4 << 20

// pinMany pins several chunks in one call, each with its own credentials
// and order; the first pin that fails fails the call.
func (h controlAPI) pinMany(w http.ResponseWriter, r *http.Request) {
	var req api.PinRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxPinsBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "body must be a JSON PinRequest {pins: [{chunk, host, epoch, token}]}: %v", err))
		return
	}
	if len(req.Pins) == 0 || len(req.Pins) > api.MaxPins {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "a PinRequest carries 1 to %d pins, not %d", api.MaxPins, len(req.Pins)))
		return
	}
	out := api.PinResponse{Chunks: make([]api.ControlResponse, 0, len(req.Pins))}
	for _, p := range req.Pins {
		c, aerr := h.authorize(p.Chunk, p.ControlRequest, false)
		if aerr != nil {
			writeError(w, aerr)
			return
		}
		applied, err := c.PinOrdered(r.Context(), true, p.Epoch, p.PinGen)
		if err != nil {
			code := api.CodeInternal
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				code = api.CodeUnavailable
			}
			writeError(w, api.Errorf(code, "pinning chunk %s: %s", p.Chunk, err.Error()))
			return
		}
		if applied {
			h.s.log.Info("LOG bitmap pinned", "chunk", c.ID(), "host", p.Host, "epoch", p.Epoch, "pin_gen", p.PinGen)
		}
		out.Chunks = append(out.Chunks, api.ControlResponse{MinEpoch: c.MinEpoch(), Pinned: c.Log().Pinned()})
	}
	writeJSON(w, http.StatusOK, out)
}

// snapshotParallel bounds the chunks one snapshot call works on at once.
const snapshotParallel = 16

// What a snapshot call does to its chunks.
type snapOp int

const (
	snapTake snapOp = iota
	snapDelete
	snapRollback
	snapFlatten // clones of the snapshot become ordinary chunks
)

// snapshots takes, deletes or rolls back to a snapshot of several chunks.
func (h controlAPI) snapshots(op snapOp) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var req api.SnapshotRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxPinsBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "body must be a JSON SnapshotRequest {name, chunks: [{chunk, host, epoch, token}]}: %v", err))
			return
		}
		if !api.ValidSnapshotName(req.Name) {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", req.Name))
			return
		}
		if len(req.Chunks) == 0 || len(req.Chunks) > api.MaxPins {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "a SnapshotRequest names 1 to %d chunks, not %d", api.MaxPins, len(req.Chunks)))
			return
		}
		chunks := make([]*store.Chunk, len(req.Chunks))
		for i, p := range req.Chunks {
			c, aerr := h.authorize(p.Chunk, p.ControlRequest, false)
			if aerr != nil {
				writeError(w, aerr)
				return
			}
			chunks[i] = c
		}
		// The chunks' syncs run side by side: the pause a host holds its
		// volume for is about one chunk's, not the sum.
		var g errgroup.Group
		g.SetLimit(snapshotParallel)
		for _, c := range chunks {
			g.Go(func() error {
				var err error
				switch op {
				case snapDelete:
					if err = c.DeleteSnapshot(req.Name); errors.Is(err, store.ErrNoSnapshot) {
						err = nil
					}
				case snapRollback:
					err = c.Rollback(req.Name)
				case snapFlatten:
					if base, snap, ok := c.Base(); ok && snap != req.Name {
						return fmt.Errorf("chunk %s is a clone of snapshot %q of chunk %s, not of %q", c.ID(), snap, base, req.Name)
					}
					start := time.Now()
					err = c.Flatten(func(done, total int64) {
						if done == total || done%(16*64) == 0 {
							h.s.log.Info("flattening a clone", "chunk", c.ID(), "blocks_done", done, "blocks", total, "took", time.Since(start).Round(time.Millisecond))
						}
					})
				default:
					if err = c.Snapshot(req.Name); errors.Is(err, store.ErrSnapshotExists) {
						err = nil
					}
				}
				if err != nil {
					return fmt.Errorf("snapshot %q of chunk %s: %w", req.Name, c.ID(), err)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			writeError(w, api.Errorf(api.CodeInternal, "%s", err.Error()))
			return
		}
		verb := [...]string{snapTake: "snapshot taken", snapDelete: "snapshot deleted", snapRollback: "chunks rolled back to a snapshot",
			snapFlatten: "clones of a snapshot flattened"}[op]
		took := time.Since(start)
		h.s.log.Info(verb, "name", req.Name, "chunks", len(req.Chunks), "took", took)
		writeJSON(w, http.StatusOK, api.SnapshotResponse{TookMicros: took.Microseconds()})
	}
}

// chunkSnapshots lists a chunk's snapshots.
func (h controlAPI) chunkSnapshots(w http.ResponseWriter, r *http.Request) {
	c, ok := h.queryAuth(w, r)
	if !ok {
		return
	}
	out := api.ChunkSnapshots{Snapshots: []api.ChunkSnapshot{}}
	maps := r.URL.Query().Get("changed") == "1"
	for _, l := range c.Snapshots() {
		sn := api.ChunkSnapshot{Name: l.Name, CreatedAt: time.Unix(0, l.Created).UTC()}
		if maps {
			block, changed, err := c.SnapshotChanged(l.Name)
			if err != nil {
				continue // deleted meanwhile
			}
			sn.Block, sn.Changed = block, changed
		}
		out.Snapshots = append(out.Snapshots, sn)
	}
	writeJSON(w, http.StatusOK, out)
}

// queryAuth authorizes a GET route from its query string.
func (h controlAPI) queryAuth(w http.ResponseWriter, r *http.Request) (*store.Chunk, bool) {
	q := r.URL.Query()
	req := api.ControlRequest{Host: q.Get("host"), Token: q.Get("token")}
	if e := q.Get("epoch"); e != "" {
		n, err := strconv.ParseInt(e, 10, 64)
		if err != nil {
			writeError(w, api.Errorf(api.CodeInvalidArgument, "epoch %q is not a number", e))
			return nil, false
		}
		req.Epoch = n
	}
	c, aerr := h.authorize(r.PathValue("chunk"), req, false)
	if aerr != nil {
		writeError(w, aerr)
		return nil, false
	}
	return c, true
}

// writeIntent stores a host's intent bitmap (bitmap mode internal).
func (h controlAPI) writeIntent(w http.ResponseWriter, r *http.Request) {
	var req api.IntentRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 2*store.MaxIntentBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "body must be a JSON IntentRequest {host, epoch, token, region_size, bits}: %v", err))
		return
	}
	c, aerr := h.authorize(r.PathValue("chunk"), req.ControlRequest, false)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if req.RegionSize <= 0 || int64(len(req.Bits))*8*req.RegionSize < c.Size() || len(req.Bits) > store.MaxIntentBytes {
		writeError(w, api.Errorf(api.CodeInvalidArgument, "intent bitmap of %d bytes with region %d does not cover chunk %s of %d bytes",
			len(req.Bits), req.RegionSize, c.ID(), c.Size()))
		return
	}
	if err := h.s.store.WriteIntent(c, req.RegionSize, req.Bits); err != nil {
		writeError(w, api.Errorf(api.CodeInternal, "storing the intent bitmap of chunk %s: %v", c.ID(), err))
		return
	}
	writeJSON(w, http.StatusOK, api.ControlResponse{MinEpoch: c.MinEpoch(), Pinned: c.Log().Pinned()})
}

// readIntent returns the stored intent bitmap.
func (h controlAPI) readIntent(w http.ResponseWriter, r *http.Request) {
	c, ok := h.queryAuth(w, r)
	if !ok {
		return
	}
	region, bits, err := h.s.store.ReadIntent(c)
	if err != nil {
		writeError(w, api.Errorf(api.CodeInternal, "reading the intent bitmap of chunk %s: %v", c.ID(), err))
		return
	}
	writeJSON(w, http.StatusOK, api.LogBitmap{RegionSize: region, Size: c.Size(), Bits: bits})
}

func (h controlAPI) log(w http.ResponseWriter, r *http.Request) {
	c, ok := h.queryAuth(w, r)
	if !ok {
		return
	}
	// The fine copy: what this process saw written at 1 MiB, and whole
	// LOG regions where it restored the bits after a restart.
	l := c.Log()
	region, bits := l.FineSnapshot()
	writeJSON(w, http.StatusOK, api.LogBitmap{
		RegionSize: region,
		Size:       c.Size(),
		Bits:       bits,
		Pinned:     l.Pinned(),
	})
}
