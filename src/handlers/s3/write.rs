//! The one way the S3 API writes a file: [`write_object`]. PutObject, CopyObject (when the
//! content must be re-streamed) and CompleteMultipartUpload all call it, so admission, the
//! body deadline, the size limit, locks, the commit, the event and cleanup are the native
//! upload's.
//!
//! It is one call of `FileService::upload` (the pipeline every front end writes through), or
//! of `FileService::upload_to_commit` when the request names an open commit (issue 21,
//! header `x-vaultfs-commit`: staged, invisible until the commit's finish, its S3 record
//! carried to the finish), with the S3 digests (MD5 for the ETag, the flexible checksums)
//! computed in flight by a [`DigestSink`] whose check ([`WriteOptions::verify`]) runs before
//! the commit.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::{s3_error, S3Error, S3Result};

use super::errors::{from_service, from_staging};
use crate::app::AppState;
use crate::paths::VPath;
use crate::services::files::RequestCtx;
use crate::services::metadata::S3ObjectRow;
use crate::services::metadata::{FileMeta, Precondition};
use crate::services::s3_meta::{Checksums, ObjectAttrs};
use crate::services::storage::INLINE_HASH_LIMIT;
use crate::services::upload::{DigestSink, UploadError, UploadOptions};

/// What the digests of a received body came to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Digests {
    /// Hex MD5, when asked for.
    pub md5: Option<String>,
    pub checksums: Checksums,
    pub size: u64,
}

/// Checks the received body's digests before the commit; an error discards the upload.
pub(crate) type Verify = Box<dyn FnOnce(&Digests) -> S3Result<()> + Send>;

pub(crate) struct WriteOptions {
    pub content_type: String,
    pub precondition: Precondition,
    /// Compute the MD5 (single-part ETag).
    pub md5: bool,
    /// Which flexible checksums to compute.
    pub checksums: ChecksumHasher,
    pub verify: Verify,
    /// The object's S3 record, committed in the version's transaction.
    pub record: Record,
    /// Stage into this open commit (`x-vaultfs-commit`) instead of committing.
    pub commit: Option<String>,
}

/// What the S3 record of a written object will be.
pub(crate) struct Record {
    pub attrs: ObjectAttrs,
    /// The ETag; `None`: the MD5 computed from the body.
    pub etag: Option<String>,
    /// Store the checksums computed from the body (else `attrs.checksums` as given).
    pub body_checksums: bool,
}

/// A committed (or staged) write.
#[derive(Debug)]
pub(crate) struct Written {
    /// The new version; `None` when staged into a commit (nothing visible yet).
    pub meta: Option<FileMeta>,
    pub digests: Digests,
}

/// MD5 and flexible checksums computed while the body streams; chunks larger than
/// [`INLINE_HASH_LIMIT`] are hashed on the blocking pool.
pub(crate) struct Hashing {
    md5: Option<Md5>,
    sums: Option<ChecksumHasher>,
    size: u64,
}

impl Hashing {
    pub(crate) fn new(md5: bool, sums: ChecksumHasher) -> Self {
        Hashing {
            md5: md5.then(Md5::new),
            sums: Some(sums),
            size: 0,
        }
    }

    pub(crate) async fn update(&mut self, chunk: Bytes) -> S3Result<()> {
        self.size += chunk.len() as u64;
        if chunk.len() <= INLINE_HASH_LIMIT {
            if let Some(m) = self.md5.as_mut() {
                m.update(&chunk);
            }
            if let Some(s) = self.sums.as_mut() {
                s.update(&chunk);
            }
            return Ok(());
        }
        let (mut md5, mut sums) = (self.md5.take(), self.sums.take());
        let (m, s) = crate::blocking::run(move || {
            if let Some(m) = md5.as_mut() {
                m.update(&chunk);
            }
            if let Some(s) = sums.as_mut() {
                s.update(&chunk);
            }
            Ok((md5, sums))
        })
        .await
        .map_err(S3Error::internal_error)?;
        self.md5 = m;
        self.sums = s;
        Ok(())
    }

    pub(crate) fn finish(self) -> S3Result<Digests> {
        let sums = self
            .sums
            .ok_or_else(|| S3Error::internal_error(std::io::Error::other("hash state lost")))?
            .finalize();
        Ok(Digests {
            md5: self.md5.map(|m| hex::encode(m.finalize())),
            checksums: Checksums {
                crc32: sums.checksum_crc32,
                crc32c: sums.checksum_crc32c,
                crc64nvme: sums.checksum_crc64nvme,
                sha1: sums.checksum_sha1,
                sha256: sums.checksum_sha256,
            },
            size: self.size,
        })
    }
}

/// The S3 digests as a pipeline [`DigestSink`]: fed the body in flight (large chunks on the
/// blocking pool, by the pipeline), checked by `verify` before the commit. What it found, or
/// the S3 error it refused with, is left in `out` for [`write_object`].
struct S3Digests {
    md5: Option<Md5>,
    sums: ChecksumHasher,
    size: u64,
    verify: Option<Verify>,
    record: Option<Record>,
    /// Written once, by `finalize`; read by `write_object` after the upload returns.
    out: Arc<Mutex<Option<S3Result<Digests>>>>,
}

