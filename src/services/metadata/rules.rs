//! The metadata rules, stated once for every backend.
//!
//! A backend supplies a [`Tx`]: the row operations of one open write transaction (read a
//! file, write its row, count a blob reference, append an event). Everything a write means
//! is here, in [`apply`]: its precondition, the version it gets, the event it logs, the
//! blob references it takes and drops, and what it releases. Likewise a backend supplies an
//! [`AuditSource`] (the audit's queries, in one read snapshot) and [`audit`] decides what
//! counts as a problem and how it is worded.
//!
//! Neither layer commits: the backend opens the transaction, calls [`apply`], and commits
//! on `Ok` or rolls back on `Err`, so a failing write (or any put of a `put_many`) leaves
//! no row, event or reference count behind.

use async_trait::async_trait;

use super::{
    now_ms, rfc3339, AuditProblem, ChangeOutcome, EventKind, FileMeta, MetadataAudit,
    MetadataError, Precondition, PutOutcome, PutRequest, S3ObjectRow, AUDIT_LIMIT,
};
use crate::services::storage::BlobRef;

/// Row operations inside one open write transaction.
#[async_trait]
pub(crate) trait Tx: Send {
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
        at: i64,
    ) -> Result<i64, MetadataError>;
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
    },
    Rename(Transfer),
    Copy(Transfer),
}

/// A move or copy of file `id` (locked at `expected_path`) to `to`; with `overwrite`, a
/// file at `to` is deleted first.
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
}

fn unexpected() -> MetadataError {
    MetadataError::Backend("a write answered with the wrong outcome kind".into())
}

/// Applies `op` inside the caller's open transaction. On `Err` the caller must roll back:
/// rows may already have been written.
pub(crate) async fn apply<T: Tx + ?Sized>(
    tx: &mut T,
    op: &WriteOp,
) -> Result<WriteDone, MetadataError> {
    let now = now_ms();
    Ok(match op {
        WriteOp::Put(req) => WriteDone::Put(put(tx, req, now).await?),
        WriteOp::PutMany(reqs) => {
            let mut outcomes = Vec::with_capacity(reqs.len());
            for req in reqs {
                outcomes.push(put(tx, req, now).await?);
            }
            WriteDone::Many(outcomes)
        }
        WriteOp::Delete {
            id,
            expected_path,
            precondition,
        } => WriteDone::Change(delete(tx, id, expected_path, precondition, now).await?),
        WriteOp::Rename(t) => WriteDone::Change(rename(tx, t, now).await?),
        WriteOp::Copy(t) => WriteDone::Change(copy(tx, t, now).await?),
    })
}

/// Creates or replaces the file at `req.path`: version 1 and a `created` event, or the same
/// id with the next version and an `updated` event. The new blob gains a reference first, so
/// replacing a file with its own content never drops the count to zero.
async fn put<T: Tx + ?Sized>(
    tx: &mut T,
    req: &PutRequest,
    now: i64,
) -> Result<PutOutcome, MetadataError> {
    let existing = tx.file_by_path(&req.path).await?;
    check_put_precondition(&req.precondition, existing.as_ref())?;
    tx.add_blob_ref(&req.blob.sha256, req.blob.size).await?;
    // A native write (no record) costs no statement: a record of other content is ignored
    // by its readers (records are keyed by path and SHA-256), and one of the same content
    // still describes it.
    if let Some(row) = &req.s3 {
        tx.put_s3_object(&req.path, &req.blob.sha256, row).await?;
    }
    Ok(match existing {
        Some(cur) => {
            let released = release(tx, &cur.sha256).await?;
            let meta = replaced(cur, req, now);
            tx.update_content(&meta).await?;
            tx.append_event(EventKind::Updated, &meta, None, now)
                .await?;
            PutOutcome {
                meta,
                created: false,
                released,
            }
        }
        None => {
            let meta = new_file(&req.path, &req.blob, &req.content_type, now);
            tx.insert_file(&meta).await?;
            tx.append_event(EventKind::Created, &meta, None, now)
                .await?;
            PutOutcome {
                meta,
                created: true,
                released: None,
            }
        }
    })
}

async fn delete<T: Tx + ?Sized>(
    tx: &mut T,
    id: &str,
    expected_path: &str,
    precondition: &Precondition,
    now: i64,
) -> Result<ChangeOutcome, MetadataError> {
    let cur = load_locked(tx, id, expected_path).await?;
    if let Precondition::MustMatch(tags) = precondition {
        if !tags.matches(&cur.sha256) {
            return Err(MetadataError::PreconditionFailed);
        }
    }
    let mut released = Vec::new();
    delete_row(tx, &cur, now, &mut released).await?;
    Ok(ChangeOutcome {
        meta: cur,
        released,
    })
}

