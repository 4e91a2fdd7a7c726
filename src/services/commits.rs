//! Commits (atomic multi-file publishes) and leases with fencing tokens (issue 21), as file
//! operations: the locks, blobs and metadata calls around the rules in
//! `metadata/rules/commits.rs`.
//!
//! - Staging (`stage_into_commit`, reached from the upload pipeline): the staged blobs are
//!   moved into the store under a shared lock on each blob (and its fence across replicas),
//!   and referenced by the commit's rows in one transaction; no path is locked and nothing
//!   becomes visible.
//! - Finish: ONE lock set (every staged path and every `delete` path exclusive, the
//!   `replace_prefix` exclusive with its parents shared), taken in canonical order with the
//!   lock deadline, then ONE metadata transaction. A path staged after the set was read is
//!   caught in the transaction and the finish locks again.
//! - Abort and expiry drop the staged references and collect what nothing else uses;
//!   [`spawn_commit_expiry`] runs the expiry every second.

use std::time::Duration;

use super::files::{FileService, RequestCtx, StagedFile};
use super::lock_manager::{LockKey, LockMode, LockRequest};
use super::metadata::commits::{
    AtomicDone, AtomicOp, CommitRecord, FinishOutcome, FinishRequest, Lease, StagedEntry,
};
use super::metadata::MetadataError;
use super::ServiceError;
use crate::paths::VPath;

/// Default number of files one commit may hold.
// Unreferenced: `Config::default` spells the same 10_000 (config may not import services).
#[allow(dead_code)]
pub(crate) const DEFAULT_COMMIT_MAX_FILES: usize = 10_000;
/// Default ttl of an unfinished commit.
pub(crate) const DEFAULT_COMMIT_TTL: Duration = Duration::from_secs(3600);
/// Longest ttl of a commit or a lease.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often expired commits are collected, and how many per transaction.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);
const EXPIRY_BATCH: i64 = 100;
/// How many times a finish locks again when files were staged meanwhile.
const FINISH_RETRIES: usize = 8;

fn unexpected() -> ServiceError {
    MetadataError::Backend("a commit operation answered the wrong outcome".into()).into()
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.min(MAX_TTL).as_millis()).unwrap_or(i64::MAX)
}

/// A lease path: a file path, or a prefix ending in `/`.
pub(crate) fn parse_lease_path(raw: &str) -> Result<String, crate::paths::PathError> {
    if raw.ends_with('/') {
        crate::paths::validate_prefix(raw)
    } else {
        Ok(VPath::parse(raw)?.into_string())
    }
}

/// The finish of a commit, as the client asked for it.
#[derive(Debug, Clone, Default)]
pub struct FinishOptions {
    pub expect: Option<Vec<(String, String)>>,
    pub delete: Vec<VPath>,
    /// A prefix ending in `/`.
    pub replace_prefix: Option<String>,
    pub if_unchanged_since: Option<i64>,
}

impl FileService {
    /// A new commit, or with a known `idempotency_key` the one made before (`false`).
    pub async fn create_commit(
        &self,
        idempotency_key: Option<String>,
        ttl: Duration,
    ) -> Result<(CommitRecord, bool), ServiceError> {
        let op = AtomicOp::CreateCommit {
            id: uuid::Uuid::new_v4().simple().to_string(),
            idempotency_key,
            ttl_ms: ttl_ms(ttl),
        };
        match self.metadata().atomic(op).await? {
            AtomicDone::Commit(commit, created) => Ok((commit, created)),
            _ => Err(unexpected()),
        }
    }

    /// The commit and its staged files.
    pub async fn commit_status(
        &self,
        commit_id: &str,
    ) -> Result<(CommitRecord, Vec<StagedEntry>), ServiceError> {
        let op = AtomicOp::Get {
            commit_id: commit_id.to_string(),
        };
        match self.metadata().atomic(op).await? {
            AtomicDone::Staged { commit, files, .. } => Ok((commit, files)),
            _ => Err(unexpected()),
        }
    }