impl DigestSink for S3Digests {
    fn update(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if let Some(m) = self.md5.as_mut() {
            m.update(data);
        }
        self.sums.update(data);
    }

    fn finalize(self: Box<Self>) -> Result<Vec<u8>, UploadError> {
        self.finalize_with_record().map(|(digest, _)| digest)
    }

    /// The digests, checked; and the object's record, built from them.
    fn finalize_with_record(
        self: Box<Self>,
    ) -> Result<(Vec<u8>, Option<S3ObjectRow>), UploadError> {
        let mut this = *self;
        let record = this.record.take();
        let sums = this.sums.finalize();
        let digests = Digests {
            md5: this.md5.map(|m| hex::encode(m.finalize())),
            checksums: Checksums {
                crc32: sums.checksum_crc32,
                crc32c: sums.checksum_crc32c,
                crc64nvme: sums.checksum_crc64nvme,
                sha1: sums.checksum_sha1,
                sha256: sums.checksum_sha256,
            },
            size: this.size,
        };
        let verdict = match this.verify {
            Some(verify) => verify(&digests).map(|()| digests),
            None => Ok(digests),
        };
        let verdict = verdict.and_then(|digests| {
            let row = match record {
                None => None,
                Some(r) => {
                    let mut attrs = r.attrs;
                    if r.body_checksums {
                        attrs.checksums = digests.checksums.clone();
                    }
                    let etag = r.etag.or_else(|| digests.md5.clone()).unwrap_or_default();
                    Some(attrs.row(etag).map_err(S3Error::internal_error)?)
                }
            };
            Ok((digests, row))
        });
        let (slot, result) = match verdict {
            Ok((digests, row)) => (Ok(digests), Ok((Vec::new(), row))),
            Err(e) => {
                let why = format!("{e:?}");
                (Err(e), Err(UploadError::DigestRejected(why)))
            }
        };
        *lock(&this.out) = Some(slot);
        result
    }
}

/// The slot's lock, whether or not a holder panicked (nothing holds it across an `.await`).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Streams `body` into a new version of `path` and commits it (one commit, one event),
/// through the one upload pipeline: admission, the size limit, the body deadlines and
/// minimum rate, staging, verification, locks, the commit, the event and cleanup. With
/// [`WriteOptions::commit`], the same pipeline stages it into that open commit instead.
pub(crate) async fn write_object<S, E>(
    state: &AppState,
    ctx: &RequestCtx,
    path: &VPath,
    body: S,
    opts: WriteOptions,
) -> S3Result<Written>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<BodyError>,
{
    let out = Arc::new(Mutex::new(None));
    // s3s reports a bad chunk signature or payload hash as a stream error: keep the S3 error
    // it carries, and give the pipeline a read failure (which discards the upload).
    let body_failure: Arc<Mutex<Option<S3Error>>> = Arc::default();
    let failure = Arc::clone(&body_failure);
    let body = body.map(move |chunk| {
        chunk.map_err(|e| {
            let e = body_error(e);
            let message = format!("{e:?}");
            *lock(&failure) = Some(e);
            UploadError::Read(message)
        })
    });
    let sink = S3Digests {
        md5: opts.md5.then(Md5::new),
        sums: opts.checksums,
        size: 0,
        verify: Some(opts.verify),
        record: Some(opts.record),
        out: Arc::clone(&out),
    };
    let options = UploadOptions {
        content_type: opts.content_type,
        precondition: opts.precondition,
        expected_sha256: None,
        size_hint: None,
        digest_sink: Some(Box::new(sink)),
    };
    let staging = opts.commit.is_some();
    let result = match opts.commit.as_deref() {
        None => state
            .files
            .upload(ctx, path, body, options)
            .await
            .map(|outcome| Some(outcome.meta)),
        Some(commit) => state
            .files
            .upload_to_commit(
                ctx,
                (commit, state.config.commit_max_files),
                path,
                body,
                options,
            )
            .await
            .map(|_| None),
    };
    let digests = lock(&out).take();
    match result {
        Ok(meta) => {
            let digests = digests.ok_or_else(|| {
                S3Error::internal_error(std::io::Error::other("the digests were not computed"))
            })??;
            Ok(Written { meta, digests })
        }
        Err(e) => {
            if let Some(Err(rejected)) = digests {
                return Err(rejected);
            }
            if let Some(failed) = lock(&body_failure).take() {
                return Err(failed);
            }
            if staging {
                return Err(from_staging(e));
            }
            Err(from_service(e))
        }
    }
}

/// What a request body stream fails with.
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// s3s reports a payload hash mismatch, a bad chunk signature or a malformed aws-chunked body
/// as a stream error (an `S3Error` when it knows the S3 code).
pub(crate) fn body_error(e: impl Into<BodyError>) -> S3Error {
    let e: BodyError = e.into();
    tracing::debug!(error = %e, "S3 request body failed");
    match e.downcast::<S3Error>() {
        Ok(s3) => *s3,
        Err(other) if other.to_string().to_ascii_lowercase().contains("signature") => {
            s3_error!(SignatureDoesNotMatch, "a chunk signature does not match")
        }
        Err(_) => s3_error!(
            IncompleteBody,
            "the request body could not be read to its end"
        ),
    }
}
