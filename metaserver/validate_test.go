package metaserver

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// decodeBytes runs decode on body as a request body.
func decodeBytes(body []byte, v any) error {
	r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
	return decode(httptest.NewRecorder(), r, v)
}

// FuzzCreateVolumeRequest feeds arbitrary bodies through the decoder and
// validation: nothing panics, every refusal is invalid_argument, and what
// is accepted satisfies the schema's constraints.
func FuzzCreateVolumeRequest(f *testing.F) {
	for _, s := range []string{
		`{"name":"v","size_bytes":4096,"layout":"mirror:2"}`,
		`{"name":"v","size_bytes":4096,"layout":"mirror:3","host":"h1"}`,
		`{"name":"V","size_bytes":4097,"layout":"ec:4+2"}`,
		`{"name":"v","size_bytes":4096,"layout":"ec:4+2","stripe_unit":65536}`,
		`{"name":"v","size_bytes":4096,"layout":"ec:8+3","stripe_unit":3}`,
		`{"name":"v","size_bytes":4096,"layout":"mirror:2","stripe_unit":4096}`,
		`{"name":"v","size_bytes":4096,"layout":"ec:19+1","stripe_unit":2097152}`,
		`{"name":"v","size_bytes":-9223372036854775808,"layout":"mirror:2"}`,
		`{"name":"v"} {}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.CreateVolumeRequest
		if err := decodeBytes(body, &req); err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("decode error %v is not invalid_argument", err)
			}
			return
		}
		l, err := validateCreateVolume(&req)
		if err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("validation error %v is not invalid_argument", err)
			}
			return
		}
		su := req.StripeUnit
		if !volumeNameRE.MatchString(req.Name) || req.SizeBytes <= 0 || req.SizeBytes%4096 != 0 ||
			l.Width() < 2 || l.Width() > api.MaxECWidth || l.String() != req.Layout || !layoutSQLRE.MatchString(req.Layout) ||
			(l.Kind == api.LayoutEC) != (su != 0) || (su != 0 && (su < 4096 || su > 1<<20 || su&(su-1) != 0)) ||
			(req.Bitmap != api.BitmapRemb && req.Bitmap != api.BitmapInternal && req.Bitmap != api.BitmapNone) {
			t.Fatalf("accepted %+v as %+v", req, l)
		}
	})
}

// layoutSQLRE is the layout CHECK constraint of migration 0003.
var layoutSQLRE = regexp.MustCompile(`^(mirror:2|mirror:3|ec:[1-9][0-9]?\+[1-9][0-9]?)$`)

// FuzzRegisterChunkserverRequest does the same for registrations.
func FuzzRegisterChunkserverRequest(f *testing.F) {
	for _, s := range []string{
		`{"name":"cs1","addr":"127.0.0.1:10809","disks":[{"path":"/d","capacity_bytes":10,"free_bytes":5}]}`,
		`{"name":"cs1","addr":"[::1]:1","fault_domain":"dc1:r2","disks":[{"path":"/d","capacity_bytes":1,"free_bytes":1}]}`,
		`{"name":"cs1","addr":"0.0.0.0:1","disks":[]}`,
		`{"name":"cs1","addr":"h:99999","disks":[{"path":"/d","capacity_bytes":1,"free_bytes":2}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.RegisterChunkserverRequest
		if err := decodeBytes(body, &req); err != nil {
			return
		}
		if err := validateRegisterChunkserver(&req); err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("validation error %v is not invalid_argument", err)
			}
			return
		}
		host, port, err := net.SplitHostPort(req.Addr)
		p, perr := strconv.Atoi(port)
		if err != nil || host == "" || perr != nil || p < 1 || p > 65535 ||
			!serverNameRE.MatchString(req.Name) || !faultDomainRE.MatchString(req.FaultDomain) || len(req.Disks) == 0 {
			t.Fatalf("accepted %+v", req)
		}
		if (req.ControlAddr == "") != (req.ControlCSR == "") || len(req.ControlCSR) > pki.MaxRequestBytes {
			t.Fatalf("accepted control_addr %q with a control_csr of %d bytes", req.ControlAddr, len(req.ControlCSR))
		}
		seen := map[string]bool{}
		for _, d := range req.Disks {
			if d.Path == "" || seen[d.Path] || d.FreeBytes < 0 || d.FreeBytes > d.CapacityBytes || strings.ContainsRune(d.Path, 0) {
				t.Fatalf("accepted disk %+v", d)
			}
			seen[d.Path] = true
		}
	})
}

func TestDescribeSize(t *testing.T) {
	for n, want := range map[int64]string{
		1: "1 bytes", 4096: "4 KiB", 64 << 20: "64 MiB", 10 << 30: "10 GiB", 3 << 40: "3 TiB", 1<<20 + 1: "1048577 bytes",
	} {
		if got := describeSize(n); got != want {
			t.Errorf("describeSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// fuzzDecoded feeds arbitrary bodies through the decoder into a value of
// type T and then through validate: nothing panics and every refusal is
// invalid_argument; accepted is called with what passed.
func fuzzDecoded[T any](f *testing.F, seeds []string, validate func(*T) error, accepted func(t *testing.T, v *T)) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v T
		if err := decodeBytes(body, &v); err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("decode error %v is not invalid_argument", err)
			}
			return
		}
		if err := validate(&v); err != nil {
			if !api.IsInvalidArgument(err) {
				t.Fatalf("validation error %v is not invalid_argument", err)
			}
			return
		}
		accepted(t, &v)
	})
}

