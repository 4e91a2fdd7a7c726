//! Presigned share links: signing and verifying them with the `share-link-v1` key.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::principal::{Principal, Scope, Scopes};
use super::tokens::is_active;
use super::Auth;
use crate::services::metadata::now_ms;

/// Longest validity of a share link.
pub const MAX_SHARE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// A share link signed this far in the future (clock skew between replicas) still works.
const SHARE_CLOCK_SKEW_S: i64 = 300;

impl Auth {
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
