package metaserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/puddle/v2"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// maxBody bounds a request body that decode reads, whatever
// Config.MaxBodyBytes allows.
const maxBody = 1 << 20

// decode reads a JSON request body into v: at most 1 MiB (or
// Config.MaxBodyBytes if less), one value, no unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return invalid("request body exceeds %d bytes", mbe.Limit)
		case errors.Is(err, io.EOF):
			return invalid("request body is empty: send a JSON object")
		}
		return invalid("invalid JSON body: %v", err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return invalid("request body holds more than one JSON value")
	}
	return nil
}

// writeJSON writes v as the JSON body of a status response.
func (s *Server) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode response", "err", err)
		status = http.StatusInternalServerError
		b, _ = json.Marshal(api.Errorf(api.CodeInternal, "cannot encode the response"))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError writes err as the API's error envelope. *api.Error and
// *PlacementError carry their code; a lost database is unavailable; anything
// else is internal and logged, and the client sees no details.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ae      *api.Error
		pe      *PlacementError
		connErr *pgconn.ConnectError
	)
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &pe):
		ae = api.Errorf(api.CodeUnsatisfiable, "%s", pe.Error())
	case r.Context().Err() != nil:
		// The client went away; nobody reads the answer.
		s.log.Debug("request canceled", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = api.Errorf(api.CodeUnavailable, "request canceled")
	case errors.As(err, &connErr), errors.Is(err, puddle.ErrClosedPool), errors.Is(err, context.DeadlineExceeded):
		s.log.Warn("database unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = api.Errorf(api.CodeUnavailable, "the metaserver cannot reach its database: retry later")
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = api.Errorf(api.CodeInternal, "internal error: see the metaserver log")
	}
	s.writeJSON(w, api.HTTPStatus(ae.Code), ae)
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// logRequests logs every request at debug level and recovers a panicking
// handler into an internal error.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
				if rec.status == 0 {
					s.writeJSON(rec, http.StatusInternalServerError, api.Errorf(api.CodeInternal, "internal error: see the metaserver log"))
				}
			}
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			took := time.Since(start)
			s.metrics.observe(r, status, took)
			s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery,
				"status", status, "duration", took)
		}()
		next.ServeHTTP(rec, r)
	})
}

// limitBody bounds the body of every request to Config.MaxBodyBytes: a
// handler that reads more gets an error, never the bytes.
func (s *Server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		}
		next.ServeHTTP(w, r)
	})
}

// requireReady answers 503 until Run has connected to the database.
func (s *Server) requireReady(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.isReady() {
			s.writeJSON(w, http.StatusServiceUnavailable, api.Errorf(api.CodeUnavailable, "the metaserver is starting: retry shortly"))
			return
		}
		next.ServeHTTP(w, r)
	})
}
