//! [`MetadataStore`] on PostgreSQL: what several replicas share.
//!
//! Every write is one transaction that first locks the event counter's row
//! (`SELECT ... FOR UPDATE`), then applies the shared rules ([`super::rules::apply`]). That
//! one lock does three jobs:
//! - it serializes writers across all replicas, as SQLite's single writer does locally, so
//!   same-path writes through different replicas get versions 1..N and no deadlock can form;
//! - it makes event seqs gapless and in commit order. A seq is taken under the lock and
//!   published by the commit that releases it, so a reader never sees seq N+1 before N
//!   (a plain `SEQUENCE` would allow that);
//! - it carries `pg_notify('vaultfs_events', seq)`, delivered at commit, which other replicas
//!   turn into a poke of their notifier.
//!
//! Every statement runs under `lock_timeout` and `statement_timeout` equal to the metadata
//! deadline, so a busy database answers `Busy` (503) rather than hanging a request.
//! Serialization failures and deadlocks (never expected under the single lock) are retried
//! with backoff.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, PgConnection};

use super::rules::WriteDone;
use super::BlobFence;

/// The channel replicas listen on; the payload is the committed seq.
pub const NOTIFY_CHANNEL: &str = "vaultfs_events";
/// Key of the session advisory lock that serializes migrations across starting replicas.
const MIGRATION_LOCK: i64 = 0x7661_756c_7466_7301;
const RETRIES: u32 = 5;

/// PostgreSQL's SQL, where it differs from [`super::sql::common`].
mod dialect {
    pub(super) use super::super::sql::common::*;

    /// A case-insensitive LIKE for the level listing's name filter (ILIKE under the paths' \"C\" collation folds ASCII letters only, as SQLite's LIKE does).
    pub(super) const LIKE_ASCII_NOCASE: &str = "ILIKE";
    pub(super) const NAME: &str = "postgres";
    /// Versioned schema migrations, applied in order at start. Never edit a released one:
    /// add one.
    pub(super) const MIGRATIONS: &[(i64, &str)] = &[
        (1, include_str!("migrations/postgres/0001_initial.sql")),
        (
            2,
            include_str!("migrations/postgres/0002_events_path_prefix.sql"),
        ),
        (
            3,
            include_str!("migrations/postgres/0003_versions_trash.sql"),
        ),
        (
            10,
            include_str!("migrations/postgres/0010_tus_sessions.sql"),
        ),
        (
            11,
            include_str!("migrations/postgres/0011_tus_remote_staging.sql"),
        ),
        (20, include_str!("migrations/postgres/0020_s3_tables.sql")),
        (
            30,
            include_str!("migrations/postgres/0030_commits_leases.sql"),
        ),
        (
            31,
            include_str!("migrations/postgres/0031_commit_s3_lapsed_leases.sql"),
        ),
        (
            40,
            include_str!("migrations/postgres/0040_level_listing.sql"),
        ),
        (
            50,
            include_str!("migrations/postgres/0050_web_sessions.sql"),
        ),
        (
            51,
            include_str!("migrations/postgres/0051_sorted_listing.sql"),
        ),
    ];
    pub(super) const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
        version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";
    /// `events.path` has the database's collation; prefix ranges need byte order.
    pub(super) const BYTE_ORDER: &str = " COLLATE \"C\"";
    /// The seq is the counter's next value; the write holds the counter's row lock, so seqs
    /// are gapless and in commit order across replicas.
    pub(super) const APPEND_EVENT: &str =
        "WITH c AS (UPDATE event_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq)
         INSERT INTO events (seq, kind, file_id, path, from_path, version, size, sha256, at,
                             trash_id, restored_from, commit_id, commit_size)
         SELECT c.seq, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 FROM c RETURNING seq";
    pub(super) const VERSIONS_BEYOND: &str =
        "SELECT version, sha256 FROM versions WHERE file_id = $1 ORDER BY version DESC OFFSET $2";
    pub(super) const LATEST_SEQ: &str = "SELECT seq FROM event_counter WHERE id = 1";
    pub(super) const AUDIT_COUNTS: &str =
        "SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM events),
                (SELECT MIN(seq) FROM events), (SELECT seq FROM event_counter WHERE id = 1)";
}

