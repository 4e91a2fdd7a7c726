//! What the S3 API knows about objects beyond VaultFS's own file metadata: the MD5 ETag,
//! user metadata and the other stored headers, flexible checksums; the buckets made by
//! `CreateBucket`; multipart uploads and their staged parts.
//!
//! Object attributes are keyed by path and SHA-256: they describe one content at one path,
//! so a file replaced or deleted through the native API simply stops matching its row (the
//! S3 API then shows the native defaults), and no native code path has to know about S3.
//!
//! Storage: the tables of migration 20 (`metadata/migrations/*/0020_s3_tables.sql`) in the
//! metadata database (`meta.db`, or PostgreSQL when configured). An object's record is
//! written by the metadata store itself, in the transaction that commits the version it
//! describes ([`crate::services::metadata::PutRequest::s3`]), so an object never exists
//! without it; it is removed with the file and moved with it. This module reads records and
//! keeps the other tables (buckets, uploads, parts). Releases before migration 20 kept the
//! tables in `s3.db` beside `meta.db`: [`S3Meta::open`] imports that file once and renames
//! it `s3.db.imported`. Part contents are staged under `s3-uploads/<upload id>/` in the data
//! directory, fsynced before the part is acknowledged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::metadata::{now_ms, MetadataError, S3ObjectRow};

/// The tables as releases before migration 20 made them in `s3.db` (the same columns as
/// migration 20's): what [`S3Meta::open`] imports.
const LEGACY_TABLES: &[(&str, &str)] = &[
    ("s3_objects", "path, sha256, etag, attrs"),
    ("s3_buckets", "name, created_ms"),
    ("s3_uploads", "id, path, token_id, created_ms, attrs"),
    (
        "s3_parts",
        "upload_id, part_number, size, md5, checksums, modified_ms",
    ),
];

/// Flexible checksums, base64 as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) crc32: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) crc32c: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) crc64nvme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) sha1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) sha256: Option<String>,
}

/// The headers an object keeps (besides Content-Type, which VaultFS stores itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    /// `x-amz-meta-*`, without the prefix.
    #[serde(default)]
    pub user: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) content_disposition: Option<String>,
    /// `Cache-Control` sent with the object (`None`: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) content_language: Option<String>,
    /// Content-Type asked for at CreateMultipartUpload (applied at Complete).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
    /// The checksum algorithm a multipart upload declared.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum_algorithm: Option<String>,
    #[serde(default)]
    pub(crate) checksums: Checksums,
    /// Parts of a multipart object.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parts: Option<u32>,
}

/// An object's S3 record, valid while the file at its path has this SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Hex SHA-256 of the content the record describes: it applies only while the file at its
    /// path has this hash.
    pub sha256: String,
    /// Without quotes: an MD5 hex, or `md5-of-part-md5s-N`.
    pub etag: String,
    /// The stored headers and checksums.
    pub attrs: ObjectAttrs,
}

impl ObjectAttrs {
    /// The record the metadata store commits with a version: `etag` and these attributes.
    pub fn row(&self, etag: String) -> Result<S3ObjectRow, MetadataError> {
        Ok(S3ObjectRow {
            etag,
            attrs: serde_json::to_string(self).map_err(json_err)?,
        })
    }
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    /// The upload id: a server-made simple uuid (32 hex digits), also its part directory's name.
    pub id: String,
    /// The object's file path, `bucket/key`, where Complete puts it.
    pub path: String,
    /// The token that started it (empty on an open server); only it may continue it.
    pub token_id: String,
    /// When CreateMultipartUpload ran, in milliseconds since the epoch.
    pub created_ms: i64,
    /// The headers asked for at CreateMultipartUpload, given to the object at Complete.
    pub attrs: ObjectAttrs,
}

