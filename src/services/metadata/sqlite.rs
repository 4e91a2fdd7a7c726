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
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::rules::WriteDone;

/// Most writes committed in one transaction (one WAL fsync).
const MAX_BATCH: usize = 256;
/// Writes waiting for the committer; past this, writers wait (with their deadline).
const QUEUE_CAPACITY: usize = 4096;

/// SQLite's SQL, where it differs from [`super::sql::common`].
mod dialect {
    pub(super) use super::super::sql::common::*;

    /// A case-insensitive LIKE for the level listing's name filter (SQLite's LIKE folds ASCII letters only).
    pub(super) const LIKE_ASCII_NOCASE: &str = "LIKE";
    pub(super) const NAME: &str = "sqlite";
    /// Versioned schema migrations, applied in order at start. Never edit a released one:
    /// add one.
    pub(super) const MIGRATIONS: &[(i64, &str)] = &[
        (
            1,
            include_str!("migrations/sqlite/0001_files_blobs_events.sql"),
        ),
        (2, include_str!("migrations/sqlite/0002_tokens_secrets.sql")),
        (3, include_str!("migrations/sqlite/0003_versions_trash.sql")),
        (10, include_str!("migrations/sqlite/0010_tus_sessions.sql")),
        (
            11,
            include_str!("migrations/sqlite/0011_tus_remote_staging.sql"),
        ),
        (20, include_str!("migrations/sqlite/0020_s3_tables.sql")),
        (
            30,
            include_str!("migrations/sqlite/0030_commits_leases.sql"),
        ),
        (
            31,
            include_str!("migrations/sqlite/0031_commit_s3_lapsed_leases.sql"),
        ),
        (40, include_str!("migrations/sqlite/0040_level_listing.sql")),
        (50, include_str!("migrations/sqlite/0050_web_sessions.sql")),
        (
            51,
            include_str!("migrations/sqlite/0051_sorted_listing.sql"),
        ),
    ];
    pub(super) const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)";
    /// TEXT compares bytewise already.
    pub(super) const BYTE_ORDER: &str = "";
    /// AUTOINCREMENT gives the seq: gapless under the single writer, never reused.
    pub(super) const APPEND_EVENT: &str =
        "INSERT INTO events (kind, file_id, path, from_path, version, size, sha256, at,
                             trash_id, restored_from, commit_id, commit_size)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING seq";
    /// AUTOINCREMENT's counter: survives pruning, never reused.
    /// SQLite needs a LIMIT before an OFFSET (-1: none).
    pub(super) const VERSIONS_BEYOND: &str =
        "SELECT version, sha256 FROM versions WHERE file_id = $1 ORDER BY version DESC LIMIT -1 OFFSET $2";
    pub(super) const LATEST_SEQ: &str =
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)";
    pub(super) const AUDIT_COUNTS: &str =
        "SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM events),
                (SELECT MIN(seq) FROM events),
                COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)";
}

sql_layer! {
    db: sqlx::Sqlite,
    conn: SqliteConnection,
    row: SqliteRow,
    store: SqliteMetadata,
    reads: readers,
    writes: writer,
    extra: {}
}

/// The [`super::MetadataStore`] on SQLite (see the module docs): the writer connection fed
/// by a group-commit queue, a pool of read-only connections and the retention policy writes
/// apply. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteMetadata {
    writer: SqlitePool,
    readers: SqlitePool,
    jobs: mpsc::Sender<Job>,
    timeout: Duration,
    /// Guards the retention policy writes apply (replaced whole by `set_retention`; read
    /// by cloning the `Arc`, never held across an await).
    retention: Arc<std::sync::RwLock<Arc<RetentionPolicy>>>,
}

