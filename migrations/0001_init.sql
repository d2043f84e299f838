-- The cluster's control-plane state: chunkservers and their disks, hosts,
-- volumes, their RAID sets and the chunks that are the sets' members.

-- One row: settings fixed at cluster creation, and the generation counter that
-- every change of chunk or volume assignments bumps (long polls wait on it).
CREATE TABLE cluster (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    chunk_size bigint      NOT NULL CHECK (chunk_size >= 1048576 AND chunk_size % 1048576 = 0),
    generation bigint      NOT NULL DEFAULT 1 CHECK (generation >= 1),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chunkservers (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    addr           text        NOT NULL CHECK (addr <> ''),
    fault_domain   text        NOT NULL CHECK (fault_domain ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$'),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    registered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE disks (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chunkserver_id bigint NOT NULL REFERENCES chunkservers (id) ON DELETE CASCADE,
    path           text   NOT NULL CHECK (path <> ''),
    capacity_bytes bigint NOT NULL CHECK (capacity_bytes >= 0),
    free_bytes     bigint NOT NULL CHECK (free_bytes >= 0 AND free_bytes <= capacity_bytes),
    UNIQUE (chunkserver_id, path),
    -- Target of the chunks' (disk_id, chunkserver_id) foreign key, which
    -- keeps a chunk on a disk of its own chunkserver.
    UNIQUE (id, chunkserver_id)
);

CREATE TABLE hosts (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    iscsi_addr     text        NOT NULL CHECK (iscsi_addr <> ''),
    last_heartbeat timestamptz NOT NULL DEFAULT now(),
    registered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE volumes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The name becomes part of an iSCSI IQN.
    name       text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9.-]{0,62}$'),
    size_bytes bigint      NOT NULL CHECK (size_bytes > 0 AND size_bytes % 4096 = 0),
    layout     text        NOT NULL CHECK (layout IN ('mirror:2', 'mirror:3')),
    host_id    bigint      REFERENCES hosts (id) ON DELETE RESTRICT,
    -- Bumped by every attachment; chunkservers fence older epochs.
    epoch      bigint      NOT NULL DEFAULT 1 CHECK (epoch >= 1),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX volumes_host_id ON volumes (host_id) WHERE host_id IS NOT NULL;

-- A volume is its sets concatenated in idx order; size_bytes is the part of
-- the volume a set holds (the chunk size, or less for the last set).
CREATE TABLE sets (
    volume_id  bigint  NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    idx        integer NOT NULL CHECK (idx >= 0),
    size_bytes bigint  NOT NULL CHECK (size_bytes > 0),
    PRIMARY KEY (volume_id, idx)
);

-- A chunk is a member of a set while active; deleting a volume turns its
-- chunks to 'deleting' and detaches them from the set, and the row goes away
-- when the chunkserver acknowledges the deletion.
CREATE TABLE chunks (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    chunkserver_id bigint      NOT NULL REFERENCES chunkservers (id) ON DELETE RESTRICT,
    disk_id        bigint      NOT NULL,
    volume_id      bigint,
    set_idx        integer,
    member_idx     integer     CHECK (member_idx >= 0),
    size_bytes     bigint      NOT NULL CHECK (size_bytes > 0),
    state          text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'deleting')),
    member_state   text        NOT NULL DEFAULT 'in_sync' CHECK (member_state IN ('in_sync')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (disk_id, chunkserver_id) REFERENCES disks (id, chunkserver_id) ON DELETE RESTRICT,
    FOREIGN KEY (volume_id, set_idx) REFERENCES sets (volume_id, idx) ON DELETE RESTRICT,
    -- Set membership is all or nothing, and only active chunks are members.
    CHECK ((volume_id IS NULL) = (set_idx IS NULL) AND (volume_id IS NULL) = (member_idx IS NULL)),
    CHECK ((state = 'active') = (volume_id IS NOT NULL)),
    UNIQUE (volume_id, set_idx, member_idx)
);

-- No set ever has two members on the same chunkserver.
CREATE UNIQUE INDEX chunks_one_member_per_chunkserver
    ON chunks (volume_id, set_idx, chunkserver_id) WHERE volume_id IS NOT NULL;

CREATE INDEX chunks_chunkserver_id ON chunks (chunkserver_id);
CREATE INDEX chunks_disk_id ON chunks (disk_id);
