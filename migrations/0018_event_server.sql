-- The server (chunkserver or host) an event concerns, for filtering and for
-- summarising the events of one cause (chunkraid events groups them), and
-- the bytes a resync or rebuild copied.
ALTER TABLE events ADD COLUMN server text, ADD COLUMN bytes bigint;
CREATE INDEX events_server_id ON events (server, id) WHERE server IS NOT NULL;
