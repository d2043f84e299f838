package metaserver

import (
	"bytes"
	"context"
	"encoding/json"
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

// daemonRoutes are the routes the daemons call with their join token or
// credential: registration, heartbeats, assignments and reports.
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
	"POST /api/v1/hosts/{id}/snapshots",
	"POST /api/v1/hosts/{id}/snapshot-exports",
}

// adminReads are the operator routes that change nothing but still need an
// admin: they are about credentials.
var adminReads = []string{"GET /api/v1/tokens"}

// TestRouteTableRequiresTokens walks every route of the router, so that a
// route cannot be born open: each is public by the list above, or refuses
// a request without a token and with an unknown one (401); a daemon's
// route (TestDaemonCredentials has the rest), or it refuses a request without a token and with a token the
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
	join, err := ts.Client.CreateToken(t.Context(), api.CreateTokenRequest{Name: "j", Role: api.RoleJoin})
	if err != nil {
		t.Fatal(err)
	}
	host, err := ts.NewClient(join.Secret).RegisterHost(t.Context(), api.RegisterHostRequest{Name: "h", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil {
		t.Fatal(err)
	}
	param := regexp.MustCompile(`\{[a-z]+\}`)
	var walked, operator []string
	err = chi.Walk(ts.router.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
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
	for _, r := range daemonRoutes {
		method, path, _ := strings.Cut(r, " ")
		for _, token := range []string{"", "chunkraid_notatoken"} {
			code, e := rawCall(t, ts.Transport, token, method, ts.URL+param.ReplaceAllString(path, "1"), `{}`)
			if code != 401 || e.Code != api.CodeUnauthenticated {
				t.Errorf("%s with token %q: HTTP %d %s, want 401 unauthenticated", r, token, code, e.Code)
			}
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
			{"a join token", join.Secret, 403, api.CodePermissionDenied, true},
			{"a host's credential", host.Credential, 403, api.CodePermissionDenied, true},
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
			resp, err := (&http.Client{Transport: ts.Transport}).Do(req)
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
	t.Logf("%d routes walked: %d public, %d the daemons', %d operator routes refused without a valid token, to a join token and to a daemon's credential (and, if mutating, to a reader)",
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
	readerClient := ts.NewClient(ro.Secret)
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
	if err := ts.NewClient(second.Secret).RevokeToken(ctx, "admin"); err != nil {
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
	if _, err := first.NewClient(m[1]).ListTokens(t.Context()); err != nil {
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
	if _, err := second.NewClient(m[1]).ListTokens(context.Background()); err != nil {
		t.Fatalf("the admin token after a restart: %v", err)
	}
}

// TestDaemonCredentials: a join token admits a new chunkserver or host,
// which gets a credential of its own; a registered name takes only its
// credential; a daemon's routes take only its own credential; neither a
// join token nor a daemon's credential opens an operator route; the cluster
// secret goes to chunkservers only.
func TestDaemonCredentials(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	join, err := ts.Client.CreateToken(ctx, api.CreateTokenRequest{Name: "rack1", Role: api.RoleJoin})
	if err != nil {
		t.Fatal(err)
	}
	as := func(token string) *api.Client { return ts.NewClient(token) }
	joiner := as(join.Secret)
	cs, err := joiner.RegisterChunkserver(ctx, chunkserverReq("cs-a"))
	if err != nil {
		t.Fatalf("a new chunkserver with a join token: %v", err)
	}
	if !strings.HasPrefix(cs.Credential, tokenPrefix) || cs.ClusterSecret == "" {
		t.Fatalf("registration answer %+v", cs)
	}
	h, err := joiner.RegisterHost(ctx, api.RegisterHostRequest{Name: "h-a", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil || !strings.HasPrefix(h.Credential, tokenPrefix) {
		t.Fatalf("a new host with a join token: %+v, %v", h, err)
	}
	h2, err := joiner.RegisterHost(ctx, api.RegisterHostRequest{Name: "h-b", ISCSIAddr: "127.0.0.1:3261"})
	if err != nil {
		t.Fatal(err)
	}
	csc, hc := as(cs.Credential), as(h.Credential)

	// The attacks, each refused.
	req := chunkserverReq("cs-a")
	req.Addr = "127.0.0.1:6666"
	if _, err := joiner.RegisterChunkserver(ctx, req); !api.IsPermissionDenied(err) {
		t.Errorf("re-registering cs-a elsewhere with the join token: %v, want permission_denied", err)
	}
	if _, err := ts.Client.RegisterHost(ctx, api.RegisterHostRequest{Name: "h-a", ISCSIAddr: "127.0.0.1:6666"}); err == nil {
		t.Error("re-registering h-a elsewhere with the admin token succeeded")
	}
	if _, err := hc.RegisterHost(ctx, api.RegisterHostRequest{Name: "h-b", ISCSIAddr: "127.0.0.1:6666"}); !api.IsPermissionDenied(err) {
		t.Errorf("h-a re-registering h-b: %v, want permission_denied", err)
	}
	if _, err := hc.HostVolumes(ctx, h2.ID, 0, 0); !api.IsPermissionDenied(err) {
		t.Errorf("h-a reading h-b's volumes: %v, want permission_denied", err)
	}
	if err := hc.HostReport(ctx, h2.ID, api.HostReport{}); !api.IsPermissionDenied(err) {
		t.Errorf("h-a reporting for h-b: %v, want permission_denied", err)
	}
	if err := csc.HostHeartbeat(ctx, h.ID); !api.IsPermissionDenied(err) {
		t.Errorf("a chunkserver's credential on a host's route: %v, want permission_denied", err)
	}
	if _, err := hc.ChunkAssignments(ctx, cs.ID, 0, 0); !api.IsPermissionDenied(err) {
		t.Errorf("a host reading a chunkserver's chunks: %v, want permission_denied", err)
	}
	for name, c := range map[string]*api.Client{"a join token": joiner, "a chunkserver": csc, "a host": hc} {
		if _, err := c.ListVolumes(ctx); !api.IsPermissionDenied(err) {
			t.Errorf("%s listing volumes: %v, want permission_denied", name, err)
		}
		if _, err := c.CreateToken(ctx, api.CreateTokenRequest{Name: "x", Role: api.RoleAdmin}); !api.IsPermissionDenied(err) {
			t.Errorf("%s creating a token: %v, want permission_denied", name, err)
		}
	}

	// Their own routes, with their own credentials.
	if _, err := csc.RegisterChunkserver(ctx, chunkserverReq("cs-a")); err != nil {
		t.Errorf("cs-a registering again with its credential: %v", err)
	}
	if err := csc.ChunkserverHeartbeat(ctx, cs.ID, api.ChunkserverHeartbeat{Disks: chunkserverReq("cs-a").Disks}); err != nil {
		t.Errorf("cs-a's heartbeat: %v", err)
	}
	again, err := hc.RegisterHost(ctx, api.RegisterHostRequest{Name: "h-a", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil || again.Credential != "" {
		t.Errorf("h-a registering again with its credential: %+v, %v (no new credential)", again, err)
	}
	if _, err := hc.HostVolumes(ctx, h.ID, 0, 0); err != nil {
		t.Errorf("h-a's volumes: %v", err)
	}
	raw, err := json.Marshal(again)
	if err != nil {
		t.Fatal(err)
	}
	if secret := ts.clusterSecret(t); bytes.Contains(raw, []byte(secret)) || bytes.Contains(raw, []byte("cluster_secret")) {
		t.Errorf("a host's registration answer carries the cluster secret: %s", raw)
	}

	// A revoked credential: the daemon is out; a join token admits the name
	// again with a new credential.
	if err := ts.Client.RevokeToken(ctx, "host:h-a"); err != nil {
		t.Fatal(err)
	}
	if err := hc.HostHeartbeat(ctx, h.ID); !api.IsUnauthenticated(err) {
		t.Errorf("a revoked credential: %v, want unauthenticated", err)
	}
	back, err := joiner.RegisterHost(ctx, api.RegisterHostRequest{Name: "h-a", ISCSIAddr: "127.0.0.1:3260"})
	if err != nil || back.Credential == "" || back.Credential == h.Credential || back.ID != h.ID {
		t.Errorf("h-a rejoining after its credential was revoked: %+v, %v", back, err)
	}
}
