//! One source's values ([`Overrides`]): the settings as a file, the environment or the flags
//! give them, and reading a TOML config file.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// One `[[retention]]` table of the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionOverride {
    pub(crate) prefix: String,
    pub(crate) versions_keep: Option<SizeValue>,
    pub(crate) trash_retention: Option<String>,
}

/// Values as given by one source; `None` means "not set here".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// `listen` (`VAULTFS_LISTEN`), `IP:PORT`; see [`Config::listen`](super::Config::listen)
    /// (default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// `probe_listen` (`VAULTFS_PROBE_LISTEN`), `IP:PORT`, or `none`/empty for no probe listener;
    /// see [`Config::probe_listen`](super::Config::probe_listen).
    pub probe_listen: Option<String>,
    /// `data_dir` (`VAULTFS_DATA_DIR`), must not be empty (default `./vaultfs-data`); see
    /// [`Config::data_dir`](super::Config::data_dir).
    pub data_dir: Option<String>,
    /// `max_upload_size` (`VAULTFS_MAX_UPLOAD_SIZE`), a size (`16GiB`); see
    /// [`Config::max_upload_size`](super::Config::max_upload_size).
    pub max_upload_size: Option<SizeValue>,
    /// `inline_max_size` (`VAULTFS_INLINE_MAX_SIZE`), a size, at most 1 MiB, 0: off
    /// (default 64 KiB); see [`Config::inline_max_size`](super::Config::inline_max_size).
    pub inline_max_size: Option<SizeValue>,
    /// `lock_timeout` (`VAULTFS_LOCK_TIMEOUT`), a duration (`10s`); see
    /// [`Config::lock_timeout`](super::Config::lock_timeout).
    pub lock_timeout: Option<String>,
    /// `metadata_timeout` (`VAULTFS_METADATA_TIMEOUT`), a duration (default `10s`); see
    /// [`Config::metadata_timeout`](super::Config::metadata_timeout).
    pub metadata_timeout: Option<String>,
    /// `events_retention` (`VAULTFS_EVENTS_RETENTION`), a duration (default 7 days); see
    /// [`Config::events_retention`](super::Config::events_retention).
    pub events_retention: Option<String>,
    /// `events_max` (`VAULTFS_EVENTS_MAX`), a count of events (default 10,000,000); see
    /// [`Config::events_max`](super::Config::events_max).
    pub events_max: Option<SizeValue>,
    /// `max_concurrent_uploads` (`VAULTFS_MAX_CONCURRENT_UPLOADS`), a count (default 64); see
    /// [`Config::max_concurrent_uploads`](super::Config::max_concurrent_uploads).
    pub max_concurrent_uploads: Option<SizeValue>,
    /// `upload_queue_timeout` (`VAULTFS_UPLOAD_QUEUE_TIMEOUT`), a duration (default `30s`); see
    /// [`Config::upload_queue_timeout`](super::Config::upload_queue_timeout).
    pub upload_queue_timeout: Option<String>,
    /// `max_queued_uploads` (`VAULTFS_MAX_QUEUED_UPLOADS`), a count (default 10,000); see
    /// [`Config::max_queued_uploads`](super::Config::max_queued_uploads).
    pub max_queued_uploads: Option<SizeValue>,
    /// `max_connections` (`VAULTFS_MAX_CONNECTIONS`), a count (default 10,000); see
    /// [`Config::max_connections`](super::Config::max_connections).
    pub max_connections: Option<SizeValue>,
    /// `header_read_timeout` (`VAULTFS_HEADER_READ_TIMEOUT`), a duration (default `10s`); see
    /// [`Config::header_read_timeout`](super::Config::header_read_timeout).
    pub header_read_timeout: Option<String>,
    /// `body_idle_timeout` (`VAULTFS_BODY_IDLE_TIMEOUT`), a duration (default `30s`); see
    /// [`Config::body_idle_timeout`](super::Config::body_idle_timeout).
    pub body_idle_timeout: Option<String>,
    /// `body_timeout` (`VAULTFS_BODY_TIMEOUT`), a duration (default `30s`); see
    /// [`Config::body_timeout`](super::Config::body_timeout).
    pub body_timeout: Option<String>,
    /// `upload_min_rate` (`VAULTFS_UPLOAD_MIN_RATE`), bytes per second, 0: off (default 16 KiB/s);
    /// see [`Config::upload_min_rate`](super::Config::upload_min_rate).
    pub upload_min_rate: Option<SizeValue>,
    /// `upload_min_rate_window` (`VAULTFS_UPLOAD_MIN_RATE_WINDOW`), a duration (default `30s`); see
    /// [`Config::upload_min_rate_window`](super::Config::upload_min_rate_window).
    pub upload_min_rate_window: Option<String>,
    /// `multipart_field_timeout` (`VAULTFS_MULTIPART_FIELD_TIMEOUT`), a duration (default `30s`);
    /// see [`Config::multipart_field_timeout`](super::Config::multipart_field_timeout).
    pub multipart_field_timeout: Option<String>,
    /// `write_idle_timeout` (`VAULTFS_WRITE_IDLE_TIMEOUT`), a duration (default `60s`); see
    /// [`Config::write_idle_timeout`](super::Config::write_idle_timeout).
    pub write_idle_timeout: Option<String>,
    /// `shutdown_grace` (`VAULTFS_SHUTDOWN_GRACE`), a duration (default `30s`); see
    /// [`Config::shutdown_grace`](super::Config::shutdown_grace).
    pub shutdown_grace: Option<String>,
    /// `shutdown_drain_delay` (`VAULTFS_SHUTDOWN_DRAIN_DELAY`), a duration (default 0); see
    /// [`Config::shutdown_drain_delay`](super::Config::shutdown_drain_delay).
    pub shutdown_drain_delay: Option<String>,
    /// `liveness_stall_grace` (`VAULTFS_LIVENESS_STALL_GRACE`), a duration (default `5s`); see
    /// [`Config::liveness_stall_grace`](super::Config::liveness_stall_grace).
    pub liveness_stall_grace: Option<String>,
    /// `liveness_window` (`VAULTFS_LIVENESS_WINDOW`), a duration (default `60s`); see
    /// [`Config::liveness_window`](super::Config::liveness_window).
    pub liveness_window: Option<String>,
    /// `insecure_no_auth` (`VAULTFS_INSECURE_NO_AUTH`, `--insecure-no-auth`); see
    /// [`Config::insecure_no_auth`](super::Config::insecure_no_auth) (default false).
    pub insecure_no_auth: Option<bool>,
    /// Comma-separated.
    pub allowed_origins: Option<String>,
    /// Environment only (`VAULTFS_BOOTSTRAP_TOKEN`), never the file or a flag; see
    /// [`Config::bootstrap_token`](super::Config::bootstrap_token).
    #[serde(skip)]
    pub bootstrap_token: Option<String>,
    /// `metadata_url` (`VAULTFS_METADATA_URL`), must start with `postgres://` or `postgresql://`;
    /// see [`Config::metadata_url`](super::Config::metadata_url).
    pub metadata_url: Option<String>,
    /// `blob_store` (`VAULTFS_BLOB_STORE`), must start with `s3://`; see
    /// [`Config::blob_store`](super::Config::blob_store).
    pub blob_store: Option<String>,
    /// Environment only (`VAULTFS_SECRET_KEY`), never the file or a flag; see
    /// [`Config::secret_key`](super::Config::secret_key).
    #[serde(skip)]
    pub secret_key: Option<String>,
    /// `secret_key_file` (`VAULTFS_SECRET_KEY_FILE`), a path that must not be empty; see
    /// [`Config::secret_key_file`](super::Config::secret_key_file).
    pub secret_key_file: Option<String>,
    /// Comma-separated.
    pub allowed_hosts: Option<String>,
    /// `s3_listen` (`VAULTFS_S3_LISTEN`), `IP:PORT` of the S3-compatible API; see
    /// [`Config::s3_listen`](super::Config::s3_listen).
    pub s3_listen: Option<String>,
    /// `s3_domain` (`VAULTFS_S3_DOMAIN`), base domain for virtual-host-style requests; see
    /// [`Config::s3_domain`](super::Config::s3_domain).
    pub s3_domain: Option<String>,
    /// `s3_multipart_max_age` (`VAULTFS_S3_MULTIPART_MAX_AGE`), a duration (default 24 h); see
    /// [`Config::s3_multipart_max_age`](super::Config::s3_multipart_max_age).
    pub s3_multipart_max_age: Option<String>,
    /// `tls_cert` (`VAULTFS_TLS_CERT`), path of a PEM certificate chain; see
    /// [`Config::tls_cert`](super::Config::tls_cert).
    pub tls_cert: Option<String>,
    /// `tls_key` (`VAULTFS_TLS_KEY`), path of the PEM private key; see
    /// [`Config::tls_key`](super::Config::tls_key).
    pub tls_key: Option<String>,
    /// `versions_keep` (`VAULTFS_VERSIONS_KEEP`), `all` or a count (default 10); see
    /// [`Config::versions_keep`](super::Config::versions_keep).
    pub versions_keep: Option<SizeValue>,
    /// `trash_retention` (`VAULTFS_TRASH_RETENTION`), a duration or `off` (default 7 days); see
    /// [`Config::trash_retention`](super::Config::trash_retention).
    pub trash_retention: Option<String>,
    /// `allow_permanent_delete` (`VAULTFS_ALLOW_PERMANENT_DELETE`); see
    /// [`Config::allow_permanent_delete`](super::Config::allow_permanent_delete) (default false).
    pub allow_permanent_delete: Option<bool>,
    /// Config file only.
    pub retention: Option<Vec<RetentionOverride>>,
    /// `tus_expiry` (`VAULTFS_TUS_EXPIRY`), a duration (default 24 h); see
    /// [`Config::tus_expiry`](super::Config::tus_expiry).
    pub tus_expiry: Option<String>,
    /// `tus_max_sessions_per_token` (`VAULTFS_TUS_MAX_SESSIONS_PER_TOKEN`), a count (default 100);
    /// see [`Config::tus_max_sessions_per_token`](super::Config::tus_max_sessions_per_token).
    pub tus_max_sessions_per_token: Option<SizeValue>,
    /// `commit_max_files` (`VAULTFS_COMMIT_MAX_FILES`), a count (default 10,000); see
    /// [`Config::commit_max_files`](super::Config::commit_max_files).
    pub commit_max_files: Option<SizeValue>,
    /// `tus_max_staging_per_token` (`VAULTFS_TUS_MAX_STAGING_PER_TOKEN`), a size (default 64 GiB);
    /// see [`Config::tus_max_staging_per_token`](super::Config::tus_max_staging_per_token).
    pub tus_max_staging_per_token: Option<SizeValue>,
}

/// A size, as a number of bytes or a string with a unit (`16GiB`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// A plain number of bytes (TOML integer), or a plain count for count settings.
    Bytes(u64),
    /// Text with an optional unit (`16GiB`, `64KiB`), parsed by [`parse_size`](super::parse_size).
    Text(String),
}

impl SizeValue {
    pub(super) fn as_text(&self) -> String {
        match self {
            SizeValue::Bytes(n) => n.to_string(),
            SizeValue::Text(t) => t.clone(),
        }
    }
}

impl Overrides {
    /// Parses a TOML config file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}
