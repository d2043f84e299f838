package iscsi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

// pduBytes encodes a PDU with its data segment and padding.
func pduBytes(m pduMessage, data []byte) []byte {
	var h header
	m.marshal(&h)
	h.setDataLength(len(data))
	b := append(h[:], data...)
	return append(b, zeroPad[:padLen(len(data))]...)
}

func FuzzPDU(f *testing.F) {
	f.Add(pduBytes(&loginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1}, encodeText(normalDecl)))
	f.Add(pduBytes(&scsiCommand{Final: true, Write: true, EDTL: 512, CDB: [16]byte{0x2a, 0, 0, 0, 0, 1, 0, 0, 1}}, make([]byte, 512)))
	f.Add(pduBytes(&dataOut{Final: true, ITT: 3, TTT: 4, BufferOffset: 512}, []byte("data")))
	f.Add(pduBytes(&textRequest{Final: true, TTT: reservedTag}, encodeText([]textPair{{"SendTargets", "All"}})))
	f.Add(pduBytes(&scsiResponse{Status: 2}, []byte{0, 18, 0x70, 0, 5}))
	ext := pduBytes(&scsiCommand{Final: true, CDB: [16]byte{0x7f}}, nil)
	ext[4] = 5 // 20 bytes of AHS follow
	ext = append(ext[:bhsLen], append([]byte{0, 17, 1, 0}, make([]byte, 16)...)...)
	f.Add(ext)
	// The first byte of the input chooses the digests in force (bit 0
	// header, bit 1 data), so that the digest decoders are fuzzed too.
	for _, seed := range [][]byte{
		pduBytes(&scsiCommand{Final: true, Write: true, EDTL: 512, CDB: [16]byte{0x2a, 0, 0, 0, 0, 1, 0, 0, 1}}, make([]byte, 512)),
		pduBytes(&dataOut{Final: true, ITT: 3, TTT: 4, BufferOffset: 512}, []byte("data")),
		pduBytes(&nopOut{Immediate: true, ITT: 1, TTT: reservedTag}, nil),
	} {
		for dg := range byte(4) {
			f.Add(append([]byte{0xd0 | dg}, pduDigestBytes(digestsOf(dg), seed)...))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 0 && b[0]&0xf0 == 0xd0 {
			fuzzDigestPDUs(t, digestsOf(b[0]), b[1:])
			return
		}
		for len(b) > 0 {
			d, rest, err := decodePDU(b, 8192)
			if err != nil {
				return
			}
			if len(rest) >= len(b) {
				t.Fatalf("decodePDU consumed nothing")
			}
			b = rest
			if m, ok := d.msg.(pduMessage); ok {
				var h header
				m.marshal(&h)
				again := reflect.New(reflect.TypeOf(m).Elem()).Interface().(pduMessage)
				again.unmarshal(&h)
				if !reflect.DeepEqual(again, m) {
					t.Fatalf("re-encoding changed the message:\n%+v\n%+v", m, again)
				}
			}
			if d.op == opLoginReq || d.op == opTextReq {
				_, _ = parseText(d.data)
			}
		}
	})
}

func digestsOf(b byte) digests { return digests{header: b&1 != 0, data: b&2 != 0} }

// pduDigestBytes reframes the digest-less PDUs in b with the digests dg.
func pduDigestBytes(dg digests, b []byte) []byte {
	var out []byte
	for len(b) > 0 {
		var h header
		copy(h[:], b)
		ahs := b[bhsLen : bhsLen+h.ahsLength()]
		n := h.dataLength()
		data := b[bhsLen+len(ahs) : bhsLen+len(ahs)+n]
		out = dg.appendPDU(out, &h, ahs, data)
		b = b[bhsLen+len(ahs)+n+padLen(n):]
	}
	return out
}

