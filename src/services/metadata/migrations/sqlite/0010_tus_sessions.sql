CREATE TABLE tus_sessions (
    id            TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    upload_length INTEGER,
    upload_offset INTEGER NOT NULL,
    target        TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    concat        TEXT NOT NULL,
    state         TEXT NOT NULL,
    file_id       TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX tus_sessions_owner ON tus_sessions (owner, state);
CREATE INDEX tus_sessions_expires ON tus_sessions (expires_at)
