-- The S3 API's tables (issue 19), in the metadata database so that an object's record
-- (s3_objects: ETag, user metadata, stored headers, checksums) commits in the same
-- transaction as the file version it describes. Releases before this kept them in s3.db
-- beside meta.db: `s3_meta::S3Meta::open` imports that file once, then renames it.
CREATE TABLE IF NOT EXISTS s3_objects (
    path   TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    etag   TEXT NOT NULL,
    attrs  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_buckets (
    name       TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_uploads (
    id         TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attrs      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS s3_parts (
    upload_id   TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    md5         TEXT NOT NULL,
    checksums   TEXT NOT NULL,
    modified_ms INTEGER NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
CREATE INDEX IF NOT EXISTS s3_uploads_path ON s3_uploads (path, id)