// fuzzDigestPDUs decodes PDUs framed with digests, with the slice decoder
// and the stream decoder, which must agree; a PDU that decodes must
// encode to the same bytes.
func fuzzDigestPDUs(t *testing.T, dg digests, b []byte) {
	br := bufio.NewReader(bytes.NewReader(b))
	ahsBuf := make([]byte, maxAHSLen)
	for len(b) > 0 {
		d, rest, err := dg.decodePDU(b, 8192)
		var h header
		ahs, n, serr := dg.readHeader(br, &h, ahsBuf, 8192)
		if serr == nil {
			data := make([]byte, n)
			serr = dg.readData(br, data, n)
			if serr == nil && err == nil && !bytes.Equal(data, d.data) {
				t.Fatalf("stream decoder read %q, slice decoder %q", data, d.data)
			}
		}
		if errors.Is(err, ErrDataDigest) != errors.Is(serr, ErrDataDigest) || errors.Is(err, ErrHeaderDigest) != errors.Is(serr, ErrHeaderDigest) {
			t.Fatalf("decoders disagree: slice %v, stream %v", err, serr)
		}
		if err != nil && !errors.Is(err, ErrDataDigest) {
			return
		}
		if len(rest) >= len(b) {
			t.Fatalf("decodePDU consumed nothing")
		}
		if err == nil {
			// Padding may hold anything on the wire; header, AHS and
			// header digest must come out as they went in.
			hlen := bhsLen + len(ahs)
			if dg.header {
				hlen += 4
			}
			if re := dg.appendPDU(nil, &h, ahs, d.data); !bytes.Equal(re[:hlen], b[:hlen]) {
				t.Fatalf("re-encoding changed the header:\n%x\n%x", b[:hlen], re[:hlen])
			}
		}
		b = rest
	}
}

