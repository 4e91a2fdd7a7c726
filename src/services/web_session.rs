//! Browser sessions of the web file browser (`GET /`): a token exchanged once for an
//! HttpOnly cookie, so the token never lives in the page's storage.
//!
//! A session is a random 32-byte id (the cookie) mapped to the id of the token that opened it.
//! Sessions live in the metadata database ([`crate::services::metadata::web_sessions`],
//! migration 0050), so a restart keeps browsers signed in and every replica on one PostgreSQL
//! knows every session; signing out on one replica ends the session on all of them. The row
//! keeps only the SHA-256 of the session id, never the id itself.
//!
//! Nothing about the token is copied: every request through a session joins the token's row,
//! so the session carries the token's scope and prefix as they are now and is refused, on
//! every replica at once, when the token is revoked or expires (its row is then deleted).
//!
//! Cookie-authenticated writes also present the session's CSRF token in a header: 32 random
//! bytes made at sign-in and kept in the session's row, compared in constant time.
//!
//! A session ends after [`IDLE_TIMEOUT`] without a request or [`MAX_LIFETIME`] in all; one
//! token holds at most [`MAX_SESSIONS_PER_TOKEN`] (a new one ends its least recently used).
//! Its last use is written at most once per [`TOUCH_EVERY`], not on every request. Dead rows
//! are deleted by [`Sessions::spawn_sweeper`], [`SWEEP_BATCH`] at a time.

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{Principal, Scopes};
use super::metadata::web_sessions::{NewSession, WebSessionStore};
use super::metadata::{now_ms, MetadataError};

/// Most sessions one token holds at once; past it the least recently used one is ended.
pub(crate) const MAX_SESSIONS_PER_TOKEN: usize = 64;
/// A session unused this long is ended.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// No session outlives this, however busy.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// A session's last use is written when the stored one is older than this.
pub(crate) const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// How often the sweeper deletes dead sessions.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Rows one sweep statement deletes at most (it repeats while it finds that many).
pub(crate) const SWEEP_BATCH: usize = 1000;
/// Statements one sweep runs at most, so that a huge backlog is spread over several sweeps.
const SWEEP_ROUNDS: usize = 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// No such session (never made, signed out, idle too long, or its token died).
    #[error("the session is unknown, signed out or expired; sign in again")]
    Unknown,
    /// A cookie-authenticated write without the session's CSRF token or from another origin.
    #[error("a write through a session needs its X-CSRF-Token header and a same-origin request")]
    Csrf,
    /// The token offered at sign-in is not valid.
    #[error("the token is malformed, unknown, revoked or expired")]
    BadToken,
    /// No token exists: the server is open and needs no sign-in.
    #[error("this server is open (no token exists): no sign-in needed")]
    NotRequired,
    #[error("no randomness available: {0}")]
    Random(String),
    /// The session table could not be read or written (busy past its deadline, or down).
    #[error("session store: {0}")]
    Store(#[from] MetadataError),
}

/// What a live session stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    /// The session's token as it is now (its id, scope and prefix).
    pub(crate) principal: Principal,
    pub(crate) csrf: String,
}

/// The session table. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    store: WebSessionStore,
}

