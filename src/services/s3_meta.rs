//! What the S3 API knows about objects beyond VaultFS's own file metadata: the MD5 ETag,
//! user metadata and the other stored headers, flexible checksums; the buckets made by
//! `CreateBucket`; multipart uploads and their staged parts.
//!
//! Object attributes are keyed by path and SHA-256: they describe one content at one path,
//! so a file replaced or deleted through the native API simply stops matching its row (the
//! S3 API then shows the native defaults), and no native code path has to know about S3.
//!
//! Storage: the tables in [`SCHEMA`] live in `s3.db` in the data directory (SQLite), or in the
//! PostgreSQL metadata database when one is configured. Part contents are staged under
//! `s3-uploads/<upload id>/` in the data directory, fsynced before the part is acknowledged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::metadata::{now_ms, MetadataError};

/// The S3 tables (the same SQL for SQLite and PostgreSQL). For the lead: when the metadata
/// migrations move to `.sql` files per backend, this becomes one migration of each.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS s3_objects (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, \
     etag TEXT NOT NULL, attrs TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS s3_buckets (name TEXT PRIMARY KEY, created_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS s3_uploads (id TEXT PRIMARY KEY, path TEXT NOT NULL, \
     token_id TEXT NOT NULL, created_ms BIGINT NOT NULL, attrs TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS s3_parts (upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, \
     size BIGINT NOT NULL, md5 TEXT NOT NULL, checksums TEXT NOT NULL, modified_ms BIGINT NOT NULL, \
     PRIMARY KEY (upload_id, part_number))",
    "CREATE INDEX IF NOT EXISTS s3_uploads_path ON s3_uploads (path, id)",
];

/// Flexible checksums, base64 as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crc32: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crc32c: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crc64nvme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
}

/// The headers an object keeps (besides Content-Type, which VaultFS stores itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    /// `x-amz-meta-*`, without the prefix.
    #[serde(default)]
    pub user: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_language: Option<String>,
    /// Content-Type asked for at CreateMultipartUpload (applied at Complete).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
    /// The checksum algorithm a multipart upload declared.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum_algorithm: Option<String>,
    #[serde(default)]
    pub checksums: Checksums,
    /// Parts of a multipart object.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parts: Option<u32>,
}

/// An object's S3 record, valid while the file at its path has this SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    pub sha256: String,
    /// Without quotes: an MD5 hex, or `md5-of-part-md5s-N`.
    pub etag: String,
    pub attrs: ObjectAttrs,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub id: String,
    pub path: String,
    /// The token that started it (empty on an open server); only it may continue it.
    pub token_id: String,
    pub created_ms: i64,
    pub attrs: ObjectAttrs,
}

/// One staged part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub part_number: u32,
    pub size: u64,
    /// Hex MD5 of the part.
    pub md5: String,
    pub checksums: Checksums,
    pub modified_ms: i64,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// The S3 tables and the part staging directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Meta {
    pool: Pool,
    staging: PathBuf,
}

