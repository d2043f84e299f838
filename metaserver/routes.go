package metaserver

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// routes returns the API's router. Every route is listed here.
func (s *Server) routes() http.Handler {
	r := chi.NewRouter()
	r.Use(s.logRequests, s.limitBody)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, api.Errorf(api.CodeNotFound, "no route %s %s: see the metaserver package documentation for the API", r.Method, r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, invalid("method %s is not allowed on %s", r.Method, r.URL.Path))
	})
	// The one public route; the route-table test holds the list.
	r.Get("/healthz", s.healthz)
	// Prometheus metrics: any token (a scraper's reader token).
	r.With(s.requireReady, s.authenticate(accessRead)).Method(http.MethodGet, "/metrics", s.metrics.handler())
	r.Route("/api/v1", func(r chi.Router) {
		r.Use(s.requireReady)
		// The API's description (openapi.go): any operator token.
		r.With(s.authenticate(accessRead)).Get("/openapi.json", s.openAPI)

		// The daemons' routes: registration takes a join token or the
		// daemon's credential, the routes of one daemon only that daemon's
		// credential, GET /cluster any token.
		r.Group(func(r chi.Router) {
			r.Use(s.identify)
			r.Get("/cluster", s.getCluster)
			r.Post("/chunkservers", s.registerChunkserver)
			r.Post("/hosts", s.registerHost)
			// Not a mounted /chunkservers/{id}: DELETE /chunkservers/{id}
			// is an operator's (removeChunkserver).
			cs := r.With(s.daemonOnly(api.RoleChunkserver))
			cs.Post("/chunkservers/{id}/heartbeat", s.chunkserverHeartbeat)
			cs.Get("/chunkservers/{id}/chunks", s.chunkAssignments)
			cs.Delete("/chunkservers/{id}/chunks/{chunk}", s.ackChunkDeleted)
			r.Route("/hosts/{id}", func(r chi.Router) {
				r.Use(s.daemonOnly(api.RoleHost))
				r.Post("/heartbeat", s.hostHeartbeat)
				r.Get("/volumes", s.hostVolumes)
				r.Post("/report", s.hostReport)
				r.Post("/snapshots", s.hostSnapshotReport)
				r.Post("/snapshot-exports", s.hostSnapshotExports)
			})
		})

		// Operator routes that change nothing: any token.
		r.Group(func(r chi.Router) {
			r.Use(s.authenticate(accessRead))
			r.Get("/chunkservers", s.listChunkservers)
			r.Get("/disks", s.listDisks)
			r.Get("/chunks", s.listChunks)
			r.Get("/hosts", s.listHosts)
			r.Get("/volumes", s.listVolumes)
			r.Get("/volumes/{name}", s.getVolume)
			r.Get("/volumes/{name}/stats", s.volumeStats)
			r.Get("/volumes/{name}/snapshots", s.listSnapshots)
			r.Get("/events", s.listEvents)
			r.Get("/whoami", s.whoami)
			r.Get("/changes", s.changes)
		})

		// Operator routes that change the cluster, and the tokens: admin.
		r.Group(func(r chi.Router) {
			r.Use(s.authenticate(accessAdmin))
			r.Post("/volumes", s.createVolume)
			r.Delete("/volumes/{name}", s.deleteVolume)
			r.Post("/volumes/{name}/attach", s.attachVolume)
			r.Post("/volumes/{name}/resize", s.resizeVolume)
			r.Put("/volumes/{name}/chap", s.setVolumeCHAP)
			r.Delete("/volumes/{name}/chap", s.clearVolumeCHAP)
			r.Put("/volumes/{name}/qos", s.setVolumeQoS)
			r.Delete("/volumes/{name}/qos", s.clearVolumeQoS)
			r.Post("/volumes/{name}/snapshots", s.createSnapshot)
			r.Post("/volumes/{name}/detach", s.detachVolume)
			r.Post("/volumes/{name}/rollback", s.rollbackVolume)
			r.Post("/volumes/{name}/clone", s.cloneVolume)
			r.Post("/volumes/{name}/flatten", s.flattenVolume)
			r.Delete("/volumes/{name}/snapshots/{snapshot}", s.deleteSnapshot)
			r.Post("/volumes/{name}/snapshots/{snapshot}/attach", s.attachSnapshot)
			r.Post("/volumes/{name}/snapshots/{snapshot}/detach", s.detachSnapshot)
			r.Post("/volumes/{name}/initiators", s.updateInitiators)
			r.Post("/volumes/{name}/read-exports", s.readExports)
			r.Post("/tokens", s.createToken)
			r.Get("/tokens", s.listTokens)
			r.Delete("/tokens/{name}", s.revokeToken)
			r.Post("/certificates", s.issueCertificate)
			r.Delete("/chunkservers/{id}", s.removeChunkserver)
			r.Post("/chunkservers/{id}/drain", s.drainChunkserver)
		})
	})
	return r
}

