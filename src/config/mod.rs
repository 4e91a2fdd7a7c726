//! Configuration: defaults < TOML file < `VAULTFS_*` environment < command-line flags.
//!
//! Every value is validated at start; an invalid one is refused with a message that names the
//! setting and where it came from.

mod apply;
mod env;
mod overrides;
mod parse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use overrides::{Overrides, RetentionOverride, SizeValue};
use parse::duration_ms;
pub use parse::{parse_duration, parse_size};

use crate::retention::{RetentionPolicy, RetentionRule, VersionsKeep};

/// The server's resolved, validated configuration; see [`resolve`] for how sources are layered.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// A second address serving only `/healthz` and `/readyz`, with a connection cap of its
    /// own, so probes are answered however many connections clients hold. None: probes on
    /// `listen` only.
    pub probe_listen: Option<SocketAddr>,
    /// Directory for blobs, temp files and the SQLite database.
    pub data_dir: PathBuf,
    /// Largest accepted upload, in bytes.
    pub max_upload_size: u64,
    /// Uploads of at most this many bytes are stored inline in the blob store's database
    /// (one group-committed row, no file and no file fsync) when blobs are on local disk;
    /// 0: every upload is a file. At most [`INLINE_MAX_SIZE_CAP`].
    pub inline_max_size: u64,
    /// Deadline for acquiring a request's lock set.
    pub lock_timeout: Duration,
    /// Deadline for the metadata store to answer (pool wait, SQLite busy).
    pub metadata_timeout: Duration,
    /// Events older than this are pruned from the log.
    pub events_retention: Duration,
    /// At most this many events are kept.
    pub events_max: u64,
    /// How often the pruner runs.
    pub events_prune_interval: Duration,
    /// Uploads streaming at once; more wait for a slot (admission control).
    pub max_concurrent_uploads: usize,
    /// Longest wait for an upload slot before 503 `overloaded`.
    pub upload_queue_timeout: Duration,
    /// Most uploads waiting for a slot; past it, 503 `overloaded` at once.
    pub max_queued_uploads: usize,
    /// Open client connections at most; past it, new ones get 503 `overloaded` and are closed.
    pub max_connections: usize,
    /// A client must send its request headers within this (slowloris).
    pub header_read_timeout: Duration,
    /// A request body that sends nothing for this long is cut off (408 `body_timeout`); an
    /// upload's data is removed.
    pub body_idle_timeout: Duration,
    /// A request body other than an upload's (JSON bodies) must arrive whole within this
    /// (408 `body_timeout`). Uploads stream under deadlines of their own.
    pub body_timeout: Duration,
    /// An upload body must arrive at this many bytes/s on average over `upload_min_rate_window`
    /// of waiting for the client (like Apache's `mod_reqtimeout` `MinRate`), or it is cut off
    /// (408). `0` turns the check off.
    pub upload_min_rate: u64,
    /// The window over which `upload_min_rate` is averaged.
    pub upload_min_rate_window: Duration,
    /// Longest wait for the next part's headers of a multipart upload (408 past it).
    pub multipart_field_timeout: Duration,
    /// A response write that makes no progress for this long ends the connection.
    pub write_idle_timeout: Duration,
    /// After SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long to keep accepting (with `/readyz` at 503) before closing the
    /// listener, so load balancers stop routing here first. Zero by default.
    pub shutdown_drain_delay: Duration,
    /// `/healthz` answers 503 when the runtime's scheduling delay exceeds this...
    pub liveness_stall_grace: Duration,
    /// ...now, or at any time within this window.
    pub liveness_window: Duration,
    /// Serve a non-loopback address although no token exists (everyone may do everything).
    pub insecure_no_auth: bool,
    /// Browser origins (`https://ui.example.com`) allowed to call the API and open the sync
    /// feed. Empty: same-origin requests only.
    pub allowed_origins: Vec<String>,
    /// An admin token (from `vaultfs token generate`) installed at start unless its id is
    /// known: how a deployment gets its first token from a Secret. Environment only
    /// (`VAULTFS_BOOTSTRAP_TOKEN`), never a flag or file, so it stays out of process lists.
    pub bootstrap_token: Option<String>,
    /// `postgres://...`: metadata, tokens and the event log in PostgreSQL (shared by
    /// replicas). None: SQLite in the data directory.
    pub metadata_url: Option<String>,
    /// `s3://bucket[/prefix]?endpoint=...&region=...`: blobs in S3-compatible object storage.
    /// None: the data directory.
    pub blob_store: Option<String>,
    /// The server secret every signing key derives from (64 hex digits or base64 of 32+
    /// bytes). Environment only (`VAULTFS_SECRET_KEY`), like the bootstrap token.
    pub secret_key: Option<String>,
    /// A file holding the server secret (it must exist). Neither set: `<data_dir>/secret.key`,
    /// made at first start.
    pub secret_key_file: Option<PathBuf>,
    /// Host names (no port) a loopback listener answers besides loopback names: the
    /// DNS-rebinding check lets them through.
    pub allowed_hosts: Vec<String>,
    /// Address of the S3-compatible API (its own listener: a path prefix would change what
    /// SigV4 signs). None: off.
    pub s3_listen: Option<SocketAddr>,
    /// Base domain for virtual-host-style S3 requests (`bucket.s3.example.com`). None:
    /// path-style only.
    pub s3_domain: Option<String>,
    /// An S3 multipart upload not completed or aborted within this is collected.
    pub s3_multipart_max_age: Duration,
    /// PEM certificate chain and private key: both listeners serve HTTPS (reloaded when the
    /// files change).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`; both or neither must be set.
    pub tls_key: Option<PathBuf>,
    /// Versions kept per file, the current one included (`all`, or N: 0 and 1 keep only the
    /// current one).
    pub versions_keep: VersionsKeep,
    /// How long a deleted file stays in the trash. None (`off`): deletes are final.
    pub trash_retention: Option<Duration>,
    /// `[[retention]]` per-prefix overrides (config file only); the longest prefix wins.
    pub retention: Vec<RetentionRule>,
    /// Whether `?permanent=true` may bypass the trash (with the write scope).
    pub allow_permanent_delete: bool,
    /// A tus upload session unused for this long expires and its staged bytes are removed.
    pub tus_expiry: Duration,
    /// Open tus sessions one token may have at once (429 past it).
    pub tus_max_sessions_per_token: usize,
    /// Staging bytes one token's open tus sessions may reserve (their declared lengths).
    pub tus_max_staging_per_token: u64,
    /// Files one commit (issue 21) may hold.
    pub commit_max_files: usize,
}

