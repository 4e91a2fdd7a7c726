//! `vaultfs fsck`: a check of a data directory, offline or through a running server.
//!
//! Every file's blob must exist under `blobs/<aa>/<sha256>` with the recorded size and
//! SHA-256 (each distinct blob is re-hashed); blobs no file references are orphans; files in
//! `tmp/` are leftovers of interrupted uploads. `--repair` removes orphans and leftovers only:
//! a missing or corrupt blob is reported, never "repaired" into other content. The metadata
//! audit ([`MetadataStore::audit`]) checks the event log against the files table and blob
//! reference counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::services::files::FileService;
use crate::services::lock_manager::{LockOwner, LockRequest};
use crate::services::metadata::sqlite::SqliteMetadata;
use crate::services::metadata::{AuditProblem, MetadataError, MetadataStore};
use crate::services::storage::{BlobStore, StorageError};
use crate::services::ServiceError;

/// Why a check could not run or finish (findings are in the [`FsckReport`], not errors).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// The directory cannot be checked offline: not a VaultFS data directory (no `meta.db`),
    /// or in use by a running server. The text says which and what to do.
    #[error("{0}")]
    DataDir(String),
    /// The metadata store could not be opened or read.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Reading or repairing the data failed: the data directory (`tmp/`, the `LOCK` file) or
    /// the blob store (listing, reading or deleting a blob).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A lock needed for an online check was not granted in time, or the file service
    /// failed to confirm a finding under its lock.
    #[error("server busy: {0}")]
    Busy(#[source] ServiceError),
}

/// An online check's failure is a service error like any other request's: the HTTP edge maps
/// it without knowing fsck.
impl From<FsckError> for ServiceError {
    fn from(e: FsckError) -> Self {
        match e {
            FsckError::Metadata(e) => ServiceError::Metadata(e),
            FsckError::Busy(e) => e,
            FsckError::Io(source) => ServiceError::Storage(StorageError::Io { op: "fsck", source }),
            FsckError::DataDir(reason) => ServiceError::Storage(StorageError::Io {
                op: "fsck",
                source: std::io::Error::other(reason),
            }),
        }
    }
}

/// A file whose content is damaged.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Damaged {
    pub(crate) path: String,
    pub(crate) sha256: String,
    pub(crate) problem: String,
}

/// What a check found: counts of what was checked, the problems, and what `--repair`
/// removed. [`FsckReport::is_damaged`] tells whether anything is beyond repair.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct FsckReport {
    /// Checked through a running server (`vaultfs fsck --server`).
    pub online: bool,
    pub(crate) files: u64,
    /// Old versions kept and trash entries: each references a blob, checked like a file's.
    #[serde(default)]
    pub versions: u64,
    #[serde(default)]
    pub(crate) trash_entries: u64,
    /// Events retained in the log, and the latest seq.
    pub events: u64,
    pub(crate) latest_seq: i64,
    /// Disagreements between the files table, the event log and blob reference counts.
    pub metadata_problems: Vec<AuditProblem>,
    pub(crate) blobs_checked: u64,
    pub(crate) bytes_checked: u64,
    /// Files whose blob is missing, has the wrong size or the wrong SHA-256.
    pub damaged: Vec<Damaged>,
    /// Blobs no file references (removed with `--repair`).
    pub orphan_blobs: Vec<String>,
    /// Leftover temporary upload files (removed with `--repair`).
    pub temp_files: u64,
    pub(crate) repaired: bool,
}

impl FsckReport {
    /// Damage that `--repair` cannot and must not fix.
    pub fn is_damaged(&self) -> bool {
        !self.damaged.is_empty() || !self.metadata_problems.is_empty()
    }

    pub(crate) fn is_clean(&self) -> bool {
        !self.is_damaged()
            && (self.repaired || (self.orphan_blobs.is_empty() && self.temp_files == 0))
    }
}

async fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    while let Some(entry) = rd.next_entry().await? {
        out.push(entry.path());
    }
    Ok(out)
}

