//! Path-addressed delete, move and copy (`/api/v1/fs/{path}`).
//!
//! The same locks and metadata transactions as the id-addressed operations, with one
//! difference: the operation applies to whatever file is at the path when it commits. The
//! path is read, locked, and the transaction verifies that the file read is still there
//! ([`MetadataError::PathChanged`] -> read again), so a file moved away meanwhile is never
//! deleted or moved at its new place.

use super::{FileService, RequestCtx, PATH_RETRIES};
use crate::paths::VPath;
use crate::services::lock_manager::LockRequest;
use crate::services::metadata::{ChangeOutcome, FileMeta, MetadataError, Precondition};
use crate::services::ServiceError;

/// What to do with the file at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'a> {
    Delete(&'a Precondition, bool),
    Move { to: &'a VPath, overwrite: bool },
    Copy { to: &'a VPath, overwrite: bool },
}

impl FileService {
    /// Deletes the file at `path` (`If-Match` as `precondition`).
    pub async fn delete_at(
        &self,
        path: &VPath,
        precondition: &Precondition,
        permanent: bool,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        self.at_path(path, Op::Delete(precondition, permanent), ctx)
            .await
    }

    /// Moves the file at `path` to `to`.
    pub async fn move_at(
        &self,
        path: &VPath,
        to: &VPath,
        overwrite: bool,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        self.at_path(path, Op::Move { to, overwrite }, ctx).await
    }

    /// Copies the file at `path` to `to` (a new id sharing the content).
    pub async fn copy_at(
        &self,
        path: &VPath,
        to: &VPath,
        overwrite: bool,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        self.at_path(path, Op::Copy { to, overwrite }, ctx).await
    }

    async fn at_path(
        &self,
        path: &VPath,
        op: Op<'_>,
        ctx: &RequestCtx,
    ) -> Result<FileMeta, ServiceError> {
        if let Op::Move { to, .. } | Op::Copy { to, .. } = op {
            ctx.check(to.as_str())?;
        }
        for _ in 0..PATH_RETRIES {
            // Checks the principal against `path` before telling whether it exists.
            let current = self.meta_by_path(path, ctx).await?;
            let id = current.id.as_str();
            let from = path.as_str();
            let outcome: Result<ChangeOutcome, ServiceError> = match op {
                Op::Delete(precondition, permanent) => {
                    let request = LockRequest::new().write_path(path);
                    let _guard = self.locks.acquire(request, ctx.owner("delete")).await?;
                    if permanent {
                        self.meta.delete_permanently(id, from, precondition).await
                    } else {
                        self.meta.delete(id, from, precondition).await
                    }
                    .map_err(Into::into)
                }
                Op::Move { to, overwrite } => {
                    let request = LockRequest::new().write_path(path).write_path(to);
                    let _guard = self.locks.acquire(request, ctx.owner("move")).await?;
                    self.meta
                        .rename(id, from, to.as_str(), overwrite)
                        .await
                        .map_err(Into::into)
                }
                Op::Copy { to, overwrite } => {
                    let request = LockRequest::new().read_path(path).write_path(to);
                    let _guard = self.locks.acquire(request, ctx.owner("copy")).await?;
                    self.meta
                        .copy(id, from, to.as_str(), overwrite)
                        .await
                        .map_err(Into::into)
                }
            };
            match outcome {
                // Moved away, or deleted (and perhaps made anew) since the read: read again.
                Err(ServiceError::Metadata(
                    MetadataError::PathChanged | MetadataError::NotFound,
                )) => continue,
                Err(e) => return Err(e),
                Ok(outcome) => return Ok(self.finish_change(outcome)),
            }
        }
        Err(ServiceError::Contended)
    }
}
