CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    path         TEXT NOT NULL UNIQUE COLLATE "C",
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    version      BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    modified_at  BIGINT NOT NULL
);
CREATE INDEX files_sha256 ON files (sha256);
CREATE TABLE blobs (
    sha256   TEXT PRIMARY KEY,
    size     BIGINT NOT NULL,
    refcount BIGINT NOT NULL CHECK (refcount >= 0)
);
CREATE INDEX blobs_unreferenced ON blobs (sha256) WHERE refcount = 0;
CREATE TABLE event_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO event_counter (id, seq) VALUES (1, 0);
CREATE TABLE events (
    seq       BIGINT PRIMARY KEY,
    kind      TEXT NOT NULL,
    file_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    from_path TEXT,
    version   BIGINT NOT NULL,
    size      BIGINT NOT NULL,
    sha256    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX events_file_id ON events (file_id);
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
)
