package metaserver

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// Input validation of API requests. Every function returns an *api.Error
// with CodeInvalidArgument and a message that says what to send instead.

var (
	// volumeNameRE: a volume name becomes part of an iSCSI IQN.
	volumeNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)
	// serverNameRE names chunkservers and hosts (host names fit).
	serverNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// faultDomainRE also allows ':' for names such as "dc1:rack4".
	faultDomainRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$`)
	// uuidRE is the text form of a chunk ID.
	uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

const (
	// blockSize: volume sizes are whole 4 KiB blocks.
	blockSize = 4096
	// maxSets bounds the sets of one volume (640 TiB with 10 GiB chunks).
	maxSets = 1 << 16
	// maxDisks bounds the disks one chunkserver may report.
	maxDisks = 256
	// maxPathLen bounds a disk path.
	maxPathLen = 4096
	// maxReportVolumes bounds the volumes of one host report.
	maxReportVolumes = 4096
	// maxSetMembers bounds the members of one set in a report: the widest
	// layout.
	maxSetMembers = api.MaxECWidth
	// maxErrorLen bounds a member's stored error; longer ones are cut.
	maxErrorLen = 1024
)

func invalid(format string, args ...any) *api.Error {
	return api.Errorf(api.CodeInvalidArgument, format, args...)
}

// parseLayout accepts the layouts this metaserver can place (api.ParseLayout).
func parseLayout(s string) (api.Layout, error) {
	return api.ParseLayout(s)
}

// validateStripeUnit checks the stripe unit of an EC volume; 0 means the
// default. The chunk size is checked when the volume is placed.
func validateStripeUnit(unit int64) (int64, error) {
	if unit == 0 {
		return api.DefaultStripeUnit, nil
	}
	if unit < api.MinStripeUnit || unit > api.MaxStripeUnit || unit&(unit-1) != 0 {
		return 0, invalid("stripe_unit %d must be a power of two from %d (4 KiB) to %d (1 MiB), e.g. %d (64 KiB, the default)",
			unit, api.MinStripeUnit, api.MaxStripeUnit, api.DefaultStripeUnit)
	}
	return unit, nil
}

func validateVolumeName(name string) error {
	if !volumeNameRE.MatchString(name) {
		return invalid("invalid volume name %q: use 1 to 63 characters from a-z, 0-9, '.' and '-', starting with a letter or digit (it becomes part of an iSCSI IQN)", name)
	}
	return nil
}

func validateVolumeSize(size int64) error {
	if size <= 0 {
		return invalid("size_bytes must be positive, e.g. 10737418240 for 10 GiB (got %d)", size)
	}
	if size%blockSize != 0 {
		return invalid("size_bytes %d is not a multiple of 4096: round it up to %d", size, (size/blockSize+1)*blockSize)
	}
	return nil
}

// parseBitmap accepts the bitmap modes of a volume; "" means remb.
func parseBitmap(s string) (string, error) {
	switch s {
	case "":
		return api.BitmapRemb, nil
	case api.BitmapRemb, api.BitmapInternal, api.BitmapNone:
		return s, nil
	}
	return "", invalid("unknown bitmap mode %q: use %s (the default: host bitmap in RAM, LOG bitmaps on the chunkservers), %s (a synchronous bitmap write before every data write) or %s (full resync)",
		s, api.BitmapRemb, api.BitmapInternal, api.BitmapNone)
}

// validateCreateVolume checks req and fills in its defaults: the bitmap
// mode, the canonical layout name and the stripe unit (the default for EC,
// 0 for mirrors, which ignore it).
func validateCreateVolume(req *api.CreateVolumeRequest) (api.Layout, error) {
	if err := validateVolumeName(req.Name); err != nil {
		return api.Layout{}, err
	}
	if err := validateVolumeSize(req.SizeBytes); err != nil {
		return api.Layout{}, err
	}
	l, err := parseLayout(req.Layout)
	if err != nil {
		return api.Layout{}, err
	}
	req.Layout = l.String()
	if l.Kind == api.LayoutEC {
		if req.StripeUnit, err = validateStripeUnit(req.StripeUnit); err != nil {
			return api.Layout{}, err
		}
	} else {
		req.StripeUnit = 0
	}
	if req.Bitmap, err = parseBitmap(req.Bitmap); err != nil {
		return api.Layout{}, err
	}
	if l.Kind == api.LayoutEC && req.Bitmap == api.BitmapInternal {
		return api.Layout{}, invalid("bitmap mode %s is for mirror layouts; %s volumes use %s (the default) or %s",
			api.BitmapInternal, l, api.BitmapRemb, api.BitmapNone)
	}
	if req.Host != "" && !serverNameRE.MatchString(req.Host) {
		return api.Layout{}, invalid("invalid host name %q (chunkraid host list shows the registered hosts)", req.Host)
	}
	if err := req.QoS.Normalize(); err != nil {
		return api.Layout{}, err
	}
	return l, nil
}

func validateServerName(kind, name string) error {
	if !serverNameRE.MatchString(name) {
		return invalid("invalid %s name %q: use 1 to 63 characters from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit", kind, name)
	}
	return nil
}

// validateDialAddr checks that addr is a host:port another machine can dial.
func validateDialAddr(field, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return invalid("%s %q is not host:port (e.g. 192.0.2.10:10809): %v", field, addr, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return invalid("%s %q: port must be a number in 1..65535", field, addr)
	}
	if host == "" {
		return invalid("%s %q has no host: give the address others dial, e.g. 192.0.2.10%s", field, addr, addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return invalid("%s %q is a wildcard listen address that nobody can dial: advertise a concrete address", field, addr)
	}
	return nil
}

func validateDisks(disks []api.DiskInfo, requireOne bool) error {
	if requireOne && len(disks) == 0 {
		return invalid("disks is empty: a chunkserver needs at least one disk")
	}
	if len(disks) > maxDisks {
		return invalid("%d disks reported: at most %d are supported", len(disks), maxDisks)
	}
	seen := make(map[string]bool, len(disks))
	for _, d := range disks {
		if d.Path == "" || len(d.Path) > maxPathLen || strings.ContainsRune(d.Path, 0) {
			return invalid("disk path %q must be a non-empty path of at most %d bytes", d.Path, maxPathLen)
		}
		if seen[d.Path] {
			return invalid("disk path %q is listed twice", d.Path)
		}
		seen[d.Path] = true
		if d.CapacityBytes < 0 || d.FreeBytes < 0 || d.FreeBytes > d.CapacityBytes {
			return invalid("disk %q: need 0 <= free_bytes (%d) <= capacity_bytes (%d)", d.Path, d.FreeBytes, d.CapacityBytes)
		}
		if d.AllocatedBytes < 0 || d.AllocatedBytes > d.CapacityBytes {
			return invalid("disk %q: need 0 <= allocated_bytes (%d) <= capacity_bytes (%d)", d.Path, d.AllocatedBytes, d.CapacityBytes)
		}
	}
	return nil
}

func validateRegisterChunkserver(req *api.RegisterChunkserverRequest) error {
	if err := validateServerName("chunkserver", req.Name); err != nil {
		return err
	}
	if err := validateDialAddr("addr", req.Addr); err != nil {
		return err
	}
	if req.ControlAddr != "" {
		if err := validateDialAddr("control_addr", req.ControlAddr); err != nil {
			return err
		}
		if req.ControlCSR == "" {
			return invalid("control_addr %q needs control_csr: a PEM certificate request for the control API's TLS key", req.ControlAddr)
		}
		if len(req.ControlCSR) > pki.MaxRequestBytes {
			return invalid("control_csr is %d bytes: at most %d", len(req.ControlCSR), pki.MaxRequestBytes)
		}
	} else if req.ControlCSR != "" {
		return invalid("control_csr without control_addr: a certificate is signed for the control API's address")
	}
	if req.FaultDomain == "" {
		req.FaultDomain = req.Name
	}
	if !faultDomainRE.MatchString(req.FaultDomain) {
		return invalid("invalid fault_domain %q: use 1 to 63 characters from A-Z, a-z, 0-9, '.', '_', ':' and '-' (or leave it empty for the server's name)", req.FaultDomain)
	}
	return validateDisks(req.Disks, true)
}

func validateRegisterHost(req api.RegisterHostRequest) error {
	if err := validateServerName("host", req.Name); err != nil {
		return err
	}
	if err := validateDialAddr("iscsi_addr", req.ISCSIAddr); err != nil {
		return err
	}
	if req.MetricsAddr != "" {
		if err := validateDialAddr("metrics_addr", req.MetricsAddr); err != nil {
			return err
		}
		if req.MetricsCSR == "" {
			return invalid("metrics_addr %q needs metrics_csr: a PEM certificate request for the metrics listener's TLS key", req.MetricsAddr)
		}
		if len(req.MetricsCSR) > pki.MaxRequestBytes {
			return invalid("metrics_csr is %d bytes: at most %d", len(req.MetricsCSR), pki.MaxRequestBytes)
		}
	} else if req.MetricsCSR != "" {
		return invalid("metrics_csr without metrics_addr: a certificate is signed for the metrics listener's address")
	}
	return nil
}

// validateHostReport checks a host report and cuts over-long member errors
// to maxErrorLen bytes.
func validateHostReport(r *api.HostReport) error {
	if len(r.Volumes) > maxReportVolumes {
		return invalid("the report holds %d volumes: at most %d are allowed", len(r.Volumes), maxReportVolumes)
	}
	names := make(map[string]bool, len(r.Volumes))
	for i := range r.Volumes {
		v := &r.Volumes[i]
		if err := validateVolumeName(v.Name); err != nil {
			return err
		}
		if names[v.Name] {
			return invalid("volume %q is reported twice", v.Name)
		}
		names[v.Name] = true
		if v.Epoch < 1 {
			return invalid("volume %q: epoch %d must be the (positive) epoch the volume was attached at", v.Name, v.Epoch)
		}
		if len(v.Sets) > maxSets {
			return invalid("volume %q: %d sets reported, at most %d are allowed", v.Name, len(v.Sets), maxSets)
		}
		if err := validateVolumeStats(v.Name, v.Stats); err != nil {
			return err
		}
		sets := make(map[int]bool, len(v.Sets))
		chunks := map[string]bool{}
		for j := range v.Sets {
			s := &v.Sets[j]
			if s.Index < 0 || s.Index >= maxSets || sets[s.Index] {
				return invalid("volume %q: set index %d is out of range or reported twice", v.Name, s.Index)
			}
			sets[s.Index] = true
			if s.DirtyBytes < 0 {
				return invalid("volume %q set %d: dirty_bytes %d is negative", v.Name, s.Index, s.DirtyBytes)
			}
			if len(s.Members) > maxSetMembers {
				return invalid("volume %q set %d: %d members reported, at most %d are allowed", v.Name, s.Index, len(s.Members), maxSetMembers)
			}
			for k := range s.Members {
				m := &s.Members[k]
				if !uuidRE.MatchString(m.ChunkID) {
					return invalid("volume %q set %d: chunk id %q is not a UUID", v.Name, s.Index, m.ChunkID)
				}
				m.ChunkID = strings.ToLower(m.ChunkID)
				if chunks[m.ChunkID] {
					return invalid("volume %q: chunk %s is reported twice", v.Name, m.ChunkID)
				}
				chunks[m.ChunkID] = true
				switch m.State {
				case api.MemberInSync, api.MemberDegraded, api.MemberResyncing, api.MemberRebuilding:
				default:
					return invalid("volume %q chunk %s: unknown state %q: use %s, %s, %s or %s",
						v.Name, m.ChunkID, m.State, api.MemberInSync, api.MemberDegraded, api.MemberResyncing, api.MemberRebuilding)
				}
				if m.RebuildWatermark < 0 {
					return invalid("volume %q chunk %s: rebuild_watermark %d must not be negative", v.Name, m.ChunkID, m.RebuildWatermark)
				}
				if m.ResyncDoneBytes < 0 || m.ResyncTotalBytes < 0 || m.ResyncDoneBytes > m.ResyncTotalBytes {
					return invalid("volume %q chunk %s: need 0 <= resync_done_bytes (%d) <= resync_total_bytes (%d)",
						v.Name, m.ChunkID, m.ResyncDoneBytes, m.ResyncTotalBytes)
				}
				m.Error = truncateUTF8(m.Error, maxErrorLen)
			}
		}
	}
	return nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// parseEventQuery parses ?limit=N&after=ID&volume=V of the events listing.
func parseEventQuery(limit, after, volume string) (n int, afterID int64, err error) {
	n = defaultEventLimit
	if limit != "" {
		n, err = strconv.Atoi(limit)
		if err != nil || n < 1 {
			return 0, 0, invalid("limit=%q must be a positive number of events (at most %d)", limit, api.MaxEvents)
		}
		n = min(n, api.MaxEvents)
	}
	if after != "" {
		afterID, err = strconv.ParseInt(after, 10, 64)
		if err != nil || afterID < 0 {
			return 0, 0, invalid("after=%q must be an event ID (a non-negative integer) from an earlier answer", after)
		}
	}
	if volume != "" {
		if err := validateVolumeName(volume); err != nil {
			return 0, 0, err
		}
	}
	return n, afterID, nil
}

func validateChunkID(id string) error {
	if !uuidRE.MatchString(id) {
		return invalid("chunk id %q is not a UUID", id)
	}
	return nil
}

// parseID parses an ID from the URL path.
func parseID(kind, s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, invalid("%s id %q is not a positive integer", kind, s)
	}
	return id, nil
}

// parsePoll parses the long-poll parameters ?after=G&wait=D. wait is a Go
// duration ("30s") or a number of seconds; it is capped at api.MaxWait.
func parsePoll(after, wait string) (int64, time.Duration, error) {
	var g int64
	if after != "" {
		var err error
		g, err = strconv.ParseInt(after, 10, 64)
		if err != nil || g < 0 {
			return 0, 0, invalid("after=%q must be a generation (a non-negative integer) from an earlier answer", after)
		}
	}
	var d time.Duration
	if wait != "" {
		if secs, err := strconv.ParseFloat(wait, 64); err == nil {
			switch {
			case math.IsNaN(secs) || secs < 0:
				return 0, 0, invalid("wait=%q must be a non-negative duration such as 30s", wait)
			case secs >= api.MaxWait.Seconds():
				d = api.MaxWait
			default:
				d = time.Duration(secs * float64(time.Second))
			}
		} else if d, err = time.ParseDuration(wait); err != nil {
			return 0, 0, invalid("wait=%q must be a duration such as 30s", wait)
		}
		if d < 0 {
			return 0, 0, invalid("wait=%q must not be negative", wait)
		}
		d = min(d, api.MaxWait)
	}
	return g, d, nil
}

// describeSize formats a byte count for messages.
// approxSize writes n bytes rounded to three significant digits in the
// largest binary unit that keeps it at least 1 ("227 GiB", "1.50 TiB").
func approxSize(n int64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	switch {
	case i == 0:
		return fmt.Sprintf("%d bytes", n)
	case f >= 100:
		return fmt.Sprintf("%.0f %s", f, units[i])
	case f >= 10:
		return fmt.Sprintf("%.1f %s", f, units[i])
	}
	return fmt.Sprintf("%.2f %s", f, units[i])
}

func describeSize(n int64) string {
	const (
		kib = 1 << 10
		mib = 1 << 20
		gib = 1 << 30
		tib = 1 << 40
	)
	switch {
	case n >= tib && n%tib == 0:
		return fmt.Sprintf("%d TiB", n/tib)
	case n >= gib && n%gib == 0:
		return fmt.Sprintf("%d GiB", n/gib)
	case n >= mib && n%mib == 0:
		return fmt.Sprintf("%d MiB", n/mib)
	case n >= kib && n%kib == 0:
		return fmt.Sprintf("%d KiB", n/kib)
	}
	return fmt.Sprintf("%d bytes", n)
}

var (
	// iqnRE is an iqn. name in lower case: iqn.YYYY-MM.reversed.domain,
	// optionally followed by ':' and an identifier of visible characters.
	iqnRE = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[\x21-\x7e]+)?$`)
	// euiRE and naaRE are eui. (EUI-64) and naa. (NAA 64 or 128 bit) names
	// in upper case.
	euiRE = regexp.MustCompile(`^eui\.[0-9A-F]{16}$`)
	naaRE = regexp.MustCompile(`^naa\.([0-9A-F]{16}|[0-9A-F]{32})$`)
)

