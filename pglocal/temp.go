package pglocal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ownerFile, in a StartTemp directory, holds the PID of the process that
// started the server.
const ownerFile = "owner.pid"

// StartTemp starts a server in a new directory /tmp/PREFIX-*, for tests.
// Stop removes the directory.
//
// A test binary killed by go test's timeout never runs its cleanup and
// leaves its server running; so StartTemp first stops the servers of
// earlier /tmp/PREFIX-* directories whose owner process has exited, and
// removes those directories.
func StartTemp(ctx context.Context, prefix string, logger *slog.Logger) (*Server, error) {
	if prefix == "" || strings.ContainsAny(prefix, `/*?[\`) {
		return nil, fmt.Errorf("pglocal: temp prefix %q must be a plain file name", prefix)
	}
	reapTemp(ctx, prefix, logger)
	dir, err := os.MkdirTemp("/tmp", prefix+"-")
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	if err := writeOwner(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s, err := Start(ctx, Options{Dir: dir, Logger: logger})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.temp = true
	return s, nil
}

// writeOwner records this process as the owner of dir, atomically so that
// a concurrent reaper never reads a partial file.
func writeOwner(dir string) error {
	tmp := filepath.Join(dir, ownerFile+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ownerFile)); err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	return nil
}

// reapTemp stops and removes the /tmp/PREFIX-* directories of owners that
// have exited. Directories without an owner file are left alone: they may
// be in the middle of being created.
func reapTemp(ctx context.Context, prefix string, logger *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join("/tmp", prefix+"-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if st := processState(pid); st != 0 && st != 'Z' {
			continue
		}
		if err := StopDir(ctx, dir, logger); err != nil {
			if logger != nil {
				logger.Warn("cannot stop the server of a dead test run; leaving its directory", "dir", dir, "err", err)
			}
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

// StopDir stops the server running in dir, if there is one; a directory
// without a server is not an error.
func StopDir(ctx context.Context, dir string, logger *slog.Logger) error {
	s, err := newServer(dir, logger)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(s.data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return s.stopLeftover(ctx)
}
