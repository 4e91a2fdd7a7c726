//! Old versions, the trash, recursive deletes and trash expiry, on [`FileService`].
//!
//! The rules (what a restore or a trash move does to rows, references and the log) are the
//! metadata store's ([`super::metadata::rules`]); this layer adds what they need around
//! them: the principal's prefix, the lock set (the same as an upload's for the paths a
//! change writes), retries after concurrent moves, and collection of released blobs.

use std::time::Duration;

use super::auth::Narrowed;
use super::files::{FileService, RequestCtx};
use super::lock_manager::LockRequest;
use super::metadata::{now_ms, FileMeta, MetadataError, Precondition, TrashEntry};
use super::ServiceError;
use crate::paths::VPath;

/// Most files one recursive delete takes (its lock set names every one).
pub(crate) const MAX_TREE_FILES: usize = 10_000;
/// Trash entries one expiry transaction purges: small, so writers get the store in between.
pub(crate) const EXPIRY_BATCH: usize = 100;
/// How often the background expiry looks for expired entries.
pub(crate) const EXPIRY_EVERY: Duration = Duration::from_millis(500);
/// How many times a tree operation lists and locks again after the tree changed.
const TREE_RETRIES: usize = 8;

/// One version of a file, as `GET /api/v1/files/{id}/versions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileVersion {
    pub(crate) version: i64,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) content_type: String,
    pub(crate) modified_at: String,
    pub(crate) current: bool,
}

/// One page of a file's versions, newest first, and the cursor of the next page (`None`:
/// this is the last page).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VersionPage {
    pub(crate) versions: Vec<FileVersion>,
    pub(crate) next_cursor: Option<String>,
}

/// A trash entry as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrashView {
    pub(crate) trash_id: String,
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) version: i64,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) deleted_at: String,
    pub(crate) expires_at: String,
    pub(crate) batch_id: Option<String>,
}

impl From<&TrashEntry> for TrashView {
    fn from(e: &TrashEntry) -> Self {
        TrashView {
            trash_id: e.trash_id.clone(),
            id: e.file.id.clone(),
            path: e.file.path.clone(),
            version: e.file.version,
            size: e.file.size,
            sha256: e.file.sha256.clone(),
            deleted_at: super::metadata::rfc3339(e.deleted_at_ms),
            expires_at: super::metadata::rfc3339(e.expires_at_ms),
            batch_id: e.batch_id.clone(),
        }
    }
}

/// One page of trash entries (ordered by trash id) and the cursor of the next page
/// (`None`: this is the last page).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrashPage {
    pub(crate) entries: Vec<TrashView>,
    pub(crate) next_cursor: Option<String>,
}

/// What a recursive delete did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TreeDeleted {
    pub(crate) files: Vec<FileMeta>,
    /// Null when the files went for good (permanent, or no trash for the prefix).
    pub batch_id: Option<String>,
}

fn version_of(meta: &FileMeta, current: bool) -> FileVersion {
    FileVersion {
        version: meta.version,
        size: meta.size,
        sha256: meta.sha256.clone(),
        content_type: meta.content_type.clone(),
        modified_at: meta.modified_at.clone(),
        current,
    }
}

fn not_found() -> ServiceError {
    ServiceError::Metadata(MetadataError::NotFound)
}

impl FileService {
    /// The versions of file `id`, newest first: the current one, then the old ones kept.
    /// `cursor` is the `next_cursor` of the previous page.
    pub async fn versions(
        &self,
        id: &str,
        cursor: Option<&str>,
        limit: usize,
        ctx: &RequestCtx,
    ) -> Result<VersionPage, ServiceError> {
        let current = self.meta_by_id(id, ctx).await?;
        let limit = limit.clamp(1, super::files::MAX_LIST_LIMIT);
        let before = match cursor {
            None => None,
            Some(c) => Some(c.parse::<i64>().map_err(|_| ServiceError::InvalidCursor)?),
        };
        let mut versions = Vec::with_capacity(limit);
        if before.is_none_or(|b| b > current.version) {
            versions.push(version_of(&current, true));
        }
        let below = before.map_or(current.version, |b| b.min(current.version));
        let old = self
            .metadata()
            .versions(id, Some(below), limit + 1 - versions.len())
            .await?;
        versions.extend(old.iter().map(|v| version_of(v, false)));
        let next_cursor = if versions.len() > limit {
            versions.truncate(limit);
            versions.last().map(|v| v.version.to_string())
        } else {
            None
        };
        Ok(VersionPage {
            versions,
            next_cursor,
        })
    }

    /// Version `version` of file `id` as a [`FileMeta`] (path and id of the file), for
    /// serving its content.
    pub async fn version_meta(
        &self,
        id: &str,
        version: i64,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        let current = self.meta_by_id(id, ctx).await?;
        if version == current.version {
            return Ok(current);
        }
        let mut rows = self
            .metadata()
            .versions(id, version.checked_add(1), 1)
            .await?;
        match rows.pop() {
            Some(old) if old.version == version => Ok(FileMeta {
                path: current.path,
                created_at: current.created_at,
                ..old
            }),
            _ => Err(not_found()),
        }
    }

