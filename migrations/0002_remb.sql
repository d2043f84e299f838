-- REMB state: the cluster secret that keys export tokens, chunkserver control
-- addresses, volume bitmap modes and clean detaches, member states with resync
-- progress as reported by hosts, dirty bytes per set, and the event log.

-- 32 random bytes, hex. New clusters get theirs from the metaserver; a cluster
-- created before this migration gets one here (two v4 UUIDs are 244 bits from
-- PostgreSQL's strong random source, hashed to 32 bytes).
ALTER TABLE cluster ADD COLUMN secret text;
UPDATE cluster SET secret = encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex');
ALTER TABLE cluster ALTER COLUMN secret SET NOT NULL,
    ADD CONSTRAINT cluster_secret_hex CHECK (secret ~ '^[0-9a-f]{64}$');

-- The control API's host:port; empty for a chunkserver that has none.
ALTER TABLE chunkservers ADD COLUMN control_addr text NOT NULL DEFAULT '';
-- Whether the failure detector last saw the chunkserver offline; it records
-- an event each time this flips.
ALTER TABLE chunkservers ADD COLUMN offline boolean NOT NULL DEFAULT false;

ALTER TABLE volumes ADD COLUMN bitmap text NOT NULL DEFAULT 'remb'
    CHECK (bitmap IN ('remb', 'internal', 'none'));
-- True once the volume's host reported a clean detach at the current epoch;
-- every attach resets it.
ALTER TABLE volumes ADD COLUMN clean_detach boolean NOT NULL DEFAULT false;

-- Bytes the host's write-intent bitmap marks dirty in the set.
ALTER TABLE sets ADD COLUMN dirty_bytes bigint NOT NULL DEFAULT 0 CHECK (dirty_bytes >= 0);

-- A member's state as its host reports it, since when, and resync progress.
ALTER TABLE chunks DROP CONSTRAINT chunks_member_state_check;
ALTER TABLE chunks
    ADD CONSTRAINT chunks_member_state_check CHECK (member_state IN ('in_sync', 'degraded', 'resyncing')),
    ADD COLUMN member_state_since timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN resync_done_bytes  bigint      NOT NULL DEFAULT 0 CHECK (resync_done_bytes >= 0),
    ADD COLUMN resync_total_bytes bigint      NOT NULL DEFAULT 0 CHECK (resync_total_bytes >= 0),
    ADD COLUMN member_error       text        NOT NULL DEFAULT '';

-- Every state change of the cluster, oldest first. volume names the volume
-- an event is about (kept after the volume is deleted), for filtering.
CREATE TABLE events (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time    timestamptz NOT NULL DEFAULT now(),
    kind    text        NOT NULL CHECK (kind ~ '^[a-z_]{1,64}$'),
    subject text        NOT NULL CHECK (subject <> ''),
    volume  text,
    message text        NOT NULL
);

CREATE INDEX events_volume_id ON events (volume, id) WHERE volume IS NOT NULL;
