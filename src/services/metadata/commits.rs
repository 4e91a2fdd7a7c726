//! Commits (atomic multi-file publishes) and leases with fencing tokens (issue 21): their
//! types, the one store operation that carries them ([`AtomicOp`] through
//! [`super::MetadataStore::atomic`]), the row operations each backend supplies
//! ([`CommitRows`], SQL in [`commit_rows!`]), and the fence a write carries.
//!
//! What the operations mean is in `rules/commits.rs`, next to the other write rules: a
//! finish applies its deletions and puts with the ordinary rules, in one transaction, and
//! every write checks the leases on its paths there (the [`FENCE`] of its request).
//!
//! Staged files hold one blob reference each (`commit_files` rows count in
//! `blobs.refcount`), so collection and fsck treat staged content as referenced until the
//! commit is finished (the reference moves to the file row), aborted or expired (dropped).

/// The SQL of [`CommitRows`], expanded by each backend.
#[macro_use]
mod rows;

use serde::{Deserialize, Serialize};

use super::{EventKind, FileMeta, S3ObjectRow};

tokio::task_local! {
    /// The `X-Vaultfs-Fence` of the request whose future runs now (set by the HTTP edge
    /// around each request). A backend's write reads it when the write is queued, so the
    /// check happens in the metadata transaction. Unset or `None`: the write carries no
    /// fence (refused under a live lease with `Locked`).
    pub static FENCE: Option<i64>;
}

/// The fence of the running request, if any.
pub(crate) fn current_fence() -> Option<i64> {
    FENCE.try_with(|f| *f).ok().flatten()
}

/// The extra member of a `lease_held` error: when the holder's lease ends.
pub(crate) const LEASE_HELD_UNTIL: &str = "expires_at";

/// A commit's state column.
pub(crate) const OPEN: &str = "open";
pub(crate) const FINISHED: &str = "finished";
pub(crate) const ABORTED: &str = "aborted";
pub(crate) const EXPIRED: &str = "expired";

/// A commit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub id: String,
    pub idempotency_key: Option<String>,
    /// `open`, `finished`, `aborted` or `expired`.
    pub state: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The finish's answer (JSON of [`FinishOutcome`]) once finished.
    pub result: Option<String>,
}

impl CommitRecord {
    /// The stored finish answer.
    pub fn finished(&self) -> Option<FinishOutcome> {
        self.result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
    }
}

/// A file staged in a commit: invisible until the finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    #[serde(skip)]
    pub content_type: String,
    /// The S3 record a file staged through the S3 API carries to its finish (ETag, user
    /// metadata, checksums); `None` from the native front ends.
    #[serde(skip)]
    pub s3: Option<S3ObjectRow>,
}

/// How long a lease id that lapsed and was taken over is still told apart from an unknown
/// one (its renewal answers `LeaseExpired`, not `NotFound`).
pub(crate) const LAPSED_LEASE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// How long an ended commit's row (its tombstone: `expired` answers 410 `commit_expired`,
/// `aborted` 404) is kept past the commit's expiry before the sweep removes it; its id is
/// then unknown (404). Finished commits stay (a retried finish answers their result).
pub(crate) const ENDED_COMMIT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a finish applies, besides the staged files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishRequest {
    pub commit_id: String,
    /// (path, sha256): the staged set must be exactly this.
    pub expect: Option<Vec<(String, String)>>,
    /// Paths removed in the same transaction (missing ones are skipped).
    pub delete: Vec<String>,
    /// Every live file under it that the commit does not write is deleted.
    pub replace_prefix: Option<String>,
    /// A feed seq: `PreconditionFailed` when anything under the commit's paths or
    /// `replace_prefix` changed after it.
    pub if_unchanged_since: Option<i64>,
    /// The paths the caller locked (staged and deleted): a staged set that grew meanwhile
    /// is `PathChanged`, and the caller locks again.
    pub locked: Vec<String>,
}

/// A finished commit, as `POST /api/v1/commits/{id}/finish` answers it (again on a retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishOutcome {
    pub commit: String,
    /// The first and last seq of the commit's events (0 and 0 for an empty commit).
    pub seq_first: i64,
    pub seq_last: i64,
    pub files: Vec<FileMeta>,
}

/// A lease path's row: the newest fence issued for it and the current holder, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub(crate) path: String,
    pub(crate) fence: i64,
    pub(crate) lease_id: Option<String>,
    pub(crate) expires_at_ms: i64,
}

