-- A snapshot's size (the volume's when it was asked for: a volume may grow
-- afterwards) and the host serving it read-only over iSCSI, if any.
ALTER TABLE snapshots ADD COLUMN size_bytes bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0);
UPDATE snapshots s SET size_bytes = v.size_bytes FROM volumes v WHERE v.id = s.volume_id;
ALTER TABLE snapshots ADD COLUMN host_id bigint REFERENCES hosts (id) ON DELETE SET NULL;
CREATE INDEX snapshots_host_id ON snapshots (host_id) WHERE host_id IS NOT NULL;
