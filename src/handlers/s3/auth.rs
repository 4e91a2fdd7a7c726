//! S3 credentials: an access key pair per token, derived, never stored.
//!
//! - access key id: `VFS` + the token id in upper case (the token id is public);
//! - secret access key: the first 40 hex digits of HMAC-SHA256(derive_key("s3-secret-v1"),
//!   token id).
//!
//! SigV4 needs the secret on the server; tokens are stored only as hashes, so the secret is
//! recomputed from a server secret instead of being stored. A request's key pair stands for
//! its token: revoked or expired token, dead key pair; the token's scopes and prefix apply to
//! every S3 operation.
//!
//! The secrets derive from the server secret (`Auth::derive_key("s3-secret-v1")`, never
//! stored): a copy of the metadata store signs nothing, and rotating the server secret
//! changes every key pair (re-issue them then).

use hmac::{Hmac, Mac};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::services::auth::{Auth, Principal, Scope};

const ACCESS_KEY_PREFIX: &str = "VFS";
const SECRET_PURPOSE: &str = "s3-secret-v1";
/// An S3 key pair, as `token create --s3` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct S3Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The key that S3 secrets are derived with (fetched once per process).
#[derive(Clone)]
pub(crate) struct KeyDeriver {
    key: [u8; 32],
}

impl std::fmt::Debug for KeyDeriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDeriver(..)")
    }
}

impl KeyDeriver {
    /// The deriver of this server's S3 secrets.
    pub(crate) fn new(auth: &Auth) -> Self {
        KeyDeriver {
            key: auth.derive_key(SECRET_PURPOSE),
        }
    }

    /// The key pair of token `token_id`.
    pub(crate) fn keys(&self, token_id: &str) -> S3Keys {
        S3Keys {
            access_key_id: format!("{ACCESS_KEY_PREFIX}{}", token_id.to_ascii_uppercase()),
            secret_access_key: self.secret(token_id),
        }
    }

    fn secret(&self, token_id: &str) -> String {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(token_id.as_bytes());
        let mut hex = hex::encode(mac.finalize().into_bytes());
        hex.truncate(40);
        hex
    }
}

/// The key pair of `token_id`, for `token create --s3` (CLI and admin API).
pub(crate) fn keys_for(auth: &Auth, token_id: &str) -> S3Keys {
    KeyDeriver::new(auth).keys(token_id)
}

/// The token id an access key id names.
pub(crate) fn token_id_of(access_key: &str) -> Option<String> {
    let id = access_key.strip_prefix(ACCESS_KEY_PREFIX)?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Checks SigV4 against the derived secret of an active token.
pub(crate) struct TokenAuth {
    pub auth: Auth,
    pub keys: KeyDeriver,
}

#[async_trait::async_trait]
impl S3Auth for TokenAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let Some(id) = token_id_of(access_key) else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        if self.auth.principal_for_id(&id).await.is_none() {
            return Err(s3_error!(InvalidAccessKeyId));
        }
        Ok(SecretKey::from(self.keys.secret(&id)))
    }
}

/// The principal of a verified request; anonymous requests only on an open server.
pub(crate) async fn principal(auth: &Auth, access_key: Option<&str>) -> S3Result<Principal> {
    match access_key {
        Some(key) => {
            let id = token_id_of(key).ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
            auth.principal_for_id(&id)
                .await
                .ok_or_else(|| s3_error!(InvalidAccessKeyId))
        }
        None if !auth.required() => Ok(Principal::open()),
        None => Err(s3_error!(AccessDenied, "Signature is required")),
    }
}

/// The scope an S3 operation needs: reads need `read`, everything else `write`.
pub(crate) fn scope_of(operation: &str) -> Scope {
    if operation.starts_with("Get")
        || operation.starts_with("Head")
        || operation.starts_with("List")
    {
        Scope::Read
    } else {
        Scope::Write
    }
}

/// Scope check per operation (prefixes are checked by the operations, per path).
pub(crate) struct ScopeAccess {
    pub auth: Auth,
}

#[async_trait::async_trait]
impl S3Access for ScopeAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let key = cx.credentials().map(|c| c.access_key.clone());
        let principal = principal(&self.auth, key.as_deref()).await?;
        let needed = scope_of(cx.s3_op().name());
        if !principal.scopes.allows(needed) {
            return Err(s3_error!(
                AccessDenied,
                "the token lacks the {} scope",
                needed.as_str()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_keys_name_their_token() {
        let d = KeyDeriver { key: [7; 32] };
        let k = d.keys("0123456789ab");
        assert_eq!(k.access_key_id, "VFS0123456789AB");
        assert_eq!(k.secret_access_key.len(), 40);
        assert_eq!(
            token_id_of(&k.access_key_id).as_deref(),
            Some("0123456789ab")
        );
        assert_ne!(
            d.keys("0123456789ac").secret_access_key,
            k.secret_access_key
        );
        assert!(token_id_of("AKIA0123456789AB").is_none());
        assert!(token_id_of("VFS0123").is_none());
        assert_eq!(scope_of("GetObject"), Scope::Read);
        assert_eq!(scope_of("ListObjectsV2"), Scope::Read);
        assert_eq!(scope_of("PutObject"), Scope::Write);
        assert_eq!(scope_of("DeleteObjects"), Scope::Write);
    }
}
