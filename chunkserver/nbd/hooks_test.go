package nbd

import (
	"context"
	"errors"
	"testing"
	"time"
)

// hookExport records the ConnHooks calls of the connection that uses it.
type hookExport struct {
	*gateExport
	attached chan func()
	detached chan bool
}

func newHookExport(size int) *hookExport {
	return &hookExport{
		gateExport: newGateExport(newMemExport(size)),
		attached:   make(chan func(), 4),
		detached:   make(chan bool, 4),
	}
}

func (h *hookExport) Attached(closeConn func()) { h.attached <- closeConn }
func (h *hookExport) Detached(clean bool)       { h.detached <- clean }

func (h *hookExport) waitAttached(t *testing.T) func() {
	t.Helper()
	select {
	case f := <-h.attached:
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("Attached not called")
		return nil
	}
}

func (h *hookExport) waitDetached(t *testing.T) bool {
	t.Helper()
	select {
	case clean := <-h.detached:
		return clean
	case <-time.After(5 * time.Second):
		t.Fatal("Detached not called")
		return false
	}
}

func (h *hookExport) noMoreCalls(t *testing.T) {
	t.Helper()
	select {
	case <-h.attached:
		t.Fatal("Attached called again")
	case c := <-h.detached:
		t.Fatalf("Detached(%v) called again", c)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestConnHooksCleanDisconnect(t *testing.T) {
	exp := newHookExport(1 << 20)
	exp.open()
	addr := serveExports(t, map[string]Export{"e": exp}, nil)
	c, err := Dial(t.Context(), ClientConfig{Addr: addr, Export: "e"})
	if err != nil {
		t.Fatal(err)
	}
	exp.waitAttached(t)
	if err := c.WriteAt(t.Context(), []byte("data"), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if clean := exp.waitDetached(t); !clean {
		t.Fatal("Detached(false) after NBD_CMD_DISC, want true")
	}
	exp.noMoreCalls(t)
}

func TestConnHooksUncleanDisconnect(t *testing.T) {
	exp := newHookExport(1 << 20)
	exp.open()
	addr := serveExports(t, map[string]Export{"e": exp}, nil)
	r := rawDial(t, addr, FlagCFixedNewstyle|FlagCNoZeroes)
	r.option(OptGo, goData("e"))
	r.expect(OptGo, RepInfo)
	r.expect(OptGo, RepAck)
	exp.waitAttached(t)
	r.nc.Close() // no NBD_CMD_DISC
	if clean := exp.waitDetached(t); clean {
		t.Fatal("Detached(true) after a dropped connection, want false")
	}
	exp.noMoreCalls(t)
}

func TestConnHooksNotCalledForInfo(t *testing.T) {
	exp := newHookExport(1 << 20)
	addr := serveExports(t, map[string]Export{"e": exp}, nil)
	r := rawDial(t, addr, FlagCFixedNewstyle|FlagCNoZeroes)
	r.option(OptInfo, goData("e"))
	r.expect(OptInfo, RepInfo)
	r.expect(OptInfo, RepAck)
	r.option(OptAbort, nil)
	r.expect(OptAbort, RepAck)
	r.closed()
	exp.noMoreCalls(t)
}

// TestConnHooksCloseConn: closeConn ends the connection; Detached comes
// while a request is still executing, and the server finishes it after.
func TestConnHooksCloseConn(t *testing.T) {
	exp := newHookExport(1 << 20)
	addr := serveExports(t, map[string]Export{"e": exp}, nil)
	c, err := Dial(t.Context(), ClientConfig{Addr: addr, Export: "e"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	closeConn := exp.waitAttached(t)
	readErr := make(chan error, 1)
	go func() { readErr <- c.ReadAt(context.Background(), make([]byte, 512), 0) }()
	select {
	case <-exp.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("read did not reach the export")
	}
	closeConn()
	closeConn() // idempotent
	if clean := exp.waitDetached(t); clean {
		t.Fatal("Detached(true) after closeConn, want false")
	}
	// The read is still blocked in the export: Detached came first.
	select {
	case err := <-readErr:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("read on a closed connection: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client not told that the connection closed")
	}
	exp.open()
	exp.noMoreCalls(t)
}
