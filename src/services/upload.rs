//! The one write entry point: every front end (raw and multipart uploads today; S3, tus,
//! commits and the web UI later) writes a file through [`FileService::upload`], or, for a
//! request carrying several files, through an [`UploadBatch`].
//!
//! The pipeline owns the rules of a write, in this order:
//! 1. the size limit against the declared length (`size_hint`), before anything else;
//! 2. admission: an [`UploadGate`] permit, held until the request's files are committed;
//! 3. the body deadlines ([`BodyLimits`]): an idle timeout and a minimum rate over a window
//!    (Apache `mod_reqtimeout` `MinRate`), plus, for multipart, a wait deadline per part;
//! 4. the principal's prefix and the precondition's precheck (before a byte is streamed);
//! 5. streaming into a staging file, hashed in flight (plus an optional extra digest);
//! 6. verification of the client's declared SHA-256;
//! 7. the commit under the lock set (blob rename + metadata transaction) and its event.
//!
//! Every error path cleans up: a staging file removes itself when its writer or staged blob
//! drops, and the permit frees its slot on drop.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::files::{FileService, RequestCtx};
use super::metadata::{FileMeta, MetadataError, Precondition, S3ObjectRow};
use super::storage::StagedBlob;
use super::ServiceError;
use crate::paths::VPath;

mod batch;
mod deadlines;

pub use batch::UploadBatch;
pub use deadlines::BodyLimits;
use deadlines::Deadlines;

/// Chunks larger than this feed the extra digest on the blocking pool.
const INLINE_DIGEST_LIMIT: usize = 64 * 1024;

/// Why an upload body was refused while it streamed in. `crate::error` maps each to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No byte arrived for the idle timeout.
    #[error("no body bytes arrived for {} s; the upload was discarded", .0.as_secs_f64())]
    Idle(Duration),
    /// Fewer than `min_rate` bytes/s arrived over a window of waiting.
    #[error("the body arrived slower than {min_rate} bytes/s over {} s; the upload was discarded", .window.as_secs_f64())]
    TooSlow {
        /// The configured minimum rate, in bytes per second.
        min_rate: u64,
        /// The window of waiting for the client over which the rate is averaged.
        window: Duration,
    },
    /// The next multipart part's headers did not arrive in time.
    #[error("no multipart part arrived within {} s; the upload was discarded", .0.as_secs_f64())]
    PartWait(Duration),
    /// The whole request is larger than the upload limit.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The upload size limit, in bytes.
        limit: u64,
    },
    /// The body's SHA-256 is not the one the client declared.
    #[error("the body's SHA-256 is {actual}, not the {expected} the request declared")]
    ChecksumMismatch {
        /// The SHA-256 of the bytes received, lowercase hex.
        actual: String,
        /// The SHA-256 the request declared, lowercase hex.
        expected: String,
    },
    /// The body could not be read to its end (connection reset, bad chunked encoding).
    #[error("the request body could not be read to its end")]
    Read(String),
    /// The multipart framing is invalid.
    #[error("invalid multipart body: {0}")]
    Multipart(String),
    /// A part's header block (or the preamble before the first part) is too long.
    #[error("a part's headers exceed {0} bytes")]
    PartHeaderTooLarge(usize),
    /// More parts of any kind than allowed.
    #[error("at most {0} parts per multipart upload")]
    TooManyParts(usize),
    /// More file parts than allowed.
    #[error("at most {0} files per multipart upload")]
    TooManyFiles(usize),
    /// A multipart body with no file in it.
    #[error("the multipart body has no file part (a part with a filename)")]
    NoFilePart,
    /// The front end's own check of the body (its [`DigestSink`]) refused it, before the
    /// commit: an S3 checksum or Content-MD5 that does not match.
    #[error("the body does not match its declared checksum: {0}")]
    DigestRejected(String),
}

impl UploadError {
    /// Whether this is a body deadline (answered 408 `body_timeout`).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UploadError::Idle(_) | UploadError::TooSlow { .. } | UploadError::PartWait(_)
        )
    }
}

impl From<std::io::Error> for UploadError {
    fn from(e: std::io::Error) -> Self {
        UploadError::Read(e.to_string())
    }
}

