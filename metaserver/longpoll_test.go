package metaserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type pollResult[T any] struct {
	v    T
	err  error
	when time.Time
}

// poll runs fn in a goroutine and returns a channel with its result.
func poll[T any](fn func() (T, error)) <-chan pollResult[T] {
	ch := make(chan pollResult[T], 1)
	go func() {
		v, err := fn()
		ch <- pollResult[T]{v, err, time.Now()}
	}()
	return ch
}

func recv[T any](t *testing.T, ch <-chan pollResult[T], d time.Duration) pollResult[T] {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r
	case <-time.After(d):
		t.Fatalf("long poll did not return within %v", d)
	}
	panic("unreachable")
}

func TestLongPollWakesOnChange(t *testing.T) {
	t.Parallel()
	// Two metaservers on one schema: the change is made through one, the
	// polls wait on both, so the wake-up crosses processes via NOTIFY.
	ts := startServer(t, Config{})
	other := startServer(t, Config{DatabaseURL: ts.DBURL})
	ctx := t.Context()
	a := ts.addChunkserver(t, "a", "", 10*gib)
	ts.addChunkserver(t, "b", "", 10*gib)
	h := ts.addHost(t, "h1")

	as, err := ts.Client.ChunkAssignments(ctx, a, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	hv, err := ts.Client.HostVolumes(ctx, h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if as.Generation != hv.Generation || len(as.Chunks) != 0 || len(hv.Volumes) != 0 {
		t.Fatalf("initial state: %+v %+v", as, hv)
	}
	gen := as.Generation

	local := poll(func() (*api.ChunkAssignments, error) { return ts.Client.ChunkAssignments(ctx, a, gen, 30*time.Second) })
	remote := poll(func() (*api.ChunkAssignments, error) {
		return other.Client.ChunkAssignments(ctx, a, gen, 30*time.Second)
	})
	hostPoll := poll(func() (*api.HostVolumes, error) { return other.Client.HostVolumes(ctx, h, gen, 30*time.Second) })
	waitFor(t, 5*time.Second, "three polls waiting", func() bool {
		return ts.waiting.Load() == 1 && other.waiting.Load() == 2
	})

	changed := time.Now()
	if _, err := ts.Client.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v", SizeBytes: 4096, Layout: "mirror:2", Host: "h1"}); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]pollResult[*api.ChunkAssignments]{
		"local": recv(t, local, 5*time.Second), "remote": recv(t, remote, 5*time.Second),
	} {
		if lag := r.when.Sub(changed); lag > 2*time.Second {
			t.Errorf("%s chunk poll woke %v after the change", name, lag)
		}
		if r.v.Generation <= gen || len(r.v.Chunks) != 1 || r.v.Chunks[0].State != api.ChunkActive {
			t.Errorf("%s chunk poll: %+v", name, r.v)
		}
	}
	hr := recv(t, hostPoll, 5*time.Second)
	if lag := hr.when.Sub(changed); lag > 2*time.Second {
		t.Errorf("host poll woke %v after the change", lag)
	}
	if hr.v.Generation <= gen || len(hr.v.Volumes) != 1 || hr.v.Volumes[0].Name != "v" {
		t.Errorf("host poll: %+v", hr.v)
	}

	// Attach and delete wake the pollers as well.
	for _, change := range []struct {
		name string
		do   func() error
	}{
		{"attach", func() error { _, err := other.Client.AttachVolume(ctx, "v", "h1"); return err }},
		{"delete", func() error { return ts.Client.DeleteVolume(ctx, "v") }},
	} {
		cur, err := ts.Client.HostVolumes(ctx, h, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		p := poll(func() (*api.HostVolumes, error) { return ts.Client.HostVolumes(ctx, h, cur.Generation, 30*time.Second) })
		waitFor(t, 5*time.Second, "poll waiting", func() bool { return ts.waiting.Load() == 1 })
		changed := time.Now()
		if err := change.do(); err != nil {
			t.Fatal(err)
		}
		r := recv(t, p, 5*time.Second)
		if lag := r.when.Sub(changed); lag > 2*time.Second || r.v.Generation == cur.Generation {
			t.Errorf("%s: poll woke after %v with generation %d (was %d)", change.name, lag, r.v.Generation, cur.Generation)
		}
	}
}

func TestLongPollTimesOut(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	a := ts.addChunkserver(t, "a", "", 10*gib)
	as, err := ts.Client.ChunkAssignments(ctx, a, 0, 0)
	if err != nil {
		t.Fatal(err)
	}

	// A stale generation answers at once, even with a wait.
	start := time.Now()
	got, err := ts.Client.ChunkAssignments(ctx, a, as.Generation-1, 30*time.Second)
	if err != nil || got.Generation != as.Generation || time.Since(start) > time.Second {
		t.Fatalf("stale generation: %+v, %v after %v", got, err, time.Since(start))
	}

	// No change: the answer comes after the wait, unchanged.
	start = time.Now()
	got, err = ts.Client.ChunkAssignments(ctx, a, as.Generation, 700*time.Millisecond)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if elapsed < 650*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("wait 700ms returned after %v", elapsed)
	}
	if got.Generation != as.Generation {
		t.Errorf("generation %d, want %d", got.Generation, as.Generation)
	}
	if n := ts.waiting.Load(); n != 0 {
		t.Errorf("%d polls still waiting", n)
	}

	// A heartbeat is not an assignment change and wakes nobody.
	p := poll(func() (*api.ChunkAssignments, error) {
		return ts.Client.ChunkAssignments(ctx, a, as.Generation, time.Second)
	})
	waitFor(t, 5*time.Second, "poll waiting", func() bool { return ts.waiting.Load() == 1 })
	start = time.Now()
	if err := ts.Client.ChunkserverHeartbeat(ctx, a, api.ChunkserverHeartbeat{}); err != nil {
		t.Fatal(err)
	}
	if r := recv(t, p, 5*time.Second); r.when.Sub(start) < 500*time.Millisecond || r.v.Generation != as.Generation {
		t.Errorf("heartbeat woke the poll: after %v, generation %d", r.when.Sub(start), r.v.Generation)
	}
}

func TestLongPollEndsWhenClientLeaves(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	h := ts.addHost(t, "h")
	hv, err := ts.Client.HostVolumes(t.Context(), h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	p := poll(func() (*api.HostVolumes, error) { return ts.Client.HostVolumes(ctx, h, hv.Generation, 50*time.Second) })
	waitFor(t, 5*time.Second, "poll waiting", func() bool { return ts.waiting.Load() == 1 })
	cancel()
	select {
	case r := <-p:
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("client error %v, want context.Canceled", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client did not return after cancel")
	}
	waitFor(t, 2*time.Second, "server side of the poll to end", func() bool { return ts.waiting.Load() == 0 })
}

func TestLongPollEndsAtShutdown(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	a := ts.addChunkserver(t, "a", "", gib)
	as, err := ts.Client.ChunkAssignments(ctx, a, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := poll(func() (*api.ChunkAssignments, error) {
		return ts.Client.ChunkAssignments(ctx, a, as.Generation, 50*time.Second)
	})
	waitFor(t, 5*time.Second, "poll waiting", func() bool { return ts.waiting.Load() == 1 })
	start := time.Now()
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a poll waiting", d)
	}
	r := recv(t, p, 2*time.Second)
	if r.v.Generation != as.Generation {
		t.Errorf("generation %d, want %d", r.v.Generation, as.Generation)
	}
}

func TestLongPollParameters(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	a := ts.addChunkserver(t, "a", "", gib)
	h := ts.addHost(t, "h")
	for _, q := range []string{"after=-1", "after=x", "wait=abc", "wait=-1s", "wait=-3", "wait=NaN"} {
		for _, path := range []string{"/api/v1/chunkservers/" + strconv.FormatInt(a, 10) + "/chunks", "/api/v1/hosts/" + strconv.FormatInt(h, 10) + "/volumes"} {
			resp, err := ts.HTTP.Get(ts.URL + path + "?" + q)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s?%s: HTTP %d %s", path, q, resp.StatusCode, body)
			}
		}
	}
}

func TestParsePoll(t *testing.T) {
	tests := []struct {
		after, wait string
		gen         int64
		d           time.Duration
		ok          bool
	}{
		{"", "", 0, 0, true},
		{"7", "30s", 7, 30 * time.Second, true},
		{"7", "2.5", 7, 2500 * time.Millisecond, true},
		{"0", "10m", 0, api.MaxWait, true},
		{"0", "1e300", 0, api.MaxWait, true},
		{"0", "Inf", 0, api.MaxWait, true},
		{"-1", "", 0, 0, false},
		{"", "-1ms", 0, 0, false},
		{"", "-Inf", 0, 0, false},
		{"", "NaN", 0, 0, false},
		{"", "1 s", 0, 0, false},
		{"99999999999999999999", "", 0, 0, false},
	}
	for _, tt := range tests {
		gen, d, err := parsePoll(tt.after, tt.wait)
		if (err == nil) != tt.ok || (tt.ok && (gen != tt.gen || d != tt.d)) {
			t.Errorf("parsePoll(%q, %q) = %d, %v, %v", tt.after, tt.wait, gen, d, err)
		}
	}
}

func FuzzParsePoll(f *testing.F) {
	for _, s := range []string{"", "30s", "1.5", "-1", "NaN", "1e400", "9223372036854775807ns"} {
		f.Add("1", s)
	}
	f.Fuzz(func(t *testing.T, after, wait string) {
		gen, d, err := parsePoll(after, wait)
		if err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("error %v is not invalid_argument", err)
			}
			return
		}
		if gen < 0 || d < 0 || d > api.MaxWait {
			t.Fatalf("parsePoll(%q, %q) = %d, %v", after, wait, gen, d)
		}
	})
}

