//! File operations: the rules that combine locks, blobs and metadata.
//!
//! Lock discipline (docs/CONCURRENCY.md): every mutating operation names its whole lock set
//! to the [`LockManager`] at once and holds it only around the short commit (blob rename +
//! metadata transaction), never while a request body streams in. Operations addressed by id
//! read the file's path first, lock it, and let the metadata transaction verify that the path
//! is unchanged ([`MetadataError::PathChanged`] -> retry).

use std::sync::Arc;

use super::auth::Principal;
use super::lock_manager::{LockManager, LockOwner, LockRequest};
use super::metadata::{
    ChangeOutcome, FileMeta, ListSort, MetadataError, MetadataStore, Precondition, PutOutcome,
    PutRequest, S3ObjectRow,
};
use super::notification::Notifier;
use super::storage::{BlobStore, BlobWriter, StagedBlob};
use super::upload::BodyLimits;
use super::ServiceError;
use crate::faults::Point;
use crate::paths::VPath;

mod by_path;
mod collect;
mod list;

/// How many times an id-addressed operation re-reads the path after a concurrent move.
const PATH_RETRIES: usize = 8;
/// Largest page of a listing.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Who asked, carried into lock introspection and logs.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub(crate) request_id: String,
    /// What the request may touch; every path an operation reads or writes is checked.
    pub principal: Principal,
}

impl RequestCtx {
    /// A context with full access, for in-process callers (start-up tasks, tests).
    pub fn internal(request_id: impl Into<String>) -> Self {
        RequestCtx {
            request_id: request_id.into(),
            principal: Principal::open(),
        }
    }

    /// `Forbidden` unless the principal may touch `path`.
    pub fn check(&self, path: &str) -> Result<(), ServiceError> {
        if self.principal.may_touch(path) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden)
        }
    }

    pub(crate) fn owner(&self, operation: &'static str) -> LockOwner {
        LockOwner {
            request_id: self.request_id.clone(),
            operation,
        }
    }
}

/// A fully received, verified upload waiting for its commit.
#[derive(Debug)]
pub struct StagedFile {
    pub(crate) path: VPath,
    pub(crate) staged: StagedBlob,
    pub(crate) content_type: String,
    pub(crate) precondition: Precondition,
    /// The S3 record committed with the version (S3 writes only).
    pub s3: Option<S3ObjectRow>,
}

/// How [`FilesService::list_sorted`] orders and filters.
#[derive(Debug, Clone, Copy)]
pub struct ListOrder<'a> {
    pub(crate) sort: ListSort,
    pub(crate) desc: bool,
    /// Keep names containing this (`None`: all).
    pub filter: Option<&'a str>,
}

/// One page of a listing: the files and (with a delimiter) the rolled-up folder prefixes,
/// and the cursor of the next page (`None`: this is the last page).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListPage {
    pub(crate) entries: Vec<FileMeta>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) next_cursor: Option<String>,
}

/// Declared lengths up to this make a "small" upload, which may also take the reserved
/// slots. Larger ones, and uploads of unknown length (chunked), are "large".
pub(crate) const SMALL_UPLOAD: u64 = 1 << 20;

/// The share of the slots only small uploads may take: a quarter (none below 4 slots).
fn reserved_slots(slots: usize) -> usize {
    slots / 4
}

/// Which admission class an upload of `declared` bytes (its `Content-Length`) falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadClass {
    /// Declared length up to [`SMALL_UPLOAD`]: any free slot, reserved ones first.
    Small,
    /// Longer or unknown: only the shared slots.
    Large,
}

impl UploadClass {
    pub(crate) fn of(declared: Option<u64>) -> Self {
        match declared {
            Some(len) if len <= SMALL_UPLOAD => UploadClass::Small,
            _ => UploadClass::Large,
        }
    }

    fn label(self) -> &'static str {
        match self {
            UploadClass::Small => "small",
            UploadClass::Large => "large",
        }
    }
}

/// Admission control for uploads: at most `slots` stream at once; others wait, bounded in
/// number and time. The waiting requests' bodies are not read, so TCP back-pressure holds
/// their clients and the server's memory stays bounded by `slots`.
///
/// Size-aware: a quarter of the slots ([`reserved_slots`]) is reserved for small uploads
/// ([`UploadClass`]), so a flood of large uploads, which hold a slot for seconds, never
/// leaves a 4 KiB upload waiting behind them. Large uploads queue only for the shared
/// slots; small ones take a reserved slot first, else a shared one, else wait for
/// whichever frees first. Each class's queue is bounded by `max_waiting` and the wait by
/// `timeout`.
#[derive(Debug)]
pub struct UploadGate {
    /// Slots any upload may take.
    shared: Arc<tokio::sync::Semaphore>,
    /// Slots only small uploads take.
    reserved: Arc<tokio::sync::Semaphore>,
    waiting_small: std::sync::atomic::AtomicUsize,
    waiting_large: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    timeout: std::time::Duration,
}