/// A digest computed over the body in flight, next to the SHA-256 that addresses the blob
/// (an S3 front end's MD5 ETag, for example).
pub trait DigestSink: Send + 'static {
    /// Feeds the next bytes of the body.
    fn update(&mut self, data: &[u8]);
    /// The digest, once the body is complete and before the commit: an error
    /// ([`UploadError::DigestRejected`]) discards the upload.
    fn finalize(self: Box<Self>) -> Result<Vec<u8>, UploadError>;
    /// [`finalize`](Self::finalize), and the S3 record the commit writes with the version,
    /// in its transaction (a front end whose record depends on the digests: the S3 API's
    /// MD5 ETag and checksums). The pipeline calls this one.
    fn finalize_with_record(
        self: Box<Self>,
    ) -> Result<(Vec<u8>, Option<S3ObjectRow>), UploadError> {
        self.finalize().map(|digest| (digest, None))
    }
}

/// How one file is to be written.
#[derive(Default)]
pub struct UploadOptions {
    /// Stored with the file and served back.
    pub content_type: String,
    /// Checked before streaming (precheck) and again in the commit transaction.
    pub precondition: Precondition,
    /// The SHA-256 the client declared; a mismatch discards the upload.
    pub expected_sha256: Option<Vec<u8>>,
    /// The declared length (`Content-Length`); over the limit is refused before admission.
    pub size_hint: Option<u64>,
    /// An extra digest over the same bytes, returned in [`UploadOutcome::extra_digest`].
    pub digest_sink: Option<Box<dyn DigestSink>>,
}

impl std::fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadOptions")
            .field("content_type", &self.content_type)
            .field("precondition", &self.precondition)
            .field(
                "expected_sha256",
                &self.expected_sha256.as_ref().map(hex::encode),
            )
            .field("size_hint", &self.size_hint)
            .field("digest_sink", &self.digest_sink.is_some())
            .finish()
    }
}

/// A committed file.
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    pub(crate) meta: FileMeta,
    /// A new path (201), not a new version of an existing one (200).
    pub created: bool,
    /// [`UploadOptions::digest_sink`]'s result, if one was given.
    pub extra_digest: Option<Vec<u8>>,
}

/// A file already received in full elsewhere under the data directory, durable (fdatasynced)
/// and not yet visible: a tus session's bytes. Its SHA-256 is usually known, computed while
/// the bytes arrived; when not (after a restart), it is computed once here, on the blocking
/// pool, before anything else.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub(crate) path: std::path::PathBuf,
    pub(crate) size: u64,
    pub(crate) sha256: Option<[u8; 32]>,
}

/// Content already assembled as an object in the blob store's bucket (a tus session staged
/// there), its SHA-256 computed while the bytes arrived; not yet visible.
#[derive(Debug, Clone)]
pub struct StagedObject {
    /// The object's key in the bucket.
    pub key: String,
    pub(crate) size: u64,
    pub(crate) sha256: [u8; 32],
}

/// A fully received, verified file in staging, not yet visible.
#[derive(Debug)]
struct StagedUpload {
    path: VPath,
    staged: StagedBlob,
    content_type: String,
    precondition: Precondition,
    extra_digest: Option<Vec<u8>>,
    s3: Option<S3ObjectRow>,
}

impl FileService {
    /// Writes one file from `body`: admission, limits, deadlines, staging, verification,
    /// commit and event. Nothing of it stays behind on any error.
    pub async fn upload<S, E>(
        &self,
        ctx: &RequestCtx,
        path: &VPath,
        body: S,
        options: UploadOptions,
    ) -> Result<UploadOutcome, ServiceError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<UploadError>,
    {
        self.check_size_hint(options.size_hint)?;
        let _permit = self.admit_upload_sized(options.size_hint).await?;
        let body = Deadlines::new(body, self.body_limits(), None);
        let staged = self.stage(ctx, path, body, options).await?;
        self.commit_staged(ctx, staged).await
    }

