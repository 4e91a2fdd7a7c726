//! The wire types of API v1: what the server sends and the client reads, in one place, so the
//! client (`crate::client`, the CLI, the load tool) does not reach into the services and the
//! handlers do not reach into the client.
//!
//! Layering: `handlers` and `client` import this module; it imports only the services'
//! types that are the API's JSON today (their definitions stay with the code that produces
//! them), never the HTTP layers.

pub use crate::services::auth::{CreatedToken, TokenInfo};
pub use crate::services::files::ListPage;
pub use crate::services::fsck::{Damaged, FsckReport};
pub use crate::services::metadata::{AuditProblem, FileMeta};
pub use crate::services::versions::{FileVersion, TrashPage, TrashView, TreeDeleted, VersionPage};

/// Percent-encodes a path for a query value or URL path (keeps `/`).
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_path;

    #[test]
    fn encode_path_keeps_slashes_and_unreserved() {
        assert_eq!(encode_path("a b/ü?&=%.txt"), "a%20b/%C3%BC%3F%26%3D%25.txt");
        assert_eq!(encode_path("-_.~/"), "-_.~/");
    }
}
