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
    now_ms, rfc3339, AuditProblem, BatchOutcome, ChangeOutcome, EventKind, EventNote, FileMeta,
    MetadataAudit, MetadataError, Precondition, PutOutcome, PutRequest, RetentionPolicy,
    S3ObjectRow, TrashEntry, AUDIT_LIMIT,
};
use crate::services::storage::BlobRef;

/// Commits and leases (issue 21): the finish, staging, expiry, leases, and the fence check
/// every write makes.
mod commits;
use commits::FenceGuard;

/// Level listings (issue 22): sorted, filtered pages of one folder.
pub(crate) mod listing;

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

/// One write's context: the retention it applies and its timestamp.
struct Writer<'p> {
    policy: &'p RetentionPolicy,
    now: i64,
    /// The leases over the paths this write touches, and the fence it carries.
    guard: FenceGuard,
}

impl Writer<'_> {
    /// Creates or replaces the file at `req.path`: version 1 and a `created` event, or the
    /// same id with the next version and an `updated` event. The new blob gains a reference
    /// first, so replacing a file with its own content never drops the count to zero.
    async fn put<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        req: &PutRequest,
    ) -> Result<PutOutcome, MetadataError> {
        self.guard.check(&req.path)?;
        let existing = tx.file_by_path(&req.path).await?;
        check_put_precondition(&req.precondition, existing.as_ref())?;
        tx.add_blob_ref(&req.blob.sha256, req.blob.size).await?;
        // A native write (no record) costs no statement: a record of other content is ignored
        // by its readers (records are keyed by path and SHA-256), and one of the same content
        // still describes it.
        if let Some(row) = &req.s3 {
            tx.put_s3_object(&req.path, &req.blob.sha256, row).await?;
        }
        let note = EventNote::default();
        Ok(match existing {
            Some(cur) => {
                let (meta, released) = self
                    .replace_content(tx, cur, &req.blob, &req.content_type)
                    .await?;
                tx.append_event(EventKind::Updated, &meta, None, &note, self.now)
                    .await?;
                let mut released = released.into_iter();
                PutOutcome {
                    meta,
                    created: false,
                    released: released.next(),
                    released_more: released.collect(),
                }
            }
            None => {
                let meta = new_file(&req.path, &req.blob, &req.content_type, self.now);
                tx.insert_file(&meta).await?;
                tx.append_event(EventKind::Created, &meta, None, &note, self.now)
                    .await?;
                PutOutcome {
                    meta,
                    created: true,
                    released: None,
                    released_more: Vec::new(),
                }
            }
        })
    }

    /// Gives `cur` the content `blob` (whose new reference the caller took) as its next
    /// version. The current row becomes an old version, keeping its reference, and versions
    /// pushed out of the window go with theirs; without a window for old versions, the
    /// current content's reference is simply dropped. Returns the new row and the released.
    async fn replace_content<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        cur: FileMeta,
        blob: &BlobRef,
        content_type: &str,
    ) -> Result<(FileMeta, Vec<String>), MetadataError> {
        let keep_old = self.policy.versions_keep_for(&cur.path).old_versions();
        let mut released = Vec::new();
        if keep_old == Some(0) {
            released.extend(release(tx, &cur.sha256).await?);
        } else {
            tx.insert_version(&cur).await?;
        }
        if let Some(keep) = keep_old {
            for (version, sha) in tx.versions_beyond(&cur.id, keep).await? {
                tx.delete_version(&cur.id, version).await?;
                released.extend(release(tx, &sha).await?);
            }
        }
        let meta = FileMeta {
            size: blob.size,
            sha256: blob.sha256.clone(),
            version: cur.version + 1,
            content_type: content_type.to_string(),
            modified_at: rfc3339(self.now),
            modified_ms: self.now,
            ..cur
        };
        tx.update_content(&meta).await?;
        // Replacing with content an old version shares cannot free it: the new row holds it.
        released.retain(|h| *h != meta.sha256);
        Ok((meta, released))
    }

    async fn delete<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
        permanent: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        let cur = load_locked(tx, id, expected_path).await?;
        if let Precondition::MustMatch(tags) = precondition {
            if !tags.matches(&cur.sha256) {
                return Err(MetadataError::PreconditionFailed);
            }
        }
        let mut released = Vec::new();
        self.delete_row(tx, &cur, None, permanent, &mut released)
            .await?;
        Ok(ChangeOutcome {
            meta: cur,
            released,
        })
    }

    /// A move onto its own path is a no-op that logs nothing.
    async fn rename<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        t: &Transfer,
    ) -> Result<ChangeOutcome, MetadataError> {
        let (cur, to) = (load_locked(tx, &t.id, &t.expected_path).await?, &t.to);
        self.guard.check(&cur.path)?;
        self.guard.check(to)?;
        if cur.path == *to {
            return Ok(ChangeOutcome {
                meta: cur,
                released: Vec::new(),
            });
        }
        let released = self.clear_target(tx, t).await?;
        tx.update_path(&t.id, to).await?;
        tx.move_s3_object(&cur.path, to).await?;
        let from = cur.path.clone();
        let meta = FileMeta {
            path: to.to_string(),
            ..cur
        };
        let note = EventNote::default();
        tx.append_event(EventKind::Moved, &meta, Some(&from), &note, self.now)
            .await?;
        Ok(ChangeOutcome { meta, released })
    }

    /// A copy is a new file (new id, version 1) sharing the source's blob.
    async fn copy<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        t: &Transfer,
    ) -> Result<ChangeOutcome, MetadataError> {
        let src = load_locked(tx, &t.id, &t.expected_path).await?;
        self.guard.check(&t.to)?;
        if src.path == t.to {
            return Err(MetadataError::AlreadyExists);
        }
        let mut released = self.clear_target(tx, t).await?;
        let blob = BlobRef {
            sha256: src.sha256.clone(),
            size: src.size,
        };
        let meta = new_file(&t.to, &blob, &src.content_type, self.now);
        tx.add_blob_ref(&meta.sha256, meta.size).await?;
        tx.insert_file(&meta).await?;
        match &t.s3 {
            Some(row) => tx.put_s3_object(&t.to, &meta.sha256, row).await?,
            None => tx.forget_s3_object(&t.to).await?,
        }
        let note = EventNote::default();
        tx.append_event(EventKind::Copied, &meta, Some(&src.path), &note, self.now)
            .await?;
        // Releasing the target's blob cannot free the source's: the copy holds a reference.
        released.retain(|h| *h != meta.sha256);
        Ok(ChangeOutcome { meta, released })
    }

    /// Makes old version `version` current again as the next version, by reference.
    async fn restore_version<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        id: &str,
        expected_path: &str,
        version: i64,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError> {
        let cur = load_locked(tx, id, expected_path).await?;
        self.guard.check(&cur.path)?;
        check_put_precondition(precondition, Some(&cur))?;
        let src = if version == cur.version {
            cur.clone()
        } else {
            tx.version_row(id, version)
                .await?
                .ok_or(MetadataError::NotFound)?
        };
        let blob = BlobRef {
            sha256: src.sha256.clone(),
            size: src.size,
        };
        tx.add_blob_ref(&blob.sha256, blob.size).await?;
        let (meta, released) = self
            .replace_content(tx, cur, &blob, &src.content_type)
            .await?;
        let note = EventNote {
            trash_id: None,
            restored_from: Some(version),
        };
        tx.append_event(EventKind::Restored, &meta, None, &note, self.now)
            .await?;
        Ok(ChangeOutcome { meta, released })
    }

    /// Every file under `prefix`, to the trash with one batch id (or for good).
    async fn delete_tree<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        prefix: &str,
        expected_ids: &[String],
        batch_id: &str,
        permanent: bool,
    ) -> Result<BatchOutcome, MetadataError> {
        let files = tx.files_under(prefix).await?;
        if files.is_empty() {
            return Err(MetadataError::NotFound);
        }
        let mut ids: Vec<&str> = files.iter().map(|f| f.id.as_str()).collect();
        let mut expected: Vec<&str> = expected_ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        expected.sort_unstable();
        if ids != expected {
            // Files came or went since the caller locked the tree: it lists and locks again.
            return Err(MetadataError::PathChanged);
        }
        let mut released = Vec::new();
        for file in &files {
            self.delete_row(tx, file, Some(batch_id), permanent, &mut released)
                .await?;
        }
        Ok(BatchOutcome { files, released })
    }

    /// Puts trash entry `trash_id` back (at `to` or its old path), same id and versions, no
    /// new version; an occupant of the target goes to the trash when `overwrite`.
    async fn restore_trash<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        trash_id: &str,
        to: Option<&str>,
        overwrite: bool,
        released: &mut Vec<String>,
    ) -> Result<FileMeta, MetadataError> {
        let entry = tx
            .trash_by_id(trash_id)
            .await?
            .filter(|e| e.expires_at_ms > self.now)
            .ok_or(MetadataError::NotFound)?;
        let target = to.unwrap_or(&entry.file.path);
        self.guard.check(target)?;
        if let Some(occupant) = tx.file_by_path(target).await? {
            if !overwrite {
                return Err(MetadataError::AlreadyExists);
            }
            self.delete_row(tx, &occupant, None, false, released)
                .await?;
        }
        tx.untrash_file(trash_id, target).await?;
        tx.delete_trash(trash_id).await?;
        let meta = FileMeta {
            path: target.to_string(),
            ..entry.file
        };
        tx.append_event(
            EventKind::Restored,
            &meta,
            None,
            &EventNote::default(),
            self.now,
        )
        .await?;
        Ok(meta)
    }

    /// Every unexpired entry of a batch, back at its old path; any taken path fails it all.
    async fn restore_batch<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        batch_id: &str,
    ) -> Result<BatchOutcome, MetadataError> {
        let entries: Vec<TrashEntry> = tx
            .trash_by_batch(batch_id)
            .await?
            .into_iter()
            .filter(|e| e.expires_at_ms > self.now)
            .collect();
        if entries.is_empty() {
            return Err(MetadataError::NotFound);
        }
        let mut released = Vec::new();
        let mut files = Vec::with_capacity(entries.len());
        for entry in &entries {
            files.push(
                self.restore_trash(tx, &entry.trash_id, None, false, &mut released)
                    .await?,
            );
        }
        Ok(BatchOutcome { files, released })
    }

    /// Makes `to` free for a move or copy: a file there is deleted (its own `deleted` event)
    /// when `overwrite`, else [`MetadataError::AlreadyExists`].
    /// Returns the blobs the deletion released.
    async fn clear_target<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        t: &Transfer,
    ) -> Result<Vec<String>, MetadataError> {
        let mut released = Vec::new();
        if let Some(target) = tx.file_by_path(&t.to).await? {
            if !t.overwrite {
                return Err(MetadataError::AlreadyExists);
            }
            self.delete_row(tx, &target, None, false, &mut released)
                .await?;
        }
        Ok(released)
    }

    /// Deletes `victim` with a `deleted` event: to the trash (its row and blob reference
    /// move to a trash entry, its versions stay) when the policy keeps a trash for its path
    /// and the delete is not `permanent`; otherwise for good, with its versions.
    async fn delete_row<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        victim: &FileMeta,
        batch_id: Option<&str>,
        permanent: bool,
        released: &mut Vec<String>,
    ) -> Result<(), MetadataError> {
        self.guard.check(&victim.path)?;
        let keep = if permanent {
            None
        } else {
            self.policy.trash_retention_for(&victim.path)
        };
        tx.forget_s3_object(&victim.path).await?;
        let note = match keep {
            Some(ms) => {
                let entry = TrashEntry {
                    trash_id: new_trash_id(self.now),
                    file: victim.clone(),
                    deleted_at_ms: self.now,
                    expires_at_ms: self.now.saturating_add(ms),
                    batch_id: batch_id.map(str::to_string),
                };
                tx.trash_file(&entry).await?;
                tx.delete_file(&victim.id).await?;
                EventNote {
                    trash_id: Some(entry.trash_id),
                    restored_from: None,
                }
            }
            None => {
                tx.delete_file(&victim.id).await?;
                released.extend(release(tx, &victim.sha256).await?);
                drop_versions(tx, &victim.id, released).await?;
                EventNote::default()
            }
        };
        tx.append_event(EventKind::Deleted, victim, None, &note, self.now)
            .await?;
        Ok(())
    }
}

