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

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::metadata::{now_ms, MetadataError, MetadataStore, TokenRecord};
use super::secret::ServerSecret;
use crate::paths::VPath;

/// How often each replica reloads the token table.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Least time between two reloads triggered by unknown token ids (a flood of made-up tokens
/// must not become a flood of queries).
const MISS_RELOAD_GAP: Duration = Duration::from_millis(250);
/// Longest validity of a share link.
pub const MAX_SHARE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest validity of a token with an expiry (none: it never expires).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// A share link signed this far in the future (clock skew between replicas) still works.
const SHARE_CLOCK_SKEW_S: i64 = 300;
/// The purpose label of the share-link key.
const SHARE_KEY_PURPOSE: &str = "share-link-v1";
/// Bytes a bootstrap token's secret must decode to (what `vaultfs token generate` makes).
const TOKEN_SECRET_BYTES: usize = 32;
/// Longest single wait of [`Auth::until_invalid`] before it looks again.
const LONGEST_VALIDITY_WAIT: Duration = Duration::from_secs(3600);
const TOKEN_PREFIX: &str = "vfs_";

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such token")]
    NotFound,
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("server secret: {0}")]
    Secret(String),
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim() {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// A set of scopes. `admin` includes `read` and `write`; `read` and `write` are independent
/// (a CI token may upload without being able to download).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes {
    read: bool,
    write: bool,
    admin: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        read: true,
        write: true,
        admin: true,
    };
    pub const NONE: Scopes = Scopes {
        read: false,
        write: false,
        admin: false,
    };

    /// Parses `read,write` (comma-separated, at least one, no unknown names).
    pub fn parse(text: &str) -> Result<Scopes, AuthError> {
        let mut scopes = Scopes::NONE;
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            match Scope::parse(part) {
                Some(Scope::Read) => scopes.read = true,
                Some(Scope::Write) => scopes.write = true,
                Some(Scope::Admin) => scopes.admin = true,
                None => {
                    return Err(AuthError::Invalid(format!(
                        "unknown scope {:?} (expected read, write or admin)",
                        part.trim()
                    )))
                }
            }
        }
        if scopes == Scopes::NONE {
            return Err(AuthError::Invalid("at least one scope is needed".into()));
        }
        Ok(scopes)
    }

    pub fn allows(self, scope: Scope) -> bool {
        self.admin
            || match scope {
                Scope::Read => self.read,
                Scope::Write => self.write,
                Scope::Admin => false,
            }
    }

    pub fn to_text(self) -> String {
        let mut parts = Vec::new();
        for (on, name) in [
            (self.read, "read"),
            (self.write, "write"),
            (self.admin, "admin"),
        ] {
            if on {
                parts.push(name);
            }
        }
        parts.join(",")
    }
}

/// Who is asking, as far as authorization goes. Carried in [`super::files::RequestCtx`];
/// services check every path they touch against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id; `None` when the server is open (no tokens) or for a share link.
    pub token_id: Option<String>,
    pub scopes: Scopes,
    /// Paths this principal may touch start with this (ends in `/`); empty: all.
    pub prefix: String,
}

impl Principal {
    /// The open server's principal: loopback without tokens, or `--insecure-no-auth`.
    pub fn open() -> Self {
        Principal {
            token_id: None,
            scopes: Scopes::ALL,
            prefix: String::new(),
        }
    }

    /// Allowed nothing: what a request that skipped authorization gets (fail-closed).
    pub fn nobody() -> Self {
        Principal {
            token_id: None,
            scopes: Scopes::NONE,
            prefix: String::new(),
        }
    }

    /// True when `path` (a validated path) is inside this principal's prefix.
    pub fn may_touch(&self, path: &str) -> bool {
        self.prefix.is_empty() || path.starts_with(&self.prefix)
    }

    /// How a listing or feed over `requested` (a prefix, possibly partial) must be narrowed
    /// for this principal.
    pub fn narrow(&self, requested: &str) -> Narrowed {
        if self.prefix.is_empty() || requested.starts_with(&self.prefix) {
            Narrowed::Unchanged
        } else if self.prefix.starts_with(requested) {
            Narrowed::To(self.prefix.clone())
        } else {
            Narrowed::Disjoint
        }
    }
}

