//! Service errors as S3 errors, mapped once: the XML codes clients switch on. Details go to
//! the log, never to the client.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use s3s::{s3_error, S3Error, S3ErrorCode};

use crate::paths::PathError;
use crate::services::lock_manager::LockError;
use crate::services::metadata::MetadataError;
use crate::services::storage::StorageError;
use crate::services::upload::UploadError;
use crate::services::ServiceError;

/// `503 SlowDown` with `Retry-After: 1`.
pub(crate) fn slow_down(message: &'static str) -> S3Error {
    let mut e = s3_error!(SlowDown, "{message}");
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("1"));
    e.set_headers(headers);
    e
}

pub(crate) fn internal(detail: &dyn std::fmt::Display) -> S3Error {
    tracing::error!(error = %detail, "S3 internal error");
    s3_error!(InternalError, "internal error")
}

pub(crate) fn from_service(e: ServiceError) -> S3Error {
    match e {
        ServiceError::Forbidden => s3_error!(AccessDenied, "outside the token's prefix"),
        ServiceError::Overloaded => slow_down("too many uploads in progress; retry shortly"),
        ServiceError::Contended => slow_down("the object kept changing; retry"),
        ServiceError::InvalidCursor | ServiceError::CursorOtherSort => {
            s3_error!(InvalidArgument, "invalid continuation token")
        }
        ServiceError::Lock(LockError::Timeout { .. }) => {
            slow_down("the object is busy; retry shortly")
        }
        ServiceError::Metadata(m) => from_metadata(m),
        ServiceError::Storage(s) => from_storage(s),
        ServiceError::Upload(u) => from_upload(u),
        ServiceError::TreeTooLarge(max) => {
            s3_error!(
                InvalidRequest,
                "a recursive delete takes at most {max} files"
            )
        }
    }
}

/// A body the pipeline refused while it streamed in.
pub(crate) fn from_upload(e: UploadError) -> S3Error {
    match e {
        e if e.is_timeout() => s3_error!(RequestTimeout, "{e}"),
        UploadError::TooLarge { limit } => {
            s3_error!(EntityTooLarge, "larger than the limit of {limit} bytes")
        }
        UploadError::ChecksumMismatch { .. } | UploadError::DigestRejected(_) => {
            s3_error!(BadDigest, "the body does not match its checksum")
        }
        UploadError::Read(_) => s3_error!(
            IncompleteBody,
            "the request body could not be read to its end"
        ),
        other => s3_error!(InvalidRequest, "{other}"),
    }
}

pub(crate) fn from_metadata(e: MetadataError) -> S3Error {
    match e {
        MetadataError::NotFound => s3_error!(NoSuchKey),
        MetadataError::PreconditionFailed | MetadataError::AlreadyExists => {
            s3_error!(PreconditionFailed)
        }
        MetadataError::PathChanged => slow_down("the object kept changing; retry"),
        MetadataError::Busy => slow_down("metadata store busy; retry shortly"),
        MetadataError::StorageFull => s3_error!(ServiceUnavailable, "out of space"),
        // A lease (issue 21) covers the key: the S3 API sends no fence.
        MetadataError::Locked | MetadataError::FenceStale => {
            s3_error!(
                AccessDenied,
                "the key is leased; write it with the lease's fence"
            )
        }
        other => internal(&other),
    }
}

pub(crate) fn from_storage(e: StorageError) -> S3Error {
    match e {
        StorageError::TooLarge { limit } => {
            s3_error!(EntityTooLarge, "larger than the limit of {limit} bytes")
        }
        StorageError::NotFound(_) => s3_error!(NoSuchKey),
        StorageError::Busy(_) => slow_down("blob store busy; retry shortly"),
        other if other.is_storage_full() => s3_error!(ServiceUnavailable, "out of space"),
        other => internal(&other),
    }
}

pub(crate) fn from_path(e: PathError) -> S3Error {
    s3_error!(InvalidArgument, "invalid object key: {e}")
}

/// An S3 error with a VaultFS code (`NoSuchCommit`, ...) and its status.
fn custom(code: &'static str, status: StatusCode, message: &'static str) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.into()), message);
    e.set_status_code(status);
    e
}

/// A write staged into a commit (`x-vaultfs-commit`, issue 21) that failed: the commit's
/// own errors under their own codes, the rest as [`from_service`].
pub(crate) fn from_staging(e: ServiceError) -> S3Error {
    match e {
        // Staging looks the commit up last (after the body): not found is the commit.
        ServiceError::Metadata(MetadataError::NotFound) => custom(
            "NoSuchCommit",
            StatusCode::NOT_FOUND,
            "the commit named by x-vaultfs-commit does not exist or was aborted",
        ),
        ServiceError::Metadata(MetadataError::CommitExpired) => custom(
            "CommitExpired",
            StatusCode::GONE,
            "the commit named by x-vaultfs-commit expired",
        ),
        ServiceError::Metadata(MetadataError::CommitClosed) => custom(
            "CommitClosed",
            StatusCode::CONFLICT,
            "the commit named by x-vaultfs-commit is already finished",
        ),
        ServiceError::Metadata(MetadataError::CommitTooLarge(_)) => custom(
            "CommitTooLarge",
            StatusCode::CONFLICT,
            "the commit named by x-vaultfs-commit holds its maximum number of files",
        ),
        other => from_service(other),
    }
}
