-- The last host report applied for each volume: its epoch and sequence
-- number. A report at that epoch with a sequence number not above it is
-- older than what is stored and is ignored (api.VolumeReport.Seq).
ALTER TABLE volumes
    ADD COLUMN report_epoch bigint NOT NULL DEFAULT 0,
    ADD COLUMN report_seq   bigint NOT NULL DEFAULT 0;
