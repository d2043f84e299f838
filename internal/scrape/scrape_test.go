package scrape

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestHandler: no token or a refused one is 401; an accepted token is
// asked about once and then remembered; while the metaserver cannot be
// asked, a token never accepted gets 503.
func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "test_up", Help: "1"}, func() float64 { return 1 }))
	var asked atomic.Int64
	var down atomic.Bool
	verify := func(_ context.Context, token string) error {
		asked.Add(1)
		switch {
		case down.Load():
			return errors.New("metaserver unreachable")
		case token != "good":
			return ErrRefused
		}
		return nil
	}
	srv := httptest.NewServer(Handler(reg, verify, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	get := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, _ := get("bad"); code != http.StatusUnauthorized {
		t.Fatalf("a refused token: %d", code)
	}
	for range 3 {
		if code, body := get("good"); code != http.StatusOK || !strings.Contains(body, "test_up 1") {
			t.Fatalf("an accepted token: %d %q", code, body)
		}
	}
	if n := asked.Load(); n != 2 {
		t.Fatalf("the metaserver was asked %d times, want 2 (bad once, good once)", n)
	}
	down.Store(true)
	if code, _ := get("other"); code != http.StatusServiceUnavailable {
		t.Fatalf("an unknown token while the metaserver is away: %d", code)
	}
	if code, _ := get("good"); code != http.StatusOK {
		t.Fatalf("a known token while the metaserver is away: %d", code)
	}
}
