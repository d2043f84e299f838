package metaserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migration is one SQL file of the migrations directory.
type migration struct {
	Version int
	Name    string // file name
	SQL     string
}

var migrationNameRE = regexp.MustCompile(`^([0-9]+)_[a-z0-9_]+\.sql$`)

// loadMigrations reads every *.sql file of fsys, sorted by version. File
// names are NNNN_name.sql; versions must be positive and unique.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var out []migration
	seen := map[int]string{}
	for _, name := range names {
		m := migrationNameRE.FindStringSubmatch(name)
		if m == nil {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.sql", name)
		}
		v, err := strconv.Atoi(m[1])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %q: version must be a positive number", name)
		}
		if other, dup := seen[v]; dup {
			return nil, fmt.Errorf("migration files %q and %q have the same version %d", other, name, v)
		}
		seen[v] = name
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read migration: %w", err)
		}
		out = append(out, migration{Version: v, Name: name, SQL: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.Version - b.Version })
	return out, nil
}

// migrate applies the migrations not yet recorded in schema_migrations, each
// in its own transaction, while holding a session advisory lock so that
// metaservers starting together apply each migration once. It returns the
// schema version reached.
func migrate(ctx context.Context, db *pgxpool.Pool, fsys fs.FS, log *slog.Logger) (int, error) {
	ms, err := loadMigrations(fsys)
	if err != nil {
		return 0, err
	}
	conn, err := db.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()

	var schema *string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return 0, fmt.Errorf("read current schema: %w", err)
	}
	if schema == nil {
		return 0, errors.New("the database URL's search_path names no existing schema: create the schema first or fix search_path")
	}
	// The lock is per schema: one database may hold several clusters.
	const lockKey = `hashtextextended('chunkraid.migrate.' || current_schema(), 0)`
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(`+lockKey+`)`); err != nil {
		return 0, fmt.Errorf("take the migration lock: %w", err)
	}
	defer func() {
		// Closing the session also releases the lock; a failed unlock leaves
		// the connection in doubt, so close it rather than reuse it.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(`+lockKey+`)`); err != nil {
			_ = conn.Conn().Close(uctx)
		}
	}()

	_, err = conn.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS schema_migrations (
			version    integer     PRIMARY KEY CHECK (version > 0),
			name       text        NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now()
		)`)
	if err != nil {
		return 0, fmt.Errorf("create schema_migrations: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return 0, fmt.Errorf("read schema_migrations: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0, fmt.Errorf("read schema_migrations: %w", err)
	}
	version := 0
	for _, v := range done {
		version = max(version, int(v))
	}
	for _, m := range ms {
		if slices.Contains(done, int32(m.Version)) {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			// The simple protocol runs a file of many statements.
			if err := tx.Conn().PgConn().Exec(ctx, m.SQL).Close(); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("apply migration %s: %w", m.Name, err)
		}
		log.Info("applied migration", "version", m.Version, "file", m.Name, "schema", *schema)
		version = max(version, m.Version)
	}
	return version, nil
}
