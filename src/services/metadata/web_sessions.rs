//! The rows of web file browser sessions (`migrations/*/0050_web_sessions.sql`), on either
//! backend, so that a session outlives a restart and is known to every replica.
//!
//! A row is keyed by the hex SHA-256 of the session id (the cookie value, never stored). It
//! names the token that opened it; every lookup joins `tokens`, so the session carries the
//! token's scope and prefix as the database has them now, and a revoked or expired token's
//! session is refused by every replica at once. Every statement is a single autocommitted one
//! with the metadata deadline ([`MetadataError::Busy`] past it): writes on the backend's
//! writer, lookups on a reader.

use std::time::Duration;

use sqlx::Row as _;
use sqlx::{PgPool, SqlitePool};

use super::pools::{map_err, on_pool, Pools};
use super::MetadataError;

/// A new session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewSession<'a> {
    /// Hex SHA-256 of the session id.
    pub id_hash: &'a str,
    pub token_id: &'a str,
    pub csrf: &'a str,
    /// Milliseconds since the epoch.
    pub now_ms: i64,
}

/// A live session (within its idle and absolute limits), with its token as stored now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionLookup {
    pub token_id: String,
    pub csrf: String,
    pub last_seen: i64,
    /// The token's row: `None` when it no longer exists.
    pub token: Option<TokenState>,
}

/// What a session needs of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenState {
    pub scopes: String,
    pub prefix: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenState {
    /// Neither revoked nor expired at `now_ms`.
    pub(crate) fn active(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now_ms < e)
    }
}

/// Session rows on the server's metadata database.
#[derive(Debug, Clone)]
pub(crate) struct WebSessionStore {
    pools: Pools,
}

