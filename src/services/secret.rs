//! The server secret, and the private files of the data directory.
//!
//! Every key the server signs with (share links; later the S3 API's secrets) is derived from
//! one server secret with [`crate::services::auth::Auth::derive_key`]; none is stored in the
//! metadata store, so a copy of `meta.db` or of a PostgreSQL backup signs nothing. The secret
//! comes, in this order, from:
//!
//! - `VAULTFS_SECRET_KEY` (environment only, so it stays out of process lists);
//! - the file `secret_key_file` names (it must exist: replicas must share one secret, so a
//!   missing one is never made up);
//! - `<data_dir>/secret.key`, made at first start with 32 random bytes, mode 0600.
//!
//! Either holds the secret as text: 64 hex digits, or base64 of at least 32 bytes. Changing
//! it invalidates every share link (docs/SECURITY.md, "Rotating the server secret").

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of entropy a secret must carry at least.
pub(crate) const SECRET_BYTES: usize = 32;
/// The default key file's name in the data directory.
pub(crate) const KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{origin}: not a server secret: expected 64 hex digits or base64 of at least \
         {SECRET_BYTES} random bytes (make one with `openssl rand -hex 32`)"
    )]
    Weak { origin: String },
    #[error("server secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("set either VAULTFS_SECRET_KEY or secret_key_file, not both")]
    Ambiguous,
    #[error("no randomness available: {0}")]
    Random(String),
}

/// The server secret, ready to derive keys from. Never printed.
#[derive(Clone)]
pub struct ServerSecret {
    /// HMAC-SHA256 keyed with the secret, before any input: cloned per derivation.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

impl ServerSecret {
    fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, SecretError> {
        if bytes.len() < SECRET_BYTES || weak(bytes) {
            return Err(SecretError::Weak {
                origin: origin.to_string(),
            });
        }
        let keyed = Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| SecretError::Weak {
            origin: origin.to_string(),
        })?;
        Ok(ServerSecret { keyed })
    }

    /// Parses a secret given as text (64 hex digits, or base64 of at least 32 bytes).
    pub fn from_text(text: &str, origin: &str) -> Result<Self, SecretError> {
        let t = text.trim();
        let bytes = if t.len() >= 2 * SECRET_BYTES && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            engines.iter().find_map(|e| e.decode(t).ok())
        };
        match bytes {
            Some(b) => Self::from_bytes(&b, origin),
            None => Err(SecretError::Weak {
                origin: origin.to_string(),
            }),
        }
    }

    /// A secret that lives as long as this process: for commands that sign nothing (the
    /// token CLI on a data directory).
    pub fn ephemeral() -> Result<Self, SecretError> {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Self::from_bytes(&bytes, "random")
    }

    /// The secret the configuration names (see the module doc), making the default key file
    /// when it does not exist yet.
    pub async fn load(
        env_value: Option<&str>,
        key_file: Option<&Path>,
        data_dir: &Path,
    ) -> Result<Self, SecretError> {
        match (env_value, key_file) {
            (Some(_), Some(_)) => Err(SecretError::Ambiguous),
            (Some(text), None) => Self::from_text(text, "VAULTFS_SECRET_KEY"),
            (None, Some(path)) => Self::read_file(path, false).await,
            (None, None) => Self::read_file(&data_dir.join(KEY_FILE), true).await,
        }
    }

    async fn read_file(path: &Path, create: bool) -> Result<Self, SecretError> {
        let file_error = |reason: String| SecretError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = match tokio::fs::read_to_string(path).await {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                create_key_file(path.to_path_buf())
                    .await
                    .map_err(|e| file_error(format!("cannot create: {e}")))?
            }
            Err(e) => return Err(file_error(e.to_string())),
        };
        if create {
            // Ours: keep it private (also when an older version or a hand made it).
            private(path, 0o600)
                .await
                .map_err(|e| file_error(format!("cannot make it private: {e}")))?;
        } else if tokio::fs::metadata(path)
            .await
            .is_ok_and(|m| unix_mode(&m) & 0o077 != 0)
        {
            tracing::warn!(path = %path.display(),
                "the server secret file is readable by other users; make it mode 0600");
        }
        Self::from_text(&text, &path.display().to_string())
    }

    /// HMAC-SHA256 of the secret over `purpose`.
    pub(crate) fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Obviously not random: few distinct byte values (`aaaa…`, `abcdabcd…`).
