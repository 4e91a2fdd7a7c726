//! Blob I/O: content-addressed, durable, never blocking a runtime worker.
//!
//! - [`staging`]: `tmp/<uuid>.part`, uploads in flight, hashed while streaming and fdatasynced.
//!   Removed on failure (by [`BlobWriter`]'s and [`StagedBlob`]'s drop) and swept at every
//!   start. Both backends stage here.
//! - [`local`]: `blobs/<aa>/<sha256 hex>` on local disk (the default); a commit is a rename
//!   and the fsync of the fan-out directory.
//! - [`s3`]: the same names in S3-compatible object storage; a commit is an upload.
//!
//! [`BlobStore`] is the facade the services use: the backend is chosen once, when the store
//! is opened, and every operation is dispatched to it.
//!
//! All file I/O goes through `tokio::fs` (which runs it on the blocking pool); hashing of a
//! chunk larger than [`INLINE_HASH_LIMIT`] goes through [`crate::blocking::run`].

mod local;
mod s3;
mod staging;
mod tus_staging;

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use staging::{hash_file, hash_to_end, BlobWriter, StagedBlob, INLINE_HASH_LIMIT};
pub use tus_staging::TusStaging;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob {0} not found")]
    NotFound(String),
    /// The store is backed up (no upload slot within its wait): retry later.
    #[error("blob store busy: {0}")]
    Busy(&'static str),
    #[error("storage I/O error during {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> StorageError {
        move |source| StorageError::Io { op, source }
    }

    /// True when the underlying error is "no space left on device".
    pub fn is_storage_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// A blob as metadata records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

/// A blob's content as a stream of chunks.
pub type BlobStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Blob store: content on local disk (default) or in S3-compatible object storage; uploads
/// are always staged in a local temp directory first.
#[derive(Debug, Clone)]
pub struct BlobStore {
    tmp_dir: PathBuf,
    backend: Backend,
}

