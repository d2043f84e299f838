package iscsi

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

func TestDecodeBinary(t *testing.T) {
	tests := []struct {
		in   string
		want []byte
		ok   bool
	}{
		{"0x00ff10", []byte{0x00, 0xff, 0x10}, true},
		{"0XABcd", []byte{0xab, 0xcd}, true},
		{"0xabc", []byte{0x0a, 0xbc}, true}, // odd digit count: implied leading zero
		{"0b" + base64.StdEncoding.EncodeToString([]byte("chap!")), []byte("chap!"), true},
		{"0B" + base64.RawStdEncoding.EncodeToString([]byte("chap!")), []byte("chap!"), true},
		{"0x", nil, false},
		{"0xzz", nil, false},
		{"0b!!!!", nil, false},
		{"1234", nil, false},
		{"", nil, false},
	}
	for _, tc := range tests {
		got, err := decodeBinary(tc.in)
		if (err == nil) != tc.ok || !bytes.Equal(got, tc.want) {
			t.Errorf("decodeBinary(%q) = %x, %v; want %x, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestCHAPResponse(t *testing.T) {
	// RFC 1994 4.1: MD5 over identifier, secret and challenge.
	id, secret, challenge := byte(0x2a), "alice-secret-1", []byte{1, 2, 3, 4, 5}
	msg := append(append([]byte{id}, secret...), challenge...)
	want := md5.Sum(msg)
	if got := chapResponse(id, secret, challenge); !bytes.Equal(got, want[:]) {
		t.Fatalf("chapResponse = %x, want %x", got, want)
	}
}

func TestCHAPValidate(t *testing.T) {
	tests := []struct {
		name string
		c    CHAP
		ok   bool
	}{
		{"one-way", CHAP{User: "alice", Secret: "alice-secret-1"}, true},
		{"mutual", CHAP{User: "alice", Secret: "alice-secret-1", MutualUser: "tgt", MutualSecret: "target-secret"}, true},
		{"no user", CHAP{Secret: "alice-secret-1"}, false},
		{"short secret", CHAP{User: "alice", Secret: "short"}, false},
		{"long secret", CHAP{User: "alice", Secret: strings.Repeat("s", 256)}, false},
		{"control character in user", CHAP{User: "al\x00ice", Secret: "alice-secret-1"}, false},
		{"mutual user without secret", CHAP{User: "alice", Secret: "alice-secret-1", MutualUser: "tgt"}, false},
		{"mutual secret without user", CHAP{User: "alice", Secret: "alice-secret-1", MutualSecret: "target-secret"}, false},
		{"same secret both ways", CHAP{User: "alice", Secret: "alice-secret-1", MutualUser: "tgt", MutualSecret: "alice-secret-1"}, false},
	}
	for _, tc := range tests {
		if err := tc.c.validate(); (err == nil) != tc.ok {
			t.Errorf("%s: validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestTargetConfigValidation(t *testing.T) {
	srv, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	be := newMemBackend(1 << 20)
	bad := []TargetConfig{
		{},
		{Serial: "s", CHAP: &CHAP{User: "alice", Secret: "short"}},
		{Serial: "s", AllowedInitiators: []string{"not-an-iqn"}},
	}
	for i, cfg := range bad {
		if err := srv.AddTargetWith(testIQN, be, cfg); !errors.Is(err, ErrInvalidTarget) {
			t.Errorf("config %d: AddTargetWith = %v, want ErrInvalidTarget", i, err)
		}
	}
	cfg := TargetConfig{Serial: "s", AllowedInitiators: []string{"iqn.2026-01.test:a"}}
	if err := srv.AddTargetWith(testIQN, be, cfg); err != nil {
		t.Fatal(err)
	}
	// The stored configuration is a copy: the caller's slice may change.
	cfg.AllowedInitiators[0] = "iqn.2026-01.test:b"
	tgt, _ := srv.lookupTarget(testIQN)
	if !tgt.cfg.Load().allows("iqn.2026-01.test:a") || tgt.cfg.Load().allows("iqn.2026-01.test:b") {
		t.Error("the stored allowlist follows the caller's slice")
	}
	if err := srv.UpdateTarget("iqn.2026-01.test:none", TargetConfig{}); !errors.Is(err, ErrTargetNotFound) {
		t.Errorf("UpdateTarget of an unknown target = %v", err)
	}
	if err := srv.UpdateTarget(testIQN, TargetConfig{Serial: "other"}); !errors.Is(err, ErrInvalidTarget) {
		t.Errorf("UpdateTarget changing the serial = %v", err)
	}
	if err := srv.UpdateTarget(testIQN, TargetConfig{CHAP: &CHAP{User: "u"}}); !errors.Is(err, ErrInvalidTarget) {
		t.Errorf("UpdateTarget with a bad secret = %v", err)
	}
	if err := srv.UpdateTarget(testIQN, TargetConfig{AllowedInitiators: []string{"IQN.2026-01.TEST:B"}}); err != nil {
		t.Fatal(err)
	}
	if c := tgt.cfg.Load(); c.Serial != "s" || !c.allows("iqn.2026-01.test:b") || c.allows("iqn.2026-01.test:a") {
		t.Errorf("after UpdateTarget: %+v", c)
	}
}

// chapLogin drives a login machine through a CHAP exchange step by step.
type chapLogin struct {
	t *testing.T
	m *loginMachine
}

// step sends one security-stage request and returns the response status,
// the answered keys and whether the target transited.
func (l *chapLogin) step(transit bool, pairs ...textPair) (uint16, map[string]string, bool) {
	l.t.Helper()
	req := loginRequest{Transit: transit, CSG: stageSecurity, NSG: stageOperational, ISID: [6]byte{0x80, 0, 0, 0, 0, 1}, CmdSN: 1}
	resp, data, _, _ := l.m.step(&req, encodeText(pairs))
	kv, err := parseText(data)
	if err != nil {
		l.t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range kv {
		got[p.key] = p.value
	}
	return uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail), got, resp.Transit
}

// challenge runs the first two steps (AuthMethod, CHAP_A) and returns the
// target's identifier and challenge.
func (l *chapLogin) challenge() (byte, []byte) {
	l.t.Helper()
	st, keys, tr := l.step(true, withText(normalDecl, textPair{"AuthMethod", "CHAP,None"})...)
	if st != 0 || keys["AuthMethod"] != "CHAP" || tr {
		l.t.Fatalf("AuthMethod step: status 0x%04x keys %v transit %v", st, keys, tr)
	}
	st, keys, tr = l.step(false, textPair{"CHAP_A", "7,5"})
	if st != 0 || keys["CHAP_A"] != "5" || tr {
		l.t.Fatalf("CHAP_A step: status 0x%04x keys %v transit %v", st, keys, tr)
	}
	id, err := strconv.Atoi(keys["CHAP_I"])
	if err != nil || id < 0 || id > 255 {
		l.t.Fatalf("CHAP_I %q", keys["CHAP_I"])
	}
	c, err := decodeBinary(keys["CHAP_C"])
	if err != nil || len(c) < 16 {
		l.t.Fatalf("CHAP_C %q: %v", keys["CHAP_C"], err)
	}
	return byte(id), c
}

var testCHAP = CHAP{User: "alice", Secret: "alice-secret-1", MutualUser: "tgt", MutualSecret: "target-secret-1"}

func TestLoginCHAP(t *testing.T) {
	hexR := func(id byte, secret string, c []byte) string {
		return "0x" + hex.EncodeToString(chapResponse(id, secret, c))
	}
	peerC := bytes.Repeat([]byte{0x5a}, 16)
	tests := []struct {
		name   string
		creds  CHAP
		answer func(id byte, c []byte) []textPair
		status uint16
		mutual bool // the target must answer the initiator's challenge
	}{
		{"one-way hex", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}}
		}, 0, false},
		{"one-way base64", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", "0b" + base64.StdEncoding.EncodeToString(chapResponse(id, "alice-secret-1", c))}}
		}, 0, false},
		{"wrong secret", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-2", c)}}
		}, loginAuthFailed, false},
		{"wrong identifier", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id+1, "alice-secret-1", c)}}
		}, loginAuthFailed, false},
		{"wrong user", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "mallory"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}}
		}, loginAuthFailed, false},
		{"no response", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}}
		}, loginAuthFailed, false},
		{"truncated response", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)[:20]}}
		}, loginAuthFailed, false},
		{"mutual", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}, {"CHAP_I", "9"}, {"CHAP_C", "0x" + hex.EncodeToString(peerC)}}
		}, 0, true},
		{"mutual reflection", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}, {"CHAP_I", strconv.Itoa(int(id))}, {"CHAP_C", "0x" + hex.EncodeToString(c)}}
		}, loginAuthFailed, false},
		{"mutual without target secret", CHAP{User: "alice", Secret: "alice-secret-1"}, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}, {"CHAP_I", "9"}, {"CHAP_C", "0x" + hex.EncodeToString(peerC)}}
		}, loginAuthFailed, false},
		{"mutual challenge without identifier", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}, {"CHAP_C", "0x" + hex.EncodeToString(peerC)}}
		}, loginAuthFailed, false},
		{"mutual identifier out of range", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}, {"CHAP_I", "256"}, {"CHAP_C", "0x" + hex.EncodeToString(peerC)}}
		}, loginAuthFailed, false},
		{"key twice", testCHAP, func(id byte, c []byte) []textPair {
			return []textPair{{"CHAP_N", "alice"}, {"CHAP_N", "alice"}, {"CHAP_R", hexR(id, "alice-secret-1", c)}}
		}, loginAuthFailed, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			creds := tc.creds
			l := &chapLogin{t: t, m: testLoginMachineWith(TargetConfig{Serial: "s", CHAP: &creds}, nil)}
			id, c := l.challenge()
			st, keys, tr := l.step(true, tc.answer(id, c)...)
			if st != tc.status {
				t.Fatalf("status 0x%04x, want 0x%04x (keys %v)", st, tc.status, keys)
			}
			if st != 0 {
				return
			}
			if !tr || l.m.stage != stageOperational {
				t.Errorf("no transition to the operational stage after CHAP succeeded")
			}
			if tc.mutual {
				if keys["CHAP_N"] != "tgt" || keys["CHAP_R"] != hexR(9, "target-secret-1", peerC) {
					t.Errorf("mutual answer %v", keys)
				}
			} else if _, ok := keys["CHAP_R"]; ok {
				t.Errorf("target answered CHAP_R without being challenged: %v", keys)
			}
			// The operational stage completes the login.
			req := opToFFP
			req.ISID, req.CmdSN = [6]byte{0x80, 0, 0, 0, 0, 1}, 1
			if _, _, step, err := l.m.step(&req, nil); step != loginDone {
				t.Errorf("operational stage after CHAP: %d %v", step, err)
			}
		})
	}
}

