package pki

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestTLSWithClusterCA: a server with a certificate the cluster CA issued
// for 127.0.0.1 and a DNS name is reached by a client that trusts only
// that CA, by either name; a client that trusts another CA, or a name the
// certificate does not carry, is refused.
func TestTLSWithClusterCA(t *testing.T) {
	now := time.Now()
	caCert, caKey, err := NewCA("cluster-ca", now)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := Issue(caCert, caKey, "metaserver", []string{"127.0.0.1", "meta.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := ServerConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	hs.TLS = scfg
	hs.StartTLS()
	defer hs.Close()
	get := func(caPEM []byte, serverName string) error {
		ccfg, err := ClientConfig(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		ccfg.ServerName = serverName
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: ccfg}}
		resp, err := c.Get(hs.URL)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "ok" {
			t.Fatalf("body %q", b)
		}
		return nil
	}
	if err := get(caCert, ""); err != nil {
		t.Fatalf("by IP with the cluster CA: %v", err)
	}
	if err := get(caCert, "meta.example"); err != nil {
		t.Fatalf("by name with the cluster CA: %v", err)
	}
	if err := get(caCert, "other.example"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a name the certificate does not carry: %v", err)
	}
	otherCA, _, err := NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := get(otherCA, ""); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("a client trusting another CA: %v", err)
	}
	if ccfg, _ := ClientConfig(caCert); ccfg.MinVersion != tls.VersionTLS13 {
		t.Error("the client accepts TLS below 1.3")
	}
}

func TestIssueRefuses(t *testing.T) {
	now := time.Now()
	caCert, caKey, err := NewCA("ca", now)
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey, err := NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, leafKey, err := Issue(caCert, caKey, "x", []string{"h"}, now)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		cert, key []byte
		hosts     []string
	}{
		"no hosts":            {caCert, caKey, nil},
		"an empty host":       {caCert, caKey, []string{""}},
		"a key of another CA": {caCert, otherKey, []string{"h"}},
		"not PEM":             {[]byte("junk"), caKey, []string{"h"}},
		"a leaf as CA":        {leaf, leafKey, []string{"h"}},
		"the other CA's cert": {otherCert, caKey, []string{"h"}},
	} {
		if _, _, err := Issue(tc.cert, tc.key, "x", tc.hosts, now); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
	if _, err := Pool([]byte("junk")); err == nil {
		t.Error("a pool from junk")
	}
}
