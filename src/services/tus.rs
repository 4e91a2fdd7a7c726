//! tus 1.0 resumable upload sessions (core, creation, creation-with-upload,
//! creation-defer-length, expiration, checksum, termination, concatenation).
//!
//! - **State.** A session's row (offset, length, metadata, target, owner, expiry) lives in the
//!   metadata store ([`TusStore`]); its bytes in `<data_dir>/tus/<id>` (with the S3 blob
//!   store: in the bucket, see [`remote`], so any replica continues it). A PATCH appends,
//!   fdatasyncs, and only then moves the row's offset: an acknowledged offset survives a
//!   SIGKILL, and bytes past it (a crash between the fsync and the row) are cut off by the
//!   next PATCH, which always starts by truncating the file to the row's offset.
//! - **Nothing visible until the last byte.** The PATCH that completes a session (or the
//!   creation of a final concatenation) hands the file to the one write entry point,
//!   [`super::upload::UploadBatch::stage_file`] + `commit`, under that request's upload
//!   permit: prefix check, precondition, declared SHA-256, locks, version bump, one event.
//! - **No second read.** The whole-file SHA-256 is fed while PATCHes arrive and kept in
//!   memory per session ([`Live::hasher`]); the commit uses it. After a restart (the hasher is
//!   gone) the commit hashes the file once on the blocking pool; a final concatenation hashes
//!   while it copies the partial uploads into the final file, the one read it needs anyway.
//! - **No 423.** A PATCH on a session whose older PATCH is still open cancels that one
//!   ([`Live::writer`]); the old request stops at its next chunk, discards what it had not
//!   acknowledged and gives up the session's turn, so the new one proceeds at once.
//! - **Limits.** Every PATCH takes an upload permit and streams under the upload deadlines
//!   ([`FileService::begin_batch`]); sessions per owner and staging bytes per owner are
//!   capped; sessions expire after `tus_expiry` without a PATCH, and the sweep removes their
//!   bytes (the row stays as a tombstone for a while, so clients get 410, not 404).

use std::collections::HashMap;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

mod remote;

use super::files::{FileService, RequestCtx};
use super::metadata::tus::{SessionRow, SessionState, TusStore};
use super::metadata::{now_ms, EtagMatch, MetadataError, Precondition};
use super::storage::TusStaging;
use super::upload::{
    StagedFile, StagedObject, UploadBatch, UploadError, UploadOptions, UploadOutcome,
};
use super::ServiceError;
use crate::paths::VPath;
use remote::Remote;

/// Bytes gathered from the body before one write (and hash) on the blocking pool.
const WRITE_BLOCK: usize = 512 * 1024;
/// How long a new PATCH waits for the one it took over to let go of the session.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Most due sessions one sweep pass handles.
const SWEEP_BATCH: usize = 1000;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Why a tus request was refused. `handlers::tus` maps each to its tus status.
#[derive(Debug, thiserror::Error)]
pub enum TusError {
    #[error("no such upload")]
    NotFound,
    #[error("the upload has expired")]
    Gone,
    #[error("Upload-Offset {given} does not match the upload's offset {actual}")]
    OffsetMismatch { given: u64, actual: u64 },
    #[error("a final concatenation cannot be modified")]
    ModifyFinal,
    #[error(
        "the request body does not match its {0} Upload-Checksum; the upload's offset is unchanged"
    )]
    ChecksumMismatch(&'static str),
    #[error("unsupported checksum algorithm {0:?} (supported: sha1, md5, sha256)")]
    UnsupportedChecksum(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the request would take the upload past its length of {length} bytes")]
    LengthExceeded { length: u64 },
    #[error("uploads are limited to {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("a partial upload of the concatenation is not finished")]
    PartialNotFinished,
    #[error("this token has {0} open upload sessions, the most allowed; finish or terminate one")]
    TooManySessions(usize),
    #[error("this token's open upload sessions would reserve more than {limit} bytes of staging")]
    StagingQuota { limit: u64 },
    #[error("a newer request for this upload took it over")]
    Interrupted,
    #[error("the token was revoked (or expired) while the upload was in progress")]
    Revoked,
    #[error("the upload is still held by an earlier request; retry")]
    Busy,
    #[error(
        "the upload's staged bytes are missing (lost, or staged where this server cannot reach them)"
    )]
    StagingLost,
    #[error("staging I/O error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<MetadataError> for TusError {
    fn from(e: MetadataError) -> Self {
        TusError::Service(e.into())
    }
}

impl From<UploadError> for TusError {
    fn from(e: UploadError) -> Self {
        TusError::Service(e.into())
    }
}

/// The per-session limits.
#[derive(Debug, Clone, Copy)]
pub struct TusLimits {
    /// Inactivity after which a session expires.
    pub expiry: Duration,
    /// Open sessions per owner.
    pub max_sessions: usize,
    /// Staging bytes per owner (the sum of their open sessions' lengths).
    pub max_staging: u64,
    /// Files one commit may hold (an upload with the `commit` key stages into it).
    pub commit_max_files: usize,
}

impl TusLimits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        TusLimits {
            expiry: config.tus_expiry,
            max_sessions: config.tus_max_sessions_per_token,
            max_staging: config.tus_max_staging_per_token,
            commit_max_files: config.commit_max_files,
        }
    }
}

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Md5,
    Sha256,
}

impl ChecksumAlgorithm {
    /// What `Tus-Checksum-Algorithm` lists.
    pub const ALL: &'static str = "sha1,md5,sha256";

    pub fn parse(name: &str) -> Result<Self, TusError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "sha1" => Ok(ChecksumAlgorithm::Sha1),
            "md5" => Ok(ChecksumAlgorithm::Md5),
            "sha256" => Ok(ChecksumAlgorithm::Sha256),
            other => Err(TusError::UnsupportedChecksum(other.to_string())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Sha1 => "sha1",
            ChecksumAlgorithm::Md5 => "md5",
            ChecksumAlgorithm::Sha256 => "sha256",
        }
    }

    fn hasher(self) -> ChecksumHasher {
        match self {
            ChecksumAlgorithm::Sha1 => ChecksumHasher::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Md5 => ChecksumHasher::Md5(md5::Md5::new()),
            ChecksumAlgorithm::Sha256 => ChecksumHasher::Sha256(Sha256::new()),
        }
    }
}

