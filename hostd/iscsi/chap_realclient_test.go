package iscsi

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const (
	openIQN     = "iqn.2026-11.io.chunkraid:open"
	intruderIQN = "iqn.2026-01.test:intruder"
)

// newCHAPServer serves testIQN with mutual CHAP and an allowlist holding
// only initiatorIQN, and openIQN with neither.
func newCHAPServer(t *testing.T) (*memBackend, string) {
	t.Helper()
	srv, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	be := newMemBackend(4 << 20)
	creds := testCHAP
	if err := srv.AddTargetWith(testIQN, be, TargetConfig{Serial: "chap-serial", CHAP: &creds, AllowedInitiators: []string{initiatorIQN}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(openIQN, newMemBackend(1<<20), "open-serial"); err != nil {
		t.Fatal(err)
	}
	return be, startServer(t, srv)
}

// runToolEnv is runTool with extra environment variables.
func runToolEnv(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, needTool(t, name), args...)
	cmd.Env = append(cmd.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Errorf("%s %s: timed out", name, strings.Join(args, " "))
	}
	return string(out), err
}

// TestRealClientCHAP logs libiscsi's iscsi-inq in with right and wrong
// credentials, one-way and mutual, from allowed and other initiators.
func TestRealClientCHAP(t *testing.T) {
	_, addr := newCHAPServer(t)
	url := func(cred string) string { return "iscsi://" + cred + addr + "/" + testIQN + "/0" }
	mutual := []string{"LIBISCSI_CHAP_TARGET_USERNAME=tgt", "LIBISCSI_CHAP_TARGET_PASSWORD=target-secret-1"}
	wrongMutual := []string{"LIBISCSI_CHAP_TARGET_USERNAME=tgt", "LIBISCSI_CHAP_TARGET_PASSWORD=target-secret-2"}
	tests := []struct {
		name      string
		initiator string
		cred      string
		env       []string
		wantErr   string // "" means the login and INQUIRY succeed
	}{
		{"right password", initiatorIQN, "alice%alice-secret-1@", nil, ""},
		{"wrong password", initiatorIQN, "alice%alice-secret-2@", nil, "Authentication failure(513)"},
		{"wrong user", initiatorIQN, "bob%alice-secret-1@", nil, "Authentication failure(513)"},
		{"no credentials", initiatorIQN, "", nil, "Authentication failure(513)"},
		{"mutual, right target secret", initiatorIQN, "alice%alice-secret-1@", mutual, ""},
		{"mutual, wrong target secret", initiatorIQN, "alice%alice-secret-1@", wrongMutual, "Invalid CHAP_R response from the target"},
		{"initiator not on the allowlist", intruderIQN, "alice%alice-secret-1@", nil, "Authorization failure(514)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runToolEnv(t, tc.env, "iscsi-inq", "-i", tc.initiator, url(tc.cred))
			if tc.wantErr == "" {
				if err != nil || !strings.Contains(out, "DIRECT_ACCESS") {
					t.Fatalf("iscsi-inq: %v\n%s", err, out)
				}
				return
			}
			if err == nil || !strings.Contains(out, tc.wantErr) || strings.Contains(out, "DIRECT_ACCESS") {
				t.Fatalf("iscsi-inq logged in or failed otherwise (%v), want %q:\n%s", err, tc.wantErr, out)
			}
		})
	}
}

// TestRealClientCHAPQemu reads and writes through QEMU's iSCSI driver with
// CHAP credentials given as image options, and is refused with a wrong
// password or initiator name.
func TestRealClientCHAPQemu(t *testing.T) {
	be, addr := newCHAPServer(t)
	opts := func(initiator, password string) string {
		return "driver=iscsi,transport=tcp,portal=" + addr + ",target=" + testIQN +
			",lun=0,user=alice,password=" + password + ",initiator-name=" + initiator
	}
	out, err := runTool(t, 60*time.Second, "qemu-io", "--image-opts",
		"-c", "write -P 0x3c 64k 64k", "-c", "read -P 0x3c 64k 64k", opts(initiatorIQN, "alice-secret-1"))
	if err != nil || strings.Contains(out, "failed") || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("qemu-io with CHAP: %v\n%s", err, out)
	}
	if got := be.snapshot(64<<10, 1); got[0] != 0x3c {
		t.Errorf("the write through QEMU did not reach the back end")
	}
	for _, tc := range []struct{ initiator, password, want string }{
		{initiatorIQN, "alice-secret-2", "Authentication failure"},
		{intruderIQN, "alice-secret-1", "Authorization failure"},
	} {
		out, err := runTool(t, 60*time.Second, "qemu-io", "--image-opts", "-c", "read 0 4k", opts(tc.initiator, tc.password))
		if err == nil || !strings.Contains(out, tc.want) || strings.Contains(out, "read 4096/4096") {
			t.Errorf("qemu-io as %s with password %s: %v, want %q\n%s", tc.initiator, tc.password, err, tc.want, out)
		}
	}
}

// TestRealClientDiscoveryFiltered lists targets with iscsi-ls: an
// initiator sees only the targets it may log in to.
func TestRealClientDiscoveryFiltered(t *testing.T) {
	_, addr := newCHAPServer(t)
	for _, tc := range []struct {
		initiator string
		protected bool
	}{
		{initiatorIQN, true},
		{intruderIQN, false},
	} {
		out, err := runTool(t, 30*time.Second, "iscsi-ls", "-i", tc.initiator, "iscsi://"+addr)
		if err != nil {
			t.Fatalf("iscsi-ls as %s: %v\n%s", tc.initiator, err, out)
		}
		if !strings.Contains(out, "Target:"+openIQN) {
			t.Errorf("iscsi-ls as %s lacks the open target:\n%s", tc.initiator, out)
		}
		if got := strings.Contains(out, "Target:"+testIQN); got != tc.protected {
			t.Errorf("iscsi-ls as %s lists the protected target: %v, want %v\n%s", tc.initiator, got, tc.protected, out)
		}
	}
}