// canonicalISCSIName checks an iSCSI initiator name (RFC 7143 §4.2.7) and
// returns it in canonical form: iqn. names in lower case, eui. and naa.
// names with upper-case hex digits.
func canonicalISCSIName(s string) (string, error) {
	bad := func() error {
		return invalid("initiator name %q is not an iSCSI name: use iqn.YYYY-MM.reversed.domain[:identifier] (e.g. iqn.1994-05.com.redhat:client1), eui. and 16 hex digits, or naa. and 16 or 32 hex digits", s)
	}
	if len(s) > api.MaxISCSINameLen {
		return "", invalid("initiator name of %d bytes is too long: iSCSI names have at most %d", len(s), api.MaxISCSINameLen)
	}
	if len(s) < 4 {
		return "", bad()
	}
	var c string
	switch strings.ToLower(s[:4]) {
	case "iqn.":
		c = strings.ToLower(s)
		if !iqnRE.MatchString(c) {
			return "", bad()
		}
	case "eui.":
		c = "eui." + strings.ToUpper(s[4:])
		if !euiRE.MatchString(c) {
			return "", bad()
		}
	case "naa.":
		c = "naa." + strings.ToUpper(s[4:])
		if !naaRE.MatchString(c) {
			return "", bad()
		}
	default:
		return "", bad()
	}
	return c, nil
}

