//! SQL both engines accept as written (sqlx binds `$N` on SQLite too). A backend's
//! `dialect` module re-exports it and adds what differs.

pub(crate) const FILE_COLUMNS: &str =
    "id, path, size, sha256, version, content_type, created_at, modified_at";
/// A path's folder: everything up to its last '/' ('' at the root). Written exactly as in
/// migration 40's indexes, so both planners use them.
pub(crate) const FOLDER_OF_PATH: &str = "rtrim(path, replace(path, '/', ''))";
pub(crate) const EVENT_COLUMNS: &str =
    "seq, kind, file_id, path, from_path, version, size, sha256, at, trash_id, restored_from,
     commit_id, commit_size";
pub(crate) const INSERT_FILE: &str =
    "INSERT INTO files (id, path, size, sha256, version, content_type, created_at, modified_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)";
pub(crate) const UPDATE_CONTENT: &str =
    "UPDATE files SET size = $1, sha256 = $2, version = $3, content_type = $4,
     modified_at = $5 WHERE id = $6";
pub(crate) const UPDATE_PATH: &str = "UPDATE files SET path = $1 WHERE id = $2";
pub(crate) const DELETE_FILE: &str = "DELETE FROM files WHERE id = $1";
pub(crate) const ADD_BLOB_REF: &str =
    "INSERT INTO blobs (sha256, size, refcount) VALUES ($1, $2, 1)
     ON CONFLICT (sha256) DO UPDATE SET refcount = blobs.refcount + 1";
pub(crate) const DROP_BLOB_REF: &str =
    "UPDATE blobs SET refcount = refcount - 1 WHERE sha256 = $1 RETURNING refcount";
pub(crate) const BLOB_REFCOUNT: &str = "SELECT refcount FROM blobs WHERE sha256 = $1";
pub(crate) const FORGET_BLOB: &str = "DELETE FROM blobs WHERE sha256 = $1 AND refcount = 0";
pub(crate) const UNREFERENCED_BLOBS: &str = "SELECT sha256 FROM blobs WHERE refcount = 0 LIMIT $1";
pub(crate) const OLDEST_SEQ: &str = "SELECT MIN(seq) FROM events";
/// Small batches keep the writer free for commits in between.
pub(crate) const PRUNE_BATCH: i64 = 5000;
pub(crate) const PRUNE_EVENTS: &str = "DELETE FROM events WHERE seq IN (
     SELECT seq FROM events WHERE seq <= $1 OR at < $2 ORDER BY seq LIMIT $3)";
pub(crate) const INSERT_TOKEN: &str =
    "INSERT INTO tokens (id, label, secret_hash, scopes, prefix, created_at, expires_at,
                         revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(crate) const TOKENS: &str =
    "SELECT id, label, secret_hash, scopes, prefix, created_at, expires_at, revoked_at
     FROM tokens ORDER BY created_at, id";
pub(crate) const REVOKE_TOKEN: &str =
    "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
/// First writer wins; every later call (and every replica) reads the same value.
pub(crate) const INSERT_SECRET: &str =
    "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING";
pub(crate) const SECRET: &str = "SELECT value FROM server_secrets WHERE name = $1";
/// The S3 record of a version (migration 20), written in the version's transaction.
pub(crate) const PUT_S3_OBJECT: &str = "INSERT INTO s3_objects (path, sha256, etag, attrs)
     VALUES ($1, $2, $3, $4) ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,
     etag = excluded.etag, attrs = excluded.attrs";
pub(crate) const FORGET_S3_OBJECT: &str = "DELETE FROM s3_objects WHERE path = $1";
pub(crate) const MOVE_S3_OBJECT: &str = "UPDATE s3_objects SET path = $2 WHERE path = $1";
pub(crate) const APPLIED_MIGRATIONS: &str = "SELECT version FROM schema_migrations";
pub(crate) const CURRENT_SCHEMA: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations";
pub(crate) const RECORD_MIGRATION: &str =
    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)";

// The audit.
pub(crate) const AUDIT_GAPS: &str =
    "SELECT prev, seq FROM (SELECT seq, LAG(seq) OVER (ORDER BY seq) AS prev FROM events) g
     WHERE prev IS NOT NULL AND seq <> prev + 1 ORDER BY seq LIMIT $1";
