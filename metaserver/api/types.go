// Package api holds the JSON wire types of the metaserver's REST API under
// /api/v1 and a client for it. It imports only the standard library so that
// every daemon and the CLI can share it.
package api

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Error is the one error envelope of the API: every non-2xx response carries
// it as its body. Code is stable and machine-readable; Message says what to do.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Status is the HTTP status the error arrived with (client side only).
	Status int `json:"-"`
}

// Stable error codes.
const (
	CodeInvalidArgument = "invalid_argument" // 400
	CodeNotFound        = "not_found"        // 404
	CodeAlreadyExists   = "already_exists"   // 409
	CodeUnsatisfiable   = "unsatisfiable"    // 409: the cluster cannot place the layout
	CodeConflict        = "conflict"         // 409
	CodeInternal        = "internal"         // 500
	CodeUnavailable     = "unavailable"      // 503
	// CodeUnauthenticated: no token, or one the metaserver does not know.
	CodeUnauthenticated = "unauthenticated" // 401
	// CodePermissionDenied: a valid token whose role may not do this.
	CodePermissionDenied = "permission_denied" // 403
	// CodeResourceExhausted: the caller holds as much as one caller may
	// (long polls); retry once one ends.
	CodeResourceExhausted = "resource_exhausted" // 429
)

// Token roles. An admin may call every operator route, a reader only the
// ones that change nothing; a join token admits a new chunkserver or host,
// which gets a credential of its own (role chunkserver or host) that only
// its own routes take.
const (
	RoleAdmin       = "admin"
	RoleReader      = "reader"
	RoleJoin        = "join"
	RoleChunkserver = "chunkserver"
	RoleHost        = "host"
)

// IssueCertificateRequest is the body of POST /api/v1/certificates: the
// cluster CA signs a certificate of Role (only RoleMetaserverCert: the
// chunkservers get theirs at registration) for the host names and
// addresses of Names, with the key of CSR (a PEM certificate request; the
// key stays with the caller).
type IssueCertificateRequest struct {
	Role  string   `json:"role"`
	Names []string `json:"names"`
	CSR   string   `json:"csr"`
}

// RoleMetaserverCert is the role of a certificate that serves the API.
const RoleMetaserverCert = "metaserver"

// MaxCertificateNames bounds IssueCertificateRequest.Names.
const MaxCertificateNames = 32

// IssuedCertificate answers POST /api/v1/certificates.
type IssuedCertificate struct {
	Certificate string    `json:"certificate"` // PEM
	ClusterCA   string    `json:"cluster_ca"`  // PEM
	Names       []string  `json:"names"`
	NotAfter    time.Time `json:"not_after"`
}

// CreateTokenRequest is the body of POST /api/v1/tokens.
type CreateTokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// Principal is who a token belongs to: GET /api/v1/whoami answers it to
// any operator token (a daemon checks a scraper's token with it).
type Principal struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// Token describes an API token; Secret is set only in the answer to its
// creation, the one time it is shown.
type Token struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	Secret    string    `json:"token,omitempty"`
}

// Server states, computed from heartbeats.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// Chunk states.
const (
	ChunkActive   = "active"   // the chunkserver must hold this chunk
	ChunkDeleting = "deleting" // the chunkserver must delete it, then acknowledge
)

// Member states.
const (
	MemberInSync = "in_sync"
)

// DiskInfo is what a chunkserver reports about one of its disks.
type DiskInfo struct {
	Path          string `json:"path"`
	CapacityBytes int64  `json:"capacity_bytes"`
	FreeBytes     int64  `json:"free_bytes"`
	// AllocatedBytes is what the chunk files on the disk take (their
	// allocated blocks: chunks are thin).
	AllocatedBytes int64 `json:"allocated_bytes,omitempty"`
	// OutOfSpace says the chunkserver refused a write to this disk for lack
	// of space since its free space last measured above the nearly-full
	// mark: the disk counts as full whatever FreeBytes says.
	OutOfSpace bool `json:"out_of_space,omitempty"`
}

