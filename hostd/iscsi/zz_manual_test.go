package iscsi

import (
	"os"
	"testing"
	"time"
)

func TestZZManualServe(t *testing.T) {
	if os.Getenv("ISCSI_MANUAL") == "" {
		t.Skip()
	}
	_, _, addr := newTestServer(t, Config{}, 64<<20)
	os.WriteFile("/tmp/iscsidev/addr", []byte(addr), 0o644)
	time.Sleep(time.Hour)
}
