// Package pglocal starts a private PostgreSQL server in a directory, for the
// demo and for tests.
//
// The directory holds everything the server owns:
//
//	Dir/data/            the cluster (created by initdb on first start, reused after)
//	Dir/postgres.log     the server log; start-up errors quote its tail
//	Dir/.s.PGSQL.PORT    the Unix socket (the server also listens on 127.0.0.1:PORT)
//
// The server trusts every local connection (initdb -A trust) and has one
// superuser, postgres. PostgreSQL refuses to run as root, so when the calling
// process is root, initdb and pg_ctl run as the postgres user (runuser -u
// postgres) and the directory is handed to that user.
package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options say where and how to run the server.
type Options struct {
	// Dir holds the data directory, the log and the socket. It is created if
	// missing. Required.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Logger receives start and stop messages; nil discards them.
	Logger *slog.Logger
}

// Server is a running private PostgreSQL server.
type Server struct {
	dir    string
	data   string
	bin    string
	port   int
	runAs  *user.User // nil: run the binaries as the current user
	logger *slog.Logger
	temp   bool // from StartTemp: Stop removes dir
}

// ErrNoPostgres means no PostgreSQL server binaries were found.
var ErrNoPostgres = errors.New("pglocal: PostgreSQL server binaries (initdb, pg_ctl) not found: run make deps (apt-get install postgresql)")

// maxSocketPath is the longest Unix socket path the kernel accepts
// (sizeof(sun_path) - 1).
const maxSocketPath = 107

// startTimeout bounds how long pg_ctl waits for the server to accept connections.
const startTimeout = 60 * time.Second

// Start runs initdb if Dir/data does not hold a cluster yet, starts the
// server with pg_ctl and waits until it accepts connections. A server left
// running in Dir by an earlier process is stopped first, and a stale
// postmaster.pid left by a killed one is handled by PostgreSQL itself.
func Start(ctx context.Context, opt Options) (*Server, error) {
	if opt.Dir == "" {
		return nil, errors.New("pglocal: Options.Dir is required")
	}
	if opt.Port < 0 || opt.Port > 65535 {
		return nil, fmt.Errorf("pglocal: port %d is out of range 0..65535", opt.Port)
	}
	s, err := newServer(opt.Dir, opt.Logger)
	if err != nil {
		return nil, err
	}
	logger, dir := s.logger, s.dir
	if len(filepath.Join(dir, ".s.PGSQL.65535")) > maxSocketPath {
		return nil, fmt.Errorf("pglocal: directory %s is too long for a Unix socket path (at most %d bytes with the socket name): use a shorter one", dir, maxSocketPath)
	}
	if err := s.prepareDir(); err != nil {
		return nil, err
	}
	if err := s.initdb(ctx); err != nil {
		return nil, err
	}
	if err := s.stopLeftover(ctx); err != nil {
		return nil, err
	}

	// A port picked here may be taken by someone else before the server binds
	// it; then pick again.
	attempts := 1
	if opt.Port == 0 {
		attempts = 3
	}
	for i := 0; ; i++ {
		s.port = opt.Port
		if s.port == 0 {
			if s.port, err = freePort(); err != nil {
				return nil, err
			}
		}
		err = s.start(ctx)
		if err == nil {
			break
		}
		if i+1 >= attempts || ctx.Err() != nil || !strings.Contains(s.logTail(), "could not bind") {
			return nil, err
		}
	}
	if err := s.waitReady(ctx); err != nil {
		_ = s.Stop()
		return nil, err
	}
	logger.Info("PostgreSQL started", "dir", dir, "port", s.port)
	return s, nil
}

// newServer describes the server of dir without starting anything.
func newServer(dir string, logger *slog.Logger) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir, data: filepath.Join(dir, "data"), bin: bin, logger: logger}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("pglocal: running as root needs the postgres user to run the server: %w (install postgresql)", err)
		}
		s.runAs = u
	}
	return s, nil
}

// URL returns the connection URL of database on this server.
func (s *Server) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port returns the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Dir returns the server's directory.
func (s *Server) Dir() string { return s.dir }

// CreateDatabase creates database name unless it exists.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("pglocal: database name is empty")
	}
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("pglocal: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("pglocal: look up database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
		// Created concurrently by someone else: duplicate_database, or the
		// unique violation on pg_database that a race can surface as.
		return nil
	}
	if err != nil {
		return fmt.Errorf("pglocal: create database %q: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (pg_ctl stop -m fast) and waits until it is
// gone. A server from StartTemp also removes its directory.
func (s *Server) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.pgctl(ctx, "stop", "-D", s.data, "-m", "fast", "-w"); err != nil && s.running(ctx) {
		return fmt.Errorf("pglocal: stop: %w", err)
	} // else: not running (killed): nothing to stop
	s.logger.Info("PostgreSQL stopped", "dir", s.dir)
	if s.temp {
		if err := os.RemoveAll(s.dir); err != nil {
			return fmt.Errorf("pglocal: remove %s: %w", s.dir, err)
		}
	}
	return nil
}

// prepareDir creates the directory and, when running as root, hands it to
// the postgres user after checking that user can reach it.
func (s *Server) prepareDir() error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return fmt.Errorf("pglocal: %w", err)
	}
	if s.runAs == nil {
		return nil
	}
	uid, err1 := strconv.Atoi(s.runAs.Uid)
	gid, err2 := strconv.Atoi(s.runAs.Gid)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("pglocal: postgres user has a non-numeric uid %q or gid %q", s.runAs.Uid, s.runAs.Gid)
	}
	if err := checkTraversable(filepath.Dir(s.dir), uid, gid); err != nil {
		return err
	}
	err := filepath.WalkDir(s.dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("pglocal: hand %s to the postgres user: %w", s.dir, err)
	}
	return nil
}

