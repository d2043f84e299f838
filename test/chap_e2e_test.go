package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCHAPAndAllowlist sets CHAP and an initiator allowlist on a served
// volume through the CLI; the host applies them to new logins without a
// new attach. The right password logs in, a wrong or missing one is
// refused, and an initiator not on the list neither logs in nor sees the
// target in discovery.
func TestCHAPAndAllowlist(t *testing.T) {
	t.Parallel()
	c := startCluster(t, testChunk)
	cli(t, c, "volume", "create", "sec", "--size", "64MiB", "--host", c.HostName)
	if err := c.WaitTarget(t.Context(), "sec", time.Minute); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("correct-horse-battery\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cli(t, c, "volume", "chap", "sec", "--user", "alice", "--secret-file", secret)
	if out := cli(t, c, "volume", "show", "sec", "-o", "json"); strings.Contains(out, "correct-horse") {
		t.Fatal("volume show returns the CHAP secret")
	}
	iqn := "iqn.2026-11.io.chunkraid:sec"
	good := "iscsi://alice%correct-horse-battery@" + c.ISCSIAddr + "/" + iqn + "/0"
	bad := "iscsi://alice%wrong-password-1@" + c.ISCSIAddr + "/" + iqn + "/0"
	none := "iscsi://" + c.ISCSIAddr + "/" + iqn + "/0"

	// The host applies the change through its long poll: wait for it.
	waitFor(t, 10*time.Second, "the host to require CHAP", func() bool {
		return exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4096", none).Run() != nil
	})
	if out := run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 0 64k", "-c", "read -P 0x42 0 64k", good); strings.Contains(out, "failed") {
		t.Fatalf("right CHAP password:\n%s", out)
	}
	for name, url := range map[string]string{"wrong password": bad, "no credentials": none} {
		out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4096", url).CombinedOutput()
		if err == nil || strings.Contains(string(out), "read 4096/4096") {
			t.Fatalf("%s: login succeeded:\n%s", name, out)
		}
		t.Logf("%s refused: %s", name, strings.TrimSpace(firstLine(string(out))))
	}

	// Allowlist: only this initiator name may log in and see the target.
	allowed := "iqn.2026-11.io.chunkraid:allowed-client"
	cli(t, c, "volume", "allow", "sec", allowed)
	waitFor(t, 10*time.Second, "the host to apply the allowlist", func() bool {
		out, _ := exec.Command("iscsi-ls", "-i", "iqn.2026-11.io.chunkraid:other-client", "iscsi://"+c.ISCSIAddr).CombinedOutput()
		return !strings.Contains(string(out), iqn)
	})
	if out := run(t, "iscsi-ls", "-i", allowed, "iscsi://"+c.ISCSIAddr); !strings.Contains(out, iqn) {
		t.Fatalf("discovery by the allowed initiator does not list the target:\n%s", out)
	}
	if out, err := exec.Command("iscsi-inq", "-i", "iqn.2026-11.io.chunkraid:other-client", good).CombinedOutput(); err == nil {
		t.Fatalf("an initiator not on the allowlist logged in:\n%s", out)
	}
	if out := run(t, "iscsi-inq", "-i", allowed, good); !strings.Contains(strings.ToLower(out), "chunkraid") {
		t.Fatalf("allowed initiator with the right password:\n%s", out)
	}
	cli(t, c, "volume", "chap", "sec", "--clear")
	cli(t, c, "volume", "disallow", "sec", "--all")
	waitFor(t, 10*time.Second, "the host to drop CHAP and the allowlist", func() bool {
		return exec.Command("qemu-io", "-f", "raw", "-c", "read -P 0x42 0 64k", none).Run() == nil
	})
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
