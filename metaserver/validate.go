package metaserver

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

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
)

func invalid(format string, args ...any) *api.Error {
	return api.Errorf(api.CodeInvalidArgument, format, args...)
}

// layout is a parsed volume layout.
type layout struct {
	Name  string // as in the API: "mirror:2"
	Width int    // members per set
}

// parseLayout accepts the layouts this metaserver can place.
func parseLayout(s string) (layout, error) {
	switch s {
	case "mirror:2":
		return layout{Name: s, Width: 2}, nil
	case "mirror:3":
		return layout{Name: s, Width: 3}, nil
	}
	return layout{}, invalid("unknown layout %q: use mirror:2 or mirror:3", s)
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

func validateCreateVolume(req api.CreateVolumeRequest) (layout, error) {
	if err := validateVolumeName(req.Name); err != nil {
		return layout{}, err
	}
	if err := validateVolumeSize(req.SizeBytes); err != nil {
		return layout{}, err
	}
	l, err := parseLayout(req.Layout)
	if err != nil {
		return layout{}, err
	}
	if req.Host != "" && !serverNameRE.MatchString(req.Host) {
		return layout{}, invalid("invalid host name %q: see GET /api/v1/hosts for the registered hosts", req.Host)
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
	return validateDialAddr("iscsi_addr", req.ISCSIAddr)
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