// FuzzCreateTokenRequest: POST /api/v1/tokens.
func FuzzCreateTokenRequest(f *testing.F) {
	fuzzDecoded(f, []string{`{"name":"ops","role":"admin"}`, `{"name":"x","role":"join"}`, `{"name":"Bad","role":"reader"}`, `{"name":"a:b","role":"host"}`},
		func(r *api.CreateTokenRequest) error { return validateCreateToken(*r) },
		func(t *testing.T, r *api.CreateTokenRequest) {
			if !tokenNameRE.MatchString(r.Name) || strings.Contains(r.Name, ":") ||
				(r.Role != api.RoleAdmin && r.Role != api.RoleReader && r.Role != api.RoleJoin) {
				t.Fatalf("accepted %+v", r)
			}
		})
}

// FuzzIssueCertificateRequest: POST /api/v1/certificates; what passes is
// then signed, which must not panic either.
func FuzzIssueCertificateRequest(f *testing.F) {
	now := time.Now()
	ca, caKey, err := pki.NewCA("fuzz", now)
	if err != nil {
		f.Fatal(err)
	}
	csr, _, err := pki.NewRequest("m")
	if err != nil {
		f.Fatal(err)
	}
	good, _ := json.Marshal(api.IssueCertificateRequest{Role: "metaserver", Names: []string{"m.test", "10.0.0.1"}, CSR: string(csr)})
	fuzzDecoded(f, []string{string(good), `{"role":"metaserver","names":["*.x"],"csr":"x"}`, `{"role":"chunkserver","names":[],"csr":""}`},
		func(r *api.IssueCertificateRequest) error { return validateIssueCertificate(*r) },
		func(t *testing.T, r *api.IssueCertificateRequest) {
			if r.Role != api.RoleMetaserverCert || len(r.Names) == 0 || len(r.Names) > api.MaxCertificateNames {
				t.Fatalf("accepted %+v", r)
			}
			for _, n := range r.Names {
				if strings.ContainsAny(n, "* \x00") {
					t.Fatalf("accepted name %q", n)
				}
			}
			if cert, err := pki.Sign(ca, caKey, []byte(r.CSR), pki.Metaserver, r.Names, now); err == nil {
				if _, err := pki.Verify(ca, cert, pki.Metaserver); err != nil {
					t.Fatalf("signed a certificate that does not verify: %v", err)
				}
			}
		})
}

// FuzzRegisterHostRequest: POST /api/v1/hosts.
func FuzzRegisterHostRequest(f *testing.F) {
	fuzzDecoded(f, []string{`{"name":"h1","iscsi_addr":"127.0.0.1:3260"}`, `{"name":"","iscsi_addr":"x"}`},
		func(r *api.RegisterHostRequest) error { return validateRegisterHost(*r) },
		func(t *testing.T, r *api.RegisterHostRequest) {
			if !serverNameRE.MatchString(r.Name) {
				t.Fatalf("accepted %+v", r)
			}
			if (r.MetricsAddr == "") != (r.MetricsCSR == "") || len(r.MetricsCSR) > pki.MaxRequestBytes {
				t.Fatalf("accepted metrics_addr %q with a metrics_csr of %d bytes", r.MetricsAddr, len(r.MetricsCSR))
			}
		})
}

// FuzzChunkserverHeartbeat: POST /api/v1/chunkservers/{id}/heartbeat.
func FuzzChunkserverHeartbeat(f *testing.F) {
	fuzzDecoded(f, []string{`{"disks":[{"path":"/d","capacity_bytes":10,"free_bytes":5}]}`,
		`{"disks":[],"failed_chunks":[{"id":"c","reason":"eio"}]}`},
		func(hb *api.ChunkserverHeartbeat) error { return validateDisks(hb.Disks, false) },
		func(t *testing.T, hb *api.ChunkserverHeartbeat) {
			for _, d := range hb.Disks {
				if d.Path == "" || d.FreeBytes < 0 || d.FreeBytes > d.CapacityBytes {
					t.Fatalf("accepted disk %+v", d)
				}
			}
		})
}

// FuzzSetCHAPRequest: PUT /api/v1/volumes/{name}/chap.
func FuzzSetCHAPRequest(f *testing.F) {
	fuzzDecoded(f, []string{`{"user":"u","secret":"long-enough-secret"}`,
		`{"user":"u","secret":"long-enough-secret","mutual_user":"m","mutual_secret":"other-long-secret"}`},
		func(r *api.SetCHAPRequest) error { return validateSetCHAP(*r) },
		func(t *testing.T, r *api.SetCHAPRequest) {
			if r.User == "" || len(r.Secret) < api.MinCHAPSecret || len(r.Secret) > api.MaxCHAPSecret ||
				(r.MutualSecret != "" && r.MutualSecret == r.Secret) {
				t.Fatalf("accepted %+v", r)
			}
		})
}

// FuzzAttachVolumeRequest: POST /api/v1/volumes/{name}/attach (the handler
// needs a host).
func FuzzAttachVolumeRequest(f *testing.F) {
	fuzzDecoded(f, []string{`{"host":"h1"}`, `{}`},
		func(r *api.AttachVolumeRequest) error {
			if r.Host == "" {
				return invalid("host is required")
			}
			return nil
		},
		func(t *testing.T, r *api.AttachVolumeRequest) {})
}
