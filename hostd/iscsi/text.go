package iscsi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Limits on text data (RFC 7143 6.1 and 6.6).
const (
	maxKeyLen   = 63
	maxValueLen = 8192
	maxTextLen  = 64 << 10 // one request's text, across continuation PDUs
)

// Special values of the text negotiation.
const (
	valNotUnderstood = "NotUnderstood"
	valIrrelevant    = "Irrelevant"
	valReject        = "Reject"
)

// textPair is one key=value item of a text data segment.
type textPair struct{ key, value string }

// parseText splits a text data segment into key=value pairs. Every pair is
// NUL-terminated; empty items between NULs are tolerated. A key must follow
// RFC 7143 6.1: letters, digits and . - + @ _, at most 63 bytes.
func parseText(b []byte) ([]textPair, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if b[len(b)-1] != 0 {
		return nil, fmt.Errorf("%w: text not NUL-terminated", ErrProtocol)
	}
	var pairs []textPair
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		item := b[:i]
		b = b[i+1:]
		if len(item) == 0 {
			continue
		}
		eq := bytes.IndexByte(item, '=')
		if eq < 0 {
			return nil, fmt.Errorf("%w: text item %q without '='", ErrProtocol, truncString(string(item), 64))
		}
		key, value := string(item[:eq]), string(item[eq+1:])
		if !validKey(key) {
			return nil, fmt.Errorf("%w: invalid key %q", ErrProtocol, truncString(key, 64))
		}
		if len(value) > maxValueLen {
			return nil, fmt.Errorf("%w: value of %s is %d bytes", ErrProtocol, key, len(value))
		}
		pairs = append(pairs, textPair{key, value})
	}
	return pairs, nil
}

func validKey(k string) bool {
	if k == "" || len(k) > maxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '-', c == '+', c == '@', c == '_', c == '#':
		default:
			return false
		}
	}
	return true
}

