package iscsi

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Login status (Status-Class << 8 | Status-Detail), RFC 7143 11.13.5.
const (
	loginSuccess            = 0x0000
	loginMovedTemporarily   = 0x0101 // RFC 7143 11.13.5: TargetAddress says where
	loginInitiatorError     = 0x0200
	loginAuthFailed         = 0x0201
	loginAuthzFailed        = 0x0202
	loginNotFound           = 0x0203
	loginTargetRemoved      = 0x0204
	loginUnsupportedVersion = 0x0205
	loginCantInclude        = 0x0208
	loginSessionNotExist    = 0x020a
	loginMissingParam       = 0x0207
	loginSessionType        = 0x0209
	loginTargetError        = 0x0300
	loginOutOfResources     = 0x0302
)

// loginError is a login that ends with a Login Reject status, or with a
// redirection (status class 1), whose response carries data (the
// TargetAddress).
type loginError struct {
	status uint16
	reason string
	data   []byte
}

func (e *loginError) Error() string {
	return fmt.Sprintf("iscsi: login rejected (status 0x%04x): %s", e.status, e.reason)
}

func rejectLogin(status uint16, format string, args ...any) *loginError {
	return &loginError{status: status, reason: fmt.Sprintf(format, args...)}
}

// loginStep is the outcome of one login request.
type loginStep uint8

const (
	loginContinue loginStep = iota // send the response, expect another request
	loginDone                      // send the response; the session enters full feature phase
	loginFailed                    // send the response (a Login Reject) and close
)

// loginEnv is what the login machine asks of the server.
type loginEnv struct {
	lookupTarget func(name string) (*target, bool)
	// lookupRedirect finds a target served by another portal.
	lookupRedirect func(name string) (Redirect, bool)
	sessionExists  func(tsih uint16) bool
	// rand supplies CHAP identifiers and challenges; nil means
	// crypto/rand.
	rand io.Reader
}

// loginMachine negotiates one login (RFC 7143 6.3 and 11.12): stage
// transitions, security then operational negotiation, and the declarative
// keys of the first request. It does no I/O: requests in, responses out. The
// connection admits the session (TSIH, registration) when step reports
// loginDone.
type loginMachine struct {
	env loginEnv

	neg        *negotiator
	started    bool
	stage      uint8 // current stage, valid once started
	isid       [6]byte
	tsih       uint16
	cid        uint16
	itt        uint32
	statSN     uint32
	expCmdSN   uint32
	depth      uint32
	pending    []byte // text of a request continued with the C bit
	authMethod string // negotiated AuthMethod, "" until the initiator offers it
	authDone   bool
	creds      *CHAP // the target's CHAP credentials; nil: no authentication
	chap       chapExchange
	sentMRDSL  bool
	sentTPGT   bool

	initiatorName  string
	initiatorAlias string
	targetName     string
	target         *target
	discovery      bool
}

func newLoginMachine(ours sessionParams, depth uint32, env loginEnv) *loginMachine {
	if env.rand == nil {
		env.rand = rand.Reader
	}
	if env.lookupRedirect == nil {
		env.lookupRedirect = func(string) (Redirect, bool) { return Redirect{}, false }
	}
	return &loginMachine{env: env, neg: newNegotiator(ours), depth: depth}
}

// step handles one Login Request. It always returns a response to send;
// with loginFailed that response is a Login Reject and err says why.
func (m *loginMachine) step(req *loginRequest, data []byte) (resp loginResponse, respData []byte, st loginStep, err error) {
	resp = loginResponse{
		ISID:     req.ISID,
		TSIH:     req.TSIH,
		ITT:      req.ITT,
		CSG:      req.CSG,
		StatSN:   m.statSN,
		ExpCmdSN: req.CmdSN,
		MaxCmdSN: req.CmdSN,
	}
	respData, st, err = m.stepInner(req, data, &resp)
	if err != nil {
		var le *loginError
		if !errors.As(err, &le) {
			le = rejectLogin(loginInitiatorError, "%v", err)
			err = le
		}
		resp.Transit, resp.Continue, resp.CSG, resp.NSG = false, false, 0, 0
		resp.StatusClass = uint8(le.status >> 8)
		resp.StatusDetail = uint8(le.status)
		return resp, le.data, loginFailed, err
	}
	resp.StatSN = m.statSN
	resp.ExpCmdSN = m.expCmdSN
	resp.MaxCmdSN = m.expCmdSN + m.depth - 1
	m.statSN++
	return resp, respData, st, nil
}

