//! Small blobs inline: content of at most the configured size (`inline_max_size`) is kept in
//! `inline-blobs.db` under the data directory (SQLite, WAL, `synchronous=FULL`) instead of a
//! file under `blobs/`, by the same name (its SHA-256 hex).
//!
//! Why: a durable file costs a temp file, its fdatasync, a rename and the fsync of a directory,
//! and the file system orders those fsyncs one journal commit at a time (about 1,700 to 3,000
//! files/s on one disk). Rows cost nothing per upload: one writer task commits every waiting
//! insert in one transaction (group commit, at most [`MAX_BATCH`] rows), so 64 concurrent small
//! uploads share one WAL fsync. Garage and MinIO inline small objects in their metadata the
//! same way.
//!
//! Durability: [`InlineStore::put`] answers only after the transaction holding the row has
//! committed (and so been fsynced); only then may metadata reference the blob, as for a file
//! blob after its rename and directory fsync. A crash before that leaves no row, or a row no
//! metadata references (an orphan, collected like an orphan file).
//!
//! Everything else is the same as for files: the blob is immutable and addressed by its
//! content, it is shared by every file with that content (dedupe), hashed again by fsck,
//! listed, aged and deleted through [`super::BlobStore`], which looks in both places.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::StorageError;

/// Most writes committed in one transaction (one WAL fsync).
const MAX_BATCH: usize = 256;
/// Writes waiting for the writer task; past it, writers wait (with [`WAIT`]).
const QUEUE_CAPACITY: usize = 4096;
/// Longest wait for a write to be queued and committed, or for a read connection.
const WAIT: Duration = Duration::from_secs(30);
/// The file's name under the data directory.
pub(super) const FILE_NAME: &str = "inline-blobs.db";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    content BLOB NOT NULL,
    written_ms INTEGER NOT NULL)";

/// One write for the writer task.
#[derive(Debug)]
enum Op {
    /// Stores the content (a no-op when the name is already stored: same name, same bytes).
    Put {
        sha256: String,
        content: Bytes,
    },
    Delete {
        sha256: String,
    },
}

#[derive(Debug)]
struct Job {
    op: Op,
    reply: oneshot::Sender<Result<(), String>>,
}

/// The inline blobs of one data directory: a writer task (group commit) and read connections.
#[derive(Debug)]
pub(super) struct InlineStore {
    jobs: mpsc::Sender<Job>,
    readers: SqlitePool,
}

