//! The one way the S3 API writes a file: [`write_object`]. PutObject, CopyObject (when the
//! content must be re-streamed) and CompleteMultipartUpload all call it, so admission, the
//! body deadline, the size limit, locks, the commit, the event and cleanup are the native
//! upload's.
//!
//! For the lead: today it runs the native recipe (`admit_upload`, `precheck`,
//! `begin_upload`, `commit_upload`, as `handlers/upload.rs` does); when
//! `FileService::upload(ctx, path, body, UploadOptions)` lands, its body becomes that one
//! call, with [`WriteOptions::verify`] run as the pre-commit verification hook.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::{s3_error, S3Error, S3Result};

use super::errors::from_service;
use crate::paths::VPath;
use crate::server::AppState;
use crate::services::files::RequestCtx;
use crate::services::metadata::{FileMeta, Precondition};
use crate::services::s3_meta::Checksums;
use crate::services::storage::INLINE_HASH_LIMIT;

/// What the digests of a received body came to.
#[derive(Debug, Clone, Default)]
pub struct Digests {
    /// Hex MD5, when asked for.
    pub md5: Option<String>,
    pub checksums: Checksums,
    pub size: u64,
}

/// Checks the received body's digests before the commit; an error discards the upload.
pub type Verify = Box<dyn FnOnce(&Digests) -> S3Result<()> + Send>;

pub struct WriteOptions {
    pub content_type: String,
    pub precondition: Precondition,
    /// Compute the MD5 (single-part ETag).
    pub md5: bool,
    /// Which flexible checksums to compute.
    pub checksums: ChecksumHasher,
    pub verify: Verify,
}

/// A committed write.
#[derive(Debug)]
pub struct Written {
    pub meta: FileMeta,
    pub digests: Digests,
}

/// MD5 and flexible checksums computed while the body streams; chunks larger than
/// [`INLINE_HASH_LIMIT`] are hashed on the blocking pool.
pub struct Hashing {
    md5: Option<Md5>,
    sums: Option<ChecksumHasher>,
    size: u64,
}

impl Hashing {
    pub fn new(md5: bool, sums: ChecksumHasher) -> Self {
        Hashing {
            md5: md5.then(Md5::new),
            sums: Some(sums),
            size: 0,
        }
    }

    pub async fn update(&mut self, chunk: Bytes) -> S3Result<()> {
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

    pub fn finish(self) -> S3Result<Digests> {
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

/// Streams `body` into a new version of `path` and commits it (one commit, one event).
pub async fn write_object<S, E>(
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
    let files = &state.files;
    ctx.check(path.as_str()).map_err(from_service)?;
    files
        .precheck(path, &opts.precondition)
        .await
        .map_err(from_service)?;
    // Admission before a byte of the body is read; the permit lives until the commit.
    let _permit = files.admit_upload().await.map_err(from_service)?;
    let mut writer = files.begin_upload().await.map_err(from_service)?;
    let mut hashing = Hashing::new(opts.md5, opts.checksums);
    let idle = state.config.body_idle_timeout;
    let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
    tokio::pin!(body);
    while let Some(chunk) = tokio::time::timeout(idle, body.next())
        .await
        .map_err(|_| s3_error!(RequestTimeout, "no body bytes arrived in time"))?
    {
        let chunk = chunk.map_err(body_error)?;
        bytes_in.increment(chunk.len() as u64);
        hashing.update(chunk.clone()).await?;
        writer
            .write(chunk)
            .await
            .map_err(|e| from_service(e.into()))?;
    }
    let staged = writer
        .finish(files.storage())
        .await
        .map_err(|e| from_service(e.into()))?;
    let digests = hashing.finish()?;
    (opts.verify)(&digests)?;
    let outcome = files
        .commit_upload(path, staged, opts.content_type, opts.precondition, ctx)
        .await
        .map_err(from_service)?;
    Ok(Written {
        meta: outcome.meta,
        digests,
    })
}

/// What a request body stream fails with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// s3s reports a payload hash mismatch, a bad chunk signature or a malformed aws-chunked body
/// as a stream error (an `S3Error` when it knows the S3 code).
pub fn body_error(e: impl Into<BodyError>) -> S3Error {
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