/// A request's `Upload-Checksum`: the algorithm and the digest it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

enum ChecksumHasher {
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
    Sha256(Sha256),
}

impl ChecksumHasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            ChecksumHasher::Sha1(h) => h.update(data),
            ChecksumHasher::Md5(h) => h.update(data),
            ChecksumHasher::Sha256(h) => h.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            ChecksumHasher::Sha1(h) => h.finalize().to_vec(),
            ChecksumHasher::Md5(h) => h.finalize().to_vec(),
            ChecksumHasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// How an upload is concatenated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concat {
    None,
    Partial,
    /// The partial uploads' ids, in order.
    Final(Vec<String>),
}

impl Concat {
    fn to_text(&self) -> String {
        match self {
            Concat::None => String::new(),
            Concat::Partial => "partial".into(),
            Concat::Final(ids) => format!("final;{}", ids.join(" ")),
        }
    }

    fn of(row: &SessionRow) -> Concat {
        if row.concat == "partial" {
            Concat::Partial
        } else if let Some(ids) = row.concat.strip_prefix("final;") {
            Concat::Final(ids.split(' ').map(str::to_string).collect())
        } else {
            Concat::None
        }
    }
}

/// What a creation request asked for.
#[derive(Debug, Clone)]
pub struct Creation {
    /// `None`: deferred (`Upload-Defer-Length: 1`). Ignored for a final concatenation.
    pub length: Option<u64>,
    /// The `Upload-Metadata` header as sent.
    pub metadata: String,
    /// `?path=DIR/` on the creation URL, joined to the `filename` key.
    pub dir: Option<String>,
    pub concat: Concat,
}

/// A PATCH (or the body of a creation-with-upload).
#[derive(Debug, Clone)]
pub struct Append {
    /// `Upload-Offset`.
    pub offset: u64,
    /// `Upload-Length`, declaring a deferred length.
    pub length: Option<u64>,
    pub checksum: Option<Checksum>,
    /// `Content-Length`, when sent.
    pub content_length: Option<u64>,
}

/// A session as a client sees it (HEAD, and the answers to POST and PATCH).
#[derive(Debug, Clone)]
pub struct SessionView {
    pub id: String,
    pub offset: u64,
    pub length: Option<u64>,
    pub metadata: String,
    pub concat: Concat,
    /// Milliseconds since the epoch; `None` once the session is done.
    pub expires_at: Option<i64>,
    /// The file this upload became, once committed.
    pub committed: Option<UploadOutcome>,
}

impl SessionView {
    fn of(row: &SessionRow) -> Self {
        SessionView {
            id: row.id.clone(),
            offset: row.offset,
            length: row.length,
            metadata: row.metadata.clone(),
            concat: Concat::of(row),
            expires_at: (row.state == SessionState::Open).then_some(row.expires_at),
            committed: None,
        }
    }
}

/// The in-process state of one session.
#[derive(Debug)]
struct Live {
    /// One writer at a time: held by the request appending to the session.
    turn: Arc<tokio::sync::Semaphore>,
    /// Guards the cancellation token of the request that writes (or last wrote) the
    /// session: a newer request cancels it to take the session over.
    writer: Mutex<CancellationToken>,
    /// Guards the SHA-256 of the session's first `.0` bytes, when this process saw them all
    /// arrive (None after a restart or a failed write).
    hasher: Mutex<Option<(u64, Sha256)>>,
}

impl Live {
    fn new() -> Self {
        Live {
            turn: Arc::new(tokio::sync::Semaphore::new(1)),
            writer: Mutex::new(CancellationToken::new()),
            hasher: Mutex::new(None),
        }
    }

    /// The hasher, if it covers exactly the first `offset` bytes.
    fn take_hasher(&self, offset: u64) -> Option<Sha256> {
        match lock(&self.hasher).take() {
            Some((at, h)) if at == offset => Some(h),
            _ => None,
        }
    }

    fn put_hasher(&self, offset: u64, hasher: Option<Sha256>) {
        *lock(&self.hasher) = hasher.map(|h| (offset, h));
    }

    fn hasher_at(&self, offset: u64) -> Option<Sha256> {
        match &*lock(&self.hasher) {
            Some((at, h)) if *at == offset => Some(h.clone()),
            _ => None,
        }
    }

    /// Makes `token` the session's writer and cancels the one before it.
    fn take_over(&self, token: CancellationToken) {
        let old = std::mem::replace(&mut *lock(&self.writer), token);
        old.cancel();
    }

    fn cancel(&self) {
        lock(&self.writer).cancel();
    }
}

/// A poisoned lock only means a panic elsewhere; the data (a token, a hasher) is still
/// usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tus sessions of a server.
#[derive(Clone)]
pub struct TusService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TusService")
            .field("dir", &self.inner.dir)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

struct Inner {
    files: FileService,
    store: TusStore,
    /// `<data_dir>/tus`: one file per open session staged on local disk.
    dir: PathBuf,
    /// The object store's tus staging (S3 blob store): new sessions stage there.
    remote: Option<TusStaging>,
    limits: TusLimits,
    /// Guards the in-process state of the sessions that had a request here, by id.
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// How a PATCH body ended.
enum End {
    /// Read to its end.
    Complete,
    /// The body failed (connection reset, a deadline): what arrived is kept.
    Body(UploadError),
    /// A newer request took the session over.
    Cancelled,
    /// The request's token was revoked (or expired).
    Revoked,
    /// More bytes than the upload's length.
    TooLong,
    /// Writing or hashing failed.
    Write(io::Error),
}

/// The staging file and the digests fed with it, moved to the blocking pool for each block.
struct Sink {
    file: std::fs::File,
    sha: Option<Sha256>,
    check: Option<ChecksumHasher>,
}

impl Sink {
    async fn write(mut self, block: Bytes) -> io::Result<Sink> {
        crate::blocking::run(move || {
            self.file.write_all(&block)?;
            if let Some(h) = self.sha.as_mut() {
                h.update(&block);
            }
            if let Some(h) = self.check.as_mut() {
                h.update(&block);
            }
            Ok(self)
        })
        .await
    }