    /// Writes one file from `body` into open commit `commit_id` (issue 21): the same
    /// admission, limits, deadlines, staging and verification as [`FileService::upload`],
    /// then staged in the commit instead of committed; nothing becomes visible.
    pub async fn upload_to_commit<S, E>(
        &self,
        ctx: &RequestCtx,
        commit: (&str, usize),
        path: &VPath,
        body: S,
        options: UploadOptions,
    ) -> Result<super::metadata::commits::StagedEntry, ServiceError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<UploadError>,
    {
        self.check_size_hint(options.size_hint)?;
        let _permit = self.admit_upload_sized(options.size_hint).await?;
        let body = Deadlines::new(body, self.body_limits(), None);
        let staged = self.stage(ctx, path, body, options).await?;
        let file = super::files::StagedFile {
            path: staged.path,
            staged: staged.staged,
            content_type: staged.content_type,
            precondition: staged.precondition,
            s3: staged.s3,
        };
        let mut entries = self
            .stage_into_commit(ctx, commit.0, vec![file], commit.1)
            .await?;
        entries
            .pop()
            .ok_or_else(|| super::metadata::MetadataError::Backend("no staged entry".into()).into())
    }

    /// Starts a request that carries several files (multipart): one permit for all of them.
    /// `size_hint` is the whole request's declared length.
    pub async fn begin_batch(&self, size_hint: Option<u64>) -> Result<UploadBatch, ServiceError> {
        self.check_size_hint(size_hint)?;
        let permit = self.admit_upload_sized(size_hint).await?;
        Ok(UploadBatch {
            service: self.clone(),
            _permit: permit,
            staged: Vec::new(),
        })
    }

    fn check_size_hint(&self, size_hint: Option<u64>) -> Result<(), UploadError> {
        let limit = self.max_upload_size();
        match size_hint {
            Some(len) if len > limit => Err(UploadError::TooLarge { limit }),
            _ => Ok(()),
        }
    }

    /// Checks, streams and verifies one file into staging.
    async fn stage<S, E>(
        &self,
        ctx: &RequestCtx,
        path: &VPath,
        body: S,
        options: UploadOptions,
    ) -> Result<StagedUpload, ServiceError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<UploadError>,
    {
        let UploadOptions {
            content_type,
            precondition,
            expected_sha256,
            size_hint: _,
            mut digest_sink,
        } = options;
        ctx.check(path.as_str())?;
        self.precheck(path, &precondition).await?;
        let mut writer = self.begin_upload().await?;
        let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Into::into)?;
            bytes_in.increment(chunk.len() as u64);
            match digest_sink.take() {
                None => writer.write(chunk).await?,
                Some(sink) if chunk.len() <= INLINE_DIGEST_LIMIT => {
                    let mut sink = sink;
                    sink.update(&chunk);
                    digest_sink = Some(sink);
                    writer.write(chunk).await?;
                }
                Some(mut sink) => {
                    let to_digest = chunk.clone();
                    let digesting = crate::blocking::run(move || {
                        sink.update(&to_digest);
                        Ok(sink)
                    });
                    let (digested, written) = tokio::join!(digesting, writer.write(chunk));
                    digest_sink = Some(digested.map_err(UploadError::from)?);
                    written?;
                }
            }
        }
        let staged = writer.finish(self.storage()).await?;
        if let Some(expected) = expected_sha256 {
            if staged.sha256_bytes().as_deref() != Some(expected.as_slice()) {
                return Err(UploadError::ChecksumMismatch {
                    actual: staged.blob.sha256.clone(),
                    expected: hex::encode(&expected),
                }
                .into());
            }
        }
        let (extra_digest, s3) = match digest_sink {
            Some(sink) => {
                let (digest, s3) = sink.finalize_with_record()?;
                (Some(digest), s3)
            }
            None => (None, None),
        };
        Ok(StagedUpload {
            path: path.clone(),
            staged,
            content_type,
            precondition,
            extra_digest,
            s3,
        })
    }

    /// Checks and verifies a file that is already staged ([`StagedFile`]): the same rules as
    /// [`FileService::stage`] (prefix, precheck, declared SHA-256), with no second read of
    /// the bytes when their digest is known. The file itself stays where it is.
    async fn stage_file(
        &self,
        ctx: &RequestCtx,
        path: &VPath,
        file: StagedFile,
        options: UploadOptions,
    ) -> Result<StagedUpload, ServiceError> {
        let (content_type, precondition, expected_sha256) =
            self.admit_staged(ctx, path, file.size, options).await?;
        let (sha256, size) = match file.sha256 {
            Some(digest) => (hex::encode(digest), file.size),
            None => super::storage::hash_file(file.path.clone())
                .await
                .map_err(|e| UploadError::Read(e.to_string()))?,
        };
        if size != file.size {
            return Err(UploadError::Read(format!(
                "the staged file has {size} bytes, not the {} expected",
                file.size
            ))
            .into());
        }
        check_expected(expected_sha256, &sha256)?;
        let blob = super::storage::BlobRef { sha256, size };
        let staged = self.storage().adopt_staged(&file.path, blob).await?;
        Ok(staged_upload(path, staged, content_type, precondition))
    }

    /// What [`FileService::stage_file`] and [`FileService::stage_object`] check before they
    /// look at the content: the size limit, the token's prefix and the precondition. Returns
    /// the options they still need (content type, precondition, declared SHA-256).
    async fn admit_staged(
        &self,
        ctx: &RequestCtx,
        path: &VPath,
        size: u64,
        options: UploadOptions,
    ) -> Result<(String, Precondition, Option<Vec<u8>>), ServiceError> {
        let UploadOptions {
            content_type,
            precondition,
            expected_sha256,
            size_hint: _,
            digest_sink: _,
        } = options;
        self.check_size_hint(Some(size))?;
        ctx.check(path.as_str())?;
        self.precheck(path, &precondition).await?;
        Ok((content_type, precondition, expected_sha256))
    }

    /// Like [`FileService::stage_file`] for content assembled in the object store (a tus
    /// session staged there, see [`super::storage::TusStaging`]): its digest is known, the
    /// object stays where it is, and the commit copies it into place inside the store.
    async fn stage_object(
        &self,
        ctx: &RequestCtx,
        path: &VPath,
        object: StagedObject,
        options: UploadOptions,
    ) -> Result<StagedUpload, ServiceError> {
        let (content_type, precondition, expected_sha256) =
            self.admit_staged(ctx, path, object.size, options).await?;
        let sha256 = hex::encode(object.sha256);
        check_expected(expected_sha256, &sha256)?;
        let blob = super::storage::BlobRef {
            sha256,
            size: object.size,
        };
        let staged = self.storage().adopt_remote(object.key, blob);
        Ok(staged_upload(path, staged, content_type, precondition))
    }

    async fn commit_staged(
        &self,
        ctx: &RequestCtx,
        upload: StagedUpload,
    ) -> Result<UploadOutcome, ServiceError> {
        let file = super::files::StagedFile {
            path: upload.path,
            staged: upload.staged,
            content_type: upload.content_type,
            precondition: upload.precondition,
            s3: upload.s3,
        };
        let outcome = self
            .commit_many(vec![file], ctx)
            .await?
            .pop()
            .ok_or_else(|| MetadataError::Backend("a put answered no outcome".into()))?;
        Ok(UploadOutcome {
            meta: outcome.meta,
            created: outcome.created,
            extra_digest: upload.extra_digest,
        })
    }
}

