package iscsi

import (
	"errors"
	"fmt"
	"strings"
)

// Login status (Status-Class << 8 | Status-Detail), RFC 7143 11.13.5.
const (
	loginSuccess            = 0x0000
	loginInitiatorError     = 0x0200
	loginAuthFailed         = 0x0201
	loginNotFound           = 0x0203
	loginTargetRemoved      = 0x0204
	loginUnsupportedVersion = 0x0205
	loginCantInclude        = 0x0208
	loginSessionNotExist    = 0x020a
	loginMissingParam       = 0x0207
	loginSessionType        = 0x0209
	loginOutOfResources     = 0x0302
)

// loginError is a login that ends with a Login Reject status.
type loginError struct {
	status uint16
	reason string
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
	lookupTarget  func(name string) (*target, bool)
	sessionExists func(tsih uint16) bool
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
	sentMRDSL  bool
	sentTPGT   bool

	initiatorName  string
	initiatorAlias string
	targetName     string
	target         *target
	discovery      bool
}

func newLoginMachine(ours sessionParams, depth uint32, env loginEnv) *loginMachine {
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
		return resp, nil, loginFailed, err
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
	first := m.initiatorName == ""
	answers, err := m.answer(pairs, req.CSG)
	if err != nil {
		return nil, 0, err
	}
	if first {
		if err := m.checkFirst(); err != nil {
			return nil, 0, err
		}
		if !m.discovery && !m.sentTPGT {
			answers = append(answers, textPair{"TargetPortalGroupTag", "1"})
			m.sentTPGT = true
		}
	}
	if req.CSG == stageOperational && !m.sentMRDSL {
		answers = append(answers, textPair{"MaxRecvDataSegmentLength", fmt.Sprint(m.neg.ours.TargetRecvDSL)})
		m.sentMRDSL = true
	}
	if req.CSG == stageSecurity && m.authMethod == "" {
		// No AuthMethod offered: the default is None (RFC 7143 13.17),
		// which this target accepts while no CHAP secret is configured.
		m.authDone = true
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
				step = loginDone
			}
		}
	}
	return respData, step, nil
}

// answer processes the keys of one complete request.
func (m *loginMachine) answer(pairs []textPair, stage uint8) ([]textPair, error) {
	// SessionType decides which keys are relevant, so read it first.
	for _, p := range pairs {
		if p.key == "SessionType" {
			switch p.value {
			case "Normal":
				m.discovery = false
			case "Discovery":
				m.discovery = true
			default:
				return nil, rejectLogin(loginSessionType, "session type %q", p.value)
			}
			m.neg.discovery = m.discovery
		}
	}
	var out []textPair
	for _, p := range pairs {
		switch p.key {
		case "SessionType":
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
				// No CHAP exchange was selected, so these keys are out of
				// place (RFC 7143 12.1.3).
				return nil, rejectLogin(loginAuthFailed, "%s without CHAP", p.key)
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
	return out, nil
}

// chooseAuth selects the authentication method from the initiator's list.
// Without a configured secret only None is acceptable.
func (m *loginMachine) chooseAuth(list string) (string, error) {
	if m.authMethod != "" {
		return "", rejectLogin(loginInitiatorError, "AuthMethod renegotiated")
	}
	for _, v := range strings.Split(list, ",") {
		if v == "None" {
			m.authMethod = "None"
			m.authDone = true
			return "None", nil
		}
	}
	return "", rejectLogin(loginAuthFailed, "no acceptable AuthMethod in %q", truncString(list, 64))
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
		return rejectLogin(loginNotFound, "target %q not found", truncString(m.targetName, 64))
	}
	m.target = t
	return nil
}

// validISCSIName accepts iqn., eui. and naa. names of printable ASCII
// without spaces, at most 223 bytes (RFC 7143 4.2.7).
func validISCSIName(s string) bool {
	if len(s) < 5 || len(s) > 223 {
		return false
	}
	if !strings.HasPrefix(s, "iqn.") && !strings.HasPrefix(s, "eui.") && !strings.HasPrefix(s, "naa.") {
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
