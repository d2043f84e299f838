package metaserver

import (
	"bytes"
	"context"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// publicRoutes are the routes anyone may call. Every other route needs a
// token (the operator routes) or is a daemon's.
var publicRoutes = []string{"GET /healthz"}

// daemonRoutes are the routes the daemons call: registration, heartbeats,
// assignments and reports.
var daemonRoutes = []string{
	"GET /api/v1/cluster",
	"POST /api/v1/chunkservers",
	"POST /api/v1/chunkservers/{id}/heartbeat",
	"GET /api/v1/chunkservers/{id}/chunks",
	"DELETE /api/v1/chunkservers/{id}/chunks/{chunk}",
	"POST /api/v1/hosts",
	"POST /api/v1/hosts/{id}/heartbeat",
	"GET /api/v1/hosts/{id}/volumes",
	"POST /api/v1/hosts/{id}/report",
}

// adminReads are the operator routes that change nothing but still need an
// admin: they are about credentials.
var adminReads = []string{"GET /api/v1/tokens"}

// TestRouteTableRequiresTokens walks every route of the router, so that a
// route cannot be born open: each is public or a daemon's by the lists
// above, or it refuses a request without a token and with a token the
// metaserver does not know (401 unauthenticated), and, if it changes
// anything (or is in adminReads), a reader's token (403 permission_denied);
// a reader may call the others and an admin every one.
func TestRouteTableRequiresTokens(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	reader, err := ts.Client.CreateToken(t.Context(), api.CreateTokenRequest{Name: "ro", Role: api.RoleReader})
	if err != nil {
		t.Fatal(err)
	}
	param := regexp.MustCompile(`\{[a-z]+\}`)
	var walked, operator []string
	err = chi.Walk(ts.handler.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		route = strings.TrimSuffix(route, "/")
		walked = append(walked, method+" "+route)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range slices.Concat(publicRoutes, daemonRoutes) {
		if !slices.Contains(walked, r) {
			t.Errorf("%s is listed as public or a daemon's but is not a route", r)
		}
	}
	for _, r := range walked {
		if slices.Contains(publicRoutes, r) || slices.Contains(daemonRoutes, r) {
			continue
		}
		operator = append(operator, r)
		method, path, _ := strings.Cut(r, " ")
		url := ts.URL + param.ReplaceAllString(path, "x1")
		mutating := method != http.MethodGet || slices.Contains(adminReads, r)
		for _, c := range []struct {
			who, token     string
			status         int
			code           string
			deniedOrRefuse bool
		}{
			{"no token", "", 401, api.CodeUnauthenticated, true},
			{"an unknown token", "chunkraid_notatoken", 401, api.CodeUnauthenticated, true},
			{"a token of another scheme", "Basic YWRtaW46YWRtaW4=", 401, api.CodeUnauthenticated, true},
			{"a reader", reader.Secret, 403, api.CodePermissionDenied, mutating},
			{"a reader", reader.Secret, 0, "", !mutating},
			{"an admin", ts.Token, 0, "", true},
		} {
			if !c.deniedOrRefuse {
				continue
			}
			req, err := http.NewRequestWithContext(t.Context(), method, url, strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case strings.HasPrefix(c.token, "Basic "):
				req.Header.Set("Authorization", c.token)
			case c.token != "":
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			switch {
			case c.status != 0 && resp.StatusCode != c.status:
				t.Errorf("%s with %s: HTTP %d, want %d %s", r, c.who, resp.StatusCode, c.status, c.code)
			case c.status == 0 && (resp.StatusCode == 401 || resp.StatusCode == 403):
				t.Errorf("%s with %s: HTTP %d, want it admitted", r, c.who, resp.StatusCode)
			case c.status == 401 && resp.Header.Get("WWW-Authenticate") == "":
				t.Errorf("%s with %s: 401 without WWW-Authenticate", r, c.who)
			}
		}
	}
	if len(operator) < 15 {
		t.Fatalf("only %d operator routes walked: %v", len(operator), operator)
	}
	t.Logf("%d routes walked: %d public, %d the daemons', %d operator routes refused without a valid token (and, if mutating, to a reader)",
		len(walked), len(publicRoutes), len(daemonRoutes), len(operator))
}

// TestTokens: an admin creates, lists and revokes tokens; a token's secret
// appears once, in the answer to its creation, and is stored only hashed;
// a revoked token is refused at once; the last admin token stays.
func TestTokens(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	ro, err := ts.Client.CreateToken(ctx, api.CreateTokenRequest{Name: "dash", Role: api.RoleReader})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ro.Secret, tokenPrefix) || len(ro.Secret) != len(tokenPrefix)+43 || ro.Role != api.RoleReader {
		t.Fatalf("created token %+v", ro)
	}
	readerClient := api.NewClient(ts.URL, nil).WithToken(ro.Secret)
	if _, err := readerClient.ListVolumes(ctx); err != nil {
		t.Fatalf("a reader lists volumes: %v", err)
	}
	if _, err := readerClient.CreateToken(ctx, api.CreateTokenRequest{Name: "mine", Role: api.RoleAdmin}); !api.IsPermissionDenied(err) {
		t.Fatalf("a reader creates an admin token: %v, want permission_denied", err)
	}
	list, err := ts.Client.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tk := range list {
		names = append(names, tk.Name+":"+tk.Role)
		if tk.Secret != "" {
			t.Errorf("token %s listed with its secret", tk.Name)
		}
	}
	if !slices.Equal(names, []string{"admin:admin", "dash:reader"}) {
		t.Fatalf("tokens %v", names)
	}
	for _, tc := range []struct {
		req  api.CreateTokenRequest
		code string
	}{
		{api.CreateTokenRequest{Name: "dash", Role: api.RoleReader}, api.CodeAlreadyExists},
		{api.CreateTokenRequest{Name: "x", Role: "root"}, api.CodeInvalidArgument},
		{api.CreateTokenRequest{Name: "x"}, api.CodeInvalidArgument},
		{api.CreateTokenRequest{Name: "Bad Name", Role: api.RoleReader}, api.CodeInvalidArgument},
	} {
		if _, err := ts.Client.CreateToken(ctx, tc.req); api.ErrorCode(err) != tc.code {
			t.Errorf("create %+v: %v, want %s", tc.req, err, tc.code)
		}
	}
	if n := ts.queryInt(t, `SELECT count(*) FROM api_tokens WHERE position(convert_to($1, 'UTF8') in hash) > 0 OR name = $1`, ro.Secret); n != 0 {
		t.Fatal("a token's secret is stored")
	}
	if err := ts.Client.RevokeToken(ctx, "dash"); err != nil {
		t.Fatal(err)
	}
	if _, err := readerClient.ListVolumes(ctx); !api.IsUnauthenticated(err) {
		t.Fatalf("a revoked token lists volumes: %v, want unauthenticated", err)
	}
	if err := ts.Client.RevokeToken(ctx, "dash"); !api.IsNotFound(err) {
		t.Fatalf("revoke a revoked token: %v", err)
	}
	if err := ts.Client.RevokeToken(ctx, "admin"); !api.IsConflict(err) {
		t.Fatalf("revoke the last admin token: %v, want conflict", err)
	}
	second, err := ts.Client.CreateToken(ctx, api.CreateTokenRequest{Name: "ops", Role: api.RoleAdmin})
	if err != nil {
		t.Fatal(err)
	}
	if err := api.NewClient(ts.URL, nil).WithToken(second.Secret).RevokeToken(ctx, "admin"); err != nil {
		t.Fatalf("another admin revokes the first admin token: %v", err)
	}
	if _, err := ts.Client.ListVolumes(ctx); !api.IsUnauthenticated(err) {
		t.Fatalf("the revoked admin token: %v", err)
	}
}

// TestAdminTokenShownOnce: without a token file the first start prints the
// admin token on standard output, once; a restart prints nothing and the
// token still works. With the file, the token is in it (mode 0600).
func TestAdminTokenShownOnce(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	url := newSchema(t)
	first := startServerOut(t, Config{DatabaseURL: url}, &out)
	m := regexp.MustCompile(`export CHUNKRAID_TOKEN=(chunkraid_[A-Za-z0-9_-]{43})\n`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("first start printed %q, want the admin token", out.String())
	}
	if _, err := api.NewClient(first.URL, nil).WithToken(m[1]).ListTokens(t.Context()); err != nil {
		t.Fatalf("the printed token: %v", err)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	second := startServerOut(t, Config{DatabaseURL: url}, &out)
	if out.Len() != 0 {
		t.Fatalf("a restart printed %q", out.String())
	}
	if _, err := api.NewClient(second.URL, nil).WithToken(m[1]).ListTokens(context.Background()); err != nil {
		t.Fatalf("the admin token after a restart: %v", err)
	}
}