func TestLoginCHAPRequired(t *testing.T) {
	creds := testCHAP
	cfg := TargetConfig{Serial: "s", CHAP: &creds}
	tests := []struct {
		name  string
		steps []loginStepCase
	}{
		{"None only", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "None"}), step: loginFailed, status: loginAuthFailed},
		}},
		{"no AuthMethod, transit", []loginStepCase{
			{req: secToOp, text: normalDecl, step: loginFailed, status: loginAuthFailed},
		}},
		{"no AuthMethod yet, stay", []loginStepCase{
			{req: secStay, text: normalDecl, step: loginContinue},
			{req: secToOp, text: []textPair{{"AuthMethod", "CHAP"}}, step: loginContinue, answers: map[string]string{"AuthMethod": "CHAP"}},
		}},
		{"skips the security stage", []loginStepCase{
			{req: opToFFP, text: normalDecl, step: loginFailed, status: loginAuthFailed},
		}},
		{"CHAP_A in the AuthMethod request", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP"}, textPair{"CHAP_A", "5"}), step: loginFailed, status: loginAuthFailed},
		}},
		{"algorithm not MD5", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP,None"}), step: loginContinue, answers: map[string]string{"AuthMethod": "CHAP"}},
			{req: secStay, text: []textPair{{"CHAP_A", "7,6"}}, step: loginFailed, status: loginAuthFailed},
		}},
		{"response before challenge", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP,None"}), step: loginContinue, answers: map[string]string{"AuthMethod": "CHAP"}},
			{req: secToOp, text: []textPair{{"CHAP_N", "alice"}, {"CHAP_R", "0x00"}}, step: loginFailed, status: loginAuthFailed},
		}},
		{"transit without CHAP_A", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP,None"}), step: loginContinue, answers: map[string]string{"AuthMethod": "CHAP"}},
			{req: secToOp, step: loginFailed, status: loginAuthFailed},
		}},
		{"discovery needs no CHAP", []loginStepCase{
			{req: secToOp, text: []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"SessionType", "Discovery"}, {"AuthMethod", "CHAP,None"}}, step: loginContinue, transit: true, nsg: stageOperational,
				answers: map[string]string{"AuthMethod": "None"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runLogin(t, testLoginMachineWith(cfg, nil), tc.steps)
		})
	}
}