/// Every file's blob path under `data_dir`, by distinct blob: sha -> (size, paths).
async fn blobs_in_use(
    meta: &dyn MetadataStore,
) -> Result<BTreeMap<String, (u64, Vec<String>)>, MetadataError> {
    let mut blobs: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    let mut start = String::new();
    let mut inclusive = true;
    loop {
        let page = meta.scan(&start, inclusive, 1000).await?;
        let Some(last) = page.last() else { break };
        start = last.path.clone();
        inclusive = false;
        for f in page {
            for v in meta.versions(&f.id, None, usize::MAX).await? {
                let label = format!("{} (version {})", f.path, v.version);
                blobs
                    .entry(v.sha256.clone())
                    .or_insert_with(|| (v.size, Vec::new()))
                    .1
                    .push(label);
            }
            blobs
                .entry(f.sha256.clone())
                .or_insert_with(|| (f.size, Vec::new()))
                .1
                .push(f.path);
        }
    }
    // The trash (expired entries included: until purged their blobs must exist) and the
    // versions of trashed files.
    let mut after: Option<String> = None;
    loop {
        let page = meta.trash_entries("", after.as_deref(), 1000, 0).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.trash_id.clone());
        for e in page {
            for v in meta.versions(&e.file.id, None, usize::MAX).await? {
                let label = format!("{} (trashed, version {})", e.file.path, v.version);
                blobs
                    .entry(v.sha256.clone())
                    .or_insert_with(|| (v.size, Vec::new()))
                    .1
                    .push(label);
            }
            blobs
                .entry(e.file.sha256.clone())
                .or_insert_with(|| (e.file.size, Vec::new()))
                .1
                .push(format!("{} (trashed)", e.file.path));
        }
    }
    Ok(blobs)
}

/// The start-up check a running server makes (cheap, no hashing): files whose blob is
/// missing or has the wrong size. Reported loudly, never repaired. On local disk it stats each
/// blob; in a bucket it lists once (a HEAD per blob would be a million requests for a million
/// blobs) and confirms with a HEAD only what the listing lacks, which may have been committed
/// since.
pub async fn missing_blobs(
    meta: &dyn MetadataStore,
    storage: &BlobStore,
) -> Result<Vec<Damaged>, FsckError> {
    let listed = storage
        .remote_sizes()
        .await
        .map_err(|e| FsckError::Io(std::io::Error::other(e.to_string())))?;
    let mut damaged = Vec::new();
    for (sha, (size, paths)) in blobs_in_use(meta).await? {
        let found = match listed.as_ref().and_then(|l| l.get(&sha)) {
            Some(&len) if len == size => continue,
            _ => storage.stat_blob(&sha).await,
        };
        let problem = match found {
            Ok(None) => "blob missing".to_string(),
            Err(e) => format!("blob unreadable: {e}"),
            Ok(Some(len)) if len != size => format!("blob has {len} bytes, {size} recorded"),
            Ok(Some(_)) => continue,
        };
        for path in paths {
            damaged.push(Damaged {
                path,
                sha256: sha.clone(),
                problem: problem.clone(),
            });
        }
    }
    Ok(damaged)
}

/// Stored blobs whose name is not in `referenced`.
async fn unreferenced_stored(
    storage: &BlobStore,
    referenced: &BTreeSet<&String>,
) -> Result<Vec<String>, FsckError> {
    Ok(storage
        .list_blobs()
        .await
        .map_err(|e| FsckError::Io(std::io::Error::other(e.to_string())))?
        .into_iter()
        .filter(|name| !referenced.contains(name))
        .collect())
}

/// Start-up recovery of blobs a crash left on disk with no metadata at all (renamed into
/// place, then killed before the metadata commit): each is collected under its exclusive
/// lock only if nothing references it by then, so uploads running meanwhile are safe.
pub async fn sweep_orphans(files: &FileService) -> Result<usize, FsckError> {
    let blobs = blobs_in_use(files.metadata().as_ref()).await?;
    let referenced: BTreeSet<&String> = blobs.keys().collect();
    let mut collected = 0;
    for name in unreferenced_stored(files.storage(), &referenced).await? {
        if files.collect_blob(&name).await.map_err(FsckError::Busy)? {
            collected += 1;
        }
    }
    Ok(collected)
}

/// Checks `data_dir`, which no server may be using.
pub async fn run(data_dir: &Path, repair: bool) -> Result<FsckReport, FsckError> {
    if !tokio::fs::try_exists(data_dir.join("meta.db")).await? {
        return Err(FsckError::DataDir(format!(
            "{} is not a VaultFS data directory (no meta.db)",
            data_dir.display()
        )));
    }
    let lock = tokio::fs::OpenOptions::new()
        .write(true)
        .open(data_dir.join("LOCK"))
        .await?
        .into_std()
        .await;
    lock.try_lock().map_err(|_| {
        FsckError::DataDir(format!(
            "{} is in use by a running server; stop it first, or run `vaultfs fsck --server URL` \
             to check it online",
            data_dir.display()
        ))
    })?;
    let meta = SqliteMetadata::open(data_dir, Duration::from_secs(10), 2).await?;
    let result = check(&meta, &BlobStore::at(data_dir), data_dir, None, repair).await;
    meta.close().await;
    result
}