/// One staged part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// The part's number, 1..=10000 (S3's limit); Complete joins parts in this order.
    pub part_number: u32,
    /// The part's length in bytes.
    pub size: u64,
    /// Hex MD5 of the part.
    pub md5: String,
    pub(crate) checksums: Checksums,
    pub(crate) modified_ms: i64,
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
    /// Opens the S3 tables in the metadata database: PostgreSQL at `metadata_url` when
    /// given, else `meta.db` in `data_dir`. The metadata store must have been opened first
    /// (it applies the migrations that make the tables). An `s3.db` left by an earlier
    /// release is imported once, then renamed.
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
                let options = Self::sqlite_options(&data_dir.join("meta.db"), timeout);
                import_legacy_sqlite(data_dir, options.clone()).await?;
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
        tokio::fs::create_dir_all(&meta.staging)
            .await
            .map_err(|e| MetadataError::Backend(format!("create s3-uploads: {e}")))?;
        Ok(meta)
    }

    /// `meta.db`, as the metadata store made it (WAL); the S3 tables' own writes (buckets,
    /// uploads, parts) are durable at commit. They wait for the store's writer with
    /// SQLite's busy timeout, bounded by the metadata deadline.
    fn sqlite_options(db: &Path, timeout: Duration) -> sqlx::sqlite::SqliteConnectOptions {
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .create_if_missing(false)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
            .busy_timeout(timeout)
    }

    /// Closes this handle's database connections (graceful shutdown).
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

    /// Replaces the attributes of the object at `path` without a new version (a copy onto
    /// itself with `REPLACE`), if the file there still has content `rec.sha256`: one
    /// statement that checks the files table, so a version committed meanwhile keeps its
    /// own record. False when the file changed (or went).
    pub async fn update_in_place(
        &self,
        path: &str,
        rec: &ObjectRecord,
    ) -> Result<bool, MetadataError> {
        let attrs = serde_json::to_string(&rec.attrs).map_err(json_err)?;
        let done: Done = on_pool!(
            &self.pool,
            execute,
            "INSERT INTO s3_objects (path, sha256, etag, attrs) SELECT $1, $2, $3, $4 \
             WHERE EXISTS (SELECT 1 FROM files WHERE path = $1 AND sha256 = $2) \
             ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, etag = excluded.etag, \
             attrs = excluded.attrs",
            path,
            rec.sha256.as_str(),
            rec.etag.as_str(),
            attrs
        )?;
        Ok(done.0 > 0)
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

    /// When bucket `name` was created by `CreateBucket`, in milliseconds since the epoch
    /// (`None`: no such bucket).
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

    pub(crate) async fn delete_bucket(&self, name: &str) -> Result<bool, MetadataError> {
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

    /// Records a new multipart upload, after creating its part directory.
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

    /// Multipart upload `id` (`None`: unknown: never started, completed or aborted).
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

    pub(crate) async fn put_part(&self, id: &str, part: &PartRecord) -> Result<(), MetadataError> {
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

    /// The staged parts of upload `id`, by part number (a part sent again replaces its record).
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

    /// Removes the part directories, untouched for `max_age`, of uploads the database no
    /// longer knows: completed, aborted or collected through another replica (which cannot
    /// remove this replica's files). Returns how many it removed.
    pub async fn sweep_orphan_parts(&self, max_age: Duration) -> Result<usize, MetadataError> {
        let io = |e: std::io::Error| MetadataError::Backend(format!("s3-uploads: {e}"));
        let mut dir = tokio::fs::read_dir(&self.staging).await.map_err(io)?;
        let mut removed = 0;
        while let Some(entry) = dir.next_entry().await.map_err(io)? {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let idle = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| m.elapsed().ok());
            if idle.is_none_or(|idle| idle < max_age) || self.upload(&id).await?.is_some() {
                continue;
            }
            match tokio::fs::remove_dir_all(entry.path()).await {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(removed)
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

/// Imports the S3 tables of an `s3.db` left by a release before migration 20 into
/// `meta.db` (rows already there win: the import is idempotent), in one transaction, then
/// renames `s3.db` (and its `-wal`/`-shm`) to `s3.db.imported`. A crash before the rename
/// imports again at the next start, harmlessly.
async fn import_legacy_sqlite(
    data_dir: &Path,
    options: sqlx::sqlite::SqliteConnectOptions,
) -> Result<(), MetadataError> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let legacy = data_dir.join("s3.db");
    match tokio::fs::try_exists(&legacy).await {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => return Err(MetadataError::Backend(format!("look for s3.db: {e}"))),
    }
    let legacy_name = legacy
        .to_str()
        .ok_or_else(|| MetadataError::Backend("the data directory is not UTF-8".into()))?
        .to_string();
    let mut conn = options.connect().await.map_err(db_err)?;
    sqlx::query("ATTACH DATABASE $1 AS legacy")
        .bind(&legacy_name)
        .execute(&mut conn)
        .await
        .map_err(db_err)?;
    let mut imported = 0;
    {
        let mut tx = conn.begin().await.map_err(db_err)?;
        for (table, columns) in LEGACY_TABLES {
            let present: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM legacy.sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(table)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
            if present == 0 {
                continue;
            }
            let done = sqlx::query(&format!(
                "INSERT INTO main.{table} ({columns}) SELECT {columns} FROM legacy.{table} \
                 WHERE true ON CONFLICT DO NOTHING"
            ))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            imported += done.rows_affected();
        }
        tx.commit().await.map_err(db_err)?;
    }
    sqlx::query("DETACH DATABASE legacy")
        .execute(&mut conn)
        .await
        .map_err(db_err)?;
    conn.close().await.map_err(db_err)?;
    for suffix in ["", "-wal", "-shm"] {
        let from = data_dir.join(format!("s3.db{suffix}"));
        let to = data_dir.join(format!("s3.db.imported{suffix}"));
        match tokio::fs::rename(&from, &to).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(MetadataError::Backend(format!("rename s3.db: {e}"))),
        }
    }
    tracing::info!(
        rows = imported,
        "imported the S3 tables of s3.db into meta.db"
    );
    Ok(())
}
