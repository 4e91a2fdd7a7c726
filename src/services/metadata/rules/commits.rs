//! The rules of commits and leases (issue 21), over the same [`Tx`] as every other write.
//!
//! - A finish reads the commit's staged files, checks `expect` and `if_unchanged_since`,
//!   then deletes (`delete`, `replace_prefix`) and puts with [`Writer`]'s ordinary rules, all
//!   in the caller's one transaction, with every event noted as the commit's (consecutive
//!   seqs: nothing else writes inside the transaction). Its answer is stored with the
//!   commit, so a second finish returns it and writes nothing.
//! - A staged file holds a reference to its blob; the finish's put takes the file's own and
//!   then drops the staged one, an abort or expiry just drops it.
//! - Leases: one row per lease path with the newest fence issued for it. Every write checks
//!   the rows that cover each path it touches ([`FenceGuard::check`]), in the transaction,
//!   so the check is ordered with lease changes on both backends and across replicas.

use std::collections::{BTreeMap, BTreeSet};

use super::super::commits::StagedEntry;
use super::super::commits::{
    AtomicDone, AtomicOp, CommitRecord, FinishOutcome, FinishRequest, LeaseRow, ABORTED,
    ENDED_COMMIT_RETENTION_MS, EXPIRED, FINISHED, LAPSED_LEASE_RETENTION_MS, OPEN,
};
use super::{new_file, release, MetadataError, Tx, Writer};
use crate::services::metadata::{rfc3339, EventKind, FileMeta};
use crate::services::storage::BlobRef;

/// Most events after `if_unchanged_since` a finish examines; past it, the finish answers
/// `PreconditionFailed` (too much changed to tell).
const CHANGED_SCAN_LIMIT: i64 = 100_000;

/// The lease rows a write is checked against, and the fence it carries.
#[derive(Debug)]
pub(super) struct FenceGuard {
    fence: Option<i64>,
    rows: Vec<LeaseRow>,
    now: i64,
}

impl FenceGuard {
    pub(super) async fn load<T: Tx + ?Sized>(
        tx: &mut T,
        fence: Option<i64>,
        now: i64,
    ) -> Result<Self, MetadataError> {
        Ok(FenceGuard {
            fence,
            rows: tx.lease_rows().await?,
            now,
        })
    }

    /// Whether this write may touch `path`: under a live lease only with its fence
    /// (`Locked` without one, `FenceStale` with another); with no live lease, a fence older
    /// than the newest one issued for the path is `FenceStale` (a holder that stalled past
    /// its ttl while someone else took over), and no fence is fine.
    pub(super) fn check(&self, path: &str) -> Result<(), MetadataError> {
        let mut live = self
            .rows
            .iter()
            .filter(|r| r.covers(path) && r.live(self.now))
            .peekable();
        if live.peek().is_some() {
            let fence = self.fence.ok_or(MetadataError::Locked)?;
            return if live.all(|r| r.fence == fence) {
                Ok(())
            } else {
                Err(MetadataError::FenceStale)
            };
        }
        let (Some(fence), Some(newest)) = (
            self.fence,
            self.rows
                .iter()
                .filter(|r| r.covers(path))
                .max_by_key(|r| r.path.len()),
        ) else {
            return Ok(());
        };
        if fence < newest.fence {
            Err(MetadataError::FenceStale)
        } else {
            Ok(())
        }
    }
}

/// Whether two lease paths overlap: the same, or one a prefix (ending in `/`) above the other.
fn overlaps(a: &str, b: &str) -> bool {
    a == b || (a.ends_with('/') && b.starts_with(a)) || (b.ends_with('/') && a.starts_with(b))
}

