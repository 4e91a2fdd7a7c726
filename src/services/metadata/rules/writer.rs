//! What each kind of write does to the rows, under [`super::apply`]: puts, deletes to the
//! trash, moves, copies, restores and purges, with their versions, events and references.

use super::super::{
    rfc3339, BatchOutcome, ChangeOutcome, EventKind, EventNote, FileMeta, MetadataError,
    Precondition, PutOutcome, PutRequest, RetentionPolicy, TrashEntry,
};
use super::{FenceGuard, Transfer, Tx};
use crate::services::storage::BlobRef;

/// One write's context: the retention it applies and its timestamp.
pub(super) struct Writer<'p> {
    pub(super) policy: &'p RetentionPolicy,
    pub(super) now: i64,
    /// The leases over the paths this write touches, and the fence it carries.
    pub(super) guard: FenceGuard,
}

impl Writer<'_> {
    /// Creates or replaces the file at `req.path`: version 1 and a `created` event, or the
    /// same id with the next version and an `updated` event. The new blob gains a reference
    /// first, so replacing a file with its own content never drops the count to zero.
    pub(super) async fn put<T: Tx + ?Sized>(
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
    pub(super) async fn replace_content<T: Tx + ?Sized>(
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

    pub(super) async fn delete<T: Tx + ?Sized>(
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
    pub(super) async fn rename<T: Tx + ?Sized>(
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
    pub(super) async fn copy<T: Tx + ?Sized>(
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
    pub(super) async fn restore_version<T: Tx + ?Sized>(
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
    pub(super) async fn delete_tree<T: Tx + ?Sized>(
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
    pub(super) async fn restore_trash<T: Tx + ?Sized>(
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
    pub(super) async fn restore_batch<T: Tx + ?Sized>(
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
    pub(super) async fn clear_target<T: Tx + ?Sized>(
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
    pub(super) async fn delete_row<T: Tx + ?Sized>(
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
pub(super) async fn purge_entry<T: Tx + ?Sized>(
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
pub(super) async fn release<T: Tx + ?Sized>(
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
fn check_put_precondition(
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
pub(super) fn new_file(path: &str, blob: &BlobRef, content_type: &str, now: i64) -> FileMeta {
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