sql_layer! {
    db: sqlx::Postgres,
    conn: PgConnection,
    row: PgRow,
    store: PostgresMetadata,
    reads: pool,
    writes: pool,
    extra: {
    async fn fence_blob(&self, sha256: &str, exclusive: bool) -> Result<BlobFence, MetadataError> {
        // Taken and released by a task of its own, which the caller cannot cancel halfway:
        // should the caller go away (a client disconnecting mid-commit), the task sees it and
        // releases what it took.
        let key = blob_lock_key(sha256);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let fences = Arc::clone(&self.fences);
        let (acquired_tx, acquired_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let acquired = loop {
                match fences.try_lock(key, exclusive).await {
                    Ok(true) => break Ok(()),
                    // Held by another replica in the other mode (an upload of the same
                    // content vs its collection): rare and short. Poll within the deadline.
                    Ok(false) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok(false) => break Err(MetadataError::Busy),
                    Err(e) => break Err(e),
                }
            };
            let held = acquired.is_ok();
            if acquired_tx.send(acquired).is_ok() && held {
                // Err when the fence drops (it never sends): release then.
                let _ = release_rx.await;
            }
            if held {
                fences.unlock(key, exclusive).await;
            }
        });
        match acquired_rx.await {
            Ok(Ok(())) => Ok(BlobFence::held(release_tx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MetadataError::Backend("blob fence task ended".into())),
        }
    }

    }
}

/// The [`super::MetadataStore`] on PostgreSQL (see the module docs): a connection pool,
/// the blob fences' session and the retention policy writes apply. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresMetadata {
    pool: PgPool,
    timeout: Duration,
    fences: Arc<Fences>,
    /// Guards the retention policy writes apply (replaced whole by `set_retention`; read
    /// by cloning the `Arc`, never held across an await).
    retention: Arc<std::sync::RwLock<Arc<RetentionPolicy>>>,
}

/// Session advisory locks on blobs, all on one dedicated connection: taking or releasing one
/// is a single non-blocking statement, so any number of fences cost one connection. Should
/// that connection break, PostgreSQL drops its locks; the break is logged and the next
/// fence reconnects.
#[derive(Debug)]
struct Fences {
    options: PgConnectOptions,
    timeout: Duration,
    /// Guards the one session the advisory-lock fences run on (None until the first fence or
    /// after a break); held for one fence statement at a time, which serializes the fences.
    conn: tokio::sync::Mutex<Option<PgConnection>>,
}

impl Fences {
    /// One statement, within the metadata deadline. A statement that does not answer in time
    /// takes the connection with it (its locks then end with the session, and that is
    /// logged): a lock must never be left held by a statement nobody waits for.
    async fn run(&self, sql: &str, key: i64) -> Result<bool, MetadataError> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            let connected = tokio::time::timeout(self.timeout, self.options.connect()).await;
            *slot = Some(
                connected
                    .map_err(|_| MetadataError::Busy)?
                    .map_err(map_err)?,
            );
        }
        let Some(conn) = slot.as_mut() else {
            return Err(MetadataError::Busy);
        };
        let query = sqlx::query_scalar::<_, bool>(sql)
            .bind(key)
            .fetch_one(&mut *conn);
        match tokio::time::timeout(self.timeout, query).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "blob fence connection failed; its locks are gone");
                *slot = None;
                Err(map_err(e))
            }
            Err(_) => {
                tracing::error!(
                    "blob fence statement timed out; dropping the connection and its locks"
                );
                *slot = None;
                Err(MetadataError::Busy)
            }
        }
    }

    async fn try_lock(&self, key: i64, exclusive: bool) -> Result<bool, MetadataError> {
        let sql = if exclusive {
            "SELECT pg_try_advisory_lock($1)"
        } else {
            "SELECT pg_try_advisory_lock_shared($1)"
        };
        self.run(sql, key).await
    }

    async fn unlock(&self, key: i64, exclusive: bool) {
        let sql = if exclusive {
            "SELECT pg_advisory_unlock($1)"
        } else {
            "SELECT pg_advisory_unlock_shared($1)"
        };
        match self.run(sql, key).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(key, "released a blob fence that was not held"),
            Err(e) => tracing::warn!(error = %e, "could not release a blob fence"),
        }
    }
}

fn map_err(e: sqlx::Error) -> MetadataError {
    match &e {
        sqlx::Error::PoolTimedOut => MetadataError::Busy,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // lock_not_available, query_canceled (statement_timeout), too_many_connections.
            Some("55P03" | "57014" | "53300") => MetadataError::Busy,
            // disk_full, insufficient_resources.
            Some("53100" | "53000") => MetadataError::StorageFull,
            Some("23505") => MetadataError::AlreadyExists,
            _ => MetadataError::Backend(e.to_string()),
        },
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed => MetadataError::Busy,
        _ => MetadataError::Backend(e.to_string()),
    }
}

/// Serialization failure or deadlock: the transaction may simply be run again.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

impl PostgresMetadata {
    /// The tus session rows' store, on this database's pool.
    pub(crate) fn tus_store(&self) -> super::tus::TusStore {
        super::tus::TusStore::postgres(self.pool.clone(), self.timeout)
    }

    /// The web session rows' store, on this database's pool.
    pub(crate) fn web_session_store(&self) -> super::web_sessions::WebSessionStore {
        super::web_sessions::WebSessionStore::postgres(self.pool.clone(), self.timeout)
    }

