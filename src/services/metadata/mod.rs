//! Files, blob references and the event log, behind one trait.
//!
//! [`MetadataStore`] is what the rest of VaultFS sees. Every mutating method is one
//! transaction that also appends the matching event(s) to the log, so a change and its event
//! commit or roll back together.
//!
//! - this file: the trait, its types and errors;
//! - `rules`: what a write does (preconditions, versions, events, reference counts) and what
//!   the audit checks, written once over a per-backend `Tx` of row operations;
//! - `sql`: those row operations on sqlx, written once, expanded for each backend's
//!   connection type with that backend's SQL;
//! - [`sqlite`]: the embedded default (one group-committing writer, pooled readers);
//! - [`postgres`]: what several replicas share (one counter-row lock per write, blob fences);
//! - [`instrumented`]: the timing wrapper every server puts around its store;
//! - [`commits`]: the rows of atomic commits, leases and their fencing tokens;
//! - [`tus`]: the rows of tus upload sessions;
//! - `migrations/{sqlite,postgres}/NNNN_name.sql`: each backend's schema, applied in order.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::storage::BlobRef;

#[macro_use]
pub(crate) mod commits;
pub(crate) mod instrumented;
pub(crate) mod rules;
#[macro_use]
mod sql;
pub(crate) mod pools;
pub mod postgres;
pub mod sqlite;
pub(crate) mod tus;
pub(crate) mod web_sessions;

pub use rules::listing::{LevelPage, LevelPosition, LevelQuery, ListSort};

/// A file as clients see it (API v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Stable file id, 32 lowercase hex digits (a simple uuid v4): kept by new versions,
    /// moves and trash restores; a copy gets a new one.
    pub id: String,
    /// Current path: validated, NFC-normalized, `/`-separated and relative (see `crate::paths`).
    pub path: String,
    /// Content length of the current version, in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the current version's content (also its blob's name and, quoted,
    /// its entity tag).
    pub sha256: String,
    /// Version number of the current content: 1 when created, +1 on every replace or version
    /// restore; unchanged by a move.
    pub version: i64,
    pub(crate) content_type: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub modified_at: String,
    /// Milliseconds since the epoch, for `Last-Modified`; not part of the JSON.
    #[serde(skip)]
    pub modified_ms: i64,
}

impl FileMeta {
    /// Strong entity tag, derived from the content hash.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }
}

/// What a logged change did to its file: the `kind` of an [`Event`] (snake_case on the wire
/// and in the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new file (new id, version 1) at a path that had none.
    Created,
    /// The content of an existing file replaced: a new version of the same id.
    Updated,
    /// A file removed from its path: to the trash (`trash_id` set) or for good.
    Deleted,
    /// A file moved from `from_path` to `path`, keeping its id, version and content.
    Moved,
    /// A new file (new id, version 1) at `path` sharing the blob of the one at `from_path`.
    Copied,
    /// A version made current again, or a file brought back from the trash.
    Restored,
}

impl EventKind {
    /// The kind's name as stored and serialized (`created`, `updated`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
            EventKind::Moved => "moved",
            EventKind::Copied => "copied",
            EventKind::Restored => "restored",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => EventKind::Created,
            "updated" => EventKind::Updated,
            "deleted" => EventKind::Deleted,
            "moved" => EventKind::Moved,
            "copied" => EventKind::Copied,
            "restored" => EventKind::Restored,
            _ => return None,
        })
    }
}

/// One committed change, in the durable log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log: gapless, increasing in commit order, never reused (the first is 1).
    pub seq: i64,
    /// What the change did.
    pub kind: EventKind,
    pub(crate) id: String,
    /// The file's path after the change (for `deleted`: the path it was removed from).
    pub path: String,
    /// On `moved` and `copied`: the source path; `None` on every other kind.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from_path: Option<String>,
    /// The file's version after the change (for `deleted`: the version that was removed).
    pub version: i64,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// RFC 3339.
    pub at: String,
    /// On a `deleted` event that moved the file to the trash: its trash entry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trash_id: Option<String>,
    /// On a `restored` event that made an old version current: that version's number.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub restored_from: Option<i64>,
    /// The commit (issue 21) this event belongs to, whose events take `commit_size`
    /// consecutive seqs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) commit_size: Option<u64>,
}

