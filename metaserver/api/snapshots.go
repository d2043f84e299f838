package api

import "time"

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
)