/// The largest `inline_max_size`: each upload slot may hold this much in memory.
pub const INLINE_MAX_SIZE_CAP: u64 = 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            probe_listen: None,
            data_dir: PathBuf::from("./vaultfs-data"),
            max_upload_size: 16 * 1024 * 1024 * 1024,
            inline_max_size: 64 * 1024,
            lock_timeout: Duration::from_secs(10),
            metadata_timeout: Duration::from_secs(10),
            events_retention: Duration::from_secs(7 * 24 * 3600),
            events_max: 10_000_000,
            events_prune_interval: Duration::from_secs(60),
            max_concurrent_uploads: 64,
            upload_queue_timeout: Duration::from_secs(30),
            max_queued_uploads: 10_000,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            upload_min_rate: 16 * 1024,
            upload_min_rate_window: Duration::from_secs(30),
            multipart_field_timeout: Duration::from_secs(30),
            write_idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            shutdown_drain_delay: Duration::ZERO,
            liveness_stall_grace: Duration::from_secs(5),
            liveness_window: Duration::from_secs(60),
            insecure_no_auth: false,
            allowed_origins: Vec::new(),
            bootstrap_token: None,
            metadata_url: None,
            blob_store: None,
            secret_key: None,
            secret_key_file: None,
            allowed_hosts: Vec::new(),
            s3_listen: None,
            s3_domain: None,
            s3_multipart_max_age: Duration::from_secs(24 * 3600),
            tls_cert: None,
            tls_key: None,
            versions_keep: VersionsKeep::Newest(10),
            trash_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention: Vec::new(),
            allow_permanent_delete: false,
            tus_expiry: Duration::from_secs(24 * 3600),
            tus_max_sessions_per_token: 100,
            tus_max_staging_per_token: 64 * 1024 * 1024 * 1024,
            commit_max_files: 10_000,
        }
    }
}

impl Config {
    /// Defaults with `data_dir`: what tests use.
    ///
    /// Without history: one version, no trash (deletes are final), as before versions
    /// existed, so tests of other features see blobs collected when a file is replaced or
    /// deleted. Tests of versions and the trash set `versions_keep` / `trash_retention`.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            versions_keep: VersionsKeep::Newest(1),
            trash_retention: None,
            // Content as files under blobs/, which tests of other features inspect; tests of
            // inline content set `inline_max_size`.
            inline_max_size: 0,
            ..Config::default()
        }
    }

    /// The retention the metadata store applies, from these settings.
    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            versions_keep: self.versions_keep,
            trash_retention_ms: self.trash_retention.map(duration_ms),
            rules: self.retention.clone(),
        }
    }
}

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting's value is malformed or out of range.
    #[error("invalid value {value:?} for setting `{setting}` (from {origin}): {reason}")]
    Invalid {
        /// The setting's name (`max_upload_size`, `retention.versions_keep`).
        setting: &'static str,
        /// Where the value came from: `config file <path>`, `environment (VAULTFS_*)` or
        /// `command line`.
        origin: String,
        /// The offending value as given (`(hidden)` for secrets such as `metadata_url`).
        value: String,
        /// What is wrong with it and what was expected.
        reason: String,
    },
    /// The config file could not be read or is not valid TOML for [`Overrides`].
    #[error("cannot read config file {path}: {reason}")]
    File {
        /// The config file's path as given (`--config FILE`).
        path: PathBuf,
        /// The I/O or TOML parse error.
        reason: String,
    },
}

/// Layers the sources in order: defaults, then `file` (with its path), then `env`, then `flags`.
pub fn resolve(
    file: Option<(&Path, Overrides)>,
    env: &Overrides,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    if let Some((path, file)) = file {
        file.apply(&mut config, &format!("config file {}", path.display()))?;
    }
    env.apply(&mut config, "environment (VAULTFS_*)")?;
    flags.apply(&mut config, "command line")?;
    Ok(config)
}

#[cfg(test)]
mod tests;
