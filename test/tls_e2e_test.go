package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/localcluster"
)

// TestTLSRefusesOtherCAs: against a real cluster, which serves its API and
// the chunkservers' control API over TLS only:
//   - curl with the cluster CA gets /healthz over TLS 1.3, and openssl
//     s_client shows the chain;
//   - chunkraid cert issue makes a metaserver certificate for several
//     names, its key kept here with mode 0600;
//   - the CLI, a chunkserver and a hostd that trust another CA refuse the
//     metaserver with a line naming the unknown authority, and neither
//     daemon joins the cluster.
func TestTLSRefusesOtherCAs(t *testing.T) {
	t.Parallel()
	needTools(t, "curl", "openssl")
	c := startCluster(t, testChunk)
	ctx := t.Context()

	out := run(t, "curl", "-sS", "-v", "--cacert", c.CAFile(), c.MetaURL+"/healthz")
	if !strings.Contains(out, `"status":"ok"`) || !strings.Contains(out, "TLSv1.3") {
		t.Fatalf("curl --cacert:\n%s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "SSL connection using") || strings.Contains(l, "subject:") || strings.Contains(l, "issuer:") || strings.Contains(l, "subjectAltName") || strings.Contains(l, "status") {
			t.Logf("curl: %s", strings.TrimSpace(l))
		}
	}
	host := strings.TrimPrefix(c.MetaURL, "https://")
	sc := exec.CommandContext(ctx, "openssl", "s_client", "-connect", host, "-CAfile", c.CAFile(), "-brief")
	sc.Stdin = strings.NewReader("")
	scOut, _ := sc.CombinedOutput()
	if !strings.Contains(string(scOut), "Verification: OK") || !strings.Contains(string(scOut), "TLSv1.3") {
		t.Errorf("openssl s_client:\n%s", scOut)
	}
	t.Logf("openssl s_client -brief:\n%s", scOut)
	if out, err := exec.CommandContext(ctx, "curl", "-sS", c.MetaURL+"/healthz").CombinedOutput(); err == nil {
		t.Errorf("curl without the cluster CA reached the API:\n%s", out)
	} else {
		t.Logf("curl without the cluster CA: %s", strings.TrimSpace(string(out)))
	}

	// chunkraid cert issue.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "meta.crt"), filepath.Join(dir, "meta.key")
	out = cli(t, c, "cert", "issue", "--name", "meta1.example", "--name", "meta2.example", "--name", "192.0.2.10",
		"--cert-out", certFile, "--key-out", keyFile)
	t.Logf("cert issue:\n%s", out)
	ca, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := pki.Verify(ca, cert, pki.Metaserver)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(leaf.DNSNames, leaf.IPAddresses) != "[meta1.example meta2.example] [192.0.2.10]" {
		t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", fi.Mode(), err)
	}
	if out, err := exec.CommandContext(ctx, c.Binary(), "--metaserver", c.MetaURL, "--ca-file", c.CAFile(), "--token-file", c.TokenFile(),
		"cert", "issue", "--name", "x.example", "--cert-out", certFile, "--key-out", filepath.Join(dir, "other.key")).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "exists") {
		t.Errorf("cert issue over an existing file: %v\n%s", err, out)
	}

	// Another CA.
	otherCA, _, err := pki.NewCA("impostor", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(dir, "other-ca.pem")
	if err := os.WriteFile(otherFile, otherCA, 0o644); err != nil {
		t.Fatal(err)
	}
	out2, err := exec.CommandContext(ctx, c.Binary(), "--metaserver", c.MetaURL, "--ca-file", otherFile, "--token-file", c.TokenFile(),
		"volume", "list").CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "not signed by a CA this command trusts") || strings.Count(strings.TrimSpace(string(out2)), "\n") != 0 {
		t.Errorf("the CLI trusting another CA: %v\n%s", err, out2)
	}
	t.Logf("CLI trusting another CA: %s", strings.TrimSpace(string(out2)))

	port := func() string {
		p, err := localcluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	daemons := map[string][]string{
		"chunkserver": {"chunkserver", "--name", "impostor-cs", "--data-dir", filepath.Join(dir, "cs"), "--listen", port(), "--control-listen", port()},
		"hostd": {"hostd", "--name", "impostor-h", "--listen", port(), "--state-dir", filepath.Join(dir, "h"),
			"--wib-dir", filepath.Join(dir, "wib")},
	}
	for what, args := range daemons {
		dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		cmd := exec.CommandContext(dctx, c.Binary(), append([]string{"--metaserver", c.MetaURL, "--ca-file", otherFile,
			"--join-token-file", c.JoinTokenFile()}, args...)...)
		out, err := cmd.CombinedOutput()
		timedOut := dctx.Err() != nil
		cancel()
		if timedOut {
			t.Fatalf("%s trusting another CA still runs after 60 s:\n%s", what, out)
		}
		if err == nil || !strings.Contains(string(out), "certificate signed by unknown authority") {
			t.Errorf("%s trusting another CA: %v\n%s", what, err, out)
		}
		last := strings.TrimSpace(string(out))
		last = last[strings.LastIndex(last, "\n")+1:]
		t.Logf("%s trusting another CA exits: %s", what, last)
	}
	cs, err := c.Client().ListChunkservers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := c.Client().ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 3 || len(hosts) != 1 {
		t.Errorf("%d chunkservers and %d hosts registered, want 3 and 1", len(cs), len(hosts))
	}
}