// canonicalISCSINames applies canonicalISCSIName to each name of a request
// field and drops repeats.
func canonicalISCSINames(field string, names []string) ([]string, error) {
	if len(names) > api.MaxAllowedInitiators {
		return nil, invalid("%s names %d initiators: an allowlist holds at most %d", field, len(names), api.MaxAllowedInitiators)
	}
	out := make([]string, 0, len(names))
	for _, n := range names {
		c, err := canonicalISCSIName(n)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// validateInitiatorsRequest checks a change of an allowlist and returns its
// names in canonical form.
func validateInitiatorsRequest(req api.InitiatorsRequest) (allow, disallow []string, err error) {
	if req.Clear {
		if len(req.Allow) > 0 || len(req.Disallow) > 0 {
			return nil, nil, invalid("clear empties the allowlist (every initiator may then log in): send it without allow and disallow")
		}
		return nil, nil, nil
	}
	if len(req.Allow) == 0 && len(req.Disallow) == 0 {
		return nil, nil, invalid("name initiators to allow or disallow, e.g. {\"allow\": [\"iqn.1994-05.com.redhat:client1\"]}, or send {\"clear\": true} to admit every initiator")
	}
	if allow, err = canonicalISCSINames("allow", req.Allow); err != nil {
		return nil, nil, err
	}
	if disallow, err = canonicalISCSINames("disallow", req.Disallow); err != nil {
		return nil, nil, err
	}
	for _, n := range allow {
		if slices.Contains(disallow, n) {
			return nil, nil, invalid("initiator %s is both allowed and disallowed: name it once", n)
		}
	}
	return allow, disallow, nil
}

// validateCHAPUser checks a CHAP name: 1 to 255 visible ASCII characters.
func validateCHAPUser(field, user string) error {
	if user == "" || len(user) > api.MaxCHAPUser {
		return invalid("%s must be a CHAP name of 1 to %d characters", field, api.MaxCHAPUser)
	}
	for i := 0; i < len(user); i++ {
		if c := user[i]; c < 0x21 || c > 0x7e {
			return invalid("%s %q: use visible ASCII characters only (no spaces), e.g. the initiator's name", field, user)
		}
	}
	return nil
}

// validateCHAPSecret checks a CHAP secret; its messages never quote it.
func validateCHAPSecret(field, secret string) error {
	if len(secret) < api.MinCHAPSecret || len(secret) > api.MaxCHAPSecret {
		return invalid("%s is %d bytes: CHAP secrets must be %d to %d bytes (RFC 7143 asks for at least 96 bits), e.g. from openssl rand -base64 12",
			field, len(secret), api.MinCHAPSecret, api.MaxCHAPSecret)
	}
	if !utf8.ValidString(secret) {
		return invalid("%s is not valid UTF-8 text", field)
	}
	for i := 0; i < len(secret); i++ {
		if c := secret[i]; c < 0x20 || c == 0x7f {
			return invalid("%s holds a control character at byte %d: CHAP secrets are text an initiator's configuration can hold (no line breaks)", field, i)
		}
	}
	return nil
}

// validateSetCHAP checks CHAP credentials: a user and secret, and for
// mutual CHAP a second user and a different secret.
func validateSetCHAP(req api.SetCHAPRequest) error {
	if err := validateCHAPUser("user", req.User); err != nil {
		return err
	}
	if err := validateCHAPSecret("secret", req.Secret); err != nil {
		return err
	}
	switch {
	case req.MutualUser == "" && req.MutualSecret == "":
		return nil
	case req.MutualUser == "":
		return invalid("mutual_secret needs mutual_user, the name the target answers with: give both for mutual CHAP, or neither")
	case req.MutualSecret == "":
		return invalid("mutual_user needs mutual_secret: give both for mutual CHAP, or neither")
	}
	if err := validateCHAPUser("mutual_user", req.MutualUser); err != nil {
		return err
	}
	if err := validateCHAPSecret("mutual_secret", req.MutualSecret); err != nil {
		return err
	}
	if req.MutualSecret == req.Secret {
		return invalid("mutual_secret equals secret: RFC 7143 forbids one CHAP secret in both directions; choose another")
	}
	return nil
}

// validateVolumeStats checks a volume's reported figures: finite and not
// negative, over a window of a positive length.
func validateVolumeStats(volume string, st *api.VolumeStats) error {
	if st == nil {
		return nil
	}
	for name, v := range map[string]float64{"window_seconds": st.WindowSeconds, "read_iops": st.ReadIOPS, "write_iops": st.WriteIOPS,
		"read_bytes_per_sec": st.ReadBytesPerSec, "write_bytes_per_sec": st.WriteBytesPerSec,
		"read_latency_mean_us": st.ReadLatencyMeanUs, "read_latency_p99_us": st.ReadLatencyP99Us,
		"write_latency_mean_us": st.WriteLatencyMeanUs, "write_latency_p99_us": st.WriteLatencyP99Us} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return invalid("volume %q: stats %s is %v: figures are finite and not negative", volume, name, v)
		}
	}
	if st.WindowSeconds == 0 || st.Errors < 0 {
		return invalid("volume %q: stats over a window of %vs with %d errors", volume, st.WindowSeconds, st.Errors)
	}
	return nil
}
