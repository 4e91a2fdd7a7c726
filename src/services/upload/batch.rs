//! [`UploadBatch`]: the files of one request, staged as they arrive and committed together.

use std::future::Future;

use bytes::Bytes;
use futures_util::Stream;

use super::deadlines::Deadlines;
use super::{StagedFile, StagedObject, StagedUpload, UploadError, UploadOptions, UploadOutcome};
use crate::paths::VPath;
use crate::services::files::{FileService, RequestCtx};
use crate::services::ServiceError;

/// Several files of one request: each is staged (streamed and verified) as it arrives, and
/// all are committed by one [`UploadBatch::commit`] once the request is complete, so a
/// request refused midway (limit, deadline, bad part) commits nothing.
#[derive(Debug)]
pub struct UploadBatch {
    pub(super) service: FileService,
    pub(super) _permit: crate::services::files::UploadPermit,
    pub(super) staged: Vec<StagedUpload>,
}

impl UploadBatch {
    /// The whole request body with the deadlines and the size limit of the whole request
    /// applied: what a multipart parser reads from.
    pub fn body<S, E>(&self, body: S) -> impl Stream<Item = Result<Bytes, UploadError>> + Send
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<UploadError>,
    {
        Deadlines::new(
            body,
            self.service.body_limits(),
            Some(self.service.max_upload_size()),
        )
    }

    /// Waits for the next part with the per-part deadline.
    pub async fn next_part<F: Future>(&self, next: F) -> Result<F::Output, UploadError> {
        let wait = self.service.body_limits().part_wait;
        tokio::time::timeout(wait, next).await.map_err(|_| {
            metrics::counter!("vaultfs_upload_body_timeouts_total").increment(1);
            UploadError::PartWait(wait)
        })
    }

    /// Files staged so far.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True when no file has been staged yet.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Streams one file of the request into staging (prefix check, precheck, hashing,
    /// verification). The part's bytes come from [`UploadBatch::body`], which holds the
    /// deadlines, so none are added here.
    pub async fn stage<S, E>(
        &mut self,
        ctx: &RequestCtx,
        path: &VPath,
        part: S,
        options: UploadOptions,
    ) -> Result<(), ServiceError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<UploadError>,
    {
        let staged = self.service.stage(ctx, path, part, options).await?;
        self.staged.push(staged);
        Ok(())
    }

    /// Adds a file that is already staged (a tus session's bytes, see [`StagedFile`]) to
    /// the request: the prefix check, precheck and SHA-256 verification of
    /// [`UploadBatch::stage`], under this request's permit, without streaming it again.
    pub async fn stage_file(
        &mut self,
        ctx: &RequestCtx,
        path: &VPath,
        file: StagedFile,
        options: UploadOptions,
    ) -> Result<(), ServiceError> {
        let staged = self.service.stage_file(ctx, path, file, options).await?;
        self.staged.push(staged);
        Ok(())
    }

    /// [`UploadBatch::stage_file`] for content assembled in the blob store's bucket.
    pub async fn stage_object(
        &mut self,
        ctx: &RequestCtx,
        path: &VPath,
        object: StagedObject,
        options: UploadOptions,
    ) -> Result<(), ServiceError> {
        let staged = self
            .service
            .stage_object(ctx, path, object, options)
            .await?;
        self.staged.push(staged);
        Ok(())
    }

    /// Commits every staged file together: one lock set and one metadata transaction, so
    /// either every file of the request becomes visible (with consecutive events) or none
    /// does (a precondition that fails under the lock for any of them refuses them all).
    pub async fn commit(self, ctx: &RequestCtx) -> Result<Vec<UploadOutcome>, ServiceError> {
        let mut files = Vec::with_capacity(self.staged.len());
        let mut digests = Vec::with_capacity(self.staged.len());
        for upload in self.staged {
            digests.push(upload.extra_digest);
            files.push(crate::services::files::StagedFile {
                path: upload.path,
                staged: upload.staged,
                content_type: upload.content_type,
                precondition: upload.precondition,
                s3: upload.s3,
            });
        }
        let outcomes = self.service.commit_many(files, ctx).await?;
        Ok(outcomes
            .into_iter()
            .zip(digests)
            .map(|(outcome, extra_digest)| UploadOutcome {
                meta: outcome.meta,
                created: outcome.created,
                extra_digest,
            })
            .collect())
    }
}

impl UploadBatch {
    /// Stages every file of the request into open commit `commit.0` (at most `commit.1`
    /// files in it) instead of committing them: nothing becomes visible (issue 21).
    pub async fn commit_to(
        self,
        ctx: &RequestCtx,
        commit: (&str, usize),
    ) -> Result<Vec<crate::services::metadata::commits::StagedEntry>, ServiceError> {
        let files = self
            .staged
            .into_iter()
            .map(|upload| crate::services::files::StagedFile {
                path: upload.path,
                staged: upload.staged,
                content_type: upload.content_type,
                precondition: upload.precondition,
                s3: upload.s3,
            })
            .collect();
        self.service
            .stage_into_commit(ctx, commit.0, files, commit.1)
            .await
    }
}
