package metaserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chunkraid/chunkraid/budget"
	"github.com/chunkraid/chunkraid/internal/atomicfile"
	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/migrations"
	"github.com/chunkraid/chunkraid/web"
)

// Config configures a metaserver. Zero values mean the defaults.
type Config struct {
	// DatabaseURL is the PostgreSQL URL, e.g.
	// postgres://postgres@127.0.0.1:5432/chunkraid?sslmode=disable. It may
	// carry search_path to keep the cluster in its own schema, which must
	// exist. Required.
	DatabaseURL string
	// Listen is the HTTP listen address; "" means 127.0.0.1:8080.
	Listen string
	// Listener, if set, is used instead of Listen; Run closes it.
	Listener net.Listener
	// ChunkSize is the chunk size in bytes, used only when the cluster is
	// first created; 0 means 10 GiB. It must be a multiple of 1 MiB.
	ChunkSize int64
	// OfflineAfter is how long a server may go without a heartbeat before
	// it is offline; 0 means 10 s.
	OfflineAfter time.Duration
	// IOTimeout is t_io, the time after which a host fails a member whose
	// request has not completed; 0 means 5 s. Daemons read it from the
	// cluster settings and their registration.
	IOTimeout time.Duration
	// LogPeriod is T, the rotation period of the chunks' LOG bitmaps; 0
	// means 60 s. New rejects a budget that breaks t_io < offline_after < T
	// or T >= 3·t_io (DESIGN §5). Run every metaserver of a cluster with
	// the same three durations.
	LogPeriod time.Duration
	// ReplaceAfter is how long a chunkserver may stay offline before its
	// degraded members are replaced by new chunks and rebuilt; 0 means 10
	// minutes. It must exceed LogPeriod (DESIGN §5: T ≪ replace_after).
	ReplaceAfter time.Duration
	// HostFailoverAfter is how long a host may go without heartbeat before
	// the leader attaches its volumes to a live host; 0 means 30 s. It must
	// exceed OfflineAfter.
	HostFailoverAfter time.Duration
	// Overcommit is the capacity guard's ratio: a volume is created only
	// if its raw size fits in Overcommit × the free raw space, less what
	// is promised to chunks but not yet written. 0 means 1 (thin chunks
	// that can all be written in full); from 0.1 to 100.
	Overcommit float64
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// AdminTokenFile is where the metaserver writes the admin token it
	// creates when the cluster has no admin token (at its first start),
	// mode 0600; the token is shown nowhere else. Empty: the token is
	// printed once on Stdout.
	AdminTokenFile string
	// Stdout receives the admin token when AdminTokenFile is empty; nil
	// means os.Stdout.
	Stdout io.Writer
	// MaxLongPolls bounds the long polls one caller (token) may have
	// waiting at once; one more is refused with 429. 0 means 4.
	MaxLongPolls int
	// MaxBodyBytes bounds every request's body; a longer one is refused
	// (400). 0 means 1 MiB, also the most a JSON body may have.
	MaxBodyBytes int64
	// The API is served over TLS 1.3 with the certificate of TLSCertFile
	// and TLSKeyFile (one `chunkraid cert issue` made, signed by the
	// cluster CA for the metaserver), or else with one the cluster CA
	// signs at start for TLSNames (host names and addresses; default: the
	// listen address's host, localhost, 127.0.0.1 and ::1). InsecureHTTP
	// serves plain HTTP instead, with a warning. CAFile, if set, receives
	// the cluster CA's certificate, what clients verify the API with.
	InsecureHTTP            bool
	TLSNames                []string
	TLSCertFile, TLSKeyFile string
	CAFile                  string
	// Metrics receives the server's Prometheus series, served at /metrics
	// to any token; nil means a registry of its own.
	Metrics *prometheus.Registry
}

