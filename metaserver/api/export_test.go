package api

import (
	"strings"
	"testing"
)

// TestReadOnlyExportName: a read-only name round-trips, its token is not
// the read-write one, and neither token opens the other kind of name.
func TestReadOnlyExportName(t *testing.T) {
	const secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	rw := ExportName{Chunk: "c1", Host: "h1", Epoch: 3, Token: ExportToken(secret, "c1", "h1", 3)}
	ro := ExportName{Chunk: "c1", Host: "verify", Epoch: 3, ReadOnly: true, Token: ReadOnlyExportToken(secret, "c1", "verify", 3)}
	for _, e := range []ExportName{rw, ro} {
		got, err := ParseExportName(e.String())
		if err != nil || got != e || !got.ValidToken(secret) {
			t.Errorf("%s: parsed %+v, %v, valid %v", e, got, err, got.ValidToken(secret))
		}
	}
	if !strings.Contains(ro.String(), ";mode=ro;") {
		t.Errorf("read-only name %s", ro)
	}
	forged := ro
	forged.ReadOnly = false // the read-only token on a read-write name
	if forged.ValidToken(secret) {
		t.Error("a read-only token opens a read-write name")
	}
	up := rw
	up.ReadOnly = true
	if up.ValidToken(secret) {
		t.Error("a read-write token opens a read-only name")
	}
	for _, bad := range []string{"c1;host=h;epoch=1;mode=rw;token=ab", "c1;host=h;epoch=1;mode=ro;mode=ro;token=ab", "c1;host=h;epoch=1;token=ab;x=y"} {
		if _, err := ParseExportName(bad); err == nil {
			t.Errorf("ParseExportName(%q) accepted it", bad)
		}
	}
}

// TestSnapshotExportName: a snapshot's name round-trips, is read-only, has
// a token of its own that opens no other snapshot or kind of name.
func TestSnapshotExportName(t *testing.T) {
	const secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
	e := ExportName{Chunk: "c1", Host: "h1", Epoch: 3, ReadOnly: true, Snapshot: "before-upgrade",
		Token: SnapshotExportToken(secret, "c1", "h1", 3, "before-upgrade")}
	got, err := ParseExportName(e.String())
	if err != nil || got != e || !got.ValidToken(secret) {
		t.Fatalf("%s: parsed %+v, %v", e, got, err)
	}
	other := e
	other.Snapshot = "other"
	if other.ValidToken(secret) {
		t.Error("one snapshot's token opens another")
	}
	live := e
	live.Snapshot = ""
	if live.ValidToken(secret) {
		t.Error("a snapshot's token opens the read-only chunk")
	}
	for _, bad := range []string{
		"c1;host=h;epoch=1;snap=s;token=ab",                // not read-only
		"c1;host=h;epoch=1;mode=ro;snap=a;snap=b;token=ab", // twice
		"c1;host=h;epoch=1;mode=ro;snap=-x;token=ab",       // not a snapshot name
		"c1;host=h;epoch=1;mode=ro;snap=;token=ab",
	} {
		if _, err := ParseExportName(bad); err == nil {
			t.Errorf("ParseExportName(%q) accepted it", bad)
		}
	}
}

// FuzzParseExportName: the parser never panics, and what it accepts
// formats back to a name that parses to the same.
func FuzzParseExportName(f *testing.F) {
	f.Add("c1;host=h1;epoch=3;token=ab")
	f.Add("c1;host=verify;epoch=3;mode=ro;token=ab")
	f.Add(";;;;")
	f.Add("c1;host=h1;epoch=3;mode=ro;snap=s1;token=ab")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseExportName(s)
		if err != nil {
			return
		}
		again, err := ParseExportName(e.String())
		if err != nil || again != e {
			t.Fatalf("%q parsed to %+v, which formats to %q and parses to %+v, %v", s, e, e.String(), again, err)
		}
	})
}