/// Removes a trash entry for good, with its file's versions and their references.
async fn purge_entry<T: Tx + ?Sized>(
    tx: &mut T,
    entry: &TrashEntry,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    tx.delete_trash(&entry.trash_id).await?;
    released.extend(release(tx, &entry.file.sha256).await?);
    drop_versions(tx, &entry.file.id, released).await
}

/// Drops every old version of file `id` and its reference.
async fn drop_versions<T: Tx + ?Sized>(
    tx: &mut T,
    id: &str,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    for (version, sha) in tx.versions_beyond(id, 0).await? {
        tx.delete_version(id, version).await?;
        released.extend(release(tx, &sha).await?);
    }
    Ok(())
}

/// A trash id: 32 hex digits, the first 12 the deletion time, so ids sort by age.
fn new_trash_id(now: i64) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{:012x}{}", now.max(0), &random[..20])
}

/// File `id`, which the caller locked at `expected_path`; [`MetadataError::PathChanged`] when
/// a concurrent move got there first (the caller re-reads and retries).
async fn load_locked<T: Tx + ?Sized>(
    tx: &mut T,
    id: &str,
    expected_path: &str,
) -> Result<FileMeta, MetadataError> {
    let cur = tx.file_by_id(id).await?.ok_or(MetadataError::NotFound)?;
    if cur.path != expected_path {
        return Err(MetadataError::PathChanged);
    }
    Ok(cur)
}