const (
	defaultListen       = "127.0.0.1:8080"
	defaultChunkSize    = 10 << 30
	minChunkSize        = 1 << 20
	defaultOfflineAfter = 10 * time.Second
	defaultIOTimeout    = 5 * time.Second
	defaultLogPeriod    = 60 * time.Second
	defaultReplaceAfter = 10 * time.Minute
	defaultHostFailover = 30 * time.Second
	// maxConns bounds the pooled PostgreSQL connections of one metaserver;
	// it also keeps a LISTEN connection and a leader-election connection.
	maxConns = 10
	// listenInterval: the generation listener reads the generation itself
	// after this long without a notification.
	listenInterval = 5 * time.Second
	// shutdownTimeout bounds the graceful HTTP shutdown.
	shutdownTimeout = 10 * time.Second
)

func (c *Config) validate() error {
	if c.DatabaseURL == "" {
		return errors.New("metaserver: DatabaseURL is required, e.g. postgres://postgres@127.0.0.1:5432/chunkraid?sslmode=disable")
	}
	if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		return fmt.Errorf("metaserver: DatabaseURL: %w", err)
	}
	if c.ChunkSize < 0 || c.ChunkSize%minChunkSize != 0 {
		return fmt.Errorf("metaserver: chunk size %d must be a positive multiple of 1 MiB (1048576), e.g. 67108864 for 64 MiB", c.ChunkSize)
	}
	if c.OfflineAfter < 0 {
		return fmt.Errorf("metaserver: OfflineAfter %v must not be negative", c.OfflineAfter)
	}
	if c.IOTimeout < 0 {
		return fmt.Errorf("metaserver: IOTimeout %v must not be negative", c.IOTimeout)
	}
	if c.LogPeriod < 0 {
		return fmt.Errorf("metaserver: LogPeriod %v must not be negative", c.LogPeriod)
	}
	if c.Listen == "" {
		c.Listen = defaultListen
	}
	if c.OfflineAfter == 0 {
		c.OfflineAfter = defaultOfflineAfter
	}
	if c.IOTimeout == 0 {
		c.IOTimeout = defaultIOTimeout
	}
	if c.LogPeriod == 0 {
		c.LogPeriod = defaultLogPeriod
	}
	if err := budget.Validate(c.IOTimeout, c.OfflineAfter, c.LogPeriod); err != nil {
		return budgetError(err)
	}
	if c.ReplaceAfter == 0 {
		c.ReplaceAfter = defaultReplaceAfter
	}
	if c.ReplaceAfter <= c.LogPeriod {
		return fmt.Errorf("metaserver: --replace-after %v must exceed the LOG period T=%v (DESIGN §5: t_io < offline_after < T ≪ replace_after): a chunkserver back within T resyncs from its LOG instead of being rebuilt",
			c.ReplaceAfter, c.LogPeriod)
	}
	if c.HostFailoverAfter < 0 {
		return fmt.Errorf("metaserver: --host-failover-after %v must not be negative", c.HostFailoverAfter)
	}
	if c.HostFailoverAfter == 0 {
		c.HostFailoverAfter = defaultHostFailover
	}
	if err := budget.ValidateHostFailover(c.OfflineAfter, c.HostFailoverAfter); err != nil {
		return budgetError(err)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MaxLongPolls < 0 {
		return fmt.Errorf("metaserver: MaxLongPolls %d must not be negative", c.MaxLongPolls)
	}
	if c.MaxLongPolls == 0 {
		c.MaxLongPolls = 4
	}
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("metaserver: MaxBodyBytes %d must not be negative", c.MaxBodyBytes)
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = maxBody
	}
	if c.Overcommit == 0 {
		c.Overcommit = 1
	}
	if math.IsNaN(c.Overcommit) || c.Overcommit < 0.1 || c.Overcommit > 100 {
		return fmt.Errorf("metaserver: --overcommit %g must be from 0.1 to 100 (1: every volume could be written in full)", c.Overcommit)
	}
	return nil
}

