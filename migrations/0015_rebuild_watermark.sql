-- How far the rebuild of a rebuilding member has got: every allocated
-- extent below this set offset has been copied onto the new chunk durably,
-- as its host last reported. A host that takes the rebuild over (after a
-- hostd restart or a volume move) begins there instead of starting over.
ALTER TABLE chunks ADD COLUMN rebuild_watermark bigint NOT NULL DEFAULT 0 CHECK (rebuild_watermark >= 0);