    async fn sync(self) -> io::Result<Sink> {
        crate::blocking::run(move || {
            #[allow(clippy::disallowed_methods)] // on the blocking pool
            self.file.sync_data()?;
            Ok(self)
        })
        .await
    }
}

impl TusService {
    /// Opens the sessions' staging directory and starts the expiry sweep (until `shutdown`).
    pub(crate) async fn start(
        files: FileService,
        store: TusStore,
        data_dir: &Path,
        limits: TusLimits,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, io::Error> {
        let dir = data_dir.join("tus");
        tokio::fs::create_dir_all(&dir).await?;
        let remote = files.storage().tus_staging();
        let service = TusService {
            inner: Arc::new(Inner {
                files,
                store,
                dir,
                remote,
                limits,
                live: Mutex::new(HashMap::new()),
            }),
        };
        service.spawn_sweep(shutdown);
        Ok(service)
    }

    /// The largest upload (`Tus-Max-Size`).
    pub fn max_size(&self) -> u64 {
        self.inner.files.max_upload_size()
    }

    /// Creates a session (and, for a final concatenation, concatenates and commits it).
    pub async fn create(
        &self,
        ctx: &RequestCtx,
        creation: Creation,
    ) -> Result<SessionView, TusError> {
        let inner = &self.inner;
        let meta = parse_metadata(&creation.metadata)?;
        let options = upload_options(&meta)?;
        if let Some(commit) = meta_value(&meta, "commit") {
            // Refused at creation unless the commit is open to staging.
            let open = match inner.files.commit_status(commit).await {
                Ok((c, _)) => c.state == "open" && c.expires_at_ms > now_ms(),
                Err(crate::services::ServiceError::Metadata(
                    crate::services::metadata::MetadataError::NotFound,
                )) => false,
                Err(e) => return Err(TusError::Service(e)),
            };
            if !open {
                return Err(TusError::Invalid(format!(
                    "the `commit` metadata key names no open commit ({commit})"
                )));
            }
        }
        let target =
            match target_path(&meta, creation.dir.as_deref())? {
                Some(path) => {
                    ctx.check(path.as_str())?;
                    inner.files.precheck(&path, &options.precondition).await?;
                    Some(path)
                }
                None if creation.concat == Concat::Partial => None,
                None => return Err(TusError::Invalid(
                    "Upload-Metadata must name the target: `path` (base64 of the VaultFS path), \
                     or `filename` with ?path=DIR/ on the creation URL"
                        .into(),
                )),
            };
        let owner = owner_of(ctx);
        let (length, partials) = match &creation.concat {
            Concat::Final(ids) => {
                let mut partials = Vec::with_capacity(ids.len());
                let mut total = 0u64;
                for id in ids {
                    let row = inner.open_row(&owner, id).await?;
                    if Concat::of(&row) != Concat::Partial {
                        return Err(TusError::Invalid(format!(
                            "upload {id} is not a partial upload"
                        )));
                    }
                    match row.length {
                        Some(l) if l == row.offset => total = total.saturating_add(l),
                        _ => return Err(TusError::PartialNotFinished),
                    }
                    partials.push(row);
                }
                (Some(total), partials)
            }
            _ => (creation.length, Vec::new()),
        };
        let limit = self.max_size();
        if let Some(len) = length.filter(|l| *l > limit) {
            let _ = len;
            return Err(TusError::TooLarge { limit });
        }
        let usage = inner.store.usage(&owner).await?;
        if usage.sessions >= inner.limits.max_sessions as u64 {
            return Err(TusError::TooManySessions(inner.limits.max_sessions));
        }
        // A final concatenation reuses the partials' reservation.
        let reserve = if partials.is_empty() {
            length.unwrap_or(0)
        } else {
            0
        };
        if usage.bytes.saturating_add(reserve) > inner.limits.max_staging {
            return Err(TusError::StagingQuota {
                limit: inner.limits.max_staging,
            });
        }
        let now = now_ms();
        let row = SessionRow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            owner,
            length,
            offset: 0,
            target: target
                .as_ref()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            metadata: creation.metadata.clone(),
            concat: creation.concat.to_text(),
            state: SessionState::Open,
            file_id: None,
            created_at: now,
            expires_at: now.saturating_add(inner.expiry_ms()),
            remote: None,
        };
        let mut row = row;
        let staged_remotely = match (&inner.remote, &creation.concat) {
            (Some(_), Concat::Final(_)) => partials.iter().any(|p| p.remote.is_some()),
            (Some(_), _) => length != Some(0),
            (None, _) => false,
        };
        if staged_remotely && partials.is_empty() {
            let max_len = length.unwrap_or(limit);
            row.remote = Some(inner.start_remote(&row.id, max_len).await?.to_text());
        }
        if let Err(e) = inner.store.insert(&row).await {
            inner.drop_remote(&row).await;
            return Err(e.into());
        }
        if !partials.is_empty() {
            if staged_remotely {
                return inner.concatenate_remote(ctx, row, partials).await;
            }
            return inner.concatenate(ctx, row, partials).await;
        }
        if row.remote.is_none() {
            if let Err(e) = inner.create_file(&row.id).await {
                let _ = inner.store.delete(&row.id).await;
                return Err(e.into());
            }
        }
        metrics::counter!("vaultfs_tus_sessions_created_total").increment(1);
        if length == Some(0) && creation.concat == Concat::None {
            // Nothing to wait for: commit the empty file now.
            let batch = inner.files.begin_batch(Some(0)).await?;
            return inner.complete(ctx, batch, row, Some(Sha256::new())).await;
        }
        Ok(SessionView::of(&row))
    }