/// Refuses content whose SHA-256 (hex) differs from the one the client declared.
fn check_expected(expected: Option<Vec<u8>>, sha256: &str) -> Result<(), UploadError> {
    match expected {
        Some(expected) if hex::decode(sha256).ok().as_deref() != Some(expected.as_slice()) => {
            Err(UploadError::ChecksumMismatch {
                actual: sha256.to_string(),
                expected: hex::encode(&expected),
            })
        }
        _ => Ok(()),
    }
}

/// An already staged source (tus) ready to commit: no extra digest (that needs the bytes
/// streamed past it) and no S3 record.
fn staged_upload(
    path: &VPath,
    staged: StagedBlob,
    content_type: String,
    precondition: Precondition,
) -> StagedUpload {
    StagedUpload {
        path: path.clone(),
        staged,
        content_type,
        precondition,
        extra_digest: None,
        s3: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::services::files::UploadGate;
    use crate::services::lock_manager::LockManager;
    use crate::services::metadata::sqlite::SqliteMetadata;
    use crate::services::notification::{Notifier, Retention};
    use crate::services::storage::BlobStore;
    use sha2::Digest;
    use std::sync::Arc;

    async fn service(dir: &std::path::Path, limits: BodyLimits) -> FileService {
        let meta: Arc<dyn crate::services::metadata::MetadataStore> = Arc::new(
            SqliteMetadata::open(dir, Duration::from_secs(10), 2)
                .await
                .unwrap(),
        );
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let retention = Retention {
            max_age: Duration::from_secs(3600),
            max_events: 1_000_000,
            prune_every: Duration::from_secs(3600),
        };
        let notifier = Notifier::start(Arc::clone(&meta), retention, shutdown)
            .await
            .unwrap();
        FileService::new(
            BlobStore::open(dir).await.unwrap(),
            meta,
            LockManager::new(Duration::from_secs(5)),
            notifier,
            1 << 20,
            UploadGate::new(1, 0, Duration::from_millis(10)),
        )
        .with_body_limits(limits)
    }

    /// An extra digest: SHA-256 again, so the result can be compared with the blob's.
    struct Sha(sha2::Sha256);

    impl DigestSink for Sha {
        fn update(&mut self, data: &[u8]) {
            self.0.update(data);
        }
        fn finalize(self: Box<Self>) -> Result<Vec<u8>, UploadError> {
            Ok(self.0.finalize().to_vec())
        }
    }

    fn body(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, UploadError>> + Send {
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    async fn temp_files(dir: &std::path::Path) -> usize {
        let mut n = 0;
        if let Ok(mut rd) = tokio::fs::read_dir(dir.join("tmp")).await {
            while let Ok(Some(_)) = rd.next_entry().await {
                n += 1;
            }
        }
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_commits_verifies_digests_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let files = service(dir.path(), BodyLimits::default()).await;
        let ctx = RequestCtx::internal("t");
        let path = VPath::parse("a/b.bin").unwrap();
        // Small and large chunks: the extra digest runs inline and on the blocking pool.
        let chunks = vec![vec![1u8; 10], vec![2u8; 200_000], vec![3u8; 5]];
        let all = chunks.concat();
        let options = UploadOptions {
            content_type: "x/y".into(),
            expected_sha256: Some(sha2::Sha256::digest(&all).to_vec()),
            digest_sink: Some(Box::new(Sha(sha2::Sha256::new()))),
            ..UploadOptions::default()
        };
        let out = files
            .upload(&ctx, &path, body(chunks), options)
            .await
            .unwrap();
        assert!(out.created);
        assert_eq!(out.meta.sha256, hex::encode(sha2::Sha256::digest(&all)));
        assert_eq!(
            out.extra_digest.unwrap(),
            sha2::Sha256::digest(&all).to_vec()
        );

        // A wrong declared digest: refused, nothing committed, no temp file, slot free.
        let options = UploadOptions {
            expected_sha256: Some(vec![0; 32]),
            ..UploadOptions::default()
        };
        let other = VPath::parse("a/c.bin").unwrap();
        let e = files
            .upload(&ctx, &other, body(vec![b"x".to_vec()]), options)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ServiceError::Upload(UploadError::ChecksumMismatch { .. })
            ),
            "{e:?}"
        );
        assert!(files.meta_by_path(&other, &ctx).await.is_err());
        // Over the limit, declared or streamed.
        let e = files
            .upload(
                &ctx,
                &other,
                body(vec![]),
                UploadOptions {
                    size_hint: Some(2 << 20),
                    ..UploadOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Upload(UploadError::TooLarge { .. })),
            "{e:?}"
        );
        let e = files
            .upload(
                &ctx,
                &other,
                body(vec![vec![0; 1 << 20], vec![0]]),
                UploadOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Storage(_)), "{e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(temp_files(dir.path()).await, 0);
        assert_eq!(files.upload_gate_stats().free_slots, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_body_is_cut_off_by_the_minimum_rate() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BodyLimits {
            idle: Duration::from_secs(10),
            min_rate: 1000,
            window: Duration::from_millis(600),
            part_wait: Duration::from_secs(10),
        };
        let files = service(dir.path(), limits).await;
        let ctx = RequestCtx::internal("t");
        let path = VPath::parse("slow").unwrap();
        // A byte every 200 ms: 5 bytes/s, under the 1000 bytes/s asked for.
        let slow = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            (n < 100).then(|| (Ok::<_, UploadError>(Bytes::from_static(b"z")), n + 1))
        });
        let started = std::time::Instant::now();
        let e = files
            .upload(&ctx, &path, slow, UploadOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Upload(UploadError::TooSlow { .. })),
            "{e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(temp_files(dir.path()).await, 0);
        assert_eq!(files.upload_gate_stats().free_slots, 1);
    }
}