func truncString(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// encodeText serialises pairs, each NUL-terminated.
func encodeText(pairs []textPair) []byte {
	n := 0
	for _, p := range pairs {
		n += len(p.key) + len(p.value) + 2
	}
	b := make([]byte, 0, n)
	for _, p := range pairs {
		b = append(b, p.key...)
		b = append(b, '=')
		b = append(b, p.value...)
		b = append(b, 0)
	}
	return b
}

// sessionParams are the operational parameters of a session. Before
// negotiation they hold the RFC 7143 defaults.
type sessionParams struct {
	// InitiatorRecvDSL is the initiator's MaxRecvDataSegmentLength: the
	// largest data segment the target may send.
	InitiatorRecvDSL uint32
	// TargetRecvDSL is the target's MaxRecvDataSegmentLength: the largest
	// data segment the initiator may send.
	TargetRecvDSL       uint32
	MaxBurstLength      uint32
	FirstBurstLength    uint32
	InitialR2T          bool
	ImmediateData       bool
	MaxOutstandingR2T   uint32
	DataPDUInOrder      bool
	DataSequenceInOrder bool
	DefaultTime2Wait    uint32
	DefaultTime2Retain  uint32
	ErrorRecoveryLevel  uint32
	MaxConnections      uint32
	// HeaderDigest and DataDigest are true for CRC32C, false for None. In
	// the target's own values they mean that None is not allowed.
	HeaderDigest bool
	DataDigest   bool
}

func defaultParams() sessionParams {
	return sessionParams{
		InitiatorRecvDSL:    8192,
		TargetRecvDSL:       8192,
		MaxBurstLength:      262144,
		FirstBurstLength:    65536,
		InitialR2T:          true,
		ImmediateData:       true,
		MaxOutstandingR2T:   1,
		DataPDUInOrder:      true,
		DataSequenceInOrder: true,
		DefaultTime2Wait:    2,
		DefaultTime2Retain:  20,
		ErrorRecoveryLevel:  0,
		MaxConnections:      1,
	}
}

// keyKind is the negotiation rule of a key (RFC 7143 6.2).
type keyKind uint8

const (
	kindBoolOr   keyKind = iota // result is Yes if either side says Yes
	kindBoolAnd                 // result is Yes only if both sides say Yes
	kindNumMin                  // result is the smaller value
	kindNumMax                  // result is the larger value
	kindDeclared                // declarative: each side states its own value
	kindDigest                  // list: first offered value the target supports (None or CRC32C)
	kindMarker                  // obsolete marker keys: answered No
	kindReject                  // obsolete marker intervals: answered Reject
)

// keyDef describes one operational key.
type keyDef struct {
	kind keyKind
	lo   uint64
	hi   uint64
	// irrelevantInDiscovery keys are answered Irrelevant in a discovery
	// session (RFC 7143 13.10-13.19).
	irrelevantInDiscovery bool
	num                   func(p *sessionParams) *uint32
	flag                  func(p *sessionParams) *bool
}

const maxDSL = 1<<24 - 1

var operationalKeys = map[string]keyDef{
	"HeaderDigest":             {kind: kindDigest, flag: func(p *sessionParams) *bool { return &p.HeaderDigest }},
	"DataDigest":               {kind: kindDigest, flag: func(p *sessionParams) *bool { return &p.DataDigest }},
	"MaxConnections":           {kind: kindNumMin, lo: 1, hi: 65535, num: func(p *sessionParams) *uint32 { return &p.MaxConnections }},
	"InitialR2T":               {kind: kindBoolOr, irrelevantInDiscovery: true, flag: func(p *sessionParams) *bool { return &p.InitialR2T }},
	"ImmediateData":            {kind: kindBoolAnd, irrelevantInDiscovery: true, flag: func(p *sessionParams) *bool { return &p.ImmediateData }},
	"MaxRecvDataSegmentLength": {kind: kindDeclared, lo: 512, hi: maxDSL, num: func(p *sessionParams) *uint32 { return &p.InitiatorRecvDSL }},
	"MaxBurstLength":           {kind: kindNumMin, lo: 512, hi: maxDSL, irrelevantInDiscovery: true, num: func(p *sessionParams) *uint32 { return &p.MaxBurstLength }},
	"FirstBurstLength":         {kind: kindNumMin, lo: 512, hi: maxDSL, irrelevantInDiscovery: true, num: func(p *sessionParams) *uint32 { return &p.FirstBurstLength }},
	"DefaultTime2Wait":         {kind: kindNumMax, lo: 0, hi: 3600, num: func(p *sessionParams) *uint32 { return &p.DefaultTime2Wait }},
	"DefaultTime2Retain":       {kind: kindNumMin, lo: 0, hi: 3600, num: func(p *sessionParams) *uint32 { return &p.DefaultTime2Retain }},
	"MaxOutstandingR2T":        {kind: kindNumMin, lo: 1, hi: 65535, irrelevantInDiscovery: true, num: func(p *sessionParams) *uint32 { return &p.MaxOutstandingR2T }},
	"DataPDUInOrder":           {kind: kindBoolOr, irrelevantInDiscovery: true, flag: func(p *sessionParams) *bool { return &p.DataPDUInOrder }},
	"DataSequenceInOrder":      {kind: kindBoolOr, irrelevantInDiscovery: true, flag: func(p *sessionParams) *bool { return &p.DataSequenceInOrder }},
	"ErrorRecoveryLevel":       {kind: kindNumMin, lo: 0, hi: 2, num: func(p *sessionParams) *uint32 { return &p.ErrorRecoveryLevel }},
	"IFMarker":                 {kind: kindMarker},
	"OFMarker":                 {kind: kindMarker},
	"IFMarkInt":                {kind: kindReject},
	"OFMarkInt":                {kind: kindReject},
}

// negotiator answers the operational keys of one login. It is a pure state
// machine: keys in, answers out, no I/O.
type negotiator struct {
	ours      sessionParams // the target's preferred values
	params    sessionParams // values in force: defaults, then negotiated results
	discovery bool
	seen      map[string]bool
}

func newNegotiator(ours sessionParams) *negotiator {
	p := defaultParams()
	p.TargetRecvDSL = ours.TargetRecvDSL
	return &negotiator{ours: ours, params: p, seen: make(map[string]bool)}
}

// errRenegotiated is returned when the initiator offers a key twice in one
// login, which RFC 7143 6.3 makes a login failure.
var errRenegotiated = fmt.Errorf("%w: key negotiated twice", ErrProtocol)

// negotiate answers one operational key offered by the initiator. respond is
// false for declarations that need no answer. Keys this target does not know
// are answered NotUnderstood; malformed or out-of-range values Reject.
func (n *negotiator) negotiate(key, value string) (answer string, respond bool, err error) {
	switch value {
	case valNotUnderstood, valIrrelevant, valReject:
		// An answer to an offer the target never makes; nothing to do.
		return "", false, nil
	}
	def, known := operationalKeys[key]
	if !known {
		switch key {
		case "TaskReporting":
			return "RFC3720", true, n.mark(key)
		case "iSCSIProtocolLevel":
			v, ok := parseNumber(value)
			if !ok || v > 31 {
				return valReject, true, n.mark(key)
			}
			return strconv.FormatUint(min(v, 1), 10), true, n.mark(key)
		case "RDMAExtensions":
			return "No", true, n.mark(key)
		case "InitiatorRecvDataSegmentLength", "TargetRecvDataSegmentLength":
			return valIrrelevant, true, n.mark(key)
		case "TargetAlias", "TargetAddress", "TargetPortalGroupTag":
			// Declared by targets only; an initiator's value is ignored.
			return "", false, nil
		case "SendTargets":
			return valIrrelevant, true, nil
		}
		return valNotUnderstood, true, nil
	}
	if err := n.mark(key); err != nil {
		return "", false, err
	}
	if n.discovery && def.irrelevantInDiscovery {
		return valIrrelevant, true, nil
	}
	switch def.kind {
	case kindDigest:
		// The initiator lists the values in its order of preference; the
		// answer is the first one the target supports and may use (RFC
		// 7143 6.2): None is not allowed in a normal session of a
		// target that requires the digest.
		required := *def.flag(&n.ours) && !n.discovery
		for _, v := range strings.Split(value, ",") {
			switch {
			case v == "CRC32C", v == "None" && !required:
				*def.flag(&n.params) = v == "CRC32C"
				return v, true, nil
			}
		}
		return valReject, true, nil
	case kindMarker:
		return "No", true, nil
	case kindReject:
		return valReject, true, nil
	case kindBoolOr, kindBoolAnd:
		var theirs bool
		switch value {
		case "Yes":
			theirs = true
		case "No":
		default:
			return valReject, true, nil
		}
		ours := *def.flag(&n.ours)
		res := theirs || ours
		if def.kind == kindBoolAnd {
			res = theirs && ours
		}
		*def.flag(&n.params) = res
		return yesNo(res), true, nil
	case kindNumMin, kindNumMax, kindDeclared:
		v, ok := parseNumber(value)
		if !ok || v < def.lo || v > def.hi {
			return valReject, true, nil
		}
		if def.kind == kindDeclared {
			*def.num(&n.params) = uint32(v)
			return "", false, nil
		}
		ours := uint64(*def.num(&n.ours))
		res := min(v, ours)
		if def.kind == kindNumMax {
			res = max(v, ours)
		}
		*def.num(&n.params) = uint32(res)
		return strconv.FormatUint(res, 10), true, nil
	}
	return valNotUnderstood, true, nil
}

func (n *negotiator) mark(key string) error {
	if n.seen[key] {
		return fmt.Errorf("%w: %s", errRenegotiated, key)
	}
	n.seen[key] = true
	return nil
}

// missingDigest names a digest the target requires that the login did
// not put in force, or returns "".
func (n *negotiator) missingDigest() string {
	switch {
	case n.discovery:
	case n.ours.HeaderDigest && !n.params.HeaderDigest:
		return "HeaderDigest"
	case n.ours.DataDigest && !n.params.DataDigest:
		return "DataDigest"
	}
	return ""
}

// final returns the parameters in force after the login, with the
// constraints between keys applied (FirstBurstLength <= MaxBurstLength).
func (n *negotiator) final() sessionParams {
	p := n.params
	if p.FirstBurstLength > p.MaxBurstLength {
		p.FirstBurstLength = p.MaxBurstLength
	}
	return p
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// parseNumber parses a numerical-value: decimal or 0x-prefixed hexadecimal.
func parseNumber(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	base := 10
	if len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		s, base = s[2:], 16
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		isDigit := c >= '0' && c <= '9'
		isHex := base == 16 && (c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F')
		if !isDigit && !isHex {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, base, 64)
	return v, err == nil
}