#[derive(Debug)]
struct Job {
    op: WriteOp,
    policy: Arc<RetentionPolicy>,
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

impl SqliteMetadata {
    /// Opens (creating if needed) `meta.db` in `data_dir` and applies pending migrations.
    pub async fn open(
        data_dir: &Path,
        busy_timeout: Duration,
        readers: u32,
    ) -> Result<Self, MetadataError> {
        let db_path = data_dir.join("meta.db");
        crate::services::secret::private_database(&db_path).await?;
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
        migrate(&mut *writer.acquire().await.map_err(map_err)?).await?;
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
            retention: Arc::default(),
        })
    }

    /// The tus session rows' store, on this database's writer and readers.
    pub(crate) fn tus_store(&self) -> super::tus::TusStore {
        super::tus::TusStore::sqlite(self.writer.clone(), self.readers.clone(), self.timeout)
    }

    /// The web session rows' store, on this database's writer and readers.
    pub(crate) fn web_session_store(&self) -> super::web_sessions::WebSessionStore {
        super::web_sessions::WebSessionStore::sqlite(
            self.writer.clone(),
            self.readers.clone(),
            self.timeout,
        )
    }

    /// Queues a write for the group committer and waits for its outcome. Both waits have the
    /// metadata deadline; past it the caller gets [`MetadataError::Busy`]. (A write still
    /// queued then may commit later: it was not acknowledged, and it is complete if visible.)
    async fn write(&self, op: WriteOp) -> Result<WriteDone, MetadataError> {
        let op = op.fenced();
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op,
            policy: self.policy(),
            reply,
        };
        match tokio::time::timeout(self.timeout, self.jobs.send(job)).await {
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

    /// A read transaction: WAL gives every statement in it the same snapshot, so commits
    /// made meanwhile by a running server cannot show up as false inconsistencies.
    async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, MetadataError> {
        self.readers.begin().await.map_err(map_err)
    }

    async fn shutdown(&self) {
        self.readers.close().await;
        self.writer.close().await;
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
    let mut conn = match writer.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            fail_batch(batch, map_err(e));
            return;
        }
    };
    if !run_batch(&mut conn, batch).await {
        // A failed BEGIN or COMMIT (the disk full, say) leaves the connection's transaction
        // state unknown: SQLite may have rolled back on its own, and sqlx's depth counter
        // then stays at 1, so every later BEGIN on it would fail. The writer pool opens a
        // fresh connection instead of reusing this one.
        if let Err(e) = conn.close().await {
            tracing::warn!(error = %e, "closing the metadata writer connection failed");
        }
    }
}

fn fail_batch(batch: &mut Vec<Job>, err: MetadataError) {
    for job in batch.drain(..) {
        let _ = job.reply.send(Err(err.clone()));
    }
}

/// The batch in one transaction on `conn`; false when the connection must not be reused.
async fn run_batch(conn: &mut SqliteConnection, batch: &mut Vec<Job>) -> bool {
    let mut tx = match sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let err = map_err(e);
            tracing::error!(error = %err, "metadata batch could not begin");
            fail_batch(batch, err);
            return false;
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        let result = apply_in_savepoint(&mut tx, job.op, &job.policy).await;
        results.push((job.reply, result));
    }
    match tx.commit().await {
        Ok(()) => {
            for (reply, result) in results {
                // Err: the caller is gone (client disconnected); the write stands.
                let _ = reply.send(result);
            }
            true
        }
        Err(e) => {
            let err = map_err(e);
            tracing::error!(error = %err, "metadata batch commit failed");
            for (reply, _) in results {
                let _ = reply.send(Err(err.clone()));
            }
            false
        }
    }
}

/// One write inside its own savepoint: it fails alone, and a `put_many` fails whole.
async fn apply_in_savepoint(
    conn: &mut SqliteConnection,
    op: WriteOp,
    policy: &RetentionPolicy,
) -> Result<WriteDone, MetadataError> {
    sqlx::query("SAVEPOINT vaultfs_op")
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    let result = rules::apply(&mut SqlTx::new(&mut *conn), &op, policy).await;
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
