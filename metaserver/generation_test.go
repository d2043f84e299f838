package metaserver

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func (h *generationHub) current() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.mu.gen
}

func TestGenerationHub(t *testing.T) {
	h := newGenerationHub(time.Second)
	ch := h.changed()
	h.observe(0) // not newer than the start
	select {
	case <-ch:
		t.Fatal("woken without a change")
	default:
	}
	h.observe(5)
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a newer generation")
	}
	ch = h.changed()
	h.observe(4) // an older notification arriving late
	h.observe(5)
	select {
	case <-ch:
		t.Fatal("woken by an old generation")
	default:
	}
	if h.current() != 5 {
		t.Errorf("generation %d", h.current())
	}
}

// TestListenerSurvivesQuietPeriodsAndMissedNotifications runs the listener
// with a short interval: timed-out waits must leave its connection usable,
// notifications for other schemas must be ignored, and a change whose
// notification never came is still seen by the periodic read.
func TestListenerSurvivesQuietPeriodsAndMissedNotifications(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Config{})
	ctx := t.Context()
	cfg, err := pgx.ParseConfig(ts.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	// A name of its own, so that only this listener is killed below (other
	// tests' metaservers share the PostgreSQL server).
	appName := "test-listener-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	cfg.RuntimeParams["application_name"] = appName
	h := newGenerationHub(150 * time.Millisecond)
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { h.listen(lctx, cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil))) })
	defer func() { cancel(); wg.Wait() }()

	start := ts.queryInt(t, `SELECT generation FROM cluster`)
	waitFor(t, 5*time.Second, "initial generation", func() bool { return h.current() == start })
	time.Sleep(600 * time.Millisecond) // several timed-out waits

	// A notification through NOTIFY arrives well before the next periodic read.
	ch := h.changed()
	ts.addHost(t, "h") // no generation change
	ts.addChunkserver(t, "a", "", gib)
	select {
	case <-ch:
	case <-time.After(2 * time.Second):
		t.Fatal("listener missed a notification after quiet periods")
	}
	// Other schemas' notifications are ignored.
	cur := h.current()
	if err := ts.exec(t, `SELECT pg_notify($1, 'some_other_schema 999999')`, notifyChannel); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if got := h.current(); got != cur {
		t.Fatalf("a foreign schema's notification moved the generation to %d", got)
	}
	// A change without a notification is found by the periodic read.
	if err := ts.exec(t, `UPDATE cluster SET generation = generation + 10`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "periodic read", func() bool { return h.current() == cur+10 })

	// The listener reconnects when its connection is killed.
	pidsQuery := `SELECT coalesce(array_agg(pid ORDER BY pid), '{}') FROM pg_stat_activity WHERE application_name = $1`
	old := ts.queryInts(t, pidsQuery, appName)
	if len(old) != 1 {
		t.Fatalf("listener backends %v, want one", old)
	}
	if err := ts.exec(t, `SELECT pg_terminate_backend($1)`, old[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a new listener connection", func() bool {
		pids := ts.queryInts(t, pidsQuery, appName)
		return len(pids) == 1 && pids[0] != old[0]
	})
	ts.addChunkserver(t, "b", "", gib)
	want := ts.queryInt(t, `SELECT generation FROM cluster`)
	waitFor(t, 5*time.Second, "generation after reconnect", func() bool { return h.current() == want })
}