/// What an event carries besides the file's state (see [`Event`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventNote {
    pub(crate) trash_id: Option<String>,
    pub(crate) restored_from: Option<i64>,
}

// Retention settings are plain configuration (a leaf below `config`); the store applies them.
pub use crate::retention::{RetentionPolicy, RetentionRule, VersionsKeep};

/// A file in the trash: its row as it was when deleted, and when it goes for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashEntry {
    /// The entry's id: 32 hex digits, the first 12 the deletion time in milliseconds, so ids
    /// sort by age.
    pub trash_id: String,
    /// The file's row as it was when deleted (its id, path, current version).
    pub file: FileMeta,
    /// When it was deleted, in milliseconds since the epoch.
    pub deleted_at_ms: i64,
    /// When it expires, in milliseconds since the epoch: listings hide it from then on and
    /// [`MetadataStore::expire_trash`] purges it.
    pub expires_at_ms: i64,
    /// The recursive delete that trashed it, if any.
    pub batch_id: Option<String>,
}

/// Several files changed in one transaction (a recursive delete, a batch restore).
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    /// The files changed: as they were when deleted (a delete), or as restored (a restore).
    pub files: Vec<FileMeta>,
    /// Blobs whose reference count this change dropped to zero.
    pub released: Vec<String>,
}

/// What the retention metrics show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionStats {
    /// Entries in the trash, expired ones not yet purged included.
    pub trash_entries: u64,
    /// Sum of the trashed files' sizes, in bytes (each entry counted, shared blobs included).
    pub trash_bytes: u64,
    pub(crate) versions_retained: u64,
}

/// Which entity tags an `If-Match` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtagMatch {
    /// `*`: any existing file matches.
    Any,
    /// SHA-256 hex values (the tags without quotes).
    OneOf(Vec<String>),
}

impl EtagMatch {
    /// Parses an `If-Match` / `If-None-Match` list (`*`, or quoted tags separated by commas).
    /// Weak tags never match (strong comparison), so they are left out.
    pub fn parse(value: &str) -> EtagMatch {
        let value = value.trim();
        if value == "*" {
            return EtagMatch::Any;
        }
        EtagMatch::OneOf(
            value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.starts_with("W/"))
                .map(|t| t.trim_matches('"').to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        )
    }

    pub(crate) fn matches(&self, sha256: &str) -> bool {
        match self {
            EtagMatch::Any => true,
            EtagMatch::OneOf(tags) => tags.iter().any(|t| t == sha256),
        }
    }
}

/// A write's condition on the current state of its path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No condition: the write proceeds whatever is at the path.
    #[default]
    None,
    /// `If-None-Match: *`: create only.
    MustNotExist,
    /// `If-Match`: replace only a matching current version.
    MustMatch(EtagMatch),
}

/// One write of a file's content: a new file at `path`, or a new version of the one there.
#[derive(Debug, Clone)]
pub struct PutRequest {
    /// The file's path (validated, see `crate::paths`).
    pub path: String,
    /// The content, already committed to the blob store; the put takes a reference on it.
    pub blob: BlobRef,
    /// MIME type recorded with the version (served as `Content-Type`).
    pub content_type: String,
    /// The condition on the file now at `path` ([`MetadataError::PreconditionFailed`] when it
    /// does not hold).
    pub precondition: Precondition,
    /// The S3 API's record of this version, written in the same transaction. `None` (every
    /// native write): nothing is written; a record of the path's earlier content no longer
    /// matches its SHA-256 and is ignored.
    pub s3: Option<S3ObjectRow>,
}

/// What the S3 API knows about one file version beyond its metadata (the MD5 ETag, user
/// metadata, stored headers, checksums). It is committed with the version it describes
/// (table `s3_objects`, keyed by path, valid while the file there has the same SHA-256),
/// removed with the file, and moved with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3ObjectRow {
    /// Without quotes: an MD5 hex, or `md5-of-part-md5s-N`.
    pub etag: String,
    /// The attributes as JSON (`s3_meta::ObjectAttrs`).
    pub attrs: String,
}

/// What a put did.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// The file as written: its new current version.
    pub meta: FileMeta,
    /// True when the put made a new file (version 1); false when it replaced an existing one.
    pub created: bool,
    /// A blob whose reference count this change dropped to zero: a collection candidate.
    pub released: Option<String>,
    /// Further blobs released: old versions pushed out of the retention window.
    pub released_more: Vec<String>,
}

