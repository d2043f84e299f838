package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Member states beyond MemberInSync.
const (
	MemberDegraded  = "degraded"  // missed writes; not read; waits to come back
	MemberResyncing = "resyncing" // back, dirty regions being copied to it
	// MemberRebuilding: a new chunk that replaces a lost member, being
	// given every allocated extent of the set; never read, and only a
	// completed rebuild makes it in_sync.
	MemberRebuilding = "rebuilding"
)

// Bitmap modes of a volume (DESIGN §2, for comparison runs).
const (
	BitmapRemb     = "remb"     // default: host WIB in RAM, chunk LOG bitmaps
	BitmapInternal = "internal" // a synchronous bitmap write to every member before the data write
	BitmapNone     = "none"     // no bitmap: a returning member gets a full resync
)

// ExportName is what a host sends as the NBD export name to open a chunk:
// the chunk id, the host, the volume epoch and an access token, written as
//
//	<chunk>;host=<host>;epoch=<epoch>;token=<hex>
//	<chunk>;host=<host>;epoch=<epoch>;mode=ro;token=<hex>
//
// The token is HMAC-SHA256 over "chunk\x00host\x00epoch" (read-only:
// "chunk\x00host\x00epoch\x00ro") with the cluster secret; the chunkserver
// recomputes it and refuses a wrong token or an epoch below the chunk's
// fenced minimum. A read-only name opens the chunk read-only and cannot
// make a control call: the metaserver issues such names for volume verify.
type ExportName struct {
	Chunk    string
	Host     string
	Epoch    int64
	ReadOnly bool
	// Snapshot, when set, names a snapshot of the chunk: the export reads
	// it, read-only (ReadOnly is set too).
	Snapshot string
	Token    string // hex
}

// ErrBadExportName is returned by ParseExportName.
var ErrBadExportName = errors.New("bad export name")

// String formats the export name.
func (e ExportName) String() string {
	if e.Snapshot != "" {
		return fmt.Sprintf("%s;host=%s;epoch=%d;mode=ro;snap=%s;token=%s", e.Chunk, e.Host, e.Epoch, e.Snapshot, e.Token)
	}
	if e.ReadOnly {
		return fmt.Sprintf("%s;host=%s;epoch=%d;mode=ro;token=%s", e.Chunk, e.Host, e.Epoch, e.Token)
	}
	return fmt.Sprintf("%s;host=%s;epoch=%d;token=%s", e.Chunk, e.Host, e.Epoch, e.Token)
}

// ParseExportName parses the String form. A bare chunk id (no fields) is
// refused: every export needs an epoch and a token.
func ParseExportName(s string) (ExportName, error) {
	parts := strings.Split(s, ";")
	if len(parts) < 4 || len(parts) > 6 || parts[0] == "" {
		return ExportName{}, fmt.Errorf("%w %q: want <chunk>;host=H;epoch=N;token=T", ErrBadExportName, s)
	}
	e := ExportName{Chunk: parts[0]}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return ExportName{}, fmt.Errorf("%w %q: field %q has no '='", ErrBadExportName, s, p)
		}
		switch k {
		case "host":
			e.Host = v
		case "epoch":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1 {
				return ExportName{}, fmt.Errorf("%w %q: epoch %q", ErrBadExportName, s, v)
			}
			e.Epoch = n
		case "token":
			e.Token = v
		case "mode":
			if v != "ro" || e.ReadOnly {
				return ExportName{}, fmt.Errorf("%w %q: mode %q (only mode=ro, once)", ErrBadExportName, s, v)
			}
			e.ReadOnly = true
		case "snap":
			if !ValidSnapshotName(v) || e.Snapshot != "" {
				return ExportName{}, fmt.Errorf("%w %q: snap %q (a snapshot name, once)", ErrBadExportName, s, v)
			}
			e.Snapshot = v
		default:
			return ExportName{}, fmt.Errorf("%w %q: unknown field %q", ErrBadExportName, s, k)
		}
	}
	fields := 4
	if e.ReadOnly {
		fields++
	}
	if e.Snapshot != "" {
		fields++
	}
	if e.Host == "" || e.Epoch == 0 || e.Token == "" || len(parts) != fields || e.Snapshot != "" && !e.ReadOnly {
		return ExportName{}, fmt.Errorf("%w %q: host, epoch and token are required", ErrBadExportName, s)
	}
	return e, nil
}

