//! Version and trash retention settings: how many versions a file keeps and how long a deleted
//! file stays in the trash, globally and per prefix. Plain data read from the configuration
//! (`config.rs`) and applied by the metadata store inside each write
//! (`services::metadata::rules`). A leaf: it imports nothing from the crate.

/// How many versions of a file are kept, the current one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionsKeep {
    /// Every version is kept.
    All,
    /// The N newest (0 and 1 both keep the current version only).
    Newest(u64),
}

impl VersionsKeep {
    /// Old (non-current) versions kept; `None`: all of them.
    pub fn old_versions(self) -> Option<u64> {
        match self {
            VersionsKeep::All => None,
            VersionsKeep::Newest(n) => Some(n.saturating_sub(1)),
        }
    }
}

/// One `[[retention]]` override: settings for paths under `prefix` (the longest matching
/// prefix wins; a setting left out falls back to the global one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// The normalized path prefix the rule applies to (a directory: `a/b/`).
    pub prefix: String,
    /// Versions kept under the prefix; `None`: the global setting.
    pub versions_keep: Option<VersionsKeep>,
    /// `Some(None)`: deletes under this prefix are final.
    pub trash_retention_ms: Option<Option<i64>>,
}

/// Version and trash retention, which the store applies inside each write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Versions kept of every file no rule covers.
    pub versions_keep: VersionsKeep,
    /// How long a deleted file stays in the trash; `None`: deletes are final (no trash).
    pub trash_retention_ms: Option<i64>,
    /// The per-prefix overrides, in configuration order.
    pub rules: Vec<RetentionRule>,
}

impl Default for RetentionPolicy {
    /// What a store does until the server sets its configured policy: no history, no trash
    /// (a bare store behaves as before versions existed).
    fn default() -> Self {
        RetentionPolicy {
            versions_keep: VersionsKeep::Newest(1),
            trash_retention_ms: None,
            rules: Vec::new(),
        }
    }
}

impl RetentionPolicy {
    fn rule_for(&self, path: &str) -> Option<&RetentionRule> {
        self.rules
            .iter()
            .filter(|r| path.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
    }

    /// Versions kept for the file at `path`.
    pub fn versions_keep_for(&self, path: &str) -> VersionsKeep {
        self.rule_for(path)
            .and_then(|r| r.versions_keep)
            .unwrap_or(self.versions_keep)
    }

    /// How long a file deleted at `path` stays in the trash (`None`: no trash).
    pub fn trash_retention_for(&self, path: &str) -> Option<i64> {
        self.rule_for(path)
            .and_then(|r| r.trash_retention_ms)
            .unwrap_or(self.trash_retention_ms)
    }
}
