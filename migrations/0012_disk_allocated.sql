-- What the chunk files on a disk take (allocated blocks; chunks are thin),
-- as its chunkserver last reported it. The capacity guard counts the raw
-- space promised to chunks but not yet written against the free space.
ALTER TABLE disks ADD COLUMN allocated_bytes bigint NOT NULL DEFAULT 0 CHECK (allocated_bytes >= 0);
