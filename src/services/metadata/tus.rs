//! The rows of tus upload sessions (`migrations/*/0010_tus_sessions.sql`), on either backend.
//!
//! Kept apart from the file rules ([`super::rules`]): a session is not a file and has no
//! event; only its completion, through the upload pipeline, writes one. Every statement here
//! is a single autocommitted statement on the backend's writer (SQLite: the one writer
//! connection, `synchronous=FULL`, so an acknowledged offset is durable when it returns), with
//! the metadata deadline ([`MetadataError::Busy`] past it).

use std::time::Duration;

use sqlx::Row as _;
use sqlx::{PgPool, SqlitePool};

use super::pools::{map_err, on_pool, Pools};
use super::MetadataError;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionState {
    /// Receiving bytes (or complete but not yet committed).
    Open,
    /// Committed (or, for a partial upload, concatenated); kept until `expires_at` so that a
    /// HEAD still answers.
    Done,
    /// Expired: its bytes are gone; kept until `expires_at` so that requests get 410.
    Expired,
}

impl SessionState {
    fn as_str(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Done => "done",
            SessionState::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<Self, MetadataError> {
        Ok(match s {
            "open" => SessionState::Open,
            "done" => SessionState::Done,
            "expired" => SessionState::Expired,
            other => {
                return Err(MetadataError::Backend(format!(
                    "unknown tus session state {other:?}"
                )))
            }
        })
    }
}

/// One session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRow {
    pub id: String,
    /// The creating token's id (empty on an open server).
    pub owner: String,
    /// `None` while the length is deferred.
    pub length: Option<u64>,
    /// Bytes received, fsynced and acknowledged.
    pub offset: u64,
    /// The VaultFS path the upload becomes (empty for a partial upload).
    pub target: String,
    /// The `Upload-Metadata` header as the client sent it.
    pub metadata: String,
    /// Empty, `partial`, or `final;<id> <id> ...`.
    pub concat: String,
    pub state: SessionState,
    /// The committed file's id (state `Done`, not a partial).
    pub file_id: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub expires_at: i64,
    /// Staging in the object store (`services::tus::remote`'s JSON); `None`: on local disk.
    pub remote: Option<String>,
}

/// The open sessions of one owner: how many, and the staging bytes they reserve (their
/// length, or their offset while it is deferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct OwnerUsage {
    pub sessions: u64,
    pub bytes: u64,
}

/// Session rows on the server's metadata database.
#[derive(Debug, Clone)]
pub(crate) struct TusStore {
    pools: Pools,
}

const COLUMNS: &str = "id, owner, upload_length, upload_offset, target, metadata, concat, \
                       state, file_id, created_at, expires_at, remote";

fn to_i64(v: u64) -> Result<i64, MetadataError> {
    i64::try_from(v).map_err(|_| MetadataError::Backend("size out of range".into()))
}

fn to_u64(v: i64) -> Result<u64, MetadataError> {
    u64::try_from(v).map_err(|_| MetadataError::Backend("negative size".into()))
}

macro_rules! decode_row {
    ($row:expr) => {{
        let row = $row;
        let length: Option<i64> = row.try_get(2).map_err(map_err)?;
        let state: String = row.try_get(7).map_err(map_err)?;
        Ok::<_, MetadataError>(SessionRow {
            id: row.try_get(0).map_err(map_err)?,
            owner: row.try_get(1).map_err(map_err)?,
            length: length.map(to_u64).transpose()?,
            offset: to_u64(row.try_get(3).map_err(map_err)?)?,
            target: row.try_get(4).map_err(map_err)?,
            metadata: row.try_get(5).map_err(map_err)?,
            concat: row.try_get(6).map_err(map_err)?,
            state: SessionState::parse(&state)?,
            file_id: row.try_get(8).map_err(map_err)?,
            created_at: row.try_get(9).map_err(map_err)?,
            expires_at: row.try_get(10).map_err(map_err)?,
            remote: row.try_get(11).map_err(map_err)?,
        })
    }};
}

impl TusStore {
    pub(crate) fn sqlite(writer: SqlitePool, readers: SqlitePool, timeout: Duration) -> Self {
        TusStore {
            pools: Pools::sqlite(writer, readers, timeout),
        }
    }

    pub(crate) fn postgres(pool: PgPool, timeout: Duration) -> Self {
        TusStore {
            pools: Pools::postgres(pool, timeout),
        }
    }

    /// Stores a new session (`AlreadyExists` is not expected: ids are random).
    pub(crate) async fn insert(&self, s: &SessionRow) -> Result<(), MetadataError> {
        let sql = format!(
            "INSERT INTO tus_sessions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let length = s.length.map(to_i64).transpose()?;
        let offset = to_i64(s.offset)?;
        on_pool!(self, write, pool => sqlx::query(&sql)
            .bind(&s.id)
            .bind(&s.owner)
            .bind(length)
            .bind(offset)
            .bind(&s.target)
            .bind(&s.metadata)
            .bind(&s.concat)
            .bind(s.state.as_str())
            .bind(&s.file_id)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(&s.remote)
            .execute(pool), |_r| ());
        Ok(())
    }

    /// The session `id`, read from the writer, so that a write just acknowledged is seen.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<SessionRow>, MetadataError> {
        let sql = format!("SELECT {COLUMNS} FROM tus_sessions WHERE id = $1");
        on_pool!(self, write, pool => sqlx::query(&sql).bind(id).fetch_optional(pool),
        |row| match row {
            None => Ok(None),
            Some(row) => decode_row!(row).map(Some),
        })
    }

