package remb

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the expected plans of testdata/*.txt")

// TestScenarios runs every scene in testdata: a file gives what the host
// knows when it attaches a set, above a line of dashes, and the plans the
// policy makes of it below (the attach plan, then the rejoin plan of every
// member that starts degraded). Each file pins one rule; -update rewrites
// the plans after a deliberate change of policy, for review in the diff.
//
//	members: up, up missed, down, up rebuild   one entry per member
//	need: 1                            in-sync members the set needs
//	mode: remb | internal | none
//	clean: yes | no                    the previous holder detached cleanly
//	epoch: 2
//	wib: new | reused
//	full-resync: yes | no              the previous holder's LOG record is not complete
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			head, want, ok := strings.Cut(string(b), "\n----\n")
			if !ok {
				t.Fatalf("%s has no line of dashes between the scene and the plans", f)
			}
			in, err := parseScene(head)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			got := renderPlans(in)
			if *update {
				if err := os.WriteFile(f, []byte(head+"\n----\n"+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != want {
				t.Errorf("%s: plans differ\n--- got\n%s--- want\n%s", f, got, want)
			}
		})
	}
}

func parseScene(text string) (AttachInput, error) {
	in := AttachInput{Need: 1, Mode: ModeRemb, Epoch: 2}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return in, fmt.Errorf("line %q is not key: value", line)
		}
		val = strings.TrimSpace(val)
		switch key {
		case "members":
			for _, m := range strings.Split(val, ",") {
				var mem Member
				for _, w := range strings.Fields(m) {
					switch w {
					case "up":
						mem.Reachable = true
					case "down":
					case "missed":
						mem.Missed = true
					case "rebuild":
						mem.Rebuild = true
					default:
						return in, fmt.Errorf("member word %q: want up, down, missed or rebuild", w)
					}
				}
				in.Members = append(in.Members, mem)
			}
		case "need":
			n, err := strconv.Atoi(val)
			if err != nil {
				return in, err
			}
			in.Need = n
		case "mode":
			in.Mode = Mode(val)
		case "clean":
			in.Clean = val == "yes"
		case "epoch":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return in, err
			}
			in.Epoch = n
		case "wib":
			in.WIBReused = val == "reused"
		case "full-resync":
			in.FullResync = val == "yes"
		default:
			return in, fmt.Errorf("unknown key %q", key)
		}
	}
	return in, nil
}

func renderPlans(in AttachInput) string {
	var b strings.Builder
	p, err := PlanAttach(in)
	if err != nil {
		fmt.Fprintf(&b, "error: %v\n", err)
		return b.String()
	}
	list := func(xs []int) string {
		if len(xs) == 0 {
			return "-"
		}
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = strconv.Itoa(x)
		}
		return strings.Join(s, " ")
	}
	yes := func(v bool) string {
		if v {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(&b, "degraded: %s\n", list(p.Degraded))
	fmt.Fprintf(&b, "stale: %s\n", list(p.Stale))
	fmt.Fprintf(&b, "missed: %s\n", list(p.Missed))
	fmt.Fprintf(&b, "rebuild: %s\n", list(p.Rebuild))
	fmt.Fprintf(&b, "usable: %d\n", p.Usable)
	fmt.Fprintf(&b, "merge-now: %s\n", list(p.MergeNow))
	fmt.Fprintf(&b, "merge-on-return: %s\n", list(p.MergeOnReturn))
	fmt.Fprintf(&b, "mark-all: %s\n", yes(p.MarkAll))
	fmt.Fprintf(&b, "start-pinned: %s\n", yes(p.StartPinned))
	fmt.Fprintf(&b, "pin-survivors: %s\n", yes(p.PinSurvivors))
	fmt.Fprintf(&b, "record-before-serving: %s\n", yes(p.RecordBeforeServing))
	for _, i := range p.Degraded {
		r := PlanRejoin(RejoinInput{Mode: in.Mode, MergeOnReturn: contains(p.MergeOnReturn, i), Rebuild: contains(p.Rebuild, i)})
		var acts []string
		if r.Fence {
			acts = append(acts, "fence")
		}
		if r.MergeLog {
			acts = append(acts, "merge-log")
		}
		if r.MarkAll {
			acts = append(acts, "mark-all")
		}
		if r.MarkAllocated {
			acts = append(acts, "mark-allocated")
		}
		fmt.Fprintf(&b, "rejoin %d: %s\n", i, strings.Join(acts, " "))
	}
	return b.String()
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