/// Where committed blobs live: chosen once, when the store is opened.
#[derive(Debug, Clone)]
enum Backend {
    Local(local::LocalStore),
    S3(s3::S3Store),
}

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`, and removes leftover temp files.
    pub async fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let local = local::LocalStore::at(data_dir);
        staging::create_dir(&data_dir.join("tmp")).await?;
        local.create(data_dir).await?;
        let store = BlobStore {
            tmp_dir: data_dir.join("tmp"),
            backend: Backend::Local(local),
        };
        staging::sweep(&store.tmp_dir).await?;
        Ok(store)
    }

    /// The store under `data_dir` as it is: nothing created, nothing swept (offline fsck).
    pub fn at(data_dir: &Path) -> Self {
        BlobStore {
            tmp_dir: data_dir.join("tmp"),
            backend: Backend::Local(local::LocalStore::at(data_dir)),
        }
    }

    /// Blobs in S3-compatible object storage, named by `url`:
    /// `s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1`. Credentials come
    /// from the usual `AWS_*` environment variables. Uploads are staged in `data_dir/tmp`.
    pub async fn open_s3(data_dir: &Path, url: &str) -> Result<Self, StorageError> {
        let store = BlobStore {
            tmp_dir: data_dir.join("tmp"),
            backend: Backend::S3(s3::S3Store::from_url(url)?),
        };
        staging::create_dir(&store.tmp_dir).await?;
        staging::sweep(&store.tmp_dir).await?;
        store.check().await?;
        Ok(store)
    }

    /// True when blobs live in an object store rather than on local disk.
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::S3(_))
    }

    /// Size of a stored blob, `None` when it does not exist.
    pub async fn stat_blob(&self, sha256_hex: &str) -> Result<Option<u64>, StorageError> {
        match &self.backend {
            Backend::Local(b) => b.stat(sha256_hex).await,
            Backend::S3(b) => b.stat(sha256_hex).await,
        }
    }

    /// How long ago a blob was last written, when known.
    pub async fn blob_age(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<std::time::Duration>, StorageError> {
        let modified = match &self.backend {
            Backend::Local(b) => b.modified(sha256_hex).await?,
            Backend::S3(b) => b.modified(sha256_hex).await?,
        };
        Ok(modified.map(|t| t.elapsed().unwrap_or_default()))
    }

    /// The SHA-256 (hex) and length of a stored blob's actual content.
    pub async fn hash_blob(&self, sha256_hex: &str) -> io::Result<(String, u64)> {
        match &self.backend {
            Backend::Local(b) => b.hash(sha256_hex).await,
            Backend::S3(b) => b.hash(sha256_hex).await,
        }
    }

    /// Every stored blob's name (its SHA-256 hex).
    pub async fn list_blobs(&self) -> Result<Vec<String>, StorageError> {
        match &self.backend {
            Backend::Local(b) => b.list().await,
            Backend::S3(b) => Ok(b.sizes().await?.into_iter().map(|(name, _)| name).collect()),
        }
    }

    /// Every stored blob's size, from one listing of the bucket (`None` on local disk, where a
    /// stat per blob is as cheap): what a check of many blobs uses instead of a HEAD each.
    pub async fn remote_sizes(
        &self,
    ) -> Result<Option<std::collections::HashMap<String, u64>>, StorageError> {
        match &self.backend {
            Backend::Local(_) => Ok(None),
            Backend::S3(b) => Ok(Some(b.sizes().await?.into_iter().collect())),
        }
    }

    /// `len` bytes of a blob from `start` (to the end when `None`), streamed.
    pub async fn read_blob(
        &self,
        sha256_hex: &str,
        start: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, StorageError> {
        if len == Some(0) {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        match &self.backend {
            Backend::Local(b) => b.read(sha256_hex, start, len).await,
            Backend::S3(b) => b.read(sha256_hex, start, len).await,
        }
    }

    /// Readiness: the store's directories are there and answer (and the object store, when
    /// blobs live in one: a HEAD that finds nothing is an answer too).
    pub async fn check(&self) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(b) => b.check().await?,
            Backend::S3(b) => b.check().await?,
        }
        check_dir(&self.tmp_dir).await
    }

    /// Starts streaming a new upload into a temporary file. `limit` is the maximum size.
    pub async fn begin(&self, limit: u64) -> Result<BlobWriter, StorageError> {
        staging::begin(&self.tmp_dir, limit).await
    }

    /// Stages `source`, a complete, fdatasynced file under the data directory whose content
    /// is `blob`, for a commit, leaving `source` in place (see [`staging::adopt`]).
    pub async fn adopt_staged(
        &self,
        source: &Path,
        blob: BlobRef,
    ) -> Result<StagedBlob, StorageError> {
        staging::adopt(&self.tmp_dir, source, blob).await
    }

    /// Where tus sessions stage their bytes in the object store (`None` on local disk).
    pub fn tus_staging(&self) -> Option<TusStaging> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::S3(b) => Some(b.tus().clone()),
        }
    }

    /// Stages the object `key` of this store's bucket (a tus upload assembled there), whose
    /// content is `blob`, for a commit: the commit copies it into place inside the object
    /// store. The object stays where it is; its owner removes it.
    pub fn adopt_remote(&self, key: String, blob: BlobRef) -> StagedBlob {
        StagedBlob {
            temp: staging::TempFile::none(),
            blob,
            synced: true,
            remote: Some(key),
        }
    }

    /// Whether a finished upload of content `sha256_hex` must be fdatasynced in staging (see
    /// [`BlobWriter::finish`]).
    async fn staged_needs_fsync(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        match &self.backend {
            Backend::Local(b) => b.staged_needs_fsync(sha256_hex).await,
            Backend::S3(_) => Ok(false),
        }
    }

    /// Makes a staged blob part of the store: renames it into its content address on local
    /// disk (or uploads it to the object store), or drops it when identical content is already
    /// stored.
    ///
    /// The caller must hold the blob's lock ([`super::lock_manager::LockKey::Blob`], shared is
    /// enough) so that collection of the same content cannot run concurrently. Two uploads of
    /// identical content may both rename: the second atomically replaces the same bytes.
    pub async fn commit(&self, staged: StagedBlob) -> Result<BlobRef, StorageError> {
        match &self.backend {
            Backend::Local(b) => b.commit(staged).await,
            Backend::S3(b) => b.commit(staged).await,
        }
    }

    /// Opens a blob on local disk for reading (blobs in an object store are not files:
    /// [`StorageError::NotFound`]; use [`BlobStore::read_blob`]).
    pub async fn open_blob(&self, sha256_hex: &str) -> Result<tokio::fs::File, StorageError> {
        match &self.backend {
            Backend::Local(b) => b.open(sha256_hex).await,
            Backend::S3(_) => Err(StorageError::NotFound(sha256_hex.to_string())),
        }
    }

    pub async fn blob_exists(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        match &self.backend {
            Backend::Local(b) => b.exists(sha256_hex).await,
            Backend::S3(b) => b.exists(sha256_hex).await,
        }
    }

    /// Removes a blob. The caller must hold its lock and have checked that nothing references
    /// it. Removing a blob that is already gone is not an error.
    pub async fn delete_blob(&self, sha256_hex: &str) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(b) => b.delete(sha256_hex).await,
            Backend::S3(b) => b.delete(sha256_hex).await,
        }
    }
}

/// Fails unless `dir` exists and is a directory (readiness).
async fn check_dir(dir: &Path) -> Result<(), StorageError> {
    let meta = tokio::fs::metadata(dir)
        .await
        .map_err(StorageError::io("stat store dir"))?;
    if !meta.is_dir() {
        return Err(StorageError::Io {
            op: "stat store dir",
            source: io::Error::other(format!("{} is not a directory", dir.display())),
        });
    }
    Ok(())
}
