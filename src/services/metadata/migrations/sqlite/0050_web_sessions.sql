-- Web file browser sessions (issue 22), shared by every process on this database so that a
-- restart or another replica keeps a browser signed in. `id_hash` is the hex SHA-256 of the
-- cookie value: the cookie itself is never stored. The token's scope and prefix are not
-- copied: every lookup joins `tokens` by `token_id`, so revocation or expiry ends the session
-- on every replica at once. `csrf` is the session's CSRF token (not a credential alone).
-- Times are milliseconds since the epoch, and `last_seen` is refreshed at most once a minute.
CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);
-- The per-token bound (oldest first) and the sweep of a revoked token's sessions.
CREATE INDEX web_sessions_token ON web_sessions (token_id, last_seen);
-- The expiry sweep: idle ones and old ones.
CREATE INDEX web_sessions_last_seen ON web_sessions (last_seen);
CREATE INDEX web_sessions_created ON web_sessions (created_at)
