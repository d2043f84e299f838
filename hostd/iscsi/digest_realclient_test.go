package iscsi

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// digestLog records the digests of every session that starts.
type digestLog struct {
	mu       sync.Mutex
	sessions []string // "header/data" of each session, in order
}

func (h *digestLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *digestLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "iscsi session started" {
		return nil
	}
	var hd, dd string
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "header_digest":
			hd = a.Value.String()
		case "data_digest":
			dd = a.Value.String()
		}
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sessions = append(h.sessions, hd+"/"+dd)
	return nil
}
func (h *digestLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *digestLog) WithGroup(string) slog.Handler      { return h }

func (h *digestLog) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions
	h.sessions = nil
	return s
}

// TestRealClientHeaderDigest runs libiscsi with header digests. The
// libiscsi 1.19 tools offer HeaderDigest=None,CRC32C whatever the URL says
// (they set it after parsing ?header_digest=), so against a default
// target they get None, the first value of their list; against a target
// that requires header digests, None is not allowed and they get CRC32C.
// iscsi-inq and iscsi-test-cu's INQUIRY, READ (10), WRITE (10) and DataSN
// suites then run with every PDU digested. libiscsi 1.19 offers only
// DataDigest=None, so it cannot log in to a target that requires data
// digests; those are tested with the package's own initiator
// (digest_test.go).
func TestRealClientHeaderDigest(t *testing.T) {
	log := &digestLog{}
	_, _, addr := newTestServer(t, Config{Logger: slog.New(log)}, 64<<20)
	out, err := runTool(t, 30*time.Second, "iscsi-inq", "-i", initiatorIQN, lunURL(addr)+"?header_digest=crc32c")
	if err != nil {
		t.Fatalf("iscsi-inq: %v\n%s", err, out)
	}
	if got := log.take(); len(got) != 1 || got[0] != "None/None" {
		t.Fatalf("libiscsi's offer of None,CRC32C gave sessions %v, want None/None", got)
	}

	_, _, addr = newTestServer(t, Config{Logger: slog.New(log), RequireHeaderDigest: true}, 64<<20)
	out, err = runTool(t, 30*time.Second, "iscsi-inq", "-i", initiatorIQN, lunURL(addr))
	if err != nil || !strings.Contains(strings.ReplaceAll(out, " ", ""), "Vendor:CHUNKRD") {
		t.Fatalf("iscsi-inq with header digests: %v\n%s", err, out)
	}
	if got := log.take(); len(got) != 1 || got[0] != "CRC32C/None" {
		t.Fatalf("a target requiring header digests gave sessions %v, want CRC32C/None", got)
	}
	list, err := runTool(t, 30*time.Second, "iscsi-test-cu", "-l")
	if err != nil {
		t.Fatalf("iscsi-test-cu -l: %v\n%s", err, list)
	}
	runFamilies(t, list, addr, []string{"SCSI.Inquiry", "SCSI.Read10", "SCSI.Write10", "iSCSI.iSCSIdatasn"}, nil)
	got := log.take()
	if len(got) == 0 {
		t.Error("iscsi-test-cu started no session")
	}
	for _, s := range got {
		if s != "CRC32C/None" {
			t.Errorf("an iscsi-test-cu session ran with digests %s, want CRC32C/None", s)
		}
	}

	_, _, addr = newTestServer(t, Config{Logger: slog.New(log), RequireDataDigest: true}, 64<<20)
	if out, err := runTool(t, 30*time.Second, "iscsi-inq", "-i", initiatorIQN, lunURL(addr)); err == nil {
		t.Errorf("iscsi-inq logged in to a target that requires data digests:\n%s", out)
	}
	if got := log.take(); len(got) != 0 {
		t.Errorf("sessions %v started without the required data digest", got)
	}
}

// TestConformanceWholeSuiteHeaderDigest runs the whole of iscsi-test-cu
// against a target that requires header digests, so that every PDU of
// every test carries one. Like TestConformanceWholeSuite it takes minutes
// and runs only with CHUNKRAID_ISCSI_FULL=1; the target must fail no test.
func TestConformanceWholeSuiteHeaderDigest(t *testing.T) {
	if os.Getenv("CHUNKRAID_ISCSI_FULL") == "" {
		t.Skip("the whole conformance suite takes minutes: set CHUNKRAID_ISCSI_FULL=1 to run it")
	}
	log := &digestLog{}
	srv, err := New(Config{Logger: slog.New(log), RequireHeaderDigest: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddTarget(testIQN, newThinBackend(256<<20), "conformance-digest"); err != nil {
		t.Fatal(err)
	}
	sum, failed := summarize(runWholeSuite(t, lunURL(startServer(t, srv))))
	t.Log("hostd/iscsi with HeaderDigest=CRC32C over a thin in-memory back end:\n" + sum)
	if failed > 0 {
		t.Errorf("%d tests failed", failed)
	}
	sessions := log.take()
	for _, s := range sessions {
		if s != "CRC32C/None" {
			t.Errorf("a session ran with digests %s", s)
			break
		}
	}
	t.Logf("%d sessions, all with HeaderDigest=CRC32C", len(sessions))
}
