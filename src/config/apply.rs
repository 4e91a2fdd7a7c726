//! Validating one source's values and laying them over the configuration, with errors that
//! name the setting and where it came from.

use std::path::PathBuf;
use std::time::Duration;

use super::overrides::{Overrides, SizeValue};
use super::parse::{
    duration_ms, parse_duration, parse_size, parse_trash_retention, parse_versions_keep,
};
use super::{Config, ConfigError};
use crate::retention::RetentionRule;

impl Overrides {
    pub(super) fn apply(&self, config: &mut Config, origin: &str) -> Result<(), ConfigError> {
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
        if let Some(v) = &self.inline_max_size {
            let text = v.as_text();
            let n = parse_size(&text).map_err(|r| invalid("inline_max_size", &text, r))?;
            if n > super::INLINE_MAX_SIZE_CAP {
                return Err(invalid(
                    "inline_max_size",
                    &text,
                    format!("at most {} bytes", super::INLINE_MAX_SIZE_CAP),
                ));
            }
            config.inline_max_size = n;
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