impl Writer<'_> {
    pub(super) async fn atomic<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        op: &AtomicOp,
    ) -> Result<AtomicDone, MetadataError> {
        Ok(match op {
            AtomicOp::CreateCommit {
                id,
                idempotency_key,
                ttl_ms,
            } => {
                if let Some(key) = idempotency_key {
                    if let Some(existing) = tx.commit_by_key(key).await? {
                        let existing = self.effective(existing);
                        if existing.state != EXPIRED && existing.state != ABORTED {
                            return Ok(AtomicDone::Commit(existing, false));
                        }
                        // An ended commit cannot take files or finish: a retry with its key
                        // (`vaultfs publish` run again after its commit lapsed) starts over
                        // in a new commit, and the old one stays an expired/aborted tombstone.
                        tx.release_commit_key(&existing.id).await?;
                    }
                }
                let commit = CommitRecord {
                    id: id.clone(),
                    idempotency_key: idempotency_key.clone(),
                    state: OPEN.to_string(),
                    created_at_ms: self.now,
                    expires_at_ms: self.now.saturating_add(*ttl_ms),
                    result: None,
                };
                tx.insert_commit(&commit).await?;
                AtomicDone::Commit(commit, true)
            }
            AtomicOp::Get { commit_id } => {
                let commit = tx
                    .commit_by_id(commit_id)
                    .await?
                    .ok_or(MetadataError::NotFound)?;
                let commit = self.effective(commit);
                let files = tx.staged_files(commit_id).await?;
                AtomicDone::Staged {
                    commit,
                    files,
                    released: Vec::new(),
                }
            }
            AtomicOp::Stage {
                commit_id,
                entries,
                max_files,
            } => {
                let commit = self.open_commit(tx, commit_id).await?;
                let mut staged: BTreeMap<String, String> = tx
                    .staged_files(commit_id)
                    .await?
                    .into_iter()
                    .map(|e| (e.path, e.sha256))
                    .collect();
                let mut released = Vec::new();
                for entry in entries {
                    tx.add_blob_ref(&entry.sha256, entry.size).await?;
                    match staged.insert(entry.path.clone(), entry.sha256.clone()) {
                        // The last staging of a path wins; the earlier one's reference goes.
                        Some(old) => released.extend(release(tx, &old).await?),
                        None if staged.len() > *max_files => {
                            return Err(MetadataError::CommitTooLarge(*max_files))
                        }
                        None => {}
                    }
                    tx.upsert_staged(commit_id, entry).await?;
                }
                released.retain(|h| !staged.values().any(|s| s == h));
                AtomicDone::Staged {
                    commit,
                    files: entries.clone(),
                    released,
                }
            }
            AtomicOp::Finish(req) => self.finish(tx, req).await?,
            AtomicOp::Abort { commit_id } => {
                let commit = tx
                    .commit_by_id(commit_id)
                    .await?
                    .ok_or(MetadataError::NotFound)?;
                match self.effective(commit).state.as_str() {
                    FINISHED => return Err(MetadataError::CommitClosed),
                    OPEN => {}
                    // Past its ttl: it ends as expired, swept or not (its GET and finish
                    // stay 410 `commit_expired`), and the abort has nothing more to do.
                    EXPIRED => {
                        let released = end_commit(tx, commit_id, EXPIRED).await?;
                        return Ok(AtomicDone::Released(1, released));
                    }
                    _ => return Err(MetadataError::NotFound),
                }
                let released = end_commit(tx, commit_id, ABORTED).await?;
                AtomicDone::Released(1, released)
            }
            AtomicOp::ExpireCommits { limit } => {
                let ids = tx.expired_commits(self.now, *limit).await?;
                let mut released = Vec::new();
                for id in &ids {
                    released.extend(end_commit(tx, id, EXPIRED).await?);
                }
                // The tombstones of ended commits (expired: 410, aborted: 404) are bounded:
                // a week past their expiry they go, and the id is unknown (404).
                tx.purge_ended_commits(self.now.saturating_sub(ENDED_COMMIT_RETENTION_MS), *limit)
                    .await?;
                AtomicDone::Released(ids.len(), released)
            }
            AtomicOp::AcquireLease {
                lease_id,
                path,
                ttl_ms,
            } => {
                let rows = &self.guard.rows;
                if let Some(held) = rows
                    .iter()
                    .filter(|r| r.live(self.now) && overlaps(&r.path, path))
                    .max_by_key(|r| r.expires_at_ms)
                {
                    return Err(MetadataError::LeaseHeld {
                        expires_at_ms: held.expires_at_ms,
                    });
                }
                let previous = rows.iter().find(|r| r.path == *path);
                if let Some(lapsed) = previous.filter(|r| r.lease_id.is_some()) {
                    // Its holder's renewal answers `LeaseExpired` from now on, not
                    // `NotFound` (the row names the new holder).
                    tx.remember_lapsed_lease(
                        lapsed,
                        self.now,
                        self.now.saturating_sub(LAPSED_LEASE_RETENTION_MS),
                    )
                    .await?;
                }
                let fence = previous.map_or(1, |r| r.fence + 1);
                let row = LeaseRow {
                    path: path.clone(),
                    fence,
                    lease_id: Some(lease_id.clone()),
                    expires_at_ms: self.now.saturating_add(*ttl_ms),
                };
                tx.put_lease_row(&row).await?;
                AtomicDone::Lease(row.lease().ok_or(MetadataError::LeaseExpired)?)
            }
            AtomicOp::RenewLease { lease_id, ttl_ms } => {
                // Lapsed (taken over since, or not): LeaseExpired; unknown or released:
                // NotFound.
                let Some(row) = self
                    .guard
                    .rows
                    .iter()
                    .find(|r| r.lease_id.as_deref() == Some(lease_id.as_str()))
                else {
                    return Err(if tx.lapsed_lease(lease_id).await? {
                        MetadataError::LeaseExpired
                    } else {
                        MetadataError::NotFound
                    });
                };
                if !row.live(self.now) {
                    return Err(MetadataError::LeaseExpired);
                }
                let row = LeaseRow {
                    expires_at_ms: self.now.saturating_add(*ttl_ms),
                    ..row.clone()
                };
                tx.put_lease_row(&row).await?;
                AtomicDone::Lease(row.lease().ok_or(MetadataError::LeaseExpired)?)
            }
            AtomicOp::ReleaseLease { lease_id } => {
                let row = self
                    .guard
                    .rows
                    .iter()
                    .find(|r| r.lease_id.as_deref() == Some(lease_id.as_str()))
                    .ok_or(MetadataError::NotFound)?;
                // The fence stays: a later write with this lease's fence is still accepted
                // until someone takes a newer one.
                let row = LeaseRow {
                    lease_id: None,
                    expires_at_ms: self.now,
                    ..row.clone()
                };
                tx.put_lease_row(&row).await?;
                AtomicDone::Done
            }
            AtomicOp::Leases => {
                let mut leases: Vec<_> = self
                    .guard
                    .rows
                    .iter()
                    .filter(|r| r.live(self.now))
                    .filter_map(LeaseRow::lease)
                    .collect();
                leases.sort_by(|a, b| a.path.cmp(&b.path));
                AtomicDone::Leases(leases)
            }
        })
    }

    /// `commit` as it stands now: an open commit past its ttl is expired, swept or not.
    fn effective(&self, mut commit: CommitRecord) -> CommitRecord {
        if commit.state == OPEN && commit.expires_at_ms <= self.now {
            commit.state = EXPIRED.to_string();
        }
        commit
    }

    /// Commit `id`, open for staging: `CommitExpired` past its ttl (swept or not),
    /// `CommitClosed` once finished, `NotFound` when aborted or unknown.
    async fn open_commit<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        id: &str,
    ) -> Result<CommitRecord, MetadataError> {
        let commit = tx.commit_by_id(id).await?.ok_or(MetadataError::NotFound)?;
        match commit.state.as_str() {
            OPEN if commit.expires_at_ms <= self.now => Err(MetadataError::CommitExpired),
            OPEN => Ok(commit),
            FINISHED => Err(MetadataError::CommitClosed),
            EXPIRED => Err(MetadataError::CommitExpired),
            _ => Err(MetadataError::NotFound),
        }
    }

    async fn finish<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        req: &FinishRequest,
    ) -> Result<AtomicDone, MetadataError> {
        let commit = tx
            .commit_by_id(&req.commit_id)
            .await?
            .ok_or(MetadataError::NotFound)?;
        if commit.state == FINISHED {
            // A retry: the same answer, nothing written.
            let outcome = commit
                .finished()
                .ok_or_else(|| MetadataError::Backend("finished commit has no result".into()))?;
            return Ok(AtomicDone::Finished {
                outcome,
                released: Vec::new(),
            });
        }
        let commit = self.open_commit(tx, &req.commit_id).await?;
        let staged = tx.staged_files(&commit.id).await?;
        let locked: BTreeSet<&str> = req.locked.iter().map(String::as_str).collect();
        if staged.iter().any(|s| !locked.contains(s.path.as_str())) {
            // Staged after the caller read the set and locked it: it locks again.
            return Err(MetadataError::PathChanged);
        }
        let staged_paths: BTreeMap<&str, &str> = staged
            .iter()
            .map(|s| (s.path.as_str(), s.sha256.as_str()))
            .collect();
        if let Some(expect) = &req.expect {
            let mismatch = expect_differences(&staged_paths, expect);
            if !mismatch.is_empty() {
                return Err(MetadataError::CommitMismatch(mismatch));
            }
        }
        let both: Vec<String> = req
            .delete
            .iter()
            .filter(|d| staged_paths.contains_key(d.as_str()))
            .map(|d| format!("{d}: both staged and in `delete`"))
            .collect();
        if !both.is_empty() {
            return Err(MetadataError::CommitMismatch(both));
        }
        let touched = |p: &str| {
            staged_paths.contains_key(p)
                || req.delete.iter().any(|d| d == p)
                || req
                    .replace_prefix
                    .as_deref()
                    .is_some_and(|prefix| p.starts_with(prefix))
        };
        if let Some(since) = req.if_unchanged_since {
            let oldest = tx.oldest_retained_seq().await?;
            if oldest.is_some_and(|o| o > since.saturating_add(1)) {
                // The log no longer tells what changed after `since`.
                return Err(MetadataError::PreconditionFailed);
            }
            let changed = tx.paths_changed_after(since, CHANGED_SCAN_LIMIT).await?;
            if changed.len() as i64 >= CHANGED_SCAN_LIMIT
                || changed
                    .iter()
                    .any(|(p, from)| touched(p) || from.as_deref().is_some_and(touched))
            {
                return Err(MetadataError::PreconditionFailed);
            }
        }

        let mut victims = Vec::new();
        let mut seen = BTreeSet::new();
        for path in &req.delete {
            if let Some(file) = tx.file_by_path(path).await? {
                if seen.insert(file.id.clone()) {
                    victims.push(file);
                }
            }
        }
        if let Some(prefix) = &req.replace_prefix {
            for file in tx.files_under(prefix).await? {
                if !staged_paths.contains_key(file.path.as_str()) && seen.insert(file.id.clone()) {
                    victims.push(file);
                }
            }
        }
        let size = staged.len() + victims.len();
        tx.set_commit_note(Some((
            commit.id.clone(),
            i64::try_from(size).unwrap_or(i64::MAX),
        )));
        let mut released = Vec::new();
        for victim in &victims {
            self.delete_row(tx, victim, None, false, &mut released)
                .await?;
        }
        let files = self
            .put_staged(tx, &commit.id, &staged, &mut released)
            .await?;
        tx.set_commit_note(None);
        tx.delete_staged(&commit.id).await?;
        let (seq_first, seq_last) = match (size, tx.last_appended_seq()) {
            (0, _) | (_, None) => (0, 0),
            (n, Some(last)) => (last - i64::try_from(n).unwrap_or(0) + 1, last),
        };
        let outcome = FinishOutcome {
            commit: commit.id.clone(),
            seq_first,
            seq_last,
            files,
        };
        let json = serde_json::to_string(&outcome)
            .map_err(|e| MetadataError::Backend(format!("finish result: {e}")))?;
        tx.set_commit_state(&commit.id, FINISHED, Some(&json))
            .await?;
        released.sort();
        released.dedup();
        Ok(AtomicDone::Finished { outcome, released })
    }
}

