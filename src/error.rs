//! One error type at the HTTP edge.
//!
//! Services return their own `thiserror` enums; [`AppError`] maps each to a status and a stable
//! snake_case `code` in one exhaustive `match`. Internal details (I/O errors, SQL errors) are
//! logged here and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::paths::PathError;
use crate::services::lock_manager::LockError;
use crate::services::metadata::MetadataError;
use crate::services::storage::StorageError;
use crate::services::upload::UploadError;
use crate::services::web_session::SessionError;
use crate::services::ServiceError;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// Further members of the error object (`lease_held`'s `expires_at`).
    pub extra: Option<(&'static str, serde_json::Value)>,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            extra: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such file")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let (Some((key, value)), Some(error)) = (self.extra, body.get_mut("error")) {
            error[key] = value;
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vaultfs\""),
            );
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<PathError> for AppError {
    fn from(e: PathError) -> Self {
        AppError::bad_request("invalid_path", e.to_string())
    }
}

impl From<StorageError> for AppError {
    fn from(e: StorageError) -> Self {
        if e.is_storage_full() {
            tracing::error!(error = %e, "storage full");
            return AppError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the server is out of storage space",
            );
        }
        match e {
            StorageError::TooLarge { limit } => AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("upload exceeds the limit of {limit} bytes"),
            ),
            StorageError::NotFound(_) => AppError::not_found(),
            StorageError::Busy(_) => {
                tracing::warn!(error = %e, "blob store busy");
                AppError::unavailable("busy", "the blob store is busy; retry")
            }
            StorageError::Io { .. } => AppError::internal(&e),
        }
    }
}

impl From<MetadataError> for AppError {
    fn from(e: MetadataError) -> Self {
        match e {
            MetadataError::NotFound => AppError::not_found(),
            MetadataError::AlreadyExists => AppError::new(
                StatusCode::CONFLICT,
                "already_exists",
                "the target path already exists",
            ),
            MetadataError::PreconditionFailed => AppError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the file's current state does not match the request's precondition",
            ),
            MetadataError::PathChanged => {
                AppError::unavailable("contended", "the file changed concurrently; retry")
            }
            MetadataError::Busy => {
                AppError::unavailable("busy", "the metadata store is busy; retry")
            }
            MetadataError::StorageFull => AppError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "the server is out of storage space",
            ),
            MetadataError::CommitMismatch(_) => {
                AppError::new(StatusCode::CONFLICT, "commit_mismatch", e.to_string())
            }
            MetadataError::CommitExpired => AppError::new(
                StatusCode::GONE,
                "commit_expired",
                "the commit expired before its finish",
            ),
            MetadataError::CommitClosed => AppError::new(
                StatusCode::CONFLICT,
                "commit_closed",
                "the commit is already finished",
            ),
            MetadataError::CommitTooLarge(_) => {
                AppError::new(StatusCode::CONFLICT, "commit_too_large", e.to_string())
            }
            MetadataError::LeaseHeld { expires_at_ms } => AppError {
                extra: Some((
                    crate::services::metadata::commits::LEASE_HELD_UNTIL,
                    serde_json::Value::String(crate::services::metadata::rfc3339(expires_at_ms)),
                )),
                ..AppError::new(
                    StatusCode::CONFLICT,
                    "lease_held",
                    "another holder's lease covers the path",
                )
            },
            MetadataError::LeaseExpired => AppError::new(
                StatusCode::GONE,
                "lease_expired",
                "the lease lapsed or was taken over",
            ),
            MetadataError::FenceStale => AppError::new(
                StatusCode::CONFLICT,
                "fence_stale",
                "the write's X-Vaultfs-Fence is older than the path's current fence",
            ),
            MetadataError::Locked => AppError::new(
                StatusCode::LOCKED,
                "locked",
                "a lease covers the path; send its fence in X-Vaultfs-Fence",
            ),
            MetadataError::Schema(_) | MetadataError::Backend(_) => AppError::internal(&e),
        }
    }
}

impl From<LockError> for AppError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Timeout { .. } => {
                tracing::warn!(error = %e, "lock timeout");
                AppError::unavailable("lock_timeout", "timed out waiting for a lock; retry")
            }
        }
    }
}

impl From<UploadError> for AppError {
    fn from(e: UploadError) -> Self {
        let message = e.to_string();
        match e {
            UploadError::Idle(_) | UploadError::TooSlow { .. } | UploadError::PartWait(_) => {
                AppError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message)
            }
            UploadError::TooLarge { .. } => {
                AppError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            UploadError::ChecksumMismatch { .. } | UploadError::DigestRejected(_) => {
                AppError::bad_request("checksum_mismatch", message)
            }
            UploadError::Read(detail) => {
                tracing::debug!(error = %detail, "request body could not be read");
                AppError::bad_request("body_read_failed", message)
            }
            UploadError::Multipart(_)
            | UploadError::PartHeaderTooLarge(_)
            | UploadError::NoFilePart => AppError::bad_request("invalid_multipart", message),
            UploadError::TooManyParts(_) | UploadError::TooManyFiles(_) => {
                AppError::bad_request("too_many_parts", message)
            }
        }
    }
}

impl From<ServiceError> for AppError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Storage(e) => e.into(),
            ServiceError::Metadata(e) => e.into(),
            ServiceError::Lock(e) => e.into(),
            ServiceError::InvalidCursor => {
                AppError::bad_request("invalid_cursor", "the cursor is not valid for this listing")
            }
            ServiceError::CursorOtherSort => AppError::bad_request(
                "cursor_sort_mismatch",
                "the cursor belongs to a listing with another sort or order; restart from page 1",
            ),
            ServiceError::Forbidden => AppError::forbidden("the token may not access this path"),
            ServiceError::Contended => {
                AppError::unavailable("contended", "the file kept changing; retry")
            }
            ServiceError::Upload(e) => e.into(),
            ServiceError::TreeTooLarge(max) => AppError::bad_request(
                "tree_too_large",
                format!("a recursive delete takes at most {max} files; delete subtrees"),
            ),
            ServiceError::Overloaded => AppError {
                retry_after: Some(2),
                ..AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many uploads in progress; retry later",
                )
            },
        }
    }
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> Self {
        let message = e.to_string();
        match e {
            SessionError::Unknown => AppError::unauthorized("invalid_session", message),
            SessionError::Csrf => AppError::new(StatusCode::FORBIDDEN, "csrf_failed", message),
            SessionError::BadToken => AppError::unauthorized("invalid_token", message),
            SessionError::NotRequired => {
                AppError::new(StatusCode::CONFLICT, "sign_in_not_needed", message)
            }
            SessionError::Random(_) => AppError::internal(&e),
            SessionError::Store(m) => m.into(),
        }
    }
}
