-- Versions and the trash (issue 20). An old version is a row and a reference to its blob;
-- a trashed file is its row as deleted, until it expires. Both count in blobs.refcount.
CREATE TABLE versions (
    file_id      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    modified_at  INTEGER NOT NULL,
    PRIMARY KEY (file_id, version)
) WITHOUT ROWID;
CREATE TABLE trash (
    trash_id     TEXT PRIMARY KEY,
    file_id      TEXT NOT NULL UNIQUE,
    path         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    modified_at  INTEGER NOT NULL,
    deleted_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    batch_id     TEXT
);
CREATE INDEX trash_expires ON trash (expires_at);
CREATE INDEX trash_batch ON trash (batch_id) WHERE batch_id IS NOT NULL;
ALTER TABLE events ADD COLUMN trash_id TEXT;
ALTER TABLE events ADD COLUMN restored_from INTEGER