fn weak(bytes: &[u8]) -> bool {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|s| **s).count() < 16
}

/// Writes a fresh key file: 32 random bytes as hex, mode 0600 from the start, made whole
/// under a temporary name and renamed into place.
async fn create_key_file(path: PathBuf) -> io::Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    let text = format!("{}\n", hex::encode(bytes));
    let contents = text.clone();
    crate::blocking::run(move || {
        use std::io::Write;
        let tmp = path.with_extension("key.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        // On the blocking pool: plain file calls are right here.
        #[allow(clippy::disallowed_methods)]
        {
            let mut file = options.open(&tmp)?;
            file.write_all(contents.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        Ok(())
    })
    .await?;
    tracing::info!("made a new server secret (secret.key in the data directory)");
    Ok(text)
}

#[cfg(unix)]
fn unix_mode(m: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777
}

#[cfg(not(unix))]
fn unix_mode(_: &std::fs::Metadata) -> u32 {
    0
}

/// Sets `path`'s mode (by path: no descriptor is opened, so no POSIX lock is disturbed).
async fn private(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Makes the data directory private to the server's user (0700). A directory the server does
/// not own (a volume root) is left as it is, with a warning.
pub(crate) async fn private_data_dir(dir: &Path) {
    if let Err(e) = private(dir, 0o700).await {
        tracing::warn!(dir = %dir.display(), error = %e,
            "cannot make the data directory private (mode 0700); make sure only the server's \
             user can read it");
    }
}

/// Makes the SQLite database and its WAL and shared-memory files private (0600). A missing
/// database is made empty with that mode first: SQLite gives the WAL and SHM files the mode
/// of the database file. Call before SQLite opens it.
pub(crate) async fn private_database(
    db_path: &Path,
) -> Result<(), crate::services::metadata::MetadataError> {
    private_database_files(db_path).await.map_err(|e| {
        crate::services::metadata::MetadataError::Backend(format!(
            "cannot make {} private (mode 0600): {e}",
            db_path.display()
        ))
    })
}

async fn private_database_files(db_path: &Path) -> io::Result<()> {
    if let Some(dir) = db_path.parent() {
        private_data_dir(dir).await;
    }
    if tokio::fs::metadata(db_path).await.is_err() {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        match options.open(db_path).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db_path.as_os_str().to_owned();
        name.push(suffix);
        match private(Path::new(&name), 0o600).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_strong_text() {
        let hex64 = hex::encode((0u8..32).collect::<Vec<_>>());
        assert!(ServerSecret::from_text(&hex64, "t").is_ok());
        assert!(ServerSecret::from_text(&format!("{hex64}\n"), "t").is_ok());
        let b64 =
            base64::engine::general_purpose::STANDARD.encode((100u8..140).collect::<Vec<_>>());
        assert!(ServerSecret::from_text(&b64, "t").is_ok());
        for weak in [
            "",
            "hunter2",
            &"ab".repeat(32),
            &"0".repeat(64),
            &hex64[..62],
        ] {
            assert!(ServerSecret::from_text(weak, "t").is_err(), "{weak}");
        }
        let a = ServerSecret::from_text(&hex64, "t").map(|s| s.derive("share-link-v1"));
        let b = ServerSecret::from_text(&hex64, "t").map(|s| s.derive("s3-secret-v1:x"));
        assert!(a.is_ok() && b.is_ok() && a.ok() != b.ok());
    }
}