/// A move onto its own path is a no-op that logs nothing.
async fn rename<T: Tx + ?Sized>(
    tx: &mut T,
    t: &Transfer,
    now: i64,
) -> Result<ChangeOutcome, MetadataError> {
    let (cur, to) = (load_locked(tx, &t.id, &t.expected_path).await?, &t.to);
    if cur.path == *to {
        return Ok(ChangeOutcome {
            meta: cur,
            released: Vec::new(),
        });
    }
    let released = clear_target(tx, t, now).await?;
    tx.update_path(&t.id, to).await?;
    tx.move_s3_object(&cur.path, to).await?;
    let from = cur.path.clone();
    let meta = FileMeta {
        path: to.to_string(),
        ..cur
    };
    tx.append_event(EventKind::Moved, &meta, Some(&from), now)
        .await?;
    Ok(ChangeOutcome { meta, released })
}

/// A copy is a new file (new id, version 1) sharing the source's blob.
async fn copy<T: Tx + ?Sized>(
    tx: &mut T,
    t: &Transfer,
    now: i64,
) -> Result<ChangeOutcome, MetadataError> {
    let src = load_locked(tx, &t.id, &t.expected_path).await?;
    if src.path == t.to {
        return Err(MetadataError::AlreadyExists);
    }
    let mut released = clear_target(tx, t, now).await?;
    let blob = BlobRef {
        sha256: src.sha256.clone(),
        size: src.size,
    };
    let meta = new_file(&t.to, &blob, &src.content_type, now);
    tx.add_blob_ref(&meta.sha256, meta.size).await?;
    tx.insert_file(&meta).await?;
    match &t.s3 {
        Some(row) => tx.put_s3_object(&t.to, &meta.sha256, row).await?,
        None => tx.forget_s3_object(&t.to).await?,
    }
    tx.append_event(EventKind::Copied, &meta, Some(&src.path), now)
        .await?;
    // Releasing the target's blob cannot free the source's: the copy holds a reference.
    released.retain(|h| *h != meta.sha256);
    Ok(ChangeOutcome { meta, released })
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

/// Makes `to` free for a move or copy: a file there is deleted (its own `deleted` event) when
/// `overwrite`, else [`MetadataError::AlreadyExists`].
/// Returns the blobs the deletion released.
async fn clear_target<T: Tx + ?Sized>(
    tx: &mut T,
    t: &Transfer,
    now: i64,
) -> Result<Vec<String>, MetadataError> {
    let mut released = Vec::new();
    if let Some(target) = tx.file_by_path(&t.to).await? {
        if !t.overwrite {
            return Err(MetadataError::AlreadyExists);
        }
        delete_row(tx, &target, now, &mut released).await?;
    }
    Ok(released)
}

/// Deletes `victim`: its row, its blob reference, a `deleted` event.
async fn delete_row<T: Tx + ?Sized>(
    tx: &mut T,
    victim: &FileMeta,
    now: i64,
    released: &mut Vec<String>,
) -> Result<(), MetadataError> {
    tx.delete_file(&victim.id).await?;
    tx.forget_s3_object(&victim.path).await?;
    released.extend(release(tx, &victim.sha256).await?);
    tx.append_event(EventKind::Deleted, victim, None, now)
        .await?;
    Ok(())
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

/// `cur` replaced by `req`'s content: same id and path, next version.
fn replaced(cur: FileMeta, req: &PutRequest, now: i64) -> FileMeta {
    FileMeta {
        size: req.blob.size,
        sha256: req.blob.sha256.clone(),
        version: cur.version + 1,
        content_type: req.content_type.clone(),
        modified_at: rfc3339(now),
        modified_ms: now,
        ..cur
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
    /// Blobs whose recorded count (`None`: no row) differs from the files using them.
    async fn refcount_mismatches(
        &mut self,
        limit: i64,
    ) -> Result<Vec<(String, Option<i64>, i64)>, MetadataError>;
}

/// The checks of [`super::MetadataStore::audit`], over one snapshot.
pub(crate) async fn audit<S: AuditSource + ?Sized>(
    src: &mut S,
) -> Result<MetadataAudit, MetadataError> {
    let limit = i64::try_from(AUDIT_LIMIT).unwrap_or(i64::MAX);
    let (files, events, oldest, latest) = src.counts().await?;
    let mut audit = MetadataAudit {
        files: u64::try_from(files).unwrap_or(0),
        events: u64::try_from(events).unwrap_or(0),
        oldest_seq: oldest,
        latest_seq: latest,
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
        let detail = format!("blob {sha}: {recorded}, used by {used} file(s)");
        let bad = problem("refcount", String::new(), String::new(), detail);
        audit.problems.push(bad);
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