    /// Connects to `url` (`postgres://user:pass@host/db`), with at most `max_connections`,
    /// and applies pending migrations (one replica at a time).
    pub async fn open(
        url: &str,
        timeout: Duration,
        max_connections: u32,
    ) -> Result<Self, MetadataError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| MetadataError::Schema(format!("invalid metadata URL: {e}")))?;
        let ms = timeout.as_millis().max(1);
        let options = options
            .options([
                ("lock_timeout", format!("{ms}ms")),
                ("statement_timeout", format!("{ms}ms")),
                (
                    "idle_in_transaction_session_timeout",
                    format!("{}ms", ms * 3),
                ),
            ])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(timeout)
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        let fences = Arc::new(Fences {
            options,
            timeout,
            conn: tokio::sync::Mutex::new(None),
        });
        let store = PostgresMetadata {
            pool,
            timeout,
            fences,
            retention: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The pool, for `LISTEN` (see [`NOTIFY_CHANNEL`]).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Listens for other replicas' commits and pokes `notifier` for each (its hub then reads
    /// the log, so nothing depends on a notification arriving: a lost one is made up by the
    /// next, or by the poke every second that covers a broken listening connection).
    pub fn spawn_listener(
        &self,
        notifier: crate::services::notification::Notifier,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut listener: Option<sqlx::postgres::PgListener> = None;
            loop {
                if listener.is_none() {
                    match sqlx::postgres::PgListener::connect_with(&pool).await {
                        Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
                            Ok(()) => listener = Some(l),
                            Err(e) => tracing::warn!(error = %e, "LISTEN failed; retrying"),
                        },
                        Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; retrying"),
                    }
                    notifier.poke();
                }
                let wait = async {
                    match listener.as_mut() {
                        Some(l) => {
                            match tokio::time::timeout(Duration::from_secs(1), l.recv()).await {
                                Ok(Ok(_)) | Err(_) => true,
                                Ok(Err(e)) => {
                                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                                    false
                                }
                            }
                        }
                        None => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            true
                        }
                    }
                };
                tokio::select! {
                    alive = wait => {
                        if !alive {
                            listener = None;
                        }
                        notifier.poke();
                    }
                    () = crate::services::notification::until_true(&mut shutdown) => return,
                }
            }
        });
    }

    async fn migrate(&self) -> Result<(), MetadataError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        // Migrations may take longer than a request's deadline.
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        let result = migrate(&mut conn).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
        let _ = sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await;
        result
    }

    /// Runs `op` in a transaction holding the event counter's row lock; retried on
    /// serialization failures.
    async fn write(&self, op: WriteOp) -> Result<WriteDone, MetadataError> {
        let op = op.fenced();
        let mut attempt = 0;
        let policy = self.policy();
        loop {
            match self.write_once(&op, &policy).await {
                Err(RetryOr::Retry(e)) if attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "metadata transaction retried");
                    let backoff = Duration::from_millis(10 << attempt).min(self.timeout);
                    tokio::time::sleep(backoff).await;
                }
                Err(RetryOr::Retry(e)) => return Err(map_err(e)),
                Err(RetryOr::Fail(e)) => return Err(e),
                Ok(done) => return Ok(done),
            }
        }
    }

    async fn write_once(
        &self,
        op: &WriteOp,
        policy: &RetentionPolicy,
    ) -> Result<WriteDone, RetryOr> {
        let mut tx = self.pool.begin().await.map_err(RetryOr::from_sqlx)?;
        sqlx::query("SELECT seq FROM event_counter WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await
            .map_err(RetryOr::from_sqlx)?;
        let mut rows = SqlTx::new(&mut tx);
        // Err: dropping `tx` rolls everything back.
        let done = rules::apply(&mut rows, op, policy)
            .await
            .map_err(RetryOr::Fail)?;
        if let Some(last) = rows.last_seq {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(last.to_string())
                .execute(&mut *tx)
                .await
                .map_err(RetryOr::from_sqlx)?;
        }
        tx.commit().await.map_err(RetryOr::from_sqlx)?;
        Ok(done)
    }

    /// A read-only transaction with one snapshot for every statement, while other replicas
    /// write.
    async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, MetadataError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        Ok(tx)
    }

    async fn shutdown(&self) {
        self.pool.close().await;
    }
}

enum RetryOr {
    Retry(sqlx::Error),
    Fail(MetadataError),
}

impl RetryOr {
    fn from_sqlx(e: sqlx::Error) -> Self {
        if is_retryable(&e) {
            RetryOr::Retry(e)
        } else {
            RetryOr::Fail(map_err(e))
        }
    }
}

/// The advisory-lock key of a blob: the first 8 bytes of its SHA-256 (collisions only make
/// two blobs share a lock).
fn blob_lock_key(sha256: &str) -> i64 {
    let bytes = hex::decode(sha256.get(..16).unwrap_or("")).unwrap_or_default();
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(bytes) {
        *k = b;
    }
    i64::from_be_bytes(key)
}
