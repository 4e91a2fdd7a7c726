//! The `vaultfs` client commands: upload, download, ls, stat, rm, mv, cp, watch, fsck,
//! token, share and loadtest; `main.rs` parses the flags and calls them. All but the offline
//! `fsck` and `token` (which open a data directory) are built on [`crate::client`]: one
//! retry policy, one error shape.
//!
//! Output contract: results go to standard output (one line per item, or one JSON object per
//! line with `--json`); errors, progress and the summary go to standard error, except that
//! `--json` also prints the summary as a final JSON object. Exit status: 0 when every item
//! succeeded, 1 when any failed, 2 for usage errors, 130 when interrupted.

pub mod admin;
pub mod download;
pub mod fsck;
pub mod loadtest;
pub mod ops;
mod output;
pub mod publish;
mod tus_upload;
pub mod upload;
pub mod versions;
pub mod watch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use output::{ItemResult, Reporter};

use crate::client::{Client, ClientError, ClientOptions, RetryPolicy};

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Server URL
    #[arg(long, env = "VAULTFS_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token (once the server requires one). On a shared machine prefer
    /// VAULTFS_TOKEN or --token-file: a flag shows in the process list
    #[arg(long, env = "VAULTFS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the bearer token from this file instead (keeps it out of the process list)
    /// [env: VAULTFS_TOKEN_FILE]
    #[arg(long, env = "VAULTFS_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Retries of a failed request (connection errors, 429, 502-504, lock_timeout)
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// One JSON object per result on standard output (and a final summary object)
    #[arg(long)]
    pub json: bool,
    /// No progress bars: one plain line per result
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Reads `--token-file` into `token` (trimmed; an empty or unreadable file is a usage error
/// naming the file). Called before the runtime starts.
pub fn load_token_file(
    token: &mut Option<String>,
    file: Option<&std::path::Path>,
) -> Result<(), String> {
    let Some(path) = file else {
        return Ok(());
    };
    // Before the runtime exists: a blocking read is right here.
    #[allow(clippy::disallowed_methods)]
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    *token = Some(t.to_string());
    Ok(())
}

impl CommonArgs {
    /// See [`load_token_file`].
    pub fn load_token_file(&mut self) -> Result<(), String> {
        load_token_file(&mut self.token, self.token_file.as_deref())
    }

    pub(crate) fn client(&self) -> Result<Client, ClientError> {
        Client::with_options(
            &self.server,
            &ClientOptions {
                token: self.token.clone(),
                // A server that stops sending for this long is treated as a broken
                // connection (and retried), rather than waited on forever.
                read_timeout: Some(Duration::from_secs(60)),
            },
        )
    }

    /// The client, or the reason printed (a usage error: a bad URL or token).
    pub fn client_or_usage(&self) -> Option<Client> {
        match self.client() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("vaultfs: {e}");
                None
            }
        }
    }

    pub(crate) fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            ..RetryPolicy::default()
        }
    }
}

/// Download temp files that exist right now. Whatever is left here when a command is
/// interrupted is removed by `main` after the runtime has stopped, so no in-flight write can
/// recreate a file after its removal.
#[derive(Debug, Default, Clone)]
pub struct TempFiles(
    /// Guards the set of temp file paths; held for one insert, remove or drain.
    Arc<Mutex<HashSet<PathBuf>>>,
);

impl TempFiles {
    pub(crate) fn add(&self, path: PathBuf) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(path);
        }
    }

    pub(crate) fn forget(&self, path: &std::path::Path) {
        if let Ok(mut set) = self.0.lock() {
            set.remove(path);
        }
    }

    /// Removes and returns every path still registered, leaving the set empty (what `main` deletes
    /// after an interrupt).
    pub fn take_all(&self) -> Vec<PathBuf> {
        match self.0.lock() {
            Ok(mut set) => set.drain().collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// What a command ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every item succeeded: exit status 0.
    AllSucceeded,
    /// At least one item failed: exit status 1.
    SomeFailed,
    /// A usage error (bad flags, URL or token): exit status 2.
    Usage,
    /// Interrupted by Ctrl-C: exit status 130.
    Interrupted,
}

impl Outcome {
    /// The process exit status for this outcome (0, 1, 2 or 130).
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::AllSucceeded => ExitCode::SUCCESS,
            Outcome::SomeFailed => ExitCode::from(1),
            Outcome::Usage => ExitCode::from(2),
            Outcome::Interrupted => ExitCode::from(130),
        }
    }
}

/// Runs `work` to completion unless Ctrl-C comes first; then the in-flight transfers are
/// dropped (their connections closed) and the summary says so.
pub async fn until_interrupted(
    reporter: &Reporter,
    work: impl std::future::Future<Output = ()> + Send,
) -> Outcome {
    let interrupted = tokio::select! {
        () = work => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    reporter.finish(interrupted)
}

/// Formats a byte count the way the progress bars do.
pub fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// The last segment of a `/`-separated path.
pub fn basename(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// Whether `s` has the shape of a file id (32 lowercase hex digits).
pub fn looks_like_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Resolves a path or an id to the file it names.
pub async fn resolve_file(
    client: &Client,
    policy: &RetryPolicy,
    target: &str,
) -> (Result<crate::api::FileMeta, ClientError>, u32) {
    if looks_like_id(target) {
        let (r, attempts) = policy.run(|_| client.meta(target), |_, _, _| {}).await;
        match r {
            Err(ClientError::Api { status: 404, .. }) => {}
            other => return (other, attempts),
        }
    }
    policy.run(|_| client.stat(target), |_, _, _| {}).await
}

/// Every file under `prefix`, following the server's cursor.
pub async fn list_all(
    client: &Client,
    policy: &RetryPolicy,
    prefix: &str,
) -> Result<Vec<crate::api::FileMeta>, ClientError> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, _) = policy
            .run(
                |_| client.list_page(prefix, false, cursor.as_deref(), None),
                |_, _, _| {},
            )
            .await;
        let page = page?;
        out.extend(page.entries);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Normalizes a remote directory argument: "" / "/" / "." mean the root, otherwise a
/// prefix ending in `/`.
pub fn remote_dir(arg: &str) -> String {
    let trimmed = arg.trim_start_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        String::new()
    } else if trimmed.ends_with('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_dirs() {
        assert_eq!(remote_dir(""), "");
        assert_eq!(remote_dir("/"), "");
        assert_eq!(remote_dir("."), "");
        assert_eq!(remote_dir("ci"), "ci/");
        assert_eq!(remote_dir("ci/a/"), "ci/a/");
        assert_eq!(basename("a/b/c.txt"), "c.txt");
        assert_eq!(basename("a/b/"), "b");
        assert!(looks_like_id("0123456789abcdef0123456789abcdef"));
        assert!(!looks_like_id("0123456789abcdef0123456789abcdeF"));
    }
}
