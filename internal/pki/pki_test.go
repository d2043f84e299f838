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
	cert, key, err := Issue(caCert, caKey, Metaserver, "metaserver", []string{"127.0.0.1", "meta.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := ServerConfig(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	var getAs func(caPEM []byte, serverName string, role Role) error
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	hs.TLS = scfg
	hs.StartTLS()
	defer hs.Close()
	get := func(caPEM []byte, serverName string) error {
		return getAs(caPEM, serverName, Metaserver)
	}
	getAs = func(caPEM []byte, serverName string, role Role) error {
		ccfg, err := ClientConfig(caPEM, role)
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
	if err := getAs(caCert, "", Chunkserver); err == nil || !strings.Contains(err.Error(), "not a chunkserver certificate") {
		t.Fatalf("a client expecting a chunkserver reached the metaserver: %v", err)
	}
	if ccfg, _ := ClientConfig(caCert, Metaserver); ccfg.MinVersion != tls.VersionTLS13 {
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
	leaf, leafKey, err := Issue(caCert, caKey, Chunkserver, "x", []string{"h"}, now)
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
		if _, _, err := Issue(tc.cert, tc.key, Metaserver, "x", tc.hosts, now); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
	if _, err := Pool([]byte("junk")); err == nil {
		t.Error("a pool from junk")
	}
}

// TestSign: a request signed by its key gets a certificate for the role and
// names the signer chose, which Verify accepts for that role only; junk, a
// request whose signature does not match and an unknown role are refused.
func TestSign(t *testing.T) {
	now := time.Now()
	caCert, caKey, err := NewCA("ca", now)
	if err != nil {
		t.Fatal(err)
	}
	csr, _, err := NewRequest("chunkserver cs1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := Sign(caCert, caKey, csr, Chunkserver, []string{"10.0.0.7", "cs1.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Verify(caCert, cert, Chunkserver)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "chunkserver cs1" || len(c.IPAddresses) != 1 || len(c.DNSNames) != 1 || c.DNSNames[0] != "cs1.example" {
		t.Fatalf("certificate %q %v %v", c.Subject.CommonName, c.IPAddresses, c.DNSNames)
	}
	if _, err := Verify(caCert, cert, Metaserver); err == nil {
		t.Error("a chunkserver certificate verified as the metaserver's")
	}
	other, _, err := NewCA("other", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(other, cert, Chunkserver); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("verified against another CA: %v", err)
	}
	bad := []byte(strings.Replace(string(csr), string(csr[40:44]), "AAAA", 1))
	for name, tc := range map[string]struct {
		csr  []byte
		role Role
	}{
		"junk":             {[]byte("junk"), Chunkserver},
		"a broken request": {bad, Chunkserver},
		"a certificate":    {cert, Chunkserver},
		"an unknown role":  {csr, Role("admin")},
		"a huge request":   {make([]byte, MaxRequestBytes+1), Chunkserver},
	} {
		if _, err := Sign(caCert, caKey, tc.csr, tc.role, []string{"h"}, now); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}

// FuzzSign: no request makes Sign panic, and what it signs verifies.
func FuzzSign(f *testing.F) {
	now := time.Now()
	caCert, caKey, err := NewCA("ca", now)
	if err != nil {
		f.Fatal(err)
	}
	csr, _, err := NewRequest("x")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cert, err := Sign(caCert, caKey, b, Chunkserver, []string{"h"}, now)
		if err != nil {
			return
		}
		if _, err := Verify(caCert, cert, Chunkserver); err != nil {
			t.Fatalf("signed a certificate that does not verify: %v", err)
		}
	})
}
