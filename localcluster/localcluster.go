// Package localcluster runs a whole chunkraid cluster on one machine as real
// processes: a private PostgreSQL, the metaserver, N chunkservers and one
// hostd, each a child process of the chunkraid binary with its own log file.
// `chunkraid demo` and the end-to-end tests use it.
package localcluster

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/internal/atomicfile"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/pglocal"
)

// Options configures a local cluster. Zero values mean the defaults.
type Options struct {
	// Dir holds all state: postgres/, chunkservers' data, logs/. Required.
	// Existing state is reused.
	Dir string
	// PGDir is PostgreSQL's directory. Default: Dir/postgres. As root the
	// server runs as the postgres user, which must be able to reach it
	// (see DemoPGDir).
	PGDir string
	// Binary is the chunkraid binary. Default: this executable.
	Binary string
	// Chunkservers is how many chunkservers to run. Default 3.
	Chunkservers int
	// PGStandby runs a synchronous streaming standby of PostgreSQL (in
	// PGDir + "-standby") and gives the metaservers both servers in one
	// URL with target_session_attrs=read-write, so that they follow a
	// promotion (Cluster.PGStandby).
	PGStandby bool
	// Metaservers is how many metaservers to run on the one PostgreSQL
	// (the first on MetaPort, the others on free ports); every daemon and
	// Client are given all their URLs. Default 1.
	Metaservers int
	// Hosts is how many hostds to run: host1 (HostName) and host2, host3,
	// ..., on consecutive iSCSI ports after ISCSIPort (free ones if 0).
	// Default 1.
	Hosts int
	// ChunkSize is the cluster's chunk size on first creation. Default 10 GiB.
	ChunkSize int64
	// Ports: 0 picks free ports. NBDPort is the first chunkserver's; the
	// others follow.
	PGPort, MetaPort, ISCSIPort, NBDPort int
	// ExtraHostdArgs and ExtraChunkserverArgs are appended to those daemons'
	// command lines.
	ExtraHostdArgs, ExtraChunkserverArgs, ExtraMetaArgs []string
	// ChunkserverArgs, if set, returns more arguments for chunkserver i
	// (from 0), after ExtraChunkserverArgs: say an --advertise address of a
	// proxy in front of it.
	ChunkserverArgs func(i int) []string
	// Logger receives progress lines. nil discards.
	Logger *slog.Logger
}

// Proc is one daemon process of the cluster.
type Proc struct {
	Name string
	Bin  string
	Args []string
	Log  string // path of its log file

	mu struct {
		sync.Mutex
		cmd  *exec.Cmd     // guarded by mu
		done chan struct{} // closed when cmd has exited; guarded by mu
	}
}

// Cluster is a running local cluster.
type Cluster struct {
	opt Options
	PG  *pglocal.Server
	// PGStandby is PG's synchronous standby (Options.PGStandby), or nil.
	PGStandby *pglocal.Server
	Meta      *Proc
	CS        []*Proc
	Hostd     *Proc

	MetaURL string
	// Metas are every metaserver started, Meta first, and MetaURLs their
	// URLs (MetaURL first).
	Metas    []*Proc
	MetaURLs []string
	// Token is the cluster's admin API token, read from TokenFile.
	Token        string
	ISCSIAddr    string
	NBDAddrs     []string
	ControlAddrs []string
	HostName     string

	// Hosts are every hostd started, by name; Hostd is Hosts[HostName].
	Hosts     map[string]*Proc
	HostISCSI map[string]string // iSCSI address of each host
	// HostMetrics is the metrics address of each host (https://ADDR/metrics).
	HostMetrics map[string]string
	wibRoot     string
}