// budgetError turns the rules that budget.Validate says are broken into
// one error that names each rule; it still matches budget.ErrBudget.
func budgetError(err error) error {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var b strings.Builder
	for _, e := range errs {
		var be *budget.Error
		if errors.As(e, &be) {
			fmt.Fprintf(&b, "; rule %s: %s", be.Rule, be.Msg)
		} else {
			fmt.Fprintf(&b, "; %v", e)
		}
	}
	return &wrapped{
		msg: "metaserver: the timeout budget (--io-timeout, --offline-after, --log-period) must satisfy t_io < offline_after < T and T >= 3*t_io" + b.String(),
		err: err,
	}
}

// wrapped is an error with its own message that unwraps to err.
type wrapped struct {
	msg string
	err error
}

func (e *wrapped) Error() string { return e.msg }
func (e *wrapped) Unwrap() error { return e.err }

// Server is a metaserver: the REST API over the cluster state in PostgreSQL.
type Server struct {
	cfg     Config
	log     *slog.Logger
	handler http.Handler
	gens    *generationHub
	running atomic.Bool
	// ready is closed once Run listens; st and addr are set before.
	ready chan struct{}
	st    *store
	addr  net.Addr
	// stopping is closed when Run's context ends; long polls return early.
	stopping chan struct{}
	// waiting counts the long polls waiting for a change.
	waiting atomic.Int64
	// polls counts each caller's long polls.
	polls pollCounts
	// leading is true while this instance holds the leader lock and runs
	// the background loops.
	leading atomic.Bool
	metrics *metrics
	router  http.Handler // the chi router of every API route (routes)
}

// New validates cfg and returns a server; Run starts it.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		gens:     newGenerationHub(listenInterval),
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
	}
	reg := cfg.Metrics
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(s, reg)
	api := s.routes()
	dashboard := web.Handler()
	// The dashboard (package web) at / and /static/; the API and the rest
	// on the router.
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if web.Owns(r.URL.Path) {
			dashboard.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
	s.router = api
	return s, nil
}

// Handler returns the HTTP handler of the API. It answers 503 until Run has
// connected to the database.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready returns a channel closed once Run serves requests.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the address the server listens on, or nil before Ready.
func (s *Server) Addr() net.Addr {
	select {
	case <-s.ready:
		return s.addr
	default:
		return nil
	}
}

// isReady reports whether Run has set up the store.
func (s *Server) isReady() bool {
	select {
	case <-s.ready:
		return true
	default:
		return false
	}
}

