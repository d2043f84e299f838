package metaserver

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// API tokens. A token is "chunkraid_" and 43 characters of base64url (256
// random bits); the database keeps its name, role and HMAC-SHA256 under a
// key derived from the cluster secret, so a copy of the api_tokens table
// alone yields no token, and a stolen hash cannot be replayed. Lookups hash
// the presented token and find the row by hash.

const (
	tokenPrefix = "chunkraid_"
	// adminTokenName names the admin token the metaserver creates when the
	// cluster has none.
	adminTokenName = "admin"
)

var tokenNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// tokenKey derives the HMAC key of the token hashes from the cluster
// secret.
func tokenKey(secret string) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("chunkraid api token key v1"))
	return m.Sum(nil)
}

// hashToken is the stored form of token.
func (st *store) hashToken(token string) []byte {
	m := hmac.New(sha256.New, st.tokenKey)
	m.Write([]byte(token))
	return m.Sum(nil)
}

func newTokenSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make a token: %w", err)
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func validateCreateToken(req api.CreateTokenRequest) error {
	if !tokenNameRE.MatchString(req.Name) {
		return invalid("token name %q: use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
	}
	switch req.Role {
	case api.RoleAdmin, api.RoleReader, api.RoleJoin:
		return nil
	case "":
		return invalid("token role is required: %s, %s or %s", api.RoleAdmin, api.RoleReader, api.RoleJoin)
	}
	return invalid("token role %q: use %s, %s or %s (daemons get their own credentials when they join)", req.Role, api.RoleAdmin, api.RoleReader, api.RoleJoin)
}

// admitDaemon decides, in the registration's transaction, whether caller
// may register the chunkserver or host (kind) name, whose row has ID
// existing (0: none yet), and whether it gets a credential now. A name
// that holds a credential takes only that credential; a new name, or one
// whose credential was revoked (or that registered before credentials
// existed), takes a join or admin token and is issued one.
func admitDaemon(ctx context.Context, tx pgx.Tx, kind, name string, existing int64, caller *principal) (issue bool, err error) {
	if caller == nil {
		return false, api.Errorf(api.CodeUnauthenticated, "registering %s %q needs a join token or its credential", kind, name)
	}
	held := false
	if existing != 0 {
		col := kind + "_id"
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_tokens WHERE `+col+` = $1)`, existing).Scan(&held); err != nil {
			return false, err
		}
	}
	switch {
	case held && caller.role == kind && caller.serverID == existing:
		return false, nil
	case held:
		return false, api.Errorf(api.CodePermissionDenied, "%s %q is registered: registering it again needs its own credential (kept in its data directory), not token %q", kind, name, caller.name)
	case caller.role == api.RoleJoin || caller.role == api.RoleAdmin:
		return true, nil
	}
	return false, api.Errorf(api.CodePermissionDenied, "registering %s %q needs a join token (chunkraid token create NAME --role join); token %q has role %s", kind, name, caller.name, caller.role)
}

// issueCredential makes the credential of chunkserver or host (kind) id.
func (st *store) issueCredential(ctx context.Context, tx pgx.Tx, kind, name string, id int64) (string, error) {
	secret, err := newTokenSecret()
	if err != nil {
		return "", err
	}
	// "kind:name": no operator token can be named so (tokenNameRE).
	_, err = tx.Exec(ctx, `INSERT INTO api_tokens (name, role, hash, `+kind+`_id) VALUES ($1, $2, $3, $4)`,
		kind+":"+name, kind, st.hashToken(secret), id)
	if err != nil {
		return "", fmt.Errorf("issue the %s's credential: %w", kind, err)
	}
	return secret, addEvents(ctx, tx, event{Kind: "credential_issued", Subject: kind + "/" + name,
		Message: fmt.Sprintf("%s %s joined and got its credential", kind, name)})
}

// createToken makes a token; its secret is in the answer and nowhere else.
func (st *store) createToken(ctx context.Context, req api.CreateTokenRequest) (*api.Token, error) {
	secret, err := newTokenSecret()
	if err != nil {
		return nil, err
	}
	t := &api.Token{Name: req.Name, Role: req.Role, Secret: secret}
	err = pgx.BeginFunc(ctx, st.db, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO api_tokens (name, role, hash) VALUES ($1, $2, $3) RETURNING created_at`,
			req.Name, req.Role, st.hashToken(secret)).Scan(&t.CreatedAt)
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == "api_tokens_pkey" {
			return api.Errorf(api.CodeAlreadyExists, "token %q already exists: revoke it first or choose another name", req.Name)
		}
		if err != nil {
			return err
		}
		return addEvents(ctx, tx, event{Kind: "token_created", Subject: "token/" + req.Name,
			Message: fmt.Sprintf("token %s created with role %s", req.Name, req.Role)})
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// listTokens lists the tokens, without their secrets, by name.
func (st *store) listTokens(ctx context.Context) ([]api.Token, error) {
	rows, err := st.db.Query(ctx, `SELECT name, role, created_at FROM api_tokens ORDER BY name`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.Token, error) {
		var t api.Token
		err := row.Scan(&t.Name, &t.Role, &t.CreatedAt)
		return t, err
	})
}

