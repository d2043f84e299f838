package metaserver

import (
	"fmt"
	"math"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	// maxSetMembers bounds the members of one set in a report.
	maxSetMembers = 16
	// maxErrorLen bounds a member's stored error; longer ones are cut.
	maxErrorLen = 1024
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

// validateCreateVolume checks req and fills in its default bitmap mode.
func validateCreateVolume(req *api.CreateVolumeRequest) (layout, error) {
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
	if req.Bitmap, err = parseBitmap(req.Bitmap); err != nil {
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
	if req.ControlAddr != "" {
		if err := validateDialAddr("control_addr", req.ControlAddr); err != nil {
			return err
		}
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
				case api.MemberInSync, api.MemberDegraded, api.MemberResyncing:
				default:
					return invalid("volume %q chunk %s: unknown state %q: use %s, %s or %s",
						v.Name, m.ChunkID, m.State, api.MemberInSync, api.MemberDegraded, api.MemberResyncing)
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
