CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    path         TEXT NOT NULL UNIQUE,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    modified_at  INTEGER NOT NULL
);
CREATE TABLE blobs (
    sha256   TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL CHECK (refcount >= 0)
);
CREATE INDEX blobs_unreferenced ON blobs (sha256) WHERE refcount = 0;
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind      TEXT NOT NULL,
    file_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    from_path TEXT,
    version   INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    sha256    TEXT NOT NULL,
    at        INTEGER NOT NULL
);
