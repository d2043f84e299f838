package pgpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/chunkraid/chunkraid/pglocal"
)

var testURL string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if u := os.Getenv("CHUNKRAID_TEST_DATABASE_URL"); u != "" {
		testURL = u
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
	testURL = pg.URL("postgres")
	return m.Run()
}

func newPool(t *testing.T, max int) *Pool {
	t.Helper()
	p, err := New(Config{ConnString: testURL, MaxConns: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func backendPID(t *testing.T, c *Conn) uint32 {
	t.Helper()
	return c.PgConn().PID()
}

func TestReuseAndDiscard(t *testing.T) {
	p := newPool(t, 2)
	ctx := t.Context()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := backendPID(t, c)
	c.Release()
	c, err = p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if backendPID(t, c) != pid {
		t.Error("an idle connection was not reused")
	}
	// Released inside a transaction: closed, not reused.
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	c.Release()
	c, err = p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if backendPID(t, c) == pid {
		t.Error("a connection released inside a transaction was reused")
	}
	c.Release()
}

func TestWithTx(t *testing.T) {
	p := newPool(t, 1)
	ctx := t.Context()
	if _, err := p.Exec(ctx, "CREATE TEMP TABLE IF NOT EXISTS t (v int)"); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := p.WithTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if err := p.WithTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// One connection only, so the temp table is visible.
	var sum int
	if err := p.WithConn(ctx, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT coalesce(sum(v), 0) FROM t").Scan(&sum)
	}); err != nil {
		t.Fatal(err)
	}
	if sum != 2 {
		t.Errorf("sum = %d: the failed transaction was not rolled back", sum)
	}
}

func TestMaxConnsBounds(t *testing.T) {
	const max = 3
	p := newPool(t, max)
	ctx := t.Context()
	var inUse, peak atomic.Int32
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			err := p.WithConn(ctx, func(c *pgx.Conn) error {
				n := inUse.Add(1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				_, err := c.Exec(ctx, "SELECT pg_sleep(0.02)")
				inUse.Add(-1)
				return err
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if peak.Load() > max || peak.Load() < 2 {
		t.Errorf("peak concurrency %d, want 2..%d", peak.Load(), max)
	}

	// A full pool makes Acquire wait until its context ends.
	held := make([]*Conn, max)
	for i := range held {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held[i] = c
	}
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(tctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Acquire on a full pool: %v", err)
	}
	for _, c := range held {
		c.Release()
	}
}

func TestClose(t *testing.T) {
	p := newPool(t, 2)
	ctx := t.Context()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn := c.Conn
	p.Close()
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close: %v", err)
	}
	c.Release()
	if !conn.IsClosed() {
		t.Error("a connection released after Close stays open")
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without ConnString succeeded")
	}
}
