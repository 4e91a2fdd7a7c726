-- Versions and the trash (issue 20). An old version is a row and a reference to its blob;
-- a trashed file is its row as deleted, until it expires. Both count in blobs.refcount.
CREATE TABLE versions (
    file_id      TEXT NOT NULL,
    version      BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    modified_at  BIGINT NOT NULL,
    PRIMARY KEY (file_id, version)
);
CREATE INDEX versions_sha256 ON versions (sha256);
CREATE TABLE trash (
    trash_id     TEXT PRIMARY KEY,
    file_id      TEXT NOT NULL UNIQUE,
    path         TEXT NOT NULL COLLATE "C",
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    version      BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    modified_at  BIGINT NOT NULL,
    deleted_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    batch_id     TEXT
);
CREATE INDEX trash_expires ON trash (expires_at);
CREATE INDEX trash_batch ON trash (batch_id) WHERE batch_id IS NOT NULL;
ALTER TABLE events ADD COLUMN trash_id TEXT;
ALTER TABLE events ADD COLUMN restored_from BIGINT
