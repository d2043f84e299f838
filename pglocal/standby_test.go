package pglocal

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStandbyPromote: a synchronous standby holds every committed row when
// its primary is killed with -9 and it is promoted; a client given both
// servers with target_session_attrs=read-write writes to the promoted one.
func TestStandbyPromote(t *testing.T) {
	primary := start(t, testDir(t))
	standby, err := primary.StartStandby(t.Context(), Options{Dir: testDir(t)}, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Stop() })
	both := FailoverURL("postgres", primary, standby)
	exec := func(sql string, args ...any) error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, both)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql, args...)
		return err
	}
	if err := exec(`CREATE TABLE acked (n int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	committed := 0
	for i := range 200 {
		if err := exec(`INSERT INTO acked VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		committed++
	}
	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := exec(`INSERT INTO acked VALUES (1000)`); err == nil {
		t.Fatal("a write succeeded with the primary dead and the standby not promoted")
	}
	start := time.Now()
	if err := standby.Promote(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("standby promoted in %v", time.Since(start).Round(time.Millisecond))
	if err := exec(`INSERT INTO acked VALUES (1000)`); err != nil {
		t.Fatalf("a write to the promoted standby through the multi-host URL: %v", err)
	}
	if got := queryInt(t, standby.URL("postgres"), `SELECT count(*) FROM acked WHERE n < 1000`); got != committed {
		t.Fatalf("the promoted standby holds %d of the %d committed rows", got, committed)
	}
	u, _ := url.Parse(both)
	t.Logf("%d committed rows on the promoted standby; %s wrote to it", committed, u.Redacted())
}