impl LeaseRow {
    pub(crate) fn live(&self, now: i64) -> bool {
        self.lease_id.is_some() && self.expires_at_ms > now
    }

    /// Whether a write to `path` is under this lease path (the file itself, or a prefix
    /// ending in `/` above it).
    pub(crate) fn covers(&self, path: &str) -> bool {
        self.path == path || (self.path.ends_with('/') && path.starts_with(&self.path))
    }

    pub(crate) fn lease(&self) -> Option<Lease> {
        Some(Lease {
            lease_id: self.lease_id.clone()?,
            path: self.path.clone(),
            fence: self.fence,
            expires_at_ms: self.expires_at_ms,
        })
    }
}

/// A live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: String,
    pub path: String,
    pub fence: i64,
    pub expires_at_ms: i64,
}

/// The operations on commits and leases; each is one write transaction (reads too, so
/// they see the writes before them in order).
#[derive(Debug, Clone)]
pub enum AtomicOp {
    /// A new open commit, or the one an earlier call made with the same key.
    CreateCommit {
        id: String,
        idempotency_key: Option<String>,
        ttl_ms: i64,
    },
    /// The commit and its staged files.
    Get {
        commit_id: String,
    },
    /// Adds (or replaces, per path) staged files; at most `max_files` in the commit.
    Stage {
        commit_id: String,
        entries: Vec<StagedEntry>,
        max_files: usize,
    },
    Finish(FinishRequest),
    Abort {
        commit_id: String,
    },
    /// Ends at most `limit` open commits whose ttl passed.
    ExpireCommits {
        limit: i64,
    },
    AcquireLease {
        lease_id: String,
        path: String,
        ttl_ms: i64,
    },
    RenewLease {
        lease_id: String,
        ttl_ms: i64,
    },
    ReleaseLease {
        lease_id: String,
    },
    /// The live leases.
    Leases,
}

/// What an [`AtomicOp`] produced.
#[derive(Debug, Clone)]
pub enum AtomicDone {
    /// The commit, and whether this call created it.
    Commit(CommitRecord, bool),
    Staged {
        commit: CommitRecord,
        files: Vec<StagedEntry>,
        /// Blobs a re-staged path no longer references, at zero now.
        released: Vec<String>,
    },
    Finished {
        outcome: FinishOutcome,
        /// Blobs whose count dropped to zero (files replaced or deleted for good).
        released: Vec<String>,
    },
    /// Blobs released (abort, expiry), with how many commits ended.
    Released(usize, Vec<String>),
    Lease(Lease),
    Leases(Vec<Lease>),
    Done,
}

