package metaserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/pglocal"
)

// testDatabaseURL is the database every test makes its schema in.
var testDatabaseURL string

// TestMain starts one private PostgreSQL server for the package, or uses
// $CHUNKRAID_TEST_DATABASE_URL.
func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run() // the tests that need PostgreSQL skip (newSchema)
	}
	if u := os.Getenv("CHUNKRAID_TEST_DATABASE_URL"); u != "" {
		testDatabaseURL = u
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Under /tmp/chunkraid-test-pg-*; servers of killed earlier runs are reaped.
	pg, err := pglocal.StartTemp(ctx, "chunkraid-test-pg", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests need PostgreSQL (run make deps):", err)
		return 1
	}
	defer pg.Stop()
	if err := pg.CreateDatabase(ctx, "chunkraid_test"); err != nil {
		fmt.Fprintln(os.Stderr, "metaserver tests:", err)
		return 1
	}
	testDatabaseURL = pg.URL("chunkraid_test")
	return m.Run()
}

// newSchema creates a schema of its own for the test, dropped at cleanup,
// and returns a database URL whose search_path selects it.
func newSchema(t *testing.T) string {
	t.Helper()
	if testDatabaseURL == "" {
		t.Skip("starts PostgreSQL: not in -short (make test runs it)")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testDatabaseURL)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, testDatabaseURL)
		if err != nil {
			t.Errorf("drop schema: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	u, err := url.Parse(testDatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// testServer is a metaserver running for one test.
type testServer struct {
	*Server
	URL   string // base URL of the API
	DBURL string
	// Transport reaches the API: over TLS verified with the cluster CA
	// unless the server runs InsecureHTTP.
	Transport http.RoundTripper
	// Token is the cluster's admin token; Client sends it.
	Token  string
	Client *api.Client
	// HTTP sends requests as Client does: the admin token, or a daemon's
	// credential on that daemon's routes (daemonCreds).
	HTTP *http.Client
	// Stop cancels Run and returns its result; later calls return the same.
	Stop func() error
}

// logger returns a logger that writes to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// startServer runs a metaserver on a fresh schema (or cfg.DatabaseURL if
// set) on a loopback port until the test ends; Run must then return nil.
func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	if cfg.DatabaseURL == "" {
		cfg.DatabaseURL = newSchema(t)
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = 64 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	if !cfg.InsecureHTTP && cfg.CAFile == "" {
		cfg.CAFile = filepath.Join(t.TempDir(), "ca.pem")
	}
	var creds *daemonCreds
	if cfg.AdminTokenFile == "" && cfg.Stdout == nil {
		cfg.AdminTokenFile, creds = clusterFor(t, cfg.DatabaseURL)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var (
		once    sync.Once
		stopErr error
	)
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(20 * time.Second):
				stopErr = errors.New("Run did not return 20s after cancel")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		done <- err // for stop, called at cleanup
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("metaserver not ready after 30s")
	}
	base := "http://" + s.Addr().String()
	rt := http.DefaultTransport
	if !cfg.InsecureHTTP {
		ca, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			t.Fatalf("the cluster CA: %v", err)
		}
		tc, err := pki.ClientConfig(ca, pki.Metaserver)
		if err != nil {
			t.Fatal(err)
		}
		base = "https://" + s.Addr().String()
		tr := &http.Transport{TLSClientConfig: tc}
		t.Cleanup(tr.CloseIdleConnections)
		rt = tr
	}
	ts := &testServer{Server: s, URL: base, DBURL: cfg.DatabaseURL, Transport: rt, Client: api.NewClient(base, &http.Client{Transport: rt}), Stop: stop}
	if cfg.AdminTokenFile != "" {
		data, err := os.ReadFile(cfg.AdminTokenFile)
		if err != nil {
			t.Fatalf("the admin token of the test's cluster: %v", err)
		}
		ts.Token = strings.TrimSpace(string(data))
		creds.mu.Lock()
		creds.admin = ts.Token
		creds.mu.Unlock()
		ts.HTTP = &http.Client{Transport: credsTransport{creds, rt}}
		ts.Client = api.NewClient(base, ts.HTTP)
	}
	return ts
}

// NewClient is a client of the test server with token.
func (ts *testServer) NewClient(token string) *api.Client {
	return api.NewClient(ts.URL, &http.Client{Transport: ts.Transport}).WithToken(token)
}

// daemonCreds is the transport of a test server's Client: it plays every
// daemon of the test, each with its own credential. A registration is sent
// with the name's credential once it has one (with the admin token before,
// which admits a new name and gets its credential), a daemon's route with
// that daemon's credential, every other request with the admin token.
type daemonCreds struct {
	mu    sync.Mutex
	admin string
	creds map[string]string // "chunkserver:NAME" and "chunkserver#ID" (or host) → credential
}

var daemonRouteRE = regexp.MustCompile(`^/api/v1/(chunkservers|hosts)(?:/([0-9]+)(?:/.*)?)?$`)

// credsTransport sends requests as d's daemons, over next.
type credsTransport struct {
	d    *daemonCreds
	next http.RoundTripper
}

func (c credsTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return c.d.roundTrip(r, c.next)
}

func (d *daemonCreds) roundTrip(r *http.Request, next http.RoundTripper) (*http.Response, error) {
	r = r.Clone(r.Context())
	var register string // "kind:name" of a registration
	m := daemonRouteRE.FindStringSubmatch(r.URL.Path)
	kind := ""
	if m != nil {
		kind = strings.TrimSuffix(m[1], "s")
	}
	d.mu.Lock()
	token := d.admin
	switch {
	case m != nil && m[2] == "" && r.Method == http.MethodPost:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			d.mu.Unlock()
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var req struct{ Name string }
		_ = json.Unmarshal(body, &req)
		register = kind + ":" + req.Name
		if c, ok := d.creds[register]; ok {
			token = c
		}
	case m != nil && m[2] != "":
		if c, ok := d.creds[kind+"#"+m[2]]; ok {
			token = c
		}
	}
	d.mu.Unlock()
	r.Header.Set("Authorization", "Bearer "+token)
	resp, err := next.RoundTrip(r)
	if err != nil || register == "" || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var got struct {
		ID         int64
		Credential string
	}
	if json.Unmarshal(body, &got) == nil {
		d.mu.Lock()
		if got.Credential != "" {
			d.creds[register] = got.Credential
		}
		if c, ok := d.creds[register]; ok {
			d.creds[fmt.Sprintf("%s#%d", kind, got.ID)] = c
		}
		d.mu.Unlock()
	}
	return resp, nil
}

// startServerOut is startServer with the admin token shown on w instead of
// in a file (ts.Token is then "").
func startServerOut(t *testing.T, cfg Config, w io.Writer) *testServer {
	cfg.Stdout = w
	return startServer(t, cfg)
}

var clusters struct {
	sync.Mutex
	byURL map[string]testCluster
}

type testCluster struct {
	tokenFile string
	creds     *daemonCreds
}

// clusterFor is the admin token file and the daemons' credentials of the
// cluster at dbURL: every server a test starts on one database shares them
// (the first writes the file).
func clusterFor(t *testing.T, dbURL string) (string, *daemonCreds) {
	clusters.Lock()
	defer clusters.Unlock()
	if clusters.byURL == nil {
		clusters.byURL = map[string]testCluster{}
	}
	c, ok := clusters.byURL[dbURL]
	if !ok {
		c = testCluster{tokenFile: filepath.Join(t.TempDir(), "admin.token"), creds: &daemonCreds{creds: map[string]string{}}}
		clusters.byURL[dbURL] = c
	}
	return c.tokenFile, c.creds
}

// exec runs SQL directly on the test server's schema.
func (ts *testServer) exec(t *testing.T, sql string, args ...any) error {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// queryInt runs a query returning one integer on the test server's schema.
func (ts *testServer) queryInt(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// addChunkserver registers a chunkserver with one disk of capacity bytes
// (all free) and returns its ID.
func (ts *testServer) addChunkserver(t *testing.T, name, faultDomain string, capacity int64) int64 {
	t.Helper()
	resp, err := ts.Client.RegisterChunkserver(t.Context(), api.RegisterChunkserverRequest{
		Name: name, Addr: "127.0.0.1:" + fmt.Sprint(10000+len(name)), FaultDomain: faultDomain,
		Disks: []api.DiskInfo{{Path: "/srv/" + name, CapacityBytes: capacity, FreeBytes: capacity}},
	})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return resp.ID
}

// addHost registers a host and returns its ID.
func (ts *testServer) addHost(t *testing.T, name string) int64 {
	t.Helper()
	resp, err := ts.Client.RegisterHost(t.Context(), api.RegisterHostRequest{Name: name, ISCSIAddr: "127.0.0.1:3260"})
	if err != nil {
		t.Fatalf("register host %s: %v", name, err)
	}
	return resp.ID
}

// wantCode fails the test unless err is an *api.Error with code and status.
func wantCode(t *testing.T, err error, code string, status int) *api.Error {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want an API error %s", err, code)
	}
	if ae.Code != code || ae.Status != status {
		t.Fatalf("got %s (HTTP %d): %s; want %s (HTTP %d)", ae.Code, ae.Status, ae.Message, code, status)
	}
	return ae
}

const gib = int64(1) << 30

// chunkserverReq is a valid registration with one 1 GiB disk.
func chunkserverReq(name string) api.RegisterChunkserverRequest {
	return api.RegisterChunkserverRequest{Name: name, Addr: "127.0.0.1:10809",
		Disks: []api.DiskInfo{{Path: "/srv/" + name, CapacityBytes: gib, FreeBytes: gib}}}
}

// queryInts runs a query returning one integer array on the test server's schema.
func (ts *testServer) queryInts(t *testing.T, sql string, args ...any) []int64 {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var out []int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}