pub(crate) const AUDIT_LAST_EVENTS: &str = "WITH last AS (
        SELECT e.* FROM events e
        JOIN (SELECT file_id, MAX(seq) AS m FROM events GROUP BY file_id) l ON e.seq = l.m)
     SELECT last.seq, last.kind, last.file_id, last.path, last.version, last.sha256,
            f.id AS f_id, f.path AS f_path, f.version AS f_version, f.sha256 AS f_sha256
     FROM last LEFT JOIN files f ON f.id = last.file_id
     WHERE (last.kind = 'deleted' AND f.id IS NOT NULL)
        OR (last.kind <> 'deleted' AND (f.id IS NULL OR f.path <> last.path
            OR f.version <> last.version OR f.size <> last.size
            OR f.sha256 <> last.sha256))
     ORDER BY last.seq LIMIT $1";
pub(crate) const AUDIT_FILES_WITHOUT_EVENTS: &str = "SELECT id, path FROM files
     WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.file_id = files.id)
     ORDER BY path LIMIT $1";
pub(crate) const AUDIT_REFCOUNTS: &str = "WITH used AS (SELECT sha256, COUNT(*) AS n FROM (
            SELECT sha256 FROM files UNION ALL SELECT sha256 FROM versions
            UNION ALL SELECT sha256 FROM trash
            UNION ALL SELECT sha256 FROM commit_files) r GROUP BY sha256)
     SELECT b.sha256, b.refcount, COALESCE(u.n, 0) FROM blobs b
     LEFT JOIN used u ON u.sha256 = b.sha256 WHERE b.refcount <> COALESCE(u.n, 0)
     UNION ALL
     SELECT u.sha256, NULL, u.n FROM used u
     WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = u.sha256)
     LIMIT $1";
pub(crate) const AUDIT_RETENTION_COUNTS: &str =
    "SELECT (SELECT COUNT(*) FROM versions), (SELECT COUNT(*) FROM trash)";
pub(crate) const AUDIT_VERSION_ORPHANS: &str = "SELECT v.file_id, v.version FROM versions v
     WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.id = v.file_id)
       AND NOT EXISTS (SELECT 1 FROM trash t WHERE t.file_id = v.file_id)
     ORDER BY v.file_id, v.version LIMIT $1";
pub(crate) const AUDIT_TRASH_LIVE: &str = "SELECT t.trash_id, t.file_id, t.path FROM trash t
     JOIN files f ON f.id = t.file_id ORDER BY t.trash_id LIMIT $1";

// Versions and the trash.
pub(crate) const VERSION_COLUMNS: &str =
    "file_id AS id, '' AS path, size, sha256, version, content_type,
     modified_at AS created_at, modified_at";
pub(crate) const INSERT_VERSION: &str =
    "INSERT INTO versions (file_id, version, size, sha256, content_type, modified_at)
     VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const DELETE_VERSION: &str = "DELETE FROM versions WHERE file_id = $1 AND version = $2";
pub(crate) const TRASH_COLUMNS: &str =
    "trash_id, file_id AS id, path, size, sha256, version, content_type, created_at,
     modified_at, deleted_at, expires_at, batch_id";
/// The row as it is in `files` (its `created_at` included), with the trash's own columns.
pub(crate) const TRASH_FILE: &str =
    "INSERT INTO trash (trash_id, file_id, path, size, sha256, version, content_type,
                        created_at, modified_at, deleted_at, expires_at, batch_id)
     SELECT $1, id, path, size, sha256, version, content_type, created_at, modified_at,
            $2, $3, $4 FROM files WHERE id = $5";
pub(crate) const UNTRASH_FILE: &str =
    "INSERT INTO files (id, path, size, sha256, version, content_type, created_at, modified_at)
     SELECT file_id, $2, size, sha256, version, content_type, created_at, modified_at
     FROM trash WHERE trash_id = $1";
pub(crate) const DELETE_TRASH: &str = "DELETE FROM trash WHERE trash_id = $1";
pub(crate) const RETENTION_STATS: &str =
    "SELECT (SELECT COUNT(*) FROM trash), (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM trash),
            (SELECT COUNT(*) FROM versions)";