    /// Moves verified staged uploads into the blob store and records them in the commit,
    /// invisible until its finish. Called by the upload pipeline (`services::upload`).
    pub(crate) async fn stage_into_commit(
        &self,
        ctx: &RequestCtx,
        commit_id: &str,
        files: Vec<StagedFile>,
        max_files: usize,
    ) -> Result<Vec<StagedEntry>, ServiceError> {
        let mut request = LockRequest::new();
        let mut shas: Vec<String> = Vec::with_capacity(files.len());
        for file in &files {
            ctx.check(file.path.as_str())?;
            request = request.blob_shared(&file.staged.blob.sha256);
            shas.push(file.staged.blob.sha256.clone());
        }
        shas.sort();
        shas.dedup();
        let result = {
            let _guard = self
                .locks()
                .acquire(request, ctx.owner("commit_stage"))
                .await?;
            let mut fences = Vec::with_capacity(shas.len());
            for sha in &shas {
                fences.push(self.metadata().fence_blob(sha, false).await?);
            }
            let mut entries = Vec::with_capacity(files.len());
            for file in files {
                let path = file.path.as_str().to_string();
                match self.storage().commit(file.staged).await {
                    Ok(blob) => entries.push(StagedEntry {
                        path,
                        size: blob.size,
                        sha256: blob.sha256,
                        content_type: file.content_type,
                        s3: file.s3,
                    }),
                    Err(e) => {
                        drop(fences);
                        for sha in shas {
                            self.spawn_collect(sha);
                        }
                        return Err(e.into());
                    }
                }
            }
            let op = AtomicOp::Stage {
                commit_id: commit_id.to_string(),
                entries,
                max_files,
            };
            self.metadata().atomic(op).await
        };
        match result {
            Ok(AtomicDone::Staged {
                files, released, ..
            }) => {
                for sha in released {
                    self.spawn_collect(sha);
                }
                Ok(files)
            }
            Ok(_) => Err(unexpected()),
            Err(e) => {
                for sha in shas {
                    self.spawn_collect(sha);
                }
                Err(e.into())
            }
        }
    }

    /// Makes the commit visible, with its deletions, in one lock set and one transaction.
    /// A finished commit answers its first result again.
    pub async fn finish_commit(
        &self,
        ctx: &RequestCtx,
        commit_id: &str,
        options: FinishOptions,
    ) -> Result<FinishOutcome, ServiceError> {
        for path in &options.delete {
            ctx.check(path.as_str())?;
        }
        if let Some(prefix) = &options.replace_prefix {
            ctx.check(prefix)?;
        }
        for _ in 0..FINISH_RETRIES {
            let (commit, staged) = self.commit_status(commit_id).await?;
            if let Some(done) = commit.finished() {
                return Ok(done);
            }
            let mut request = LockRequest::new();
            let mut locked = Vec::with_capacity(staged.len());
            for entry in &staged {
                ctx.check(&entry.path)?;
                let path = VPath::parse(&entry.path).map_err(|_| unexpected())?;
                request = request.write_path(&path);
                locked.push(entry.path.clone());
            }
            for path in &options.delete {
                request = request.write_path(path);
            }
            if let Some(prefix) = &options.replace_prefix {
                for (i, _) in prefix.match_indices('/') {
                    let mode = if i + 1 == prefix.len() {
                        LockMode::Exclusive
                    } else {
                        LockMode::Shared
                    };
                    request = request.add(LockKey::Path(prefix[..=i].to_string()), mode);
                }
            }
            let op = AtomicOp::Finish(FinishRequest {
                commit_id: commit_id.to_string(),
                expect: options.expect.clone(),
                delete: options
                    .delete
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect(),
                replace_prefix: options.replace_prefix.clone(),
                if_unchanged_since: options.if_unchanged_since,
                locked,
            });
            let result = {
                let _guard = self
                    .locks()
                    .acquire(request, ctx.owner("commit_finish"))
                    .await?;
                crate::faults::check(crate::faults::Point::BeforeMetadataCommit)
                    .map_err(|e| MetadataError::Backend(e.to_string()))?;
                self.metadata().atomic(op).await
            };
            match result {
                Err(MetadataError::PathChanged) => continue,
                Err(e) => return Err(e.into()),
                Ok(AtomicDone::Finished { outcome, released }) => {
                    self.notifier().poke();
                    for sha in released {
                        self.spawn_collect(sha);
                    }
                    return Ok(outcome);
                }
                Ok(_) => return Err(unexpected()),
            }
        }
        Err(ServiceError::Contended)
    }