// RegisterChunkserverRequest is POSTed to /api/v1/chunkservers. Registering
// again under the same name updates the address and disks and keeps the ID.
type RegisterChunkserverRequest struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // NBD host:port
	// ControlAddr is the host:port of the chunkserver's control HTTP API
	// (fence, pin, LOG bitmaps: see ControlRequest); empty if it has none.
	ControlAddr string `json:"control_addr,omitempty"`
	// ControlCSR is a PEM certificate request (pki.NewRequest) for the
	// control API's TLS key, made afresh at each start; required with
	// ControlAddr. The answer's ControlCert is signed for ControlAddr's host.
	ControlCSR  string     `json:"control_csr,omitempty"`
	FaultDomain string     `json:"fault_domain"` // empty: the name
	Disks       []DiskInfo `json:"disks"`
}

// RegisterChunkserverResponse answers a registration.
type RegisterChunkserverResponse struct {
	ID        int64 `json:"id"`
	ChunkSize int64 `json:"chunk_size"`
	// ClusterSecret (hex) verifies export and control tokens (ExportToken).
	// Only chunkservers receive it.
	ClusterSecret string `json:"cluster_secret"`
	// Credential is the chunkserver's own token, issued at its first
	// registration with a join token (empty otherwise): it keeps it and
	// sends it on every later call.
	Credential string `json:"credential,omitempty"`
	// IOTimeoutMS is t_io, the longest a member request may be in flight.
	IOTimeoutMS int64 `json:"io_timeout_ms"`
	// LogPeriodMS is T, the rotation period of the chunks' LOG bitmaps.
	LogPeriodMS int64 `json:"log_period_ms"`
	// ControlCert is the control API's certificate (PEM), signed by the
	// cluster CA for ControlCSR's key.
	ControlCert string `json:"control_cert,omitempty"`
	// ClusterCA is the cluster CA's certificate (PEM).
	ClusterCA string `json:"cluster_ca"`
}

// ChunkserverHeartbeat is POSTed to /api/v1/chunkservers/{id}/heartbeat.
type ChunkserverHeartbeat struct {
	Disks []DiskInfo `json:"disks"`
	// FailedChunks are the chunks the chunkserver no longer serves: failed
	// after a durability error, or quarantined at start. The metaserver
	// records them (an event when one fails) and shows them.
	FailedChunks []FailedChunk `json:"failed_chunks,omitempty"`
}

// FailedChunk is a chunk a chunkserver reports failed or quarantined.
type FailedChunk struct {
	ID          string `json:"id"`
	Quarantined bool   `json:"quarantined,omitempty"`
	Reason      string `json:"reason"`
}

// ChunkAssignment is one chunk a chunkserver must hold or delete.
type ChunkAssignment struct {
	ID        string `json:"id"`
	SizeBytes int64  `json:"size_bytes"`
	State     string `json:"state"` // ChunkActive or ChunkDeleting
	// Base and BaseSnapshot make the chunk a writable clone of snapshot
	// BaseSnapshot of chunk Base, which the same chunkserver holds: it
	// reads what it has not written from there (a clone volume's member).
	Base         string `json:"base,omitempty"`
	BaseSnapshot string `json:"base_snapshot,omitempty"`
}

// ChunkAssignments is the answer to GET /api/v1/chunkservers/{id}/chunks.
// Generation changes whenever the assignments may have changed; pass it back
// as ?after=G&wait=30s to long-poll for the next change.
type ChunkAssignments struct {
	Generation int64             `json:"generation"`
	ChunkSize  int64             `json:"chunk_size"`
	Chunks     []ChunkAssignment `json:"chunks"`
}

