-- The latest per-volume figures its host reported (IOPS, throughput,
-- latency over the time between two reports): what `chunkraid volume
-- stats` shows. One row per volume, replaced by each report that carries
-- them.
CREATE TABLE volume_stats (
    volume_id   bigint      PRIMARY KEY REFERENCES volumes (id) ON DELETE CASCADE,
    host        text        NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now(),
    stats       jsonb       NOT NULL
);