func (m *loginMachine) stepInner(req *loginRequest, data []byte, resp *loginResponse) ([]byte, loginStep, error) {
	if !m.started {
		if req.VersionMin > 0 {
			return nil, 0, rejectLogin(loginUnsupportedVersion, "version %d-%d", req.VersionMin, req.VersionMax)
		}
		if req.CSG != stageSecurity && req.CSG != stageOperational {
			return nil, 0, rejectLogin(loginInitiatorError, "first login request in stage %d", req.CSG)
		}
		if req.TSIH != 0 {
			// A connection for an existing session. Sessions have one
			// connection (MaxConnections=1) and ErrorRecoveryLevel 0 has no
			// connection reinstatement, so this is always refused.
			if m.env.sessionExists(req.TSIH) {
				return nil, 0, rejectLogin(loginCantInclude, "session 0x%04x already has its connection", req.TSIH)
			}
			return nil, 0, rejectLogin(loginSessionNotExist, "no session with TSIH 0x%04x", req.TSIH)
		}
		m.started = true
		m.stage = req.CSG
		m.isid, m.tsih, m.cid, m.itt = req.ISID, req.TSIH, req.CID, req.ITT
		m.statSN = req.ExpStatSN
		m.expCmdSN = req.CmdSN
	} else {
		if req.ISID != m.isid || req.TSIH != m.tsih || req.CID != m.cid {
			return nil, 0, rejectLogin(loginInitiatorError, "ISID, TSIH or CID changed during login")
		}
		if req.CSG != m.stage {
			return nil, 0, rejectLogin(loginInitiatorError, "request in stage %d, expected %d", req.CSG, m.stage)
		}
	}
	if req.Transit && req.Continue {
		return nil, 0, rejectLogin(loginInitiatorError, "T and C bits both set")
	}
	if len(m.pending)+len(data) > maxTextLen {
		return nil, 0, rejectLogin(loginInitiatorError, "login text longer than %d bytes", maxTextLen)
	}
	if req.Continue {
		// The text continues in the next request; acknowledge with an
		// empty response in the same stage.
		m.pending = append(m.pending, data...)
		return nil, loginContinue, nil
	}
	text := data
	if len(m.pending) > 0 {
		text = append(m.pending, data...)
		m.pending = nil
	}
	pairs, err := parseText(text)
	if err != nil {
		return nil, 0, rejectLogin(loginInitiatorError, "%v", err)
	}
	answers, err := m.answer(pairs, req.CSG)
	if err != nil {
		return nil, 0, err
	}
	if !m.discovery && !m.sentTPGT {
		answers = append(answers, textPair{"TargetPortalGroupTag", "1"})
		m.sentTPGT = true
	}
	if req.CSG == stageOperational && !m.sentMRDSL {
		answers = append(answers, textPair{"MaxRecvDataSegmentLength", fmt.Sprint(m.neg.ours.TargetRecvDSL)})
		m.sentMRDSL = true
	}
	if req.CSG == stageSecurity && m.authMethod == "" {
		// No AuthMethod offered: the default is None (RFC 7143 13.17),
		// which this target accepts only when it has no CHAP secret.
		switch {
		case m.creds == nil:
			m.authDone = true
		case req.Transit:
			return nil, 0, errCHAP("target %s requires CHAP; the initiator left the security stage without AuthMethod", m.target.iqn)
		}
	}

	respData := encodeText(answers)
	if len(respData) > int(m.neg.params.InitiatorRecvDSL) {
		return nil, 0, rejectLogin(loginInitiatorError, "login response of %d bytes exceeds the initiator's limit", len(respData))
	}

	step := loginContinue
	if req.Transit {
		switch {
		case req.NSG <= req.CSG || req.NSG == 2:
			return nil, 0, rejectLogin(loginInitiatorError, "invalid stage transition %d to %d", req.CSG, req.NSG)
		case req.CSG == stageSecurity && !m.authDone:
			// Stay in the security stage until authentication completes.
		default:
			resp.Transit = true
			resp.NSG = req.NSG
			m.stage = req.NSG
			if req.NSG == stageFullFeature {
				if k := m.neg.missingDigest(); k != "" {
					return nil, 0, rejectLogin(loginInitiatorError, "target requires %s=CRC32C", k)
				}
				step = loginDone
			}
		}
	}
	return respData, step, nil
}

