package iscsi

import (
	"io"
	"testing"
)

func testLoginMachine() *loginMachine {
	return testLoginMachineWith(TargetConfig{Serial: "s"}, nil)
}

// testLoginMachineWith returns a login machine for a server with one
// target, testIQN, configured with cfg; rnd supplies CHAP challenges.
func testLoginMachineWith(cfg TargetConfig, rnd io.Reader) *loginMachine {
	tgt := &target{iqn: testIQN}
	tgt.cfg.Store(cfg.clone())
	ours := defaultParams()
	ours.TargetRecvDSL = 262144
	ours.MaxBurstLength = 1 << 20
	return newLoginMachine(ours, 128, loginEnv{
		lookupTarget: func(name string) (*target, bool) {
			if name == testIQN {
				return tgt, true
			}
			return nil, false
		},
		lookupRedirect: func(name string) (Redirect, bool) {
			// Another portal serves ...:moved.
			if name == testIQN+"-moved" {
				return Redirect{Addr: "127.0.0.1:3261", AllowedInitiators: cfg.AllowedInitiators}, true
			}
			return Redirect{}, false
		},
		sessionExists: func(tsih uint16) bool { return tsih == 7 },
		rand:          rnd,
	})
}

type loginStepCase struct {
	req     loginRequest
	text    []textPair
	step    loginStep
	status  uint16
	transit bool
	nsg     uint8
	answers map[string]string // answers that must be present
	absent  []string          // keys that must not be answered
}

func runLogin(t *testing.T, m *loginMachine, steps []loginStepCase) {
	t.Helper()
	for i, s := range steps {
		s.req.ISID = [6]byte{0x80, 0, 0, 0, 0, 1}
		s.req.CmdSN = 10
		resp, data, st, err := m.step(&s.req, encodeText(s.text))
		status := uint16(resp.StatusClass)<<8 | uint16(resp.StatusDetail)
		if st != s.step || status != s.status {
			t.Fatalf("step %d: outcome %d status 0x%04x (%v), want %d 0x%04x", i, st, status, err, s.step, s.status)
		}
		if st == loginFailed {
			return
		}
		if resp.Transit != s.transit || (s.transit && resp.NSG != s.nsg) || resp.CSG != s.req.CSG {
			t.Fatalf("step %d: T=%v CSG=%d NSG=%d, want T=%v NSG=%d", i, resp.Transit, resp.CSG, resp.NSG, s.transit, s.nsg)
		}
		if resp.ExpCmdSN != 10 || resp.MaxCmdSN != 10+127 {
			t.Errorf("step %d: window %d..%d", i, resp.ExpCmdSN, resp.MaxCmdSN)
		}
		pairs, err := parseText(data)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, p := range pairs {
			got[p.key] = p.value
		}
		for k, v := range s.answers {
			if got[k] != v {
				t.Errorf("step %d: %s=%q, want %q (answers %v)", i, k, got[k], v, got)
			}
		}
		for _, k := range s.absent {
			if _, ok := got[k]; ok {
				t.Errorf("step %d: unexpected answer %s=%s", i, k, got[k])
			}
		}
	}
}

var (
	normalDecl = []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"TargetName", testIQN}, {"SessionType", "Normal"}}
	secToOp    = loginRequest{Transit: true, CSG: stageSecurity, NSG: stageOperational}
	secStay    = loginRequest{CSG: stageSecurity}
	opToFFP    = loginRequest{Transit: true, CSG: stageOperational, NSG: stageFullFeature}
)

func withText(base []textPair, more ...textPair) []textPair {
	return append(append([]textPair(nil), base...), more...)
}