// revokeToken deletes a token. The last admin token cannot be revoked: the
// cluster would have no one left to manage it.
func (st *store) revokeToken(ctx context.Context, name string) error {
	return pgx.BeginFunc(ctx, st.db, func(tx pgx.Tx) error {
		var role string
		if err := tx.QueryRow(ctx, `DELETE FROM api_tokens WHERE name = $1 RETURNING role`, name).Scan(&role); err != nil {
			return notFound(err, "token %q does not exist (chunkraid token list shows the names)", name)
		}
		if role == api.RoleAdmin {
			var admins int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM api_tokens WHERE role = $1`, api.RoleAdmin).Scan(&admins); err != nil {
				return err
			}
			if admins == 0 {
				return api.Errorf(api.CodeConflict, "token %q is the last admin token: create another admin token before revoking it", name)
			}
		}
		return addEvents(ctx, tx, event{Kind: "token_revoked", Subject: "token/" + name,
			Message: fmt.Sprintf("token %s (%s) revoked", name, role)})
	})
}

// principal is who a request comes from: an operator's token, a join
// token, or a daemon's credential (serverID is its chunkserver or host).
type principal struct {
	name, role string
	serverID   int64
}

// lookupToken finds the token's row; nil if the metaserver knows no such
// token.
func (st *store) lookupToken(ctx context.Context, token string) (*principal, error) {
	if !strings.HasPrefix(token, tokenPrefix) {
		return nil, nil
	}
	var p principal
	err := st.db.QueryRow(ctx, `SELECT name, role, coalesce(chunkserver_id, host_id, 0) FROM api_tokens WHERE hash = $1`,
		st.hashToken(token)).Scan(&p.name, &p.role, &p.serverID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// ensureAdminToken creates the admin token if the cluster has no admin
// token (its first start, or an upgrade from a version without tokens) and
// hands it to show before the creation commits: a token nobody was shown
// is never created. It reports whether it created one.
func (st *store) ensureAdminToken(ctx context.Context, show func(name, secret string) error) (bool, error) {
	secret, err := newTokenSecret()
	if err != nil {
		return false, err
	}
	created := false
	err = pgx.BeginFunc(ctx, st.db, func(tx pgx.Tx) error {
		// One metaserver at a time decides: the lock is released at commit.
		if _, err := tx.Exec(ctx, `LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		var admins int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM api_tokens WHERE role = $1`, api.RoleAdmin).Scan(&admins); err != nil {
			return err
		}
		if admins > 0 {
			return nil
		}
		name := adminTokenName
		for i := 2; ; i++ {
			var taken bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_tokens WHERE name = $1)`, name).Scan(&taken); err != nil {
				return err
			}
			if !taken {
				break
			}
			name = fmt.Sprintf("%s-%d", adminTokenName, i)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO api_tokens (name, role, hash) VALUES ($1, $2, $3)`, name, api.RoleAdmin, st.hashToken(secret)); err != nil {
			return err
		}
		if err := addEvents(ctx, tx, event{Kind: "token_created", Subject: "token/" + name,
			Message: fmt.Sprintf("token %s created with role admin: the cluster had no admin token", name)}); err != nil {
			return err
		}
		created = true
		return show(name, secret)
	})
	return created && err == nil, err
}

// access is what a route asks of its caller.
type access int

// The daemons' routes (registration, heartbeats, chunk and volume
// assignments, reports) take no operator token; they will take the
// daemons' own credentials.
const (
	// accessRead: an operator token of any role.
	accessRead access = iota
	// accessAdmin: an admin token.
	accessAdmin
)

type principalKey struct{}

// authenticate admits a request that carries a token whose role has need
// (401 unauthenticated without a valid token, 403 permission_denied for a
// role that lacks it) and puts its principal in the request's context.
func (s *Server) authenticate(need access) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, ok := s.principalOrRefuse(w, r)
			if !ok {
				return
			}
			if p.role != api.RoleAdmin && p.role != api.RoleReader {
				s.writeError(w, r, api.Errorf(api.CodePermissionDenied, "%s %s is an operator route; token %q has role %s", r.Method, r.URL.Path, p.name, p.role))
				return
			}
			if need == accessAdmin && p.role != api.RoleAdmin {
				s.writeError(w, r, api.Errorf(api.CodePermissionDenied, "%s %s needs an admin token; token %q has role %s", r.Method, r.URL.Path, p.name, p.role))
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		})
	}
}

// principalOf finds who sent r by its bearer token.
func (s *Server) principalOf(r *http.Request) (*principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, api.Errorf(api.CodeUnauthenticated, "%s %s needs a token: send Authorization: Bearer <token>", r.Method, r.URL.Path)
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, api.Errorf(api.CodeUnauthenticated, "the Authorization header must be \"Bearer <token>\"")
	}
	p, err := s.st.lookupToken(r.Context(), strings.TrimSpace(token))
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, api.Errorf(api.CodeUnauthenticated, "the token is not valid: it was revoked, mistyped or belongs to another cluster")
	}
	return p, nil
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateTokenRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateCreateToken(req); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.st.createToken(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("token created", "name", t.Name, "role", t.Role, "by", callerName(r))
	s.writeJSON(w, http.StatusCreated, t)
}

// whoami answers who the request's token belongs to.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	p := callerOf(r)
	s.writeJSON(w, http.StatusOK, api.Principal{Name: p.name, Role: p.role})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	out, err := s.st.listTokens(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.writeJSON(w, http.StatusOK, orEmpty(out))
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	if err := s.st.revokeToken(r.Context(), name); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("token revoked", "name", name, "by", callerName(r))
	w.WriteHeader(http.StatusNoContent)
}

// identify puts the principal of a request in its context: any token the
// metaserver knows (401 without one); the daemons' routes decide which.
func (s *Server) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := s.principalOrRefuse(w, r); ok {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		}
	})
}

// principalOrRefuse finds who sent r, or answers it with the error (401
// with WWW-Authenticate for a missing or unknown token).
func (s *Server) principalOrRefuse(w http.ResponseWriter, r *http.Request) (*principal, bool) {
	p, err := s.principalOf(r)
	if err != nil {
		if api.ErrorCode(err) == api.CodeUnauthenticated {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chunkraid"`)
		}
		s.writeError(w, r, err)
		return nil, false
	}
	return p, true
}

// daemonOnly admits to the routes of chunkserver or host (kind) {id} only
// that daemon's credential (403 for any other token).
func (s *Server) daemonOnly(kind string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p := callerOf(r)
			id, err := parseID(kind, chi.URLParam(r, "id"))
			if err == nil && (p == nil || p.role != kind || p.serverID != id) {
				s.writeError(w, r, api.Errorf(api.CodePermissionDenied, "%s %s is %s %d's own route; token %q (role %s) may not call it", r.Method, r.URL.Path, kind, id, p.name, p.role))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// callerOf is the principal of r, nil if it carried no token.
func callerOf(r *http.Request) *principal {
	p, _ := r.Context().Value(principalKey{}).(*principal)
	return p
}

// callerName names the principal of an authenticated request.
func callerName(r *http.Request) string {
	if p, ok := r.Context().Value(principalKey{}).(*principal); ok {
		return p.name
	}
	return ""
}
