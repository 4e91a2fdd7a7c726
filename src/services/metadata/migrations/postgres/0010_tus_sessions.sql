CREATE TABLE tus_sessions (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    upload_length BIGINT,
    upload_offset BIGINT NOT NULL,
    target        TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    concat        TEXT NOT NULL,
    state         TEXT NOT NULL,
    file_id       TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX tus_sessions_owner ON tus_sessions (owner, state);
CREATE INDEX tus_sessions_expires ON tus_sessions (expires_at)