// Chunkserver is a registered chunkserver as listed by the API.
type Chunkserver struct {
	ID            int64     `json:"id"`
	Name          string    `json:"name"`
	Addr          string    `json:"addr"`
	ControlAddr   string    `json:"control_addr,omitempty"`
	FaultDomain   string    `json:"fault_domain"`
	State         string    `json:"state"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	CapacityBytes int64     `json:"capacity_bytes"`
	FreeBytes     int64     `json:"free_bytes"`
	Chunks        int       `json:"chunks"`
	// Full: every disk of the chunkserver is nearly full (less free than
	// 1% of its capacity, at most 1 GiB): new chunks go elsewhere, and its
	// chunks' writes may fail for want of space.
	Full bool `json:"full,omitempty"`
	// Draining: chunkraid server drain moves its members to other
	// chunkservers; Members is how many set members it still holds.
	Draining bool `json:"draining,omitempty"`
	Members  int  `json:"members"`
}

// DrainResponse answers POST /api/v1/chunkservers/{name}/drain.
type DrainResponse struct {
	Chunkserver string `json:"chunkserver"`
	// Members is how many set members it holds, each to move.
	Members int      `json:"members"`
	Volumes []string `json:"volumes"`
}

// Disk is one disk of a chunkserver as listed by the API.
type Disk struct {
	ID            int64  `json:"id"`
	Chunkserver   string `json:"chunkserver"`
	Path          string `json:"path"`
	CapacityBytes int64  `json:"capacity_bytes"`
	FreeBytes     int64  `json:"free_bytes"`
	Chunks        int    `json:"chunks"`
	FailedChunks  int    `json:"failed_chunks"`
}

// Chunk is one chunk as listed by the API.
type Chunk struct {
	ID          string `json:"id"`
	Chunkserver string `json:"chunkserver"`
	Volume      string `json:"volume,omitempty"`
	SetIndex    int    `json:"set_index"`
	MemberIndex int    `json:"member_index"`
	SizeBytes   int64  `json:"size_bytes"`
	State       string `json:"state"`
	// Failed is why its chunkserver no longer serves the chunk; "" while
	// it is healthy.
	Failed string `json:"failed,omitempty"`
}

// RegisterHostRequest is POSTed to /api/v1/hosts. Registering again under the
// same name updates the address and keeps the ID.
type RegisterHostRequest struct {
	Name      string `json:"name"`
	ISCSIAddr string `json:"iscsi_addr"` // host:port the iSCSI target listens on
	// MetricsAddr is where the host serves its metrics (--metrics-listen),
	// if it does, and MetricsCSR a PEM certificate request for that TLS
	// key: the answer's MetricsCert is signed for MetricsAddr's host.
	MetricsAddr string `json:"metrics_addr,omitempty"`
	MetricsCSR  string `json:"metrics_csr,omitempty"`
}

// RegisterHostResponse answers a host registration.
type RegisterHostResponse struct {
	ID int64 `json:"id"`
	// Incarnation numbers this registration of the host: each one is
	// above every earlier one. The host puts it in its reports
	// (VolumeReport.Incarnation).
	Incarnation int64 `json:"incarnation"`
	// IOTimeoutMS and LogPeriodMS are as in RegisterChunkserverResponse.
	IOTimeoutMS int64 `json:"io_timeout_ms"`
	LogPeriodMS int64 `json:"log_period_ms"`
	// Credential is as in RegisterChunkserverResponse, for the host.
	Credential string `json:"credential,omitempty"`
	// ClusterCA is the cluster CA's certificate (PEM): the host verifies
	// the chunkservers' control API with it.
	ClusterCA string `json:"cluster_ca"`
	// MetricsCert is the metrics listener's certificate (PEM), signed by
	// the cluster CA for MetricsCSR's key.
	MetricsCert string `json:"metrics_cert,omitempty"`
}

// Host is a registered hostd as listed by the API.
type Host struct {
	ID            int64     `json:"id"`
	Name          string    `json:"name"`
	ISCSIAddr     string    `json:"iscsi_addr"`
	State         string    `json:"state"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
}

