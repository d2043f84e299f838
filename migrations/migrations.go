// Package migrations embeds the metaserver's PostgreSQL schema as numbered
// SQL files, NNNN_name.sql, applied in order at start-up; each file runs in
// one transaction and its version is recorded in schema_migrations.
package migrations

import "embed"

// FS holds the *.sql migration files.
//
//go:embed *.sql
var FS embed.FS
