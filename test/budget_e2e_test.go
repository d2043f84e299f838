package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTimeoutBudgetRejected: a LOG rotation period T that breaks the
// timeout budget stops the metaserver at start-up with a message that names
// the rule, before it touches the database.
func TestTimeoutBudgetRejected(t *testing.T) {
	t.Parallel()
	needTools(t)
	out, err := exec.CommandContext(t.Context(), binary, "metaserver",
		"--database-url", "postgres://nobody@127.0.0.1:1/none",
		"--io-timeout", "1s", "--offline-after", "1500ms", "--log-period", "2s").CombinedOutput()
	if err == nil {
		t.Fatalf("metaserver started with T < 3×t_io:\n%s", out)
	}
	if !strings.Contains(string(out), "at least 3×t_io") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Fatalf("want one line naming the rule T >= 3×t_io, got:\n%s", out)
	}
}