fn count(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

macro_rules! decode_lookup {
    ($row:expr) => {{
        let row = $row;
        let scopes: Option<String> = row.try_get(3).map_err(map_err)?;
        let token = match scopes {
            None => None,
            Some(scopes) => Some(TokenState {
                scopes,
                prefix: row.try_get(4).map_err(map_err)?,
                expires_at: row.try_get(5).map_err(map_err)?,
                revoked_at: row.try_get(6).map_err(map_err)?,
            }),
        };
        Ok::<_, MetadataError>(SessionLookup {
            token_id: row.try_get(0).map_err(map_err)?,
            csrf: row.try_get(1).map_err(map_err)?,
            last_seen: row.try_get(2).map_err(map_err)?,
            token,
        })
    }};
}

impl WebSessionStore {
    pub(crate) fn sqlite(writer: SqlitePool, readers: SqlitePool, timeout: Duration) -> Self {
        WebSessionStore {
            pools: Pools::sqlite(writer, readers, timeout),
        }
    }

    pub(crate) fn postgres(pool: PgPool, timeout: Duration) -> Self {
        WebSessionStore {
            pools: Pools::postgres(pool, timeout),
        }
    }

    /// Stores a new session, then ends the token's least recently used ones beyond
    /// `per_token` (the new one always stays). Returns how many were ended.
    pub(crate) async fn insert(
        &self,
        s: &NewSession<'_>,
        per_token: usize,
    ) -> Result<u64, MetadataError> {
        let sql = "INSERT INTO web_sessions (id_hash, token_id, csrf, created_at, last_seen) \
                   VALUES ($1, $2, $3, $4, $4)";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(s.id_hash)
            .bind(s.token_id)
            .bind(s.csrf)
            .bind(s.now_ms)
            .execute(pool), |_r| ());
        let trim = "DELETE FROM web_sessions WHERE token_id = $1 AND id_hash <> $2 \
                    AND id_hash NOT IN (SELECT id_hash FROM web_sessions \
                        WHERE token_id = $1 AND id_hash <> $2 \
                        ORDER BY last_seen DESC, created_at DESC LIMIT $3)";
        let keep = count(per_token.saturating_sub(1));
        let ended = on_pool!(self, write, pool => sqlx::query(trim)
            .bind(s.token_id)
            .bind(s.id_hash)
            .bind(keep)
            .execute(pool), |r| r.rows_affected());
        Ok(ended)
    }

    /// The session `id_hash` if it was seen after `idle_since` and made after `born_since`
    /// (milliseconds since the epoch), with its token's row.
    pub(crate) async fn lookup(
        &self,
        id_hash: &str,
        idle_since: i64,
        born_since: i64,
    ) -> Result<Option<SessionLookup>, MetadataError> {
        let sql = "SELECT s.token_id, s.csrf, s.last_seen, t.scopes, t.prefix, t.expires_at, \
                   t.revoked_at FROM web_sessions s LEFT JOIN tokens t ON t.id = s.token_id \
                   WHERE s.id_hash = $1 AND s.last_seen > $2 AND s.created_at > $3";
        on_pool!(self, read, pool => sqlx::query(sql)
            .bind(id_hash)
            .bind(idle_since)
            .bind(born_since)
            .fetch_optional(pool),
        |row| match row {
            None => Ok(None),
            Some(row) => decode_lookup!(row).map(Some),
        })
    }

    /// Moves the session's last use to `now_ms` if it was before `stale_before` (a no-op for
    /// a session touched meanwhile by another request or replica).
    pub(crate) async fn touch(
        &self,
        id_hash: &str,
        now_ms: i64,
        stale_before: i64,
    ) -> Result<(), MetadataError> {
        let sql = "UPDATE web_sessions SET last_seen = $1 WHERE id_hash = $2 AND last_seen < $3";
        on_pool!(self, write, pool => sqlx::query(sql)
            .bind(now_ms)
            .bind(id_hash)
            .bind(stale_before)
            .execute(pool), |_r| ());
        Ok(())
    }

    /// Removes a session's row; false when there was none.
    pub(crate) async fn delete(&self, id_hash: &str) -> Result<bool, MetadataError> {
        let sql = "DELETE FROM web_sessions WHERE id_hash = $1";
        let done = on_pool!(self, write, pool => sqlx::query(sql).bind(id_hash).execute(pool),
            |r| r.rows_affected());
        Ok(done == 1)
    }

    /// Removes at most `limit` dead sessions: idle since before `idle_since`, made before
    /// `born_since`, or whose token is gone, revoked or expired at `now_ms`. Returns how many.
    pub(crate) async fn purge(
        &self,
        now_ms: i64,
        idle_since: i64,
        born_since: i64,
        limit: usize,
    ) -> Result<u64, MetadataError> {
        let sql = "DELETE FROM web_sessions WHERE id_hash IN (\
                   SELECT s.id_hash FROM web_sessions s LEFT JOIN tokens t ON t.id = s.token_id \
                   WHERE s.last_seen <= $1 OR s.created_at <= $2 OR t.id IS NULL \
                      OR t.revoked_at IS NOT NULL OR t.expires_at <= $3 \
                   LIMIT $4)";
        let done = on_pool!(self, write, pool => sqlx::query(sql)
            .bind(idle_since)
            .bind(born_since)
            .bind(now_ms)
            .bind(count(limit))
            .execute(pool), |r| r.rows_affected());
        Ok(done)
    }

    /// The SQLite writer, for tests that look at the rows (a second pool on the same file
    /// would cancel this process's POSIX locks on it when it closes).
    #[cfg(test)]
    pub(crate) fn sqlite_writer(&self) -> Option<&SqlitePool> {
        match &self.pools.backend {
            super::pools::Backend::Sqlite { writer, .. } => Some(writer),
            super::pools::Backend::Postgres(_) => None,
        }
    }

    /// How many sessions `token_id` holds (live or not yet swept).
    #[cfg(test)]
    pub(crate) async fn count_for(&self, token_id: &str) -> Result<u64, MetadataError> {
        let sql = "SELECT COUNT(*) FROM web_sessions WHERE token_id = $1";
        let n: i64 = on_pool!(self, read, pool => sqlx::query(sql).bind(token_id).fetch_one(pool),
            |row| row.try_get(0).map_err(map_err)?);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
