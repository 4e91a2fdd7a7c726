//! [`MetadataStore`] on SQLite: the embedded default.
//!
//! - One writer connection (WAL, `synchronous=FULL`): every acknowledged change is durable when
//!   its transaction commits, and SQLite's single-writer rule is met without `SQLITE_BUSY`
//!   retries. Writers queue for that connection with a deadline ([`MetadataError::Busy`]).
//! - A small pool of read-only connections serves lookups and listings concurrently with
//!   writes (WAL readers never wait for the writer).
//! - sqlx runs each SQLite connection on its own thread, so no query blocks a runtime worker.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::metadata::{
    check_put_precondition, log_mismatch_detail, new_file, now_ms, refcount_detail, replaced,
    rfc3339, AuditProblem, ChangeOutcome, Event, EventKind, FileMeta, MetadataAudit, MetadataError,
    MetadataStore, Precondition, PutOutcome, PutRequest, TokenRecord, AUDIT_LIMIT,
};
use super::storage::BlobRef;

/// Versioned schema migrations, applied in order at start. Never edit a released one: add one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
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
"#,
    ),
    (
        2,
        r#"
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"#,
    ),
];

const FILE_COLUMNS: &str = "id, path, size, sha256, version, content_type, created_at, modified_at";

/// Most writes committed in one transaction (one WAL fsync).
const MAX_BATCH: usize = 256;
/// Writes waiting for the committer; past this, writers wait (with their deadline).
const QUEUE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct SqliteMetadata {
    writer: SqlitePool,
    readers: SqlitePool,
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
}

/// One write, as queued for the group committer.
#[derive(Debug)]
enum WriteOp {
    Put(PutRequest),
    Delete {
        id: String,
        expected_path: String,
        precondition: Precondition,
    },
    Rename {
        id: String,
        expected_path: String,
        to: String,
        overwrite: bool,
    },
    Copy {
        id: String,
        expected_path: String,
        to: String,
        overwrite: bool,
    },
}

#[derive(Debug)]
enum WriteDone {
    Put(PutOutcome),
    Change(ChangeOutcome),
}

#[derive(Debug)]
struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteDone, MetadataError>>,
}

fn map_err(e: sqlx::Error) -> MetadataError {
    match &e {
        sqlx::Error::PoolTimedOut => MetadataError::Busy,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // SQLITE_BUSY, SQLITE_LOCKED and their extended codes (low byte).
            Some(code) if matches!(code.parse::<i64>().map(|c| c & 0xff), Ok(5) | Ok(6)) => {
                MetadataError::Busy
            }
            Some(code) if code.parse::<i64>().map(|c| c & 0xff) == Ok(13) => {
                MetadataError::StorageFull
            }
            _ => MetadataError::Backend(e.to_string()),
        },
        _ => MetadataError::Backend(e.to_string()),
    }
}

fn row_to_meta(row: &SqliteRow) -> Result<FileMeta, MetadataError> {
    let created: i64 = row.try_get("created_at").map_err(map_err)?;
    let modified: i64 = row.try_get("modified_at").map_err(map_err)?;
    let size: i64 = row.try_get("size").map_err(map_err)?;
    Ok(FileMeta {
        id: row.try_get("id").map_err(map_err)?,
        path: row.try_get("path").map_err(map_err)?,
        size: u64::try_from(size).map_err(|_| MetadataError::Backend("negative size".into()))?,
        sha256: row.try_get("sha256").map_err(map_err)?,
        version: row.try_get("version").map_err(map_err)?,
        content_type: row.try_get("content_type").map_err(map_err)?,
        created_at: rfc3339(created),
        modified_at: rfc3339(modified),
        modified_ms: modified,
    })
}

