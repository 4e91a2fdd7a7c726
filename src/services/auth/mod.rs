//! Authentication and authorization: API tokens, their scopes and path prefixes, and
//! presigned share links.
//!
//! A token reads `vfs_<id>_<secret>`. Only the SHA-256 of the secret is stored; a presented
//! token is looked up by id and its secret's hash compared in constant time. Tokens live in
//! the metadata store; every replica keeps a snapshot it reloads every
//! [`RELOAD_EVERY`] (and at once on an unknown id, rate-limited), so a token made or revoked
//! through another process or replica takes effect within that time, and at once on the
//! replica that served the API call.
//!
//! Once any token has ever existed, every request except the probes must carry a valid one;
//! revoking the last token does not reopen the server.
//!
//! Long-lived requests (sync sessions, long-polls) wait on [`Auth::until_invalid`], which
//! resolves when their token is revoked (at once on this replica, within a reload elsewhere)
//! or expires.
//!
//! Keys are derived from the server secret ([`super::secret`]) with [`Auth::derive_key`];
//! share links sign with the `share-link-v1` key over (path, signing time, expiry, issuer).

mod principal;
mod share;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metadata::{now_ms, MetadataError, MetadataStore, TokenRecord};
use super::secret::ServerSecret;
pub use principal::{normalize_prefix, Narrowed, Principal, Scope, Scopes};
pub use share::MAX_SHARE_TTL;
use tokens::{is_active, split_token};
pub use tokens::{CreatedToken, TokenInfo, MAX_TOKEN_TTL};

/// How often each replica reloads the token table.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Least time between two reloads triggered by unknown token ids (a flood of made-up tokens
/// must not become a flood of queries).
const MISS_RELOAD_GAP: Duration = Duration::from_millis(250);
/// The purpose label of the share-link key.
const SHARE_KEY_PURPOSE: &str = "share-link-v1";
/// Longest single wait of [`Auth::until_invalid`] before it looks again.
const LONGEST_VALIDITY_WAIT: Duration = Duration::from_secs(3600);

/// Why a token operation (create, bootstrap, revoke) or opening [`Auth`] failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The request is malformed (unknown scope, bad prefix or label, expiry too long, weak
    /// bootstrap token); the text says what to change (400 at the edge).
    #[error("{0}")]
    Invalid(String),
    /// No token has the id given to revoke.
    #[error("no such token")]
    NotFound,
    /// The metadata store (where the tokens live) failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The OS random source failed, so no token id or secret could be made.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The server secret could not be loaded (`ServerSecret::load`).
    #[error("server secret: {0}")]
    Secret(String),
}

#[derive(Debug, Default)]
struct Snapshot {
    /// Any token ever created (revoked ones included): authentication is required.
    required: bool,
    by_id: HashMap<String, TokenRecord>,
}

/// The token registry and share-link signer.
#[derive(Clone)]
pub struct Auth {
    meta: Arc<dyn MetadataStore>,
    /// Guards the current token table (swapped whole by each reload).
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// Guards the time of the last reload triggered by an unknown token id.
    last_miss_reload: Arc<std::sync::Mutex<Option<Instant>>>,
    secret: Arc<ServerSecret>,
    share_key: Arc<[u8; 32]>,
    /// Bumped by every reload that changed the token table: long-lived requests re-check.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("required", &self.required())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads the token table; keys derive from `secret` (every replica must be given the
    /// same one).
    pub async fn open(
        meta: Arc<dyn MetadataStore>,
        secret: ServerSecret,
    ) -> Result<Self, AuthError> {
        let share_key = secret.derive(SHARE_KEY_PURPOSE);
        let auth = Auth {
            meta,
            snapshot: Arc::default(),
            last_miss_reload: Arc::default(),
            secret: Arc::new(secret),
            share_key: Arc::new(share_key),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        auth.reload().await?;
        Ok(auth)
    }

    /// [`Auth::open`] with the server secret the configuration names
    /// ([`ServerSecret::load`]).
    pub async fn open_configured(
        meta: Arc<dyn MetadataStore>,
        config: &crate::config::Config,
    ) -> Result<Self, AuthError> {
        let secret = ServerSecret::load(
            config.secret_key.as_deref(),
            config.secret_key_file.as_deref(),
            &config.data_dir,
        )
        .await
        .map_err(|e| AuthError::Secret(e.to_string()))?;
        Self::open(meta, secret).await
    }

    /// A key for `purpose` (a label such as `share-link-v1` or `s3-secret-v1:<token id>`):
    /// HMAC-SHA256 of the server secret over the label. Same secret, same key, on every
    /// replica; another secret (a rotation) changes every key.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        self.secret.derive(purpose)
    }