/// See [`Principal::narrow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Narrowed {
    /// The request is inside the principal's prefix.
    Unchanged,
    /// The principal's prefix lies inside the request: only it may be shown.
    To(String),
    /// Nothing requested is visible to the principal.
    Disjoint,
}

/// A token's prefix: empty, or a valid path ending in `/`.
pub fn normalize_prefix(raw: &str) -> Result<String, AuthError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let trimmed = raw.trim_end_matches('/');
    if trimmed.is_empty() {
        // `/` or `//` would read as "no prefix": everything.
        return Err(AuthError::Invalid(format!(
            "invalid prefix {raw:?}: leave it out (or empty) for a token without a prefix"
        )));
    }
    let path = VPath::parse(trimmed)
        .map_err(|e| AuthError::Invalid(format!("invalid prefix {raw:?}: {e}")))?;
    Ok(format!("{}/", path.as_str()))
}

/// A token as listed (no secret, no hash).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub label: String,
    pub scopes: String,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub active: bool,
}

impl TokenInfo {
    fn from_record(r: &TokenRecord, now: i64) -> Self {
        TokenInfo {
            id: r.id.clone(),
            label: r.label.clone(),
            scopes: r.scopes.clone(),
            prefix: r.prefix.clone(),
            created_at: super::metadata::rfc3339(r.created_at),
            expires_at: r.expires_at.map(super::metadata::rfc3339),
            revoked_at: r.revoked_at.map(super::metadata::rfc3339),
            active: is_active(r, now),
        }
    }
}

fn is_active(r: &TokenRecord, now: i64) -> bool {
    r.revoked_at.is_none() && r.expires_at.is_none_or(|e| now < e)
}

/// A token just made: the only moment its secret exists outside the client.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
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

/// `n` bytes from the operating system's CSPRNG.
fn random_bytes(n: usize) -> Result<Vec<u8>, AuthError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(buf)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// True when a token's secret carries the strength of a generated one: base64url of at
/// least 32 bytes, not an obvious pattern.
fn strong_secret(secret: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret) else {
        return false;
    };
    let mut seen = std::collections::HashSet::new();
    bytes.len() >= TOKEN_SECRET_BYTES && secret.bytes().filter(|b| seen.insert(*b)).count() >= 16
}

