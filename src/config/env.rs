//! The `VAULTFS_*` environment variables, read into [`Overrides`].

use super::overrides::{Overrides, SizeValue};

impl Overrides {
    /// Reads `VAULTFS_*` variables through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        Overrides {
            listen: env("VAULTFS_LISTEN"),
            probe_listen: env("VAULTFS_PROBE_LISTEN"),
            data_dir: env("VAULTFS_DATA_DIR"),
            max_upload_size: env("VAULTFS_MAX_UPLOAD_SIZE").map(SizeValue::Text),
            inline_max_size: env("VAULTFS_INLINE_MAX_SIZE").map(SizeValue::Text),
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
}