// FuzzCDB runs arbitrary CDBs and Data-Out through the SCSI layer.
func FuzzCDB(f *testing.F) {
	for _, cdb := range [][]byte{
		cdbRead10(0, 1), cdbWrite10(1, 1, true), {0x12, 1, 0x83, 0, 255, 0}, {0x1a, 0, 0x3f, 0, 255, 0},
		{0x5a, 0x10, 0x3f, 0xff, 0, 0, 0, 1, 0, 0}, {0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0},
		{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, {0x2f, 0x06, 0, 0, 0, 1, 0, 0, 4, 0}, cdb16(0x88, 1, 1),
		{0x03, 1, 0, 0, 252, 0}, {0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0},
		{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0}, {0x41, 0, 0, 0, 0, 0, 0, 0, 2, 0},
		{0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0}, {0x5e, 0x03, 0, 0, 0, 0, 0, 0x10, 0, 0},
		{0x15, 0x10, 0, 0, 24, 0}, {0x55, 0x10, 0, 0, 0, 0, 0, 0, 24, 0}, {0x16, 0, 0, 0, 0, 0},
		{0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0}, {0x2e, 0x02, 0, 0, 0, 1, 0, 0, 1, 0},
		// Thin provisioning: UNMAP, GET LBA STATUS, WRITE SAME with UNMAP,
		// NDOB and zero blocks.
		cdbUnmap(24), cdbGetLBAStatus(3, 64), {0x41, 0x08, 0, 0, 0, 0, 0, 0, 4, 0},
		{0x93, 0x09, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0}, {0x41, 0, 0, 0, 0, 0x40, 0, 0, 0, 0},
	} {
		f.Add(cdb, []byte{1, 2, 3})
	}
	f.Add(cdbUnmap(40), unmapList(unmapRange{2, 3}, unmapRange{100, 1}))
	thick := newLogicalUnit(newMemBackend(64<<10), 512, 1<<20, 1<<20, "fuzz", testIQN)
	thin := newLogicalUnit(newThinBackend(64<<10), 512, 1<<20, 1<<20, "fuzz-thin", testIQN)
	f.Fuzz(func(t *testing.T, cdb, out []byte) {
		for _, v := range []struct {
			lu    *logicalUnit
			lunOK bool
		}{{thick, true}, {thick, false}, {thin, true}} {
			lu, lunOK := v.lu, v.lunOK
			c, s := lu.decodeCDB(cdb, lunOK, uint32(len(out)))
			if s != nil {
				_ = s.marshal()
				continue
			}
			c.nexus = "iqn.fuzz,i,0x000000000001"
			o := out
			if uint32(len(o)) > c.outLen {
				o = o[:c.outLen]
			}
			var in []byte
			if c.inLen > 0 {
				in = make([]byte, c.inLen)
			}
			r := lu.execute(context.Background(), c, o, in)
			if r.status == statusGood && c.dir != dirIn && len(r.data) > 0 {
				t.Fatalf("command without Data-In returned %d bytes", len(r.data))
			}
			if c.alloc > 0 && uint32(len(r.data)) > c.alloc {
				t.Fatalf("%d bytes returned for allocation length %d", len(r.data), c.alloc)
			}
		}
	})
}

// chapFuzzIQN is the target FuzzLogin serves with CHAP and an allowlist.
const chapFuzzIQN = "iqn.2026-11.io.chunkraid:chap"

// FuzzLogin feeds arbitrary bytes to a connection served over net.Pipe:
// the connection must neither panic nor hang.
func FuzzLogin(f *testing.F) {
	login := pduBytes(&loginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1, CmdSN: 1}, encodeText(withText(normalDecl, textPair{"MaxRecvDataSegmentLength", "4096"})))
	f.Add(login)
	sec := pduBytes(&loginRequest{Transit: true, CSG: 0, NSG: 1, ITT: 1, CmdSN: 1}, encodeText(withText(normalDecl, textPair{"AuthMethod", "None"})))
	f.Add(append(sec, pduBytes(&loginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1, CmdSN: 1}, nil)...))
	session := bytes.Clone(login)
	session = append(session, pduBytes(&scsiCommand{Final: true, Read: true, ITT: 2, EDTL: 512, CmdSN: 1, CDB: [16]byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1}}, nil)...)
	session = append(session, pduBytes(&scsiCommand{Write: true, ITT: 3, EDTL: 2048, CmdSN: 2, CDB: [16]byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 4}}, make([]byte, 512))...)
	session = append(session, pduBytes(&dataOut{ITT: 3, TTT: reservedTag, BufferOffset: 512, DataSN: 0}, make([]byte, 512))...)
	session = append(session, pduBytes(&nopOut{Immediate: true, ITT: 4, TTT: reservedTag, CmdSN: 3}, []byte("ping"))...)
	session = append(session, pduBytes(&textRequest{Immediate: true, Final: true, ITT: 5, TTT: reservedTag, CmdSN: 3}, encodeText([]textPair{{"SendTargets", "All"}}))...)
	session = append(session, pduBytes(&taskMgmtRequest{Immediate: true, Function: tmfAbortTask, ITT: 6, RefTaskTag: 3, CmdSN: 3}, nil)...)
	session = append(session, pduBytes(&logoutRequest{Immediate: true, ITT: 7, CmdSN: 3}, nil)...)
	f.Add(session)
	// The same session with both digests negotiated: every PDU after the
	// login carries them. Two copies break them: in one the ping's data
	// fails its data digest, in the other the logout its header digest.
	dgLogin := pduBytes(&loginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1, CmdSN: 1}, encodeText(withText(normalDecl,
		textPair{"MaxRecvDataSegmentLength", "4096"}, textPair{"HeaderDigest", "CRC32C"}, textPair{"DataDigest", "CRC32C,None"})))
	dgSession := append(bytes.Clone(dgLogin), pduDigestBytes(digests{header: true, data: true}, session[len(login):])...)
	f.Add(dgSession)
	badData := bytes.Clone(dgSession)
	badData[bytes.Index(badData, []byte("ping"))] ^= 1
	f.Add(badData)
	badHeader := bytes.Clone(dgSession)
	badHeader[len(badHeader)-1] ^= 1
	f.Add(badHeader)
	disc := pduBytes(&loginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1}, encodeText([]textPair{{"InitiatorName", "iqn.2026-01.test:i"}, {"SessionType", "Discovery"}}))
	f.Add(append(disc, pduBytes(&textRequest{Final: true, ITT: 2, TTT: reservedTag}, encodeText([]textPair{{"SendTargets", "All"}}))...))

	// A CHAP exchange with the target that requires it: AuthMethod, CHAP_A,
	// then a response (wrong, since the challenge is random).
	chapDecl := []textPair{{"InitiatorName", initiatorIQN}, {"TargetName", chapFuzzIQN}, {"SessionType", "Normal"}}
	chap := pduBytes(&loginRequest{Transit: true, CSG: 0, NSG: 1, ITT: 1}, encodeText(withText(chapDecl, textPair{"AuthMethod", "CHAP,None"})))
	chap = append(chap, pduBytes(&loginRequest{CSG: 0, NSG: 1, ITT: 1}, encodeText([]textPair{{"CHAP_A", "5"}}))...)
	chap = append(chap, pduBytes(&loginRequest{Transit: true, CSG: 0, NSG: 1, ITT: 1}, encodeText([]textPair{
		{"CHAP_N", "alice"}, {"CHAP_R", "0x0123456789abcdef0123456789abcdef"}, {"CHAP_I", "7"}, {"CHAP_C", "0b" + strings.Repeat("QUJD", 8)}}))...)
	f.Add(chap)
	f.Add(pduBytes(&loginRequest{Transit: true, CSG: 1, NSG: 3, ITT: 1}, encodeText(withText(chapDecl, textPair{"InitiatorName", intruderIQN}))))

	srv, err := New(Config{LoginTimeout: 2 * time.Second, QueueDepth: 8, MaxTransferLength: 64 << 10, SessionBufferBytes: 256 << 10})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.AddTarget(testIQN, newMemBackend(256<<10), "fuzz"); err != nil {
		f.Fatal(err)
	}
	creds := testCHAP
	if err := srv.AddTargetWith(chapFuzzIQN, newMemBackend(256<<10), TargetConfig{Serial: "fuzz-chap", CHAP: &creds, AllowedInitiators: []string{initiatorIQN}}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		client, server := net.Pipe()
		c := newConn(srv, server)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.serve(context.Background())
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = client.Write(b)
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection did not end after its input was closed")
		}
	})
}