impl Writer<'_> {
    /// The puts of a finish, set-based: for each staged file what [`Writer::put`] does
    /// (a `created` or `updated` event, the current row kept as an old version or released,
    /// versions past the window dropped), in a handful of statements for the whole commit.
    /// A put's new reference and the staged one it replaces cancel out, so the staged
    /// blobs' counts are not touched; the blobs whose count reaches zero are `released`.
    async fn put_staged<T: Tx + ?Sized>(
        &self,
        tx: &mut T,
        commit_id: &str,
        staged: &[StagedEntry],
        released: &mut Vec<String>,
    ) -> Result<Vec<FileMeta>, MetadataError> {
        let mut current: BTreeMap<String, FileMeta> = tx
            .files_at_staged_paths(commit_id)
            .await?
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        let mut files = Vec::with_capacity(staged.len());
        let mut events = Vec::with_capacity(staged.len());
        let (mut created, mut updated, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        // Old versions to trim, by how many each file keeps.
        let mut trim: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut drops: BTreeMap<String, i64> = BTreeMap::new();
        for entry in staged {
            self.guard.check(&entry.path)?;
            // Staged through the S3 API: its record (ETag, user metadata), written in this
            // transaction with the file as a direct PutObject would.
            if let Some(row) = &entry.s3 {
                tx.put_s3_object(&entry.path, &entry.sha256, row).await?;
            }
            let meta = match current.remove(&entry.path) {
                Some(cur) => {
                    let keep_old = self.policy.versions_keep_for(&cur.path).old_versions();
                    if let Some(keep) = keep_old {
                        trim.entry(keep).or_default().push(cur.id.clone());
                    }
                    let meta = FileMeta {
                        size: entry.size,
                        sha256: entry.sha256.clone(),
                        version: cur.version + 1,
                        content_type: entry.content_type.clone(),
                        modified_at: rfc3339(self.now),
                        modified_ms: self.now,
                        ..cur.clone()
                    };
                    if keep_old == Some(0) {
                        *drops.entry(cur.sha256).or_default() += 1;
                    } else {
                        kept.push(cur);
                    }
                    updated.push(meta.clone());
                    events.push((EventKind::Updated, meta.clone()));
                    meta
                }
                None => {
                    let blob = BlobRef {
                        sha256: entry.sha256.clone(),
                        size: entry.size,
                    };
                    let meta = new_file(&entry.path, &blob, &entry.content_type, self.now);
                    created.push(meta.clone());
                    events.push((EventKind::Created, meta.clone()));
                    meta
                }
            };
            files.push(meta);
        }
        tx.insert_versions(&kept).await?;
        let mut beyond = Vec::new();
        for (keep, ids) in &trim {
            for (id, version, sha) in tx.versions_beyond_each(ids, *keep).await? {
                beyond.push((id, version));
                *drops.entry(sha).or_default() += 1;
            }
        }
        tx.delete_versions(&beyond).await?;
        tx.update_contents(&updated).await?;
        tx.insert_files(&created).await?;
        tx.append_events(&events, self.now).await?;
        let drops: Vec<(String, i64)> = drops.into_iter().collect();
        let left: BTreeMap<String, i64> = tx.drop_blob_refs(&drops).await?.into_iter().collect();
        for (sha, _) in &drops {
            match left.get(sha) {
                Some(0) => released.push(sha.clone()),
                Some(_) => {}
                None => tracing::error!(sha256 = %sha, "released a blob that has no reference row"),
            }
        }
        Ok(files)
    }
}