func TestLoginMachine(t *testing.T) {
	tests := []struct {
		name  string
		steps []loginStepCase
	}{
		{"security then operational", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP,None"}), step: loginContinue, transit: true, nsg: stageOperational,
				answers: map[string]string{"AuthMethod": "None", "TargetPortalGroupTag": "1"}, absent: []string{"MaxRecvDataSegmentLength"}},
			{req: opToFFP, text: []textPair{{"MaxBurstLength", "65536"}, {"MaxRecvDataSegmentLength", "8192"}}, step: loginDone, transit: true, nsg: stageFullFeature,
				answers: map[string]string{"MaxBurstLength": "65536", "MaxRecvDataSegmentLength": "262144"}, absent: []string{"TargetPortalGroupTag"}},
		}},
		{"security without transit first", []loginStepCase{
			{req: secStay, text: withText(normalDecl, textPair{"AuthMethod", "None"}), step: loginContinue},
			{req: loginRequest{Transit: true, CSG: stageSecurity, NSG: stageFullFeature}, step: loginDone, transit: true, nsg: stageFullFeature},
		}},
		{"straight to operational", []loginStepCase{
			{req: opToFFP, text: normalDecl, step: loginDone, transit: true, nsg: stageFullFeature,
				answers: map[string]string{"TargetPortalGroupTag": "1", "MaxRecvDataSegmentLength": "262144"}},
		}},
		{"discovery", []loginStepCase{
			{req: opToFFP, text: []textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"SessionType", "Discovery"}, {"InitialR2T", "Yes"}}, step: loginDone, transit: true, nsg: stageFullFeature,
				answers: map[string]string{"InitialR2T": "Irrelevant"}, absent: []string{"TargetPortalGroupTag"}},
		}},
		{"continued text", []loginStepCase{
			{req: loginRequest{Continue: true, CSG: stageOperational}, text: []textPair{{"InitiatorName", "iqn.2026-01.test:i"}}, step: loginContinue, absent: []string{"TargetPortalGroupTag"}},
			{req: opToFFP, text: []textPair{{"TargetName", testIQN}}, step: loginDone, transit: true, nsg: stageFullFeature, answers: map[string]string{"TargetPortalGroupTag": "1"}},
		}},
		{"CHAP only", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"AuthMethod", "CHAP"}), step: loginFailed, status: loginAuthFailed},
		}},
		{"CHAP keys without CHAP", []loginStepCase{
			{req: secToOp, text: withText(normalDecl, textPair{"CHAP_A", "5"}), step: loginFailed, status: loginAuthFailed},
		}},
		{"AuthMethod in operational stage", []loginStepCase{
			{req: opToFFP, text: withText(normalDecl, textPair{"AuthMethod", "None"}), step: loginFailed, status: loginInitiatorError},
		}},
		{"transition to stage 2", []loginStepCase{
			{req: loginRequest{Transit: true, CSG: stageSecurity, NSG: 2}, text: normalDecl, step: loginFailed, status: loginInitiatorError},
		}},
		{"transition backwards", []loginStepCase{
			{req: loginRequest{Transit: true, CSG: stageOperational, NSG: stageOperational}, text: normalDecl, step: loginFailed, status: loginInitiatorError},
		}},
		{"first request in full feature stage", []loginStepCase{
			{req: loginRequest{CSG: stageFullFeature}, text: normalDecl, step: loginFailed, status: loginInitiatorError},
		}},
		{"stage changes without transit", []loginStepCase{
			{req: secStay, text: normalDecl, step: loginContinue},
			{req: opToFFP, step: loginFailed, status: loginInitiatorError},
		}},
		{"T and C together", []loginStepCase{
			{req: loginRequest{Transit: true, Continue: true, CSG: stageOperational, NSG: stageFullFeature}, text: normalDecl, step: loginFailed, status: loginInitiatorError},
		}},
		{"unsupported version", []loginStepCase{
			{req: loginRequest{Transit: true, CSG: stageOperational, NSG: stageFullFeature, VersionMin: 1, VersionMax: 2}, text: normalDecl, step: loginFailed, status: loginUnsupportedVersion},
		}},
		{"existing TSIH", []loginStepCase{
			{req: loginRequest{Transit: true, CSG: stageOperational, NSG: stageFullFeature, TSIH: 7}, text: normalDecl, step: loginFailed, status: loginCantInclude},
		}},
		{"initiator name changed", []loginStepCase{
			{req: secStay, text: normalDecl, step: loginContinue},
			{req: secToOp, text: []textPair{{"InitiatorName", "iqn.2026-01.test:other"}}, step: loginFailed, status: loginInitiatorError},
		}},
		{"bad initiator name", []loginStepCase{
			{req: opToFFP, text: []textPair{{"InitiatorName", "bob"}, {"TargetName", testIQN}}, step: loginFailed, status: loginInitiatorError},
		}},
		{"malformed text", []loginStepCase{
			{req: opToFFP, text: []textPair{{"bad key", "x"}}, step: loginFailed, status: loginInitiatorError},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runLogin(t, testLoginMachine(), tc.steps)
		})
	}
}

func TestLoginMachineSequenceNumbers(t *testing.T) {
	m := testLoginMachine()
	req := secToOp
	req.ExpStatSN = 500
	r1, _, _, _ := m.step(&req, encodeText(normalDecl))
	r2, _, st, _ := m.step(&opToFFP, nil)
	if r1.StatSN != 500 || r2.StatSN != 501 || st != loginDone || m.statSN != 502 {
		t.Errorf("StatSN %d then %d, next %d, outcome %d", r1.StatSN, r2.StatSN, m.statSN, st)
	}
}

func TestLoginMachineChangedISID(t *testing.T) {
	m := testLoginMachine()
	req := secStay
	req.ISID = [6]byte{1}
	if _, _, st, _ := m.step(&req, encodeText(normalDecl)); st != loginContinue {
		t.Fatal("first step failed")
	}
	req.ISID = [6]byte{2}
	if _, _, st, _ := m.step(&req, nil); st != loginFailed {
		t.Error("ISID change accepted")
	}
}
