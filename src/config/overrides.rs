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
    pub listen: Option<String>,
    pub probe_listen: Option<String>,
    pub data_dir: Option<String>,
    pub max_upload_size: Option<SizeValue>,
    pub inline_max_size: Option<SizeValue>,
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