// Run connects to PostgreSQL, applies the migrations, creates the cluster row
// on first start and serves HTTP until ctx ends; then it shuts down
// gracefully. It returns nil after a shutdown caused by ctx.
func (s *Server) Run(ctx context.Context) (err error) {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("metaserver: Run called twice")
	}
	ln := s.cfg.Listener
	defer func() {
		// On an error before serving, Run still owns the listener.
		if err != nil && ln != nil && !s.isReady() {
			_ = ln.Close()
		}
	}()
	pcfg, err := pgxpool.ParseConfig(s.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("metaserver: DatabaseURL: %w", err)
	}
	pcfg.MaxConns = maxConns
	db, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("metaserver: %w", err)
	}
	defer db.Close()
	cc := pcfg.ConnConfig
	where := fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = db.Ping(pctx)
	cancel()
	if err != nil {
		return fmt.Errorf("metaserver: connect to PostgreSQL at %s: %w", where, err)
	}
	version, err := migrate(ctx, db, migrations.FS, s.log)
	if err != nil {
		return fmt.Errorf("metaserver: migrate the schema at %s: %w", where, err)
	}
	chunkSize, secret, err := s.initCluster(ctx, db)
	if err != nil {
		return fmt.Errorf("metaserver: %w", err)
	}
	if ln == nil {
		ln, err = net.Listen("tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("metaserver: %w", err)
		}
	}

	box, err := newSealer(secret)
	if err != nil {
		return fmt.Errorf("metaserver: %w", err)
	}
	caCert, caKey, err := loadCA(ctx, db, box, s.log)
	if err != nil {
		return fmt.Errorf("metaserver: the cluster CA: %w", err)
	}
	if s.cfg.CAFile != "" {
		if err := atomicfile.Write(s.cfg.CAFile, caCert, 0o644); err != nil {
			return fmt.Errorf("metaserver: writing the cluster CA certificate: %w", err)
		}
	}
	if s.cfg.InsecureHTTP {
		s.log.Warn("serving plain HTTP (--insecure-http): tokens and CHAP secrets cross the network in clear")
	} else {
		tcfg, names, err := s.serverTLS(caCert, caKey, ln.Addr())
		if err != nil {
			return fmt.Errorf("metaserver: %w", err)
		}
		ln = tls.NewListener(ln, tcfg)
		s.log.Info("serving TLS", "names", names)
	}
	s.st = &store{db: db, overcommit: s.cfg.Overcommit, replaceAfter: s.cfg.ReplaceAfter, caCert: caCert, caKey: caKey, secret: secret, box: box, tokenKey: tokenKey(secret), offlineAfter: s.cfg.OfflineAfter, ioTimeout: s.cfg.IOTimeout,
		logPeriod: s.cfg.LogPeriod, log: s.log, committed: s.gens.observe}
	if _, err := s.st.ensureAdminToken(ctx, s.showAdminToken); err != nil {
		return fmt.Errorf("metaserver: create the admin token: %w", err)
	}
	s.addr = ln.Addr()
	lctx, stopListening := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { s.gens.listen(lctx, db.Config().ConnConfig, s.log) })
	wg.Go(func() { s.lead(lctx, db.Config().ConnConfig) })
	defer func() {
		stopListening()
		wg.Wait()
	}()

	hs := &http.Server{
		Handler: s.handler,
		// No ReadTimeout: its deadline outlives the request headers and
		// would end long polls early. Bodies are small and bounded.
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      api.MaxWait + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	close(s.ready)
	go func() { serveErr <- hs.Serve(ln) }()
	s.log.Info("metaserver listening", "addr", s.addr.String(), "database", where,
		"schema_version", version, "chunk_size", chunkSize)

	select {
	case err := <-serveErr:
		close(s.stopping)
		_ = hs.Close()
		return fmt.Errorf("metaserver: serve: %w", err)
	case <-ctx.Done():
	}
	close(s.stopping)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		s.log.Warn("graceful shutdown incomplete", "err", err)
		_ = hs.Close()
	}
	<-serveErr
	s.log.Info("metaserver stopped")
	return nil
}

