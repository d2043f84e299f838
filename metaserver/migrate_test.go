package metaserver

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/chunkraid/chunkraid/migrations"
)

func newPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	db, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

func TestMigrationsAppliedTwiceAreANoOp(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	db := newPool(t, url)
	ctx := t.Context()
	log := slog.New(slog.DiscardHandler)
	all, err := loadMigrations(migrations.FS)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 || all[0].Version != 1 {
		t.Fatalf("embedded migrations: %+v", all)
	}
	v1, err := migrate(ctx, db, migrations.FS, log)
	if err != nil {
		t.Fatal(err)
	}
	if v1 != all[len(all)-1].Version {
		t.Errorf("version %d, want %d", v1, all[len(all)-1].Version)
	}
	var stamp1, stamp2 time.Time
	read := func(dst *time.Time) int64 {
		var n int64
		err := db.QueryRow(ctx, `SELECT count(*), max(applied_at) FROM schema_migrations`).Scan(&n, dst)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	n1 := read(&stamp1)
	v2, err := migrate(ctx, db, migrations.FS, log)
	if err != nil {
		t.Fatal(err)
	}
	n2 := read(&stamp2)
	if v2 != v1 || n1 != int64(len(all)) || n2 != n1 || !stamp1.Equal(stamp2) {
		t.Errorf("second run: version %d->%d, rows %d->%d, applied_at %v->%v", v1, v2, n1, n2, stamp1, stamp2)
	}

	// A later migration is applied on its own, once.
	extra := fstest.MapFS{}
	for _, m := range all {
		extra[m.Name] = &fstest.MapFile{Data: []byte(m.SQL)}
	}
	extra["9999_extra.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE extra (x int); INSERT INTO extra VALUES (1);")}
	for range 2 {
		v, err := migrate(ctx, db, extra, log)
		if err != nil || v != 9999 {
			t.Fatalf("extra migration: %d, %v", v, err)
		}
	}
	var rows int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM extra`).Scan(&rows); err != nil || rows != 1 {
		t.Errorf("extra rows %d, %v", rows, err)
	}

	// A failing migration leaves nothing behind and is not recorded.
	bad := fstest.MapFS{"0001_init.sql": extra["0001_init.sql"], "10000_bad.sql": {Data: []byte("CREATE TABLE half (x int); SELECT nonsense;")}}
	if _, err := migrate(ctx, db, bad, log); err == nil || !strings.Contains(err.Error(), "10000_bad.sql") {
		t.Fatalf("bad migration: %v", err)
	}
	var half bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'half' AND schemaname = current_schema())`).Scan(&half); err != nil || half {
		t.Errorf("table of a failed migration exists: %v %v", half, err)
	}
}

func TestLoadMigrationsErrors(t *testing.T) {
	sql := &fstest.MapFile{Data: []byte("SELECT 1")}
	tests := map[string]fstest.MapFS{
		"not named NNNN_name.sql": {"init.sql": sql},
		"positive number":         {"0000_zero.sql": sql},
		"same version":            {"0001_a.sql": sql, "1_b.sql": sql},
	}
	for want, fsys := range tests {
		if _, err := loadMigrations(fsys); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: err %v, want %q", fsys, err, want)
		}
	}
	ms, err := loadMigrations(fstest.MapFS{"0010_c.sql": sql, "0002_b.sql": sql, "README.md": sql})
	if err != nil || len(ms) != 2 || ms[0].Version != 2 || ms[1].Version != 10 {
		t.Errorf("sorted: %+v, %v", ms, err)
	}
}

func TestMigrateNeedsSchema(t *testing.T) {
	t.Parallel()
	url := strings.Replace(newSchema(t), "search_path=t_", "search_path=missing_", 1)
	_, err := migrate(t.Context(), newPool(t, url), migrations.FS, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "no existing schema") {
		t.Fatalf("err = %v", err)
	}
}

func TestConcurrentStartOnOneSchema(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	var wg sync.WaitGroup
	servers := make([]*testServer, 3)
	for i := range servers {
		wg.Go(func() { servers[i] = startServer(t, Config{DatabaseURL: url}) })
	}
	wg.Wait()
	for i, ts := range servers {
		if ts == nil {
			t.Fatalf("server %d did not start", i)
		}
	}
	all, _ := loadMigrations(migrations.FS)
	if n := servers[0].queryInt(t, `SELECT count(*) FROM schema_migrations`); n != int64(len(all)) {
		t.Errorf("%d migration rows, want %d", n, len(all))
	}
	if n := servers[0].queryInt(t, `SELECT count(*) FROM cluster`); n != 1 {
		t.Errorf("%d cluster rows", n)
	}
	// All three serve the same cluster.
	servers[0].addChunkserver(t, "a", "", gib)
	servers[1].addChunkserver(t, "b", "", gib)
	for i, ts := range servers {
		list, err := ts.Client.ListChunkservers(t.Context())
		if err != nil || len(list) != 2 {
			t.Errorf("server %d lists %v, %v", i, list, err)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestChunkSizeIsFixedAtCreation(t *testing.T) {
	t.Parallel()
	url := newSchema(t)
	first := startServer(t, Config{DatabaseURL: url, ChunkSize: 64 << 20})
	c, err := first.Client.Cluster(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if c.ChunkSize != 64<<20 || c.Generation < 1 || c.SchemaVersion < 1 || c.CreatedAt.IsZero() || c.OfflineAfterSeconds != 10 {
		t.Fatalf("cluster = %+v", c)
	}
	if err := first.Stop(); err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	second := startServer(t, Config{DatabaseURL: url, ChunkSize: 128 << 20,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c2, err := second.Client.Cluster(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if c2.ChunkSize != 64<<20 || !c2.CreatedAt.Equal(c.CreatedAt) {
		t.Errorf("after restart with another chunk size: %+v", c2)
	}
	if !strings.Contains(logs.String(), "chunk size differs") {
		t.Errorf("no warning logged:\n%s", logs.String())
	}
	resp, err := second.Client.RegisterChunkserver(t.Context(), chunkserverReq("a"))
	if err != nil || resp.ChunkSize != 64<<20 {
		t.Errorf("registration: %+v, %v", resp, err)
	}
}

func TestConfigValidation(t *testing.T) {
	const db = "postgres://postgres@127.0.0.1:5432/x"
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "DatabaseURL is required"},
		{Config{DatabaseURL: "postgres://%zz"}, "DatabaseURL"},
		{Config{DatabaseURL: db, ChunkSize: 1000}, "multiple of 1 MiB"},
		{Config{DatabaseURL: db, ChunkSize: -1 << 20}, "multiple of 1 MiB"},
		{Config{DatabaseURL: db, OfflineAfter: -time.Second}, "must not be negative"},
	}
	for _, tt := range tests {
		if _, err := New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
	s, err := New(Config{DatabaseURL: db})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.Listen != "127.0.0.1:8080" || s.cfg.OfflineAfter != 10*time.Second || s.Addr() != nil {
		t.Errorf("defaults: %+v", s.cfg)
	}
}

func TestRunFailsClearly(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1.
	s, err := New(Config{DatabaseURL: "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err = s.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "connect to PostgreSQL at 127.0.0.1:1/x") {
		t.Fatalf("Run = %v", err)
	}
	if err := s.Run(ctx); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run = %v", err)
	}
}