/// Drops one reference; the hash when none is left (a collection candidate).
async fn release<T: Tx + ?Sized>(
    tx: &mut T,
    sha256: &str,
) -> Result<Option<String>, MetadataError> {
    Ok(match tx.drop_blob_ref(sha256).await? {
        Some(0) => Some(sha256.to_string()),
        Some(_) => None,
        None => {
            tracing::error!(sha256, "released a blob that has no reference row");
            None
        }
    })
}

/// Whether a put may proceed given the file now at its path.
pub(crate) fn check_put_precondition(
    precondition: &Precondition,
    existing: Option<&FileMeta>,
) -> Result<(), MetadataError> {
    match (precondition, existing) {
        (Precondition::MustNotExist, Some(_)) | (Precondition::MustMatch(_), None) => {
            Err(MetadataError::PreconditionFailed)
        }
        (Precondition::MustMatch(tags), Some(cur)) if !tags.matches(&cur.sha256) => {
            Err(MetadataError::PreconditionFailed)
        }
        _ => Ok(()),
    }
}

/// A new file (version 1) at `path` with `blob`'s content.
fn new_file(path: &str, blob: &BlobRef, content_type: &str, now: i64) -> FileMeta {
    FileMeta {
        id: uuid::Uuid::new_v4().simple().to_string(),
        path: path.to_string(),
        size: blob.size,
        sha256: blob.sha256.clone(),
        version: 1,
        content_type: content_type.to_string(),
        created_at: rfc3339(now),
        modified_at: rfc3339(now),
        modified_ms: now,
    }
}