fn db_err(op: &'static str) -> impl FnOnce(sqlx::Error) -> StorageError {
    move |e| StorageError::Io {
        op,
        source: std::io::Error::other(e.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl InlineStore {
    /// The database's path under `data_dir`.
    pub(super) fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Opens (creating when missing) the inline blobs of `data_dir` and starts the writer.
    pub(super) async fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let options = SqliteConnectOptions::new()
            .filename(Self::path_in(data_dir))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(WAIT);
        // Creates the file in WAL mode with its table, then leaves writing to the thread.
        let mut setup = SqliteConnection::connect_with(&options)
            .await
            .map_err(db_err("open inline blobs"))?;
        sqlx::query(SCHEMA)
            .execute(&mut setup)
            .await
            .map_err(db_err("create inline blobs table"))?;
        setup.close().await.map_err(db_err("open inline blobs"))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(2)
            .acquire_timeout(WAIT)
            .connect_with(options.read_only(true))
            .await
            .map_err(db_err("open inline blob readers"))?;
        let path = Self::path_in(data_dir);
        let writer = crate::blocking::run(move || {
            open_writer(&path).map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(StorageError::io("open inline blob writer"))?;
        let (jobs, rx) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("vaultfs-inline".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(StorageError::io("start inline blob writer"))?;
        Ok(InlineStore { jobs, readers })
    }

    async fn submit(&self, op: Op) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send_timeout(Job { op, reply }, WAIT)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => {
                    StorageError::Busy("inline blob writes backed up")
                }
                mpsc::error::SendTimeoutError::Closed(_) => StorageError::Io {
                    op: "write inline blob",
                    source: std::io::Error::other("the inline blob writer has stopped"),
                },
            })?;
        match tokio::time::timeout(WAIT, answer).await {
            Err(_) => Err(StorageError::Busy(
                "inline blob commit did not finish in time",
            )),
            Ok(Err(_)) => Err(StorageError::Io {
                op: "write inline blob",
                source: std::io::Error::other("the inline blob writer dropped the write"),
            }),
            Ok(Ok(Err(message))) => Err(StorageError::Io {
                op: "write inline blob",
                source: std::io::Error::other(message),
            }),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    /// Stores `content` as `sha256`; durable (committed) when this returns.
    pub(super) async fn put(&self, sha256: &str, content: Bytes) -> Result<(), StorageError> {
        self.submit(Op::Put {
            sha256: sha256.to_string(),
            content,
        })
        .await
    }

    /// Removes `sha256`; removing one that is not there is not an error.
    pub(super) async fn delete(&self, sha256: &str) -> Result<(), StorageError> {
        self.submit(Op::Delete {
            sha256: sha256.to_string(),
        })
        .await
    }

    /// The stored size and write time of `sha256`, `None` when it is not stored.
    pub(super) async fn stat(
        &self,
        sha256: &str,
    ) -> Result<Option<(u64, SystemTime)>, StorageError> {
        let row = sqlx::query("SELECT size, written_ms FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err("stat inline blob"))?;
        Ok(row.map(|r| {
            let size: i64 = r.get(0);
            let ms: i64 = r.get(1);
            (
                u64::try_from(size).unwrap_or(0),
                SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            )
        }))
    }

    /// The content of `sha256`, `None` when it is not stored.
    pub(super) async fn get(&self, sha256: &str) -> Result<Option<Bytes>, StorageError> {
        let row = sqlx::query("SELECT content FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.readers)
            .await
            .map_err(db_err("read inline blob"))?;
        Ok(row.map(|r| Bytes::from(r.get::<Vec<u8>, _>(0))))
    }

    /// Every stored name.
    pub(super) async fn list(&self) -> Result<Vec<String>, StorageError> {
        let rows = sqlx::query("SELECT sha256 FROM blobs")
            .fetch_all(&self.readers)
            .await
            .map_err(db_err("list inline blobs"))?;
        Ok(rows.into_iter().map(|r| r.get::<String, _>(0)).collect())
    }
}

/// The writer thread: takes every queued write (at most [`MAX_BATCH`]), commits them in one
/// transaction and answers each; ends when every [`InlineStore`] handle is gone. It owns a
/// synchronous connection (the SQLite library sqlx links, through `rusqlite`), so a batch
/// costs one wake-up rather than a hand-off to sqlx's connection thread per row (as the
/// metadata committer, `metadata/sqlite/committer.rs`).
fn write_loop(mut conn: rusqlite::Connection, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let result = commit_batch(&mut conn, &batch).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!(error = %e, writes = batch.len(), "inline blob commit failed");
        }
        metrics::histogram!("vaultfs_inline_blob_batch").record(batch.len() as f64);
        for job in batch.drain(..) {
            // A writer that gave up waiting no longer listens: nothing to tell it.
            let _ = job.reply.send(result.clone());
        }
    }
}

/// One transaction of `batch`. When a COMMIT fails (the disk full, say) SQLite may have
/// rolled back on its own or not: whatever is left open is rolled back, so the next batch
/// starts clean.
fn commit_batch(conn: &mut rusqlite::Connection, batch: &[Job]) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = write_rows(conn, batch).and_then(|()| conn.execute_batch("COMMIT"));
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

fn write_rows(conn: &rusqlite::Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let at = now_ms();
    let mut put = conn.prepare_cached(
        "INSERT INTO blobs (sha256, size, content, written_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (sha256) DO NOTHING",
    )?;
    let mut delete = conn.prepare_cached("DELETE FROM blobs WHERE sha256 = ?1")?;
    for job in batch {
        match &job.op {
            Op::Put { sha256, content } => {
                let size = i64::try_from(content.len()).unwrap_or(i64::MAX);
                put.execute(rusqlite::params![sha256, size, content.as_ref(), at])?;
            }
            Op::Delete { sha256 } => {
                delete.execute([sha256])?;
            }
        }
    }
    Ok(())
}

/// The writer's connection (the database exists: [`InlineStore::open`] created it).
fn open_writer(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(WAIT)?;
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    Ok(conn)
}
