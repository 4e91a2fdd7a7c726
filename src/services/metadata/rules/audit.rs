//! The audit, stated once: a backend answers the [`AuditSource`] queries from one read
//! snapshot, and [`audit`] decides what counts as a problem and how it is worded.

use async_trait::async_trait;

use super::super::{AuditProblem, MetadataAudit, MetadataError, AUDIT_LIMIT};

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