/// Parses `vfs_<id>_<secret>`; `None` for anything else.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = (20..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
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

    /// Makes a token. `expires_in`: none means it never expires.
    pub async fn create(
        &self,
        label: &str,
        scopes: &str,
        prefix: &str,
        expires_in: Option<Duration>,
    ) -> Result<CreatedToken, AuthError> {
        let scopes = Scopes::parse(scopes)?;
        let prefix = normalize_prefix(prefix)?;
        if label.chars().count() > 200 || label.chars().any(crate::paths::forbidden_char) {
            return Err(AuthError::Invalid(
                "the label must be at most 200 characters, without control, \
                 bidirectional-override or replacement characters"
                    .into(),
            ));
        }
        if expires_in.is_some_and(|d| d > MAX_TOKEN_TTL) {
            return Err(AuthError::Invalid(format!(
                "expires_in is at most {}d; leave it out for a token that never expires",
                MAX_TOKEN_TTL.as_secs() / 86_400
            )));
        }
        let id = hex::encode(random_bytes(6)?);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32)?);
        let now = now_ms();
        // Bounded above: no overflow.
        let expires_at = expires_in
            .map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
        let record = TokenRecord {
            id: id.clone(),
            label: label.to_string(),
            secret_hash: sha256_hex(secret.as_bytes()),
            scopes: scopes.to_text(),
            prefix,
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        self.meta.insert_token(&record).await?;
        self.reload().await?;
        Ok(CreatedToken {
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            info: TokenInfo::from_record(&record, now),
        })
    }

    /// A fresh, well-formed token string that is stored nowhere (for a deployment's Secret,
    /// handed to the server as its bootstrap token).
    pub fn generate() -> Result<String, AuthError> {
        let id = hex::encode(random_bytes(6)?);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32)?);
        Ok(format!("{TOKEN_PREFIX}{id}_{secret}"))
    }

    /// Installs `token` (from `VAULTFS_BOOTSTRAP_TOKEN`) as an unprefixed admin token unless
    /// its id is already known, revoked or not: a revocation sticks across restarts. Returns
    /// whether it was added.
    pub async fn bootstrap(&self, token: &str) -> Result<bool, AuthError> {
        let (id, secret) = split_token(token.trim())
            .filter(|(_, secret)| strong_secret(secret))
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "VAULTFS_BOOTSTRAP_TOKEN is not a token of full strength ({TOKEN_SECRET_BYTES} \
                     random bytes); make one with `vaultfs token generate`"
                ))
            })?;
        if self.current().by_id.contains_key(id) {
            return Ok(false);
        }
        let record = TokenRecord {
            id: id.to_string(),
            label: "bootstrap".to_string(),
            secret_hash: sha256_hex(secret.as_bytes()),
            scopes: Scopes::ALL.to_text(),
            prefix: String::new(),
            created_at: now_ms(),
            expires_at: None,
            revoked_at: None,
        };
        match self.meta.insert_token(&record).await {
            // Another replica installed it first.
            Ok(()) | Err(MetadataError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        self.reload().await?;
        Ok(true)
    }

    pub async fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let now = now_ms();
        Ok(self
            .meta
            .tokens()
            .await?
            .iter()
            .map(|r| TokenInfo::from_record(r, now))
            .collect())
    }

    pub async fn revoke(&self, id: &str) -> Result<(), AuthError> {
        if !self.meta.revoke_token(id, now_ms()).await? {
            return Err(AuthError::NotFound);
        }
        self.reload().await?;
        Ok(())
    }

    fn share_mac(&self, path: &str, issued: i64, expires: i64, by: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.share_key.as_slice()).ok()?;
        // Length-prefixed fields: no two (path, issued, expires, by) sign the same bytes.
        for field in [path, &issued.to_string(), &expires.to_string(), by] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        Some(mac)
    }

    /// Signs a link to `path`, signed at `issued` and valid until `expires` (seconds since
    /// the epoch), for the principal that asked; the link dies with the principal's token.
    pub fn sign_share(
        &self,
        path: &str,
        issued: i64,
        expires: i64,
        by: &Principal,
    ) -> Option<String> {
        let by = by.token_id.as_deref().unwrap_or("");
        let mac = self.share_mac(path, issued, expires, by)?;
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks a share link's signature (constant time), lifetime (at most
    /// [`MAX_SHARE_TTL`] after its signing time, which may not lie in the future), expiry
    /// and issuing token.
    pub fn verify_share(&self, path: &str, issued: i64, expires: i64, by: &str, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        let Some(mac) = self.share_mac(path, issued, expires, by) else {
            return false;
        };
        if mac.verify_slice(&sig).is_err() {
            return false;
        }
        let now_s = now_ms() / 1000;
        let longest = i64::try_from(MAX_SHARE_TTL.as_secs()).unwrap_or(i64::MAX);
        if now_s >= expires
            || issued > now_s.saturating_add(SHARE_CLOCK_SKEW_S)
            || expires.saturating_sub(issued) > longest
        {
            return false;
        }
        if by.is_empty() {
            // Made on an open server, by nobody in particular: valid only while it is open.
            // Once tokens exist, links nobody answers for stop working.
            return !self.required();
        }
        let now = now_ms();
        self.current().by_id.get(by).is_some_and(|r| {
            is_active(r, now)
                && Scopes::parse(&r.scopes).is_ok_and(|s| s.allows(Scope::Read))
                && (r.prefix.is_empty() || path.starts_with(&r.prefix))
        })
    }
}

#[cfg(test)]
mod tests;
