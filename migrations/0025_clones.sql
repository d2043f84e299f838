-- Writable clones: a clone volume's chunks are created on the chunkservers
-- of the parent volume's chunks and read what they have not written from
-- snapshot parent_snapshot of them (chunks.base_chunk, base_snapshot). The
-- parent volume cannot go while a clone reads it.
ALTER TABLE chunks ADD COLUMN base_chunk uuid, ADD COLUMN base_snapshot text;
ALTER TABLE volumes ADD COLUMN parent_volume_id bigint REFERENCES volumes (id) ON DELETE RESTRICT,
                    ADD COLUMN parent_snapshot text,
                    ADD CHECK ((parent_volume_id IS NULL) = (parent_snapshot IS NULL));
CREATE INDEX volumes_parent ON volumes (parent_volume_id) WHERE parent_volume_id IS NOT NULL;
