package api

import (
	"strings"
	"time"
)

// Snapshot states.
const (
	// SnapshotPending: asked for; the volume's host has not taken it yet.
	SnapshotPending = "pending"
	// SnapshotReady: every member chunk of the volume holds it.
	SnapshotReady = "ready"
	// SnapshotDeleting: being deleted from the member chunks.
	SnapshotDeleting = "deleting"
)

// Snapshot is a crash-consistent snapshot of a volume: its host held the
// volume's commands, flushed every set and had every member chunk record
// the snapshot at that point.
type Snapshot struct {
	Name      string    `json:"name"`
	Volume    string    `json:"volume"`
	State     string    `json:"state"` // SnapshotPending, SnapshotReady or SnapshotDeleting
	CreatedAt time.Time `json:"created_at"`
	// PauseMicros is how long the host held the volume's commands to take
	// it (once ready).
	PauseMicros int64 `json:"pause_us,omitempty"`
	// SizeBytes is the volume's size when the snapshot was asked for: what
	// the snapshot holds, also after the volume grew.
	SizeBytes int64 `json:"size_bytes"`
	// Host serves the snapshot read-only over iSCSI as target IQN, when it
	// is attached (chunkraid snapshot attach).
	Host string `json:"host,omitempty"`
	IQN  string `json:"iqn,omitempty"`
}

// AttachSnapshotRequest is POSTed to
// /api/v1/volumes/{name}/snapshots/{snapshot}/attach: Host serves the
// snapshot read-only over iSCSI.
type AttachSnapshotRequest struct {
	Host string `json:"host"`
}

// SnapshotTarget is a snapshot a host serves read-only over iSCSI
// (HostVolumes): target IQN of SizeBytes, with the volume's access control,
// reading the snapshot from the members of Sets, whose export names read
// the snapshot (snap=NAME, read-only). Any member of a set that holds the
// snapshot serves its reads.
type SnapshotTarget struct {
	Volume    string `json:"volume"`
	Snapshot  string `json:"snapshot"`
	IQN       string `json:"iqn"`
	SizeBytes int64  `json:"size_bytes"`
	Layout    string `json:"layout"`
	// StripeUnit is the volume's (EC); ChunkBytes the size of every member
	// chunk.
	StripeUnit int64      `json:"stripe_unit"`
	ChunkBytes int64      `json:"chunk_bytes"`
	Auth       VolumeAuth `json:"auth"`
	Sets       []Set      `json:"sets"`
}

// CloneVolumeRequest is POSTed to /api/v1/volumes/{name}/clone: volume
// Name is made a writable clone of snapshot Snapshot of the volume, at
// once, sharing every block it does not write; Host, if set, attaches it.
type CloneVolumeRequest struct {
	Snapshot string `json:"snapshot"`
	Name     string `json:"name"`
	Host     string `json:"host,omitempty"`
}

// HostSnapshotExportsRequest is POSTed by a host to
// /api/v1/hosts/{id}/snapshot-exports: the volume it serves, with
// read-only export names of snapshot Snapshot of its members for the host,
// to copy the snapshot onto a member being rebuilt.
type HostSnapshotExportsRequest struct {
	Volume   string `json:"volume"`
	Snapshot string `json:"snapshot"`
}

// SnapshotIQN is the iSCSI name of snapshot snap of volume when a host
// serves it: the volume's IQN, then ":snap:" and the snapshot's name in
// lower case with '_' as '-' (RFC 3722 allows no capitals or '_'). Two
// snapshots whose names differ only so cannot be attached at once.
func SnapshotIQN(volume, snap string) string {
	return IQNPrefix + volume + ":snap:" + strings.ReplaceAll(strings.ToLower(snap), "_", "-")
}

// CreateSnapshotRequest is POSTed to /api/v1/volumes/{name}/snapshots.
type CreateSnapshotRequest struct {
	Name string `json:"name"`
}

// Snapshot operations a host reports.
const (
	SnapshotOpCreate = "create"
	SnapshotOpDelete = "delete"
)

// SnapshotReport is POSTed by a host to /api/v1/hosts/{id}/snapshots once
// it took (Op create) or deleted (Op delete) a snapshot of a volume it
// serves at Epoch; Error is set when it failed.
type SnapshotReport struct {
	Volume      string `json:"volume"`
	Epoch       int64  `json:"epoch"`
	Name        string `json:"name"`
	Op          string `json:"op"`
	Error       string `json:"error,omitempty"`
	PauseMicros int64  `json:"pause_us,omitempty"`
}

// RollbackRequest is POSTed to /api/v1/volumes/{name}/rollback: the
// volume (detached) is made to hold snapshot Snapshot again.
type RollbackRequest struct {
	Snapshot string `json:"snapshot"`
}

// Events of snapshots.
const (
	EventVolumeRolledBack = "volume_rolled_back"
	EventSnapshotCreated  = "snapshot_created"
	EventSnapshotDeleted  = "snapshot_deleted"
	EventSnapshotFailed   = "snapshot_failed"
	EventSnapshotAttached = "snapshot_attached"
	EventSnapshotDetached = "snapshot_detached"
	EventVolumeCloned     = "volume_cloned"
	EventVolumeFlattened  = "volume_flattened"
)
