package cli

import (
	"net"
	"strings"
	"testing"
)

// TestUnreachableMetaserver: a CLI command against a metaserver that is
// not there fails with one line that names the URL it tried and how to set
// it, not with a Go transport error.
func TestUnreachableMetaserver(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	root := NewRoot()
	root.SetArgs([]string{"--metaserver", url, "volume", "list"})
	err = root.ExecuteContext(t.Context())
	if err == nil {
		t.Fatal("volume list against a closed port succeeded")
	}
	msg := explain(err).Error()
	for _, want := range []string{"cannot reach the metaserver at " + url, "connection refused", "--metaserver", EnvMetaserver} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "/api/v1") || strings.Contains(msg, "\n") {
		t.Errorf("message %q names an API route or spans lines", msg)
	}
}