/// An admitted upload; frees its slot on drop.
#[derive(Debug)]
pub struct UploadPermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _in_flight: crate::metrics::InFlight,
}

impl UploadPermit {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        UploadPermit {
            _permit: permit,
            _in_flight: crate::metrics::InFlight::new("vaultfs_uploads_in_flight"),
        }
    }
}

impl UploadGate {
    /// A gate of `slots` concurrent uploads (at least 1; a quarter of them reserved for small
    /// uploads), with at most `max_waiting` queued per class, each for at most `timeout`.
    pub fn new(slots: usize, max_waiting: usize, timeout: std::time::Duration) -> Self {
        let slots = slots.max(1);
        let reserved = reserved_slots(slots);
        UploadGate {
            shared: Arc::new(tokio::sync::Semaphore::new(slots - reserved)),
            reserved: Arc::new(tokio::sync::Semaphore::new(reserved)),
            waiting_small: std::sync::atomic::AtomicUsize::new(0),
            waiting_large: std::sync::atomic::AtomicUsize::new(0),
            max_waiting,
            timeout,
        }
    }

    /// Admits an upload of unknown length (the large class).
    pub async fn admit(&self) -> Result<UploadPermit, ServiceError> {
        self.admit_class(UploadClass::Large).await
    }

    /// Admits an upload of `class`: a slot at once, or a bounded wait for one.
    pub(crate) async fn admit_class(
        &self,
        class: UploadClass,
    ) -> Result<UploadPermit, ServiceError> {
        use std::sync::atomic::Ordering;
        let small = class == UploadClass::Small;
        if small {
            if let Ok(p) = Arc::clone(&self.reserved).try_acquire_owned() {
                return Ok(UploadPermit::new(p));
            }
        }
        if let Ok(p) = Arc::clone(&self.shared).try_acquire_owned() {
            return Ok(UploadPermit::new(p));
        }
        let waiting = if small {
            &self.waiting_small
        } else {
            &self.waiting_large
        };
        if waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
            waiting.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("vaultfs_uploads_rejected_total", "reason" => "queue_full", "class" => class.label())
                .increment(1);
            return Err(ServiceError::Overloaded);
        }
        let shared = Arc::clone(&self.shared).acquire_owned();
        let r = if small {
            // Whichever frees first; the other wait is dropped, which leaves its queue
            // (tokio's acquire is cancel-safe).
            let reserved = Arc::clone(&self.reserved).acquire_owned();
            tokio::time::timeout(self.timeout, async {
                tokio::select! {
                    p = reserved => p,
                    p = shared => p,
                }
            })
            .await
        } else {
            tokio::time::timeout(self.timeout, shared).await
        };
        waiting.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(Ok(p)) => Ok(UploadPermit::new(p)),
            // Timed out, or the semaphore was closed (never done): overloaded either way.
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("vaultfs_uploads_rejected_total", "reason" => "queue_timeout", "class" => class.label())
                    .increment(1);
                Err(ServiceError::Overloaded)
            }
        }
    }

    /// How many uploads wait for a slot and how many slots are free, now.
    pub fn stats(&self) -> UploadGateStats {
        use std::sync::atomic::Ordering;
        UploadGateStats {
            waiting: self.waiting_small.load(Ordering::Relaxed)
                + self.waiting_large.load(Ordering::Relaxed),
            free_slots: self.shared.available_permits() + self.reserved.available_permits(),
        }
    }
}

/// A snapshot of the [`UploadGate`]'s occupancy.
#[derive(Debug, Clone, Copy)]
pub struct UploadGateStats {
    /// Uploads queued for a slot, small and large together.
    pub waiting: usize,
    /// Slots free now, shared and reserved together.
    pub free_slots: usize,
}

/// The file operations (upload and commit, read, list, move, copy, delete) over the blob
/// store, the metadata store and the lock manager. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct FileService {
    storage: BlobStore,
    meta: Arc<dyn MetadataStore>,
    locks: LockManager,
    notifier: Notifier,
    max_upload_size: u64,
    uploads: Arc<UploadGate>,
    body_limits: BodyLimits,
}

