//! Configuration: defaults < TOML file < `VAULTFS_*` environment < command-line flags.
//!
//! Every value is validated at start; an invalid one is refused with a message that names the
//! setting and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::retention::{RetentionPolicy, RetentionRule, VersionsKeep};

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

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            probe_listen: None,
            data_dir: PathBuf::from("./vaultfs-data"),
            max_upload_size: 16 * 1024 * 1024 * 1024,
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

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `all` or a whole number.
fn parse_versions_keep(text: &str) -> Result<VersionsKeep, String> {
    match text.trim() {
        "all" => Ok(VersionsKeep::All),
        n => n
            .parse()
            .map(VersionsKeep::Newest)
            .map_err(|_| "expected a whole number of versions or \"all\"".to_string()),
    }
}

/// A duration, or `off` / `0`: no trash.
fn parse_trash_retention(text: &str) -> Result<Option<Duration>, String> {
    match text.trim() {
        "off" | "0" => Ok(None),
        t => parse_duration(t).map(Some),
    }
}

/// One `[[retention]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionOverride {
    pub prefix: String,
    pub versions_keep: Option<SizeValue>,
    pub trash_retention: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for setting `{setting}` (from {origin}): {reason}")]
    Invalid {
        setting: &'static str,
        origin: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Values as given by one source; `None` means "not set here".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub listen: Option<String>,
    pub probe_listen: Option<String>,
    pub data_dir: Option<String>,
    pub max_upload_size: Option<SizeValue>,
    pub lock_timeout: Option<String>,
    pub metadata_timeout: Option<String>,
    pub events_retention: Option<String>,
    pub events_max: Option<SizeValue>,
    pub max_concurrent_uploads: Option<SizeValue>,
    pub upload_queue_timeout: Option<String>,
    pub max_queued_uploads: Option<SizeValue>,
    pub max_connections: Option<SizeValue>,
    pub header_read_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub upload_min_rate: Option<SizeValue>,
    pub upload_min_rate_window: Option<String>,
    pub multipart_field_timeout: Option<String>,
    pub write_idle_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub shutdown_drain_delay: Option<String>,
    pub liveness_stall_grace: Option<String>,
    pub liveness_window: Option<String>,
    pub insecure_no_auth: Option<bool>,
    /// Comma-separated.
    pub allowed_origins: Option<String>,
    #[serde(skip)]
    pub bootstrap_token: Option<String>,
    pub metadata_url: Option<String>,
    pub blob_store: Option<String>,
    #[serde(skip)]
    pub secret_key: Option<String>,
    pub secret_key_file: Option<String>,
    /// Comma-separated.
    pub allowed_hosts: Option<String>,
    pub s3_listen: Option<String>,
    pub s3_domain: Option<String>,
    pub s3_multipart_max_age: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub versions_keep: Option<SizeValue>,
    pub trash_retention: Option<String>,
    pub allow_permanent_delete: Option<bool>,
    /// Config file only.
    pub retention: Option<Vec<RetentionOverride>>,
    pub tus_expiry: Option<String>,
    pub tus_max_sessions_per_token: Option<SizeValue>,
    pub commit_max_files: Option<SizeValue>,
    pub tus_max_staging_per_token: Option<SizeValue>,
}

/// A size, as a number of bytes or a string with a unit (`16GiB`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn as_text(&self) -> String {
        match self {
            SizeValue::Bytes(n) => n.to_string(),
            SizeValue::Text(t) => t.clone(),
        }
    }
}

