package pglocal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartStandby makes a streaming standby of s in opt.Dir with pg_basebackup
// (-R: it follows s through streaming replication), starts it and waits
// until it streams. With sync, s then waits for the standby to confirm
// every commit (synchronous_standby_names = '*', synchronous_commit on):
// nothing acknowledged by s is lost when s dies and the standby is
// promoted.
func (s *Server) StartStandby(ctx context.Context, opt Options, sync bool) (*Server, error) {
	if opt.Dir == "" {
		return nil, errors.New("pglocal: Options.Dir is required")
	}
	st, err := newServer(opt.Dir, opt.Logger)
	if err != nil {
		return nil, err
	}
	if err := st.prepareDir(); err != nil {
		return nil, err
	}
	out, err := st.run(ctx, filepath.Join(st.bin, "pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(s.port),
		"-U", "postgres", "-D", st.data, "-R", "-X", "stream", "-c", "fast")
	if err != nil {
		return nil, fmt.Errorf("pglocal: pg_basebackup of the server on port %d: %w\n%s", s.port, err, tail(out, 2048))
	}
	st.port = opt.Port
	if st.port == 0 {
		if st.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	if err := st.start(ctx); err != nil {
		return nil, err
	}
	if err := st.waitReady(ctx); err != nil {
		_ = st.Stop()
		return nil, err
	}
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return st, fmt.Errorf("pglocal: connect to the primary: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for deadline := time.Now().Add(startTimeout); ; {
		var streaming bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE state = 'streaming')`).Scan(&streaming); err != nil {
			return st, fmt.Errorf("pglocal: replication state: %w", err)
		}
		if streaming {
			break
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("pglocal: the standby on port %d does not stream from port %d\n--- standby log ---\n%s", st.port, s.port, st.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if sync {
		// On the primary only: postgresql.auto.conf is not replicated, so
		// the standby, once promoted, does not wait for a standby of its own.
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = '*'`, `SELECT pg_reload_conf()`} {
			if _, err := conn.Exec(ctx, q); err != nil {
				return st, fmt.Errorf("pglocal: make the standby synchronous: %w", err)
			}
		}
		for deadline := time.Now().Add(startTimeout); ; {
			var synced bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync')`).Scan(&synced); err != nil {
				return st, fmt.Errorf("pglocal: replication state: %w", err)
			}
			if synced {
				break
			}
			if time.Now().After(deadline) {
				return st, fmt.Errorf("pglocal: the standby on port %d is not synchronous", st.port)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	st.logger.Info("PostgreSQL standby streaming", "dir", st.dir, "port", st.port, "primary", s.port, "synchronous", sync)
	return st, nil
}

// Kill ends the server's postmaster with SIGKILL, as a crash of its machine
// would: its children exit when they notice, and no checkpoint is written.
func (s *Server) Kill() error {
	pid := readPIDFile(filepath.Join(s.data, "postmaster.pid"))
	if pid <= 0 {
		return fmt.Errorf("pglocal: no postmaster.pid in %s", s.data)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("pglocal: kill the postmaster %d: %w", pid, err)
	}
	return nil
}

// Promote turns a standby into a primary (pg_ctl promote) and waits until
// it accepts writes.
func (s *Server) Promote(ctx context.Context) error {
	if err := s.pgctl(ctx, "promote", "-D", s.data, "-w"); err != nil {
		return fmt.Errorf("pglocal: promote: %w", err)
	}
	return nil
}

// FailoverURL is the URL of database on the servers given, in order, for a
// client that must write: target_session_attrs=read-write makes it connect
// to whichever of them is the primary.
func FailoverURL(database string, servers ...*Server) string {
	hosts := make([]string, len(servers))
	for i, s := range servers {
		hosts[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	}
	return "postgres://postgres@" + strings.Join(hosts, ",") + "/" + url.PathEscape(database) +
		"?sslmode=disable&target_session_attrs=read-write&connect_timeout=2"
}
