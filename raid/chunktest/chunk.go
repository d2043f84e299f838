// Package chunktest is the in-memory member chunk of the tests above the
// chunk store: the set's data model in raid and hostd's fake chunkservers.
// A Chunk keeps what a chunkserver keeps for one chunk: its bytes, as the
// page cache holds them and as the disk does, and its LOG bitmap, marked
// before every write. Connections to it are raid Devices that die when
// the chunk goes away. Policy stays with the caller: when a chunkserver
// pins the LOG (an unclean disconnect, a restart) is the test's to model.
package chunktest

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/chunkraid/chunkraid/bitmap"
)

// ErrDown is the error of every call to a chunk that is powered off or cut
// off, and of a connection made before it went away.
var ErrDown = errors.New("chunktest: chunk unreachable")

// Config describes a chunk.
type Config struct {
	Size      int64
	LogRegion int64
	// Period is the LOG's rotation period T; Clock its time (time.Now if
	// nil).
	Period time.Duration
	Clock  func() time.Time
}

// Chunk is one member chunk on its chunkserver. Its methods are safe for
// concurrent use.
type Chunk struct {
	cfg                Config
	mu                 sync.Mutex
	mem, durable       []byte
	powered, reachable bool
	gen                int // bumped when connections die
	dirty              bool
	log                *bitmap.Log
	gate               *FlushGate
}

// New returns a powered, reachable chunk of zeroes with an empty LOG.
func New(cfg Config) (*Chunk, error) {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	lg, err := bitmap.NewLog(bitmap.LogConfig{Size: cfg.Size, RegionSize: cfg.LogRegion, Period: cfg.Period, Clock: cfg.Clock})
	if err != nil {
		return nil, err
	}
	return &Chunk{cfg: cfg, mem: make([]byte, cfg.Size), durable: make([]byte, cfg.Size),
		powered: true, reachable: true, log: lg}, nil
}

// Size is the chunk's size in bytes.
func (c *Chunk) Size() int64 { return c.cfg.Size }

// Up reports whether the chunk is powered and reachable.
func (c *Chunk) Up() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.powered && c.reachable
}

// Conn is a new connection to the chunk; it dies when the chunk loses
// power, is cut off or has its connections dropped.
func (c *Chunk) Conn() *Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &Conn{c: c, gen: c.gen}
}

// Control runs f on the chunk's LOG as a control call does: only while the
// chunk is up (ErrDown otherwise).
func (c *Chunk) Control(f func(l *bitmap.Log) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.powered || !c.reachable {
		return ErrDown
	}
	return f(c.log)
}

// Local runs f on the LOG as the chunkserver itself does (a pin at an
// unclean disconnect): while it is powered, reachable or not (ErrDown
// otherwise).
func (c *Chunk) Local(f func(l *bitmap.Log) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.powered {
		return ErrDown
	}
	return f(c.log)
}

// PowerLoss drops every write not flushed or FUA; connections die.
func (c *Chunk) PowerLoss() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.powered {
		return
	}
	copy(c.mem, c.durable)
	c.dirty = false
	c.powered = false
	c.gen++
}

// PowerOn restarts a chunk that lost power: its chunkserver loads every
// LOG pinned and starts a new rotation period. It reports whether the
// chunk was off.
func (c *Chunk) PowerOn() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.powered {
		return false
	}
	c.powered = true
	c.log.Pin()
	c.log.RestartPeriod()
	return true
}

// SetReachable cuts the chunk off (connections die) or brings the link
// back. It reports whether reachability changed.
func (c *Chunk) SetReachable(on bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reachable == on {
		return false
	}
	c.reachable = on
	if !on {
		c.gen++
	}
	return true
}

// DropConns ends every connection (their host died).
func (c *Chunk) DropConns() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
}

// Tick rotates the LOG if T passed, as the chunk store does: a rotation
// that may forget bits first fdatasyncs a chunk written since its last
// sync.
func (c *Chunk) Tick(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.powered || now.Sub(c.log.LastRotation()) < c.log.Period() {
		return
	}
	if c.dirty {
		copy(c.durable, c.mem)
		c.dirty = false
	}
	c.log.MaybeRotate(now)
}

// Bytes is a copy of the chunk's bytes as a reader sees them.
func (c *Chunk) Bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.mem)
}

// AfterPowerLoss is a copy of the chunk as it comes back after every
// machine lost power: what was durable, its LOG as stored and pinned.
func (c *Chunk) AfterPowerLoss() (*Chunk, error) {
	c.mu.Lock()
	state, err := c.log.MarshalBinary()
	durable := bytes.Clone(c.durable)
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	nc, err := New(c.cfg)
	if err != nil {
		return nil, err
	}
	if err := nc.log.UnmarshalBinary(state); err != nil {
		return nil, err
	}
	nc.log.Pin()
	nc.mem, nc.durable = durable, bytes.Clone(durable)
	return nc, nil
}

// HoldFlushes makes every flush of the chunk wait at g once it took the
// bytes it will make durable; nil stops holding new flushes.
func (c *Chunk) HoldFlushes(g *FlushGate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gate = g
}

// FlushGate holds flushes between the moment they take what they will sync
// and the moment it is durable.
type FlushGate struct {
	Entered chan struct{} // one send per flush held; buffer it
	Open    chan struct{} // closed to let them finish
}

// Conn is a connection to a chunk: a raid Device.
type Conn struct {
	c   *Chunk
	gen int
}

func (d *Conn) liveLocked() error {
	if !d.c.powered || !d.c.reachable || d.gen != d.c.gen {
		return ErrDown
	}
	return nil
}

// Size is the chunk's size.
func (d *Conn) Size() int64 { return d.c.cfg.Size }

// ReadAt reads what the chunk holds.
func (d *Conn) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	if err := d.liveLocked(); err != nil {
		return err
	}
	copy(p, d.c.mem[off:])
	return nil
}

// WriteAt marks the LOG (durable before the data, as the store does) and
// writes p, to the disk too with fua.
func (d *Conn) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	if err := d.liveLocked(); err != nil {
		return err
	}
	d.c.log.Mark(off, int64(len(p)))
	copy(d.c.mem[off:], p)
	if fua {
		copy(d.c.durable[off:], p)
	} else {
		d.c.dirty = true
	}
	return nil
}

// Flush makes durable what the chunk held when the flush began. A flush
// held by a gate takes those bytes, waits, and then writes them out: a
// write that lands meanwhile is not part of it (unless FUA, it stays as
// volatile as it was), as with an fdatasync that a write overtakes.
func (d *Conn) Flush(ctx context.Context) error {
	c := d.c
	c.mu.Lock()
	if err := d.liveLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	g := c.gate
	if g == nil {
		copy(c.durable, c.mem)
		c.dirty = false
		c.mu.Unlock()
		return nil
	}
	snap, durable := bytes.Clone(c.mem), bytes.Clone(c.durable)
	c.mu.Unlock()
	g.Entered <- struct{}{}
	<-g.Open
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := d.liveLocked(); err != nil {
		return err // the power failed or the link was cut meanwhile
	}
	for i := range snap {
		// Bytes a FUA write changed meanwhile are durable already.
		if c.durable[i] == durable[i] {
			c.durable[i] = snap[i]
		}
	}
	c.dirty = !bytes.Equal(c.mem, c.durable)
	return nil
}

// Trim writes zeroes, as a chunk without holes does.
func (d *Conn) Trim(ctx context.Context, off, n int64) error {
	return d.WriteAt(ctx, make([]byte, n), off, false)
}