// ---------------------------------------------------------------------------------------
// The audit.

/// A file whose newest event disagrees with its row (or has none).
#[derive(Debug, Clone)]
pub(crate) struct LastEventMismatch {
    pub(crate) seq: i64,
    pub(crate) kind: String,
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) version: i64,
    pub(crate) sha256: String,
    /// The row's (path, version, sha256), `None` when there is no row.
    pub(crate) file: Option<(String, i64, String)>,
}

/// The audit's queries, all answered from one read snapshot, each at most `limit` rows.
#[async_trait]
pub(crate) trait AuditSource: Send {
    /// (files, events, oldest retained seq, latest seq ever assigned).
    async fn counts(&mut self) -> Result<(i64, i64, Option<i64>, i64), MetadataError>;
    /// Retained seqs whose predecessor is missing: (previous retained seq, seq).
    async fn gaps(&mut self, limit: i64) -> Result<Vec<(i64, i64)>, MetadataError>;
    /// Ids whose newest event disagrees with the files table: a `deleted` event while the
    /// row exists, or any other event while the row is missing or differs in path, version,
    /// size or hash.
    async fn last_event_mismatches(
        &mut self,
        limit: i64,
    ) -> Result<Vec<LastEventMismatch>, MetadataError>;
    /// Files (id, path) with no event at all.
    async fn files_without_events(
        &mut self,
        limit: i64,
    ) -> Result<Vec<(String, String)>, MetadataError>;
    /// Blobs whose recorded count (`None`: no row) differs from the files, old versions and
    /// trash entries using them.
    async fn refcount_mismatches(
        &mut self,
        limit: i64,
    ) -> Result<Vec<(String, Option<i64>, i64)>, MetadataError>;
    /// (old versions, trash entries).
    async fn retention_counts(&mut self) -> Result<(i64, i64), MetadataError>;
    /// Old versions (file id, version) whose file is neither live nor in the trash.
    async fn version_orphans(&mut self, limit: i64) -> Result<Vec<(String, i64)>, MetadataError>;
    /// Trash entries (trash id, file id, path) whose file is live as well.
    async fn trash_live(
        &mut self,
        limit: i64,
    ) -> Result<Vec<(String, String, String)>, MetadataError>;
}

