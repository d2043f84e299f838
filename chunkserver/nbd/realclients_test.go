package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These tests drive the server with the NBD clients a person would use:
// libnbd's nbdinfo, QEMU's qemu-io and fio's nbd engine. A missing tool is
// a failure, not a skip.

func tool(t *testing.T, name string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real process: not in -short (make test runs it)")
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: run make deps", name)
	}
	return p
}

// run runs a tool with a deadline and returns its combined output; a
// non-zero exit fails the test.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type mapLine struct {
	off, length int64
	flags       uint32
	desc        string
}

// parseMap parses `nbdinfo --map` output: offset, length, flags,
// description per line.
func parseMap(t *testing.T, out string) []mapLine {
	t.Helper()
	var ls []mapLine
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		off, err1 := strconv.ParseInt(f[0], 10, 64)
		n, err2 := strconv.ParseInt(f[1], 10, 64)
		fl, err3 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("unexpected --map line %q", line)
		}
		ls = append(ls, mapLine{off, n, uint32(fl), strings.Join(f[3:], " ")})
	}
	return ls
}

// at returns the map line covering off.
func at(ls []mapLine, off int64) (mapLine, bool) {
	for _, l := range ls {
		if off >= l.off && off < l.off+l.length {
			return l, true
		}
	}
	return mapLine{}, false
}

func TestRealClients(t *testing.T) {
	const size = 64 << 20
	exp := newFileExport(t, size)
	addr := serveExports(t, map[string]Export{"chunk1": exp}, func(cfg *ServerConfig) {
		cfg.List = func() []string { return []string{"chunk1"} }
		cfg.MetaContexts = map[string]MetaContext{
			// A stand-in for the LOG bitmap: the first 8 MiB dirty.
			"chunkraid:log": func(_ Export, off, length int64) ([]Extent, error) {
				if off < 8<<20 {
					return []Extent{{Length: 8<<20 - off, Flags: 1}, {Length: size - 8<<20}}, nil
				}
				return []Extent{{Length: size - off}}, nil
			},
		}
	})
	uri := "nbd://" + addr + "/chunk1"

	t.Run("nbdinfo", func(t *testing.T) {
		out := run(t, 30*time.Second, "nbdinfo", uri)
		if !strings.Contains(out, "export-size: "+strconv.Itoa(size)) {
			t.Fatalf("nbdinfo does not show the size:\n%s", out)
		}
		var info struct {
			Exports []struct {
				Name         string   `json:"export-name"`
				Size         int64    `json:"export-size"`
				CanFlush     bool     `json:"can_flush"`
				CanFUA       bool     `json:"can_fua"`
				CanTrim      bool     `json:"can_trim"`
				CanZero      bool     `json:"can_zero"`
				CanMultiConn bool     `json:"can_multi_conn"`
				Contexts     []string `json:"contexts"`
				MaxBlock     int64    `json:"block_size_maximum"`
			} `json:"exports"`
		}
		js := run(t, 30*time.Second, "nbdinfo", "--json", uri)
		if err := json.Unmarshal([]byte(js), &info); err != nil {
			t.Fatalf("nbdinfo --json: %v\n%s", err, js)
		}
		if len(info.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %d exports\n%s", len(info.Exports), js)
		}
		e := info.Exports[0]
		if e.Size != size || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanMultiConn || e.MaxBlock != MaxPayload {
			t.Fatalf("nbdinfo --json reports %+v\n%s", e, js)
		}
		if !strings.Contains(strings.Join(e.Contexts, " "), "base:allocation") ||
			!strings.Contains(strings.Join(e.Contexts, " "), "chunkraid:log") {
			t.Fatalf("contexts %v lack base:allocation or chunkraid:log", e.Contexts)
		}
		list := run(t, 30*time.Second, "nbdinfo", "--list", "nbd://"+addr)
		if !strings.Contains(list, `export="chunk1"`) {
			t.Fatalf("nbdinfo --list:\n%s", list)
		}
	})

	t.Run("nbdinfo map", func(t *testing.T) {
		ls := parseMap(t, run(t, 30*time.Second, "nbdinfo", "--map", uri))
		if l, ok := at(ls, 0); !ok || l.flags != StateHole|StateZero || l.length != size {
			t.Fatalf("fresh export map %+v, want one hole,zero extent", ls)
		}
		// Write 64 KiB at 1 MiB through the project's client, then map.
		c := dial(t, ClientConfig{Addr: addr, Export: "chunk1"})
		if err := c.WriteAt(t.Context(), bytes.Repeat([]byte{7}, 64<<10), 1<<20, true); err != nil {
			t.Fatal(err)
		}
		ls = parseMap(t, run(t, 30*time.Second, "nbdinfo", "--map", uri))
		if l, ok := at(ls, 1<<20); !ok || l.flags != 0 || l.off+l.length < 1<<20+64<<10 {
			t.Fatalf("after write, 1 MiB is %+v in %+v; want data", l, ls)
		}
		if l, ok := at(ls, 0); !ok || l.flags&StateHole == 0 {
			t.Fatalf("after write, 0 is %+v; want a hole", l)
		}
		if l, ok := at(ls, 2<<20); !ok || l.flags&StateHole == 0 {
			t.Fatalf("after write, 2 MiB is %+v; want a hole", l)
		}
		ls = parseMap(t, run(t, 30*time.Second, "nbdinfo", "--map=chunkraid:log", uri))
		if l, ok := at(ls, 0); !ok || l.flags != 1 || l.length != 8<<20 {
			t.Fatalf("chunkraid:log map %+v", ls)
		}
		if l, ok := at(ls, 8<<20); !ok || l.flags != 0 {
			t.Fatalf("chunkraid:log map %+v", ls)
		}
	})

	t.Run("qemu-io and fio", func(t *testing.T) {
		out := run(t, 60*time.Second, "qemu-io", "-f", "raw",
			"-c", "write -P 0x5a 4096 64k", "-c", "read -P 0x5a 4096 64k",
			"-c", "write -P 0xa5 48M 64k", "-c", "read -P 0xa5 48M 64k", uri)
		if strings.Count(out, "read 65536/65536") != 2 || strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("qemu-io:\n%s", out)
		}
		checkFill(t, exp, 4096, 64<<10, 0x5a)

		// fio touches the first 16 MiB only; the pattern at 48 MiB must
		// survive it.
		out = run(t, 60*time.Second, "fio", "--name=t", "--ioengine=nbd", "--uri="+uri,
			"--rw=randrw", "--bs=4k", "--iodepth=32", "--size=16m", "--runtime=3", "--time_based")
		if !regexp.MustCompile(`err=\s*0`).MatchString(out) || regexp.MustCompile(`err=\s*[1-9]`).MatchString(out) {
			t.Fatalf("fio reported errors:\n%s", out)
		}
		if m := regexp.MustCompile(`IOPS=([0-9.]+k?)`).FindAllStringSubmatch(out, -1); len(m) > 0 {
			t.Logf("fio randrw 4k QD32 IOPS: %v", m)
		}
		out = run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read -P 0xa5 48M 64k", uri)
		if !strings.Contains(out, "read 65536/65536") || strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("qemu-io after fio:\n%s", out)
		}
		checkFill(t, exp, 48<<20, 64<<10, 0xa5)
	})
}

// checkFill reads the export directly and checks every byte.
func checkFill(t *testing.T, exp Export, off int64, n int, b byte) {
	t.Helper()
	got := make([]byte, n)
	if err := exp.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{b}, n)) {
		t.Fatalf("file bytes at %d+%d are not all %#x", off, n, b)
	}
}