// Member is one chunk of a set, with what a host needs to reach it and the
// state its host last reported.
type Member struct {
	ChunkID     string `json:"chunk_id"`
	Chunkserver string `json:"chunkserver"`
	Addr        string `json:"addr"`                   // chunkserver NBD host:port
	ControlAddr string `json:"control_addr,omitempty"` // chunkserver control API host:port
	// Export is an NBD export name (the String form of an ExportName),
	// set in two answers only: to the volume's host (HostVolumes), for that
	// host at the volume's epoch; and to ReadExports, read-only. The
	// operator routes never carry one.
	Export string `json:"export,omitempty"`
	// State is MemberInSync (the default), MemberDegraded or
	// MemberResyncing, since StateSince.
	State      string    `json:"state"`
	StateSince time.Time `json:"state_since"`
	// ResyncDoneBytes of ResyncTotalBytes have been copied by the running
	// (or the last) resync.
	ResyncDoneBytes  int64  `json:"resync_done_bytes"`
	ResyncTotalBytes int64  `json:"resync_total_bytes"`
	Error            string `json:"error,omitempty"` // why it is degraded
	// StateGen is the cluster generation at which the metaserver itself
	// last set State (0: only hosts ever have): the failure detector marks
	// the members of an offline chunkserver degraded. A host that sees a
	// StateGen above the one it has seen fails the member if it still
	// has it in sync, and sends the new StateGen back as
	// MemberReport.SeenGen.
	StateGen int64 `json:"state_gen,omitempty"`
	// RebuildWatermark, for a rebuilding member, is the set offset below
	// which its rebuild has copied every allocated extent durably; a host
	// that takes the rebuild over begins there.
	RebuildWatermark int64 `json:"rebuild_watermark,omitempty"`
	// Replaces, on a member a drain added, is the chunk of the member it
	// succeeds: it gets that member's writes, is rebuilt as a copy of it,
	// and takes its place once in sync. An erasure-coded set's successor
	// holds that member's units, not a position of its own.
	Replaces string `json:"replaces,omitempty"`
	// ChunkFailed is why the member's chunkserver no longer serves its
	// chunk (failed or quarantined); "" while the chunk is healthy.
	ChunkFailed string `json:"chunk_failed,omitempty"`
}

// Set is one RAID set of a volume; sets are concatenated in Index order.
// SizeBytes is the part of the volume the set holds: the chunk size for every
// set but the last, which holds the rest, so the sizes add up to the volume's
// size. Every member chunk is a full chunk regardless.
type Set struct {
	Index     int   `json:"index"`
	SizeBytes int64 `json:"size_bytes"`
	// DirtyBytes is what the host's write-intent bitmap marks dirty, as
	// last reported.
	DirtyBytes int64    `json:"dirty_bytes"`
	Members    []Member `json:"members"`
	// Reconciling is set while the set's members, all in sync, are made
	// equal in the regions an unclean stop left dirty (a host crash), with
	// the progress of that resync.
	Reconciling         bool  `json:"reconciling,omitempty"`
	ReconcileDoneBytes  int64 `json:"reconcile_done_bytes,omitempty"`
	ReconcileTotalBytes int64 `json:"reconcile_total_bytes,omitempty"`
	// FullResync: the next attach after an unclean stop resyncs the whole
	// set (api.SetReport.FullResync).
	FullResync bool `json:"full_resync,omitempty"`
}

