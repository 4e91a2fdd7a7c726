-- The S3 API's tables (issue 19), now part of the versioned schema, so that an object's
-- record (s3_objects) commits in the same transaction as the file version it describes.
-- Releases before this created the same tables in this database at the S3 listener's
-- start: IF NOT EXISTS adopts them with their rows.
CREATE TABLE IF NOT EXISTS s3_objects (
    path   TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    etag   TEXT NOT NULL,
    attrs  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_buckets (
    name       TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_uploads (
    id         TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    attrs      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_parts (
    upload_id   TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size        BIGINT NOT NULL,
    md5         TEXT NOT NULL,
    checksums   TEXT NOT NULL,
    modified_ms BIGINT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
CREATE INDEX IF NOT EXISTS s3_uploads_path ON s3_uploads (path, id)