    /// Aborts an open commit; its staged content is collected.
    pub async fn abort_commit(&self, commit_id: &str) -> Result<(), ServiceError> {
        let op = AtomicOp::Abort {
            commit_id: commit_id.to_string(),
        };
        match self.metadata().atomic(op).await? {
            AtomicDone::Released(_, released) => {
                for sha in released {
                    self.spawn_collect(sha);
                }
                Ok(())
            }
            _ => Err(unexpected()),
        }
    }

    /// Ends every open commit whose ttl passed, collecting their staged content; how many.
    pub async fn expire_commits(&self) -> Result<usize, ServiceError> {
        let mut total = 0;
        loop {
            let op = AtomicOp::ExpireCommits {
                limit: EXPIRY_BATCH,
            };
            let (n, released) = match self.metadata().atomic(op).await? {
                AtomicDone::Released(n, released) => (n, released),
                _ => return Err(unexpected()),
            };
            for sha in released {
                self.spawn_collect(sha);
            }
            total += n;
            if i64::try_from(n).unwrap_or(0) < EXPIRY_BATCH {
                return Ok(total);
            }
        }
    }

    /// Takes the lease on `path` (a file or a prefix ending in `/`) for `ttl`.
    pub async fn acquire_lease(
        &self,
        ctx: &RequestCtx,
        path: &str,
        ttl: Duration,
    ) -> Result<Lease, ServiceError> {
        ctx.check(path)?;
        let op = AtomicOp::AcquireLease {
            lease_id: uuid::Uuid::new_v4().simple().to_string(),
            path: path.to_string(),
            ttl_ms: ttl_ms(ttl),
        };
        match self.metadata().atomic(op).await? {
            AtomicDone::Lease(lease) => Ok(lease),
            _ => Err(unexpected()),
        }
    }

    /// Extends a live lease by `ttl` from now (`LeaseExpired` once it lapsed).
    pub async fn renew_lease(&self, lease_id: &str, ttl: Duration) -> Result<Lease, ServiceError> {
        let op = AtomicOp::RenewLease {
            lease_id: lease_id.to_string(),
            ttl_ms: ttl_ms(ttl),
        };
        match self.metadata().atomic(op).await? {
            AtomicDone::Lease(lease) => Ok(lease),
            _ => Err(unexpected()),
        }
    }

    pub(crate) async fn release_lease(&self, lease_id: &str) -> Result<(), ServiceError> {
        let op = AtomicOp::ReleaseLease {
            lease_id: lease_id.to_string(),
        };
        match self.metadata().atomic(op).await? {
            AtomicDone::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    /// The live leases, by path.
    pub async fn leases(&self) -> Result<Vec<Lease>, ServiceError> {
        match self.metadata().atomic(AtomicOp::Leases).await? {
            AtomicDone::Leases(leases) => Ok(leases),
            _ => Err(unexpected()),
        }
    }
}

/// Collects expired commits every second until shutdown.
pub(crate) fn spawn_commit_expiry(
    files: FileService,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match files.expire_commits().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(commits = n, "expired commits collected"),
                        Err(e) => tracing::warn!(error = %e, "commit expiry failed; retrying"),
                    }
                }
                () = super::notification::until_true(&mut shutdown) => return,
            }
        }
    });
}