// Volume is a volume with its layout, placement and attachment.
type Volume struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	// RawBytes is what the volume's chunks take on the chunkservers when
	// full: chunks × chunk size (chunks are thin, so less is in use until
	// written). SizeBytes/RawBytes is the volume's storage efficiency.
	RawBytes int64  `json:"raw_bytes"`
	Layout   string `json:"layout"` // "mirror:2", "mirror:3" or "ec:K+M" (see ParseLayout)
	// StripeUnit is the bytes of one EC stripe on one member; 0 for mirrors.
	StripeUnit int64  `json:"stripe_unit"`
	Bitmap     string `json:"bitmap"` // BitmapRemb, BitmapInternal or BitmapNone
	Host       string `json:"host,omitempty"`
	Epoch      int64  `json:"epoch"`
	// CleanDetach is true when Host reported a clean detach at Epoch (every
	// write on every member, nothing dirty); an attach resets it.
	CleanDetach bool      `json:"clean_detach"`
	IQN         string    `json:"iqn"`
	CreatedAt   time.Time `json:"created_at"`
	// Auth is the volume's iSCSI access control. Its secrets are filled in
	// only in HostVolumes, for the host the volume is attached to.
	Auth VolumeAuth `json:"auth"`
	// QoS is the volume's I/O limits; zero limits nothing.
	QoS QoS `json:"qos"`
	// Snapshots are the volume's snapshots, oldest first.
	Snapshots []Snapshot `json:"snapshots"`
	// CloneOf is "VOLUME@SNAPSHOT" for a writable clone of that snapshot
	// (its chunks share the blocks it has not written); "" otherwise.
	CloneOf string `json:"clone_of,omitempty"`
	Sets    []Set  `json:"sets"`
}

// CreateVolumeRequest is POSTed to /api/v1/volumes.
type CreateVolumeRequest struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	Layout    string `json:"layout"`
	// StripeUnit is the stripe unit of an ec:K+M layout: a power of two
	// from MinStripeUnit to MaxStripeUnit that divides the chunk size; 0
	// means DefaultStripeUnit. It is ignored for mirrors.
	StripeUnit int64 `json:"stripe_unit,omitempty"`
	// Bitmap is BitmapRemb (also when empty), BitmapInternal or BitmapNone.
	Bitmap string `json:"bitmap,omitempty"`
	Host   string `json:"host,omitempty"` // attach at once to this host
	// QoS is the volume's I/O limits (see QoS.Normalize); none when zero.
	QoS QoS `json:"qos,omitzero"`
}

// ResizeVolumeRequest is POSTed to /api/v1/volumes/{name}/resize: the new
// size, a multiple of 4096 and not below the current one (volumes grow,
// never shrink).
type ResizeVolumeRequest struct {
	SizeBytes int64 `json:"size_bytes"`
}

// AttachVolumeRequest is POSTed to /api/v1/volumes/{name}/attach.
type AttachVolumeRequest struct {
	Host string `json:"host"`
}

// HostVolumes is the answer to GET /api/v1/hosts/{id}/volumes: the volumes
// assigned to the host, complete with members. Generation works as in
// ChunkAssignments.
type HostVolumes struct {
	Generation int64    `json:"generation"`
	Volumes    []Volume `json:"volumes"`
	// Elsewhere are the volumes other hosts serve: the host redirects a
	// login for one of them to its portal and lists them in SendTargets,
	// so an initiator configured with any portal finds every volume.
	Elsewhere []ServedElsewhere `json:"elsewhere"`
	// SnapshotTargets are the snapshots the host serves read-only.
	SnapshotTargets []SnapshotTarget `json:"snapshot_targets"`
}

// ServedElsewhere is a volume, or a snapshot of one, served by another
// host (HostVolumes).
type ServedElsewhere struct {
	Volume   string `json:"volume"`
	Snapshot string `json:"snapshot,omitempty"`
	IQN      string `json:"iqn"`
	Host     string `json:"host"`
	// Portal is the serving host's iSCSI address, host:port.
	Portal            string   `json:"portal"`
	AllowedInitiators []string `json:"allowed_initiators"`
}

// IQNPrefix is the prefix of every volume's iSCSI target name.
const IQNPrefix = "iqn.2026-11.io.chunkraid:"

