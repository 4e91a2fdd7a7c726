//! The metadata rules, stated once for every backend.
//!
//! A backend supplies a [`Tx`]: the row operations of one open write transaction (read a
//! file, write its row, count a blob reference, append an event). Everything a write means
//! is here, in [`apply`]: its precondition, the version it gets, the event it logs, the
//! blob references it takes and drops, and what it releases. Likewise a backend supplies an
//! [`AuditSource`] (the audit's queries, in one read snapshot) and [`audit`] decides what
//! counts as a problem and how it is worded.
//!
//! Versions and the trash: every current file row, every old version row and every trash
//! entry holds one reference to its blob. Replacing a file turns its current row into a
//! version row (the reference moves with it) and drops the versions pushed out of the
//! retention window; deleting it moves the row to the trash (again the reference moves),
//! and purging or expiring the entry drops it with the file's versions.
//!
//! Neither layer commits: the backend opens the transaction, calls [`apply`], and commits
//! on `Ok` or rolls back on `Err`, so a failing write (or any put of a `put_many`) leaves
//! no row, event or reference count behind.

use async_trait::async_trait;

use super::{
    now_ms, BatchOutcome, ChangeOutcome, EventKind, EventNote, FileMeta, MetadataError,
    Precondition, PutOutcome, PutRequest, RetentionPolicy, S3ObjectRow, TrashEntry,
};

/// Commits and leases (issue 21): the finish, staging, expiry, leases, and the fence check
/// every write makes.
mod commits;
use commits::FenceGuard;

/// Level listings (issue 22): sorted, filtered pages of one folder.
pub(crate) mod listing;

/// The audit: what counts as a problem in the metadata and how it is worded.
mod audit;
pub(crate) use audit::{audit, AuditSource, LastEventMismatch};

/// What each kind of write does to the rows: [`Writer`] and its helpers.
mod writer;
use writer::{new_file, purge_entry, release, Writer};

