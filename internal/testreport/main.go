// Command testreport reads `go test -json` on standard input and prints what
// plain `go test` would (each package's closing line, and the whole output
// of every failed test), then the ten slowest tests and a closing count.
// make test pipes go test into it, so that a slow test is visible at the end
// of every run; the Makefile keeps go test's exit status (pipefail), and
// testreport exits non-zero too when a test or package failed.
package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output events
	Test       string
	Elapsed    float64
	Output     string
}

// result is a finished top-level test.
type result struct {
	name    string
	elapsed time.Duration
}

type report struct {
	out     io.Writer
	pending map[string][]string // output of running tests, by package and test
	done    []result
	passed  int
	failed  int
	skipped int
	pkgFail int
	// failedIn counts failed tests by package, so that a package that
	// failed without a failed test (a build error, a crash in TestMain)
	// is counted as a failure too.
	failedIn map[string]int
}

func main() {
	r := &report{out: os.Stdout, pending: map[string][]string{}, failedIn: map[string]int{}}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	r.summary()
	if r.failed > 0 || r.pkgFail > 0 {
		os.Exit(1)
	}
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event (go vet or the build speaking): pass it on.
			fmt.Fprintf(r.out, "%s\n", line)
			continue
		}
		r.event(e)
	}
	return sc.Err()
}

func (r *report) event(e event) {
	key := e.Package + " " + e.Test
	switch {
	case e.Action == "build-output":
		fmt.Fprint(r.out, e.Output)
	case e.Test == "":
		switch e.Action {
		case "output":
			// Package lines: ok/FAIL, PASS, a panic outside a test.
			if e.Output != "PASS\n" {
				fmt.Fprint(r.out, e.Output)
			}
		case "fail":
			r.pkgFail++
			if r.failedIn[e.Package] == 0 {
				r.failed++ // the package failed without a failed test
			}
		}
	case e.Action == "output":
		if !strings.HasPrefix(e.Output, "=== ") {
			r.pending[key] = append(r.pending[key], e.Output)
		}
	case e.Action == "pass" || e.Action == "fail" || e.Action == "skip":
		if e.Action == "fail" {
			fmt.Fprint(r.out, strings.Join(r.pending[key], ""))
		}
		delete(r.pending, key)
		if strings.Contains(e.Test, "/") {
			return
		}
		switch e.Action {
		case "pass":
			r.passed++
		case "fail":
			r.failed++
			r.failedIn[e.Package]++
		case "skip":
			r.skipped++
			return
		}
		r.done = append(r.done, result{
			name:    e.Package + "." + e.Test,
			elapsed: time.Duration(e.Elapsed * float64(time.Second)),
		})
	}
}

func (r *report) summary() {
	// Tests that never finished (a timeout, a crash): show what they said.
	keys := make([]string, 0, len(r.pending))
	for k := range r.pending {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(r.out, "\n--- %s did not finish; its output:\n%s", k, strings.Join(r.pending[k], ""))
	}
	slices.SortFunc(r.done, func(a, b result) int { return cmp.Compare(b.elapsed, a.elapsed) })
	fmt.Fprintln(r.out, "\nThe ten slowest tests:")
	for _, t := range r.done[:min(10, len(r.done))] {
		fmt.Fprintf(r.out, "  %8.1fs  %s\n", t.elapsed.Seconds(), t.name)
	}
	fmt.Fprintf(r.out, "\n%d passed, %d failed, %d skipped\n", r.passed, r.failed, r.skipped)
}