// Cluster is the answer to GET /api/v1/cluster.
type Cluster struct {
	// ChunkSize is fixed when the cluster is created; a metaserver started
	// later with another --chunk-size keeps this one and logs a warning.
	ChunkSize int64 `json:"chunk_size"`
	// Generation is the current value of the change counter of the long polls.
	Generation    int64     `json:"generation"`
	CreatedAt     time.Time `json:"created_at"`
	SchemaVersion int       `json:"schema_version"`
	// OfflineAfterSeconds is how long a server may miss heartbeats before it
	// is listed offline.
	OfflineAfterSeconds float64 `json:"offline_after_seconds"`
	// The timeout budget of DESIGN §5 in milliseconds: t_io (hostd fails a
	// member request not answered within it), offline_after, and T (the
	// chunk LOG bitmaps rotate every T). The metaserver refuses to start
	// unless t_io < offline_after < T and T >= 3·t_io.
	IOTimeoutMS    int64 `json:"io_timeout_ms"`
	OfflineAfterMS int64 `json:"offline_after_ms"`
	LogPeriodMS    int64 `json:"log_period_ms"`
	// ReplaceAfterMS: a member whose chunkserver has been offline this
	// long is replaced by a new chunk and rebuilt (above T).
	ReplaceAfterMS int64 `json:"replace_after_ms"`
	// RawCapacityBytes and RawFreeBytes add up the disks of the online
	// chunkservers as they last reported them.
	RawCapacityBytes int64 `json:"raw_capacity_bytes"`
	RawFreeBytes     int64 `json:"raw_free_bytes"`
	// ProvisionedBytes is chunks × chunk size over every chunk the
	// chunkservers hold, including those being deleted. Chunks are thin:
	// this is what they may grow to, not what is written.
	ProvisionedBytes int64 `json:"provisioned_bytes"`
	// AllocatedBytes is what the chunk files take on the online
	// chunkservers' disks, as they last reported it.
	AllocatedBytes int64 `json:"allocated_bytes"`
	// Overcommit is the metaserver's --overcommit, and ProvisionableBytes
	// the raw size a new volume may still take under it:
	// Overcommit × RawFreeBytes − (ProvisionedBytes − AllocatedBytes),
	// at least 0 (the space promised to chunks but not yet written counts
	// as taken).
	Overcommit         float64 `json:"overcommit"`
	ProvisionableBytes int64   `json:"provisionable_bytes"`
}

// Event kinds recorded by the metaserver (see Event).
const (
	EventVolumeCreated  = "volume_created"
	EventVolumeDeleted  = "volume_deleted"
	EventVolumeAttached = "volume_attached"
	EventVolumeDetached = "volume_detached" // a clean detach reported by the host
	EventVolumeResized  = "volume_resized"
	EventMemberDegraded = "member_degraded"
	EventResyncStarted  = "resync_started"
	EventResyncDone     = "resync_done"
	EventMemberInSync   = "member_in_sync" // back in sync without a resync
	// EventMemberReplaced: a member whose chunkserver stayed offline for
	// replace_after was replaced by a new chunk, which is being rebuilt;
	// EventRebuildDone: that rebuild completed; EventReplaceBlocked: no
	// online chunkserver in a fault domain the set does not use can take
	// the replacement (said once per member).
	EventMemberReplaced     = "member_replaced"
	EventRebuildDone        = "rebuild_done"
	EventReplaceBlocked     = "replace_blocked"
	EventChunkserverOffline = "chunkserver_offline"
	EventChunkserverOnline  = "chunkserver_online"
	EventChunkserverRemoved = "chunkserver_removed" // chunkraid server remove
	// EventChunkserverDraining: chunkraid server drain began; then one
	// EventMemberMoving per member (its successor placed, being rebuilt),
	// one EventMemberMoved when the successor took its place, and
	// EventChunkserverDrained when it holds no member any more.
	EventChunkserverDraining = "chunkserver_draining"
	EventMemberMoving        = "member_moving"
	EventMemberMoved         = "member_moved"
	EventChunkserverDrained  = "chunkserver_drained"
	EventChunkFailed         = "chunk_failed" // its chunkserver reported it failed or quarantined
	// EventHostFailover: a volume whose host had no heartbeat for
	// host_failover_after was attached to a live host; its Server is the
	// new host and its message names both. EventHostFailoverBlocked: no
	// live host could take it (said once per volume, retried).
	EventHostFailover        = "host_failover"
	EventHostFailoverBlocked = "host_failover_blocked"
)

