package test

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/chunkraid/chunkraid"

// TestDependencyDirection fails on an import edge the layout forbids:
// hostd → linear → raid → bitmap point one way, wire packages and the
// timeout budget use only the standard library, the daemons share only leaf
// packages (the metaserver needs no bitmap), and nothing imports cli or
// test.
func TestDependencyDirection(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("go", "list", "-json=ImportPath,Imports", "../...")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath string
		Imports    []string
	}
	imports := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		imports[strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")] = p.Imports
	}
	if len(imports) < 10 {
		t.Fatalf("go list found only %d packages", len(imports))
	}
	under := func(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	internal := func(imp string) (string, bool) {
		if !strings.HasPrefix(imp, module) {
			return "", false
		}
		return strings.TrimPrefix(strings.TrimPrefix(imp, module), "/"), true
	}
	stdlibOnly := []string{"chunkserver/nbd", "metaserver/api", "bitmap", "budget", "remb"}
	forbidden := map[string][]string{
		"bitmap":      {"raid", "linear", "hostd", "chunkserver", "metaserver"},
		"raid":        {"linear", "hostd", "chunkserver", "metaserver"},
		"linear":      {"hostd", "chunkserver", "metaserver"},
		"chunkserver": {"hostd", "metaserver/internal", "linear", "raid"},
		"metaserver":  {"hostd", "chunkserver", "linear", "raid", "bitmap"},
		"hostd":       {"metaserver/internal", "chunkserver/internal"},
		// The target maps errors through its own vocabulary (iscsi.ErrNotReady
		// and the rest); the RAID package stays behind hostd.
		"hostd/iscsi": {"raid", "linear", "bitmap"},
	}
	for p, imps := range imports {
		for _, imp := range imps {
			dep, ok := internal(imp)
			if !ok {
				for _, s := range stdlibOnly {
					if p == s && strings.Contains(strings.SplitN(imp, "/", 2)[0], ".") {
						t.Errorf("%s must use only the standard library, imports %s", p, imp)
					}
				}
				continue
			}
			if (under(dep, "cli") || under(dep, "test")) && !under(p, "cli") {
				t.Errorf("%s imports %s: nothing may import cli or test", p, dep)
			}
			for _, s := range stdlibOnly {
				if p == s {
					t.Errorf("%s must use only the standard library, imports %s", p, dep)
				}
			}
			for from, bad := range forbidden {
				if !under(p, from) {
					continue
				}
				for _, b := range bad {
					if under(dep, b) && !under(dep, from) && !(b == "chunkserver" && dep == "chunkserver/nbd") {
						t.Errorf("forbidden import edge %s → %s", p, dep)
					}
				}
			}
		}
	}
}
