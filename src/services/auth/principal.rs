//! Who a request is: scopes, a principal's path prefix, and how a listing is narrowed to it.

use serde::Serialize;

use super::AuthError;
use crate::paths::VPath;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Download, stat, list and follow files (the event feed), and make share links; in the
    /// S3 API, the `Get*`, `Head*` and `List*` operations.
    Read,
    /// Upload, move, copy, delete and restore files, multi-file commits and leases; in the
    /// S3 API, every operation that is not a read.
    Write,
    /// The admin routes (tokens, locks, fsck, `/metrics`); includes `read` and `write`.
    /// Admin routes also need a token without a prefix.
    Admin,
}

impl Scope {
    /// The scope's name as written in a token's scope list (`read`, `write`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Scope> {
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
    pub(crate) const ALL: Scopes = Scopes {
        read: true,
        write: true,
        admin: true,
    };
    pub(crate) const NONE: Scopes = Scopes {
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

    pub(crate) fn allows(self, scope: Scope) -> bool {
        self.admin
            || match scope {
                Scope::Read => self.read,
                Scope::Write => self.write,
                Scope::Admin => false,
            }
    }

    pub(crate) fn to_text(self) -> String {
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

/// Who is asking, as far as authorization goes. Carried in
/// [`crate::services::files::RequestCtx`]; services check every path they touch against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id; `None` when the server is open (no tokens) or for a share link.
    pub token_id: Option<String>,
    pub(crate) scopes: Scopes,
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