// MaxEvents caps the events one GET /api/v1/events returns (?limit=).
const MaxEvents = 1000

// MaxWait caps the wait of a long poll (?wait=); longer waits are shortened.
const MaxWait = 60 * time.Second

// Layout kinds (Layout.Kind).
const (
	LayoutMirror = "mirror"
	LayoutEC     = "ec"
)

// Limits of the layouts and EC stripe units the metaserver accepts.
const (
	MinECData         = 2        // ec:K+M needs K >= 2 (1+M is a mirror)
	MinECParity       = 1        // and M >= 1
	MaxECWidth        = 20       // and K+M <= 20
	DefaultStripeUnit = 64 << 10 // the stripe unit of an EC volume created without one
	MinStripeUnit     = 4 << 10
	MaxStripeUnit     = 1 << 20
)

// Layout is a parsed volume layout: mirror:n (n copies of every byte) or
// ec:K+M (Reed-Solomon, K data and M parity shards per stripe).
//
// A set of a layout has Width() members, one chunk each, in distinct fault
// domains; member i of an EC set is shard i of the layout drawn on raid.EC.
// A set holds DataChunks() × chunk size bytes of the volume.
type Layout struct {
	Kind   string // LayoutMirror or LayoutEC
	Copies int    // mirror: the number of copies, 2 or 3
	K, M   int    // ec: data and parity shards
}

var ecLayoutRE = regexp.MustCompile(`^ec:([1-9][0-9]?)\+([1-9][0-9]?)$`)

// layoutForms names the layouts a client may ask for.
const layoutForms = "use mirror:2, mirror:3 or ec:K+M such as ec:4+2 (K >= 2, M >= 1, K+M <= 20)"

// ParseLayout parses "mirror:2", "mirror:3" or "ec:K+M" with K >= MinECData,
// M >= MinECParity and K+M <= MaxECWidth. Anything else is an *Error with
// CodeInvalidArgument that names the valid forms.
func ParseLayout(s string) (Layout, error) {
	switch s {
	case "mirror:2":
		return Layout{Kind: LayoutMirror, Copies: 2}, nil
	case "mirror:3":
		return Layout{Kind: LayoutMirror, Copies: 3}, nil
	}
	m := ecLayoutRE.FindStringSubmatch(s)
	if m == nil {
		return Layout{}, Errorf(CodeInvalidArgument, "unknown layout %q: %s", s, layoutForms)
	}
	k, _ := strconv.Atoi(m[1])
	p, _ := strconv.Atoi(m[2])
	switch {
	case k < MinECData:
		return Layout{}, Errorf(CodeInvalidArgument, "layout %q: K = %d data shards is too few, an ec set needs at least %d (for one data chunk, use a mirror): %s", s, k, MinECData, layoutForms)
	case k+p > MaxECWidth:
		return Layout{}, Errorf(CodeInvalidArgument, "layout %q has %d members per set, at most %d are supported: %s", s, k+p, MaxECWidth, layoutForms)
	}
	return Layout{Kind: LayoutEC, K: k, M: p}, nil
}

// String returns the layout as the API writes it: "mirror:2", "ec:4+2".
func (l Layout) String() string {
	if l.Kind == LayoutEC {
		return fmt.Sprintf("ec:%d+%d", l.K, l.M)
	}
	return fmt.Sprintf("mirror:%d", l.Copies)
}

