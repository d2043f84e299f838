package iscsi

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// redirectPair starts two portals: a serves testIQN; b serves nothing of
// its own and redirects testIQN to a, open only to allowed.
func redirectPair(t *testing.T, allowed ...string) (aAddr, bAddr string, be *memBackend) {
	t.Helper()
	_, be, aAddr = newTestServer(t, Config{}, 1<<20)
	b, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	b.SetRedirects(map[string]Redirect{testIQN: {Addr: aAddr, AllowedInitiators: allowed}})
	return aAddr, startServer(t, b), be
}

// TestLoginRedirect: a login for a target another portal serves is
// answered with status 0x0101 (target moved temporarily) and that
// portal's TargetAddress; an initiator the allowlist does not admit gets
// 0x0202 instead, and SendTargets lists the target with the other portal's
// address only to initiators it admits.
func TestLoginRedirect(t *testing.T) {
	aAddr, bAddr, _ := redirectPair(t, "iqn.2026-01.test:initiator")
	c := dialInitiator(t, bAddr)
	resp, keys := c.login(textPair{"InitiatorName", "iqn.2026-01.test:initiator"}, textPair{"TargetName", testIQN})
	if got := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail); got != loginMovedTemporarily || keys["TargetAddress"] != aAddr+",1" {
		t.Fatalf("status 0x%04x, keys %v; want 0x0101 and TargetAddress=%s,1", got, keys, aAddr)
	}
	if err := c.waitClosed(5 * time.Second); err != nil {
		t.Error(err)
	}
	c = dialInitiator(t, bAddr)
	resp, keys = c.login(textPair{"InitiatorName", "iqn.2026-01.test:other"}, textPair{"TargetName", testIQN})
	if got := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail); got != loginAuthzFailed || keys["TargetAddress"] != "" {
		t.Fatalf("an initiator not on the allowlist: status 0x%04x, keys %v; want 0x0202 and no address", got, keys)
	}
	for initiator, want := range map[string]string{"iqn.2026-01.test:initiator": "TargetName=" + testIQN + "\x00TargetAddress=" + aAddr + ",1\x00", "iqn.2026-01.test:other": ""} {
		c = dialInitiator(t, bAddr)
		resp, _ = c.login(textPair{"InitiatorName", initiator}, textPair{"SessionType", "Discovery"})
		if resp.StatusClass != 0 {
			t.Fatalf("discovery login: %+v", resp)
		}
		req := textRequest{Immediate: true, Final: true, ITT: c.nextITT(), TTT: reservedTag, CmdSN: c.cmdSN}
		var h header
		req.marshal(&h)
		c.send(&h, encodeText([]textPair{{"SendTargets", "All"}}))
		d := c.recv()
		if got := string(bytes.TrimRight(d.data, "\x00")) + "\x00"; want != "" && got != want || want == "" && len(bytes.TrimRight(d.data, "\x00")) != 0 {
			t.Errorf("SendTargets=All for %s: %q, want %q", initiator, d.data, want)
		}
	}
}

// TestRealClientFollowsRedirect: libiscsi's tools and QEMU, given the portal
// that does not serve the target, are redirected to the one that does.
func TestRealClientFollowsRedirect(t *testing.T) {
	aAddr, bAddr, be := redirectPair(t)
	url := "iscsi://" + bAddr + "/" + testIQN + "/0"
	out, err := runTool(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x6b 4096 8192", url)
	if err != nil {
		t.Fatalf("qemu-io through the redirecting portal: %v\n%s", err, out)
	}
	if got := be.snapshot(4096, 8192); !bytes.Equal(got, bytes.Repeat([]byte{0x6b}, 8192)) {
		t.Fatalf("the write through the redirect did not reach the serving portal's LUN")
	}
	out, err = runTool(t, 30*time.Second, "iscsi-ls", "-s", "iscsi://"+bAddr)
	if err != nil {
		t.Fatalf("iscsi-ls: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Target:"+testIQN) || !strings.Contains(out, aAddr) {
		t.Errorf("iscsi-ls through the redirecting portal:\n%s", out)
	}
	t.Logf("iscsi-ls -s iscsi://%s:\n%s", bAddr, out)
}