/// Hex SHA-256 of a session id: the row's key.
fn digest(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// (idle_since, born_since) at `now`: a live session was seen after the first and made after
/// the second.
fn cutoffs(now: i64) -> (i64, i64) {
    (
        now.saturating_sub(millis(IDLE_TIMEOUT)),
        now.saturating_sub(millis(MAX_LIFETIME)),
    )
}

fn random_text() -> Result<String, SessionError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| SessionError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

impl Sessions {
    pub(crate) fn new(store: WebSessionStore) -> Self {
        Sessions { store }
    }

    /// Opens a session for an active token (`principal`, just authenticated); returns the
    /// cookie value and its info.
    pub(crate) async fn open(
        &self,
        principal: &Principal,
    ) -> Result<(String, SessionInfo), SessionError> {
        let token_id = principal
            .token_id
            .as_deref()
            .ok_or(SessionError::BadToken)?;
        let id = random_text()?;
        let mut csrf = [0u8; 32];
        getrandom::fill(&mut csrf).map_err(|e| SessionError::Random(e.to_string()))?;
        let csrf = hex::encode(csrf);
        let id_hash = digest(&id);
        let ended = self
            .store
            .insert(
                &NewSession {
                    id_hash: &id_hash,
                    token_id,
                    csrf: &csrf,
                    now_ms: now_ms(),
                },
                MAX_SESSIONS_PER_TOKEN,
            )
            .await?;
        if ended > 0 {
            tracing::info!(
                token_id,
                ended,
                "a new web session ended the token's least recently used ones"
            );
        }
        let info = SessionInfo {
            principal: principal.clone(),
            csrf,
        };
        Ok((id, info))
    }

    /// The live session with this cookie value, with its token as it is now. A session whose
    /// token is gone, revoked or expired is deleted and refused. Its last use is written when
    /// the stored one is older than [`TOUCH_EVERY`].
    pub(crate) async fn get(&self, id: &str) -> Result<SessionInfo, SessionError> {
        let id_hash = digest(id);
        let now = now_ms();
        let (idle_since, born_since) = cutoffs(now);
        let Some(row) = self.store.lookup(&id_hash, idle_since, born_since).await? else {
            return Err(SessionError::Unknown);
        };
        let scopes = row
            .token
            .as_ref()
            .filter(|t| t.active(now))
            .and_then(|t| Scopes::parse(&t.scopes).ok().map(|s| (s, t.prefix.clone())));
        let Some((scopes, prefix)) = scopes else {
            self.store.delete(&id_hash).await?;
            return Err(SessionError::Unknown);
        };
        let stale_before = now.saturating_sub(millis(TOUCH_EVERY));
        if row.last_seen < stale_before {
            self.store.touch(&id_hash, now, stale_before).await?;
        }
        Ok(SessionInfo {
            principal: Principal {
                token_id: Some(row.token_id),
                scopes,
                prefix,
            },
            csrf: row.csrf,
        })
    }

    /// Checks a presented CSRF token against the session's, in constant time.
    pub(crate) fn csrf_matches(info: &SessionInfo, presented: &str) -> bool {
        !presented.is_empty() && bool::from(info.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// Ends a session (sign-out). Unknown ids are fine.
    pub(crate) async fn end(&self, id: &str) -> Result<(), SessionError> {
        self.store.delete(&digest(id)).await?;
        Ok(())
    }

    /// Deletes dead sessions (idle, too old, or of a dead token) now, in bounded batches;
    /// returns how many.
    pub(crate) async fn sweep(&self) -> Result<u64, SessionError> {
        let mut total = 0;
        for _ in 0..SWEEP_ROUNDS {
            let now = now_ms();
            let (idle_since, born_since) = cutoffs(now);
            let n = self
                .store
                .purge(now, idle_since, born_since, SWEEP_BATCH)
                .await?;
            total += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        Ok(total)
    }

    /// Sweeps every [`SWEEP_EVERY`] until `shutdown` turns true.
    pub(crate) fn spawn_sweeper(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let sessions = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => match sessions.sweep().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(sessions = n, "ended web sessions swept"),
                        Err(e) => tracing::warn!(error = %e, "web session sweep failed; retrying"),
                    },
                    () = super::notification::until_true(&mut shutdown) => return,
                }
            }
        });
    }

    /// Sessions `token_id` holds now (live or not yet swept).
    #[cfg(test)]
    pub(crate) async fn count_for(&self, token_id: &str) -> Result<u64, SessionError> {
        Ok(self.store.count_for(token_id).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::metadata::sqlite::SqliteMetadata;
    use crate::services::metadata::{MetadataStore, TokenRecord};

    async fn store() -> (tempfile::TempDir, SqliteMetadata, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMetadata::open(dir.path(), Duration::from_secs(5), 2)
            .await
            .unwrap();
        let sessions = Sessions::new(meta.web_session_store());
        (dir, meta, sessions)
    }

    async fn token(meta: &SqliteMetadata, id: &str, expires_at: Option<i64>) -> Principal {
        meta.insert_token(&TokenRecord {
            id: id.to_string(),
            label: "t".into(),
            secret_hash: "00".into(),
            scopes: "read,write".into(),
            prefix: "team/".into(),
            created_at: now_ms(),
            expires_at,
            revoked_at: None,
        })
        .await
        .unwrap();
        Principal {
            token_id: Some(id.to_string()),
            scopes: Scopes::parse("read,write").unwrap(),
            prefix: "team/".into(),
        }
    }

    #[tokio::test]
    async fn sessions_open_look_up_check_csrf_and_end() {
        let (_dir, meta, s) = store().await;
        let p = token(&meta, "0123456789ab", None).await;
        let (id, info) = s.open(&p).await.unwrap();
        assert_eq!(info.principal, p);
        let got = s.get(&id).await.unwrap();
        assert_eq!(got, info);
        assert!(Sessions::csrf_matches(&got, &info.csrf));
        assert!(!Sessions::csrf_matches(&got, ""));
        assert!(!Sessions::csrf_matches(&got, &format!("{}0", info.csrf)));
        // Another session has another CSRF token.
        let (_, other) = s.open(&p).await.unwrap();
        assert_ne!(other.csrf, info.csrf);
        assert!(matches!(s.get("made-up").await, Err(SessionError::Unknown)));
        s.end(&id).await.unwrap();
        assert!(matches!(s.get(&id).await, Err(SessionError::Unknown)));
        assert_eq!(s.count_for("0123456789ab").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_dead_tokens_sessions_are_refused_and_swept() {
        let (_dir, meta, s) = store().await;
        let p = token(&meta, "aaaaaaaaaaaa", None).await;
        let (id, _) = s.open(&p).await.unwrap();
        let (id2, _) = s.open(&p).await.unwrap();
        assert!(meta.revoke_token("aaaaaaaaaaaa", now_ms()).await.unwrap());
        assert!(matches!(s.get(&id).await, Err(SessionError::Unknown)));
        assert_eq!(
            s.count_for("aaaaaaaaaaaa").await.unwrap(),
            1,
            "refused: deleted"
        );
        assert_eq!(
            s.sweep().await.unwrap(),
            1,
            "the other one went with the sweep"
        );
        assert!(matches!(s.get(&id2).await, Err(SessionError::Unknown)));
        // An expired token, likewise.
        let q = token(&meta, "bbbbbbbbbbbb", Some(now_ms() + 300)).await;
        let (id3, _) = s.open(&q).await.unwrap();
        s.get(&id3).await.unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(s.get(&id3).await, Err(SessionError::Unknown)));
        assert_eq!(s.sweep().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn each_token_holds_a_bounded_number_of_sessions() {
        let (_dir, meta, s) = store().await;
        let p = token(&meta, "0123456789ab", None).await;
        let q = token(&meta, "ba9876543210", None).await;
        let (other, _) = s.open(&q).await.unwrap();
        let (first, _) = s.open(&p).await.unwrap();
        // Later ones are used more recently than the first.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut last = String::new();
        for _ in 0..MAX_SESSIONS_PER_TOKEN {
            last = s.open(&p).await.unwrap().0;
        }
        assert_eq!(
            s.count_for("0123456789ab").await.unwrap(),
            MAX_SESSIONS_PER_TOKEN as u64
        );
        assert!(
            matches!(s.get(&first).await, Err(SessionError::Unknown)),
            "the least recently used went"
        );
        s.get(&last).await.unwrap();
        s.get(&other).await.unwrap();
    }

    #[tokio::test]
    async fn the_row_keeps_a_hash_of_the_id_and_last_use_is_written_rarely() {
        let (_dir, meta, s) = store().await;
        let p = token(&meta, "0123456789ab", None).await;
        let (id, _) = s.open(&p).await.unwrap();
        let pool = s.store.sqlite_writer().unwrap().clone();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT id_hash, last_seen FROM web_sessions")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, digest(&id));
        assert_ne!(rows[0].0, id);
        // A lookup right after does not write.
        s.get(&id).await.unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT last_seen FROM web_sessions")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(seen, rows[0].1);
        // A stale one is moved on.
        sqlx::query("UPDATE web_sessions SET last_seen = last_seen - 120000")
            .execute(&pool)
            .await
            .unwrap();
        s.get(&id).await.unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT last_seen FROM web_sessions")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(seen >= rows[0].1, "touched");
        // Idle past the limit: refused, and swept.
        sqlx::query("UPDATE web_sessions SET last_seen = $1")
            .bind(now_ms() - millis(IDLE_TIMEOUT) - 1)
            .execute(&pool)
            .await
            .unwrap();
        assert!(matches!(s.get(&id).await, Err(SessionError::Unknown)));
        assert_eq!(s.sweep().await.unwrap(), 1);
    }
}
