//! [`MetadataStore`] on SQLite: the embedded default.
//!
//! - One writer connection (WAL, `synchronous=FULL`): every acknowledged change is durable when
//!   its transaction commits, and SQLite's single-writer rule is met without `SQLITE_BUSY`
//!   retries. Writers queue for that connection with a deadline ([`MetadataError::Busy`]).
//! - A small pool of read-only connections serves lookups and listings concurrently with
//!   writes (WAL readers never wait for the writer).
//! - sqlx runs each SQLite connection on its own thread, so no query blocks a runtime worker.
//!   The group committer is the exception that proves it: it owns a synchronous connection on
//!   a thread of its own ([`committer`]), so a batch of writes costs no hand-off per statement.

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

/// The group committer: its own thread and a synchronous connection (see its docs).
mod committer;
/// sqlx's query API, as `sql_rows!` uses it, over that connection.
mod sync_sql;

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
        committer::start(&db_path, busy_timeout, queue).await?;
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