/// Checks the data a running server serves, while it serves it. Each finding is confirmed
/// under the blob's lock, so uploads, deletes and collection in flight are not reported:
/// a blob is hashed under its shared lock only while something still references it, and an
/// unreferenced blob is an orphan only if its reference count is still 0 under its
/// exclusive lock. The metadata audit reads one snapshot. Temporary files belong to uploads
/// in flight and are not counted (a restart sweeps leftovers).
pub async fn run_online(
    files: &FileService,
    data_dir: &Path,
    repair: bool,
) -> Result<FsckReport, ServiceError> {
    Ok(check(
        files.metadata().as_ref(),
        files.storage(),
        data_dir,
        Some(files),
        repair,
    )
    .await?)
}

fn fsck_owner() -> LockOwner {
    LockOwner {
        request_id: "fsck".to_string(),
        operation: "fsck",
    }
}

async fn check(
    meta: &dyn MetadataStore,
    storage: &BlobStore,
    data_dir: &Path,
    online: Option<&FileService>,
    repair: bool,
) -> Result<FsckReport, FsckError> {
    let mut report = FsckReport {
        online: online.is_some(),
        ..FsckReport::default()
    };
    let audit = meta.audit().await?;
    report.events = audit.events;
    report.latest_seq = audit.latest_seq;
    report.versions = audit.versions;
    report.trash_entries = audit.trash;
    let audit_files = audit.files;
    for p in &audit.problems {
        tracing::error!(kind = %p.kind, id = %p.id, path = %p.path, detail = %p.detail,
            "metadata inconsistency");
    }
    report.metadata_problems = audit.problems;

    // Distinct blobs: sha -> (recorded size, the paths that use it).
    let blobs = blobs_in_use(meta).await?;
    report.files = audit_files;
    for (sha, (size, paths)) in &blobs {
        let _shared = match online {
            None => None,
            Some(files) => {
                let guard = files
                    .locks()
                    .acquire(LockRequest::new().blob_shared(sha), fsck_owner())
                    .await
                    .map_err(|e| FsckError::Busy(e.into()))?;
                // Released since the scan (replaced or deleted): nothing to check.
                if meta.blob_refcount(sha).await? == 0 {
                    continue;
                }
                Some(guard)
            }
        };
        let problem = match storage.hash_blob(sha).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("blob missing".to_string()),
            Err(e) => Some(format!("blob unreadable: {e}")),
            Ok((_, len)) if len != *size => Some(format!("blob has {len} bytes, {size} recorded")),
            Ok((actual, len)) => {
                report.bytes_checked += len;
                (actual != *sha).then(|| format!("blob content hashes to {actual}"))
            }
        };
        report.blobs_checked += 1;
        if let Some(problem) = problem {
            tracing::error!(%sha, %problem, "damaged blob");
            for p in paths {
                report.damaged.push(Damaged {
                    path: p.clone(),
                    sha256: sha.clone(),
                    problem: problem.clone(),
                });
            }
        }
    }

    let referenced: BTreeSet<&String> = blobs.keys().collect();
    for name in unreferenced_stored(storage, &referenced).await? {
        match online {
            None => {
                // Staged in an open commit (issue 21): referenced, though no file uses it
                // yet (the audit checks that count against the staged rows).
                if meta.blob_refcount(&name).await? > 0 {
                    continue;
                }
                if repair {
                    storage
                        .delete_blob(&name)
                        .await
                        .map_err(|e| FsckError::Io(std::io::Error::other(e.to_string())))?;
                    meta.forget_blob(&name).await?;
                }
            }
            Some(files) => {
                let orphan = if repair {
                    files.collect_blob(&name).await
                } else {
                    files.is_orphan(&name).await
                };
                // Referenced under its lock: an upload committed it after the scan.
                if !orphan.map_err(FsckError::Busy)? {
                    continue;
                }
            }
        }
        report.orphan_blobs.push(name);
    }
    if online.is_none() {
        for temp in files_in(&data_dir.join("tmp")).await? {
            report.temp_files += 1;
            if repair {
                tokio::fs::remove_file(&temp).await?;
            }
        }
    }
    report.repaired = repair;
    Ok(report)
}