    /// The session's state (HEAD).
    pub async fn status(&self, ctx: &RequestCtx, id: &str) -> Result<SessionView, TusError> {
        let row = self.inner.visible_row(&owner_of(ctx), id).await?;
        // Every byte acknowledged but no commit (the server died between the last PATCH's
        // fsync and its commit): a client that sees offset == length is done and sends
        // nothing more, so the commit happens here, as an empty PATCH at the end would do it.
        if row.state == SessionState::Open
            && row.length == Some(row.offset)
            && Concat::of(&row) == Concat::None
        {
            let finish = Append {
                offset: row.offset,
                length: None,
                checksum: None,
                content_length: Some(0),
            };
            let nothing = futures_util::stream::empty::<Result<Bytes, UploadError>>();
            return self
                .append(ctx, id, finish, nothing, std::future::pending::<()>())
                .await;
        }
        Ok(SessionView::of(&row))
    }

    /// Appends `body` at `request.offset` (PATCH). Runs in a task of its own, so that a
    /// client going away mid-request cannot cut the bookkeeping short: what arrived is
    /// fsynced and acknowledged in the row even when nobody reads the answer.
    ///
    /// `revoked` resolves when the request's token is revoked or expires
    /// ([`crate::services::auth::Auth::until_invalid`]): the body stops at its next chunk,
    /// nothing of this request is acknowledged, and the answer is [`TusError::Revoked`].
    pub async fn append<S, E, R>(
        &self,
        ctx: &RequestCtx,
        id: &str,
        request: Append,
        body: S,
        revoked: R,
    ) -> Result<SessionView, TusError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<UploadError> + 'static,
        R: std::future::Future<Output = ()> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let (ctx, id) = (ctx.clone(), id.to_string());
        let stop = CancellationToken::new();
        let watcher = tokio::spawn({
            let stop = stop.clone();
            async move {
                revoked.await;
                stop.cancel();
            }
        });
        // The request's fence travels into the task that may complete the upload.
        let fence = crate::services::metadata::commits::current_fence();
        let task = tokio::spawn(
            crate::services::metadata::commits::FENCE.scope(fence, async move {
                inner.append(&ctx, &id, request, body, &stop).await
            }),
        );
        let result = task.await;
        watcher.abort();
        match result {
            Ok(result) => result,
            Err(e) => Err(TusError::Io(io::Error::other(format!(
                "tus append task failed: {e}"
            )))),
        }
    }

    /// Terminates a session: its bytes and its row are removed (DELETE).
    pub async fn terminate(&self, ctx: &RequestCtx, id: &str) -> Result<(), TusError> {
        let inner = &self.inner;
        let row = inner
            .store
            .get(id)
            .await?
            .filter(|r| r.owner == owner_of(ctx))
            .ok_or(TusError::NotFound)?;
        inner.forget(&row.id).await;
        inner.drop_remote(&row).await;
        inner.store.delete(&row.id).await?;
        metrics::counter!("vaultfs_tus_sessions_terminated_total").increment(1);
        Ok(())
    }

    /// One pass of the expiry sweep: expired sessions' bytes removed (their rows kept as
    /// tombstones for another expiry period), old tombstones and done rows deleted, staging
    /// files without an open session removed. Returns how many sessions expired.
    pub async fn sweep(&self) -> Result<usize, TusError> {
        let inner = &self.inner;
        let now = now_ms();
        let mut expired = 0;
        for row in inner.store.due(now, SWEEP_BATCH).await? {
            match row.state {
                SessionState::Open => {
                    if inner
                        .store
                        .expire(&row.id, now.saturating_add(inner.expiry_ms()))
                        .await?
                    {
                        inner.forget(&row.id).await;
                        inner.drop_remote(&row).await;
                        expired += 1;
                    }
                }
                SessionState::Done | SessionState::Expired => {
                    inner.store.delete(&row.id).await?;
                }
            }
        }
        let mut dir = tokio::fs::read_dir(&inner.dir).await?;
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let open = inner
                .store
                .get(&name)
                .await?
                .is_some_and(|r| r.state == SessionState::Open);
            if !open {
                remove_file(&entry.path()).await;
            }
        }
        if let Some(staging) = &inner.remote {
            // Objects of sessions that are no longer open (a replica died between the row
            // and the removal): removed. Multipart uploads are aborted with their session.
            for id in staging.sessions().await.map_err(ServiceError::from)? {
                let open = inner
                    .store
                    .get(&id)
                    .await?
                    .is_some_and(|r| r.state == SessionState::Open);
                if !open {
                    inner.remove_objects(staging, &id).await;
                }
            }
        }
        if expired > 0 {
            metrics::counter!("vaultfs_tus_sessions_expired_total").increment(expired as u64);
            tracing::info!(expired, "expired tus upload sessions");
        }
        Ok(expired)
    }

    fn spawn_sweep(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let service = self.clone();
        let every = (self.inner.limits.expiry / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = service.sweep().await {
                            tracing::warn!(error = %e, "tus session sweep failed");
                        }
                    }
                    () = super::notification::until_true(&mut shutdown) => return,
                }
            }
        });
    }
}

impl Inner {
    fn expiry_ms(&self) -> i64 {
        i64::try_from(self.limits.expiry.as_millis()).unwrap_or(i64::MAX)
    }

    fn file_path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn live(&self, id: &str) -> Arc<Live> {
        let mut live = lock(&self.live);
        Arc::clone(
            live.entry(id.to_string())
                .or_insert_with(|| Arc::new(Live::new())),
        )
    }

    /// Ends the session's writer, drops its in-process state and removes its bytes.
    async fn forget(&self, id: &str) {
        let live = lock(&self.live).remove(id);
        if let Some(live) = live {
            live.cancel();
        }
        remove_file(&self.file_path(id)).await;
    }

