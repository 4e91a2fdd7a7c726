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
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

mod append;
mod checksum;
mod complete;
mod concat;
mod live;
mod receive;
mod remote;
mod session;
mod sweep;
mod upload_metadata;

use super::files::{FileService, RequestCtx};
use super::metadata::tus::{SessionRow, SessionState, TusStore};
use super::metadata::{now_ms, MetadataError};
use super::storage::TusStaging;
use super::upload::UploadError;
use super::ServiceError;
pub(crate) use checksum::{Checksum, ChecksumAlgorithm};
use live::{lock, Live};
pub(crate) use session::{Append, Concat, Creation, SessionView};
pub(crate) use upload_metadata::parse_metadata;
use upload_metadata::{meta_value, target_path, upload_options};

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
pub(crate) struct TusLimits {
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
    pub(crate) fn from_config(config: &crate::config::Config) -> Self {
        TusLimits {
            expiry: config.tus_expiry,
            max_sessions: config.tus_max_sessions_per_token,
            max_staging: config.tus_max_staging_per_token,
            commit_max_files: config.commit_max_files,
        }
    }
}

/// The tus sessions of a server.
#[derive(Clone)]
pub(crate) struct TusService {
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
    pub(crate) fn max_size(&self) -> u64 {
        self.inner.files.max_upload_size()
    }

    /// Creates a session (and, for a final concatenation, concatenates and commits it).
    pub(crate) async fn create(
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
    pub(crate) async fn status(&self, ctx: &RequestCtx, id: &str) -> Result<SessionView, TusError> {
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
    pub(crate) async fn append<S, E, R>(
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
    pub(crate) async fn terminate(&self, ctx: &RequestCtx, id: &str) -> Result<(), TusError> {
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