// Width returns the members (chunks) of one set.
func (l Layout) Width() int {
	if l.Kind == LayoutEC {
		return l.K + l.M
	}
	return l.Copies
}

// DataChunks returns how many chunks' worth of volume data one set holds:
// 1 for a mirror, K for ec:K+M.
func (l Layout) DataChunks() int {
	if l.Kind == LayoutEC {
		return l.K
	}
	return 1
}

// Efficiency returns the share of raw space that holds volume data:
// DataChunks/Width, e.g. 0.5 for mirror:2 and 0.667 for ec:4+2.
func (l Layout) Efficiency() float64 {
	if l.Width() == 0 {
		return 0
	}
	return float64(l.DataChunks()) / float64(l.Width())
}

// VolumeAuth is the iSCSI access control of a volume: CHAP credentials and
// the initiators allowed to log in.
//
// With CHAPUser empty the target asks for no authentication; otherwise an
// initiator must answer CHAP as CHAPUser with CHAPSecret, and with
// MutualUser set the initiator may also ask the target to answer as
// MutualUser with MutualSecret (mutual CHAP). With AllowedInitiators empty
// every initiator may log in; otherwise only those named. Names are held in
// canonical form (iqn. names in lower case, the hex digits of eui. and naa.
// names in upper case); iSCSI names are case-insensitive, so compare the
// name an initiator sends with strings.EqualFold.
//
// The volume API never returns the secrets. CHAPSecret and MutualSecret are
// host-only: they are filled in only in HostVolumes, for volumes attached to
// the host that asks.
type VolumeAuth struct {
	CHAPUser          string   `json:"chap_user,omitempty"`
	MutualUser        string   `json:"mutual_user,omitempty"`
	AllowedInitiators []string `json:"allowed_initiators"`
	// Host-only (HostVolumes): the secrets of CHAPUser and MutualUser.
	CHAPSecret   string `json:"chap_secret,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// Limits of CHAP credentials and allowlists. RFC 7143 (§12.1.3) asks for
// CHAP secrets of at least 96 bits when the connection is not encrypted.
const (
	MinCHAPSecret        = 12  // bytes
	MaxCHAPSecret        = 255 // bytes
	MaxCHAPUser          = 255 // bytes
	MaxISCSINameLen      = 223 // bytes, RFC 7143 §4.2.7.1
	MaxAllowedInitiators = 256
)

// SetCHAPRequest is PUT to /api/v1/volumes/{name}/chap. User and Secret
// are required (one-way CHAP: the target checks the initiator); MutualUser
// and MutualSecret, both or neither, add mutual CHAP (the initiator checks
// the target). The two secrets must differ (RFC 7143 §12.1.3).
type SetCHAPRequest struct {
	User         string `json:"user"`
	Secret       string `json:"secret"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

// InitiatorsRequest is POSTed to /api/v1/volumes/{name}/initiators to
// change the volume's allowlist: Disallow is applied, then Allow. A name in
// Disallow must be in the list. A change may not leave the list empty,
// since an empty list admits every initiator; Clear empties it on purpose
// (and then Allow and Disallow must be empty).
type InitiatorsRequest struct {
	Allow    []string `json:"allow,omitempty"`
	Disallow []string `json:"disallow,omitempty"`
	Clear    bool     `json:"clear,omitempty"`
}

// EventVolumeAuthChanged records a change of a volume's CHAP credentials or
// initiator allowlist; it never carries a secret.
const EventVolumeAuthChanged = "volume_auth_changed"

// EventVolumeQoSChanged records a change of a volume's I/O limits.
const EventVolumeQoSChanged = "volume_qos_changed"

// Changes answers GET /api/v1/changes: a number that moves whenever the
// cluster changes (placement, assignments, any event). Pass it back as
// ?after=V&wait=30s to wait for the next change.
type Changes struct {
	Version int64 `json:"version"`
}