// healthz answers 200 when the server is ready and its database answers.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if !s.isReady() {
		s.writeJSON(w, http.StatusServiceUnavailable, api.Errorf(api.CodeUnavailable, "the metaserver is starting"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := s.st.db.Ping(ctx); err != nil {
		s.log.Warn("health check: database unreachable", "err", err)
		s.writeJSON(w, http.StatusServiceUnavailable, api.Errorf(api.CodeUnavailable, "the database does not answer"))
		return
	}
	s.writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) getCluster(w http.ResponseWriter, r *http.Request) {
	c, err := s.st.cluster(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, c)
}

func (s *Server) registerChunkserver(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterChunkserverRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateRegisterChunkserver(&req); err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := s.st.registerChunkserver(r.Context(), req, callerOf(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("chunkserver registered", "name", req.Name, "id", resp.ID, "addr", req.Addr, "disks", len(req.Disks))
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) listChunkservers(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.listChunkservers(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}

// removeChunkserver forgets a chunkserver, named by its name (or ID), that
// is offline and holds no set member.
func (s *Server) removeChunkserver(w http.ResponseWriter, r *http.Request) {
	name, err := s.st.removeChunkserver(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("chunkserver removed", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

// drainChunkserver starts moving every set member off a chunkserver.
func (s *Server) drainChunkserver(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.drainChunkserver(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("chunkserver draining", "name", out.Chunkserver, "members", out.Members)
	s.writeJSON(w, http.StatusOK, out)
}

func (s *Server) chunkserverHeartbeat(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("chunkserver", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var hb api.ChunkserverHeartbeat
	if err := decode(w, r, &hb); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateDisks(hb.Disks, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.st.chunkserverHeartbeat(r.Context(), id, hb); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) chunkAssignments(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("chunkserver", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	after, wait, err := parsePoll(r.URL.Query().Get("after"), r.URL.Query().Get("wait"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := longPoll(r.Context(), s, callerName(r), after, wait, func(ctx context.Context) (*api.ChunkAssignments, int64, error) {
		a, err := s.st.chunkAssignments(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		return a, a.Generation, nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, out)
}

func (s *Server) ackChunkDeleted(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("chunkserver", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	chunk := chi.URLParam(r, "chunk")
	if err := validateChunkID(chunk); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.st.ackChunkDeleted(r.Context(), id, chunk); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) listDisks(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.listDisks(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}

func (s *Server) listChunks(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.listChunks(r.Context(), r.URL.Query().Get("volume"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}

func (s *Server) registerHost(w http.ResponseWriter, r *http.Request) {
	var req api.RegisterHostRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateRegisterHost(req); err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := s.st.registerHost(r.Context(), req, callerOf(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("host registered", "name", req.Name, "id", resp.ID, "iscsi_addr", req.ISCSIAddr)
	s.writeJSON(w, http.StatusOK, resp)
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.listHosts(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}

func (s *Server) hostHeartbeat(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("host", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.st.hostHeartbeat(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) hostVolumes(w http.ResponseWriter, r *http.Request) {
	id, err := parseID("host", chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	after, wait, err := parsePoll(r.URL.Query().Get("after"), r.URL.Query().Get("wait"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out, err := longPoll(r.Context(), s, callerName(r), after, wait, func(ctx context.Context) (*api.HostVolumes, int64, error) {
		v, err := s.st.hostVolumes(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		return v, v.Generation, nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, out)
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVolumeRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	l, err := validateCreateVolume(&req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := s.st.createVolume(r.Context(), req, l)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume created", "name", v.Name, "size", v.SizeBytes, "layout", v.Layout, "bitmap", v.Bitmap, "sets", len(v.Sets), "host", v.Host)
	s.writeJSON(w, http.StatusCreated, v)
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.listVolumes(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) {
	v, err := s.st.getVolume(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, v)
}

// readExports answers the volume with read-only export names of its
// members (volume verify reads them); an admin's route, as it opens the
// volume's bytes.
func (s *Server) readExports(w http.ResponseWriter, r *http.Request) {
	snap := r.URL.Query().Get("snapshot")
	if snap != "" && !api.ValidSnapshotName(snap) {
		s.writeError(w, r, invalid("snapshot name %q: 1 to 63 letters, digits, '.', '_' or '-'", snap))
		return
	}
	v, err := s.st.readExports(r.Context(), chi.URLParam(r, "name"), snap)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("read-only export names issued", "volume", v.Name, "epoch", v.Epoch, "snapshot", snap, "by", callerName(r))
	s.writeJSON(w, http.StatusOK, v)
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if err := s.st.deleteVolume(r.Context(), name); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume deleted", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) attachVolume(w http.ResponseWriter, r *http.Request) {
	var req api.AttachVolumeRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Host == "" {
		s.writeError(w, r, invalid("host is required: name a registered host (chunkraid host list shows them)"))
		return
	}
	name := chi.URLParam(r, "name")
	v, err := s.st.attachVolume(r.Context(), name, req.Host)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("volume attached", "name", name, "host", v.Host, "epoch", v.Epoch)
	s.writeJSON(w, http.StatusOK, v)
}

// orEmpty makes a nil list encode as [] rather than null.
func orEmpty[T any](list []T) []T {
	if list == nil {
		return []T{}
	}
	return list
}

// longPoll returns load's answer at once when its generation differs from
// after or wait is 0; otherwise it waits until the generation changes, wait
// passes, or the server shuts down, and returns the answer as it is then.
// It ends early with the context's error when the client goes away. One
// caller may hold at most MaxLongPolls waiting polls; one more is refused
// (429 resource_exhausted).
func longPoll[T any](ctx context.Context, s *Server, caller string, after int64, wait time.Duration, load func(context.Context) (T, int64, error)) (T, error) {
	var timeout <-chan time.Time
	if wait > 0 {
		release, err := s.polls.enter(caller, s.cfg.MaxLongPolls)
		if err != nil {
			var zero T
			s.log.Warn("long poll refused", "caller", caller, "err", err)
			return zero, err
		}
		defer release()
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		changed := s.gens.changed()
		v, gen, err := load(ctx)
		if err != nil || wait <= 0 || gen != after {
			return v, err
		}
		s.waiting.Add(1)
		select {
		case <-changed:
			s.waiting.Add(-1)
		case <-timeout:
			s.waiting.Add(-1)
			return v, nil
		case <-s.stopping:
			s.waiting.Add(-1)
			return v, nil
		case <-ctx.Done():
			s.waiting.Add(-1)
			var zero T
			return zero, ctx.Err()
		}
	}
}

// pollCounts counts the waiting long polls of each caller.
type pollCounts struct {
	mu sync.Mutex
	n  map[string]int
}

// enter counts one more long poll of caller, or refuses it when caller
// already has limit; release uncounts it.
func (p *pollCounts) enter(caller string, limit int) (release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[caller] >= limit {
		return nil, api.Errorf(api.CodeResourceExhausted, "%s already waits in %d long polls, the most one caller may: retry when one returns", caller, limit)
	}
	if p.n == nil {
		p.n = map[string]int{}
	}
	p.n[caller]++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.n[caller]--; p.n[caller] == 0 {
			delete(p.n, caller)
		}
	}, nil
}
