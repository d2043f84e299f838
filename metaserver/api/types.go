// Package api holds the JSON wire types of the metaserver's REST API under
// /api/v1 and a client for it. It imports only the standard library so that
// every daemon and the CLI can share it.
package api

import "time"

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
)

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
}

// RegisterChunkserverRequest is POSTed to /api/v1/chunkservers. Registering
// again under the same name updates the address and disks and keeps the ID.
type RegisterChunkserverRequest struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // NBD host:port
	// ControlAddr is the host:port of the chunkserver's control HTTP API
	// (fence, pin, LOG bitmaps: see ControlRequest); empty if it has none.
	ControlAddr string     `json:"control_addr,omitempty"`
	FaultDomain string     `json:"fault_domain"` // empty: the name
	Disks       []DiskInfo `json:"disks"`
}

// RegisterChunkserverResponse answers a registration.
type RegisterChunkserverResponse struct {
	ID        int64 `json:"id"`
	ChunkSize int64 `json:"chunk_size"`
	// ClusterSecret (hex) verifies export and control tokens (ExportToken).
	// The API is not authenticated yet, so the secret is only as safe as
	// the network the API listens on (loopback by default).
	ClusterSecret string `json:"cluster_secret"`
	// IOTimeoutMS is t_io, the longest a member request may be in flight.
	IOTimeoutMS int64 `json:"io_timeout_ms"`
	// LogPeriodMS is T, the rotation period of the chunks' LOG bitmaps.
	LogPeriodMS int64 `json:"log_period_ms"`
}

// ChunkserverHeartbeat is POSTed to /api/v1/chunkservers/{id}/heartbeat.
type ChunkserverHeartbeat struct {
	Disks []DiskInfo `json:"disks"`
}

// ChunkAssignment is one chunk a chunkserver must hold or delete.
type ChunkAssignment struct {
	ID        string `json:"id"`
	SizeBytes int64  `json:"size_bytes"`
	State     string `json:"state"` // ChunkActive or ChunkDeleting
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
}

// Disk is one disk of a chunkserver as listed by the API.
type Disk struct {
	ID            int64  `json:"id"`
	Chunkserver   string `json:"chunkserver"`
	Path          string `json:"path"`
	CapacityBytes int64  `json:"capacity_bytes"`
	FreeBytes     int64  `json:"free_bytes"`
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
}

// RegisterHostRequest is POSTed to /api/v1/hosts. Registering again under the
// same name updates the address and keeps the ID.
type RegisterHostRequest struct {
	Name      string `json:"name"`
	ISCSIAddr string `json:"iscsi_addr"` // host:port the iSCSI target listens on
}

// RegisterHostResponse answers a host registration.
type RegisterHostResponse struct {
	ID int64 `json:"id"`
	// ClusterSecret, IOTimeoutMS and LogPeriodMS are as in
	// RegisterChunkserverResponse.
	ClusterSecret string `json:"cluster_secret"`
	IOTimeoutMS   int64  `json:"io_timeout_ms"`
	LogPeriodMS   int64  `json:"log_period_ms"`
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
	// Export is the NBD export name for the volume's host at the volume's
	// epoch (the String form of an ExportName); empty while the volume is
	// attached to no host.
	Export string `json:"export"`
	// State is MemberInSync (the default), MemberDegraded or
	// MemberResyncing, since StateSince.
	State      string    `json:"state"`
	StateSince time.Time `json:"state_since"`
	// ResyncDoneBytes of ResyncTotalBytes have been copied by the running
	// (or the last) resync.
	ResyncDoneBytes  int64  `json:"resync_done_bytes"`
	ResyncTotalBytes int64  `json:"resync_total_bytes"`
	Error            string `json:"error,omitempty"` // why it is degraded
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
}

// Volume is a volume with its layout, placement and attachment.
type Volume struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	Layout    string `json:"layout"` // "mirror:2", "mirror:3"
	Bitmap    string `json:"bitmap"` // BitmapRemb, BitmapInternal or BitmapNone
	Host      string `json:"host,omitempty"`
	Epoch     int64  `json:"epoch"`
	// CleanDetach is true when Host reported a clean detach at Epoch (every
	// write on every member, nothing dirty); an attach resets it.
	CleanDetach bool      `json:"clean_detach"`
	IQN         string    `json:"iqn"`
	CreatedAt   time.Time `json:"created_at"`
	Sets        []Set     `json:"sets"`
}

// CreateVolumeRequest is POSTed to /api/v1/volumes.
type CreateVolumeRequest struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	Layout    string `json:"layout"`
	// Bitmap is BitmapRemb (also when empty), BitmapInternal or BitmapNone.
	Bitmap string `json:"bitmap,omitempty"`
	Host   string `json:"host,omitempty"` // attach at once to this host
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
}

// Event kinds recorded by the metaserver (see Event).
const (
	EventVolumeCreated      = "volume_created"
	EventVolumeDeleted      = "volume_deleted"
	EventVolumeAttached     = "volume_attached"
	EventVolumeDetached     = "volume_detached" // a clean detach reported by the host
	EventMemberDegraded     = "member_degraded"
	EventResyncStarted      = "resync_started"
	EventResyncDone         = "resync_done"
	EventMemberInSync       = "member_in_sync" // back in sync without a resync
	EventChunkserverOffline = "chunkserver_offline"
	EventChunkserverOnline  = "chunkserver_online"
)

// MaxEvents caps the events one GET /api/v1/events returns (?limit=).
const MaxEvents = 1000

// MaxWait caps the wait of a long poll (?wait=); longer waits are shortened.
const MaxWait = 60 * time.Second
