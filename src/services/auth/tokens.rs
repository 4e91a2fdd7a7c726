//! API tokens: their format and secrets, making, bootstrapping, listing and revoking them.

use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::principal::{normalize_prefix, Scopes};
use super::{Auth, AuthError};
use crate::services::metadata::{now_ms, MetadataError, TokenRecord};

/// Longest validity of a token with an expiry (none: it never expires).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Bytes a bootstrap token's secret must decode to (what `vaultfs token generate` makes).
const TOKEN_SECRET_BYTES: usize = 32;
const TOKEN_PREFIX: &str = "vfs_";

/// A token as listed (no secret, no hash).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TokenInfo {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) scopes: String,
    pub(crate) prefix: String,
    pub(crate) created_at: String,
    pub(crate) expires_at: Option<String>,
    pub(crate) revoked_at: Option<String>,
    pub(crate) active: bool,
}

impl TokenInfo {
    fn from_record(r: &TokenRecord, now: i64) -> Self {
        TokenInfo {
            id: r.id.clone(),
            label: r.label.clone(),
            scopes: r.scopes.clone(),
            prefix: r.prefix.clone(),
            created_at: crate::services::metadata::rfc3339(r.created_at),
            expires_at: r.expires_at.map(crate::services::metadata::rfc3339),
            revoked_at: r.revoked_at.map(crate::services::metadata::rfc3339),
            active: is_active(r, now),
        }
    }
}

pub(super) fn is_active(r: &TokenRecord, now: i64) -> bool {
    r.revoked_at.is_none() && r.expires_at.is_none_or(|e| now < e)
}

/// A token just made: the only moment its secret exists outside the client.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CreatedToken {
    pub(crate) token: String,
    #[serde(flatten)]
    pub(crate) info: TokenInfo,
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
pub(super) fn split_token(token: &str) -> Option<(&str, &str)> {
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

    pub(crate) async fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let now = now_ms();
        Ok(self
            .meta
            .tokens()
            .await?
            .iter()
            .map(|r| TokenInfo::from_record(r, now))
            .collect())
    }

    pub(crate) async fn revoke(&self, id: &str) -> Result<(), AuthError> {
        if !self.meta.revoke_token(id, now_ms()).await? {
            return Err(AuthError::NotFound);
        }
        self.reload().await?;
        Ok(())
    }
}