    /// The owner's session `id`, as a client may see it: 404 for another owner's or an
    /// unknown one, 410 for an expired one.
    async fn visible_row(&self, owner: &str, id: &str) -> Result<SessionRow, TusError> {
        let row = self
            .store
            .get(id)
            .await?
            .filter(|r| r.owner == owner)
            .ok_or(TusError::NotFound)?;
        let expired = row.state == SessionState::Expired
            || (row.state == SessionState::Open && row.expires_at < now_ms());
        if expired {
            return Err(TusError::Gone);
        }
        Ok(row)
    }

    /// Like [`Inner::visible_row`], and open.
    async fn open_row(&self, owner: &str, id: &str) -> Result<SessionRow, TusError> {
        let row = self.visible_row(owner, id).await?;
        if row.state != SessionState::Open {
            return Err(TusError::Invalid(format!(
                "upload {id} is already complete"
            )));
        }
        Ok(row)
    }

    /// The empty staging file of a new session, its directory entry durable.
    async fn create_file(&self, id: &str) -> io::Result<()> {
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.file_path(id))
            .await?;
        tokio::fs::File::open(&self.dir).await?.sync_all().await
    }

    async fn append<S, E>(
        &self,
        ctx: &RequestCtx,
        id: &str,
        request: Append,
        body: S,
        revoked: &CancellationToken,
    ) -> Result<SessionView, TusError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<UploadError> + 'static,
    {
        let owner = owner_of(ctx);
        let row = self.visible_row(&owner, id).await?;
        if matches!(Concat::of(&row), Concat::Final(_)) {
            return Err(TusError::ModifyFinal);
        }
        if row.state == SessionState::Done {
            return if request.offset == row.offset {
                Ok(SessionView::of(&row))
            } else {
                Err(TusError::OffsetMismatch {
                    given: request.offset,
                    actual: row.offset,
                })
            };
        }
        // Take the session over: the request before us (a half-dead connection, most likely)
        // stops at its next chunk and gives the turn back.
        let live = self.live(id);
        let token = CancellationToken::new();
        live.take_over(token.clone());
        let _turn =
            match tokio::time::timeout(TAKEOVER_WAIT, Arc::clone(&live.turn).acquire_owned()).await
            {
                Ok(Ok(turn)) => turn,
                Ok(Err(_)) | Err(_) => return Err(TusError::Busy),
            };
        let batch = tokio::select! {
            batch = self.files.begin_batch(request.content_length) => batch?,
            () = token.cancelled() => return Err(TusError::Interrupted),
        };
        // Read again under the turn: the request taken over may have moved it.
        let mut row = self.open_row(&owner, id).await?;
        if request.offset != row.offset {
            return Err(TusError::OffsetMismatch {
                given: request.offset,
                actual: row.offset,
            });
        }
        if row.length == Some(row.offset) {
            // Every byte is here: a partial waits for its final; an upload whose commit
            // failed for a passing reason (busy, lock timeout) is committed again.
            if Concat::of(&row) == Concat::Partial {
                return Ok(SessionView::of(&row));
            }
            if revoked.is_cancelled() {
                return Err(TusError::Revoked);
            }
            let sha = live.hasher_at(row.offset);
            return self.complete(ctx, batch, row, sha).await;
        }
        if let Some(length) = request.length {
            match row.length {
                Some(known) if known != length => {
                    return Err(TusError::Invalid(format!(
                        "Upload-Length {length} differs from the upload's length {known}"
                    )))
                }
                Some(_) => {}
                None => {
                    self.declare_length(&owner, &row, length).await?;
                    row.length = Some(length);
                }
            }
        }
        let limit = row.length.unwrap_or_else(|| self.files.max_upload_size());
        if let Some(len) = request.content_length {
            if row.offset.saturating_add(len) > limit {
                return Err(TusError::LengthExceeded { length: limit });
            }
        }
        if row.length.is_none() {
            // A deferred length reserves what it has: check the quota as it grows.
            let usage = self.store.usage(&owner).await?;
            let more = request.content_length.unwrap_or(0);
            if usage.bytes.saturating_add(more) > self.limits.max_staging {
                return Err(TusError::StagingQuota {
                    limit: self.limits.max_staging,
                });
            }
        }
        let body = batch.body(body);
        let stops = Stops {
            takeover: &token,
            revoked,
        };
        let (offset, sha, failure) = match (&self.remote, &row.remote) {
            (Some(staging), Some(record)) => {
                let record = Remote::parse(record)?;
                let (offset, record, failure) = self
                    .receive_remote(
                        staging,
                        &row,
                        record,
                        limit,
                        request.checksum.as_ref(),
                        body,
                        &stops,
                    )
                    .await?;
                row.remote = Some(record.to_text());
                (offset, None, failure)
            }
            (None, Some(_)) => return Err(TusError::StagingLost),
            (_, None) => {
                self.receive(&live, &row, limit, request.checksum.as_ref(), body, &stops)
                    .await?
            }
        };
        row.offset = offset;
        if let Some(e) = failure {
            return Err(e);
        }
        if revoked.is_cancelled() {
            return Err(TusError::Revoked);
        }
        row.expires_at = now_ms().saturating_add(self.expiry_ms());
        if row.length == Some(row.offset) && Concat::of(&row) == Concat::None {
            return self.complete(ctx, batch, row, sha).await;
        }
        Ok(SessionView::of(&row))
    }

    async fn declare_length(
        &self,
        owner: &str,
        row: &SessionRow,
        length: u64,
    ) -> Result<(), TusError> {
        let limit = self.files.max_upload_size();
        if length > limit {
            return Err(TusError::TooLarge { limit });
        }
        if length < row.offset {
            return Err(TusError::Invalid(format!(
                "Upload-Length {length} is less than the {} bytes already received",
                row.offset
            )));
        }
        let usage = self.store.usage(owner).await?;
        // `usage` counts this session at its offset; it now reserves its length.
        if usage
            .bytes
            .saturating_sub(row.offset)
            .saturating_add(length)
            > self.limits.max_staging
        {
            return Err(TusError::StagingQuota {
                limit: self.limits.max_staging,
            });
        }
        if !self.store.declare_length(&row.id, length).await? {
            return Err(TusError::Invalid(
                "the upload's length is already set".into(),
            ));
        }
        Ok(())
    }

    /// Streams the body into the staging file from the row's offset. Returns the new
    /// acknowledged offset, the whole-file hasher at it (when known), and the error to
    /// answer with when the body did not end well (its bytes kept or discarded as the tus
    /// rules say: kept on a broken connection, discarded with a checksum, on a takeover, or
    /// past the length).
    async fn receive(
        &self,
        live: &Live,
        row: &SessionRow,
        limit: u64,
        checksum: Option<&Checksum>,
        body: impl Stream<Item = Result<Bytes, UploadError>> + Send,
        stops: &Stops<'_>,
    ) -> Result<(u64, Option<Sha256>, Option<TusError>), TusError> {
        let start = row.offset;
        let path = self.file_path(&row.id);
        let file = crate::blocking::run(move || open_at(&path, start)).await?;
        // A new session's hasher starts here; after a restart it is unknown (None).
        let base = live
            .take_hasher(start)
            .or_else(|| (start == 0).then(Sha256::new));
        let mut sink = Some(Sink {
            file,
            sha: base.clone(),
            check: checksum.map(|c| c.algorithm.hasher()),
        });
        let mut block = BytesMut::new();
        let mut written = 0u64;
        let mut body = std::pin::pin!(body);
        let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
        let end = loop {
            let next = tokio::select! {
                biased;
                () = stops.takeover.cancelled() => break End::Cancelled,
                () = stops.revoked.cancelled() => break End::Revoked,
                next = body.next() => next,
            };
            let chunk = match next {
                None => break End::Complete,
                Some(Err(e)) => break End::Body(e),
                Some(Ok(chunk)) => chunk,
            };
            bytes_in.increment(chunk.len() as u64);
            let total = start + written + block.len() as u64 + chunk.len() as u64;
            if total > limit {
                break End::TooLong;
            }
            block.extend_from_slice(&chunk);
            if block.len() >= WRITE_BLOCK {
                let Some(s) = sink.take() else {
                    break End::Write(io::Error::other("staging writer lost"));
                };
                let n = block.len() as u64;
                match s.write(block.split().freeze()).await {
                    Ok(s) => {
                        sink = Some(s);
                        written += n;
                    }
                    Err(e) => break End::Write(e),
                }
            }
        };
        let keep = match &end {
            End::Complete => true,
            End::Body(_) => checksum.is_none(),
            End::Cancelled | End::Revoked | End::TooLong | End::Write(_) => false,
        };
        if !keep {
            // Nothing of this request is acknowledged; the next one truncates the file back.
            // A revoked token's bytes go at once: there may be no next request.
            if let (End::Revoked, Some(s)) = (&end, sink.take()) {
                let cut = crate::blocking::run(move || s.file.set_len(start)).await;
                if let Err(e) = cut {
                    tracing::warn!(id = %row.id, error = %e, "could not cut a revoked PATCH's bytes");
                }
            }
            live.put_hasher(
                start,
                if matches!(end, End::Write(_)) {
                    None
                } else {
                    base
                },
            );
            return Ok((
                start,
                None,
                Some(match end {
                    End::Cancelled => TusError::Interrupted,
                    End::Revoked => TusError::Revoked,
                    End::TooLong => TusError::LengthExceeded { length: limit },
                    End::Write(e) => TusError::Io(e),
                    End::Body(e) => TusError::Service(e.into()),
                    End::Complete => TusError::Interrupted,
                }),
            ));
        }
        // Write the rest, then fsync: only then does the offset move.
        let Some(mut s) = sink.take() else {
            live.put_hasher(start, None);
            return Err(TusError::Io(io::Error::other("staging writer lost")));
        };
        if !block.is_empty() {
            let n = block.len() as u64;
            s = match s.write(block.freeze()).await {
                Ok(s) => s,
                Err(e) => {
                    live.put_hasher(start, None);
                    return Err(e.into());
                }
            };
            written += n;
        }
        if let (Some(expected), Some(check)) = (checksum, s.check.take()) {
            if check.finalize() != expected.digest {
                live.put_hasher(start, base);
                return Err(TusError::ChecksumMismatch(expected.algorithm.name()));
            }
        }
        let s = match s.sync().await {
            Ok(s) => s,
            Err(e) => {
                live.put_hasher(start, None);
                return Err(e.into());
            }
        };
        let offset = start + written;
        let expires = now_ms().saturating_add(self.expiry_ms());
        if written > 0 && !self.store.advance(&row.id, start, offset, expires).await? {
            live.put_hasher(start, None);
            return Err(TusError::NotFound);
        }
        metrics::counter!("vaultfs_tus_bytes_acknowledged_total").increment(written);
        live.put_hasher(offset, s.sha.clone());
        let failure = match end {
            End::Body(e) => Some(TusError::Service(e.into())),
            _ => None,
        };
        Ok((offset, s.sha, failure))
    }

    /// Hands a complete session to the write entry point, under `batch`'s permit. A refusal
    /// that cannot change (prefix, precondition, declared SHA-256) ends the session; a
    /// passing one (busy, lock timeout) keeps it, and a PATCH at its full offset retries.
    async fn complete(
        &self,
        ctx: &RequestCtx,
        batch: UploadBatch,
        row: SessionRow,
        sha: Option<Sha256>,
    ) -> Result<SessionView, TusError> {
        let result = self.commit(ctx, batch, &row, sha).await;
        match result {
            Ok(outcome) => {
                let keep = now_ms().saturating_add(self.expiry_ms());
                self.store
                    .finish(&row.id, Some(&outcome.meta.id), keep)
                    .await?;
                self.forget(&row.id).await;
                self.drop_remote(&row).await;
                metrics::counter!("vaultfs_tus_uploads_committed_total").increment(1);
                let mut view = SessionView::of(&row);
                view.expires_at = None;
                view.committed = Some(outcome);
                Ok(view)
            }
            Err(e) => {
                if is_final_refusal(&e) {
                    tracing::info!(id = %row.id, error = %e, "tus upload refused at completion; session ended");
                    self.forget(&row.id).await;
                    self.drop_remote(&row).await;
                    let _ = self.store.delete(&row.id).await;
                }
                Err(e)
            }
        }
    }

    async fn commit(
        &self,
        ctx: &RequestCtx,
        mut batch: UploadBatch,
        row: &SessionRow,
        sha: Option<Sha256>,
    ) -> Result<UploadOutcome, TusError> {
        let meta = parse_metadata(&row.metadata)?;
        let options = upload_options(&meta)?;
        let target = VPath::parse(&row.target)
            .map_err(|e| TusError::Invalid(format!("the upload's target path: {e}")))?;
        if let Some(record) = &row.remote {
            let staging = self.remote.as_ref().ok_or(TusError::StagingLost)?;
            let record = Remote::parse(record)?;
            let object = match sha {
                // A final concatenation: assembled, hashed while it was.
                Some(sha) if record.assembled => StagedObject {
                    key: record.key,
                    size: row.length.unwrap_or(row.offset),
                    sha256: sha.finalize().into(),
                },
                _ => self.assemble(staging, row, record).await?,
            };
            batch.stage_object(ctx, &target, object, options).await?;
            let mut outcomes = batch.commit(ctx).await?;
            return outcomes
                .pop()
                .ok_or_else(|| TusError::Io(io::Error::other("the commit returned no file")));
        }
        let file = StagedFile {
            path: self.file_path(&row.id),
            size: row.length.unwrap_or(row.offset),
            sha256: sha.map(|h| h.finalize().into()),
        };
        batch.stage_file(ctx, &target, file, options).await?;
        if let Some(commit) = meta_value(&meta, "commit") {
            // Staged in the commit (issue 21): no file exists yet, so the outcome names the
            // staged content with an empty id and version 0.
            let max = self.limits.commit_max_files;
            let staged = batch
                .commit_to(ctx, (commit, max))
                .await?
                .pop()
                .ok_or_else(|| TusError::Io(io::Error::other("the commit staged no file")))?;
            return Ok(UploadOutcome {
                meta: crate::services::metadata::FileMeta {
                    id: String::new(),
                    path: staged.path,
                    size: staged.size,
                    sha256: staged.sha256,
                    version: 0,
                    content_type: staged.content_type,
                    created_at: String::new(),
                    modified_at: String::new(),
                    modified_ms: 0,
                },
                created: false,
                extra_digest: None,
            });
        }
        let mut outcomes = batch.commit(ctx).await?;
        outcomes
            .pop()
            .ok_or_else(|| TusError::Io(io::Error::other("the commit returned no file")))
    }

    /// A final concatenation: the partial uploads copied, in order, into the final's file
    /// (hashed as they are copied: the one read), then committed; the partials are removed.
    async fn concatenate(
        &self,
        ctx: &RequestCtx,
        row: SessionRow,
        partials: Vec<SessionRow>,
    ) -> Result<SessionView, TusError> {
        let total = row.length.unwrap_or(0);
        let batch = match self.files.begin_batch(Some(total)).await {
            Ok(b) => b,
            Err(e) => {
                let _ = self.store.delete(&row.id).await;
                return Err(e.into());
            }
        };
        let sources: Vec<(PathBuf, u64)> = partials
            .iter()
            .map(|p| (self.file_path(&p.id), p.offset))
            .collect();
        let target = self.file_path(&row.id);
        let copied = crate::blocking::run(move || concat_files(&target, &sources)).await;
        let sha = match copied {
            Ok(sha) => sha,
            Err(e) => {
                self.forget(&row.id).await;
                let _ = self.store.delete(&row.id).await;
                return Err(e.into());
            }
        };
        let expires = now_ms().saturating_add(self.expiry_ms());
        if !self.store.advance(&row.id, 0, total, expires).await? && total > 0 {
            return Err(TusError::NotFound);
        }
        let mut row = row;
        row.offset = total;
        let view = self.complete(ctx, batch, row, Some(sha)).await?;
        for p in &partials {
            self.forget(&p.id).await;
            let _ = self.store.delete(&p.id).await;
        }
        Ok(view)
    }
}