// loginScript encodes login requests for FuzzLoginMachine: per request a
// flags byte (T, C, CSG, NSG as in the BHS byte 1), a 2-byte text length
// and the text.
func loginScript(reqs ...struct {
	flags byte
	text  []textPair
}) []byte {
	var b []byte
	for _, r := range reqs {
		t := encodeText(r.text)
		b = append(b, r.flags, byte(len(t)>>8), byte(len(t)))
		b = append(b, t...)
	}
	return b
}

// FuzzLoginMachine runs scripts of login requests through the login state
// machine of a target that requires CHAP and has an allowlist. Whatever
// the requests, it must not panic, and a login may only complete after
// the initiator proved the CHAP secret from an allowed initiator name.
func FuzzLoginMachine(f *testing.F) {
	type req = struct {
		flags byte
		text  []textPair
	}
	const (
		secToOpFlags = 0x80 | stageSecurity<<2 | stageOperational
		secStayFlags = stageSecurity<<2 | stageOperational
		opToFFPFlags = 0x80 | stageOperational<<2 | stageFullFeature
	)
	decl := withText(normalDecl, textPair{"InitiatorName", initiatorIQN})[1:]
	f.Add(loginScript(
		req{secToOpFlags, withText(decl, textPair{"AuthMethod", "CHAP,None"})},
		req{secStayFlags, []textPair{{"CHAP_A", "5"}}},
		req{secToOpFlags, []textPair{{"CHAP_N", "alice"}, {"CHAP_R", "0x00112233445566778899aabbccddeeff"}}},
		req{opToFFPFlags, []textPair{{"MaxBurstLength", "65536"}}},
	))
	f.Add(loginScript(req{opToFFPFlags, decl}))
	f.Add(loginScript(req{opToFFPFlags, []textPair{{"InitiatorName", initiatorIQN}, {"TargetName", testIQN + "-moved"}}}))
	f.Add(loginScript(req{secToOpFlags, withText(decl, textPair{"AuthMethod", "None"})}))
	f.Add(loginScript(
		req{secToOpFlags, withText(decl, textPair{"AuthMethod", "CHAP"})},
		req{secStayFlags, []textPair{{"CHAP_A", "5,7"}}},
		req{secToOpFlags, []textPair{{"CHAP_N", "alice"}, {"CHAP_R", "0bABCD"}, {"CHAP_I", "1"}, {"CHAP_C", "0x0102"}}},
	))
	f.Fuzz(func(t *testing.T, script []byte) {
		creds := testCHAP
		cfg := TargetConfig{Serial: "s", CHAP: &creds, AllowedInitiators: []string{initiatorIQN}}
		m := testLoginMachineWith(cfg, bytes.NewReader(bytes.Repeat([]byte{0x42}, 1<<12)))
		for len(script) >= 3 {
			flags := script[0]
			n := int(script[1])<<8 | int(script[2])
			script = script[3:]
			n = min(n, len(script))
			text := script[:n]
			script = script[n:]
			r := loginRequest{Transit: flags&0x80 != 0, Continue: flags&0x40 != 0, CSG: flags >> 2 & 3, NSG: flags & 3, ISID: [6]byte{0x80, 0, 0, 0, 0, 1}}
			_, _, st, err := m.step(&r, text)
			if st == loginFailed {
				if err == nil {
					t.Fatal("login failed without an error")
				}
				return
			}
			if st == loginDone {
				if !m.discovery && (m.chap.state != chapVerified || !strings.EqualFold(m.initiatorName, initiatorIQN)) {
					t.Fatalf("login completed without CHAP (state %d) or from %q", m.chap.state, m.initiatorName)
				}
				return
			}
		}
	})
}
