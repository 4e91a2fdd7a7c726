//! Browser sessions of the web file browser (`GET /`): a token exchanged once for an
//! HttpOnly cookie, so the token never lives in the page's storage.
//!
//! A session is a random 32-byte id (the cookie) mapped to the id of the token that opened it.
//! The table keeps only the SHA-256 of each session id. Nothing about the token is copied: every
//! request through a session looks the token up again ([`super::auth::Auth::principal_for_id`],
//! the token snapshot), so the session carries the token's scope and prefix as they are now and
//! dies at once when the token is revoked or expires.
//!
//! Cookie-authenticated writes also present the session's CSRF token in a header: an HMAC of the
//! session id under `Auth::derive_key("web-csrf-v1")`, compared in constant time.
//!
//! Sessions live in this process only (a restart or another replica asks to sign in again), at
//! most [`MAX_SESSIONS`] of them, each for at most [`IDLE_TIMEOUT`] without a request and
//! [`MAX_LIFETIME`] in all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The purpose label of the CSRF key ([`super::auth::Auth::derive_key`]).
pub(crate) const CSRF_KEY_PURPOSE: &str = "web-csrf-v1";
/// Most sessions held at once; past it the least recently used one is ended.
pub(crate) const MAX_SESSIONS: usize = 10_000;
/// A session unused this long is ended.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// No session outlives this, however busy.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

#[derive(Debug, Clone)]
struct Session {
    token_id: String,
    created: Instant,
    last_seen: Instant,
}

/// What a live session stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionInfo {
    pub(crate) token_id: String,
    pub(crate) csrf: String,
}

/// The session table. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Sessions {
    /// Guards the live sessions, by the SHA-256 of their id. Held for map operations only.
    table: Arc<Mutex<HashMap<[u8; 32], Session>>>,
    csrf_key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// `csrf_key`: `Auth::derive_key(CSRF_KEY_PURPOSE)`.
    pub(crate) fn new(csrf_key: [u8; 32]) -> Self {
        Sessions {
            table: Arc::default(),
            csrf_key: Arc::new(csrf_key),
        }
    }

    fn csrf_for(&self, id: &str) -> String {
        match Hmac::<Sha256>::new_from_slice(self.csrf_key.as_slice()) {
            Ok(mut mac) => {
                mac.update(id.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            }
            // HMAC takes keys of any length: cannot happen.
            Err(_) => String::new(),
        }
    }

    /// Opens a session for an active token's id; returns the cookie value and its info.
    pub(crate) fn open(&self, token_id: &str) -> Result<(String, SessionInfo), SessionError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| SessionError::Random(e.to_string()))?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let session = Session {
            token_id: token_id.to_string(),
            created: now,
            last_seen: now,
        };
        if let Ok(mut table) = self.table.lock() {
            table.retain(|_, s| alive(s, now));
            if table.len() >= MAX_SESSIONS {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    table.remove(&k);
                }
            }
            table.insert(digest(&id), session);
        }
        let info = SessionInfo {
            token_id: token_id.to_string(),
            csrf: self.csrf_for(&id),
        };
        Ok((id, info))
    }

    /// The live session with this cookie value (its use time refreshed).
    pub(crate) fn get(&self, id: &str) -> Result<SessionInfo, SessionError> {
        let key = digest(id);
        let now = Instant::now();
        let token_id = {
            let Ok(mut table) = self.table.lock() else {
                return Err(SessionError::Unknown);
            };
            match table.get_mut(&key) {
                Some(s) if alive(s, now) => {
                    s.last_seen = now;
                    s.token_id.clone()
                }
                Some(_) => {
                    table.remove(&key);
                    return Err(SessionError::Unknown);
                }
                None => return Err(SessionError::Unknown),
            }
        };
        Ok(SessionInfo {
            token_id,
            csrf: self.csrf_for(id),
        })
    }

    /// Checks a presented CSRF token against the session's, in constant time.
    pub(crate) fn csrf_matches(info: &SessionInfo, presented: &str) -> bool {
        !presented.is_empty() && bool::from(info.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// Ends a session (sign-out, or its token found dead). Unknown ids are fine.
    pub(crate) fn end(&self, id: &str) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(&digest(id));
        }
    }

    /// Sessions held now (live or not yet swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.len())
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_seen) < IDLE_TIMEOUT && now.duration_since(s.created) < MAX_LIFETIME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_open_look_up_check_csrf_and_end() {
        let s = Sessions::new([7; 32]);
        let (id, info) = s.open("0123456789ab").unwrap();
        assert_eq!(info.token_id, "0123456789ab");
        let got = s.get(&id).unwrap();
        assert_eq!(got, info);
        assert!(Sessions::csrf_matches(&got, &info.csrf));
        assert!(!Sessions::csrf_matches(&got, ""));
        assert!(!Sessions::csrf_matches(&got, &format!("{}0", info.csrf)));
        // Another key derives another CSRF token.
        let other = Sessions::new([8; 32]);
        assert_ne!(other.csrf_for(&id), info.csrf);
        assert_eq!(s.get("made-up"), Err(SessionError::Unknown));
        s.end(&id);
        assert_eq!(s.get(&id), Err(SessionError::Unknown));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let s = Sessions::new([1; 32]);
        let (first, _) = s.open("0123456789ab").unwrap();
        for _ in 0..MAX_SESSIONS {
            s.open("0123456789ab").unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.get(&first), Err(SessionError::Unknown), "the oldest went");
    }
}