/// What a single-file change (delete, move, copy, version or trash restore) did.
#[derive(Debug, Clone)]
pub struct ChangeOutcome {
    /// The file after the change (for a delete: as it was when deleted; for a copy: the new
    /// file).
    pub meta: FileMeta,
    /// Blobs whose reference count this change dropped to zero.
    pub released: Vec<String>,
}

/// Why a metadata operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetadataError {
    /// No such file (or version, trash entry, token, commit) as the caller named.
    #[error("not found")]
    NotFound,
    /// The target path already holds a file and overwriting was not asked, or the new row's key
    /// (a token id) is taken.
    #[error("target already exists")]
    AlreadyExists,
    /// The operation's [`Precondition`] (or `If-Match`) does not hold for the current file.
    #[error("precondition failed")]
    PreconditionFailed,
    /// The file is no longer at the path the caller locked; the caller retries.
    #[error("file changed path concurrently")]
    PathChanged,
    /// The store did not answer within its deadline (pool exhausted, database busy).
    #[error("metadata store busy")]
    Busy,
    /// The database's disk is full (SQLite `SQLITE_FULL`; PostgreSQL `disk_full`,
    /// `insufficient_resources`).
    #[error("metadata store is out of space")]
    StorageFull,
    /// The database cannot be used as is: its schema is newer than this binary, a migration
    /// failed, or the metadata URL is invalid; the text says which.
    #[error("metadata schema: {0}")]
    Schema(String),
    /// A finish's `expect` does not match the staged set (the differences).
    #[error("the staged files differ from `expect`: {}", .0.join("; "))]
    CommitMismatch(Vec<String>),
    /// The commit's ttl passed before its finish.
    #[error("the commit expired")]
    CommitExpired,
    /// The commit was finished (or is being finished): nothing more can be staged or aborted.
    #[error("the commit is already finished")]
    CommitClosed,
    /// More files than `commit_max_files`.
    #[error("a commit holds at most {0} files")]
    CommitTooLarge(usize),
    /// Another holder's lease covers the path (until `expires_at_ms`).
    #[error("the path is leased by another holder")]
    LeaseHeld {
        /// When the other holder's lease ends, in milliseconds since the epoch.
        expires_at_ms: i64,
    },
    /// The lease lapsed (or was taken over) before this renewal.
    #[error("the lease expired")]
    LeaseExpired,
    /// The write's fence is older than the path's current one.
    #[error("the write's fence is stale")]
    FenceStale,
    /// A live lease covers the path and the write carries no fence.
    #[error("the path is leased; the write needs the lease's fence")]
    Locked,
    /// Any other database failure, or a row this binary cannot read: the underlying error's text.
    #[error("metadata store error: {0}")]
    Backend(String),
}

/// One inconsistency between the files table, the blob reference counts and the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProblem {
    /// `log_gap`, `log_mismatch`, `log_missing`, `refcount`, `version_orphan`, `trash_live`.
    pub kind: String,
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) detail: String,
}

/// What [`MetadataStore::audit`] found, read from one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataAudit {
    /// Live files (not old versions, not trash entries).
    pub files: u64,
    pub(crate) events: u64,
    /// The lowest retained event seq (`None`: the log is empty).
    pub oldest_seq: Option<i64>,
    /// The highest committed event seq (0 when nothing was ever logged).
    pub latest_seq: i64,
    /// Old versions kept (each holds a blob reference).
    #[serde(default)]
    pub versions: u64,
    /// Trash entries (each holds a blob reference).
    #[serde(default)]
    pub trash: u64,
    /// The inconsistencies found, at most [`AUDIT_LIMIT`] of each kind; empty when consistent.
    pub problems: Vec<AuditProblem>,
}

/// Most problems of one kind an audit lists (the count of the rest is in the last entry).
pub const AUDIT_LIMIT: usize = 1000;

/// An API token as stored: the secret itself never is, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (also the second part of the token string).
    pub id: String,
    /// Free text naming the token, given at creation (at most 200 characters).
    pub label: String,
    /// Hex SHA-256 of the secret part.
    #[serde(skip_serializing)]
    pub secret_hash: String,
    /// Comma-separated: `read`, `write`, `admin`.
    pub scopes: String,
    /// Path prefix the token is limited to, ending in `/` (empty: everything).
    pub prefix: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Expiry, in milliseconds since the epoch: valid while now is before it (`None`: never
    /// expires).
    pub expires_at: Option<i64>,
    /// When it was revoked, in milliseconds since the epoch (`None`: not revoked).
    pub revoked_at: Option<i64>,
}