impl std::fmt::Debug for FileService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileService")
            .field("storage", &self.storage)
            .field("max_upload_size", &self.max_upload_size)
            .finish_non_exhaustive()
    }
}

impl FileService {
    pub(crate) fn new(
        storage: BlobStore,
        meta: Arc<dyn MetadataStore>,
        locks: LockManager,
        notifier: Notifier,
        max_upload_size: u64,
        uploads: UploadGate,
    ) -> Self {
        FileService {
            storage,
            meta,
            locks,
            notifier,
            max_upload_size,
            uploads: Arc::new(uploads),
            body_limits: BodyLimits::default(),
        }
    }

    /// The deadlines upload bodies are held to (defaults: the configuration's defaults).
    pub fn with_body_limits(mut self, limits: BodyLimits) -> Self {
        self.body_limits = limits;
        self
    }

    pub(crate) fn body_limits(&self) -> BodyLimits {
        self.body_limits
    }

    /// Waits for an upload slot (bounded), or answers [`ServiceError::Overloaded`].
    /// Front ends write through [`FileService::upload`] or [`FileService::begin_batch`],
    /// which admit themselves; this is for callers composing the steps by hand (tests).
    pub async fn admit_upload(&self) -> Result<UploadPermit, ServiceError> {
        self.uploads.admit().await
    }

    /// [`FileService::admit_upload`] in the class of the declared length ([`UploadClass`]):
    /// small uploads have slots of their own.
    pub(crate) async fn admit_upload_sized(
        &self,
        declared: Option<u64>,
    ) -> Result<UploadPermit, ServiceError> {
        self.uploads.admit_class(UploadClass::of(declared)).await
    }

