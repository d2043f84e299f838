-- Drain: a draining chunkserver takes no new chunks, and each of its set
-- members gets a successor (a new chunk on another chunkserver, rebuilt by
-- the serving host beside it) that takes its place once in sync.
ALTER TABLE chunkservers ADD COLUMN draining boolean NOT NULL DEFAULT false,
                         ADD COLUMN drain_done boolean NOT NULL DEFAULT false;
ALTER TABLE chunks ADD COLUMN replaces uuid;