/// A lock on one blob that other replicas honour, held until dropped (see
/// [`MetadataStore::fence_blob`]). Stores without replicas hand out an empty one.
pub struct BlobFence {
    /// Dropping it releases the lock (the holder task ends its transaction).
    _release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl BlobFence {
    /// A fence that holds nothing: one process's lock manager is enough.
    pub fn local() -> Self {
        BlobFence { _release: None }
    }

    pub(crate) fn held(release: tokio::sync::oneshot::Sender<()>) -> Self {
        BlobFence {
            _release: Some(release),
        }
    }
}

impl std::fmt::Debug for BlobFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self._release.is_some() {
            "BlobFence(held)"
        } else {
            "BlobFence(local)"
        })
    }
}

/// The metadata engine. Implementations: SQLite (default); PostgreSQL (scale-out).
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The live file with id `id` (`None`: no such file, or it is in the trash).
    async fn get_by_id(&self, id: &str) -> Result<Option<FileMeta>, MetadataError>;
    /// The live file at `path` (`None`: nothing there).
    async fn get_by_path(&self, path: &str) -> Result<Option<FileMeta>, MetadataError>;

    /// Creates or replaces the file at `req.path` (same id, version + 1 on replace).
    async fn put(&self, req: PutRequest) -> Result<PutOutcome, MetadataError>;

    /// Every put of `reqs`, in order, in ONE transaction: all commit or none does (any
    /// precondition failure or error rolls back them all), and their events take consecutive
    /// seqs. Outcomes in request order. A later put of the batch sees the earlier ones (two
    /// puts of one path: versions N+1, N+2).
    async fn put_many(&self, reqs: Vec<PutRequest>) -> Result<Vec<PutOutcome>, MetadataError>;

    /// Deletes file `id`, which the caller locked at `expected_path`.
    async fn delete(
        &self,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError>;

    /// Moves file `id` from `expected_path` to `to`; with `overwrite`, a file at `to` is
    /// deleted first (its own `deleted` event).
    async fn rename(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError>;

    /// Copies file `id` (at `expected_path`) to a new file at `to`, sharing the blob.
    async fn copy(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError>;

    /// [`copy`](Self::copy), with `s3` as the new file's S3 record, in the same transaction.
    async fn copy_with_s3(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
        s3: Option<S3ObjectRow>,
    ) -> Result<ChangeOutcome, MetadataError>;

    /// Files with `path > after` (or `>= from` when `inclusive`), by path, at most `limit`.
    async fn scan(
        &self,
        start: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError>;

    /// One page of the folders and files directly in `q.prefix`, sorted and filtered (issue
    /// 22; the rules are in `rules::listing`).
    async fn list_level(&self, q: &LevelQuery<'_>) -> Result<LevelPage, MetadataError>;

    /// Number of versions referencing a blob (0 when unknown).
    async fn blob_refcount(&self, sha256: &str) -> Result<i64, MetadataError>;
    /// Removes the blob's row if nothing references it; true when removed.
    async fn forget_blob(&self, sha256: &str) -> Result<bool, MetadataError>;
    /// Blobs with no reference left (collection after a crash between commit and collection).
    async fn unreferenced_blobs(&self, limit: usize) -> Result<Vec<String>, MetadataError>;

    /// Events with `seq > since`, in order, at most `limit`.
    async fn events_after(&self, since: i64, limit: usize) -> Result<Vec<Event>, MetadataError>;
    /// Events with `since < seq <= through` whose path or source path starts with `prefix`
    /// (empty: all), in order, at most `limit`: one query whose work is bounded by the seq
    /// window, filtered in the database.
    async fn events_matching(
        &self,
        since: i64,
        through: i64,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<Event>, MetadataError>;
    /// The highest committed seq (0 when the log is empty).
    async fn latest_seq(&self) -> Result<i64, MetadataError>;
    /// The lowest retained seq, if any.
    async fn oldest_seq(&self) -> Result<Option<i64>, MetadataError>;
    /// Deletes events older than `older_than_ms` or beyond the newest `keep_last`; returns how
    /// many. The latest seq is unaffected (seqs are never reused).
    async fn prune_events(&self, older_than_ms: i64, keep_last: i64) -> Result<u64, MetadataError>;

    /// Checks, in one read snapshot (safe while the server runs): the retained event log has
    /// no gap; the last event of every file id agrees with the files table (path, version,
    /// size, SHA-256; a deleted id has no file); while the log is complete, every file has an
    /// event; every blob's reference count equals the files that use it.
    async fn audit(&self) -> Result<MetadataAudit, MetadataError>;

    /// Stores a new token (`AlreadyExists` if its id is taken).
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), MetadataError>;
    /// Every token, revoked ones included, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, MetadataError>;
    /// Marks a token revoked; false when there is no such active token.
    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, MetadataError>;
    /// The server secret `name`, stored as `fresh` by the first caller (all replicas share it).
    async fn server_secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, MetadataError>;

    /// A lock on blob `sha256` across replicas: shared while a commit uploads it and records
    /// a reference, exclusive while collection checks and deletes it. Taken after the
    /// process's own lock set, with the metadata deadline (`Busy` past it).
    async fn fence_blob(&self, sha256: &str, exclusive: bool) -> Result<BlobFence, MetadataError> {
        let _ = (sha256, exclusive);
        Ok(BlobFence::local())
    }

    /// The version and trash retention applied by later writes (default: none, see
    /// [`RetentionPolicy::default`]).
    fn set_retention(&self, policy: RetentionPolicy);

    /// Deletes file `id` (locked at `expected_path`) for good, bypassing the trash: its row,
    /// its versions, their blob references.
    async fn delete_permanently(
        &self,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError>;

    /// Old versions of file `id` (not the current one) numbered below `before` (`None`: all),
    /// newest first, at most `limit`. Rows carry an empty path.
    async fn versions(
        &self,
        id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError>;

    /// Makes old version `version` of file `id` (locked at `expected_path`) current again as
    /// a new version, sharing its blob; a `restored` event with `restored_from`.
    async fn restore_version(
        &self,
        id: &str,
        expected_path: &str,
        version: i64,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError>;

    /// Every file under `prefix` to the trash (or, when `permanent` or trash is off, gone for
    /// good) in one transaction, each entry with `batch_id`. `expected_ids` are the files the
    /// caller locked; `PathChanged` when the tree holds others now.
    async fn delete_tree(
        &self,
        prefix: &str,
        expected_ids: &[String],
        batch_id: &str,
        permanent: bool,
    ) -> Result<BatchOutcome, MetadataError>;

    /// Trash entries under `prefix` not expired at `now_ms`, by trash id after `after`, at most
    /// `limit`.
    async fn trash_entries(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<TrashEntry>, MetadataError>;
    /// One trash entry, expired or not.
    async fn trash_entry(&self, trash_id: &str) -> Result<Option<TrashEntry>, MetadataError>;
    /// The entries of one recursive delete.
    async fn trash_batch(&self, batch_id: &str) -> Result<Vec<TrashEntry>, MetadataError>;
    /// Puts a trashed file back at its old path or `to`, same id, same versions; a file there
    /// goes to the trash when `overwrite`, else `AlreadyExists`.
    async fn restore_trash(
        &self,
        trash_id: &str,
        to: Option<&str>,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError>;
    /// Restores every entry of a batch at its old path, in one transaction.
    async fn restore_batch(&self, batch_id: &str) -> Result<BatchOutcome, MetadataError>;
    /// Removes a trash entry and its file's versions for good; the released blobs.
    async fn purge_trash(&self, trash_id: &str) -> Result<Vec<String>, MetadataError>;
    /// Purges at most `limit` entries expired at `now_ms`, in one transaction: (how many,
    /// released blobs).
    async fn expire_trash(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(usize, Vec<String>), MetadataError>;
    /// Trash entries, their total size and the old versions kept, for the retention metrics.
    async fn retention_stats(&self) -> Result<RetentionStats, MetadataError>;

    /// A commit or lease operation (issue 21, [`commits::AtomicOp`]): one write transaction.
    async fn atomic(&self, op: commits::AtomicOp) -> Result<commits::AtomicDone, MetadataError>;

    /// A trivial query, for readiness.
    async fn ping(&self) -> Result<(), MetadataError>;
    /// Closes connections (graceful shutdown).
    async fn close(&self);
}

/// Current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}
