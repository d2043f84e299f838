package pglocal

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// testDir returns a fresh directory under /tmp whose parents the postgres
// user can traverse (t.TempDir's parents are mode 0700).
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pglocal-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func start(t *testing.T, dir string) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("starts PostgreSQL: not in -short (make test runs it)")
	}
	s, err := Start(t.Context(), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

func queryInt(t *testing.T, url, sql string) int {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestStartCreateDatabaseStopRestart(t *testing.T) {
	dir := testDir(t)
	s := start(t, dir)
	if !strings.HasPrefix(s.URL("x"), "postgres://postgres@127.0.0.1:") || !strings.HasSuffix(s.URL("x"), "/x?sslmode=disable") {
		t.Fatalf("URL = %q", s.URL("x"))
	}
	for range 2 { // the second call finds the database and does nothing
		if err := s.CreateDatabase(t.Context(), "meta-db"); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pgx.Connect(t.Context(), s.URL("meta-db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	if _, err := os.Stat(filepath.Join(dir, "postgres.log")); err != nil {
		t.Errorf("no server log: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(t.Context(), s.URL("meta-db")); err == nil {
		t.Fatal("connected after Stop")
	}

	// Restart on the same directory: the data is still there.
	s2 := start(t, dir)
	if got := queryInt(t, s2.URL("meta-db"), "SELECT v FROM kept"); got != 42 {
		t.Fatalf("after restart: got %d, want 42", got)
	}
}

// postmasterPID reads the postmaster's PID from the first line of postmaster.pid.
func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

// alive reports whether pid names a process that has not exited (a zombie
// waiting to be reaped counts as exited).
func alive(pid int) bool {
	st := processState(pid)
	return st != 0 && st != 'Z'
}

// waitExit waits up to d for pid to exit and reports whether it did.
func waitExit(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for alive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func TestRestartAfterKill(t *testing.T) {
	dir := testDir(t)
	s := start(t, dir)
	pid := postmasterPID(t, dir)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The backends notice the postmaster's death and exit; wait for the
	// postmaster itself to be reaped (it is pg_ctl's orphan, adopted by init).
	if !waitExit(pid, 10*time.Second) {
		t.Fatalf("postmaster %d still alive after SIGKILL", pid)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); err != nil {
		t.Fatalf("expected a stale postmaster.pid: %v", err)
	}
	s2, err := Start(t.Context(), Options{Dir: dir})
	if err != nil {
		t.Fatalf("restart over a stale postmaster.pid: %v", err)
	}
	t.Cleanup(func() { _ = s2.Stop() })
	if got := queryInt(t, s2.URL("postgres"), "SELECT 7"); got != 7 {
		t.Fatalf("got %d", got)
	}
	_ = s
}

func TestStartOverRunningServer(t *testing.T) {
	// A process that died without calling Stop leaves its server running;
	// the next Start on the directory must still succeed.
	dir := testDir(t)
	s1 := start(t, dir)
	old := postmasterPID(t, dir)
	s2 := start(t, dir)
	// pg_ctl stop -w returns once postmaster.pid is gone, a moment before
	// the process itself exits.
	if !waitExit(old, 5*time.Second) {
		t.Errorf("the earlier server (pid %d) is still running", old)
	}
	if got := queryInt(t, s2.URL("postgres"), "SELECT 1"); got != 1 {
		t.Fatalf("got %d", got)
	}
	_ = s1
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(t.Context(), Options{}); err == nil || !strings.Contains(err.Error(), "Dir is required") {
		t.Errorf("empty Dir: %v", err)
	}
	if _, err := Start(t.Context(), Options{Dir: testDir(t), Port: 70000}); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("bad port: %v", err)
	}
	long := "/tmp/" + strings.Repeat("d", 120)
	if _, err := Start(t.Context(), Options{Dir: long}); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Errorf("long dir: %v", err)
	}
	if os.Geteuid() == 0 {
		// A directory inside a 0700 parent cannot be reached by postgres.
		parent := testDir(t)
		if err := os.Chmod(parent, 0o700); err != nil {
			t.Fatal(err)
		}
		_, err := Start(t.Context(), Options{Dir: filepath.Join(parent, "pg")})
		if err == nil || !strings.Contains(err.Error(), "cannot reach") {
			t.Errorf("0700 parent: %v", err)
		}
	}
	// A port in use: the start fails and the error quotes the server log.
	dir := testDir(t)
	s := start(t, dir)
	_, err := Start(t.Context(), Options{Dir: testDir(t), Port: s.Port()})
	if err == nil || !strings.Contains(err.Error(), "postgres.log") {
		t.Errorf("port in use: %v", err)
	}
}

func TestCheckTraversable(t *testing.T) {
	dir := testDir(t)
	sub := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkTraversable(sub, 12345, 12345); err != nil {
		t.Errorf("0755 chain: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, "a"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := checkTraversable(sub, 12345, 12345)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "a")+" has mode 0700") {
		t.Errorf("0700 parent: %v", err)
	}
}

func TestStartTempReapsDeadOwners(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL: not in -short (make test runs it)")
	}
	prefix := "pglocal-reap-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	s1, err := StartTemp(t.Context(), prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s1.Stop() })
	if !strings.HasPrefix(s1.Dir(), "/tmp/"+prefix+"-") {
		t.Fatalf("dir %s", s1.Dir())
	}
	pid1 := postmasterPID(t, s1.Dir())

	// Pretend its owner died: record the PID of a process that has exited.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s1.Dir(), ownerFile), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := StartTemp(t.Context(), prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !waitExit(pid1, 10*time.Second) {
		t.Error("the server of a dead owner still runs")
	}
	if _, err := os.Stat(s1.Dir()); !os.IsNotExist(err) {
		t.Errorf("the directory of a dead owner remains: %v", err)
	}
	// A live owner's server is left alone; Stop removes its directory.
	s3, err := StartTemp(t.Context(), prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, s2.URL("postgres"), "SELECT 2"); got != 2 {
		t.Fatalf("got %d", got)
	}
	for _, s := range []*Server{s2, s3} {
		if err := s.Stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(s.Dir()); !os.IsNotExist(err) {
			t.Errorf("Stop left %s: %v", s.Dir(), err)
		}
	}
	if _, err := StartTemp(t.Context(), "a/b", nil); err == nil {
		t.Error("a prefix with a slash was accepted")
	}
}
