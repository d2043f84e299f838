-- Daemon credentials live beside the operators' tokens: a join token
-- (role join) admits a new chunkserver or host, which gets a credential of
-- its own (role chunkserver or host, tied to its row) and keeps it in its
-- data directory. Removing the server removes its credential.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('admin', 'reader', 'join', 'chunkserver', 'host'));
ALTER TABLE api_tokens
    ADD COLUMN chunkserver_id bigint UNIQUE REFERENCES chunkservers (id) ON DELETE CASCADE,
    ADD COLUMN host_id bigint UNIQUE REFERENCES hosts (id) ON DELETE CASCADE,
    ADD CONSTRAINT api_tokens_daemon_row CHECK (
        (role = 'chunkserver') = (chunkserver_id IS NOT NULL) AND (role = 'host') = (host_id IS NOT NULL));