    /// Makes version `version` of file `id` current again, as a new version sharing its
    /// blob, under an upload's locks and preconditions.
    pub async fn restore_version(
        &self,
        id: &str,
        version: i64,
        precondition: &Precondition,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        let outcome = self
            .with_current_path(id, ctx, |service, path| async move {
                let request = LockRequest::new().write_path(&path);
                let _guard = service
                    .locks()
                    .acquire(request, ctx.owner("restore"))
                    .await?;
                Ok(service
                    .metadata()
                    .restore_version(id, path.as_str(), version, precondition)
                    .await?)
            })
            .await?;
        Ok(self.finish_change(outcome))
    }

    /// Deletes file `id` for good, bypassing the trash (the caller checked that the server
    /// allows it).
    pub async fn delete_permanently(
        &self,
        id: &str,
        precondition: &Precondition,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        let outcome = self
            .with_current_path(id, ctx, |service, path| async move {
                let request = LockRequest::new().write_path(&path);
                let _guard = service
                    .locks()
                    .acquire(request, ctx.owner("delete"))
                    .await?;
                Ok(service
                    .metadata()
                    .delete_permanently(id, path.as_str(), precondition)
                    .await?)
            })
            .await?;
        Ok(self.finish_change(outcome))
    }

    /// Deletes every file under `prefix` (ending in `/`) in one transaction: to the trash
    /// with one batch id, or for good when `permanent`. The files are listed and all their
    /// paths locked; should the tree change before the transaction, it is done again.
    pub async fn delete_tree(
        &self,
        prefix: &str,
        permanent: bool,
        ctx: &RequestCtx,
    ) -> Result<TreeDeleted, ServiceError> {
        ctx.check(prefix)?;
        for _ in 0..TREE_RETRIES {
            let files = self.files_under(prefix).await?;
            if files.is_empty() {
                return Err(not_found());
            }
            let mut request = LockRequest::new();
            let mut ids = Vec::with_capacity(files.len());
            for f in &files {
                let path = VPath::parse(&f.path).map_err(|e| {
                    MetadataError::Backend(format!("stored path {:?} is invalid: {e}", f.path))
                })?;
                request = request.write_path(&path);
                ids.push(f.id.clone());
            }
            let batch_id = uuid::Uuid::new_v4().simple().to_string();
            let result = {
                let _guard = self.locks().acquire(request, ctx.owner("rm -r")).await?;
                self.metadata()
                    .delete_tree(prefix, &ids, &batch_id, permanent)
                    .await
            };
            match result {
                Err(MetadataError::PathChanged) => continue,
                Err(e) => return Err(e.into()),
                Ok(outcome) => {
                    self.notifier().poke();
                    for sha in outcome.released {
                        self.spawn_collect(sha);
                    }
                    let batch = self.metadata().trash_batch(&batch_id).await?;
                    return Ok(TreeDeleted {
                        files: outcome.files,
                        batch_id: (!batch.is_empty()).then_some(batch_id),
                    });
                }
            }
        }
        Err(ServiceError::Contended)
    }

    /// Files under `prefix`, at most [`MAX_TREE_FILES`] (more: `TreeTooLarge`)).
    async fn files_under(&self, prefix: &str) -> Result<Vec<FileMeta>, ServiceError> {
        let mut files: Vec<FileMeta> = Vec::new();
        let (mut key, mut inclusive) = (prefix.to_string(), true);
        loop {
            let rows = self.metadata().scan(&key, inclusive, 1000).await?;
            let full = rows.len() == 1000;
            for row in rows {
                if !row.path.starts_with(prefix) {
                    return Ok(files);
                }
                key = row.path.clone();
                inclusive = false;
                files.push(row);
            }
            if files.len() > MAX_TREE_FILES {
                return Err(ServiceError::TreeTooLarge(MAX_TREE_FILES));
            }
            if !full {
                return Ok(files);
            }
        }
    }