/// What ends a PATCH body early.
struct Stops<'a> {
    /// A newer request took the session over.
    takeover: &'a CancellationToken,
    /// The request's token was revoked or expired.
    revoked: &'a CancellationToken,
}

/// Refusals a retry cannot change: the session is ended.
fn is_final_refusal(e: &TusError) -> bool {
    match e {
        TusError::Invalid(_) => true,
        TusError::Service(s) => matches!(
            s,
            ServiceError::Forbidden
                | ServiceError::Upload(UploadError::ChecksumMismatch { .. })
                | ServiceError::Upload(UploadError::TooLarge { .. })
                | ServiceError::Metadata(MetadataError::PreconditionFailed)
        ),
        _ => false,
    }
}

fn owner_of(ctx: &RequestCtx) -> String {
    ctx.principal.token_id.clone().unwrap_or_default()
}

async fn remove_file(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove tus staging file");
        }
    }
}

/// Opens a session's staging file for appending at `offset`: bytes past it (never
/// acknowledged) are cut off. Blocking: runs on the blocking pool.
fn open_at(path: &Path, offset: u64) -> io::Result<std::fs::File> {
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let mut file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
            #[allow(clippy::disallowed_methods)] // on the blocking pool
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(io::ErrorKind::NotFound, "staging lost"))
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < offset {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("staging file has {len} bytes, the session acknowledged {offset}"),
        ));
    }
    if len > offset {
        file.set_len(offset)?;
    }
    file.seek(io::SeekFrom::Start(offset))?;
    Ok(file)
}

