//! [`MetadataStore`] on PostgreSQL: what several replicas share.
//!
//! Every write is one transaction that first locks the event counter's row
//! (`SELECT ... FOR UPDATE`). That one lock does three jobs:
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

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, PgConnection, Row};

use super::metadata::{
    check_put_precondition, log_mismatch_detail, new_file, now_ms, refcount_detail, replaced,
    rfc3339, AuditProblem, BlobFence, ChangeOutcome, Event, EventKind, FileMeta, MetadataAudit,
    MetadataError, MetadataStore, Precondition, PutOutcome, PutRequest, TokenRecord, AUDIT_LIMIT,
};
use super::storage::BlobRef;

/// The channel replicas listen on; the payload is the committed seq.
pub const NOTIFY_CHANNEL: &str = "vaultfs_events";
/// Key of the session advisory lock that serializes migrations across starting replicas.
const MIGRATION_LOCK: i64 = 0x7661_756c_7466_7301;
const RETRIES: u32 = 5;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
CREATE TABLE files (
    id           TEXT PRIMARY KEY,
    path         TEXT NOT NULL UNIQUE COLLATE "C",
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    version      BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    modified_at  BIGINT NOT NULL
);
CREATE INDEX files_sha256 ON files (sha256);
CREATE TABLE blobs (
    sha256   TEXT PRIMARY KEY,
    size     BIGINT NOT NULL,
    refcount BIGINT NOT NULL CHECK (refcount >= 0)
);
CREATE INDEX blobs_unreferenced ON blobs (sha256) WHERE refcount = 0;
CREATE TABLE event_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
INSERT INTO event_counter (id, seq) VALUES (1, 0);
CREATE TABLE events (
    seq       BIGINT PRIMARY KEY,
    kind      TEXT NOT NULL,
    file_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    from_path TEXT,
    version   BIGINT NOT NULL,
    size      BIGINT NOT NULL,
    sha256    TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX events_file_id ON events (file_id);
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    prefix      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
)
"#,
)];

const FILE_COLUMNS: &str = "id, path, size, sha256, version, content_type, created_at, modified_at";
const EVENT_COLUMNS: &str = "seq, kind, file_id, path, from_path, version, size, sha256, at";

#[derive(Debug, Clone)]
pub struct PostgresMetadata {
    pool: PgPool,
    timeout: Duration,
    fences: Arc<Fences>,
}

