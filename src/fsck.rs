//! `vaultfs fsck`: an offline check of a data directory.
//!
//! Every file's blob must exist under `blobs/<aa>/<sha256>` with the recorded size and
//! SHA-256 (each distinct blob is re-hashed); blobs no file references are orphans; files in
//! `tmp/` are leftovers of interrupted uploads. `--repair` removes orphans and leftovers only:
//! a missing or corrupt blob is reported, never "repaired" into other content.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::services::metadata::{MetadataError, MetadataStore};
use crate::services::metadata_sqlite::SqliteMetadata;

#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    #[error("{0}")]
    DataDir(String),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A file whose content is damaged.
#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub path: String,
    pub sha256: String,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub files: u64,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Files whose blob is missing, has the wrong size or the wrong SHA-256.
    pub damaged: Vec<Damaged>,
    /// Blobs no file references (removed with `--repair`).
    pub orphan_blobs: Vec<String>,
    /// Leftover temporary upload files (removed with `--repair`).
    pub temp_files: u64,
    pub repaired: bool,
}

impl FsckReport {
    /// Damage that `--repair` cannot and must not fix.
    pub fn is_damaged(&self) -> bool {
        !self.damaged.is_empty()
    }

    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
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
            blobs
                .entry(f.sha256.clone())
                .or_insert_with(|| (f.size, Vec::new()))
                .1
                .push(f.path);
        }
    }
    Ok(blobs)
}

fn blob_file(data_dir: &Path, sha: &str) -> PathBuf {
    data_dir
        .join("blobs")
        .join(sha.get(..2).unwrap_or("00"))
        .join(sha)
}

/// The start-up check a running server makes (cheap: a `stat` per blob, no hashing): files
/// whose blob is missing or has the wrong size. Reported loudly, never repaired.
pub async fn missing_blobs(
    meta: &dyn MetadataStore,
    data_dir: &Path,
) -> Result<Vec<Damaged>, FsckError> {
    let mut damaged = Vec::new();
    for (sha, (size, paths)) in blobs_in_use(meta).await? {
        let problem = match tokio::fs::metadata(blob_file(data_dir, &sha)).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "blob missing".to_string(),
            Err(e) => format!("blob unreadable: {e}"),
            Ok(m) if m.len() != size => format!("blob has {} bytes, {size} recorded", m.len()),
            Ok(_) => continue,
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
            "{} is in use by a running server; stop it first",
            data_dir.display()
        ))
    })?;

    let meta = SqliteMetadata::open(data_dir, Duration::from_secs(10), 2).await?;
    let mut report = FsckReport::default();
    // Distinct blobs: sha -> (recorded size, the paths that use it).
    let blobs = blobs_in_use(&meta).await?;
    report.files = blobs.values().map(|(_, paths)| paths.len() as u64).sum();

    let blob_dir = data_dir.join("blobs");
    for (sha, (size, paths)) in &blobs {
        let problem = match crate::services::storage::hash_file(blob_file(data_dir, sha)).await {
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
    for fan in files_in(&blob_dir).await? {
        for blob in files_in(&fan).await? {
            let name = blob
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !referenced.contains(&name) {
                if repair {
                    tokio::fs::remove_file(&blob).await?;
                    meta.forget_blob(&name).await?;
                }
                report.orphan_blobs.push(name);
            }
        }
    }
    for temp in files_in(&data_dir.join("tmp")).await? {
        report.temp_files += 1;
        if repair {
            tokio::fs::remove_file(&temp).await?;
        }
    }
    report.repaired = repair;
    meta.close().await;
    Ok(report)
}
