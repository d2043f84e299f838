// Package pki makes the cluster's certificate authority and the
// certificates it signs for the metaserver's REST API and the chunkservers'
// control API: ECDSA P-256 keys, PEM-encoded, verified by every daemon and
// the CLI against the cluster CA alone.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"
)

const (
	// CAValidity is how long the cluster CA is valid.
	CAValidity = 20 * 365 * 24 * time.Hour
	// CertValidity is how long an issued certificate is valid.
	CertValidity = 2 * 365 * 24 * time.Hour
	// skew backdates NotBefore so that a peer whose clock is behind still
	// accepts a certificate issued a moment ago.
	skew = time.Hour
)

// NewCA makes a self-signed CA certificate named commonName and its key.
func NewCA(commonName string, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"chunkraid"}},
		NotBefore:             now.Add(-skew),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// Role is what a certificate lets its holder serve, carried as the URI SAN
// chunkraid:ROLE: a client of the cluster checks it beside the chain, so a
// chunkserver's certificate cannot stand in for the metaserver's.
type Role string

const (
	// Metaserver serves the REST API.
	Metaserver Role = "metaserver"
	// Chunkserver serves a chunkserver's control API.
	Chunkserver Role = "chunkserver"
	// Host serves a hostd's metrics.
	Host Role = "host"
)

func (r Role) uri() *url.URL { return &url.URL{Scheme: "chunkraid", Opaque: string(r)} }

// Issue makes a key and signs with the CA a certificate for it, for role,
// named commonName and valid for the host names and IP addresses in hosts
// (its SANs), and returns both.
func Issue(caCertPEM, caKeyPEM []byte, role Role, commonName string, hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	csr, keyPEM, err := NewRequest(commonName)
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = Sign(caCertPEM, caKeyPEM, csr, role, hosts, now)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// NewRequest makes a key and a certificate signing request for it, named
// commonName: the key stays with the caller, the request goes to the
// metaserver, which decides the certificate's role and names (Sign).
func NewRequest(commonName string) (csrPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: commonName, Organization: []string{"chunkraid"}},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), keyPEM, nil
}

// MaxRequestBytes bounds a PEM certificate request Sign accepts.
const MaxRequestBytes = 4096

// Sign signs with the CA a certificate for the key of the request csrPEM,
// for role and valid for hosts, for both server and client authentication.
// The request's own names, if any, are ignored: the signer decides them.
func Sign(caCertPEM, caKeyPEM, csrPEM []byte, role Role, hosts []string, now time.Time) (certPEM []byte, err error) {
	ca, caKey, err := loadCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, err
	}
	if role != Metaserver && role != Chunkserver && role != Host {
		return nil, fmt.Errorf("pki: unknown role %q", role)
	}
	if len(hosts) == 0 {
		return nil, errors.New("pki: a certificate needs at least one host name or address")
	}
	if len(csrPEM) > MaxRequestBytes {
		return nil, fmt.Errorf("pki: a certificate request of %d bytes (at most %d)", len(csrPEM), MaxRequestBytes)
	}
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("pki: the certificate request is not a PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	cn := csr.Subject.CommonName
	if cn == "" {
		cn = string(role)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"chunkraid"}},
		NotBefore:    now.Add(-skew),
		NotAfter:     now.Add(CertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{role.uri()},
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		switch ip := net.ParseIP(h); {
		case h == "":
			return nil, errors.New("pki: an empty host name")
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, csr.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// Verify checks that certPEM is signed by the CA of caCertPEM, for role,
// and returns it parsed.
func Verify(caCertPEM, certPEM []byte, role Role) (*x509.Certificate, error) {
	p, err := Pool(caCertPEM)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("pki: the certificate is not PEM")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate: %w", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: p}); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if err := hasRole(c, role); err != nil {
		return nil, err
	}
	return c, nil
}

func hasRole(c *x509.Certificate, role Role) error {
	want := role.uri().String()
	var has []string
	for _, u := range c.URIs {
		if u.String() == want {
			return nil
		}
		has = append(has, u.String())
	}
	return &RoleError{Subject: c.Subject.CommonName, Want: role, Has: has}
}

// RoleError is a certificate of the cluster CA presented for another role
// than the one the client expects.
type RoleError struct {
	Subject string
	Want    Role
	Has     []string // the certificate's URI SANs
}

func (e *RoleError) Error() string {
	return fmt.Sprintf("pki: the certificate of %q is not a %s certificate of the cluster (it carries %v, not %s)",
		e.Subject, e.Want, e.Has, e.Want.uri())
}

// Pool is a certificate pool holding only the CA of caCertPEM: what a
// client of the cluster trusts.
func Pool(caCertPEM []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(caCertPEM) {
		return nil, errors.New("pki: no PEM certificate in the CA file")
	}
	return p, nil
}

// ClientConfig is the TLS configuration of a client that trusts only the
// cluster CA and only a peer whose certificate is for role peer.
func ClientConfig(caCertPEM []byte, peer Role) (*tls.Config, error) {
	p, err := Pool(caCertPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: p, MinVersion: tls.VersionTLS13, VerifyConnection: func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("pki: the peer sent no certificate")
		}
		if err := hasRole(cs.PeerCertificates[0], peer); err != nil {
			// As crypto/tls reports a chain that does not verify.
			return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
		}
		return nil
	}}, nil
}

// ServerConfig is the TLS configuration of a server with the given
// certificate and key.
func ServerConfig(certPEM, keyPEM []byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: server certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, nil
}

func loadCA(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, nil, errors.New("pki: the CA certificate is not PEM")
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !ca.IsCA {
		return nil, nil, errors.New("pki: the CA certificate is not a CA")
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "EC PRIVATE KEY" {
		return nil, nil, errors.New("pki: the CA key is not an EC PRIVATE KEY PEM block")
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA key: %w", err)
	}
	if !key.PublicKey.Equal(ca.PublicKey) {
		return nil, nil, errors.New("pki: the CA key does not match the CA certificate")
	}
	return ca, key, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// serial is a random 128-bit serial number.
func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}
