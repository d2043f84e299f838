package iscsi

import (
	"crypto/md5"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// CHAP holds the Challenge-Handshake Authentication Protocol credentials of
// a target (RFC 7143 12.1.3, RFC 1994). Only MD5 (CHAP_A=5) is offered.
type CHAP struct {
	// User and Secret are what the initiator authenticates with (one-way
	// CHAP): it must answer CHAP_N=User and a CHAP_R computed with Secret.
	User, Secret string
	// MutualUser and MutualSecret, if set, are what the target answers
	// with when the initiator asks it to authenticate itself (mutual CHAP).
	// An initiator that does not ask gets one-way CHAP.
	MutualUser, MutualSecret string
}

// Bounds on CHAP names and secrets. The secret minimum follows RFC 7143
// 9.2.1: a secret of fewer than 96 random bits falls to an offline
// dictionary attack on one observed exchange.
const (
	minCHAPSecret = 12
	maxCHAPSecret = 255
	maxCHAPName   = 255
	// chapChallengeLen is the length of the target's challenge in bytes:
	// twice the MD5 output, drawn from the server's random source.
	chapChallengeLen = 32
	// maxPeerChallenge bounds the initiator's challenge in mutual CHAP.
	maxPeerChallenge = 1024
	// chapMD5 is the CHAP_A value of MD5 (RFC 1994, IANA PPP auth algorithms).
	chapMD5 = "5"
)

// validate checks credentials before they are stored.
func (c *CHAP) validate() error {
	if err := checkCHAPPair("User", c.User, "Secret", c.Secret); err != nil {
		return err
	}
	if c.MutualUser == "" && c.MutualSecret == "" {
		return nil
	}
	if err := checkCHAPPair("MutualUser", c.MutualUser, "MutualSecret", c.MutualSecret); err != nil {
		return err
	}
	if c.MutualSecret == c.Secret {
		// RFC 7143 9.2.1: a secret must not serve in both directions, or
		// a peer can reflect one side's challenge to learn the other's
		// answer.
		return fmt.Errorf("CHAP MutualSecret must differ from Secret")
	}
	return nil
}

func checkCHAPPair(userField, user, secretField, secret string) error {
	if user == "" || len(user) > maxCHAPName {
		return fmt.Errorf("CHAP %s must be 1 to %d bytes", userField, maxCHAPName)
	}
	for i := 0; i < len(user); i++ {
		if user[i] < 0x20 || user[i] > 0x7e {
			return fmt.Errorf("CHAP %s %q is not printable ASCII", userField, user)
		}
	}
	if len(secret) < minCHAPSecret || len(secret) > maxCHAPSecret {
		return fmt.Errorf("CHAP %s must be %d to %d bytes", secretField, minCHAPSecret, maxCHAPSecret)
	}
	return nil
}

// chapResponse is the CHAP response of RFC 1994 4.1 with MD5: the hash of
// the identifier, the secret and the challenge, in that order.
func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	io.WriteString(h, secret)
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeBinary decodes a binary-value (RFC 7143 6.1): "0x" followed by hex
// digits (an odd count has an implied leading zero) or "0b" followed by
// base64. Decimal constants are not accepted for CHAP values.
func decodeBinary(s string) ([]byte, error) {
	if len(s) < 3 {
		return nil, fmt.Errorf("binary value %q too short", truncString(s, 16))
	}
	prefix, body := strings.ToLower(s[:2]), s[2:]
	switch prefix {
	case "0x":
		if len(body)%2 == 1 {
			body = "0" + body
		}
		b, err := hex.DecodeString(body)
		if err != nil {
			return nil, fmt.Errorf("bad hex binary value: %w", err)
		}
		return b, nil
	case "0b":
		b, err := base64.StdEncoding.DecodeString(body)
		if err != nil {
			// Accept the encoding without its trailing padding too.
			if b2, err2 := base64.RawStdEncoding.DecodeString(body); err2 == nil {
				return b2, nil
			}
			return nil, fmt.Errorf("bad base64 binary value: %w", err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("binary value %q lacks a 0x or 0b prefix", truncString(s, 16))
}

// encodeHex encodes a binary-value as a hex constant, the form every
// initiator accepts.
func encodeHex(b []byte) string { return "0x" + hex.EncodeToString(b) }

// chapState is where a CHAP exchange stands.
type chapState uint8

const (
	chapIdle      chapState = iota // AuthMethod not chosen yet
	chapAlgorithm                  // AuthMethod=CHAP chosen; waiting for CHAP_A
	chapResponseW                  // challenge sent; waiting for CHAP_N and CHAP_R
	chapVerified                   // the initiator proved its secret
)

// chapExchange is the target's side of one CHAP authentication. It does no
// I/O: the login machine feeds it the CHAP keys of each request and sends
// the answers it returns.
type chapExchange struct {
	creds     *CHAP
	rand      io.Reader
	state     chapState
	id        byte
	challenge []byte

	// keys of the request being processed
	n, r, i, c string
	seen       map[string]bool
}

// errCHAP is an authentication failure: the login ends with status 0x0201.
func errCHAP(format string, args ...any) *loginError {
	return rejectLogin(loginAuthFailed, format, args...)
}

// start begins the exchange after AuthMethod=CHAP was selected.
func (x *chapExchange) start() { x.state = chapAlgorithm }

// key records one CHAP_ key of the current request.
func (x *chapExchange) key(k, v string) error {
	if x.seen == nil {
		x.seen = make(map[string]bool)
	}
	if x.seen[k] {
		return errCHAP("%s sent twice", k)
	}
	x.seen[k] = true
	switch {
	case k == "CHAP_A" && x.state == chapAlgorithm:
		x.c = v // the algorithm list, read by finish
	case k == "CHAP_N" && x.state == chapResponseW:
		x.n = v
	case k == "CHAP_R" && x.state == chapResponseW:
		x.r = v
	case k == "CHAP_I" && x.state == chapResponseW:
		x.i = v
	case k == "CHAP_C" && x.state == chapResponseW:
		x.c = v
	default:
		return errCHAP("%s out of place in the CHAP exchange", k)
	}
	return nil
}

// finish ends the processing of one request that came after AuthMethod=CHAP
// was agreed (the CHAP keys may not share the request that agrees on it,
// RFC 7143 12.1.3) and returns the keys to answer with.
func (x *chapExchange) finish() ([]textPair, error) {
	defer func() { x.n, x.r, x.i, x.c, x.seen = "", "", "", "", nil }()
	switch x.state {
	case chapAlgorithm:
		if !x.seen["CHAP_A"] {
			return nil, errCHAP("CHAP selected but no CHAP_A offered")
		}
		found := false
		for _, a := range strings.Split(x.c, ",") {
			if a == chapMD5 {
				found = true
			}
		}
		if !found {
			return nil, errCHAP("no supported CHAP algorithm in CHAP_A=%q (only MD5, 5)", truncString(x.c, 64))
		}
		var buf [1 + chapChallengeLen]byte
		if _, err := io.ReadFull(x.rand, buf[:]); err != nil {
			return nil, rejectLogin(loginTargetError, "random source: %v", err)
		}
		x.id, x.challenge = buf[0], buf[1:]
		x.state = chapResponseW
		return []textPair{
			{"CHAP_A", chapMD5},
			{"CHAP_I", strconv.Itoa(int(x.id))},
			{"CHAP_C", encodeHex(x.challenge)},
		}, nil
	case chapResponseW:
		return x.verify()
	}
	return nil, nil
}

// verify checks the initiator's CHAP_N and CHAP_R and, when it sent
// CHAP_I and CHAP_C, answers its challenge.
func (x *chapExchange) verify() ([]textPair, error) {
	if !x.seen["CHAP_N"] || !x.seen["CHAP_R"] {
		return nil, errCHAP("CHAP_N and CHAP_R missing after the challenge")
	}
	resp, err := decodeBinary(x.r)
	if err != nil {
		return nil, errCHAP("CHAP_R: %v", err)
	}
	want := chapResponse(x.id, x.creds.Secret, x.challenge)
	nameOK := subtle.ConstantTimeCompare([]byte(x.n), []byte(x.creds.User))
	respOK := subtle.ConstantTimeCompare(resp, want)
	if nameOK&respOK != 1 {
		return nil, errCHAP("CHAP name or response does not match")
	}
	x.state = chapVerified
	ours := x.challenge
	x.challenge = nil // single use

	if !x.seen["CHAP_I"] && !x.seen["CHAP_C"] {
		return nil, nil
	}
	if !x.seen["CHAP_I"] || !x.seen["CHAP_C"] {
		return nil, errCHAP("mutual CHAP needs both CHAP_I and CHAP_C")
	}
	if x.creds.MutualUser == "" {
		return nil, errCHAP("initiator asks for mutual CHAP, but the target has no mutual secret")
	}
	id, err := strconv.ParseUint(x.i, 10, 8)
	if err != nil {
		return nil, errCHAP("CHAP_I %q: want 0 to 255", truncString(x.i, 16))
	}
	ch, err := decodeBinary(x.c)
	if err != nil {
		return nil, errCHAP("CHAP_C: %v", err)
	}
	if len(ch) == 0 || len(ch) > maxPeerChallenge {
		return nil, errCHAP("CHAP_C of %d bytes", len(ch))
	}
	if subtle.ConstantTimeCompare(ch, ours) == 1 {
		// A reflection: the initiator hands the target its own challenge
		// to obtain the answer it was asked for (RFC 7143 12.1.3).
		return nil, errCHAP("CHAP_C repeats the target's challenge")
	}
	return []textPair{
		{"CHAP_N", x.creds.MutualUser},
		{"CHAP_R", encodeHex(chapResponse(byte(id), x.creds.MutualSecret, ch))},
	}, nil
}