/// The checks of [`super::MetadataStore::audit`], over one snapshot.
pub(crate) async fn audit<S: AuditSource + ?Sized>(
    src: &mut S,
) -> Result<MetadataAudit, MetadataError> {
    let limit = i64::try_from(AUDIT_LIMIT).unwrap_or(i64::MAX);
    let (files, events, oldest, latest) = src.counts().await?;
    let (versions, trash) = src.retention_counts().await?;
    let mut audit = MetadataAudit {
        files: u64::try_from(files).unwrap_or(0),
        events: u64::try_from(events).unwrap_or(0),
        oldest_seq: oldest,
        latest_seq: latest,
        versions: u64::try_from(versions).unwrap_or(0),
        trash: u64::try_from(trash).unwrap_or(0),
        problems: Vec::new(),
    };
    let problem = |kind: &str, id: String, path: String, detail: String| AuditProblem {
        kind: kind.to_string(),
        id,
        path,
        detail,
    };

    // Pruning removes the oldest events only: inside the retained range, none may miss.
    for (before, after) in src.gaps(limit).await? {
        let detail = format!("events {} to {} are missing", before + 1, after - 1);
        let gap = problem("log_gap", String::new(), String::new(), detail);
        audit.problems.push(gap);
    }

    // The newest event of every id against the file's current row.
    for m in src.last_event_mismatches(limit).await? {
        let detail = log_mismatch_detail(&m);
        audit
            .problems
            .push(problem("log_mismatch", m.id, m.path, detail));
    }

    // While nothing was pruned, every file must have at least one event.
    if oldest == Some(1) {
        for (id, path) in src.files_without_events(limit).await? {
            let detail = "the file has no event in a complete log".to_string();
            audit
                .problems
                .push(problem("log_missing", id, path, detail));
        }
    }

    // Reference counts decide when a blob is deleted: a low count loses data.
    for (sha, refcount, used) in src.refcount_mismatches(limit).await? {
        let recorded = refcount.map_or("no blob row".to_string(), |r| format!("refcount {r}"));
        let detail =
            format!("blob {sha}: {recorded}, used by {used} file(s), version(s) and trash entries");
        let bad = problem("refcount", String::new(), String::new(), detail);
        audit.problems.push(bad);
    }

    // History that nothing can reach: its references would never be dropped.
    for (id, version) in src.version_orphans(limit).await? {
        let detail = format!("version {version} belongs to no live or trashed file");
        let bad = problem("version_orphan", id, String::new(), detail);
        audit.problems.push(bad);
    }
    for (trash_id, id, path) in src.trash_live(limit).await? {
        let detail = format!("trash entry {trash_id} is of a file that is live");
        audit.problems.push(problem("trash_live", id, path, detail));
    }
    Ok(audit)
}

/// The audit's wording for a file whose newest event disagrees with its row.
fn log_mismatch_detail(m: &LastEventMismatch) -> String {
    let (seq, kind) = (m.seq, &m.kind);
    match &m.file {
        None => format!("event {seq} ({kind}) says the file exists, but it does not"),
        Some(_) if kind == "deleted" => {
            format!("event {seq} deleted the file, but it still exists")
        }
        Some((f_path, f_version, f_sha)) => format!(
            "event {seq} ({kind}) records {} v{} {}; the file is {f_path} v{f_version} {f_sha}",
            m.path, m.version, m.sha256
        ),
    }
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