impl Overrides {
    /// Reads `VAULTFS_*` variables through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        Overrides {
            listen: env("VAULTFS_LISTEN"),
            probe_listen: env("VAULTFS_PROBE_LISTEN"),
            data_dir: env("VAULTFS_DATA_DIR"),
            max_upload_size: env("VAULTFS_MAX_UPLOAD_SIZE").map(SizeValue::Text),
            lock_timeout: env("VAULTFS_LOCK_TIMEOUT"),
            metadata_timeout: env("VAULTFS_METADATA_TIMEOUT"),
            events_retention: env("VAULTFS_EVENTS_RETENTION"),
            events_max: env("VAULTFS_EVENTS_MAX").map(SizeValue::Text),
            max_concurrent_uploads: env("VAULTFS_MAX_CONCURRENT_UPLOADS").map(SizeValue::Text),
            upload_queue_timeout: env("VAULTFS_UPLOAD_QUEUE_TIMEOUT"),
            max_queued_uploads: env("VAULTFS_MAX_QUEUED_UPLOADS").map(SizeValue::Text),
            max_connections: env("VAULTFS_MAX_CONNECTIONS").map(SizeValue::Text),
            header_read_timeout: env("VAULTFS_HEADER_READ_TIMEOUT"),
            body_idle_timeout: env("VAULTFS_BODY_IDLE_TIMEOUT"),
            body_timeout: env("VAULTFS_BODY_TIMEOUT"),
            upload_min_rate: env("VAULTFS_UPLOAD_MIN_RATE").map(SizeValue::Text),
            upload_min_rate_window: env("VAULTFS_UPLOAD_MIN_RATE_WINDOW"),
            multipart_field_timeout: env("VAULTFS_MULTIPART_FIELD_TIMEOUT"),
            write_idle_timeout: env("VAULTFS_WRITE_IDLE_TIMEOUT"),
            shutdown_grace: env("VAULTFS_SHUTDOWN_GRACE"),
            shutdown_drain_delay: env("VAULTFS_SHUTDOWN_DRAIN_DELAY"),
            liveness_stall_grace: env("VAULTFS_LIVENESS_STALL_GRACE"),
            liveness_window: env("VAULTFS_LIVENESS_WINDOW"),
            insecure_no_auth: env("VAULTFS_INSECURE_NO_AUTH")
                .map(|v| matches!(v.trim(), "1" | "true" | "yes")),
            allowed_origins: env("VAULTFS_ALLOWED_ORIGINS"),
            bootstrap_token: env("VAULTFS_BOOTSTRAP_TOKEN").filter(|t| !t.trim().is_empty()),
            metadata_url: env("VAULTFS_METADATA_URL"),
            blob_store: env("VAULTFS_BLOB_STORE"),
            secret_key: env("VAULTFS_SECRET_KEY").filter(|t| !t.trim().is_empty()),
            secret_key_file: env("VAULTFS_SECRET_KEY_FILE"),
            allowed_hosts: env("VAULTFS_ALLOWED_HOSTS"),
            s3_listen: env("VAULTFS_S3_LISTEN"),
            s3_domain: env("VAULTFS_S3_DOMAIN"),
            s3_multipart_max_age: env("VAULTFS_S3_MULTIPART_MAX_AGE"),
            tls_cert: env("VAULTFS_TLS_CERT"),
            tls_key: env("VAULTFS_TLS_KEY"),
            versions_keep: env("VAULTFS_VERSIONS_KEEP").map(SizeValue::Text),
            trash_retention: env("VAULTFS_TRASH_RETENTION"),
            allow_permanent_delete: env("VAULTFS_ALLOW_PERMANENT_DELETE")
                .map(|v| matches!(v.trim(), "1" | "true" | "yes")),
            retention: None,
            tus_expiry: env("VAULTFS_TUS_EXPIRY"),
            tus_max_sessions_per_token: env("VAULTFS_TUS_MAX_SESSIONS_PER_TOKEN")
                .map(SizeValue::Text),
            tus_max_staging_per_token: env("VAULTFS_TUS_MAX_STAGING_PER_TOKEN")
                .map(SizeValue::Text),
            commit_max_files: env("VAULTFS_COMMIT_MAX_FILES").map(SizeValue::Text),
        }
    }

    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    fn apply(&self, config: &mut Config, origin: &str) -> Result<(), ConfigError> {
        let invalid = |setting: &'static str, value: &str, reason: String| ConfigError::Invalid {
            setting,
            origin: origin.to_string(),
            value: value.to_string(),
            reason,
        };
        if let Some(v) = &self.listen {
            config.listen = v
                .parse()
                .map_err(|e| invalid("listen", v, format!("{e} (expected IP:PORT)")))?;
        }
        if let Some(v) = &self.probe_listen {
            config.probe_listen = match v.trim() {
                "" | "none" => None,
                addr => Some(addr.parse().map_err(|e| {
                    invalid("probe_listen", v, format!("{e} (expected IP:PORT or none)"))
                })?),
            };
        }
        if let Some(v) = &self.metadata_url {
            if !(v.starts_with("postgres://") || v.starts_with("postgresql://")) {
                return Err(invalid(
                    "metadata_url",
                    "(hidden)",
                    "expected postgres://user:password@host:port/database".into(),
                ));
            }
            config.metadata_url = Some(v.clone());
        }
        if let Some(v) = &self.blob_store {
            if !v.starts_with("s3://") {
                return Err(invalid(
                    "blob_store",
                    v,
                    "expected s3://bucket[/prefix]?endpoint=...&region=...".into(),
                ));
            }
            config.blob_store = Some(v.clone());
        }
        self.apply_s3_tls(config, &invalid)?;
        if let Some(v) = &self.bootstrap_token {
            config.bootstrap_token = Some(v.clone());
        }
        if let Some(v) = &self.secret_key {
            config.secret_key = Some(v.clone());
        }
        if let Some(v) = &self.secret_key_file {
            if v.trim().is_empty() {
                return Err(invalid("secret_key_file", v, "must not be empty".into()));
            }
            config.secret_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = &self.allowed_hosts {
            let mut hosts = Vec::new();
            for h in v.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                let valid = h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
                if !valid {
                    return Err(invalid(
                        "allowed_hosts",
                        h,
                        "expected host names like vaultfs.lan (no scheme, no port)".into(),
                    ));
                }
                hosts.push(h.to_ascii_lowercase());
            }
            config.allowed_hosts = hosts;
        }
        if let Some(v) = self.insecure_no_auth {
            config.insecure_no_auth = v;
        }
        if let Some(v) = self.allow_permanent_delete {
            config.allow_permanent_delete = v;
        }
        if let Some(v) = &self.versions_keep {
            let text = v.as_text();
            config.versions_keep =
                parse_versions_keep(&text).map_err(|r| invalid("versions_keep", &text, r))?;
        }
        if let Some(v) = &self.trash_retention {
            config.trash_retention =
                parse_trash_retention(v).map_err(|r| invalid("trash_retention", v, r))?;
        }
        if let Some(rules) = &self.retention {
            let mut parsed = Vec::with_capacity(rules.len());
            for r in rules {
                let versions_keep = match &r.versions_keep {
                    None => None,
                    Some(v) => {
                        let text = v.as_text();
                        Some(
                            parse_versions_keep(&text)
                                .map_err(|e| invalid("retention.versions_keep", &text, e))?,
                        )
                    }
                };
                let trash_retention_ms = match &r.trash_retention {
                    None => None,
                    Some(t) => Some(
                        parse_trash_retention(t)
                            .map_err(|e| invalid("retention.trash_retention", t, e))?
                            .map(duration_ms),
                    ),
                };
                parsed.push(RetentionRule {
                    prefix: r.prefix.trim_start_matches('/').to_string(),
                    versions_keep,
                    trash_retention_ms,
                });
            }
            config.retention = parsed;
        }
        if let Some(v) = &self.allowed_origins {
            let mut origins = Vec::new();
            for o in v.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                let valid = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && o.bytes().all(|b| b.is_ascii_graphic());
                if !valid {
                    return Err(invalid(
                        "allowed_origins",
                        o,
                        "expected origins like https://ui.example.com (scheme, host, optional \
                         port, no path)"
                            .into(),
                    ));
                }
                origins.push(o.to_ascii_lowercase());
            }
            config.allowed_origins = origins;
        }
        if let Some(v) = &self.data_dir {
            if v.trim().is_empty() {
                return Err(invalid("data_dir", v, "must not be empty".into()));
            }
            config.data_dir = PathBuf::from(v);
        }
        if let Some(v) = &self.max_upload_size {
            let text = v.as_text();
            let n = parse_size(&text).map_err(|r| invalid("max_upload_size", &text, r))?;
            if n == 0 {
                return Err(invalid("max_upload_size", &text, "must be positive".into()));
            }
            config.max_upload_size = n;
        }
        if let Some(v) = &self.lock_timeout {
            config.lock_timeout = parse_duration(v).map_err(|r| invalid("lock_timeout", v, r))?;
        }
        if let Some(v) = &self.metadata_timeout {
            config.metadata_timeout =
                parse_duration(v).map_err(|r| invalid("metadata_timeout", v, r))?;
        }
        if let Some(v) = &self.events_retention {
            config.events_retention =
                parse_duration(v).map_err(|r| invalid("events_retention", v, r))?;
        }
        if let Some(v) = &self.events_max {
            let text = v.as_text();
            config.events_max = text.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "events_max",
                    &text,
                    "expected a positive whole number".into(),
                )
            })?;
        }
        if let Some(v) = &self.max_concurrent_uploads {
            let text = v.as_text();
            config.max_concurrent_uploads =
                text.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid(
                        "max_concurrent_uploads",
                        &text,
                        "expected a positive whole number".into(),
                    )
                })?;
        }
        if let Some(v) = &self.upload_queue_timeout {
            config.upload_queue_timeout =
                parse_duration(v).map_err(|r| invalid("upload_queue_timeout", v, r))?;
        }
        let count = |setting: &'static str, v: &SizeValue, min: usize| {
            let text = v.as_text();
            text.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| invalid(setting, &text, format!("expected a whole number >= {min}")))
        };
        if let Some(v) = &self.max_queued_uploads {
            config.max_queued_uploads = count("max_queued_uploads", v, 0)?;
        }
        if let Some(v) = &self.upload_min_rate {
            let text = v.as_text();
            config.upload_min_rate = parse_size(&text).map_err(|r| {
                invalid("upload_min_rate", &text, format!("{r} (bytes per second)"))
            })?;
        }
        if let Some(v) = &self.max_connections {
            config.max_connections = count("max_connections", v, 1)?;
        }
        if let Some(v) = &self.tus_expiry {
            config.tus_expiry = parse_duration(v).map_err(|r| invalid("tus_expiry", v, r))?;
        }
        if let Some(v) = &self.tus_max_sessions_per_token {
            config.tus_max_sessions_per_token = count("tus_max_sessions_per_token", v, 1)?;
        }
        if let Some(v) = &self.commit_max_files {
            config.commit_max_files = count("commit_max_files", v, 1)?;
        }
        if let Some(v) = &self.tus_max_staging_per_token {
            let text = v.as_text();
            config.tus_max_staging_per_token =
                parse_size(&text).map_err(|r| invalid("tus_max_staging_per_token", &text, r))?;
        }
        let durations: [(&'static str, &Option<String>, &mut Duration); 10] = [
            (
                "upload_min_rate_window",
                &self.upload_min_rate_window,
                &mut config.upload_min_rate_window,
            ),
            (
                "multipart_field_timeout",
                &self.multipart_field_timeout,
                &mut config.multipart_field_timeout,
            ),
            (
                "header_read_timeout",
                &self.header_read_timeout,
                &mut config.header_read_timeout,
            ),
            (
                "body_idle_timeout",
                &self.body_idle_timeout,
                &mut config.body_idle_timeout,
            ),
            ("body_timeout", &self.body_timeout, &mut config.body_timeout),
            (
                "write_idle_timeout",
                &self.write_idle_timeout,
                &mut config.write_idle_timeout,
            ),
            (
                "shutdown_grace",
                &self.shutdown_grace,
                &mut config.shutdown_grace,
            ),
            (
                "liveness_stall_grace",
                &self.liveness_stall_grace,
                &mut config.liveness_stall_grace,
            ),
            (
                "liveness_window",
                &self.liveness_window,
                &mut config.liveness_window,
            ),
            (
                "shutdown_drain_delay",
                &self.shutdown_drain_delay,
                &mut config.shutdown_drain_delay,
            ),
        ];
        for (setting, value, target) in durations {
            if let Some(v) = value {
                *target = if setting == "shutdown_drain_delay" && v.trim() == "0" {
                    Duration::ZERO
                } else {
                    parse_duration(v).map_err(|r| invalid(setting, v, r))?
                };
            }
        }
        Ok(())
    }
}