// checkTraversable reports an error naming the first ancestor of dir (dir
// included) that user uid/gid cannot search.
func checkTraversable(dir string, uid, gid int) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("pglocal: %w", err)
		}
		mode := fi.Mode().Perm()
		ok := mode&0o001 != 0
		if st, isUnix := fi.Sys().(*syscall.Stat_t); isUnix {
			ok = ok || (int(st.Uid) == uid && mode&0o100 != 0) || (int(st.Gid) == gid && mode&0o010 != 0)
		}
		if !ok {
			return fmt.Errorf("pglocal: the postgres user cannot reach the server directory: %s has mode %04o; "+
				"use a directory whose parents are all searchable (e.g. os.MkdirTemp(\"/tmp\", ...)) or run chmod o+x %s",
				d, mode, d)
		}
		if parent := filepath.Dir(d); parent == d {
			return nil
		}
	}
}

// initdb creates the cluster unless Dir/data already holds one.
func (s *Server) initdb(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(s.data, "PG_VERSION")); err == nil {
		return nil
	}
	if entries, err := os.ReadDir(s.data); err == nil && len(entries) > 0 {
		return fmt.Errorf("pglocal: %s is neither empty nor a PostgreSQL cluster (no PG_VERSION), perhaps from an interrupted initdb: remove it", s.data)
	}
	s.logger.Info("creating PostgreSQL cluster", "dir", s.data)
	out, err := s.run(ctx, filepath.Join(s.bin, "initdb"),
		"-D", s.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C")
	if err != nil {
		return fmt.Errorf("pglocal: initdb %s: %w\n%s", s.data, err, tail(out, 2048))
	}
	return nil
}

// stopLeftover deals with a postmaster.pid left in the data directory. A
// server still running there (its owner died without calling Stop) is
// stopped. A killed one needs nothing but time: its exit may not have been
// reaped yet, and while it is a zombie both pg_ctl and the new postmaster
// take it for alive, so wait for it to disappear.
func (s *Server) stopLeftover(ctx context.Context) error {
	pid := readPIDFile(filepath.Join(s.data, "postmaster.pid"))
	if pid <= 0 {
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for processState(pid) == 'Z' && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("pglocal: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if !s.running(ctx) {
		return nil
	}
	s.logger.Info("stopping a PostgreSQL server left running in the directory", "dir", s.dir, "pid", pid)
	if err := s.pgctl(ctx, "stop", "-D", s.data, "-m", "fast", "-w"); err != nil && s.running(ctx) {
		return fmt.Errorf("pglocal: stop the server left running in %s: %w", s.dir, err)
	}
	return nil
}

// readPIDFile returns the PID on the first line of a postmaster.pid, or 0.
func readPIDFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// processState returns the state letter of a process from /proc (R, S, Z,
// ...), or 0 when there is no such process or no /proc.
func processState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The state follows the parenthesised command name, which may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// running reports whether pg_ctl sees a live server on the data directory.
func (s *Server) running(ctx context.Context) bool {
	_, err := s.run(ctx, filepath.Join(s.bin, "pg_ctl"), "status", "-D", s.data)
	return err == nil
}

func (s *Server) start(ctx context.Context) error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", s.port, s.dir)
	err := s.pgctl(ctx, "start", "-D", s.data, "-l", s.logPath(), "-w", "-t",
		strconv.Itoa(int(startTimeout/time.Second)), "-o", opts)
	if err != nil {
		return fmt.Errorf("pglocal: start on port %d: %w\n--- %s (tail) ---\n%s", s.port, err, s.logPath(), s.logTail())
	}
	return nil
}

// waitReady connects over TCP until the server answers a query.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			err = conn.Ping(ctx)
			_ = conn.Close(ctx)
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("pglocal: server on port %d does not accept connections: %w\n--- %s (tail) ---\n%s",
				s.port, last, s.logPath(), s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) pgctl(ctx context.Context, args ...string) error {
	out, err := s.run(ctx, filepath.Join(s.bin, "pg_ctl"), args...)
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", args[0], err, strings.TrimSpace(string(tail(out, 2048))))
	}
	return nil
}

// run runs a PostgreSQL binary, as the postgres user when s.runAs is set,
// and returns its combined output.
func (s *Server) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if s.runAs != nil {
		args = append([]string{"-u", s.runAs.Username, "--", name}, args...)
		name = "runuser"
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// The postgres user may not be able to enter the caller's working directory.
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// pg_ctl start leaves the server running with our stdout as its stderr
	// until it redirects to the log file; do not wait on the pipe for long.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

func (s *Server) logPath() string { return filepath.Join(s.dir, "postgres.log") }

// logTail returns the end of the server log.
func (s *Server) logTail() string {
	f, err := os.Open(s.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const max = 4096
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		if _, err := f.Seek(-max, io.SeekEnd); err != nil {
			return fmt.Sprintf("(log unreadable: %v)", err)
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// findBinDir returns the directory of initdb and pg_ctl: pg_config --bindir
// when it holds them, else the newest /usr/lib/postgresql/*/bin, else the
// directory of initdb on $PATH.
func findBinDir() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "pg_ctl"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); has(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", ErrNoPostgres
}

// versionOf returns the major version in /usr/lib/postgresql/VERSION/bin.
func versionOf(binDir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	if err != nil {
		return -1
	}
	return v
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pglocal: pick a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pglocal: pick a free port: %w", err)
	}
	return port, nil
}