/// Writes the first `len` bytes of each source, in order, to a new `target`, fdatasynced;
/// returns their SHA-256. Blocking: runs on the blocking pool.
fn concat_files(target: &Path, sources: &[(PathBuf, u64)]) -> io::Result<Sha256> {
    use std::io::Read;
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(target)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (path, len) in sources {
        #[allow(clippy::disallowed_methods)] // on the blocking pool
        let mut src = std::fs::File::open(path)?.take(*len);
        let mut copied = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            copied += n as u64;
        }
        if copied != *len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "partial upload {} is shorter than acknowledged",
                    path.display()
                ),
            ));
        }
    }
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    out.sync_data()?;
    Ok(sha)
}

/// `Upload-Metadata`: `key base64,key base64,...` (a key alone has an empty value).
pub fn parse_metadata(header: &str) -> Result<Vec<(String, String)>, TusError> {
    let mut out = Vec::new();
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default().to_string();
        let value = match parts.next() {
            None => String::new(),
            Some(b64) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| {
                        TusError::Invalid(format!("Upload-Metadata value of {key:?} is not base64"))
                    })?;
                String::from_utf8(bytes).map_err(|_| {
                    TusError::Invalid(format!("Upload-Metadata value of {key:?} is not UTF-8"))
                })?
            }
        };
        if parts.next().is_some() {
            return Err(TusError::Invalid(format!(
                "Upload-Metadata pair {key:?} has more than one value"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn meta_value<'a>(meta: &'a [(String, String)], key: &str) -> Option<&'a str> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The target path: `path`, or `filename` joined to `?path=DIR/`.
fn target_path(meta: &[(String, String)], dir: Option<&str>) -> Result<Option<VPath>, TusError> {
    let invalid = |e: crate::paths::PathError| TusError::Invalid(format!("invalid path: {e}"));
    if let Some(path) = meta_value(meta, "path") {
        return VPath::parse(path).map(Some).map_err(invalid);
    }
    match (meta_value(meta, "filename"), dir) {
        (Some(name), Some(dir)) => VPath::parse(dir.trim_end_matches('/'))
            .and_then(|d| d.join(name))
            .map(Some)
            .map_err(invalid),
        _ => Ok(None),
    }
}

/// The write's options from the metadata keys `content_type` (or tus-js-client's
/// `filetype`), `sha256` (hex), `if_none_match` (`*`) and `if_match` (entity tags).
/// `commit` (a commit id) stages the upload in that commit instead (see `commit`).
fn upload_options(meta: &[(String, String)]) -> Result<UploadOptions, TusError> {
    let content_type = meta_value(meta, "content_type")
        .or_else(|| meta_value(meta, "filetype"))
        .filter(|t| !t.is_empty())
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    let expected_sha256 = match meta_value(meta, "sha256") {
        None => None,
        Some(hex_digest) => Some(
            hex::decode(hex_digest.trim())
                .ok()
                .filter(|d| d.len() == 32)
                .ok_or_else(|| {
                    TusError::Invalid("metadata `sha256` must be 64 hex digits".into())
                })?,
        ),
    };
    let precondition = match (
        meta_value(meta, "if_match"),
        meta_value(meta, "if_none_match"),
    ) {
        (Some(_), Some(_)) => {
            return Err(TusError::Invalid(
                "metadata `if_match` and `if_none_match` cannot be combined".into(),
            ))
        }
        (Some(tags), None) => Precondition::MustMatch(parse_etags(tags)),
        (None, Some(n)) if n.trim() == "*" => Precondition::MustNotExist,
        (None, Some(_)) => {
            return Err(TusError::Invalid(
                "metadata `if_none_match` supports only `*`".into(),
            ))
        }
        (None, None) => Precondition::None,
    };
    Ok(UploadOptions {
        content_type,
        precondition,
        expected_sha256,
        size_hint: None,
        digest_sink: None,
    })
}

/// Entity tags as in `If-Match` (strong comparison; weak tags never match).
fn parse_etags(value: &str) -> EtagMatch {
    let value = value.trim();
    if value == "*" {
        return EtagMatch::Any;
    }
    EtagMatch::OneOf(
        value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.starts_with("W/"))
            .map(|t| t.trim_matches('"').to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn metadata_parses_and_names_the_target() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let header = format!("path {},content_type {},empty", b64("a/b.bin"), b64("x/y"));
        let meta = parse_metadata(&header).unwrap();
        assert_eq!(meta_value(&meta, "empty"), Some(""));
        assert_eq!(
            target_path(&meta, None).unwrap().unwrap().as_str(),
            "a/b.bin"
        );
        assert_eq!(upload_options(&meta).unwrap().content_type, "x/y");
        let meta = parse_metadata(&format!("filename {}", b64("c.txt"))).unwrap();
        assert!(target_path(&meta, None).unwrap().is_none());
        assert_eq!(
            target_path(&meta, Some("dir/")).unwrap().unwrap().as_str(),
            "dir/c.txt"
        );
        assert!(parse_metadata("path !!!").is_err());
        // `commit` stages into a commit (issue 21); it is checked at creation.
        let commit = parse_metadata(&format!("commit {}", b64("c1"))).unwrap();
        assert!(upload_options(&commit).is_ok());
        let pre = parse_metadata(&format!("if_none_match {}", b64("*"))).unwrap();
        assert_eq!(
            upload_options(&pre).unwrap().precondition,
            Precondition::MustNotExist
        );
    }

    #[test]
    fn concat_round_trips() {
        let c = Concat::Final(vec!["a".into(), "b".into()]);
        let row = SessionRow {
            id: "x".into(),
            owner: String::new(),
            length: None,
            offset: 0,
            target: String::new(),
            metadata: String::new(),
            concat: c.to_text(),
            state: SessionState::Open,
            file_id: None,
            created_at: 0,
            expires_at: 0,
            remote: None,
        };
        assert_eq!(Concat::of(&row), c);
    }
}