fn row_to_event(row: &SqliteRow) -> Result<Event, MetadataError> {
    let kind: String = row.try_get("kind").map_err(map_err)?;
    let size: i64 = row.try_get("size").map_err(map_err)?;
    let at: i64 = row.try_get("at").map_err(map_err)?;
    Ok(Event {
        seq: row.try_get("seq").map_err(map_err)?,
        kind: EventKind::parse(&kind)
            .ok_or_else(|| MetadataError::Backend(format!("unknown event kind {kind}")))?,
        id: row.try_get("file_id").map_err(map_err)?,
        path: row.try_get("path").map_err(map_err)?,
        from_path: row.try_get("from_path").map_err(map_err)?,
        version: row.try_get("version").map_err(map_err)?,
        size: u64::try_from(size).map_err(|_| MetadataError::Backend("negative size".into()))?,
        sha256: row.try_get("sha256").map_err(map_err)?,
        at: rfc3339(at),
    })
}

fn size_i64(size: u64) -> Result<i64, MetadataError> {
    i64::try_from(size).map_err(|_| MetadataError::Backend("size out of range".into()))
}

async fn file_by_id(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<FileMeta>, MetadataError> {
    let row = sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(row_to_meta).transpose()
}

async fn file_by_path(
    conn: &mut SqliteConnection,
    path: &str,
) -> Result<Option<FileMeta>, MetadataError> {
    let row = sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE path = ?"))
        .bind(path)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(row_to_meta).transpose()
}

async fn add_blob_ref(
    conn: &mut SqliteConnection,
    sha256: &str,
    size: u64,
) -> Result<(), MetadataError> {
    sqlx::query(
        "INSERT INTO blobs (sha256, size, refcount) VALUES (?, ?, 1)
         ON CONFLICT (sha256) DO UPDATE SET refcount = refcount + 1",
    )
    .bind(sha256)
    .bind(size_i64(size)?)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Drops one reference; returns the hash when none is left.
async fn release_blob_ref(
    conn: &mut SqliteConnection,
    sha256: &str,
) -> Result<Option<String>, MetadataError> {
    let left: Option<i64> = sqlx::query_scalar(
        "UPDATE blobs SET refcount = refcount - 1 WHERE sha256 = ? RETURNING refcount",
    )
    .bind(sha256)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(match left {
        Some(0) => Some(sha256.to_string()),
        Some(_) => None,
        None => {
            tracing::error!(sha256, "released a blob that has no reference row");
            None
        }
    })
}

async fn append_event(
    conn: &mut SqliteConnection,
    kind: EventKind,
    meta: &FileMeta,
    from_path: Option<&str>,
    at: i64,
) -> Result<i64, MetadataError> {
    sqlx::query_scalar(
        "INSERT INTO events (kind, file_id, path, from_path, version, size, sha256, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(kind.as_str())
    .bind(&meta.id)
    .bind(&meta.path)
    .bind(from_path)
    .bind(meta.version)
    .bind(size_i64(meta.size)?)
    .bind(&meta.sha256)
    .bind(at)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)
}

/// Deletes `victim` inside a transaction: row, blob reference, `deleted` event.
async fn delete_row(
    conn: &mut SqliteConnection,
    victim: &FileMeta,
    at: i64,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    sqlx::query("DELETE FROM files WHERE id = ?")
        .bind(&victim.id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    released.extend(release_blob_ref(conn, &victim.sha256).await?);
    append_event(conn, EventKind::Deleted, victim, None, at).await?;
    Ok(())
}

impl SqliteMetadata {
    /// Opens (creating if needed) `meta.db` in `data_dir` and applies pending migrations.
    pub async fn open(
        data_dir: &Path,
        busy_timeout: Duration,
        readers: u32,
    ) -> Result<Self, MetadataError> {
        let db_path = data_dir.join("meta.db");
        super::secret::private_database(&db_path).await?;
        let base = SqliteConnectOptions::from_str("sqlite://")
            .map_err(map_err)?
            .filename(&db_path)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(busy_timeout)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(map_err)?;
        migrate(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(busy_timeout)
            .connect_with(base.read_only(true))
            .await
            .map_err(map_err)?;
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(committer(writer.clone(), queue));
        Ok(SqliteMetadata {
            writer,
            readers,
            jobs,
            timeout: busy_timeout,
        })
    }

    /// Queues a write for the group committer and waits for its outcome. Both waits have the
    /// metadata deadline; past it the caller gets [`MetadataError::Busy`]. (A write still
    /// queued then may commit later: it was not acknowledged, and it is complete if visible.)
    async fn submit(&self, op: WriteOp) -> Result<WriteDone, MetadataError> {
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout(self.timeout, self.jobs.send(Job { op, reply })).await {
            Err(_) => return Err(MetadataError::Busy),
            Ok(Err(_)) => return Err(MetadataError::Backend("metadata committer stopped".into())),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout(self.timeout, answer).await {
            Err(_) => Err(MetadataError::Busy),
            Ok(Err(_)) => Err(MetadataError::Backend("metadata committer stopped".into())),
            Ok(Ok(result)) => result,
        }
    }
}

impl SqliteMetadata {
    async fn submit_change(&self, op: WriteOp) -> Result<ChangeOutcome, MetadataError> {
        match self.submit(op).await? {
            WriteDone::Change(outcome) => Ok(outcome),
            WriteDone::Put(_) => Err(unexpected()),
        }
    }
}

/// Group commit: takes whatever writes are queued (up to [`MAX_BATCH`]) and commits them in one
/// transaction, each inside its own savepoint so that one failing write (a precondition, a
/// conflict) rolls back alone. Under load many commits share one WAL fsync; alone, a write
/// commits at once.
async fn committer(writer: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&writer, &mut batch).await;
    }
    tracing::debug!("metadata committer stopped");
}

async fn commit_batch(writer: &SqlitePool, batch: &mut Vec<Job>) {
    let mut tx = match writer.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let err = map_err(e);
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(err.clone()));
            }
            return;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let result = apply_in_savepoint(&mut tx, job.op).await;
        results.push((job.reply, result));
    }
    match tx.commit().await {
        Ok(()) => {
            for (reply, result) in results {
                // Err: the caller is gone (client disconnected); the write stands.
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let err = map_err(e);
            tracing::error!(error = %err, "metadata batch commit failed");
            for (reply, _) in results {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

async fn apply_in_savepoint(
    conn: &mut SqliteConnection,
    op: WriteOp,
) -> Result<WriteDone, MetadataError> {
    sqlx::query("SAVEPOINT vaultfs_op")
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let result = match op {
        WriteOp::Put(req) => apply_put(conn, req).await.map(WriteDone::Put),
        WriteOp::Delete {
            id,
            expected_path,
            precondition,
        } => apply_delete(conn, &id, &expected_path, &precondition)
            .await
            .map(WriteDone::Change),
        WriteOp::Rename {
            id,
            expected_path,
            to,
            overwrite,
        } => apply_rename(conn, &id, &expected_path, &to, overwrite)
            .await
            .map(WriteDone::Change),
        WriteOp::Copy {
            id,
            expected_path,
            to,
            overwrite,
        } => apply_copy(conn, &id, &expected_path, &to, overwrite)
            .await
            .map(WriteDone::Change),
    };
    let end = if result.is_ok() {
        "RELEASE vaultfs_op"
    } else {
        "ROLLBACK TO vaultfs_op; RELEASE vaultfs_op"
    };
    for statement in end.split("; ") {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    result
}

type TokenRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

trait IntoRecord {
    fn into_record(self) -> TokenRecord;
}

impl IntoRecord for TokenRow {
    fn into_record(self) -> TokenRecord {
        let (id, label, secret_hash, scopes, prefix, created_at, expires_at, revoked_at) = self;
        TokenRecord {
            id,
            label,
            secret_hash,
            scopes,
            prefix,
            created_at,
            expires_at,
            revoked_at,
        }
    }
}

fn unexpected() -> MetadataError {
    MetadataError::Backend("committer answered with the wrong outcome kind".into())
}

async fn migrate(pool: &SqlitePool) -> Result<(), MetadataError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(map_err)?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(pool)
            .await
            .map_err(map_err)?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > known {
        return Err(MetadataError::Schema(format!(
            "database schema version {current} is newer than this binary knows ({known}); \
             refusing to start"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let mut tx = pool.begin().await.map_err(map_err)?;
        // One statement at a time: `raw_sql(..).execute(&mut conn)` defeats Send inference
        // inside tokio::spawn (sqlx issue #3150). Migrations contain no ';' in literals.
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| MetadataError::Schema(format!("migration {version}: {e}")))?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        tracing::info!(version, "applied metadata migration");
    }
    Ok(())
}

#[async_trait]
impl MetadataStore for SqliteMetadata {
    async fn put(&self, req: PutRequest) -> Result<PutOutcome, MetadataError> {
        match self.submit(WriteOp::Put(req)).await? {
            WriteDone::Put(outcome) => Ok(outcome),
            WriteDone::Change(_) => Err(unexpected()),
        }
    }

    async fn delete(
        &self,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError> {
        let op = WriteOp::Delete {
            id: id.to_string(),
            expected_path: expected_path.to_string(),
            precondition: precondition.clone(),
        };
        self.submit_change(op).await
    }

    async fn rename(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        let op = WriteOp::Rename {
            id: id.to_string(),
            expected_path: expected_path.to_string(),
            to: to.to_string(),
            overwrite,
        };
        self.submit_change(op).await
    }

    async fn copy(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        let op = WriteOp::Copy {
            id: id.to_string(),
            expected_path: expected_path.to_string(),
            to: to.to_string(),
            overwrite,
        };
        self.submit_change(op).await
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<FileMeta>, MetadataError> {
        let mut conn = self.readers.acquire().await.map_err(map_err)?;
        file_by_id(&mut conn, id).await
    }

    async fn get_by_path(&self, path: &str) -> Result<Option<FileMeta>, MetadataError> {
        let mut conn = self.readers.acquire().await.map_err(map_err)?;
        file_by_path(&mut conn, path).await
    }

    async fn scan(
        &self,
        start: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError> {
        let op = if inclusive { ">=" } else { ">" };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE path {op} ? ORDER BY path LIMIT ?"
        ))
        .bind(start)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter().map(row_to_meta).collect()
    }

    async fn blob_refcount(&self, sha256: &str) -> Result<i64, MetadataError> {
        // A read: the reader pool, not the committer's connection. The caller holds the blob's
        // exclusive lock, so every commit referencing it has finished and is visible here.
        let n: Option<i64> = sqlx::query_scalar("SELECT refcount FROM blobs WHERE sha256 = ?")
            .bind(sha256)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        Ok(n.unwrap_or(0))
    }

    async fn forget_blob(&self, sha256: &str) -> Result<bool, MetadataError> {
        let done = sqlx::query("DELETE FROM blobs WHERE sha256 = ? AND refcount = 0")
            .bind(sha256)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn unreferenced_blobs(&self, limit: usize) -> Result<Vec<String>, MetadataError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        sqlx::query_scalar("SELECT sha256 FROM blobs WHERE refcount = 0 LIMIT ?")
            .bind(limit)
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)
    }

    async fn events_after(&self, since: i64, limit: usize) -> Result<Vec<Event>, MetadataError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT seq, kind, file_id, path, from_path, version, size, sha256, at
             FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn latest_seq(&self) -> Result<i64, MetadataError> {
        // AUTOINCREMENT's counter: survives pruning, never reused.
        sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(map_err)
    }

    async fn oldest_seq(&self) -> Result<Option<i64>, MetadataError> {
        sqlx::query_scalar("SELECT MIN(seq) FROM events")
            .fetch_one(&self.readers)
            .await
            .map_err(map_err)
    }

    async fn prune_events(&self, older_than_ms: i64, keep_last: i64) -> Result<u64, MetadataError> {
        let latest = self.latest_seq().await?;
        let cut = latest.saturating_sub(keep_last);
        let mut total = 0;
        loop {
            // Small batches keep the writer free for commits in between.
            let done = sqlx::query(
                "DELETE FROM events WHERE seq IN (
                    SELECT seq FROM events WHERE seq <= ? OR at < ? ORDER BY seq LIMIT 5000)",
            )
            .bind(cut)
            .bind(older_than_ms)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
            total += done.rows_affected();
            if done.rows_affected() < 5000 {
                return Ok(total);
            }
        }
    }

    async fn audit(&self) -> Result<MetadataAudit, MetadataError> {
        let limit = i64::try_from(AUDIT_LIMIT).unwrap_or(i64::MAX);
        // One read transaction: WAL gives every statement below the same snapshot, so commits
        // made meanwhile by a running server cannot show up as false inconsistencies.
        let mut tx = self.readers.begin().await.map_err(map_err)?;
        let mut audit = MetadataAudit::default();
        let (files, events, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM events),
                    (SELECT MIN(seq) FROM events)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        audit.files = u64::try_from(files).unwrap_or(0);
        audit.events = u64::try_from(events).unwrap_or(0);
        audit.oldest_seq = oldest;
        audit.latest_seq = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let problem = |kind: &str, id: String, path: String, detail: String| AuditProblem {
            kind: kind.to_string(),
            id,
            path,
            detail,
        };

        // Pruning removes the oldest events only: inside the retained range, none may miss.
        let gaps: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT (SELECT MAX(p.seq) FROM events p WHERE p.seq < e.seq), e.seq FROM events e
             WHERE e.seq > (SELECT MIN(seq) FROM events)
               AND NOT EXISTS (SELECT 1 FROM events p WHERE p.seq = e.seq - 1)
             ORDER BY e.seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for (before, after) in gaps {
            audit.problems.push(problem(
                "log_gap",
                String::new(),
                String::new(),
                format!("events {} to {} are missing", before + 1, after - 1),
            ));
        }

        // The newest event of every id against the file's current row.
        let rows = sqlx::query(
            "WITH last AS (
                SELECT e.* FROM events e
                JOIN (SELECT file_id, MAX(seq) AS m FROM events GROUP BY file_id) l
                  ON e.seq = l.m)
             SELECT last.seq, last.kind, last.file_id, last.path, last.version, last.size,
                    last.sha256, f.id AS f_id, f.path AS f_path, f.version AS f_version,
                    f.size AS f_size, f.sha256 AS f_sha256
             FROM last LEFT JOIN files f ON f.id = last.file_id
             WHERE (last.kind = 'deleted' AND f.id IS NOT NULL)
                OR (last.kind <> 'deleted' AND (f.id IS NULL OR f.path <> last.path
                    OR f.version <> last.version OR f.size <> last.size
                    OR f.sha256 <> last.sha256))
             ORDER BY last.seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for row in &rows {
            let id: String = row.try_get("file_id").map_err(map_err)?;
            let path: String = row.try_get("path").map_err(map_err)?;
            let f_id: Option<String> = row.try_get("f_id").map_err(map_err)?;
            let event: (i64, String, i64, String) = (
                row.try_get("seq").map_err(map_err)?,
                row.try_get("kind").map_err(map_err)?,
                row.try_get("version").map_err(map_err)?,
                row.try_get("sha256").map_err(map_err)?,
            );
            let file: Option<(String, i64, String)> = match f_id {
                None => None,
                Some(_) => Some((
                    row.try_get("f_path").map_err(map_err)?,
                    row.try_get("f_version").map_err(map_err)?,
                    row.try_get("f_sha256").map_err(map_err)?,
                )),
            };
            let detail = log_mismatch_detail(
                event.0,
                &event.1,
                (&path, event.2, &event.3),
                file.as_ref().map(|(p, v, h)| (p.as_str(), *v, h.as_str())),
            );
            audit
                .problems
                .push(problem("log_mismatch", id, path, detail));
        }

        // While nothing was pruned, every file must have at least one event.
        if oldest == Some(1) {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, path FROM files
                 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.file_id = files.id)
                 ORDER BY path LIMIT ?",
            )
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            for (id, path) in rows {
                let detail = "the file has no event in a complete log".to_string();
                audit
                    .problems
                    .push(problem("log_missing", id, path, detail));
            }
        }

        // Reference counts decide when a blob is deleted: a low count loses data.
        let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
            "WITH used AS (SELECT sha256, COUNT(*) AS n FROM files GROUP BY sha256)
             SELECT b.sha256, b.refcount, COALESCE(u.n, 0) FROM blobs b
             LEFT JOIN used u ON u.sha256 = b.sha256 WHERE b.refcount <> COALESCE(u.n, 0)
             UNION ALL
             SELECT u.sha256, NULL, u.n FROM used u
             WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = u.sha256)
             LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for (sha, refcount, used) in rows {
            let detail = refcount_detail(&sha, refcount, used);
            audit
                .problems
                .push(problem("refcount", String::new(), String::new(), detail));
        }
        tx.rollback().await.map_err(map_err)?;
        Ok(audit)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), MetadataError> {
        sqlx::query(
            "INSERT INTO tokens (id, label, secret_hash, scopes, prefix, created_at, expires_at,
                                 revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.id)
        .bind(&token.label)
        .bind(&token.secret_hash)
        .bind(&token.scopes)
        .bind(&token.prefix)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => MetadataError::AlreadyExists,
            _ => map_err(e),
        })?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, MetadataError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, label, secret_hash, scopes, prefix, created_at, expires_at, revoked_at
             FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(TokenRow::into_record).collect())
    }

    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, MetadataError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(at_ms)
                .bind(id)
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn server_secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, MetadataError> {
        // First writer wins; every later call (and every replica) reads the same value.
        sqlx::query("INSERT OR IGNORE INTO server_secrets (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(fresh)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.writer)
            .await
            .map_err(map_err)
    }

    async fn ping(&self) -> Result<(), MetadataError> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

async fn apply_put(
    conn: &mut SqliteConnection,
    req: PutRequest,
) -> Result<PutOutcome, MetadataError> {
    let now = now_ms();
    let existing = file_by_path(&mut *conn, &req.path).await?;
    check_put_precondition(&req.precondition, existing.as_ref())?;
    add_blob_ref(&mut *conn, &req.blob.sha256, req.blob.size).await?;
    let outcome = match existing {
        Some(cur) => {
            let released = release_blob_ref(&mut *conn, &cur.sha256).await?;
            let meta = replaced(cur, &req, now);
            sqlx::query(
                "UPDATE files SET size = ?, sha256 = ?, version = ?, content_type = ?,
                 modified_at = ? WHERE id = ?",
            )
            .bind(size_i64(meta.size)?)
            .bind(&meta.sha256)
            .bind(meta.version)
            .bind(&meta.content_type)
            .bind(now)
            .bind(&meta.id)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
            append_event(&mut *conn, EventKind::Updated, &meta, None, now).await?;
            PutOutcome {
                meta,
                created: false,
                released,
            }
        }
        None => {
            let meta = new_file(&req.path, &req.blob, &req.content_type, now);
            insert_file(&mut *conn, &meta, now).await?;
            append_event(&mut *conn, EventKind::Created, &meta, None, now).await?;
            PutOutcome {
                meta,
                created: true,
                released: None,
            }
        }
    };
    Ok(outcome)
}

/// File `id`, which the caller locked at `expected_path`; [`MetadataError::PathChanged`] when a
/// concurrent move got there first (the caller re-reads and retries).
async fn load_locked(
    conn: &mut SqliteConnection,
    id: &str,
    expected_path: &str,
) -> Result<FileMeta, MetadataError> {
    let cur = file_by_id(&mut *conn, id)
        .await?
        .ok_or(MetadataError::NotFound)?;
    if cur.path != expected_path {
        return Err(MetadataError::PathChanged);
    }
    Ok(cur)
}

/// Makes `to` free for a move or copy: a file there is deleted (its own `deleted` event) when
/// `overwrite`, else [`MetadataError::AlreadyExists`].
async fn clear_target(
    conn: &mut SqliteConnection,
    to: &str,
    overwrite: bool,
    now: i64,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    if let Some(target) = file_by_path(&mut *conn, to).await? {
        if !overwrite {
            return Err(MetadataError::AlreadyExists);
        }
        delete_row(&mut *conn, &target, now, released).await?;
    }
    Ok(())
}

async fn apply_delete(
    conn: &mut SqliteConnection,
    id: &str,
    expected_path: &str,
    precondition: &Precondition,
) -> Result<ChangeOutcome, MetadataError> {
    let cur = load_locked(&mut *conn, id, expected_path).await?;
    if let Precondition::MustMatch(tags) = precondition {
        if !tags.matches(&cur.sha256) {
            return Err(MetadataError::PreconditionFailed);
        }
    }
    let mut released = Vec::new();
    delete_row(&mut *conn, &cur, now_ms(), &mut released).await?;
    Ok(ChangeOutcome {
        meta: cur,
        released,
    })
}

async fn apply_rename(
    conn: &mut SqliteConnection,
    id: &str,
    expected_path: &str,
    to: &str,
    overwrite: bool,
) -> Result<ChangeOutcome, MetadataError> {
    let cur = load_locked(&mut *conn, id, expected_path).await?;
    if cur.path == to {
        return Ok(ChangeOutcome {
            meta: cur,
            released: Vec::new(),
        });
    }
    let now = now_ms();
    let mut released = Vec::new();
    clear_target(&mut *conn, to, overwrite, now, &mut released).await?;
    sqlx::query("UPDATE files SET path = ? WHERE id = ?")
        .bind(to)
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let from = cur.path.clone();
    let meta = FileMeta {
        path: to.to_string(),
        ..cur
    };
    append_event(&mut *conn, EventKind::Moved, &meta, Some(&from), now).await?;
    Ok(ChangeOutcome { meta, released })
}

async fn apply_copy(
    conn: &mut SqliteConnection,
    id: &str,
    expected_path: &str,
    to: &str,
    overwrite: bool,
) -> Result<ChangeOutcome, MetadataError> {
    let src = load_locked(&mut *conn, id, expected_path).await?;
    if src.path == to {
        return Err(MetadataError::AlreadyExists);
    }
    let now = now_ms();
    let mut released = Vec::new();
    clear_target(&mut *conn, to, overwrite, now, &mut released).await?;
    let blob = BlobRef {
        sha256: src.sha256.clone(),
        size: src.size,
    };
    let meta = new_file(to, &blob, &src.content_type, now);
    add_blob_ref(&mut *conn, &meta.sha256, meta.size).await?;
    insert_file(&mut *conn, &meta, now).await?;
    append_event(&mut *conn, EventKind::Copied, &meta, Some(&src.path), now).await?;
    // Releasing the target's blob cannot free the source's: the copy holds a reference.
    released.retain(|h| *h != meta.sha256);
    Ok(ChangeOutcome { meta, released })
}

async fn insert_file(
    conn: &mut SqliteConnection,
    meta: &FileMeta,
    now: i64,
) -> Result<(), MetadataError> {
    sqlx::query(
        "INSERT INTO files (id, path, size, sha256, version, content_type, created_at, modified_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&meta.id)
    .bind(&meta.path)
    .bind(size_i64(meta.size)?)
    .bind(&meta.sha256)
    .bind(meta.version)
    .bind(&meta.content_type)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}
