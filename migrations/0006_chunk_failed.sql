-- A chunk its chunkserver reports failed (a durability error) or
-- quarantined (its sidecar is damaged or carries a failure marker), with the
-- reason and since when; NULL while healthy.
ALTER TABLE chunks
    ADD COLUMN failed_reason text,
    ADD COLUMN failed_at     timestamptz;