impl Overrides {
    /// The S3 listener and TLS settings.
    fn apply_s3_tls(
        &self,
        config: &mut Config,
        invalid: &dyn Fn(&'static str, &str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if let Some(v) = &self.s3_listen {
            config.s3_listen = Some(
                v.parse()
                    .map_err(|e| invalid("s3_listen", v, format!("{e} (expected IP:PORT)")))?,
            );
        }
        if let Some(v) = &self.s3_domain {
            let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
            let ok = !d.is_empty()
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
            if !ok {
                return Err(invalid("s3_domain", v, "expected a host name".into()));
            }
            config.s3_domain = Some(d);
        }
        if let Some(v) = &self.s3_multipart_max_age {
            config.s3_multipart_max_age =
                parse_duration(v).map_err(|r| invalid("s3_multipart_max_age", v, r))?;
        }
        if let Some(v) = &self.tls_cert {
            config.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = &self.tls_key {
            config.tls_key = Some(PathBuf::from(v));
        }
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            return Err(invalid(
                "tls_cert",
                "",
                "tls_cert and tls_key go together".into(),
            ));
        }
        Ok(())
    }
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

/// `16GiB`, `512 MiB`, `10MB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        "expected a whole number of bytes, optionally with a unit like MiB".to_string()
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

/// `10s`, `500ms`, `2m`, `1h`, `7d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration such as 10s or 500ms".to_string())?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| "duration too large".to_string())
    };
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        "d" => secs(86_400)?,
        other => return Err(format!("unknown duration unit {other:?}")),
    };
    if d.is_zero() {
        return Err("must be positive".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Overrides {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Overrides::from_env(&move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_are_zero_config() {
        let c = resolve(None, &Overrides::default(), &Overrides::default());
        let c = c.map_err(|e| e.to_string());
        assert_eq!(c, Ok(Config::default()));
        assert_eq!(Config::default().listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn precedence_file_env_flags() {
        let path = Path::new("vaultfs.toml");
        let file = Overrides::from_toml(
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/file\"\nmax_upload_size = 1024\nlock_timeout = \"3s\"\n",
            path,
        )
        .map_err(|e| e.to_string());
        let file = file.unwrap_or_else(|e| panic!("{e}"));
        let env = env_of(&[("VAULTFS_DATA_DIR", "/env"), ("VAULTFS_LOCK_TIMEOUT", "4s")]);
        let flags = Overrides {
            lock_timeout: Some("5s".into()),
            ..Overrides::default()
        };
        let c = resolve(Some((path, file)), &env, &flags).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(c.max_upload_size, 1024);
        assert_eq!(c.lock_timeout, Duration::from_secs(5));
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let env = env_of(&[("VAULTFS_LISTEN", "not-an-address")]);
        let err = resolve(None, &env, &Overrides::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("`listen`") && err.contains("VAULTFS_"),
            "{err}"
        );

        let flags = Overrides {
            max_upload_size: Some(SizeValue::Text("12 parsecs".into())),
            ..Overrides::default()
        };
        let err = resolve(None, &Overrides::default(), &flags)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("`max_upload_size`") && err.contains("command line"),
            "{err}"
        );

        let bad_file = Overrides::from_toml("colour = \"blue\"", Path::new("x.toml"));
        assert!(bad_file.is_err());
    }

    #[test]
    fn operations_settings() {
        let env = env_of(&[
            ("VAULTFS_SHUTDOWN_DRAIN_DELAY", "0"),
            ("VAULTFS_HEADER_READ_TIMEOUT", "2s"),
            ("VAULTFS_MAX_QUEUED_UPLOADS", "0"),
            ("VAULTFS_MAX_CONNECTIONS", "500"),
            ("VAULTFS_LIVENESS_WINDOW", "2m"),
        ]);
        let c = resolve(None, &env, &Overrides::default()).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.shutdown_drain_delay, Duration::ZERO);
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        assert_eq!((c.max_queued_uploads, c.max_connections), (0, 500));
        assert_eq!(c.liveness_window, Duration::from_secs(120));
        for (k, v) in [
            ("VAULTFS_MAX_CONNECTIONS", "0"),
            ("VAULTFS_SHUTDOWN_GRACE", "0"),
            ("VAULTFS_BODY_IDLE_TIMEOUT", "later"),
        ] {
            let err = resolve(None, &env_of(&[(k, v)]), &Overrides::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let setting = k.trim_start_matches("VAULTFS_").to_ascii_lowercase();
            assert!(err.contains(&format!("`{setting}`")), "{k}={v}: {err}");
        }
    }

    #[test]
    fn retention_settings() {
        let path = Path::new("vaultfs.toml");
        let text = "versions_keep = \"all\"\ntrash_retention = \"1d\"\n\
                    [[retention]]\nprefix = \"ci/\"\nversions_keep = 0\ntrash_retention = \"1h\"\n\
                    [[retention]]\nprefix = \"ci/keep/\"\nversions_keep = 3\n";
        let file = Overrides::from_toml(text, path).map_err(|e| e.to_string());
        let file = file.unwrap_or_else(|e| panic!("{e}"));
        let c = resolve(
            Some((path, file)),
            &Overrides::default(),
            &Overrides::default(),
        );
        let c = c
            .map_err(|e| e.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let p = c.retention_policy();
        assert_eq!(p.versions_keep_for("x"), VersionsKeep::All);
        assert_eq!(p.versions_keep_for("ci/a"), VersionsKeep::Newest(0));
        assert_eq!(p.versions_keep_for("ci/keep/a"), VersionsKeep::Newest(3));
        assert_eq!(p.trash_retention_for("x"), Some(86_400_000));
        assert_eq!(p.trash_retention_for("ci/a"), Some(3_600_000));
        // The longest prefix wins; what it leaves out falls back to the global setting.
        assert_eq!(p.trash_retention_for("ci/keep/a"), Some(86_400_000));
        let d = Config::default();
        assert_eq!(
            (d.versions_keep, d.trash_retention, d.allow_permanent_delete),
            (
                VersionsKeep::Newest(10),
                Some(Duration::from_secs(604_800)),
                false
            )
        );
        let env = env_of(&[
            ("VAULTFS_TRASH_RETENTION", "off"),
            ("VAULTFS_VERSIONS_KEEP", "x"),
        ]);
        assert!(resolve(None, &env, &Overrides::default()).is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(
            parse_duration("999999999999999999d").is_err(),
            "overflow is refused"
        );
    }
}
