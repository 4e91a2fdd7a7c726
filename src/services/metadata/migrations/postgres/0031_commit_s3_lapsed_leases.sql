-- Issue 21, second step.
-- A file staged through the S3 API keeps its S3 record (ETag, user metadata, checksums)
-- until the finish writes it with the file. NULL: staged by a native front end.
ALTER TABLE commit_files ADD COLUMN s3_etag TEXT;
ALTER TABLE commit_files ADD COLUMN s3_attrs TEXT;
-- Lease ids that lapsed and were then taken over (the path's row in `leases` names the new
-- holder), so that renewing one answers lease_expired rather than not found. Kept for a
-- week after the takeover.
CREATE TABLE lapsed_leases (
    lease_id  TEXT PRIMARY KEY,
    path      TEXT COLLATE "C" NOT NULL,
    fence     BIGINT NOT NULL,
    lapsed_at BIGINT NOT NULL
);
CREATE INDEX lapsed_leases_age ON lapsed_leases (lapsed_at)