/// Row operations on the commit and lease tables, inside one open write transaction.
#[async_trait::async_trait]
pub(crate) trait CommitRows: Send {
    /// Events appended from now on belong to commit (id, event count); `None`: to none.
    fn set_commit_note(&mut self, note: Option<(String, i64)>);
    /// The seq of the last event this transaction appended.
    fn last_appended_seq(&self) -> Option<i64>;
    async fn commit_by_id(
        &mut self,
        id: &str,
    ) -> Result<Option<CommitRecord>, super::MetadataError>;
    async fn commit_by_key(
        &mut self,
        key: &str,
    ) -> Result<Option<CommitRecord>, super::MetadataError>;
    /// Frees an ended (expired or aborted) commit's idempotency key for a new commit.
    async fn release_commit_key(&mut self, id: &str) -> Result<(), super::MetadataError>;
    async fn insert_commit(&mut self, c: &CommitRecord) -> Result<(), super::MetadataError>;
    async fn set_commit_state(
        &mut self,
        id: &str,
        state: &str,
        result: Option<&str>,
    ) -> Result<(), super::MetadataError>;
    /// Open commits whose `expires_at <= now`, at most `limit`.
    async fn expired_commits(
        &mut self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<String>, super::MetadataError>;
    /// Removes at most `limit` expired or aborted commits whose `expires_at` is before
    /// `before` (their staged rows went when they ended).
    async fn purge_ended_commits(
        &mut self,
        before: i64,
        limit: i64,
    ) -> Result<(), super::MetadataError>;
    /// Staged files of a commit, by path.
    async fn staged_files(
        &mut self,
        commit_id: &str,
    ) -> Result<Vec<StagedEntry>, super::MetadataError>;
    async fn upsert_staged(
        &mut self,
        commit_id: &str,
        e: &StagedEntry,
    ) -> Result<(), super::MetadataError>;
    async fn delete_staged(&mut self, commit_id: &str) -> Result<(), super::MetadataError>;
    /// Every lease path's row (a handful: one per path ever leased).
    async fn lease_rows(&mut self) -> Result<Vec<LeaseRow>, super::MetadataError>;
    /// Inserts or replaces the row of `row.path`.
    async fn put_lease_row(&mut self, row: &LeaseRow) -> Result<(), super::MetadataError>;
    /// Remembers `row`'s lease (lapsed, about to be taken over) as of `now`, and forgets
    /// those remembered before `forget_before`.
    async fn remember_lapsed_lease(
        &mut self,
        row: &LeaseRow,
        now: i64,
        forget_before: i64,
    ) -> Result<(), super::MetadataError>;
    /// Whether `lease_id` lapsed and was taken over (and is still remembered).
    async fn lapsed_lease(&mut self, lease_id: &str) -> Result<bool, super::MetadataError>;
    // Set-based row operations of a finish: a handful of statements for a whole commit,
    // each the same rows as the per-file operation of `rules::Tx` it names, applied to a
    // batch (none for an empty one).

    /// The file rows at the paths staged in `commit_id`.
    async fn files_at_staged_paths(
        &mut self,
        commit_id: &str,
    ) -> Result<Vec<FileMeta>, super::MetadataError>;
    /// `Tx::insert_file` of each.
    async fn insert_files(&mut self, metas: &[FileMeta]) -> Result<(), super::MetadataError>;
    /// `Tx::update_content` of each (distinct ids).
    async fn update_contents(&mut self, metas: &[FileMeta]) -> Result<(), super::MetadataError>;
    /// `Tx::insert_version` of each.
    async fn insert_versions(&mut self, metas: &[FileMeta]) -> Result<(), super::MetadataError>;
    /// `Tx::versions_beyond` of each of `ids`: (id, version, sha256).
    async fn versions_beyond_each(
        &mut self,
        ids: &[String],
        skip: u64,
    ) -> Result<Vec<(String, i64, String)>, super::MetadataError>;
    /// `Tx::delete_version` of each (id, version).
    async fn delete_versions(&mut self, rows: &[(String, i64)])
        -> Result<(), super::MetadataError>;
    /// Drops `n` references of each (sha256, n) (distinct hashes); (sha256, count left) of
    /// those that have a row.
    async fn drop_blob_refs(
        &mut self,
        refs: &[(String, i64)],
    ) -> Result<Vec<(String, i64)>, super::MetadataError>;
    /// `Tx::append_event` of each (kind, file), in order (consecutive seqs), with no
    /// `from_path` and no note.
    async fn append_events(
        &mut self,
        events: &[(EventKind, FileMeta)],
        at: i64,
    ) -> Result<(), super::MetadataError>;
    /// (path, from_path) of the events after `seq`, at most `limit`.
    async fn paths_changed_after(
        &mut self,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>)>, super::MetadataError>;
    /// The lowest retained seq.
    async fn oldest_retained_seq(&mut self) -> Result<Option<i64>, super::MetadataError>;
}

/// Rows per statement of the set-based operations. Binding costs grow with the square of a
/// statement's parameters on SQLite (sqlx asks `sqlite3_bind_parameter_name` for each one,
/// and SQLite finds a name by a linear scan): at 500 rows (~5,000 `$N`) that scan was 37% of a
/// 1,000-file finish in a `perf` profile. 50 rows keep it small while a 1,000-file finish
/// still takes about 20 statements per kind of row instead of 1,000 (and far below SQLite's
/// 32,766 and PostgreSQL's 65,535 parameters at 13 binds a row).
pub(crate) const ROWS_PER_STATEMENT: usize = 50;

/// `rows` tuples of `VALUES`, each the bind numbers `template` names (offsets into the
/// row's `width` binds), numbered from `$first`: `($1, $2), ($3, $4)`.
pub(crate) fn values_rows(rows: usize, first: usize, width: usize, template: &[usize]) -> String {
    let mut out = String::with_capacity(rows * template.len() * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for (i, offset) in template.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * width + offset).to_string());
        }
        out.push(')');
    }
    out
}
