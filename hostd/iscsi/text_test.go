package iscsi

import (
	"errors"
	"reflect"
	"testing"
)

func TestParseText(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []textPair
		err  bool
	}{
		{"empty", "", nil, false},
		{"one", "A=b\x00", []textPair{{"A", "b"}}, false},
		{"several and empty items", "A=b\x00\x00C=\x00D=x=y\x00", []textPair{{"A", "b"}, {"C", ""}, {"D", "x=y"}}, false},
		{"not terminated", "A=b", nil, true},
		{"no equals", "Ab\x00", nil, true},
		{"bad key char", "A b=c\x00", nil, true},
		{"empty key", "=c\x00", nil, true},
		{"long key", string(make([]byte, 64)) + "=1\x00", nil, true},
		{"vendor key", "X-com.example.Thing=1\x00X#a=2\x00", []textPair{{"X-com.example.Thing", "1"}, {"X#a", "2"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseText([]byte(tc.in))
			if tc.err {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("err = %v, want ErrProtocol", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
			if len(got) > 0 {
				back, err := parseText(encodeText(got))
				if err != nil || !reflect.DeepEqual(back, got) {
					t.Fatalf("encode/parse round trip: %v %v", back, err)
				}
			}
		})
	}
}

func TestNegotiate(t *testing.T) {
	ours := sessionParams{
		TargetRecvDSL: 262144, MaxBurstLength: 1 << 20, FirstBurstLength: 256 << 10,
		InitialR2T: false, ImmediateData: true, MaxOutstandingR2T: 8,
		DataPDUInOrder: true, DataSequenceInOrder: true, DefaultTime2Wait: 2, DefaultTime2Retain: 20,
		MaxConnections: 1,
	}
	tests := []struct {
		key, value string
		answer     string // "" means no answer
		check      func(p sessionParams) bool
	}{
		{"InitialR2T", "Yes", "Yes", func(p sessionParams) bool { return p.InitialR2T }},
		{"InitialR2T", "No", "No", func(p sessionParams) bool { return !p.InitialR2T }},
		{"ImmediateData", "No", "No", func(p sessionParams) bool { return !p.ImmediateData }},
		{"ImmediateData", "Yes", "Yes", func(p sessionParams) bool { return p.ImmediateData }},
		{"ImmediateData", "maybe", "Reject", func(p sessionParams) bool { return p.ImmediateData }},
		{"MaxBurstLength", "4096", "4096", func(p sessionParams) bool { return p.MaxBurstLength == 4096 }},
		{"MaxBurstLength", "16777215", "1048576", func(p sessionParams) bool { return p.MaxBurstLength == 1<<20 }},
		{"MaxBurstLength", "0x1000", "4096", func(p sessionParams) bool { return p.MaxBurstLength == 4096 }},
		{"MaxBurstLength", "100", "Reject", func(p sessionParams) bool { return p.MaxBurstLength == 262144 }},
		{"MaxBurstLength", "-5", "Reject", nil},
		{"MaxBurstLength", "+5", "Reject", nil},
		{"MaxBurstLength", "", "Reject", nil},
		{"MaxBurstLength", "99999999999999999999999", "Reject", nil},
		{"FirstBurstLength", "65536", "65536", func(p sessionParams) bool { return p.FirstBurstLength == 65536 }},
		{"MaxRecvDataSegmentLength", "4096", "", func(p sessionParams) bool { return p.InitiatorRecvDSL == 4096 && p.TargetRecvDSL == 262144 }},
		{"MaxRecvDataSegmentLength", "511", "Reject", func(p sessionParams) bool { return p.InitiatorRecvDSL == 8192 }},
		{"DefaultTime2Wait", "5", "5", func(p sessionParams) bool { return p.DefaultTime2Wait == 5 }},
		{"DefaultTime2Wait", "0", "2", nil},
		{"DefaultTime2Retain", "0", "0", nil},
		{"MaxOutstandingR2T", "1", "1", func(p sessionParams) bool { return p.MaxOutstandingR2T == 1 }},
		{"MaxOutstandingR2T", "0", "Reject", nil},
		{"MaxConnections", "8", "1", nil},
		{"ErrorRecoveryLevel", "2", "0", nil},
		{"ErrorRecoveryLevel", "3", "Reject", nil},
		{"DataPDUInOrder", "No", "Yes", func(p sessionParams) bool { return p.DataPDUInOrder }},
		{"DataSequenceInOrder", "No", "Yes", nil},
		{"HeaderDigest", "None", "None", func(p sessionParams) bool { return !p.HeaderDigest }},
		{"HeaderDigest", "CRC32C,None", "CRC32C", func(p sessionParams) bool { return p.HeaderDigest }},
		{"HeaderDigest", "None,CRC32C", "None", func(p sessionParams) bool { return !p.HeaderDigest }},
		{"HeaderDigest", "CRC32C", "CRC32C", func(p sessionParams) bool { return p.HeaderDigest && !p.DataDigest }},
		{"HeaderDigest", "X-md5,CRC32C,None", "CRC32C", func(p sessionParams) bool { return p.HeaderDigest }},
		{"HeaderDigest", "crc32c", "Reject", func(p sessionParams) bool { return !p.HeaderDigest }},
		{"HeaderDigest", "X-md5", "Reject", nil},
		{"DataDigest", "CRC32C", "CRC32C", func(p sessionParams) bool { return p.DataDigest && !p.HeaderDigest }},
		{"DataDigest", "CRC32C,None", "CRC32C", func(p sessionParams) bool { return p.DataDigest }},
		{"DataDigest", "None,CRC32C", "None", func(p sessionParams) bool { return !p.DataDigest }},
		{"DataDigest", "None", "None", func(p sessionParams) bool { return !p.DataDigest }},
		{"IFMarker", "Yes", "No", nil},
		{"OFMarkInt", "2048~8192", "Reject", nil},
		{"TaskReporting", "FastAbort", "RFC3720", nil},
		{"iSCSIProtocolLevel", "2", "1", nil},
		{"RDMAExtensions", "Yes", "No", nil},
		{"X-com.example.Foo", "1", "NotUnderstood", nil},
		{"Unheard", "1", "NotUnderstood", nil},
		{"TargetAlias", "x", "", nil},
		{"MaxBurstLength", "NotUnderstood", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			n := newNegotiator(ours)
			answer, respond, err := n.negotiate(tc.key, tc.value)
			if err != nil {
				t.Fatal(err)
			}
			if tc.answer == "" {
				if respond {
					t.Fatalf("answered %q to a declaration", answer)
				}
			} else if !respond || answer != tc.answer {
				t.Fatalf("answer %q (respond %v), want %q", answer, respond, tc.answer)
			}
			if tc.check != nil && !tc.check(n.final()) {
				t.Fatalf("parameters after negotiation: %+v", n.final())
			}
		})
	}
}

func TestNegotiateRules(t *testing.T) {
	ours := defaultParams()
	ours.MaxBurstLength = 1 << 20
	ours.FirstBurstLength = 256 << 10

	n := newNegotiator(ours)
	if _, _, err := n.negotiate("MaxBurstLength", "8192"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.negotiate("MaxBurstLength", "8192"); !errors.Is(err, errRenegotiated) {
		t.Errorf("second offer of a key: %v", err)
	}
	if _, _, err := n.negotiate("FirstBurstLength", "131072"); err != nil {
		t.Fatal(err)
	}
	if p := n.final(); p.FirstBurstLength != 8192 {
		t.Errorf("FirstBurstLength %d exceeds MaxBurstLength %d", p.FirstBurstLength, p.MaxBurstLength)
	}

	d := newNegotiator(ours)
	d.discovery = true
	for _, k := range []string{"InitialR2T", "ImmediateData", "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T", "DataPDUInOrder", "DataSequenceInOrder"} {
		if a, _, _ := d.negotiate(k, "1"); a != "Irrelevant" {
			t.Errorf("%s in a discovery session: %q, want Irrelevant", k, a)
		}
	}
	if a, _, _ := d.negotiate("HeaderDigest", "None"); a != "None" {
		t.Errorf("HeaderDigest in a discovery session: %q", a)
	}
}
