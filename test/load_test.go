package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// slotWrite is one write of a write load: a pattern byte over one slot.
// Every write of a load goes to its own slot, so a write that was
// acknowledged must read back exactly, whatever happened after it.
type slotWrite struct {
	off, len int64
	pat      byte
}

// writeLoad runs one qemu-io process that writes ws in order, sleeping
// pauseMS between writes, until ctx ends. It returns the writes that
// qemu-io reported complete (acknowledged by the target).
type writeLoad struct {
	mu    sync.Mutex
	acked []slotWrite
	done  chan struct{}
	err   error
	out   bytes.Buffer
}

var wroteLine = regexp.MustCompile(`^wrote (\d+)/(\d+) bytes at offset (\d+)`)

func startWriteLoad(ctx context.Context, url string, ws []slotWrite, pauseMS int) *writeLoad {
	args := []string{"-f", "raw"}
	for _, w := range ws {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%x %d %d", w.pat, w.off, w.len))
		if pauseMS > 0 {
			args = append(args, "-c", fmt.Sprintf("sleep %d", pauseMS))
		}
	}
	args = append(args, url)
	l := &writeLoad{done: make(chan struct{})}
	cmd := exec.CommandContext(ctx, "qemu-io", args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	byOff := map[int64]slotWrite{}
	for _, w := range ws {
		byOff[w.off] = w
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			l.mu.Lock()
			l.out.WriteString(line + "\n")
			if m := wroteLine.FindStringSubmatch(line); m != nil && m[1] == m[2] {
				off, _ := strconv.ParseInt(m[3], 10, 64)
				if w, ok := byOff[off]; ok {
					l.acked = append(l.acked, w)
				}
			}
			l.mu.Unlock()
		}
	}()
	go func() {
		defer close(l.done)
		l.err = cmd.Run()
		pw.Close()
		<-scanned // every line qemu-io printed is counted before done
	}()
	return l
}

func (l *writeLoad) Acked() []slotWrite {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]slotWrite(nil), l.acked...)
}

func (l *writeLoad) Output() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.out.String()
}

// slots makes n writes of size bytes each at distinct offsets spread over
// [0, span), with patterns 1..255 cycling.
func slots(n int, size, span int64, first int) []slotWrite {
	step := span / int64(n)
	step -= step % 4096
	ws := make([]slotWrite, n)
	for i := range ws {
		ws[i] = slotWrite{off: int64(i) * step, len: size, pat: byte((first+i)%255 + 1)}
	}
	return ws
}

// visible returns the parts of ws[i] that no later write overwrote, as
// writes of the same pattern.
func visible(ws []slotWrite, i int) []slotWrite {
	parts := []slotWrite{ws[i]}
	for _, later := range ws[i+1:] {
		var next []slotWrite
		for _, p := range parts {
			lo, hi := later.off, later.off+later.len
			if hi <= p.off || lo >= p.off+p.len {
				next = append(next, p)
				continue
			}
			if lo > p.off {
				next = append(next, slotWrite{off: p.off, len: lo - p.off, pat: p.pat})
			}
			if hi < p.off+p.len {
				next = append(next, slotWrite{off: hi, len: p.off + p.len - hi, pat: p.pat})
			}
		}
		parts = next
	}
	return parts
}

// verifyAcked reads every acknowledged write back through url; ws is in the
// order the writes were acknowledged, so a later write wins where two
// overlap.
func verifyAcked(t *testing.T, url string, acked []slotWrite) {
	t.Helper()
	if len(acked) == 0 {
		t.Fatal("no acknowledged writes to verify")
	}
	var ws []slotWrite
	for i := range acked {
		ws = append(ws, visible(acked, i)...)
	}
	for start := 0; start < len(ws); start += 100 {
		args := []string{"-f", "raw"}
		end := min(start+100, len(ws))
		for _, w := range ws[start:end] {
			args = append(args, "-c", fmt.Sprintf("read -P 0x%x %d %d", w.pat, w.off, w.len))
		}
		out := run(t, "qemu-io", append(args, url)...)
		if strings.Contains(out, "Pattern verification failed") || strings.Count(out, "read ") != end-start {
			t.Fatalf("acknowledged writes do not read back:\n%s", out)
		}
	}
	t.Logf("all %d acknowledged writes read back through %s", len(acked), url)
}

// memberImage reads one member chunk over NBD with qemu-img into a file and
// returns its bytes. m comes from ReadExports: its export name is
// read-only, at the volume's epoch.
func memberImage(t *testing.T, dir string, m api.Member) []byte {
	t.Helper()
	host, port, ok := strings.Cut(m.Addr, ":")
	if !ok {
		t.Fatalf("member address %q", m.Addr)
	}
	img := filepath.Join(dir, strings.ReplaceAll(m.ChunkID, "/", "_")+".img")
	opts := fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%s,export=%s", host, port, m.Export)
	run(t, "qemu-img", "convert", "--image-opts", opts, "-O", "raw", img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(img)
	return b
}

// checkReplicas reads every member of every set over NBD and fails unless
// the members of each set are byte-identical.
func checkReplicas(t *testing.T, c *localcluster.Cluster, volume string) {
	t.Helper()
	v, err := c.Client().ReadExports(t.Context(), volume)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, s := range v.Sets {
		var first [32]byte
		for j, m := range s.Members {
			sum := sha256.Sum256(memberImage(t, dir, m))
			if j == 0 {
				first = sum
			} else if sum != first {
				t.Fatalf("volume %s set %d: member %d (%s on %s) differs from member 0", volume, s.Index, j, m.ChunkID, m.Chunkserver)
			}
		}
		t.Logf("volume %s set %d: %d replicas identical (sha256 %x)", volume, s.Index, len(s.Members), first[:8])
	}
}

var resyncDone = regexp.MustCompile(`msg="resync done" .*copied_bytes=(\d+)`)

// resyncedBytes sums the bytes every finished resync copied, from a hostd
// log.
func resyncedBytes(t *testing.T, log string) (total int64, resyncs int) {
	t.Helper()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resyncDone.FindAllStringSubmatch(string(b), -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		total += n
		resyncs++
	}
	return total, resyncs
}
