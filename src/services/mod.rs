//! Services: everything below the HTTP edge.
//!
//! - [`lock_manager`]: the only place that locks paths.
//! - [`storage`]: blob I/O: staging (temp file, hashing, fsync), the local store and the S3
//!   store, the backend chosen once when it opens.
//! - [`metadata`]: files, blob references and the event log: the trait, the rules written
//!   once (`metadata/rules.rs`), the SQLite and PostgreSQL backends (`metadata::sqlite`,
//!   `metadata::postgres`), their migrations, and the timing wrapper.
//! - [`notification`]: live fan-out of the event log to subscribers.
//! - [`auth`]: tokens, scopes, prefixes and share links.
//! - [`secret`]: the server secret keys derive from, and the data directory's private files.
//! - [`files`]: the file operations (upload commit, move, copy, delete, list) built from them.
//! - [`fsck`]: the data check, offline (`vaultfs fsck`) and online (`POST /api/v1/admin/fsck`).
//! - [`upload`]: the one write entry point every front end streams a file through.
//! - [`versions`]: old versions, the trash, recursive delete and trash expiry.
//! - [`tus`]: tus 1.0 resumable upload sessions, completed through [`upload`].
//! - [`commits`]: atomic multi-file commits and leases with fencing tokens (issue 21).
//! - [`s3_meta`]: the S3 API's own records: buckets, object attributes, multipart uploads.
//! - [`web_session`]: the web file browser's sign-in sessions.

pub mod auth;
pub(crate) mod commits;
pub mod files;
pub mod fsck;
pub mod lock_manager;
pub mod metadata;
pub mod notification;
pub mod s3_meta;
pub(crate) mod secret;
pub mod storage;
pub(crate) mod tus;
pub mod upload;
pub(crate) mod versions;
pub(crate) mod web_session;

use lock_manager::LockError;
use metadata::MetadataError;
use storage::StorageError;

/// Errors of the service layer; `crate::error::AppError` maps them to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The blob store failed (staging, reading or writing a blob).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The metadata backend refused or failed the operation (not found, precondition,
    /// conflict, database error).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The path locks could not be taken (see [`LockError`]).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A listing cursor that does not decode, or does not belong to the listing it was sent to.
    #[error("invalid list cursor")]
    InvalidCursor,
    /// A listing cursor of another sort or order than the request's.
    #[error("the list cursor belongs to a listing with another sort")]
    CursorOtherSort,
    /// The paths kept changing between the read and the lock on every retry (an operation
    /// by id whose file moved, a recursive delete or commit whose tree changed); the client
    /// may retry (503).
    #[error("the file kept changing while the operation retried")]
    Contended,
    /// The request's token may not touch this path.
    #[error("outside the token's prefix")]
    Forbidden,
    /// No upload slot within the queue deadline, or the queue is full.
    #[error("too many uploads in progress")]
    Overloaded,
    /// The upload body was refused (deadline, size limit, checksum, framing).
    #[error(transparent)]
    Upload(#[from] upload::UploadError),
    /// A recursive delete of more files than one transaction takes.
    #[error("the tree has more than {0} files")]
    TreeTooLarge(usize),
}