// ExportToken computes the access token of (chunk, host, epoch) with the
// cluster secret (hex-encoded, as returned at registration).
func ExportToken(secretHex, chunk, host string, epoch int64) string {
	return exportToken(secretHex, fmt.Sprintf("%s\x00%s\x00%d", chunk, host, epoch))
}

// ReadOnlyExportToken computes the token of a read-only export name of
// (chunk, host, epoch).
func ReadOnlyExportToken(secretHex, chunk, host string, epoch int64) string {
	return exportToken(secretHex, fmt.Sprintf("%s\x00%s\x00%d\x00ro", chunk, host, epoch))
}

func exportToken(secretHex, msg string) string {
	key, err := hex.DecodeString(secretHex)
	if err != nil {
		key = []byte(secretHex)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// ValidSnapshotName reports whether s may name a snapshot: 1 to 63
// letters, digits, '.', '_' or '-', not starting with a punctuation mark.
func ValidSnapshotName(s string) bool { return snapshotNameRE.MatchString(s) }

var snapshotNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// SnapshotExportToken computes the token of an export name that reads
// snapshot snap of (chunk, host, epoch).
func SnapshotExportToken(secretHex, chunk, host string, epoch int64, snap string) string {
	return exportToken(secretHex, fmt.Sprintf("%s\x00%s\x00%d\x00ro\x00%s", chunk, host, epoch, snap))
}

// ValidToken reports whether e carries the right token for secretHex.
func (e ExportName) ValidToken(secretHex string) bool {
	want := ExportToken(secretHex, e.Chunk, e.Host, e.Epoch)
	switch {
	case e.Snapshot != "":
		want = SnapshotExportToken(secretHex, e.Chunk, e.Host, e.Epoch, e.Snapshot)
	case e.ReadOnly:
		want = ReadOnlyExportToken(secretHex, e.Chunk, e.Host, e.Epoch)
	}
	return hmac.Equal([]byte(want), []byte(e.Token))
}

// ControlRequest is the body of a call to the chunkserver control API
// (HTTP, on the chunkserver's control address). Every request carries the same credentials as an export: chunk (in the
// path), host, epoch and token.
//
//	POST /v1/chunks/{chunk}/fence   ControlRequest → ControlResponse
//	    raise the chunk's minimum epoch to Epoch (persisted), close every
//	    NBD connection opened with an older epoch and wait until their
//	    in-flight requests have finished.
//	POST /v1/chunks/{chunk}/pin     ControlRequest → ControlResponse
//	    the chunk's LOG bitmap stops forgetting until unpinned.
//	POST /v1/chunks/{chunk}/unpin   ControlRequest → ControlResponse
//	GET  /v1/chunks/{chunk}/log?host=H&epoch=N&token=T → LogBitmap
//	PUT  /v1/chunks/{chunk}/intent  IntentRequest → ControlResponse
//	    bitmap mode internal: store the host's whole write-intent bitmap
//	    durably (one write and fdatasync) before answering.
//	GET  /v1/chunks/{chunk}/intent?host=H&epoch=N&token=T → LogBitmap
//	    the stored intent bitmap (no bits if none was stored).
type ControlRequest struct {
	Host  string `json:"host"`
	Epoch int64  `json:"epoch"`
	Token string `json:"token"`
	// PinGen orders a host's pin and unpin calls for a chunk: a call whose
	// (Epoch, PinGen) is not above the last pin or unpin applied to the
	// chunk is stale (an unpin that timed out on the host and lands after
	// the next pin) and changes nothing. 0 is unordered: always applied.
	PinGen uint64 `json:"pin_gen,omitempty"`
}

// PinRequest pins the LOG bitmaps of several chunks of one chunkserver in
// one control call (POST /v1/pins): a host records a failure that degraded
// many sets at once with one call per survivor chunkserver. Each pin
// carries the credentials (and order) of a single pin.
type PinRequest struct {
	Pins []ChunkPin `json:"pins"`
}

// ChunkPin is one chunk's pin in a PinRequest.
type ChunkPin struct {
	Chunk string `json:"chunk"`
	ControlRequest
}

// MaxPins is the most pins one PinRequest may carry.
const MaxPins = 10000

// PinResponse answers a PinRequest with each chunk's state after it, in the
// request's order. A call fails whole when any pin fails (some may be
// pinned: a pin is safe to repeat).
type PinResponse struct {
	Chunks []ControlResponse `json:"chunks"`
}

// SnapshotRequest takes or deletes snapshot Name of several chunks of one
// chunkserver in one control call, each chunk with its own credentials:
//
//	POST /v1/snapshots         take it: each chunk is synced and records
//	    the snapshot (a chunk that has one of that name already is left as
//	    it is, so that a call may be repeated)
//	POST /v1/snapshots/delete  delete it (a chunk without it is left)
//
// A call fails whole when any chunk fails (the chunks before it are done).
type SnapshotRequest struct {
	Name   string     `json:"name"`
	Chunks []ChunkPin `json:"chunks"`
}

// SnapshotResponse answers a SnapshotRequest: how long the chunkserver
// took in all, in µs.
type SnapshotResponse struct {
	TookMicros int64 `json:"took_us"`
}

// ChunkSnapshots answers GET /v1/chunks/{chunk}/snapshots (credentials in
// the query, as for the LOG): the chunk's snapshots, oldest first.
type ChunkSnapshots struct {
	Snapshots []ChunkSnapshot `json:"snapshots"`
}

// ChunkSnapshot is one snapshot of a chunk.
type ChunkSnapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Changed, when asked for (changed=1), maps the blocks of Block bytes
	// (bit b LSB first) the chunk changed after the snapshot and before
	// the next one (or now, for the newest): where the next snapshot may
	// differ from it.
	Block   int64  `json:"block,omitempty"`
	Changed []byte `json:"changed,omitempty"`
}

// IntentRequest carries a host's write-intent bitmap (bitmap mode
// internal): bit i covers bytes [i*RegionSize, (i+1)*RegionSize) of the
// chunk, LSB first in byte i/8.
type IntentRequest struct {
	ControlRequest
	RegionSize int64  `json:"region_size"`
	Bits       []byte `json:"bits"`
}

// ControlResponse answers a control call with the chunk's state after it.
type ControlResponse struct {
	MinEpoch int64 `json:"min_epoch"`
	Pinned   bool  `json:"pinned"`
}

// LogBitmap is a chunk's LOG bitmap, current|history: bit i (LSB first in
// byte i/8) covers bytes [i*RegionSize, (i+1)*RegionSize) of the chunk.
// The control API answers with the LOG's fine copy (1 MiB regions, kept in
// the chunkserver's memory): exact for the writes the chunkserver process
// saw, whole LOG regions for those it restored from its sidecar.
type LogBitmap struct {
	RegionSize int64  `json:"region_size"`
	Size       int64  `json:"size"`
	Bits       []byte `json:"bits"`
	Pinned     bool   `json:"pinned"`
}

// HostReport is POSTed by a hostd to /api/v1/hosts/{id}/report whenever the
// state of an attached volume changes and every few seconds while a resync
// runs. The metaserver stores member states (with the time they changed)
// and progress, and records an event for every state change.
type HostReport struct {
	Volumes []VolumeReport `json:"volumes"`
}

// VolumeReport is the state of one attached volume on its host.
type VolumeReport struct {
	Name  string      `json:"name"`
	Epoch int64       `json:"epoch"`
	Sets  []SetReport `json:"sets"`
	// CleanDetach is set once, when the host detached the volume cleanly
	// (every write flushed to every member, nothing dirty).
	CleanDetach bool `json:"clean_detach,omitempty"`
	// Incarnation is the host's registration that sent the report
	// (RegisterHostResponse.Incarnation), and Seq numbers the states that
	// registration reports, increasing from 1. Reports of one volume at one
	// epoch are ordered by (Incarnation, Seq): the metaserver ignores one
	// not above the last it applied, so a late report never overwrites a
	// newer state, and a restarted host's reports order after the earlier
	// ones whatever its clock says. A report of an earlier incarnation than
	// the host's current one is ignored; one of a later incarnation than
	// the metaserver issued is refused. Seq 0 means unnumbered: always
	// applied.
	Incarnation int64 `json:"incarnation,omitempty"`
	Seq         int64 `json:"seq,omitempty"`
	// Stats are the volume's recent figures, over the time since the
	// previous report that had them; the host's periodic reports carry
	// them.
	Stats *VolumeStats `json:"stats,omitempty"`
}

// VolumeStats are a volume's recent I/O figures as its host measured them
// at its iSCSI target, over WindowSeconds: operations and bytes per second,
// and the mean and 99th percentile latency (to the bucket: 50 µs, doubling)
// of reads and writes in microseconds; Errors counts the operations that
// failed in the window.
type VolumeStats struct {
	WindowSeconds      float64 `json:"window_seconds"`
	ReadIOPS           float64 `json:"read_iops"`
	WriteIOPS          float64 `json:"write_iops"`
	ReadBytesPerSec    float64 `json:"read_bytes_per_sec"`
	WriteBytesPerSec   float64 `json:"write_bytes_per_sec"`
	ReadLatencyMeanUs  float64 `json:"read_latency_mean_us"`
	ReadLatencyP99Us   float64 `json:"read_latency_p99_us"`
	WriteLatencyMeanUs float64 `json:"write_latency_mean_us"`
	WriteLatencyP99Us  float64 `json:"write_latency_p99_us"`
	Errors             int64   `json:"errors"`
	// Throttled is the commands that waited for the volume's I/O limits
	// (QoS) in the window, ThrottledSeconds their total wait, and Busy the
	// commands answered TASK SET FULL for waiting longer than the cap.
	Throttled        int64   `json:"throttled"`
	ThrottledSeconds float64 `json:"throttled_seconds"`
	Busy             int64   `json:"busy"`
}

// VolumeStatsReport answers GET /api/v1/volumes/{name}/stats: the latest
// figures its host reported, by which host and when. Stats is nil when no
// host has reported any (the volume is not attached, or was just).
type VolumeStatsReport struct {
	Volume     string       `json:"volume"`
	Host       string       `json:"host,omitempty"`
	ReportedAt *time.Time   `json:"reported_at,omitempty"`
	Stats      *VolumeStats `json:"stats,omitempty"`
}

// SetReport is the state of one set of an attached volume.
type SetReport struct {
	Index      int            `json:"index"`
	DirtyBytes int64          `json:"dirty_bytes"` // bytes the WIB marks dirty
	Members    []MemberReport `json:"members"`
	// Reconcile is the set's resync while every member is in sync: the
	// regions an unclean stop left dirty (a host crash) are made equal on
	// every member. Absent when none ran since the attach.
	Reconcile *SetReconcile `json:"reconcile,omitempty"`
	// FullResync: a region may differ between the members that no pinned
	// LOG bitmap records (the pins of a degradation record failed): a host
	// that attaches after an unclean stop must resync the whole set. The
	// host clears it once the set is whole again.
	FullResync bool `json:"full_resync,omitempty"`
}

// SetReconcile is the progress of a set's reconciling resyncs.
type SetReconcile struct {
	Running    bool  `json:"running"`
	DoneBytes  int64 `json:"done_bytes"`  // of the running one, or the last one
	TotalBytes int64 `json:"total_bytes"` // of the running one, or the last one
	// Finished counts the ones finished since the host attached the
	// volume; each finished one is an event.
	Finished int64 `json:"finished"`
}

// MemberReport is the state of one member as its host sees it.
type MemberReport struct {
	ChunkID string `json:"chunk_id"`
	State   string `json:"state"` // MemberInSync, MemberDegraded, MemberResyncing
	// Resync progress while State is MemberResyncing (and the totals of the
	// last resync afterwards).
	ResyncDoneBytes  int64  `json:"resync_done_bytes,omitempty"`
	ResyncTotalBytes int64  `json:"resync_total_bytes,omitempty"`
	Error            string `json:"error,omitempty"` // why it is degraded
	// SeenGen is the highest Member.StateGen of this member the host had
	// seen. A report that says MemberInSync for a member the metaserver
	// marked at a later generation is not applied to it: the host had not
	// yet heard that the member may have missed writes.
	SeenGen int64 `json:"seen_gen,omitempty"`
	// RebuildWatermark, for a member being rebuilt, is how far the
	// rebuild has durably got (Member.RebuildWatermark); it only grows.
	RebuildWatermark int64 `json:"rebuild_watermark,omitempty"`
}

// Event is one state change of the cluster.
type Event struct {
	ID      int64     `json:"id"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`    // e.g. member_degraded, resync_started, resync_done, volume_attached, chunkserver_offline
	Subject string    `json:"subject"` // e.g. volume/demo/set/0/member/1, chunkserver/cs1
	Volume  string    `json:"volume,omitempty"`
	// Server is the chunkserver (or host) the event concerns, if any: the
	// member's chunkserver for a member's event.
	Server string `json:"server,omitempty"`
	// Bytes is what a resync or rebuild copied (resync_done, rebuild_done).
	Bytes   int64  `json:"bytes,omitempty"`
	Message string `json:"message"`
}
