-- The cluster's certificate authority: its certificate (PEM) and its key,
-- sealed with a key derived from the cluster secret. Made by the first
-- metaserver that starts with this schema; it signs the certificates of
-- the REST API and the chunkservers' control API.
ALTER TABLE cluster ADD COLUMN ca_cert text, ADD COLUMN ca_key_sealed bytea;