    /// The upload gate's queue length and free slots (introspection).
    pub fn upload_gate_stats(&self) -> UploadGateStats {
        self.uploads.stats()
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    pub(crate) fn locks(&self) -> &LockManager {
        &self.locks
    }

    pub(crate) fn storage(&self) -> &BlobStore {
        &self.storage
    }

    /// The lock sets held or waited for now, with their holders and ages (introspection).
    pub fn lock_holders(&self) -> Vec<super::lock_manager::HolderView> {
        self.locks.holders()
    }

    /// The lock manager's counters (acquired, contended, timed out, sets held or waiting).
    pub fn lock_stats(&self) -> super::lock_manager::LockStats {
        self.locks.stats()
    }

    /// Whether the blob store answers (readiness).
    pub async fn check_blobs(&self) -> Result<(), ServiceError> {
        Ok(self.storage.check().await?)
    }

    pub(crate) fn metadata(&self) -> &Arc<dyn MetadataStore> {
        &self.meta
    }

    pub(crate) fn max_upload_size(&self) -> u64 {
        self.max_upload_size
    }

    /// Starts an upload: a temp file that the caller streams the body into.
    pub async fn begin_upload(&self) -> Result<BlobWriter, ServiceError> {
        Ok(
            crate::metrics::timed("blob", "begin", self.storage.begin(self.max_upload_size))
                .await?,
        )
    }

    /// Fails fast, before any byte is streamed, when the precondition cannot hold now. The
    /// commit checks again under the lock; this only spares clients a useless transfer.
    pub async fn precheck(
        &self,
        path: &VPath,
        precondition: &Precondition,
    ) -> Result<(), ServiceError> {
        if *precondition == Precondition::None {
            return Ok(());
        }
        let current = self.meta.get_by_path(path.as_str()).await?;
        let ok = match (precondition, current) {
            (Precondition::MustNotExist, Some(_)) => false,
            (Precondition::MustMatch(_), None) => false,
            (Precondition::MustMatch(tags), Some(cur)) => tags.matches(&cur.sha256),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(MetadataError::PreconditionFailed.into())
        }
    }

    /// Makes a fully received upload visible at `path`.
    pub async fn commit_upload(
        &self,
        path: &VPath,
        staged: StagedBlob,
        content_type: String,
        precondition: Precondition,
        ctx: &RequestCtx,
    ) -> Result<PutOutcome, ServiceError> {
        let item = StagedFile {
            path: path.clone(),
            staged,
            content_type,
            precondition,
            s3: None,
        };
        let mut outcomes = self.commit_many(vec![item], ctx).await?;
        outcomes
            .pop()
            .ok_or_else(|| MetadataError::Backend("a put answered no outcome".into()).into())
    }

    /// Makes several fully received uploads visible together: one lock set (every path and
    /// every blob, taken at once in canonical order), one metadata transaction. Either all of
    /// them become visible, with consecutive events, or none does.
    pub async fn commit_many(
        &self,
        files: Vec<StagedFile>,
        ctx: &RequestCtx,
    ) -> Result<Vec<PutOutcome>, ServiceError> {
        let mut request = LockRequest::new();
        let mut shas: Vec<String> = Vec::with_capacity(files.len());
        for file in &files {
            ctx.check(file.path.as_str())?;
            request = request
                .write_path(&file.path)
                .blob_shared(&file.staged.blob.sha256);
            shas.push(file.staged.blob.sha256.clone());
        }
        shas.sort();
        shas.dedup();
        let result = {
            let _guard = self.locks.acquire(request, ctx.owner("upload")).await?;
            // Other replicas' collection of this content waits until the references commit.
            // Fences are taken in sorted order, like the lock set.
            let mut fences = Vec::with_capacity(shas.len());
            for sha in &shas {
                fences.push(self.meta.fence_blob(sha, false).await?);
            }
            let mut puts = Vec::with_capacity(files.len());
            let mut failed = None;
            for file in files {
                match crate::metrics::timed("blob", "commit", self.storage.commit(file.staged))
                    .await
                {
                    Ok(blob) => puts.push(PutRequest {
                        path: file.path.as_str().to_string(),
                        blob,
                        content_type: file.content_type,
                        precondition: file.precondition,
                        s3: file.s3,
                    }),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                // Some blobs may have reached their place before the error: collect them
                // once the lock set is released (they have no new reference).
                drop(fences);
                for sha in shas {
                    self.spawn_collect(sha);
                }
                return Err(e.into());
            }
            match crate::faults::check(Point::BeforeMetadataCommit) {
                Err(e) => Err(MetadataError::Backend(e.to_string())),
                Ok(()) if puts.len() == 1 => match puts.pop() {
                    Some(put) => self.meta.put(put).await.map(|o| vec![o]),
                    None => Ok(Vec::new()),
                },
                Ok(()) => self.meta.put_many(puts).await,
            }
        };
        match result {
            Ok(outcomes) => {
                // Committed: visible and durable, with the events in the log. A failure from
                // here on is not acknowledged, and the next poke delivers the events.
                crate::faults::check(Point::AfterMetadataCommit)
                    .and_then(|()| crate::faults::check(Point::BeforeEventPublish))
                    .map_err(|e| ServiceError::from(MetadataError::Backend(e.to_string())))?;
                self.notifier.poke();
                for released in outcomes.iter().filter_map(|o| o.released.as_ref()) {
                    self.spawn_collect(released.clone());
                }
                for released in outcomes.iter().flat_map(|o| o.released_more.iter()) {
                    self.spawn_collect(released.clone());
                }
                Ok(outcomes)
            }
            Err(e) => {
                // The blobs may now be on disk with no reference: collect them.
                for sha in shas {
                    self.spawn_collect(sha);
                }
                Err(e.into())
            }
        }
    }

    /// The current metadata of file `id`; `NotFound` if there is none, `Forbidden` if its
    /// path is outside what the principal may touch.
    pub async fn meta_by_id(&self, id: &str, ctx: &RequestCtx) -> Result<FileMeta, ServiceError> {
        let meta = self
            .meta
            .get_by_id(id)
            .await?
            .ok_or(ServiceError::Metadata(MetadataError::NotFound))?;
        ctx.check(&meta.path)?;
        Ok(meta)
    }

    /// The current metadata of the file at `path`; `Forbidden` (checked first) if the
    /// principal may not touch `path`, `NotFound` if no file is there.
    pub async fn meta_by_path(
        &self,
        path: &VPath,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        // Checked before the lookup: whether a path outside the prefix exists is not told.
        ctx.check(path.as_str())?;
        self.meta
            .get_by_path(path.as_str())
            .await?
            .ok_or_else(|| MetadataError::NotFound.into())
    }

    /// Streams `len` bytes of `meta`'s content from `start`. A blob collected between the
    /// metadata read and the open (the file was replaced or deleted meanwhile) reads as "not
    /// found".
    pub async fn read_content(
        &self,
        meta: &FileMeta,
        start: u64,
        len: u64,
    ) -> Result<super::storage::BlobStream, ServiceError> {
        Ok(crate::metrics::timed(
            "blob",
            "open",
            self.storage.read_blob(&meta.sha256, start, Some(len)),
        )
        .await?)
    }

    /// `meta`'s content as a file on local disk, for a zero-copy response; `None` when it is
    /// not stored as one (then [`FileService::read_content`]).
    pub async fn open_content_file(
        &self,
        meta: &FileMeta,
    ) -> Result<Option<std::fs::File>, ServiceError> {
        Ok(
            crate::metrics::timed("blob", "open", self.storage.open_blob_file(&meta.sha256))
                .await?,
        )
    }

    /// Deletes file `id` (to the trash when the retention policy keeps one) if `precondition`
    /// holds, and returns its metadata as it was. Follows the file if it moves meanwhile.
    pub async fn delete(
        &self,
        id: &str,
        precondition: &Precondition,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        let outcome = self
            .with_current_path(id, ctx, |service, path| async move {
                let request = LockRequest::new().write_path(&path);
                let _guard = service.locks.acquire(request, ctx.owner("delete")).await?;
                Ok(service.meta.delete(id, path.as_str(), precondition).await?)
            })
            .await?;
        Ok(self.finish_change(outcome))
    }

    /// Moves file `id` to `to`, keeping its id; with `overwrite`, a file already at `to` is
    /// deleted first, else the move fails with `AlreadyExists`. Returns the moved file's
    /// metadata.
    pub async fn move_file(
        &self,
        id: &str,
        to: &VPath,
        overwrite: bool,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        ctx.check(to.as_str())?;
        let outcome = self
            .with_current_path(id, ctx, |service, from| async move {
                let request = LockRequest::new().write_path(&from).write_path(to);
                let _guard = service.locks.acquire(request, ctx.owner("move")).await?;
                Ok(service
                    .meta
                    .rename(id, from.as_str(), to.as_str(), overwrite)
                    .await?)
            })
            .await?;
        Ok(self.finish_change(outcome))
    }

    /// Copies file `id` to a new file at `to` (new id, version 1) sharing its blob, so no
    /// bytes are copied; with `overwrite`, a file already at `to` is deleted first, else
    /// `AlreadyExists`. Returns the copy's metadata.
    pub async fn copy_file(
        &self,
        id: &str,
        to: &VPath,
        overwrite: bool,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        self.copy_file_with_s3(id, to, overwrite, None, ctx).await
    }

    /// [`copy_file`](Self::copy_file), committing `s3` as the copy's S3 record in the
    /// copy's transaction (S3 CopyObject).
    pub async fn copy_file_with_s3(
        &self,
        id: &str,
        to: &VPath,
        overwrite: bool,
        s3: Option<S3ObjectRow>,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        ctx.check(to.as_str())?;
        let s3 = &s3;
        let outcome = self
            .with_current_path(id, ctx, |service, from| async move {
                let request = LockRequest::new().read_path(&from).write_path(to);
                let _guard = service.locks.acquire(request, ctx.owner("copy")).await?;
                Ok(service
                    .meta
                    .copy_with_s3(id, from.as_str(), to.as_str(), overwrite, s3.clone())
                    .await?)
            })
            .await?;
        Ok(self.finish_change(outcome))
    }

    /// Runs `op` with the file's current path, retrying when a concurrent move changed it
    /// between the read and the locked transaction. Each attempt checks the path it will lock
    /// against the principal: the transaction verifies the path is still current, so a file
    /// moved out of the prefix meanwhile is refused on the retry, never changed.
    pub(crate) async fn with_current_path<'a, F, Fut>(
        &'a self,
        id: &'a str,
        ctx: &'a RequestCtx,
        op: F,
    ) -> Result<ChangeOutcome, ServiceError>
    where
        F: Fn(&'a FileService, VPath) -> Fut,
        Fut: std::future::Future<Output = Result<ChangeOutcome, ServiceError>> + Send + 'a,
    {
        for _ in 0..PATH_RETRIES {
            let current = self.meta_by_id(id, ctx).await?;
            let path = VPath::parse(&current.path).map_err(|e| {
                MetadataError::Backend(format!("stored path {:?} is invalid: {e}", current.path))
            })?;
            match op(self, path).await {
                Err(ServiceError::Metadata(MetadataError::PathChanged)) => continue,
                other => return other,
            }
        }
        Err(ServiceError::Contended)
    }

    pub(crate) fn finish_change(&self, outcome: ChangeOutcome) -> FileMeta {
        self.notifier.poke();
        for sha in outcome.released {
            self.spawn_collect(sha);
        }
        outcome.meta
    }
}
