package raid

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of the health scenarios")

// TestHealthScenarios runs every scenario file in testdata/health: blocks of
// a command line, "----" and the machine's state after it (see runHealthCmd
// for the commands). Run with -rewrite to regenerate the expectations, then
// read the diff: it is the review.
func TestHealthScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/health/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			var h *health
			var waiting []uint64 // generations writes wait for
			lines := strings.Split(string(data), "\n")
			for i := 0; i < len(lines); i++ {
				line := lines[i]
				if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
					out.WriteString(line + "\n")
					continue
				}
				cmd := line
				j := i + 1
				if j >= len(lines) || lines[j] != "----" {
					t.Fatalf("%s:%d: %q is not followed by ----", file, i+1, cmd)
				}
				var want []string
				for j++; j < len(lines) && lines[j] != ""; j++ {
					want = append(want, lines[j])
				}
				i = j - 1
				got, err := runHealthCmd(&h, &waiting, cmd)
				if err != nil {
					t.Fatalf("%s:%d: %s: %v", file, i+1, cmd, err)
				}
				if h != nil {
					if err := h.checkInvariants(); err != nil {
						got += "\ninvariant violated: " + err.Error()
					}
				}
				out.WriteString(cmd + "\n----\n" + got + "\n")
				if !*rewrite && got != strings.Join(want, "\n") {
					t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", file, i+1, cmd, got, strings.Join(want, "\n"))
				}
			}
			if *rewrite {
				s := strings.TrimRight(out.String(), "\n") + "\n"
				if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// runHealthCmd applies one scenario command:
//
//	new n=N [degraded=I,J] [pinned]   a machine for N members
//	fail I [conn=C]                   member I fails (through connection C, default its current one)
//	rejoin I                          member I comes back
//	resynced [dirty] [conns=C,D,..]   a resync ended (conns: the generations it started with)
//	write                             a write some member did not get asks to be acknowledged
//	start                             the driver starts the next hook, if any
//	done [err]                        the running hook ends
//	close                             the set closes
//	untrusted                         which members a host taking over must not trust
//
// It returns the outcome and the machine's state.
func runHealthCmd(hp **health, waiting *[]uint64, line string) (string, error) {
	f := strings.Fields(line)
	args := map[string]string{}
	for _, a := range f[1:] {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	var note string
	h := *hp
	if f[0] != "new" && h == nil {
		return "", errors.New("no machine: start with new")
	}
	member := func() (int, error) {
		if len(f) < 2 {
			return 0, errors.New("missing member")
		}
		return strconv.Atoi(f[1])
	}
	switch f[0] {
	case "new":
		n, err := strconv.Atoi(args["n"])
		if err != nil {
			return "", err
		}
		var deg []int
		if d := args["degraded"]; d != "" {
			for _, s := range strings.Split(d, ",") {
				i, err := strconv.Atoi(s)
				if err != nil {
					return "", err
				}
				deg = append(deg, i)
			}
		}
		_, pinned := args["pinned"]
		if *hp, err = newHealth(n, 1, deg, pinned); err != nil {
			return "", err
		}
		h = *hp
	case "fail":
		i, err := member()
		if err != nil {
			return "", err
		}
		conn := h.conn[i]
		if c, ok := args["conn"]; ok {
			v, err := strconv.ParseUint(c, 10, 64)
			if err != nil {
				return "", err
			}
			conn = v
		}
		if !h.fail(i, conn, fmt.Errorf("member %d: I/O error", i)) {
			note = "ignored"
		}
	case "rejoin":
		i, err := member()
		if err != nil {
			return "", err
		}
		if _, err := h.rejoin(i); err != nil {
			note = "refused: " + err.Error()
		}
	case "resynced":
		conns := slices.Clone(h.conn)
		if c, ok := args["conns"]; ok {
			for j, s := range strings.Split(c, ",") {
				v, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					return "", err
				}
				conns[j] = v
			}
		}
		_, dirty := args["dirty"]
		joined := h.resynced(conns, !dirty)
		note = fmt.Sprintf("joined %v", joined)
	case "write":
		g := h.degradedWrite()
		*waiting = append(*waiting, g)
	case "start":
		c, ok := h.next()
		if !ok {
			note = "nothing to start"
		} else {
			note = "started " + c.String()
		}
	case "done":
		if h.running == nil {
			return "", errors.New("no hook runs")
		}
		var err error
		if _, ok := args["err"]; ok {
			err = errors.New("control call failed")
		}
		h.hookDone(*h.running, err)
	case "close":
		h.close()
	case "untrusted":
		note = fmt.Sprintf("untrusted %v", h.untrustedAll())
	default:
		return "", fmt.Errorf("unknown command %q", f[0])
	}
	// Settle the writes that wait for a record.
	var w []string
	rest := (*waiting)[:0]
	for _, g := range *waiting {
		done, err := h.recordedFor(g)
		switch {
		case !done:
			w = append(w, fmt.Sprintf("gen=%d waits", g))
			rest = append(rest, g)
		case err != nil:
			w = append(w, fmt.Sprintf("gen=%d fails: %v", g, err))
		default:
			w = append(w, fmt.Sprintf("gen=%d acknowledged", g))
		}
	}
	*waiting = rest
	var b strings.Builder
	if note != "" {
		b.WriteString(note + "\n")
	}
	if len(w) > 0 {
		b.WriteString("writes: " + strings.Join(w, ", ") + "\n")
	}
	b.WriteString(h.String())
	return b.String(), nil
}

// TestHealthModel drives the machine with random interleavings of member
// failures (through current and stale connections), rejoins, resyncs that
// end clean, dirty or raced by a rejoin, degraded writes, hook runs that
// succeed or fail (a record that pins only some members) and host closes,
// for mirrors (need 1) and EC sets (need 2 to n-1),
// against a model of what the chunkservers and the metaserver hold. After
// every step it checks:
//
//   - while some member missed an acknowledged write, every InSync member's
//     LOG is pinned on its chunkserver (a host crash then loses no record);
//   - a write acknowledged without members has their failure recorded with
//     the metaserver (a new host will not trust them), unless they have
//     been resynced since;
//   - the machine's own invariants.
func TestHealthModel(t *testing.T) {
	const seeds, steps = 2000, 400
	for seed := range uint64(seeds) {
		rng := rand.New(rand.NewPCG(seed, 0x4ea1))
		n := 2 + rng.IntN(4)
		// need 1 is a mirror; more is an ec:need+(n-need) set.
		need := 1 + rng.IntN(n-1)
		h, err := newHealth(n, need, nil, rng.IntN(2) == 0)
		if err != nil {
			t.Fatal(err)
		}
		var (
			pinned    = make([]bool, n) // on the chunkservers
			recorded  = make([]bool, n) // the metaserver's "not in sync"
			divergent bool              // some member missed an acknowledged write
			target    []int             // the members the running record pins
			snapState []MemberState     // states when the running record started
			promoted  = make([]int, n)  // times each member became InSync by a resync
		)
		if h.pinned {
			for i := range pinned {
				pinned[i] = true
			}
		}
		type wait struct {
			gen     uint64
			skipped []int
			epochs  []int // promoted[j] of the skipped members at the write
		}
		var waits []wait
		var trace []string
		fatal := func(format string, a ...any) {
			t.Helper()
			t.Fatalf("seed %d: %s\ntrace:\n%s\nmachine:\n%v", seed, fmt.Sprintf(format, a...), strings.Join(trace, "\n"), h)
		}
		for step := 0; step < steps && !h.closed; step++ {
			i := rng.IntN(n)
			switch r := rng.IntN(100); {
			case r < 15:
				conn := h.conn[i]
				if conn > 0 && rng.IntN(4) == 0 {
					conn-- // an I/O of the previous connection
				}
				trace = append(trace, fmt.Sprintf("fail %d conn=%d", i, conn))
				if h.fail(i, conn, errors.New("io")) {
					// The host drops the connection; a chunkserver pins the
					// LOG of a connection that ends without NBD_CMD_DISC. (A
					// chunk that failed on its own disk never rejoins.)
					pinned[i] = true
				}
			case r < 25:
				trace = append(trace, fmt.Sprintf("rejoin %d", i))
				h.rejoin(i)
			case r < 35:
				conns := slices.Clone(h.conn)
				if rng.IntN(4) == 0 {
					conns[i]-- // a rejoin raced the resync
				}
				clean := rng.IntN(3) > 0
				trace = append(trace, fmt.Sprintf("resynced clean=%v conns=%v", clean, conns))
				for _, j := range h.resynced(conns, clean) {
					promoted[j]++
				}
				if !h.degraded() {
					divergent = false
				}
				_ = divergent
			case r < 60:
				var skipped, epochs []int
				for j, st := range h.state {
					if st == Failed {
						skipped = append(skipped, j)
						epochs = append(epochs, promoted[j])
					}
				}
				if len(skipped) == 0 || h.inSync() < need {
					continue // a write needs need in-sync members
				}
				trace = append(trace, fmt.Sprintf("write skipping %v", skipped))
				waits = append(waits, wait{gen: h.degradedWrite(), skipped: skipped, epochs: epochs})
			case r < 80:
				if c, ok := h.next(); ok {
					trace = append(trace, "start "+c.String())
					snapState = slices.Clone(h.state)
					target = nil
					for j, st := range h.state {
						if st != Failed {
							target = append(target, j)
						}
					}
				}
			case r < 99:
				if h.running == nil {
					continue
				}
				c := *h.running
				var err error
				if rng.IntN(4) == 0 {
					err = errors.New("control call failed")
				}
				trace = append(trace, fmt.Sprintf("done %v err=%v", c, err))
				switch c.kind {
				case hookRecord:
					for _, j := range target {
						if err == nil || rng.IntN(2) == 0 {
							pinned[j] = true
						}
					}
					if err == nil {
						for j, st := range snapState {
							recorded[j] = st != InSync
						}
					}
				case hookUnpin:
					if err == nil {
						clear(pinned)
					}
				}
				h.hookDone(c, err)
			default:
				trace = append(trace, "close")
				h.close()
			}
			rest := waits[:0]
			for _, w := range waits {
				done, err := h.recordedFor(w.gen)
				switch {
				case !done:
					rest = append(rest, w)
				case err == nil:
					skipped := w.skipped
					h.acked(func(j int) bool { return !slices.Contains(skipped, j) })
					for x, j := range w.skipped {
						if promoted[j] != w.epochs[x] {
							continue // resynced since: it holds the write
						}
						if !recorded[j] {
							fatal("a write that skipped member %d was acknowledged before its failure was recorded", j)
						}
						divergent = true
					}
				}
			}
			waits = rest
			if err := h.checkInvariants(); err != nil {
				fatal("%v", err)
			}
			// A member that rejoined in sync directly (it missed nothing
			// while no member was in sync) is pinned by the record its
			// promotion asked for; nothing is acknowledged before it.
			if divergent && !h.recording(h.degr) {
				for j, st := range h.state {
					if st == InSync && !pinned[j] {
						fatal("member %d is in sync and unpinned while another member misses acknowledged writes", j)
					}
				}
			}
		}
	}
	t.Logf("%d seeds × %d steps, 2 to 5 members, need 1 (mirror) to n-1 (EC)", seeds, steps)
}