/// Ends an open commit (aborted or expired): its staged references go.
async fn end_commit<T: Tx + ?Sized>(
    tx: &mut T,
    id: &str,
    state: &str,
) -> Result<Vec<String>, MetadataError> {
    let mut released = Vec::new();
    for entry in tx.staged_files(id).await? {
        released.extend(release(tx, &entry.sha256).await?);
    }
    tx.delete_staged(id).await?;
    tx.set_commit_state(id, state, None).await?;
    Ok(released)
}

/// How the staged set differs from `expect`, one line per path.
fn expect_differences(staged: &BTreeMap<&str, &str>, expect: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut expected = BTreeMap::new();
    for (path, sha) in expect {
        expected.insert(path.as_str(), sha.as_str());
    }
    for (path, sha) in &expected {
        match staged.get(path) {
            None => out.push(format!("{path}: expected, not staged")),
            Some(s) if !s.eq_ignore_ascii_case(sha) => {
                out.push(format!("{path}: staged sha256 {s}, expected {sha}"))
            }
            Some(_) => {}
        }
    }
    for path in staged.keys() {
        if !expected.contains_key(path) {
            out.push(format!("{path}: staged, not expected"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, fence: i64, live: bool) -> LeaseRow {
        LeaseRow {
            path: path.into(),
            fence,
            lease_id: live.then(|| "l".to_string()),
            expires_at_ms: if live { 2000 } else { 500 },
        }
    }

    fn guard(fence: Option<i64>, rows: Vec<LeaseRow>) -> FenceGuard {
        FenceGuard {
            fence,
            rows,
            now: 1000,
        }
    }

    #[test]
    fn fences_under_live_and_lapsed_leases() {
        let live = vec![row("rel/", 3, true)];
        assert!(matches!(
            guard(None, live.clone()).check("rel/a"),
            Err(MetadataError::Locked)
        ));
        assert!(matches!(
            guard(Some(2), live.clone()).check("rel/a"),
            Err(MetadataError::FenceStale)
        ));
        assert!(guard(Some(3), live.clone()).check("rel/a").is_ok());
        // Outside the lease: open.
        assert!(guard(None, live.clone()).check("relx").is_ok());
        assert!(guard(None, live).check("other/a").is_ok());
        // Lapsed: open without a fence, the newest fence accepted, an older one refused.
        let lapsed = vec![row("rel/", 3, false)];
        assert!(guard(None, lapsed.clone()).check("rel/a").is_ok());
        assert!(guard(Some(3), lapsed.clone()).check("rel/a").is_ok());
        assert!(matches!(
            guard(Some(2), lapsed).check("rel/a"),
            Err(MetadataError::FenceStale)
        ));
        // A file lease covers the file only.
        let file = vec![row("rel/a", 1, true)];
        assert!(guard(None, file.clone()).check("rel/b").is_ok());
        assert!(guard(None, file).check("rel/a").is_err());
    }

    #[test]
    fn overlapping_lease_paths() {
        assert!(overlaps("a/", "a/b"));
        assert!(overlaps("a/b", "a/"));
        assert!(overlaps("a/b/", "a/"));
        assert!(overlaps("a/x", "a/x"));
        assert!(!overlaps("a/x", "a/y"));
        assert!(!overlaps("a", "a/b"));
    }

    #[test]
    fn expect_names_each_difference() {
        let staged: BTreeMap<&str, &str> = [("a", "11"), ("b", "22")].into_iter().collect();
        let expect = vec![("a".into(), "11".into()), ("c".into(), "33".into())];
        let diff = expect_differences(&staged, &expect);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff.iter().any(|d| d.starts_with("c:")));
        assert!(diff.iter().any(|d| d.starts_with("b:")));
        let exact = vec![("a".into(), "11".into()), ("b".into(), "22".into())];
        assert!(expect_differences(&staged, &exact).is_empty());
    }
}