// loadCA returns the cluster CA's certificate and key, made and stored
// (the key sealed) by the first metaserver that finds none.
func loadCA(ctx context.Context, db *pgxpool.Pool, box *sealer, log *slog.Logger) (certPEM, keyPEM []byte, err error) {
	const purpose = "cluster/ca_key"
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var cert *string
		var sealed []byte
		if err := tx.QueryRow(ctx, `SELECT ca_cert, ca_key_sealed FROM cluster FOR UPDATE`).Scan(&cert, &sealed); err != nil {
			return err
		}
		if cert != nil {
			certPEM = []byte(*cert)
			keyPEM, err = box.open(sealed, purpose)
			return err
		}
		certPEM, keyPEM, err = pki.NewCA("chunkraid cluster CA", time.Now())
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE cluster SET ca_cert = $1, ca_key_sealed = $2`, string(certPEM), box.seal(keyPEM, purpose)); err != nil {
			return err
		}
		log.Info("created the cluster CA")
		return nil
	})
	return certPEM, keyPEM, err
}

// serverTLS is the API's TLS configuration: the certificate of
// TLSCertFile, which must be the cluster CA's for the metaserver, or else
// one the CA signs now for TLSNames. It returns the names it is valid for.
func (s *Server) serverTLS(caCert, caKey []byte, addr net.Addr) (*tls.Config, []string, error) {
	if s.cfg.TLSCertFile != "" || s.cfg.TLSKeyFile != "" {
		if s.cfg.TLSCertFile == "" || s.cfg.TLSKeyFile == "" {
			return nil, nil, errors.New("--tls-cert-file and --tls-key-file go together")
		}
		cert, err := os.ReadFile(s.cfg.TLSCertFile)
		if err != nil {
			return nil, nil, err
		}
		key, err := os.ReadFile(s.cfg.TLSKeyFile)
		if err != nil {
			return nil, nil, err
		}
		c, err := pki.Verify(caCert, cert, pki.Metaserver)
		if err != nil {
			return nil, nil, fmt.Errorf("--tls-cert-file %s: not a metaserver certificate of this cluster's CA (make one with chunkraid cert issue): %w", s.cfg.TLSCertFile, err)
		}
		tcfg, err := pki.ServerConfig(cert, key)
		if err != nil {
			return nil, nil, fmt.Errorf("--tls-key-file %s: %w", s.cfg.TLSKeyFile, err)
		}
		names := slices.Clone(c.DNSNames)
		for _, ip := range c.IPAddresses {
			names = append(names, ip.String())
		}
		return tcfg, names, nil
	}
	names := s.cfg.TLSNames
	if len(names) == 0 {
		names = defaultTLSNames(addr)
	}
	cert, key, err := pki.Issue(caCert, caKey, pki.Metaserver, "chunkraid metaserver", names, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("its certificate: %w", err)
	}
	tcfg, err := pki.ServerConfig(cert, key)
	return tcfg, names, err
}

// defaultTLSNames are the names the API's certificate carries without
// TLSNames: the listen address's host (if any), localhost and 127.0.0.1.
func defaultTLSNames(addr net.Addr) []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil && host != "" && !slices.Contains(names, host) &&
		!net.ParseIP(host).IsUnspecified() {
		names = append(names, host)
	}
	return names
}

// showAdminToken shows a new admin token, the one time it exists outside
// the caller's hands: in AdminTokenFile, or on Stdout.
func (s *Server) showAdminToken(name, secret string) error {
	if f := s.cfg.AdminTokenFile; f != "" {
		if err := atomicfile.Write(f, []byte(secret+"\n"), 0o600); err != nil {
			return fmt.Errorf("write the admin token to %s: %w", f, err)
		}
		s.log.Info("the cluster had no admin token: created one, written to the admin token file only", "name", name, "file", f)
		return nil
	}
	out := s.cfg.Stdout
	if out == nil {
		out = os.Stdout
	}
	s.log.Info("the cluster had no admin token: created one, printed on standard output only", "name", name)
	_, err := fmt.Fprintf(out, "The cluster had no admin token; created token %q (shown only this once, keep it):\n  export CHUNKRAID_TOKEN=%s\n", name, secret)
	return err
}

// initCluster creates the cluster row on first start, with a random secret,
// and returns the cluster's chunk size and secret, which never change
// afterwards.
func (s *Server) initCluster(ctx context.Context, db *pgxpool.Pool) (chunkSize int64, secret string, err error) {
	want := s.cfg.ChunkSize
	if want == 0 {
		want = defaultChunkSize
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return 0, "", fmt.Errorf("make the cluster secret: %w", err)
	}
	err = pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO cluster (chunk_size, secret) VALUES ($1, $2) ON CONFLICT (singleton) DO NOTHING`,
			want, hex.EncodeToString(key[:])); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT chunk_size, secret FROM cluster`).Scan(&chunkSize, &secret)
	})
	if err != nil {
		return 0, "", fmt.Errorf("initialize the cluster row: %w", err)
	}
	if s.cfg.ChunkSize != 0 && s.cfg.ChunkSize != chunkSize {
		s.log.Warn("the configured chunk size differs from the cluster's, which is fixed at creation; using the cluster's",
			"configured", s.cfg.ChunkSize, "cluster", chunkSize)
	}
	return chunkSize, secret, nil
}
