-- Atomic multi-file commits and leases with fencing tokens (issue 21).
-- A commit is open until finished, aborted or expired, and its staged files each hold one
-- reference to their blob (counted in blobs.refcount) until the commit ends.
CREATE TABLE commits (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    state           TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    result          TEXT
);
CREATE INDEX commits_open_expiry ON commits (state, expires_at);
CREATE TABLE commit_files (
    commit_id    TEXT NOT NULL,
    path         TEXT NOT NULL COLLATE "C",
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (commit_id, path)
);
-- One row per lease path, kept after the lease ends: `fence` is the newest fence issued
-- for the path, and `lease_id` and `expires_at` are its current holder's, if any.
CREATE TABLE leases (
    path       TEXT COLLATE "C" PRIMARY KEY,
    fence      BIGINT NOT NULL,
    lease_id   TEXT UNIQUE,
    expires_at BIGINT NOT NULL
);
ALTER TABLE events ADD COLUMN commit_id TEXT;
ALTER TABLE events ADD COLUMN commit_size BIGINT