fn db_err(e: sqlx::Error) -> MetadataError {
    match e {
        sqlx::Error::PoolTimedOut => MetadataError::Busy,
        other => MetadataError::Backend(other.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> MetadataError {
    MetadataError::Backend(format!("stored S3 attributes: {e}"))
}

/// Runs one statement on either pool: `$q` with binds `$b...`, producing `$method`'s result.
macro_rules! on_pool {
    ($pool:expr, $method:ident, $q:expr $(, $b:expr)*) => {
        match $pool {
            Pool::Sqlite(p) => sqlx::query($q)$(.bind($b))*.$method(p).await.map_err(db_err).map(|r| r.into()),
            Pool::Postgres(p) => sqlx::query($q)$(.bind($b))*.$method(p).await.map_err(db_err).map(|r| r.into()),
        }
    };
}

/// A row from either backend.
enum AnyRow {
    Sqlite(sqlx::sqlite::SqliteRow),
    Postgres(sqlx::postgres::PgRow),
}

impl From<sqlx::sqlite::SqliteRow> for AnyRow {
    fn from(r: sqlx::sqlite::SqliteRow) -> Self {
        AnyRow::Sqlite(r)
    }
}
impl From<sqlx::postgres::PgRow> for AnyRow {
    fn from(r: sqlx::postgres::PgRow) -> Self {
        AnyRow::Postgres(r)
    }
}

impl AnyRow {
    fn text(&self, i: usize) -> Result<String, MetadataError> {
        match self {
            AnyRow::Sqlite(r) => r.try_get(i).map_err(db_err),
            AnyRow::Postgres(r) => r.try_get(i).map_err(db_err),
        }
    }
    fn int(&self, i: usize) -> Result<i64, MetadataError> {
        match self {
            AnyRow::Sqlite(r) => r.try_get(i).map_err(db_err),
            AnyRow::Postgres(r) => match r.try_get::<i64, _>(i) {
                Ok(v) => Ok(v),
                Err(_) => r.try_get::<i32, _>(i).map(i64::from).map_err(db_err),
            },
        }
    }
}

/// Rows of either backend, converted.
struct Rows(Vec<AnyRow>);
impl From<Vec<sqlx::sqlite::SqliteRow>> for Rows {
    fn from(v: Vec<sqlx::sqlite::SqliteRow>) -> Self {
        Rows(v.into_iter().map(AnyRow::from).collect())
    }
}
impl From<Vec<sqlx::postgres::PgRow>> for Rows {
    fn from(v: Vec<sqlx::postgres::PgRow>) -> Self {
        Rows(v.into_iter().map(AnyRow::from).collect())
    }
}
struct Done(u64);
impl From<sqlx::sqlite::SqliteQueryResult> for Done {
    fn from(r: sqlx::sqlite::SqliteQueryResult) -> Self {
        Done(r.rows_affected())
    }
}
impl From<sqlx::postgres::PgQueryResult> for Done {
    fn from(r: sqlx::postgres::PgQueryResult) -> Self {
        Done(r.rows_affected())
    }
}

impl S3Meta {
    /// Opens (creating) the S3 tables: in PostgreSQL at `metadata_url` when given, else in
    /// `s3.db` in `data_dir`.
    pub async fn open(
        data_dir: &Path,
        metadata_url: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, MetadataError> {
        let pool = match metadata_url {
            Some(url) => Pool::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(timeout)
                    .connect(url)
                    .await
                    .map_err(db_err)?,
            ),
            None => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(data_dir.join("s3.db"))
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    .busy_timeout(timeout);
                Pool::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(timeout)
                        .connect_with(options)
                        .await
                        .map_err(db_err)?,
                )
            }
        };
        let meta = S3Meta {
            pool,
            staging: data_dir.join("s3-uploads"),
        };
        for statement in SCHEMA {
            let _: Done = on_pool!(&meta.pool, execute, statement)?;
        }
        tokio::fs::create_dir_all(&meta.staging)
            .await
            .map_err(|e| MetadataError::Backend(format!("create s3-uploads: {e}")))?;
        Ok(meta)
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// The record of the object at `path`, if it describes content `sha256`.
    pub async fn object(
        &self,
        path: &str,
        sha256: &str,
    ) -> Result<Option<ObjectRecord>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT sha256, etag, attrs FROM s3_objects WHERE path = $1",
            path
        )?;
        let Some(row) = rows.0.into_iter().next() else {
            return Ok(None);
        };
        let stored = row.text(0)?;
        if stored != sha256 {
            return Ok(None);
        }
        Ok(Some(ObjectRecord {
            sha256: stored,
            etag: row.text(1)?,
            attrs: serde_json::from_str(&row.text(2)?).map_err(json_err)?,
        }))
    }

    /// The records of many paths at once (listings), whatever their content.
    pub async fn objects_in(
        &self,
        from: &str,
        to_inclusive: &str,
    ) -> Result<std::collections::HashMap<String, (String, String)>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT path, sha256, etag FROM s3_objects WHERE path >= $1 AND path <= $2",
            from,
            to_inclusive
        )?;
        let mut out = std::collections::HashMap::new();
        for r in rows.0 {
            out.insert(r.text(0)?, (r.text(1)?, r.text(2)?));
        }
        Ok(out)
    }

    pub async fn put_object(&self, path: &str, rec: &ObjectRecord) -> Result<(), MetadataError> {
        let attrs = serde_json::to_string(&rec.attrs).map_err(json_err)?;
        let _: Done = on_pool!(
            &self.pool,
            execute,
            "INSERT INTO s3_objects (path, sha256, etag, attrs) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, etag = excluded.etag, \
             attrs = excluded.attrs",
            path,
            rec.sha256.as_str(),
            rec.etag.as_str(),
            attrs
        )?;
        Ok(())
    }

    pub async fn forget_object(&self, path: &str) -> Result<(), MetadataError> {
        let _: Done = on_pool!(
            &self.pool,
            execute,
            "DELETE FROM s3_objects WHERE path = $1",
            path
        )?;
        Ok(())
    }

    /// Buckets made by `CreateBucket` (name, creation ms).
    pub async fn buckets(&self) -> Result<Vec<(String, i64)>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT name, created_ms FROM s3_buckets ORDER BY name"
        )?;
        rows.0.iter().map(|r| Ok((r.text(0)?, r.int(1)?))).collect()
    }

    pub async fn bucket(&self, name: &str) -> Result<Option<i64>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT created_ms FROM s3_buckets WHERE name = $1",
            name
        )?;
        rows.0.first().map(|r| r.int(0)).transpose()
    }

    /// True when the bucket was new.
    pub async fn create_bucket(&self, name: &str) -> Result<bool, MetadataError> {
        let done: Done = on_pool!(
            &self.pool,
            execute,
            "INSERT INTO s3_buckets (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            name,
            now_ms()
        )?;
        Ok(done.0 > 0)
    }

    pub async fn delete_bucket(&self, name: &str) -> Result<bool, MetadataError> {
        let done: Done = on_pool!(
            &self.pool,
            execute,
            "DELETE FROM s3_buckets WHERE name = $1",
            name
        )?;
        Ok(done.0 > 0)
    }

    // Multipart uploads.

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.staging.join(id)
    }

    /// Where part `n` of upload `id` is staged (the upload id is a server-made uuid).
    pub fn part_path(&self, id: &str, n: u32) -> PathBuf {
        self.upload_dir(id).join(format!("{n:05}"))
    }

    /// A temp file beside the parts, renamed over the part once complete.
    pub fn part_temp_path(&self, id: &str, n: u32) -> PathBuf {
        self.upload_dir(id)
            .join(format!("{n:05}.{}.tmp", uuid::Uuid::new_v4().simple()))
    }

    pub async fn create_upload(&self, up: &UploadRecord) -> Result<(), MetadataError> {
        tokio::fs::create_dir_all(self.upload_dir(&up.id))
            .await
            .map_err(|e| MetadataError::Backend(format!("create upload dir: {e}")))?;
        let attrs = serde_json::to_string(&up.attrs).map_err(json_err)?;
        let _: Done = on_pool!(
            &self.pool,
            execute,
            "INSERT INTO s3_uploads (id, path, token_id, created_ms, attrs) VALUES ($1, $2, $3, $4, $5)",
            up.id.as_str(),
            up.path.as_str(),
            up.token_id.as_str(),
            up.created_ms,
            attrs
        )?;
        Ok(())
    }

    fn upload_from(row: &AnyRow) -> Result<UploadRecord, MetadataError> {
        Ok(UploadRecord {
            id: row.text(0)?,
            path: row.text(1)?,
            token_id: row.text(2)?,
            created_ms: row.int(3)?,
            attrs: serde_json::from_str(&row.text(4)?).map_err(json_err)?,
        })
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRecord>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT id, path, token_id, created_ms, attrs FROM s3_uploads WHERE id = $1",
            id
        )?;
        rows.0.first().map(Self::upload_from).transpose()
    }

    /// Uploads whose path starts with `prefix`, by (path, id), after the markers, at most
    /// `limit`.
    pub async fn uploads(
        &self,
        prefix: &str,
        after_path: &str,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<UploadRecord>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT id, path, token_id, created_ms, attrs FROM s3_uploads \
             WHERE substr(path, 1, length($1)) = $1 AND (path > $2 OR (path = $2 AND id > $3)) \
             ORDER BY path, id LIMIT $4",
            prefix,
            after_path,
            after_id,
            limit
        )?;
        rows.0.iter().map(Self::upload_from).collect()
    }

    /// Uploads started before `before_ms` (abandoned).
    pub async fn uploads_older_than(&self, before_ms: i64) -> Result<Vec<String>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT id FROM s3_uploads WHERE created_ms < $1 LIMIT 1000",
            before_ms
        )?;
        rows.0.iter().map(|r| r.text(0)).collect()
    }

    pub async fn put_part(&self, id: &str, part: &PartRecord) -> Result<(), MetadataError> {
        let checksums = serde_json::to_string(&part.checksums).map_err(json_err)?;
        let _: Done = on_pool!(
            &self.pool,
            execute,
            "INSERT INTO s3_parts (upload_id, part_number, size, md5, checksums, modified_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (upload_id, part_number) DO UPDATE SET \
             size = excluded.size, md5 = excluded.md5, checksums = excluded.checksums, \
             modified_ms = excluded.modified_ms",
            id,
            i64::from(part.part_number),
            i64::try_from(part.size).unwrap_or(i64::MAX),
            part.md5.as_str(),
            checksums,
            part.modified_ms
        )?;
        Ok(())
    }

    pub async fn parts(&self, id: &str) -> Result<Vec<PartRecord>, MetadataError> {
        let rows: Rows = on_pool!(
            &self.pool,
            fetch_all,
            "SELECT part_number, size, md5, checksums, modified_ms FROM s3_parts \
             WHERE upload_id = $1 ORDER BY part_number",
            id
        )?;
        rows.0
            .iter()
            .map(|r| {
                Ok(PartRecord {
                    part_number: u32::try_from(r.int(0)?).unwrap_or(0),
                    size: u64::try_from(r.int(1)?).unwrap_or(0),
                    md5: r.text(2)?,
                    checksums: serde_json::from_str(&r.text(3)?).map_err(json_err)?,
                    modified_ms: r.int(4)?,
                })
            })
            .collect()
    }

    /// Forgets an upload and removes its staged parts.
    pub async fn remove_upload(&self, id: &str) -> Result<(), MetadataError> {
        let _: Done = on_pool!(
            &self.pool,
            execute,
            "DELETE FROM s3_parts WHERE upload_id = $1",
            id
        )?;
        let _: Done = on_pool!(
            &self.pool,
            execute,
            "DELETE FROM s3_uploads WHERE id = $1",
            id
        )?;
        match tokio::fs::remove_dir_all(self.upload_dir(id)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MetadataError::Backend(format!("remove upload dir: {e}"))),
        }
    }
}