/// Row operations inside one open write transaction.
#[async_trait]
pub(crate) trait Tx: super::commits::CommitRows + Send {
    async fn file_by_id(&mut self, id: &str) -> Result<Option<FileMeta>, MetadataError>;
    async fn file_by_path(&mut self, path: &str) -> Result<Option<FileMeta>, MetadataError>;
    /// Inserts a new row (`created_at` = `modified_at` = `meta.modified_ms`).
    async fn insert_file(&mut self, meta: &FileMeta) -> Result<(), MetadataError>;
    /// Writes `meta`'s content columns (size, hash, version, type, mtime) to row `meta.id`.
    async fn update_content(&mut self, meta: &FileMeta) -> Result<(), MetadataError>;
    async fn update_path(&mut self, id: &str, path: &str) -> Result<(), MetadataError>;
    async fn delete_file(&mut self, id: &str) -> Result<(), MetadataError>;
    /// One more reference to the blob (creating its row at 1).
    async fn add_blob_ref(&mut self, sha256: &str, size: u64) -> Result<(), MetadataError>;
    /// One reference less; the count left, `None` when the blob has no row.
    async fn drop_blob_ref(&mut self, sha256: &str) -> Result<Option<i64>, MetadataError>;
    /// Appends an event with the next seq (gapless, in commit order); returns the seq.
    async fn append_event(
        &mut self,
        kind: EventKind,
        meta: &FileMeta,
        from_path: Option<&str>,
        note: &EventNote,
        at: i64,
    ) -> Result<i64, MetadataError>;
    /// Stores `meta` (id, version, size, hash, type, mtime) as an old version of file `meta.id`.
    async fn insert_version(&mut self, meta: &FileMeta) -> Result<(), MetadataError>;
    /// Old version `version` of file `id` (path empty).
    async fn version_row(
        &mut self,
        id: &str,
        version: i64,
    ) -> Result<Option<FileMeta>, MetadataError>;
    /// Old versions of `id`, newest first, after skipping the newest `skip`: (version, hash).
    async fn versions_beyond(
        &mut self,
        id: &str,
        skip: u64,
    ) -> Result<Vec<(i64, String)>, MetadataError>;
    async fn delete_version(&mut self, id: &str, version: i64) -> Result<(), MetadataError>;
    /// Copies file row `id` into the trash as `entry` (its `file` is the row as read).
    async fn trash_file(&mut self, entry: &TrashEntry) -> Result<(), MetadataError>;
    /// Copies trash entry `trash_id` back into the files table at `path`.
    async fn untrash_file(&mut self, trash_id: &str, path: &str) -> Result<(), MetadataError>;
    async fn trash_by_id(&mut self, trash_id: &str) -> Result<Option<TrashEntry>, MetadataError>;
    async fn trash_by_batch(&mut self, batch_id: &str) -> Result<Vec<TrashEntry>, MetadataError>;
    /// Entries with `expires_at <= now`, oldest first, at most `limit`.
    async fn expired_trash(
        &mut self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<TrashEntry>, MetadataError>;
    async fn delete_trash(&mut self, trash_id: &str) -> Result<(), MetadataError>;
    /// Files whose path starts with `prefix`, in path order.
    async fn files_under(&mut self, prefix: &str) -> Result<Vec<FileMeta>, MetadataError>;
    /// Writes the S3 record of the file at `path` (content `sha256`), replacing any.
    async fn put_s3_object(
        &mut self,
        path: &str,
        sha256: &str,
        row: &S3ObjectRow,
    ) -> Result<(), MetadataError>;
    /// Removes the S3 record at `path`, if any.
    async fn forget_s3_object(&mut self, path: &str) -> Result<(), MetadataError>;
    /// Moves the S3 record at `from` to `to` (replacing one there), if any.
    async fn move_s3_object(&mut self, from: &str, to: &str) -> Result<(), MetadataError>;
}

/// One write, as a backend queues or retries it.
#[derive(Debug, Clone)]
pub(crate) enum WriteOp {
    Put(PutRequest),
    PutMany(Vec<PutRequest>),
    Delete {
        id: String,
        expected_path: String,
        precondition: Precondition,
        /// Bypass the trash.
        permanent: bool,
    },
    Rename(Transfer),
    Copy(Transfer),
    RestoreVersion {
        id: String,
        expected_path: String,
        version: i64,
        precondition: Precondition,
    },
    DeleteTree {
        prefix: String,
        expected_ids: Vec<String>,
        batch_id: String,
        permanent: bool,
    },
    RestoreTrash {
        trash_id: String,
        to: Option<String>,
        overwrite: bool,
    },
    RestoreBatch {
        batch_id: String,
    },
    PurgeTrash {
        trash_id: String,
    },
    ExpireTrash {
        now: i64,
        limit: i64,
    },
    /// A commit or lease operation.
    Atomic(super::commits::AtomicOp),
    /// `op` as a request carrying `X-Vaultfs-Fence: fence` asked for it.
    Fenced {
        fence: i64,
        op: Box<WriteOp>,
    },
}

impl WriteOp {
    /// This write with the running request's fence (see [`super::commits::FENCE`]); a
    /// backend calls it where the write is queued, in the request's task.
    pub(crate) fn fenced(self) -> WriteOp {
        match super::commits::current_fence() {
            Some(fence) if !matches!(self, WriteOp::Fenced { .. }) => WriteOp::Fenced {
                fence,
                op: Box::new(self),
            },
            _ => self,
        }
    }
}

/// A move or copy of file `id`, locked at `expected_path`, to `to`.
#[derive(Debug, Clone)]
pub(crate) struct Transfer {
    pub(crate) id: String,
    pub(crate) expected_path: String,
    pub(crate) to: String,
    pub(crate) overwrite: bool,
    /// A copy's S3 record (a move takes the source's along).
    pub(crate) s3: Option<S3ObjectRow>,
}

impl Transfer {
    pub(crate) fn new(id: &str, expected_path: &str, to: &str, overwrite: bool) -> Self {
        Transfer {
            id: id.to_string(),
            expected_path: expected_path.to_string(),
            to: to.to_string(),
            overwrite,
            s3: None,
        }
    }
}

/// What a [`WriteOp`] produced.
#[derive(Debug)]
pub(crate) enum WriteDone {
    Put(PutOutcome),
    Many(Vec<PutOutcome>),
    Change(ChangeOutcome),
    Batch(BatchOutcome),
    /// Blobs released (a purge), with how many trash entries went (an expiry).
    Released(usize, Vec<String>),
    Atomic(super::commits::AtomicDone),
}

impl WriteDone {
    pub(crate) fn into_put(self) -> Result<PutOutcome, MetadataError> {
        match self {
            WriteDone::Put(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub(crate) fn into_many(self) -> Result<Vec<PutOutcome>, MetadataError> {
        match self {
            WriteDone::Many(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub(crate) fn into_change(self) -> Result<ChangeOutcome, MetadataError> {
        match self {
            WriteDone::Change(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub(crate) fn into_batch(self) -> Result<BatchOutcome, MetadataError> {
        match self {
            WriteDone::Batch(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub(crate) fn into_atomic(self) -> Result<super::commits::AtomicDone, MetadataError> {
        match self {
            WriteDone::Atomic(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub(crate) fn into_released(self) -> Result<(usize, Vec<String>), MetadataError> {
        match self {
            WriteDone::Released(n, r) => Ok((n, r)),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> MetadataError {
    MetadataError::Backend("a write answered with the wrong outcome kind".into())
}

/// Applies `op` inside the caller's open transaction, under retention `policy`. On `Err`
/// the caller must roll back: rows may already have been written.
pub(crate) async fn apply<T: Tx + ?Sized>(
    tx: &mut T,
    op: &WriteOp,
    policy: &RetentionPolicy,
) -> Result<WriteDone, MetadataError> {
    let now = now_ms();
    let (fence, op) = match op {
        WriteOp::Fenced { fence, op } => (Some(*fence), &**op),
        op => (None, op),
    };
    let guard = FenceGuard::load(tx, fence, now).await?;
    let w = Writer { policy, now, guard };
    Ok(match op {
        WriteOp::Fenced { .. } => return Err(unexpected()),
        WriteOp::Atomic(a) => WriteDone::Atomic(w.atomic(tx, a).await?),
        WriteOp::Put(req) => WriteDone::Put(w.put(tx, req).await?),
        WriteOp::PutMany(reqs) => {
            let mut outcomes = Vec::with_capacity(reqs.len());
            for req in reqs {
                outcomes.push(w.put(tx, req).await?);
            }
            WriteDone::Many(outcomes)
        }
        WriteOp::Delete {
            id,
            expected_path,
            precondition,
            permanent,
        } => WriteDone::Change(
            w.delete(tx, id, expected_path, precondition, *permanent)
                .await?,
        ),
        WriteOp::Rename(t) => WriteDone::Change(w.rename(tx, t).await?),
        WriteOp::Copy(t) => WriteDone::Change(w.copy(tx, t).await?),
        WriteOp::RestoreVersion {
            id,
            expected_path,
            version,
            precondition,
        } => WriteDone::Change(
            w.restore_version(tx, id, expected_path, *version, precondition)
                .await?,
        ),
        WriteOp::DeleteTree {
            prefix,
            expected_ids,
            batch_id,
            permanent,
        } => WriteDone::Batch(
            w.delete_tree(tx, prefix, expected_ids, batch_id, *permanent)
                .await?,
        ),
        WriteOp::RestoreTrash {
            trash_id,
            to,
            overwrite,
        } => {
            let mut released = Vec::new();
            let meta = w
                .restore_trash(tx, trash_id, to.as_deref(), *overwrite, &mut released)
                .await?;
            WriteDone::Change(ChangeOutcome { meta, released })
        }
        WriteOp::RestoreBatch { batch_id } => {
            WriteDone::Batch(w.restore_batch(tx, batch_id).await?)
        }
        WriteOp::PurgeTrash { trash_id } => {
            let entry = tx
                .trash_by_id(trash_id)
                .await?
                .ok_or(MetadataError::NotFound)?;
            let mut released = Vec::new();
            purge_entry(tx, &entry, &mut released).await?;
            WriteDone::Released(1, released)
        }
        WriteOp::ExpireTrash { now, limit } => {
            let expired = tx.expired_trash(*now, *limit).await?;
            let mut released = Vec::new();
            for entry in &expired {
                purge_entry(tx, entry, &mut released).await?;
            }
            WriteDone::Released(expired.len(), released)
        }
    })
}

/// The smallest string above every string that starts with `prefix` (`None`: no bound,
/// `prefix` is empty or all `char::MAX`), for `path >= prefix AND path < upper` range scans
/// in byte (code point) order.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn prefix_upper_bounds() {
        assert_eq!(prefix_upper_bound("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_upper_bound("zzz/").as_deref(), Some("zzz0"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        for (p, s) in [("a/", "a/b"), ("a/", "a/\u{10FFFF}"), ("é/", "é/x")] {
            let upper = prefix_upper_bound(p).unwrap();
            assert!(s >= p && s < upper.as_str(), "{s} in [{p}, {upper})");
        }
        assert!("a0" >= prefix_upper_bound("a/").unwrap().as_str());
    }
}