    /// Trash entries under `prefix` that the principal may see, oldest first.
    pub async fn trash_list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
        ctx: &RequestCtx,
    ) -> Result<TrashPage, ServiceError> {
        let scope = match ctx.principal.narrow(prefix) {
            Narrowed::Unchanged => prefix.to_string(),
            Narrowed::To(scope) => scope,
            Narrowed::Disjoint => return Err(ServiceError::Forbidden),
        };
        let limit = limit.clamp(1, super::files::MAX_LIST_LIMIT);
        let mut rows = self
            .metadata()
            .trash_entries(&scope, cursor, limit + 1, now_ms())
            .await?;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|e| e.trash_id.clone())
        } else {
            None
        };
        Ok(TrashPage {
            entries: rows.iter().map(TrashView::from).collect(),
            next_cursor,
        })
    }

    /// An unexpired entry; `Forbidden` when the principal may not touch its path (as for a
    /// file addressed by id).
    async fn visible_entry(
        &self,
        trash_id: &str,
        ctx: &RequestCtx,
    ) -> Result<TrashEntry, ServiceError> {
        match self.metadata().trash_entry(trash_id).await? {
            Some(e) if e.expires_at_ms > now_ms() => {
                ctx.check(&e.file.path)?;
                Ok(e)
            }
            _ => Err(not_found()),
        }
    }

    /// Puts a trashed file back at `to` or its old path (same id, same versions).
    pub async fn trash_restore(
        &self,
        trash_id: &str,
        to: Option<&VPath>,
        overwrite: bool,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        let entry = self.visible_entry(trash_id, ctx).await?;
        let target = match to {
            Some(p) => p.clone(),
            None => VPath::parse(&entry.file.path).map_err(|e| {
                MetadataError::Backend(format!("stored path {:?} is invalid: {e}", entry.file.path))
            })?,
        };
        ctx.check(target.as_str())?;
        let outcome = {
            let request = LockRequest::new().write_path(&target);
            let _guard = self.locks().acquire(request, ctx.owner("restore")).await?;
            self.metadata()
                .restore_trash(trash_id, to.map(VPath::as_str), overwrite)
                .await?
        };
        Ok(self.finish_change(outcome))
    }

    /// Restores every entry of a recursive delete at its old path, in one transaction.
    pub async fn trash_restore_batch(
        &self,
        batch_id: &str,
        ctx: &RequestCtx,
    ) -> Result<Vec<FileMeta>, ServiceError> {
        let now = now_ms();
        let entries: Vec<TrashEntry> = self
            .metadata()
            .trash_batch(batch_id)
            .await?
            .into_iter()
            .filter(|e| e.expires_at_ms > now)
            .collect();
        if entries.is_empty() {
            return Err(not_found());
        }
        if !entries
            .iter()
            .all(|e| ctx.principal.may_touch(&e.file.path))
        {
            return Err(ServiceError::Forbidden);
        }
        let mut request = LockRequest::new();
        for e in &entries {
            let path = VPath::parse(&e.file.path).map_err(|err| {
                MetadataError::Backend(format!("stored path {:?} is invalid: {err}", e.file.path))
            })?;
            request = request.write_path(&path);
        }
        let outcome = {
            let _guard = self.locks().acquire(request, ctx.owner("restore")).await?;
            self.metadata().restore_batch(batch_id).await?
        };
        self.notifier().poke();
        for sha in outcome.released {
            self.spawn_collect(sha);
        }
        Ok(outcome.files)
    }

    /// Removes a trash entry for good; its blobs are collected when nothing else uses them.
    pub async fn trash_purge(&self, trash_id: &str, ctx: &RequestCtx) -> Result<(), ServiceError> {
        self.visible_entry(trash_id, ctx).await?;
        for sha in self.metadata().purge_trash(trash_id).await? {
            self.spawn_collect(sha);
        }
        Ok(())
    }

    /// Purges expired trash entries in transactions of [`EXPIRY_BATCH`], collecting their
    /// blobs between batches (each under its own lock, none held across a batch). Returns
    /// how many entries went.
    pub async fn expire_trash(&self) -> Result<usize, ServiceError> {
        let mut total = 0;
        loop {
            let (n, released) = self.metadata().expire_trash(now_ms(), EXPIRY_BATCH).await?;
            total += n;
            for sha in released {
                if let Err(e) = self.collect_blob(&sha).await {
                    tracing::warn!(sha256 = sha, error = %e, "collecting an expired blob failed");
                }
            }
            if n < EXPIRY_BATCH {
                return Ok(total);
            }
        }
    }

    /// Sets `vaultfs_trash_entries`, `vaultfs_trash_bytes` and `vaultfs_versions_retained`.
    pub async fn update_retention_metrics(&self) -> Result<(), ServiceError> {
        let stats = self.metadata().retention_stats().await?;
        metrics::gauge!("vaultfs_trash_entries").set(stats.trash_entries as f64);
        metrics::gauge!("vaultfs_trash_bytes").set(stats.trash_bytes as f64);
        metrics::gauge!("vaultfs_versions_retained").set(stats.versions_retained as f64);
        Ok(())
    }

    /// The background expiry: every [`EXPIRY_EVERY`], until shutdown.
    pub fn spawn_trash_expiry(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let service = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        match service.expire_trash().await {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(expired = n, "expired trash entries"),
                            Err(e) => tracing::warn!(error = %e, "trash expiry failed; retrying"),
                        }
                        if let Err(e) = service.update_retention_metrics().await {
                            tracing::debug!(error = %e, "retention metrics not updated");
                        }
                    }
                    () = super::notification::until_true(&mut shutdown) => return,
                }
            }
        });
    }
}
