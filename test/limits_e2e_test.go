package test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// rssKiB is the resident set of process pid in KiB.
func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS for process %d", pid)
	return 0
}

// TestNBDFloodsStayBounded floods a real chunkserver from a bounded local
// loop and checks each limit refuses the excess while its memory stays
// bounded:
//   - connections beyond --max-connections are closed at once;
//   - connections that never finish the handshake are closed after
//     --handshake-timeout;
//   - a connection that pipelines reads of 32 MiB and never reads the
//     replies holds at most --max-inflight-bytes of them (without the
//     bound, 64 requests in flight would hold 2 GiB).
func TestNBDFloodsStayBounded(t *testing.T) {
	t.Parallel()
	const maxConns, floodConns, reads = 32, 200, 48
	c := startClusterOpts(t, localcluster.Options{ChunkSize: testChunk, ExtraChunkserverArgs: []string{
		"--max-connections", strconv.Itoa(maxConns), "--max-inflight-bytes", strconv.Itoa(nbd.MaxPayload), "--handshake-timeout", "2s"}})
	ctx := t.Context()
	admin := c.Client()
	if _, err := admin.CreateVolume(ctx, api.CreateVolumeRequest{Name: "fl", SizeBytes: testChunk, Layout: "mirror:2", Host: c.HostName}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTarget(ctx, "fl", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", c.ISCSIURL("fl"))
	ro, err := admin.ReadExports(ctx, "fl")
	if err != nil {
		t.Fatal(err)
	}
	m := ro.Sets[0].Members[0]
	idx, err := strconv.Atoi(strings.TrimPrefix(m.Chunkserver, "cs"))
	if err != nil {
		t.Fatal(err)
	}
	pid := c.CS[idx-1].Pid()
	before := rssKiB(t, pid)

	// Connections: the host already holds some; the flood takes the rest
	// and every one beyond is closed at once.
	var held, refused []net.Conn
	for range floodConns {
		nc, err := net.Dial("tcp", m.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetReadDeadline(time.Now().Add(time.Second))
		greeting := make([]byte, 18)
		if _, err := io.ReadFull(nc, greeting); err != nil {
			refused = append(refused, nc)
			continue
		}
		held = append(held, nc)
	}
	if len(held) > maxConns || len(refused) < floodConns-maxConns {
		t.Fatalf("%d flood connections got a greeting and %d were closed at once; want at most %d greeted", len(held), len(refused), maxConns)
	}
	t.Logf("connection flood: %d connections, %d greeted, %d closed at once (--max-connections %d)", floodConns, len(held), len(refused), maxConns)

	// Slow handshakes: the greeted ones never answer; all end.
	start := time.Now()
	for _, nc := range held {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !strings.Contains(fmt.Sprint(err), "reset") {
			t.Fatalf("a silent handshake: %v, want the server to close it", err)
		}
		nc.Close()
	}
	t.Logf("slow handshakes: all %d closed by the server %.1fs after the flood (--handshake-timeout 2s)", len(held), time.Since(start).Seconds())

	// Bytes in flight: pipelined 32 MiB reads whose replies are never read.
	var nc net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		nc, err = net.Dial("tcp", m.Addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = io.ReadFull(nc, make([]byte, 18)); err == nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatalf("no connection after the flood ended: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer nc.Close()
	hs := nbd.AppendClientFlags(nil, nbd.FlagCFixedNewstyle|nbd.FlagCNoZeroes)
	hs = nbd.AppendOptionHeader(hs, nbd.OptionHeader{Option: nbd.OptExportName, Length: uint32(len(m.Export))})
	hs = append(hs, m.Export...)
	if _, err := nc.Write(hs); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(nc, make([]byte, 10)); err != nil {
		t.Fatalf("export %s: %v", m.Export, err)
	}
	var reqs []byte
	for i := range reads {
		reqs = nbd.AppendRequest(reqs, nbd.Request{Type: nbd.CmdRead, Cookie: uint64(i), Length: nbd.MaxPayload})
	}
	if _, err := nc.Write(reqs); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	during := rssKiB(t, pid)
	grown := (during - before) / 1024
	t.Logf("in-flight flood: %d reads of %d MiB pipelined, replies unread: chunkserver RSS %d MiB before the floods, %d MiB now (+%d MiB; %d MiB requested)",
		reads, nbd.MaxPayload>>20, before/1024, during/1024, grown, reads*nbd.MaxPayload>>20)
	if grown > 256 {
		t.Errorf("the chunkserver grew by %d MiB under the flood, want under 256 MiB", grown)
	}
	nc.Close()

	// The chunkserver still serves.
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", c.ISCSIURL("fl"))
	log, err := os.ReadFile(c.CS[idx-1].Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "refusing a connection") {
		t.Error("the chunkserver's log has no line about the refused connections")
	}
}

// TestISCSIFloodsStayBounded floods hostd's iSCSI portal the same way:
// connections beyond --max-connections are closed at once, connections
// that never log in are closed after --login-timeout, hostd's memory stays
// bounded, and the volume still serves.
func TestISCSIFloodsStayBounded(t *testing.T) {
	t.Parallel()
	const maxConns, floodConns = 32, 200
	c := startClusterOpts(t, localcluster.Options{ChunkSize: testChunk, ExtraHostdArgs: []string{
		"--max-connections", strconv.Itoa(maxConns), "--login-timeout", "2s"}})
	ctx := t.Context()
	if _, err := c.Client().CreateVolume(ctx, api.CreateVolumeRequest{Name: "fi", SizeBytes: testChunk, Layout: "mirror:2", Host: c.HostName}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitTarget(ctx, "fi", 60*time.Second); err != nil {
		t.Fatal(err)
	}
	pid := c.Hostd.Pid()
	before := rssKiB(t, pid)
	conns := make([]net.Conn, floodConns)
	for i := range conns {
		nc, err := net.Dial("tcp", c.ISCSIAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		conns[i] = nc
	}
	// A portal that refuses closes at once; one that holds the connection
	// waits for a login PDU (for up to 2 s): look at them all at once.
	isHeld := make([]bool, floodConns)
	var wg sync.WaitGroup
	for i, nc := range conns {
		wg.Go(func() {
			nc.SetReadDeadline(time.Now().Add(time.Second))
			_, err := nc.Read(make([]byte, 1))
			var ne net.Error
			isHeld[i] = errors.As(err, &ne) && ne.Timeout()
		})
	}
	wg.Wait()
	var held []net.Conn
	refused := 0
	for i, nc := range conns {
		if isHeld[i] {
			held = append(held, nc)
		} else {
			refused++
		}
	}
	if len(held) > maxConns || refused < floodConns-maxConns {
		t.Fatalf("%d flood connections held and %d closed at once; want at most %d held", len(held), refused, maxConns)
	}
	t.Logf("iSCSI connection flood: %d connections, %d held, %d closed at once (--max-connections %d)", floodConns, len(held), refused, maxConns)
	start := time.Now()
	for _, nc := range held {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !strings.Contains(fmt.Sprint(err), "reset") {
			t.Fatalf("a connection that never logs in: %v, want the portal to close it", err)
		}
		nc.Close()
	}
	after := rssKiB(t, pid)
	t.Logf("silent logins: all %d closed by the portal %.1fs after the flood (--login-timeout 2s); hostd RSS %d MiB before, %d MiB after",
		len(held), time.Since(start).Seconds(), before/1024, after/1024)
	if grown := (after - before) / 1024; grown > 64 {
		t.Errorf("hostd grew by %d MiB under the flood, want under 64 MiB", grown)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 0 1M", "-c", "read -P 0x33 0 1M", c.ISCSIURL("fi"))
	log, err := os.ReadFile(c.Hostd.Log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "refusing a connection") {
		t.Error("hostd's log has no line about the refused connections")
	}
}
