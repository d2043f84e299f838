// Package pgpool is a small bounded pool of PostgreSQL connections for the
// metaserver: at most MaxConns connections are open, idle ones are reused,
// and a connection that is broken or still inside a transaction when it is
// released is closed instead of being reused.
//
// (pgx's own pgxpool needs github.com/jackc/puddle/v2, which this module does
// not require; the metaserver needs only Acquire/Release and transactions.)
package pgpool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrClosed is returned by Acquire after Close.
var ErrClosed = errors.New("pgpool: pool is closed")

// Config configures a Pool.
type Config struct {
	// ConnString is a PostgreSQL URL or keyword/value string. Required.
	ConnString string
	// MaxConns bounds the open connections; 0 means 8.
	MaxConns int
	// PingIdle: an idle connection older than this is pinged before reuse;
	// 0 means 30 s.
	PingIdle time.Duration
}

// Pool is a bounded pool of *pgx.Conn. It is safe for concurrent use.
type Pool struct {
	cfg      *pgx.ConnConfig
	pingIdle time.Duration
	// slots holds one token per connection that is open and in use or being
	// opened; its capacity is MaxConns.
	slots chan struct{}
	mu    struct {
		sync.Mutex
		idle   []idleConn // guarded by mu; most recently released last
		closed bool       // guarded by mu
	}
}

type idleConn struct {
	conn  *pgx.Conn
	since time.Time
}

// New parses the configuration and returns a pool; it opens no connection
// (use Ping to check the database is reachable).
func New(cfg Config) (*Pool, error) {
	if cfg.ConnString == "" {
		return nil, errors.New("pgpool: ConnString is required")
	}
	cc, err := pgx.ParseConfig(cfg.ConnString)
	if err != nil {
		return nil, fmt.Errorf("pgpool: %w", err)
	}
	if cfg.MaxConns < 0 {
		return nil, fmt.Errorf("pgpool: MaxConns %d is negative", cfg.MaxConns)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 8
	}
	if cfg.PingIdle <= 0 {
		cfg.PingIdle = 30 * time.Second
	}
	return &Pool{cfg: cc, pingIdle: cfg.PingIdle, slots: make(chan struct{}, cfg.MaxConns)}, nil
}

// ConnConfig returns a copy of the parsed connection configuration, for
// callers that need a connection of their own (e.g. a LISTEN connection).
func (p *Pool) ConnConfig() *pgx.ConnConfig { return p.cfg.Copy() }

// Conn is a connection acquired from the pool. Release it exactly once.
type Conn struct {
	*pgx.Conn
	pool *Pool
}

// Acquire returns an idle connection or opens a new one, waiting while
// MaxConns connections are in use.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("pgpool: acquire: %w", ctx.Err())
	}
	for {
		ic, ok, err := p.popIdle()
		if err != nil {
			<-p.slots
			return nil, err
		}
		if !ok {
			break
		}
		if time.Since(ic.since) < p.pingIdle {
			return &Conn{Conn: ic.conn, pool: p}, nil
		}
		if err := ic.conn.Ping(ctx); err == nil {
			return &Conn{Conn: ic.conn, pool: p}, nil
		}
		closeConn(ic.conn)
		if ctx.Err() != nil {
			<-p.slots
			return nil, fmt.Errorf("pgpool: acquire: %w", ctx.Err())
		}
	}
	conn, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		<-p.slots
		return nil, fmt.Errorf("pgpool: connect: %w", err)
	}
	return &Conn{Conn: conn, pool: p}, nil
}

func (p *Pool) popIdle() (idleConn, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.closed {
		return idleConn{}, false, ErrClosed
	}
	n := len(p.mu.idle)
	if n == 0 {
		return idleConn{}, false, nil
	}
	ic := p.mu.idle[n-1]
	p.mu.idle = p.mu.idle[:n-1]
	return ic, true, nil
}

// Release returns the connection to the pool, or closes it when it is
// broken, inside a transaction, or the pool is closed.
func (c *Conn) Release() {
	p := c.pool
	conn := c.Conn
	if conn == nil {
		panic("pgpool: Conn released twice")
	}
	c.Conn = nil
	defer func() { <-p.slots }()
	if conn.IsClosed() || conn.PgConn().TxStatus() != 'I' || conn.PgConn().IsBusy() {
		closeConn(conn)
		return
	}
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		closeConn(conn)
		return
	}
	p.mu.idle = append(p.mu.idle, idleConn{conn: conn, since: time.Now()})
	p.mu.Unlock()
}

// Close closes the idle connections and makes later Acquires fail;
// connections in use are closed when released.
func (p *Pool) Close() {
	p.mu.Lock()
	idle := p.mu.idle
	p.mu.idle = nil
	p.mu.closed = true
	p.mu.Unlock()
	for _, ic := range idle {
		closeConn(ic.conn)
	}
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// Ping acquires a connection and checks that the server answers.
func (p *Pool) Ping(ctx context.Context) error {
	c, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	return c.Ping(ctx)
}

// Exec runs sql on a pooled connection.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c, err := p.Acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	defer c.Release()
	return c.Exec(ctx, sql, args...)
}

// WithConn runs fn with a pooled connection and releases it afterwards.
func (p *Pool) WithConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := p.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	return fn(c.Conn)
}

// WithTx runs fn in a transaction on a pooled connection: it commits when fn
// returns nil and rolls back otherwise (also when fn panics).
func (p *Pool) WithTx(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	return p.WithConn(ctx, func(conn *pgx.Conn) error {
		tx, err := conn.BeginTx(ctx, opts)
		if err != nil {
			return err
		}
		committed := false
		defer func() {
			if !committed {
				// A failed rollback leaves the connection inside the
				// transaction; Release then closes it.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = tx.Rollback(rctx)
			}
		}()
		if err := fn(tx); err != nil {
			return err
		}
		committed = true
		return tx.Commit(ctx)
	})
}