// TestLongPollsPerCaller: a caller may have MaxLongPolls polls waiting;
// one more is refused with 429 resource_exhausted at once, another caller
// is not affected, and the caller may poll again once one returns.
func TestLongPollsPerCaller(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{MaxLongPolls: 2})
	ctx := t.Context()
	h := ts.addHost(t, "h")
	other := ts.addHost(t, "other")
	gen := func(id int64) int64 {
		hv, err := ts.Client.HostVolumes(ctx, id, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return hv.Generation
	}
	g := gen(h)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := ts.Client.HostVolumes(pctx, h, g, 20*time.Second)
			done <- err
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for ts.waiting.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d polls waiting, want 2", ts.waiting.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	_, err := ts.Client.HostVolumes(ctx, h, g, 20*time.Second)
	if api.ErrorCode(err) != api.CodeResourceExhausted || time.Since(start) > 5*time.Second {
		t.Fatalf("a third long poll: %v after %v, want resource_exhausted at once", err, time.Since(start))
	}
	var se *api.Error
	if errors.As(err, &se) && se.Status != http.StatusTooManyRequests {
		t.Errorf("status %d, want 429", se.Status)
	}
	if _, err := ts.Client.HostVolumes(ctx, other, gen(other), 100*time.Millisecond); err != nil {
		t.Errorf("another caller's long poll: %v", err)
	}
	cancel()
	for range 2 {
		<-done
	}
	// The server notices the clients left a moment after they did.
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err := ts.Client.HostVolumes(ctx, h, g, 100*time.Millisecond)
		if err == nil {
			break
		}
		if api.ErrorCode(err) != api.CodeResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("a long poll after the others returned: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
