package metaserver

import (
	"net"
	"net/http"
	"regexp"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// dnsNameRE is a host name a certificate may carry: labels of letters,
// digits and '-', no wildcard.
var dnsNameRE = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func validateIssueCertificate(req api.IssueCertificateRequest) error {
	if req.Role != api.RoleMetaserverCert {
		return invalid("role %q: only %q certificates are issued here (a chunkserver gets its control API certificate when it registers)",
			req.Role, api.RoleMetaserverCert)
	}
	if len(req.Names) == 0 || len(req.Names) > api.MaxCertificateNames {
		return invalid("names: give 1 to %d host names or addresses the metaserver is reached by (%d given)", api.MaxCertificateNames, len(req.Names))
	}
	for _, n := range req.Names {
		if net.ParseIP(n) == nil && (len(n) > 253 || !dnsNameRE.MatchString(n)) {
			return invalid("name %q is neither an IP address nor a host name (letters, digits, '-' and '.'; no wildcards)", n)
		}
	}
	if req.CSR == "" || len(req.CSR) > pki.MaxRequestBytes {
		return invalid("csr: a PEM certificate request of at most %d bytes is required (chunkraid cert issue makes one)", pki.MaxRequestBytes)
	}
	return nil
}

// issueCertificate signs a metaserver certificate with the cluster CA.
func (s *Server) issueCertificate(w http.ResponseWriter, r *http.Request) {
	var req api.IssueCertificateRequest
	if err := decode(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := validateIssueCertificate(req); err != nil {
		s.writeError(w, r, err)
		return
	}
	cert, err := pki.Sign(s.st.caCert, s.st.caKey, []byte(req.CSR), pki.Metaserver, req.Names, time.Now())
	if err != nil {
		s.writeError(w, r, invalid("csr: %v", err))
		return
	}
	c, err := pki.Verify(s.st.caCert, cert, pki.Metaserver)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("certificate issued", "role", req.Role, "names", req.Names, "by", callerName(r))
	s.writeJSON(w, http.StatusCreated, api.IssuedCertificate{Certificate: string(cert), ClusterCA: string(s.st.caCert),
		Names: req.Names, NotAfter: c.NotAfter})
}