func TestLoginAllowlist(t *testing.T) {
	cfg := TargetConfig{Serial: "s", AllowedInitiators: []string{"iqn.2026-01.test:allowed"}}
	decl := func(name string) []textPair {
		return []textPair{{"InitiatorName", name}, {"TargetName", testIQN}, {"SessionType", "Normal"}}
	}
	tests := []struct {
		name      string
		initiator string
		step      loginStep
		status    uint16
	}{
		{"listed", "iqn.2026-01.test:allowed", loginDone, 0},
		{"listed, other case", "IQN.2026-01.Test:Allowed", loginDone, 0},
		{"not listed", "iqn.2026-01.test:intruder", loginFailed, loginAuthzFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runLogin(t, testLoginMachineWith(cfg, nil), []loginStepCase{
				{req: opToFFP, text: decl(tc.initiator), step: tc.step, status: tc.status, transit: true, nsg: stageFullFeature},
			})
		})
	}
	// Discovery sessions are not refused: they see only what they may
	// log in to (TestDiscoveryFiltered).
	runLogin(t, testLoginMachineWith(cfg, nil), []loginStepCase{
		{req: opToFFP, text: []textPair{{"InitiatorName", "iqn.2026-01.test:intruder"}, {"SessionType", "Discovery"}}, step: loginDone, transit: true, nsg: stageFullFeature},
	})
}

