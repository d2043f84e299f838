package iscsi

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadOnlyUnit: a write-protected unit reports WP in MODE SENSE,
// refuses every command that would change the medium with DATA PROTECT,
// WRITE PROTECTED before taking any data, and still reads and flushes.
func TestReadOnlyUnit(t *testing.T) {
	lu, be := testLU(t)
	lu.readOnly = true
	copy(be.data, bytes.Repeat([]byte{0xab}, 4096))
	if b := runCDB(t, lu, []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil).data; b[2]&0x80 == 0 {
		t.Errorf("MODE SENSE(6) device-specific parameter %#x: WP clear", b[2])
	}
	if b := runCDB(t, lu, []byte{0x5a, 0x08, 0x3f, 0, 0, 0, 0, 0x01, 0, 0}, nil).data; b[3]&0x80 == 0 {
		t.Errorf("MODE SENSE(10) device-specific parameter %#x: WP clear", b[3])
	}
	writes := map[string][]byte{
		"WRITE(10)":         {0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0},
		"WRITE(16)":         cdb16(0x8a, 0, 1),
		"WRITE SAME(16)":    cdb16(0x93, 0, 1),
		"COMPARE AND WRITE": {0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0},
		"WRITE AND VERIFY":  {0x2e, 0, 0, 0, 0, 0, 0, 0, 1, 0},
		"ORWRITE(16)":       cdb16(0x8b, 0, 1),
	}
	for name, cdb := range writes {
		edtl := uint32(512)
		if cdb[0] == 0x89 {
			edtl = 1024 // the compare data and the write data
		}
		_, s := lu.decodeCDB(cdb, true, edtl)
		if s == nil || s.key != senseDataProtect || s.asc != ascWriteProtected {
			t.Errorf("%s on a read-only unit: sense %v, want DATA PROTECT, WRITE PROTECTED", name, s)
		}
	}
	// A bad CDB is still reported as such.
	if _, s := lu.decodeCDB(cdb16(0x8a, 1<<40, 1), true, 512); s == nil || s.asc != ascLBAOutOfRange {
		t.Errorf("WRITE(16) out of range on a read-only unit: sense %v, want LBA OUT OF RANGE", s)
	}
	r := runCDB(t, lu, []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0}, nil)
	if r.status != statusGood || !bytes.Equal(r.data, bytes.Repeat([]byte{0xab}, 4096)) {
		t.Errorf("READ(10) on a read-only unit: status %d, %d bytes", r.status, len(r.data))
	}
	if r := runCDB(t, lu, []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil); r.status != statusGood {
		t.Errorf("SYNCHRONIZE CACHE on a read-only unit: status %d", r.status)
	}
	if !bytes.Equal(be.data[:4096], bytes.Repeat([]byte{0xab}, 4096)) {
		t.Error("the back end changed")
	}
}

// TestRealClientReadOnlyTarget: qemu-img copies a read-only target out,
// and qemu-io refuses to open it for writing.
func TestRealClientReadOnlyTarget(t *testing.T) {
	srv, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	be := newMemBackend(4 << 20)
	if _, err := rand.Read(be.data); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(be.data)
	if err := srv.AddTargetWith(testIQN, be, TargetConfig{Serial: "ro-serial", ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if err := srv.UpdateTarget(testIQN, TargetConfig{}); err == nil {
		t.Error("UpdateTarget made a read-only target writable")
	}
	addr := startServer(t, srv)
	out, err := runTool(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4k", lunURL(addr))
	if err == nil || !strings.Contains(out, "write protected") {
		t.Errorf("qemu-io write to a read-only target:\n%s", out)
	}
	if !bytes.Equal(be.data, want) {
		t.Fatal("a write reached the back end of a read-only target")
	}
	dst := filepath.Join(t.TempDir(), "copy.img")
	if out, err := runTool(t, 60*time.Second, "qemu-img", "convert", "-f", "raw", "-O", "raw", lunURL(addr), dst); err != nil {
		t.Fatalf("qemu-img convert from a read-only target: %v\n%s", err, out)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the copy differs from the target's contents")
	}
}