    /// Reloads the token table now; long-lived requests re-check their token when it changed.
    pub async fn reload(&self) -> Result<(), AuthError> {
        let tokens = self.meta.tokens().await?;
        let snapshot = Snapshot {
            required: !tokens.is_empty(),
            by_id: tokens.into_iter().map(|t| (t.id.clone(), t)).collect(),
        };
        let changed = match self.snapshot.write() {
            Ok(mut slot) => {
                let changed = slot.required != snapshot.required || slot.by_id != snapshot.by_id;
                *slot = Arc::new(snapshot);
                changed
            }
            Err(_) => false,
        };
        if changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// Until when `principal` stays valid: `Err(())` when it no longer is, `Ok(None)` when no
    /// expiry is known, else the expiry (ms since the epoch).
    fn validity(&self, principal: &Principal) -> Result<Option<i64>, ()> {
        let snapshot = self.current();
        let Some(id) = principal.token_id.as_deref() else {
            // The open server's principal: valid while the server stays open. (A share
            // link's `nobody` never waits here.)
            return if snapshot.required { Err(()) } else { Ok(None) };
        };
        match snapshot.by_id.get(id) {
            Some(r) if is_active(r, now_ms()) => Ok(r.expires_at),
            _ => Err(()),
        }
    }

    /// Resolves once `principal`'s token is revoked, expires or disappears (or, for the open
    /// server's principal, once tokens exist): at once for a change made through this
    /// process, within [`RELOAD_EVERY`] for one made elsewhere.
    pub async fn until_invalid(&self, principal: &Principal) {
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            let expires_at = match self.validity(principal) {
                Err(()) => return,
                Ok(e) => e,
            };
            let wait = expires_at.map_or(LONGEST_VALIDITY_WAIT, |e| {
                let ms = u64::try_from(e.saturating_sub(now_ms())).unwrap_or(0);
                Duration::from_millis(ms.saturating_add(1)).min(LONGEST_VALIDITY_WAIT)
            });
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The sender lives as long as `self`: cannot happen; re-check by time.
                        tokio::time::sleep(wait).await;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reloads every [`RELOAD_EVERY`] until `shutdown` turns true.
    pub fn spawn_reloader(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let auth = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = auth.reload().await {
                            tracing::warn!(error = %e, "token reload failed; keeping the last table");
                        }
                    }
                    () = super::notification::until_true(&mut shutdown) => return,
                }
            }
        });
    }

    fn current(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            // A writer panicked mid-swap (cannot happen: the swap is one assignment).
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// True once any token exists: every request except the probes needs one.
    pub fn required(&self) -> bool {
        self.current().required
    }

    /// The principal a presented token stands for; `None` when it is malformed, unknown,
    /// revoked or expired (callers answer all of these alike).
    pub async fn authenticate(&self, token: &str) -> Option<Principal> {
        let (id, secret) = split_token(token)?;
        let mut record = self.current().by_id.get(id).cloned();
        if record.is_none() && self.may_reload_on_miss() {
            // Made moments ago by another process or replica.
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "token reload failed");
            }
            record = self.current().by_id.get(id).cloned();
        }
        let record = record?;
        let presented = Sha256::digest(secret.as_bytes());
        let stored = hex::decode(&record.secret_hash).ok()?;
        if !bool::from(presented.as_slice().ct_eq(&stored)) {
            return None;
        }
        if !is_active(&record, now_ms()) {
            return None;
        }
        Some(Principal {
            token_id: Some(record.id.clone()),
            scopes: Scopes::parse(&record.scopes).ok()?,
            prefix: record.prefix.clone(),
        })
    }

    /// The principal of active token `id`, for requests that prove the token by a key derived
    /// from it (S3 SigV4) instead of presenting it; `None` when unknown, revoked or expired.
    pub async fn principal_for_id(&self, id: &str) -> Option<Principal> {
        let mut record = self.current().by_id.get(id).cloned();
        if record.is_none() && self.may_reload_on_miss() {
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "token reload failed");
            }
            record = self.current().by_id.get(id).cloned();
        }
        let record = record.filter(|r| is_active(r, now_ms()))?;
        Some(Principal {
            token_id: Some(record.id.clone()),
            scopes: Scopes::parse(&record.scopes).ok()?,
            prefix: record.prefix.clone(),
        })
    }

    fn may_reload_on_miss(&self) -> bool {
        let Ok(mut last) = self.last_miss_reload.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < MISS_RELOAD_GAP) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests;
