package test

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
)

// stallProxy forwards TCP connections to a target and can stall every link
// through it (no byte moves either way) and let them through again: a
// network that stops answering, not one that refuses.
type stallProxy struct {
	ln     net.Listener
	target atomic.Pointer[string]
	mu     sync.Mutex
	open   chan struct{} // closed while the links flow; guarded by mu
	conns  []net.Conn    // guarded by mu
}

func newStallProxy(t *testing.T) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, open: make(chan struct{})}
	close(p.open)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

func (p *stallProxy) setTarget(addr string) { p.target.Store(&addr) }

func (p *stallProxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

// stall stops every link; resume lets them through again.
func (p *stallProxy) stall() {
	p.mu.Lock()
	p.open = make(chan struct{})
	p.mu.Unlock()
}

func (p *stallProxy) resume() {
	p.mu.Lock()
	close(p.open)
	p.mu.Unlock()
}

func (p *stallProxy) serve(c net.Conn) {
	<-p.gate()
	target := p.target.Load()
	if target == nil {
		c.Close()
		return
	}
	u, err := net.Dial("tcp", *target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	go p.pipe(u, c)
	go p.pipe(c, u)
}

// pipe copies src to dst, holding each chunk while the proxy is stalled.
func (p *stallProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-p.gate()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}

// TestEveryLinkStalls: a TCP proxy of the test's own sits between hostd
// and every chunkserver (NBD and control); under a write load every link
// stalls for three times t_io, so every member of every set fails during a
// write, then the links flow again. The volume recovers by itself (the
// members that missed no acknowledged write are trusted and reconciled)
// and serves again: every acknowledged write reads back and the replicas
// agree.
func TestEveryLinkStalls(t *testing.T) {
	t.Parallel()
	const tIO = time.Second
	var nbdP, ctlP []*stallProxy
	for range 3 {
		nbdP, ctlP = append(nbdP, newStallProxy(t)), append(ctlP, newStallProxy(t))
	}
	c := startClusterOpts(t, localcluster.Options{
		ChunkSize:            testChunk,
		ExtraChunkserverArgs: []string{"--log-region", "1048576"},
		ExtraHostdArgs:       []string{"--wib-region", "1048576"},
		ExtraMetaArgs:        []string{"--io-timeout", tIO.String(), "--offline-after", "2s", "--log-period", "4s"},
		ChunkserverArgs: func(i int) []string {
			return []string{"--advertise", nbdP[i].addr(), "--control-advertise", ctlP[i].addr()}
		},
	})
	for i := range nbdP {
		nbdP[i].setTarget(c.NBDAddrs[i])
		ctlP[i].setTarget(c.ControlAddrs[i])
	}
	all := append(append([]*stallProxy{}, nbdP...), ctlP...)
	createVolume(t, c, "flap", "128MiB", c.HostName)
	if err := c.WaitTarget(t.Context(), "flap", time.Minute); err != nil {
		t.Fatal(err)
	}
	url := c.ISCSIURL("flap")
	before := slots(16, 16<<10, 96<<20, 0) // above the load's 24 MiB
	for i := range before {
		before[i].off += 32 << 20
	}
	writeAll(t, url, before)

	ws := slots(300, 16<<10, 24<<20, 100)
	load := startWriteLoad(t.Context(), url, ws, 20)
	waitFor(t, 30*time.Second, "the write load to get going", func() bool { return len(load.Acked()) >= 20 })
	for _, p := range all {
		p.stall()
	}
	stalled := time.Now()
	time.Sleep(3 * tIO)
	for _, p := range all {
		p.resume()
	}
	resumed := time.Now()
	<-load.done
	acked := load.Acked()
	t.Logf("every link stalled for %v under a write load; %d of %d writes acknowledged", resumed.Sub(stalled).Round(time.Millisecond), len(acked), len(ws))

	waitInSync(t, c, "flap", 2*time.Minute)
	t.Logf("the volume was in sync again %v after the links flowed again", time.Since(resumed).Round(time.Millisecond))
	log, err := os.ReadFile(c.Hostd.Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "volume attached again after every member of a set failed") {
		t.Fatal("hostd never lost every member of a set: the stall did not test what it should")
	}
	verifyAcked(t, url, append(before, acked...))
	after := []slotWrite{{off: 100 << 20, len: 64 << 10, pat: 0x3c}}
	writeAll(t, url, after)
	verifyAcked(t, url, after)
	checkReplicas(t, c, "flap")
	fmt.Println("every link stalled: the volume recovered by itself")
}