func (o *Options) defaults() error {
	if o.Dir == "" {
		return errors.New("localcluster: Dir is required")
	}
	abs, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	o.Dir = abs
	if o.Binary == "" {
		o.Binary, err = os.Executable()
		if err != nil {
			return err
		}
	}
	if o.PGDir == "" {
		o.PGDir = filepath.Join(o.Dir, "postgres")
	}
	if o.Chunkservers == 0 {
		o.Chunkservers = 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// handedOut are the ports FreePort returned: the kernel may offer a port
// again once its probe closed, before the daemon it is meant for binds it.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1, never one it
// returned before in this process.
func FreePort() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("localcluster: the kernel keeps offering ports already handed out")
}

func pick(p *int) error {
	if *p != 0 {
		return nil
	}
	var err error
	*p, err = FreePort()
	return err
}

// Start brings the cluster up and waits until every chunkserver and the
// host are online. On error everything started so far is stopped.
func Start(ctx context.Context, opt Options) (c *Cluster, err error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	for _, p := range []*int{&opt.MetaPort, &opt.ISCSIPort} {
		if err := pick(p); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"logs", "chunkservers"} {
		if err := os.MkdirAll(filepath.Join(opt.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	c = &Cluster{opt: opt, HostName: "host1", Hosts: map[string]*Proc{}, HostISCSI: map[string]string{},
		HostMetrics: map[string]string{}}
	// Write-intent bitmaps live in shared memory, in a directory named for
	// this cluster so that two clusters on one machine never share one.
	c.wibRoot = WIBRoot(opt.Dir)
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()

	opt.Logger.Info("starting PostgreSQL", "dir", opt.PGDir)
	c.PG, err = pglocal.Start(ctx, pglocal.Options{Dir: opt.PGDir, Port: opt.PGPort, Logger: opt.Logger})
	if err != nil {
		return c, err
	}
	if err := c.PG.CreateDatabase(ctx, "chunkraid"); err != nil {
		return c, err
	}
	dbURL := c.PG.URL("chunkraid")
	if opt.PGStandby {
		if c.PGStandby, err = c.PG.StartStandby(ctx, pglocal.Options{Dir: opt.PGDir + "-standby", Logger: opt.Logger}, true); err != nil {
			return c, err
		}
		dbURL = pglocal.FailoverURL("chunkraid", c.PG, c.PGStandby)
	}

	c.MetaURL = fmt.Sprintf("https://127.0.0.1:%d", opt.MetaPort)
	if err := os.Remove(c.CAFile()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return c, err // the metaserver writes it afresh: its presence says it started
	}
	metaArgs := []string{"metaserver", "--listen", fmt.Sprintf("127.0.0.1:%d", opt.MetaPort),
		"--database-url", dbURL, "--admin-token-file", c.TokenFile(), "--ca-file", c.CAFile()}
	if opt.ChunkSize > 0 {
		metaArgs = append(metaArgs, "--chunk-size", strconv.FormatInt(opt.ChunkSize, 10))
	}
	metaArgs = append(metaArgs, opt.ExtraMetaArgs...)
	c.Meta = c.newProc("metaserver", metaArgs)
	c.Metas, c.MetaURLs = []*Proc{c.Meta}, []string{c.MetaURL}
	if err := c.Meta.Start(); err != nil {
		return c, err
	}
	if err := c.waitHTTP(ctx); err != nil {
		return c, err
	}
	tok, err := os.ReadFile(c.TokenFile())
	if err != nil {
		return c, fmt.Errorf("the cluster's admin token (written at its first start): %w; a cluster whose token file is lost has to be recreated (demo --clean)", err)
	}
	c.Token = strings.TrimSpace(string(tok))
	if err := c.ensureJoinToken(ctx); err != nil {
		return c, err
	}
	for i := 2; i <= opt.Metaservers; i++ {
		if err := c.startMetaserver(ctx, i, metaArgs); err != nil {
			return c, err
		}
	}

	for i := 0; i < opt.Chunkservers; i++ {
		port := 0
		if opt.NBDPort != 0 {
			port = opt.NBDPort + i
		} else if port, err = FreePort(); err != nil {
			return c, err
		}
		name := fmt.Sprintf("cs%d", i+1)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		cport := 0
		if opt.NBDPort != 0 {
			cport = opt.NBDPort + 100 + i
		} else if cport, err = FreePort(); err != nil {
			return c, err
		}
		caddr := fmt.Sprintf("127.0.0.1:%d", cport)
		args := append([]string{"chunkserver", "--name", name, "--listen", addr, "--control-listen", caddr,
			"--data-dir", filepath.Join(opt.Dir, "chunkservers", name), "--metaserver", c.MetaList(),
			"--ca-file", c.CAFile(), "--join-token-file", c.JoinTokenFile()}, opt.ExtraChunkserverArgs...)
		if opt.ChunkserverArgs != nil {
			args = append(args, opt.ChunkserverArgs(i)...)
		}
		p := c.newProc(name, args)
		if err := p.Start(); err != nil {
			return c, err
		}
		c.CS = append(c.CS, p)
		c.NBDAddrs = append(c.NBDAddrs, addr)
		c.ControlAddrs = append(c.ControlAddrs, caddr)
	}
	c.ISCSIAddr = fmt.Sprintf("127.0.0.1:%d", opt.ISCSIPort)
	if c.Hostd, err = c.startHostd(c.HostName, c.ISCSIAddr); err != nil {
		return c, err
	}
	if err := c.WaitOnline(ctx, 30*time.Second); err != nil {
		return c, err
	}
	for i := 2; i <= opt.Hosts; i++ {
		port := 0
		if opt.ISCSIPort != 0 {
			port = opt.ISCSIPort + i - 1
		}
		if _, err := c.addHostdAt(ctx, fmt.Sprintf("host%d", i), port); err != nil {
			return c, err
		}
	}
	return c, nil
}

// MetaList is the metaservers' URLs, comma-separated, as the daemons'
// --metaserver and CHUNKRAID_METASERVER take them.
func (c *Cluster) MetaList() string { return strings.Join(c.MetaURLs, ",") }

// startMetaserver starts metaserver i (from 2) on a free port with the
// first one's arguments (metaArgs) and waits until it answers.
func (c *Cluster) startMetaserver(ctx context.Context, i int, metaArgs []string) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	args := slices.Clone(metaArgs)
	for j := range args {
		switch args[j] {
		case "--listen":
			args[j+1] = fmt.Sprintf("127.0.0.1:%d", port)
		case "--ca-file":
			// Each writes the same CA certificate: to its own file.
			args[j+1] = filepath.Join(c.opt.Dir, fmt.Sprintf("ca-%d.pem", i))
		}
	}
	p := c.newProc(fmt.Sprintf("metaserver%d", i), args)
	if err := p.Start(); err != nil {
		return err
	}
	u := fmt.Sprintf("https://127.0.0.1:%d", port)
	c.Metas, c.MetaURLs = append(c.Metas, p), append(c.MetaURLs, u)
	tc, err := c.TLS()
	if err != nil {
		return err
	}
	cl := api.NewTLSClient(u, tc)
	for deadline := time.Now().Add(30 * time.Second); ; {
		err := cl.Health(ctx)
		if err == nil {
			return nil
		}
		if p.Exited() || time.Now().After(deadline) {
			return fmt.Errorf("metaserver %d did not answer: %w (log: %s)\n%s", i, err, p.Log, tail(p.Log, 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// HostNames are the names of the hostds started, host1 first.
func (c *Cluster) HostNames() []string {
	names := slices.Collect(maps.Keys(c.Hosts))
	slices.SortFunc(names, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b))
	})
	return names
}

// AddHostd starts another hostd named name on a free iSCSI port and waits
// until it is online.
func (c *Cluster) AddHostd(ctx context.Context, name string) (*Proc, error) {
	return c.addHostdAt(ctx, name, 0)
}

// addHostdAt starts a hostd named name on iSCSI port (0: a free one) and
// waits until it is online.
func (c *Cluster) addHostdAt(ctx context.Context, name string, port int) (*Proc, error) {
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	p, err := c.startHostd(name, fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		hs, err := c.Client().ListHosts(ctx)
		if err == nil {
			for _, h := range hs {
				if h.Name == name && h.State == api.StateOnline {
					return p, nil
				}
			}
		}
		if p.Exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("hostd %s did not come online (log: %s):\n%s", name, p.Log, tail(p.Log, 20))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) startHostd(name, addr string) (*Proc, error) {
	mport, err := FreePort()
	if err != nil {
		return nil, err
	}
	maddr := fmt.Sprintf("127.0.0.1:%d", mport)
	p := c.newProc("hostd-"+name, append([]string{"hostd", "--name", name, "--listen", addr,
		"--wib-dir", filepath.Join(c.wibRoot, name), "--state-dir", filepath.Join(c.opt.Dir, "hosts", name),
		"--metaserver", c.MetaList(), "--ca-file", c.CAFile(), "--join-token-file", c.JoinTokenFile(),
		"--metrics-listen", maddr}, c.opt.ExtraHostdArgs...))
	if name == c.HostName {
		p.Log = filepath.Join(c.opt.Dir, "logs", "hostd.log")
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	c.Hosts[name] = p
	c.HostISCSI[name] = addr
	c.HostMetrics[name] = maddr
	return p, nil
}

// ISCSIURLOn is the libiscsi URL of a volume's LUN 0 on the named host.
func (c *Cluster) ISCSIURLOn(host, volume string) string {
	return fmt.Sprintf("iscsi://%s/%s/0", c.HostISCSI[host], IQN(volume))
}

// WIBRoot is the shared-memory directory of the write-intent bitmaps of a
// cluster whose state lives in dir.
func WIBRoot(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	return filepath.Join("/dev/shm", fmt.Sprintf("chunkraid-%x", fnv64(abs)))
}

// DemoPGRoot holds, when the demo runs as root, one PostgreSQL directory per
// demo state directory.
const DemoPGRoot = "/var/lib/chunkraid-demo"

// DemoPGDir is where the demo whose state lives in dir keeps PostgreSQL.
// PostgreSQL refuses to run as root, so as root it runs as the postgres
// user, who must be able to reach its directory; a checkout in /root (mode
// 0700) or under a mktemp -d directory is out of its reach. So as root the
// directory is DemoPGRoot/<hash of dir's absolute path> (two checkouts
// never share one), unless dir/postgres already holds a cluster from an
// earlier run; otherwise it is dir/postgres.
func DemoPGDir(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	local := filepath.Join(abs, "postgres")
	if os.Geteuid() != 0 {
		return local
	}
	if _, err := os.Stat(filepath.Join(local, "data", "PG_VERSION")); err == nil {
		return local
	}
	return filepath.Join(DemoPGRoot, fmt.Sprintf("%x", fnv64(abs)))
}

// RemoveWIBs deletes the cluster's write-intent bitmaps from shared memory
// (after Stop, when the state is not kept).
func (c *Cluster) RemoveWIBs() error { return os.RemoveAll(c.wibRoot) }

// WIBDir is where the named host keeps its write-intent bitmaps.
func (c *Cluster) WIBDir(host string) string { return filepath.Join(c.wibRoot, host) }

func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func (c *Cluster) newProc(name string, args []string) *Proc {
	return &Proc{Name: name, Bin: c.opt.Binary, Args: append([]string{"--log-level", "debug"}, args...),
		Log: filepath.Join(c.opt.Dir, "logs", name+".log")}
}

// Client returns an API client for the cluster's metaserver with the
// admin token.
func (c *Cluster) Client() *api.Client {
	tc, err := c.TLS()
	if err != nil {
		// Not written yet: a client that fails to verify the metaserver.
		tc = &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS13}
	}
	cl := api.NewTLSClient(c.MetaList(), tc)
	if c.Token != "" {
		cl = cl.WithToken(c.Token)
	}
	return cl
}

// JoinTokenFile is the file that holds the join token the cluster's
// daemons register with the first time.
func (c *Cluster) JoinTokenFile() string { return filepath.Join(c.opt.Dir, "join.token") }

// joinTokenName names the join token of the daemons localcluster starts.
const joinTokenName = "localcluster-join"

// ensureJoinToken makes the join token of JoinTokenFile unless the file
// exists (a cluster started before); a token of that name whose secret
// was lost is replaced.
func (c *Cluster) ensureJoinToken(ctx context.Context) error {
	if _, err := os.Stat(c.JoinTokenFile()); err == nil {
		return nil
	}
	cl := c.Client()
	t, err := cl.CreateToken(ctx, api.CreateTokenRequest{Name: joinTokenName, Role: api.RoleJoin})
	if api.IsAlreadyExists(err) {
		if err := cl.RevokeToken(ctx, joinTokenName); err != nil {
			return fmt.Errorf("replacing the join token: %w", err)
		}
		t, err = cl.CreateToken(ctx, api.CreateTokenRequest{Name: joinTokenName, Role: api.RoleJoin})
	}
	if err != nil {
		return fmt.Errorf("the daemons' join token: %w", err)
	}
	return atomicfile.Write(c.JoinTokenFile(), []byte(t.Secret+"\n"), 0o600)
}

// CAFile is the file the metaserver writes the cluster CA's certificate
// to, which every client and daemon of the cluster verifies it with.
func (c *Cluster) CAFile() string { return filepath.Join(c.opt.Dir, "ca.pem") }

// TLS is the configuration of a client of the cluster's metaserver: it
// trusts only the metaserver certificates of the cluster CA.
func (c *Cluster) TLS() (*tls.Config, error) {
	b, err := os.ReadFile(c.CAFile())
	if err != nil {
		return nil, err
	}
	return pki.ClientConfig(b, pki.Metaserver)
}

// TokenFile is the file that holds the cluster's admin token.
func (c *Cluster) TokenFile() string { return filepath.Join(c.opt.Dir, "admin.token") }

// Binary is the chunkraid binary the cluster runs.
func (c *Cluster) Binary() string { return c.opt.Binary }

// Dir is the cluster's state directory.
func (c *Cluster) Dir() string { return c.opt.Dir }

func (c *Cluster) waitHTTP(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.Client().Health(ctx)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("metaserver did not answer within 30s: %w (log: %s)\n%s", err, c.Meta.Log, tail(c.Meta.Log, 20))
		}
		if c.Meta.Exited() {
			return fmt.Errorf("metaserver exited (log: %s):\n%s", c.Meta.Log, tail(c.Meta.Log, 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitOnline waits until every chunkserver and the host report online.
func (c *Cluster) WaitOnline(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ss, err1 := c.Client().ListChunkservers(ctx)
		hs, err2 := c.Client().ListHosts(ctx)
		online := 0
		for _, s := range ss {
			if s.State == api.StateOnline {
				online++
			}
		}
		hostUp := false
		for _, h := range hs {
			hostUp = hostUp || (h.Name == c.HostName && h.State == api.StateOnline)
		}
		if err1 == nil && err2 == nil && online >= len(c.CS) && hostUp {
			return nil
		}
		for _, p := range append(append([]*Proc{c.Hostd}, c.Metas...), c.CS...) {
			if p != nil && p.Exited() {
				return fmt.Errorf("%s exited (log: %s):\n%s", p.Name, p.Log, tail(p.Log, 20))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not online after %v: %d of %d chunkservers online, host online: %v (%v %v)", timeout, online, len(c.CS), hostUp, err1, err2)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// IQN is the iSCSI target name of a volume.
func IQN(volume string) string { return api.IQNPrefix + volume }

// ISCSIURL is the libiscsi URL of a volume's LUN 0.
func (c *Cluster) ISCSIURL(volume string) string {
	return fmt.Sprintf("iscsi://%s/%s/0", c.ISCSIAddr, IQN(volume))
}

// WaitTarget waits until the first host serves the volume's target,
// probing with iscsi-ls (SendTargets discovery).
func (c *Cluster) WaitTarget(ctx context.Context, volume string, timeout time.Duration) error {
	return c.WaitTargetOn(ctx, c.HostName, volume, timeout)
}

// WaitTargetOn waits until the named host serves the volume's target.
func (c *Cluster) WaitTargetOn(ctx context.Context, host, volume string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	hp := c.Hosts[host]
	if hp == nil {
		return fmt.Errorf("no host %s in this cluster", host)
	}
	for {
		out, err := exec.CommandContext(ctx, "iscsi-ls", "iscsi://"+c.HostISCSI[host]).CombinedOutput()
		last = string(out)
		// Every host lists every volume, each at the portal of the host
		// that serves it.
		if err == nil && strings.Contains(last, "Target:"+IQN(volume)+" Portal:"+c.HostISCSI[host]+",") {
			return nil
		}
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("iscsi-ls not found: run make deps")
		}
		if hp.Exited() {
			return fmt.Errorf("hostd %s exited (log: %s):\n%s", host, hp.Log, tail(hp.Log, 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("target for volume %s not served by %s after %v; iscsi-ls said: %s\nhostd log:\n%s", volume, host, timeout, last, tail(hp.Log, 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Stop stops the daemons in dependency order (host, chunkservers,
// metaserver), each with SIGTERM and a grace period, then PostgreSQL.
func (c *Cluster) Stop() error {
	var errs []error
	for _, p := range c.Hosts {
		errs = append(errs, p.Stop(15*time.Second))
	}
	var wg sync.WaitGroup
	cerrs := make([]error, len(c.CS))
	for i, p := range c.CS {
		wg.Add(1)
		go func() { defer wg.Done(); cerrs[i] = p.Stop(15 * time.Second) }()
	}
	wg.Wait()
	errs = append(errs, cerrs...)
	for _, m := range c.Metas {
		errs = append(errs, m.Stop(15*time.Second))
	}
	if c.PGStandby != nil {
		errs = append(errs, c.PGStandby.Stop())
	}
	if c.PG != nil {
		errs = append(errs, c.PG.Stop())
	}
	return errors.Join(errs...)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