// answer processes the keys of one complete request. Declarations come
// first: the target they name decides how the initiator must
// authenticate.
func (m *loginMachine) answer(pairs []textPair, stage uint8) ([]textPair, error) {
	first := m.initiatorName == ""
	for _, p := range pairs {
		switch p.key {
		case "SessionType":
			switch p.value {
			case "Normal":
				m.discovery = false
			case "Discovery":
				m.discovery = true
			default:
				return nil, rejectLogin(loginSessionType, "session type %q", p.value)
			}
			m.neg.discovery = m.discovery
		case "InitiatorName":
			if m.initiatorName != "" && m.initiatorName != p.value {
				return nil, rejectLogin(loginInitiatorError, "InitiatorName redeclared")
			}
			if !validISCSIName(p.value) {
				return nil, rejectLogin(loginInitiatorError, "invalid InitiatorName %q", truncString(p.value, 64))
			}
			m.initiatorName = p.value
		case "InitiatorAlias":
			m.initiatorAlias = p.value
		case "TargetName":
			if m.targetName != "" && m.targetName != p.value {
				return nil, rejectLogin(loginInitiatorError, "TargetName redeclared")
			}
			m.targetName = p.value
		}
	}
	if first {
		if err := m.checkFirst(); err != nil {
			return nil, err
		}
	}
	inCHAP := stage == stageSecurity && (m.chap.state == chapAlgorithm || m.chap.state == chapResponseW)
	var out []textPair
	for _, p := range pairs {
		switch p.key {
		case "SessionType", "InitiatorName", "InitiatorAlias", "TargetName":
		case "AuthMethod":
			if stage != stageSecurity {
				return nil, rejectLogin(loginInitiatorError, "AuthMethod outside the security stage")
			}
			a, err := m.chooseAuth(p.value)
			if err != nil {
				return nil, err
			}
			out = append(out, textPair{p.key, a})
		default:
			if strings.HasPrefix(p.key, "CHAP_") {
				if !inCHAP {
					// No CHAP exchange is under way, so these keys are
					// out of place (RFC 7143 12.1.3).
					return nil, errCHAP("%s without a CHAP exchange", p.key)
				}
				if err := m.chap.key(p.key, p.value); err != nil {
					return nil, err
				}
				continue
			}
			a, respond, err := m.neg.negotiate(p.key, p.value)
			if err != nil {
				return nil, rejectLogin(loginInitiatorError, "%v", err)
			}
			if respond {
				out = append(out, textPair{p.key, a})
			}
		}
	}
	if inCHAP {
		more, err := m.chap.finish()
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
		if m.chap.state == chapVerified {
			m.authDone = true
		}
	}
	return out, nil
}

// chooseAuth selects the authentication method from the initiator's list:
// CHAP when the target has credentials, None otherwise. Starting the
// exchange with AuthMethod=CHAP, the initiator's next request carries
// CHAP_A.
func (m *loginMachine) chooseAuth(list string) (string, error) {
	if m.authMethod != "" {
		return "", rejectLogin(loginInitiatorError, "AuthMethod renegotiated")
	}
	want := "None"
	if m.creds != nil {
		want = "CHAP"
	}
	for _, v := range strings.Split(list, ",") {
		if v != want {
			continue
		}
		m.authMethod = want
		if want == "None" {
			m.authDone = true
		} else {
			m.chap = chapExchange{creds: m.creds, rand: m.env.rand}
			m.chap.start()
		}
		return want, nil
	}
	if m.creds != nil {
		return "", errCHAP("target %s requires CHAP; the initiator offers AuthMethod=%s", m.target.iqn, truncString(list, 64))
	}
	return "", errCHAP("no acceptable AuthMethod in %q", truncString(list, 64))
}

// checkFirst validates the declarations the first request must carry.
func (m *loginMachine) checkFirst() error {
	if m.initiatorName == "" {
		return rejectLogin(loginMissingParam, "InitiatorName missing")
	}
	if m.discovery {
		return nil
	}
	if m.targetName == "" {
		return rejectLogin(loginMissingParam, "TargetName missing")
	}
	t, ok := m.env.lookupTarget(m.targetName)
	if !ok {
		if r, ok := m.env.lookupRedirect(m.targetName); ok {
			if !r.allows(m.initiatorName) {
				return rejectLogin(loginAuthzFailed, "initiator %s is not allowed on target %s", m.initiatorName, m.targetName)
			}
			return &loginError{status: loginMovedTemporarily, reason: fmt.Sprintf("target %s is served at %s", m.targetName, r.Addr),
				data: encodeText([]textPair{{"TargetAddress", r.Addr + ",1"}})}
		}
		return rejectLogin(loginNotFound, "target %q not found", truncString(m.targetName, 64))
	}
	cfg := t.cfg.Load()
	if !cfg.allows(m.initiatorName) {
		return rejectLogin(loginAuthzFailed, "initiator %s is not allowed on target %s", m.initiatorName, t.iqn)
	}
	m.target = t
	m.creds = cfg.CHAP
	if m.creds != nil && m.stage != stageSecurity {
		return errCHAP("target %s requires CHAP; the login skipped the security stage", t.iqn)
	}
	return nil
}

// validISCSIName accepts iqn., eui. and naa. names of printable ASCII
// without spaces, at most 223 bytes (RFC 7143 4.2.7).
func validISCSIName(s string) bool {
	if len(s) < 5 || len(s) > 223 {
		return false
	}
	// Names compare without regard to case (RFC 3722 maps them to lower
	// case), so the type prefix may come in either.
	switch strings.ToLower(s[:4]) {
	case "iqn.", "eui.", "naa.":
	default:
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}