/// Session advisory locks on blobs, all on one dedicated connection: taking or releasing one
/// is a single non-blocking statement, so any number of fences cost one connection. Should
/// that connection break, PostgreSQL drops its locks; the break is logged and the next
/// fence reconnects.
#[derive(Debug)]
struct Fences {
    options: PgConnectOptions,
    timeout: Duration,
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

fn size_i64(size: u64) -> Result<i64, MetadataError> {
    i64::try_from(size).map_err(|_| MetadataError::Backend("size out of range".into()))
}

fn row_to_meta(row: &PgRow) -> Result<FileMeta, MetadataError> {
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

fn row_to_event(row: &PgRow) -> Result<Event, MetadataError> {
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

/// One write transaction's view of the event counter (locked for the transaction).
struct Seq {
    next: i64,
    appended: bool,
}

async fn file_where(
    conn: &mut PgConnection,
    column: &str,
    value: &str,
) -> Result<Option<FileMeta>, MetadataError> {
    let row = sqlx::query(&format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.as_ref().map(row_to_meta).transpose()
}

async fn add_blob_ref(
    conn: &mut PgConnection,
    sha256: &str,
    size: u64,
) -> Result<(), MetadataError> {
    sqlx::query(
        "INSERT INTO blobs (sha256, size, refcount) VALUES ($1, $2, 1)
         ON CONFLICT (sha256) DO UPDATE SET refcount = blobs.refcount + 1",
    )
    .bind(sha256)
    .bind(size_i64(size)?)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn release_blob_ref(
    conn: &mut PgConnection,
    sha256: &str,
) -> Result<Option<String>, MetadataError> {
    let left: Option<i64> = sqlx::query_scalar(
        "UPDATE blobs SET refcount = refcount - 1 WHERE sha256 = $1 RETURNING refcount",
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
    conn: &mut PgConnection,
    seq: &mut Seq,
    kind: EventKind,
    meta: &FileMeta,
    from_path: Option<&str>,
    at: i64,
) -> Result<(), MetadataError> {
    seq.next += 1;
    seq.appended = true;
    sqlx::query(
        "INSERT INTO events (seq, kind, file_id, path, from_path, version, size, sha256, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(seq.next)
    .bind(kind.as_str())
    .bind(&meta.id)
    .bind(&meta.path)
    .bind(from_path)
    .bind(meta.version)
    .bind(size_i64(meta.size)?)
    .bind(&meta.sha256)
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn insert_file(
    conn: &mut PgConnection,
    meta: &FileMeta,
    now: i64,
) -> Result<(), MetadataError> {
    sqlx::query(
        "INSERT INTO files (id, path, size, sha256, version, content_type, created_at, modified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

async fn delete_row(
    conn: &mut PgConnection,
    seq: &mut Seq,
    victim: &FileMeta,
    at: i64,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    sqlx::query("DELETE FROM files WHERE id = $1")
        .bind(&victim.id)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    released.extend(release_blob_ref(conn, &victim.sha256).await?);
    append_event(conn, seq, EventKind::Deleted, victim, None, at).await
}

async fn load_locked(
    conn: &mut PgConnection,
    id: &str,
    expected_path: &str,
) -> Result<FileMeta, MetadataError> {
    let cur = file_where(conn, "id", id)
        .await?
        .ok_or(MetadataError::NotFound)?;
    if cur.path != expected_path {
        return Err(MetadataError::PathChanged);
    }
    Ok(cur)
}

async fn clear_target(
    conn: &mut PgConnection,
    seq: &mut Seq,
    to: &str,
    overwrite: bool,
    now: i64,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    if let Some(target) = file_where(conn, "path", to).await? {
        if !overwrite {
            return Err(MetadataError::AlreadyExists);
        }
        delete_row(conn, seq, &target, now, released).await?;
    }
    Ok(())
}

/// The write operations, each applied inside the locked transaction.
#[derive(Debug, Clone)]
enum WriteOp<'a> {
    Put(&'a PutRequest),
    Delete(&'a str, &'a str, &'a Precondition),
    Rename(&'a str, &'a str, &'a str, bool),
    Copy(&'a str, &'a str, &'a str, bool),
}

enum Done {
    Put(PutOutcome),
    Change(ChangeOutcome),
}

async fn apply(
    conn: &mut PgConnection,
    seq: &mut Seq,
    op: &WriteOp<'_>,
) -> Result<Done, MetadataError> {
    let now = now_ms();
    match *op {
        WriteOp::Put(req) => {
            let existing = file_where(conn, "path", &req.path).await?;
            check_put_precondition(&req.precondition, existing.as_ref())?;
            add_blob_ref(conn, &req.blob.sha256, req.blob.size).await?;
            Ok(Done::Put(match existing {
                Some(cur) => {
                    let released = release_blob_ref(conn, &cur.sha256).await?;
                    let meta = replaced(cur, req, now);
                    sqlx::query(
                        "UPDATE files SET size = $1, sha256 = $2, version = $3, content_type = $4,
                         modified_at = $5 WHERE id = $6",
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
                    append_event(conn, seq, EventKind::Updated, &meta, None, now).await?;
                    PutOutcome {
                        meta,
                        created: false,
                        released,
                    }
                }
                None => {
                    let meta = new_file(&req.path, &req.blob, &req.content_type, now);
                    insert_file(conn, &meta, now).await?;
                    append_event(conn, seq, EventKind::Created, &meta, None, now).await?;
                    PutOutcome {
                        meta,
                        created: true,
                        released: None,
                    }
                }
            }))
        }
        WriteOp::Delete(id, expected_path, precondition) => {
            let cur = load_locked(conn, id, expected_path).await?;
            if let Precondition::MustMatch(tags) = precondition {
                if !tags.matches(&cur.sha256) {
                    return Err(MetadataError::PreconditionFailed);
                }
            }
            let mut released = Vec::new();
            delete_row(conn, seq, &cur, now, &mut released).await?;
            Ok(Done::Change(ChangeOutcome {
                meta: cur,
                released,
            }))
        }
        WriteOp::Rename(id, expected_path, to, overwrite) => {
            let cur = load_locked(conn, id, expected_path).await?;
            if cur.path == to {
                return Ok(Done::Change(ChangeOutcome {
                    meta: cur,
                    released: Vec::new(),
                }));
            }
            let mut released = Vec::new();
            clear_target(conn, seq, to, overwrite, now, &mut released).await?;
            sqlx::query("UPDATE files SET path = $1 WHERE id = $2")
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
            append_event(conn, seq, EventKind::Moved, &meta, Some(&from), now).await?;
            Ok(Done::Change(ChangeOutcome { meta, released }))
        }
        WriteOp::Copy(id, expected_path, to, overwrite) => {
            let src = load_locked(conn, id, expected_path).await?;
            if src.path == to {
                return Err(MetadataError::AlreadyExists);
            }
            let mut released = Vec::new();
            clear_target(conn, seq, to, overwrite, now, &mut released).await?;
            let blob = BlobRef {
                sha256: src.sha256.clone(),
                size: src.size,
            };
            let meta = new_file(to, &blob, &src.content_type, now);
            add_blob_ref(conn, &meta.sha256, meta.size).await?;
            insert_file(conn, &meta, now).await?;
            append_event(conn, seq, EventKind::Copied, &meta, Some(&src.path), now).await?;
            released.retain(|h| *h != meta.sha256);
            Ok(Done::Change(ChangeOutcome { meta, released }))
        }
    }
}

impl PostgresMetadata {
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
        notifier: super::notification::Notifier,
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
                    () = super::notification::until_true(&mut shutdown) => return,
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
        let result = migrate_locked(&mut conn).await;
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
    async fn write(&self, op: WriteOp<'_>) -> Result<Done, MetadataError> {
        let mut attempt = 0;
        loop {
            match self.write_once(&op).await {
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

    /// A delete, move or copy.
    async fn change(&self, op: WriteOp<'_>) -> Result<ChangeOutcome, MetadataError> {
        match self.write(op).await? {
            Done::Change(o) => Ok(o),
            Done::Put(_) => Err(unexpected()),
        }
    }

    async fn write_once(&self, op: &WriteOp<'_>) -> Result<Done, RetryOr> {
        let mut tx = self.pool.begin().await.map_err(RetryOr::from_sqlx)?;
        let current: i64 =
            sqlx::query_scalar("SELECT seq FROM event_counter WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .map_err(RetryOr::from_sqlx)?;
        let mut seq = Seq {
            next: current,
            appended: false,
        };
        let done = apply(&mut tx, &mut seq, op).await.map_err(RetryOr::Fail)?;
        if seq.appended {
            sqlx::query("UPDATE event_counter SET seq = $1 WHERE id = 1")
                .bind(seq.next)
                .execute(&mut *tx)
                .await
                .map_err(RetryOr::from_sqlx)?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(seq.next.to_string())
                .execute(&mut *tx)
                .await
                .map_err(RetryOr::from_sqlx)?;
        }
        tx.commit().await.map_err(RetryOr::from_sqlx)?;
        Ok(done)
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

async fn migrate_locked(conn: &mut PgConnection) -> Result<(), MetadataError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    let current: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&mut *conn)
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
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(map_err)?;
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| MetadataError::Schema(format!("migration {version}: {e}")))?;
        }
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        tracing::info!(version, "applied metadata migration (PostgreSQL)");
    }
    Ok(())
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

fn unexpected() -> MetadataError {
    MetadataError::Backend("write answered with the wrong outcome kind".into())
}

#[async_trait]
impl MetadataStore for PostgresMetadata {
    async fn get_by_id(&self, id: &str) -> Result<Option<FileMeta>, MetadataError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        file_where(&mut conn, "id", id).await
    }

    async fn get_by_path(&self, path: &str) -> Result<Option<FileMeta>, MetadataError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        file_where(&mut conn, "path", path).await
    }

    async fn put(&self, req: PutRequest) -> Result<PutOutcome, MetadataError> {
        match self.write(WriteOp::Put(&req)).await? {
            Done::Put(o) => Ok(o),
            Done::Change(_) => Err(unexpected()),
        }
    }

    async fn delete(
        &self,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError> {
        self.change(WriteOp::Delete(id, expected_path, precondition))
            .await
    }

    async fn rename(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        self.change(WriteOp::Rename(id, expected_path, to, overwrite))
            .await
    }

    async fn copy(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        self.change(WriteOp::Copy(id, expected_path, to, overwrite))
            .await
    }

    async fn scan(
        &self,
        start: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError> {
        let op = if inclusive { ">=" } else { ">" };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Byte order (the column's "C" collation), as SQLite compares: cursors stay valid.
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE path {op} $1 ORDER BY path LIMIT $2"
        ))
        .bind(start)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(row_to_meta).collect()
    }

    async fn blob_refcount(&self, sha256: &str) -> Result<i64, MetadataError> {
        let n: Option<i64> = sqlx::query_scalar("SELECT refcount FROM blobs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(n.unwrap_or(0))
    }

    async fn forget_blob(&self, sha256: &str) -> Result<bool, MetadataError> {
        let done = sqlx::query("DELETE FROM blobs WHERE sha256 = $1 AND refcount = 0")
            .bind(sha256)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn unreferenced_blobs(&self, limit: usize) -> Result<Vec<String>, MetadataError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        sqlx::query_scalar("SELECT sha256 FROM blobs WHERE refcount = 0 LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn events_after(&self, since: i64, limit: usize) -> Result<Vec<Event>, MetadataError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(row_to_event).collect()
    }

    async fn latest_seq(&self) -> Result<i64, MetadataError> {
        sqlx::query_scalar("SELECT seq FROM event_counter WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn oldest_seq(&self) -> Result<Option<i64>, MetadataError> {
        sqlx::query_scalar("SELECT MIN(seq) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn prune_events(&self, older_than_ms: i64, keep_last: i64) -> Result<u64, MetadataError> {
        let cut = self.latest_seq().await?.saturating_sub(keep_last);
        let mut total = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM events WHERE seq IN (
                    SELECT seq FROM events WHERE seq <= $1 OR at < $2 ORDER BY seq LIMIT 5000)",
            )
            .bind(cut)
            .bind(older_than_ms)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
            total += done.rows_affected();
            if done.rows_affected() < 5000 {
                return Ok(total);
            }
        }
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), MetadataError> {
        sqlx::query(
            "INSERT INTO tokens (id, label, secret_hash, scopes, prefix, created_at, expires_at,
                                 revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(&token.label)
        .bind(&token.secret_hash)
        .bind(&token.scopes)
        .bind(&token.prefix)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, MetadataError> {
        let rows = sqlx::query(
            "SELECT id, label, secret_hash, scopes, prefix, created_at, expires_at, revoked_at
             FROM tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    id: r.try_get("id").map_err(map_err)?,
                    label: r.try_get("label").map_err(map_err)?,
                    secret_hash: r.try_get("secret_hash").map_err(map_err)?,
                    scopes: r.try_get("scopes").map_err(map_err)?,
                    prefix: r.try_get("prefix").map_err(map_err)?,
                    created_at: r.try_get("created_at").map_err(map_err)?,
                    expires_at: r.try_get("expires_at").map_err(map_err)?,
                    revoked_at: r.try_get("revoked_at").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, MetadataError> {
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn server_secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, MetadataError> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(fresh)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn audit(&self) -> Result<MetadataAudit, MetadataError> {
        let limit = i64::try_from(AUDIT_LIMIT).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // One snapshot for every statement below, while other replicas write.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut audit = MetadataAudit::default();
        let (files, events, oldest, latest): (i64, i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM events),
                    (SELECT MIN(seq) FROM events), (SELECT seq FROM event_counter WHERE id = 1)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        audit.files = u64::try_from(files).unwrap_or(0);
        audit.events = u64::try_from(events).unwrap_or(0);
        audit.oldest_seq = oldest;
        audit.latest_seq = latest;
        let problem = |kind: &str, id: String, path: String, detail: String| AuditProblem {
            kind: kind.to_string(),
            id,
            path,
            detail,
        };
        let gaps: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT prev, seq FROM (SELECT seq, LAG(seq) OVER (ORDER BY seq) AS prev FROM events) g
             WHERE prev IS NOT NULL AND seq <> prev + 1 ORDER BY seq LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for (before, after) in gaps {
            let detail = format!("events {} to {} are missing", before + 1, after - 1);
            audit
                .problems
                .push(problem("log_gap", String::new(), String::new(), detail));
        }
        let rows = sqlx::query(
            "WITH last AS (SELECT DISTINCT ON (file_id) * FROM events ORDER BY file_id, seq DESC)
             SELECT last.seq, last.kind, last.file_id, last.path, last.version, last.sha256,
                    f.id AS f_id, f.path AS f_path, f.version AS f_version, f.sha256 AS f_sha256
             FROM last LEFT JOIN files f ON f.id = last.file_id
             WHERE (last.kind = 'deleted' AND f.id IS NOT NULL)
                OR (last.kind <> 'deleted' AND (f.id IS NULL OR f.path <> last.path
                    OR f.version <> last.version OR f.size <> last.size
                    OR f.sha256 <> last.sha256))
             ORDER BY last.seq LIMIT $1",
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
        if oldest == Some(1) {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, path FROM files
                 WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.file_id = files.id)
                 ORDER BY path LIMIT $1",
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
        let rows: Vec<(String, Option<i64>, i64)> = sqlx::query_as(
            "WITH used AS (SELECT sha256, COUNT(*) AS n FROM files GROUP BY sha256)
             SELECT b.sha256, b.refcount, COALESCE(u.n, 0) FROM blobs b
             LEFT JOIN used u ON u.sha256 = b.sha256 WHERE b.refcount <> COALESCE(u.n, 0)
             UNION ALL
             SELECT u.sha256, NULL, u.n FROM used u
             WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.sha256 = u.sha256)
             LIMIT $1",
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

    async fn ping(&self) -> Result<(), MetadataError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
