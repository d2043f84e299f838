package metaserver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/go-chi/chi/v5"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// loadOpenAPI loads the served description with kin-openapi and validates
// it as an OpenAPI 3 document.
func loadOpenAPI(t *testing.T, serverURL string) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openAPIDocument())
	if err != nil {
		t.Fatalf("loading the OpenAPI document: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: serverURL}}
	return doc
}

// TestOpenAPIRoutes walks the router: every route is documented, and
// every documented operation is a route.
func TestOpenAPIRoutes(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	doc := loadOpenAPI(t, ts.URL)
	var routes []string
	err := chi.Walk(ts.router.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes = append(routes, method+" "+strings.TrimSuffix(route, "/"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	sort.Strings(routes)
	sort.Strings(documented)
	for _, r := range routes {
		if !slices.Contains(documented, r) {
			t.Errorf("route %s is not in the OpenAPI document (add it to operations in openapi.go)", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(routes, d) {
			t.Errorf("the OpenAPI document has %s, which is not a route", d)
		}
	}
	t.Logf("%d routes, %d documented operations, %d schemas", len(routes), len(documented), len(doc.Components.Schemas))
}

// validator checks every answer that passes through it against the
// OpenAPI document, and counts the operations it saw.
type validator struct {
	t      *testing.T
	next   http.RoundTripper
	router routers.Router
	mu     sync.Mutex
	seen   map[string]int
	failed []string
}

func (v *validator) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		v.fail("%s %s: no documented operation: %v", req.Method, req.URL.Path, err)
		return resp, nil
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
		Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(req.Context(), in); err != nil {
		v.fail("%s %s answered %d, which the document does not describe: %v\n%s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
	v.mu.Lock()
	v.seen[req.Method+" "+route.Path]++
	v.mu.Unlock()
	return resp, nil
}

func (v *validator) fail(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.failed = append(v.failed, fmt.Sprintf(format, args...))
}

// TestOpenAPIResponses drives every operation of the API through a real
// metaserver (PostgreSQL behind it) and validates each answer, success or
// error, against the document with kin-openapi.
func TestOpenAPIResponses(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	doc := loadOpenAPI(t, ts.URL)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	// The validator catches an answer that is not what the document says.
	bad := &validator{t: t, router: router, seen: map[string]int{}, next: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(`{"name": 7, "size_bytes": "big"}`)), Request: r}, nil
	})}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/api/v1/volumes/x", nil)
	if _, err := bad.RoundTrip(req); err != nil || len(bad.failed) != 1 {
		t.Fatalf("a volume with a numeric name passed the validator: %v %v", err, bad.failed)
	}

	v := &validator{t: t, next: ts.HTTP.Transport, router: router, seen: map[string]int{}}
	hc := &http.Client{Transport: v}
	c := api.NewClient(ts.URL, hc)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// The daemons.
	var csIDs []int64
	for i, n := range []string{"cs-a", "cs-b", "cs-c"} {
		csr, _, err := pki.NewRequest("chunkserver " + n)
		must(err)
		resp, err := c.RegisterChunkserver(ctx, api.RegisterChunkserverRequest{Name: n, Addr: fmt.Sprintf("127.0.0.1:1080%d", i),
			ControlAddr: fmt.Sprintf("127.0.0.1:1180%d", i), ControlCSR: string(csr),
			Disks: []api.DiskInfo{{Path: "/srv/" + n, CapacityBytes: 10 * gib, FreeBytes: 10 * gib}}})
		must(err)
		csIDs = append(csIDs, resp.ID)
		must(c.ChunkserverHeartbeat(ctx, resp.ID, api.ChunkserverHeartbeat{Disks: []api.DiskInfo{{Path: "/srv/" + n, CapacityBytes: 10 * gib, FreeBytes: 9 * gib}}}))
	}
	hresp, err := c.RegisterHost(ctx, api.RegisterHostRequest{Name: "h1", ISCSIAddr: "127.0.0.1:3260"})
	must(err)
	must(c.HostHeartbeat(ctx, hresp.ID))
	_, err = c.Cluster(ctx)
	must(err)

	// Volumes, with the errors an operator meets.
	vol, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v1", SizeBytes: 128 << 20, Layout: "mirror:2", Host: "h1"})
	must(err)
	_, err = c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v1", SizeBytes: 128 << 20, Layout: "mirror:2"})
	wantCode(t, err, api.CodeAlreadyExists, http.StatusConflict)
	_, err = c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "bad name!", SizeBytes: 1, Layout: "raid0"})
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	_, err = c.GetVolume(ctx, "nosuch")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound)
	_, err = c.ListVolumes(ctx)
	must(err)
	_, err = c.GetVolume(ctx, "v1")
	must(err)
	hv, err := c.HostVolumes(ctx, hresp.ID, 0, 0)
	must(err)
	for _, id := range csIDs {
		_, err := c.ChunkAssignments(ctx, id, 0, 0)
		must(err)
	}
	rep := api.VolumeReport{Name: "v1", Epoch: vol.Epoch, Incarnation: hresp.Incarnation, Seq: 1,
		Stats: &api.VolumeStats{WindowSeconds: 5, WriteIOPS: 10, WriteBytesPerSec: 40960, WriteLatencyMeanUs: 500, WriteLatencyP99Us: 800}}
	for _, s := range hv.Volumes[0].Sets {
		sr := api.SetReport{Index: s.Index}
		for _, m := range s.Members {
			sr.Members = append(sr.Members, api.MemberReport{ChunkID: m.ChunkID, State: api.MemberInSync})
		}
		rep.Sets = append(rep.Sets, sr)
	}
	must(c.HostReport(ctx, hresp.ID, api.HostReport{Volumes: []api.VolumeReport{rep}}))
	_, err = c.ListChunks(ctx, "v1")
	must(err)
	_, err = c.ListDisks(ctx)
	must(err)
	_, err = c.ListChunkservers(ctx)
	must(err)
	_, err = c.ListHosts(ctx)
	must(err)
	_, err = c.SetVolumeCHAP(ctx, "v1", api.SetCHAPRequest{User: "alice", Secret: "s3cret-s3cret"})
	must(err)
	must(c.ClearVolumeCHAP(ctx, "v1"))
	_, err = c.SetVolumeQoS(ctx, "v1", api.QoS{IOPS: api.Limit{Rate: 1000}})
	must(err)
	must(c.ClearVolumeQoS(ctx, "v1"))
	// A snapshot: this test plays the volume's host.
	hostDoes := func(state, op string) chan error {
		done := make(chan error, 1)
		go func() {
			for {
				snaps, err := c.ListSnapshots(ctx, "v1")
				if err != nil {
					done <- err
					return
				}
				if len(snaps) == 1 && snaps[0].State == state {
					done <- c.ReportSnapshot(ctx, hresp.ID, api.SnapshotReport{Volume: "v1", Epoch: vol.Epoch, Name: "s1", Op: op, PauseMicros: 1500})
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		return done
	}
	host := hostDoes(api.SnapshotPending, api.SnapshotOpCreate)
	_, err = c.CreateSnapshot(ctx, "v1", "s1")
	must(err)
	must(<-host)
	_, err = c.HostSnapshotExports(ctx, hresp.ID, "v1", "s1")
	must(err)
	_, err = c.AttachSnapshot(ctx, "v1", "s1", "h1")
	must(err)
	_, err = c.HostVolumes(ctx, hresp.ID, 0, 0)
	must(err)
	must(c.DetachSnapshot(ctx, "v1", "s1"))
	_, err = c.CloneVolume(ctx, "v1", "s1", "v1-clone", "")
	must(err)
	_, err = c.FlattenVolume(ctx, "v1")
	wantCode(t, err, api.CodeConflict, http.StatusConflict) // not a clone
	must(c.DeleteVolume(ctx, "v1-clone"))
	host = hostDoes(api.SnapshotDeleting, api.SnapshotOpDelete)
	must(c.DeleteSnapshot(ctx, "v1", "s1"))
	must(<-host)
	_, err = c.AllowInitiators(ctx, "v1", "iqn.2026-01.test:vm1")
	must(err)
	_, err = c.ReadExports(ctx, "v1")
	must(err)
	_, err = c.VolumeStats(ctx, "v1")
	must(err)
	_, err = c.ResizeVolume(ctx, "v1", 192<<20)
	must(err)
	_, err = c.ResizeVolume(ctx, "v1", 64<<20)
	wantCode(t, err, api.CodeInvalidArgument, http.StatusBadRequest)
	err = c.RollbackVolume(ctx, "v1", "s1")
	wantCode(t, err, api.CodeConflict, http.StatusConflict) // attached
	must(c.DetachVolume(ctx, "v1"))
	err = c.RollbackVolume(ctx, "v1", "s1")
	wantCode(t, err, api.CodeNotFound, http.StatusNotFound) // deleted above
	_, err = c.AttachVolume(ctx, "v1", "h1")
	must(err)
	_, err = c.ListEvents(ctx, "v1", 0, 100)
	must(err)

	// Tokens, certificates, who am I.
	tok, err := c.CreateToken(ctx, api.CreateTokenRequest{Name: "ro", Role: api.RoleReader})
	must(err)
	_, err = c.ListTokens(ctx)
	must(err)
	_, err = c.Whoami(ctx)
	must(err)
	_, err = c.Changes(ctx, 0, 0)
	must(err)
	csr, _, err := pki.NewRequest("metaserver")
	must(err)
	_, err = c.IssueCertificate(ctx, api.IssueCertificateRequest{Role: api.RoleMetaserverCert, CSR: string(csr), Names: []string{"meta.example"}})
	must(err)
	reader := api.NewClient(ts.URL, &http.Client{Transport: &validator{t: t, next: ts.Transport, router: router, seen: v.seen}}).WithToken(tok.Secret)
	_, err = reader.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v2", SizeBytes: 64 << 20, Layout: "mirror:2"})
	wantCode(t, err, api.CodePermissionDenied, http.StatusForbidden)
	must(c.RevokeToken(ctx, "ro"))
	must(c.Health(ctx))
	for _, path := range []string{"/metrics", "/api/v1/openapi.json"} {
		resp, err := hc.Get(ts.URL + path)
		must(err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}

	// A drain of a chunkserver of the mirror volume v1 (its members move
	// once the leader runs; the volume is deleted below anyway).
	if _, err := c.DrainChunkserver(ctx, "cs-c"); err != nil {
		t.Fatalf("drain: %v", err)
	}
	// A chunkserver that is online is not forgotten (an error answer).
	if err := c.RemoveChunkserver(ctx, "cs-c"); !api.IsConflict(err) {
		t.Fatalf("removing an online chunkserver: %v", err)
	}
	// A chunk told to go, and the volume gone.
	must(c.DeleteVolume(ctx, "v1"))
	a, err := c.ChunkAssignments(ctx, csIDs[0], 0, 0)
	must(err)
	for _, ch := range a.Chunks {
		if ch.State == api.ChunkDeleting {
			must(c.AckChunkDeleted(ctx, csIDs[0], ch.ID))
		}
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	for _, f := range v.failed {
		t.Error(f)
	}
	var missing []string
	for _, op := range operations {
		if v.seen[op.method+" "+op.path] == 0 {
			missing = append(missing, op.method+" "+op.path)
		}
	}
	if len(missing) > 0 {
		t.Errorf("operations never exercised: %v", missing)
	}
	n := 0
	for _, c := range v.seen {
		n += c
	}
	t.Logf("%d answers of %d operations validated against the OpenAPI document", n, len(v.seen))
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
