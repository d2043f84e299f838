-- Snapshots of volumes: asked for by an operator (pending), taken by the
-- volume's host on every member chunk (ready), deleted the same way
-- (deleting, then the row goes).
CREATE TABLE snapshots (
    volume_id  bigint      NOT NULL REFERENCES volumes (id) ON DELETE CASCADE,
    name       text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    state      text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'ready', 'deleting')),
    created_at timestamptz NOT NULL DEFAULT now(),
    pause_us   bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (volume_id, name)
);
