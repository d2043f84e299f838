-- API tokens of operators: a name, a role and a keyed hash of the token
-- (HMAC-SHA256 under a key derived from the cluster secret); the token
-- itself is shown once, when it is created, and stored nowhere.
CREATE TABLE api_tokens (
    name       text PRIMARY KEY,
    role       text NOT NULL CHECK (role IN ('admin', 'reader')),
    hash       bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