// failingReader is a random source that fails.
type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestLoginCHAPRandomFailure(t *testing.T) {
	creds := testCHAP
	runLogin(t, testLoginMachineWith(TargetConfig{Serial: "s", CHAP: &creds}, failingReader{}), []loginStepCase{
		{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP"}), step: loginContinue, answers: map[string]string{"AuthMethod": "CHAP"}},
		{req: secStay, text: []textPair{{"CHAP_A", "5"}}, step: loginFailed, status: loginTargetError},
	})
}

// TestLoginCHAPChallengesDiffer checks that two logins get different
// challenges from the random source.
func TestLoginCHAPChallengesDiffer(t *testing.T) {
	creds := testCHAP
	cfg := TargetConfig{Serial: "s", CHAP: &creds}
	l1 := &chapLogin{t: t, m: testLoginMachineWith(cfg, nil)}
	l2 := &chapLogin{t: t, m: testLoginMachineWith(cfg, nil)}
	_, c1 := l1.challenge()
	_, c2 := l2.challenge()
	if bytes.Equal(c1, c2) || len(c1) != chapChallengeLen {
		t.Errorf("challenges %x and %x", c1, c2)
	}
}

// TestUpdateTargetAppliesToNewLogins restricts a target while a session is
// logged in: the session keeps working, a new login from the same
// initiator is refused, and discovery no longer lists the target.
func TestUpdateTargetAppliesToNewLogins(t *testing.T) {
	srv, _, addr := newTestServer(t, Config{}, 1<<20)
	c := dialInitiator(t, addr)
	c.loginNormal()
	if err := srv.UpdateTarget(testIQN, TargetConfig{AllowedInitiators: []string{"iqn.2026-01.test:other"}}); err != nil {
		t.Fatal(err)
	}
	if r := c.command(cdbRead10(0, 1), 512, nil, 0); r.status != statusGood {
		t.Fatalf("the logged-in session fails after UpdateTarget: status %#x", r.status)
	}
	c2 := dialInitiator(t, addr)
	resp, _ := c2.login(textPair{"InitiatorName", "iqn.2026-01.test:initiator"}, textPair{"TargetName", testIQN}, textPair{"SessionType", "Normal"})
	if got := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail); got != loginAuthzFailed {
		t.Errorf("new login from a removed initiator: status 0x%04x, want 0x0202", got)
	}
	if got := c.textExchange(textPair{"SendTargets", "All"})["TargetName"]; len(got) != 0 {
		t.Errorf("SendTargets=All lists %v to an initiator the allowlist excludes", got)
	}
	if got := c.textExchange(textPair{"SendTargets", testIQN})["TargetName"]; len(got) != 0 {
		t.Errorf("SendTargets=<iqn> lists %v to an initiator the allowlist excludes", got)
	}
	c.logout()

	// Requiring CHAP refuses a login without it.
	creds := testCHAP
	if err := srv.UpdateTarget(testIQN, TargetConfig{CHAP: &creds}); err != nil {
		t.Fatal(err)
	}
	c3 := dialInitiator(t, addr)
	resp, _ = c3.login(normalDecl...)
	if got := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail); got != loginAuthFailed {
		t.Errorf("login without CHAP after UpdateTarget: status 0x%04x, want 0x0201", got)
	}
}