    /// Moves an open session's offset from `from` to `to` and its expiry on; false when the
    /// session is no longer open at `from` (terminated, expired, or moved by another replica).
    pub(crate) async fn advance(
        &self,
        id: &str,
        from: u64,
        to: u64,
        expires_at: i64,
    ) -> Result<bool, MetadataError> {
        let sql = "UPDATE tus_sessions SET upload_offset = $1, expires_at = $2 \
                   WHERE id = $3 AND upload_offset = $4 AND state = 'open'";
        let (from, to) = (to_i64(from)?, to_i64(to)?);
        let done = on_pool!(self, write, pool => sqlx::query(sql)
            .bind(to)
            .bind(expires_at)
            .bind(id)
            .bind(from)
            .execute(pool), |r| r.rows_affected());
        Ok(done == 1)
    }

    /// [`TusStore::advance`] for a session staged in the object store: its staging record
    /// `remote` moves with the offset, in the same statement, so the row always names what
    /// is durable there.
    pub(crate) async fn advance_remote(
        &self,
        id: &str,
        from: u64,
        to: u64,
        expires_at: i64,
        remote: &str,
    ) -> Result<bool, MetadataError> {
        let sql = "UPDATE tus_sessions SET upload_offset = $1, expires_at = $2, remote = $3 \
                   WHERE id = $4 AND upload_offset = $5 AND state = 'open'";
        let (from, to) = (to_i64(from)?, to_i64(to)?);
        let done = on_pool!(self, write, pool => sqlx::query(sql)
            .bind(to)
            .bind(expires_at)
            .bind(remote)
            .bind(id)
            .bind(from)
            .execute(pool), |r| r.rows_affected());
        Ok(done == 1)
    }

    /// Sets a deferred length; false when it was already set (or the session is not open).
    pub(crate) async fn declare_length(
        &self,
        id: &str,
        length: u64,
    ) -> Result<bool, MetadataError> {
        let sql = "UPDATE tus_sessions SET upload_length = $1 \
                   WHERE id = $2 AND upload_length IS NULL AND state = 'open'";
        let length = to_i64(length)?;
        let done = on_pool!(self, write, pool => sqlx::query(sql).bind(length).bind(id).execute(pool),
            |r| r.rows_affected());
        Ok(done == 1)
    }

    /// Marks a session done (committed as `file_id`, or concatenated), kept until `keep_until`.
    pub(crate) async fn finish(
        &self,
        id: &str,
        file_id: Option<&str>,
        keep_until: i64,
    ) -> Result<(), MetadataError> {
        let sql = "UPDATE tus_sessions SET state = 'done', file_id = $1, expires_at = $2 \
                   WHERE id = $3";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(file_id)
            .bind(keep_until)
            .bind(id)
            .execute(pool), |_r| ());
        Ok(())
    }

    /// Turns an open session into a tombstone (its bytes are being removed) kept until
    /// `keep_until`; false when it was not open.
    pub(crate) async fn expire(&self, id: &str, keep_until: i64) -> Result<bool, MetadataError> {
        let sql = "UPDATE tus_sessions SET state = 'expired', expires_at = $1 \
                   WHERE id = $2 AND state = 'open'";
        let done = on_pool!(self, write, pool => sqlx::query(sql).bind(keep_until).bind(id).execute(pool),
            |r| r.rows_affected());
        Ok(done == 1)
    }

    /// Removes a session's row; false when there was none.
    pub(crate) async fn delete(&self, id: &str) -> Result<bool, MetadataError> {
        let sql = "DELETE FROM tus_sessions WHERE id = $1";
        let done = on_pool!(self, write, pool => sqlx::query(sql).bind(id).execute(pool),
            |r| r.rows_affected());
        Ok(done == 1)
    }

    /// Sessions whose `expires_at` is before `now_ms`, oldest first, at most `limit`.
    pub(crate) async fn due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<SessionRow>, MetadataError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM tus_sessions WHERE expires_at < $1 ORDER BY expires_at LIMIT $2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_pool!(self, read, pool => sqlx::query(&sql)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool),
            |rows| rows.into_iter().map(|row| decode_row!(row)).collect())
    }

    /// What `owner`'s open sessions hold.
    pub(crate) async fn usage(&self, owner: &str) -> Result<OwnerUsage, MetadataError> {
        let sql = "SELECT COUNT(*), CAST(COALESCE(SUM(COALESCE(upload_length, upload_offset)), 0) \
                   AS BIGINT) FROM tus_sessions WHERE owner = $1 AND state = 'open'";
        let (sessions, bytes): (i64, i64) = on_pool!(self, write, pool => sqlx::query(sql).bind(owner).fetch_one(pool),
            |row| (row.try_get(0).map_err(map_err)?, row.try_get(1).map_err(map_err)?));
        Ok(OwnerUsage {
            sessions: to_u64(sessions)?,
            bytes: to_u64(bytes)?,
        })
    }
}
