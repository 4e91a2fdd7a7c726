//! Blob I/O: content-addressed, durable, never blocking a runtime worker.
//!
//! - [`staging`]: `tmp/<uuid>.part`, uploads in flight, hashed while streaming and fdatasynced.
//!   Removed on failure (by [`BlobWriter`]'s and [`StagedBlob`]'s drop) and swept at every
//!   start. Both backends stage here.
//! - [`local`]: `blobs/<aa>/<sha256 hex>` on local disk (the default); a commit is a rename
//!   and the fsync of the fan-out directory.
//! - [`s3`]: the same names in S3-compatible object storage; a commit is an upload.
//! - [`inline`]: with local blobs, content no larger than the inline limit is held in memory
//!   while it streams and stored as a row of `inline-blobs.db` by the same name, committed by
//!   a group commit (one WAL fsync for every upload waiting), instead of as a file. Every
//!   read, stat, listing and deletion looks in both places.
//!
//! [`BlobStore`] is the facade the services use: the backend is chosen once, when the store
//! is opened, and every operation is dispatched to it.
//!
//! All file I/O goes through `tokio::fs` (which runs it on the blocking pool); hashing of a
//! chunk larger than [`INLINE_HASH_LIMIT`] goes through [`crate::blocking::run`].

mod inline;
mod local;
mod s3;
mod staging;
mod tus_staging;

use std::io;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use bytes::Bytes;

pub use staging::{hash_file, hash_to_end, BlobWriter, StagedBlob, INLINE_HASH_LIMIT};
pub use tus_staging::TusStaging;

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The upload passed the size limit its writer was opened with.
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was passed, in bytes.
        limit: u64,
    },
    /// No blob or staged object by this name (its SHA-256 hex, or the object key).
    #[error("blob {0} not found")]
    NotFound(String),
    /// The store is backed up (no upload slot within its wait): retry later.
    #[error("blob store busy: {0}")]
    Busy(&'static str),
    /// A file-system or object-store operation failed.
    #[error("storage I/O error during {op}: {source}")]
    Io {
        /// What was being done (`"commit blob"`, `"write temp file"`, ...).
        op: &'static str,
        /// The underlying error (object-store errors are wrapped as `io::Error`s).
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
    /// Lowercase hex SHA-256 of the content: the blob's name in the store.
    pub sha256: String,
    /// Content length in bytes.
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
    /// New content no larger than this is stored inline (local backend only; 0: never).
    inline_limit: u64,
    /// The inline blobs ([`inline::InlineStore`]), opened at start, or on first use by an
    /// offline check ([`BlobStore::at`]); `None` inside: there are none (object store, or no
    /// database in an offline data directory).
    inline: Arc<tokio::sync::OnceCell<Option<inline::InlineStore>>>,
    /// Where the inline database is opened from on first use (offline checks only).
    data_dir: PathBuf,
}

/// Where committed blobs live: chosen once, when the store is opened.
#[derive(Debug, Clone)]
enum Backend {
    Local(local::LocalStore),
    S3(s3::S3Store),
}

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`, and removes leftover temp files.
    /// New content is stored as files only; see [`BlobStore::open_with_inline`].
    pub async fn open(data_dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_inline(data_dir, 0).await
    }

    /// [`BlobStore::open`], storing new content of at most `inline_limit` bytes inline (see
    /// [`inline`]; 0: never). Content stored inline earlier is read whatever the limit.
    pub async fn open_with_inline(
        data_dir: &Path,
        inline_limit: u64,
    ) -> Result<Self, StorageError> {
        let local = local::LocalStore::at(data_dir);
        staging::create_dir(&data_dir.join("tmp")).await?;
        local.create(data_dir).await?;
        let inline = inline::InlineStore::open(data_dir).await?;
        let store = BlobStore {
            tmp_dir: data_dir.join("tmp"),
            backend: Backend::Local(local),
            inline_limit,
            inline: Arc::new(tokio::sync::OnceCell::new_with(Some(Some(inline)))),
            data_dir: data_dir.to_path_buf(),
        };
        staging::sweep(&store.tmp_dir).await?;
        Ok(store)
    }

    /// The store under `data_dir` as it is: nothing created, nothing swept (offline fsck).
    /// The inline blobs are opened on first use, when their database exists.
    pub fn at(data_dir: &Path) -> Self {
        BlobStore {
            tmp_dir: data_dir.join("tmp"),
            backend: Backend::Local(local::LocalStore::at(data_dir)),
            inline_limit: 0,
            inline: Arc::new(tokio::sync::OnceCell::new()),
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The inline blobs, when there are any.
    async fn inline(&self) -> Result<Option<&inline::InlineStore>, StorageError> {
        let store = self
            .inline
            .get_or_try_init(|| async {
                if !matches!(self.backend, Backend::Local(_)) {
                    return Ok(None);
                }
                let path = inline::InlineStore::path_in(&self.data_dir);
                if !tokio::fs::try_exists(&path)
                    .await
                    .map_err(StorageError::io("stat inline blobs"))?
                {
                    return Ok(None);
                }
                inline::InlineStore::open(&self.data_dir).await.map(Some)
            })
            .await?;
        Ok(store.as_ref())
    }

    /// Blobs in S3-compatible object storage, named by `url`:
    /// `s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1`. Credentials come
    /// from the usual `AWS_*` environment variables. Uploads are staged in `data_dir/tmp`.
    pub async fn open_s3(data_dir: &Path, url: &str) -> Result<Self, StorageError> {
        let store = BlobStore {
            tmp_dir: data_dir.join("tmp"),
            backend: Backend::S3(s3::S3Store::from_url(url)?),
            inline_limit: 0,
            inline: Arc::new(tokio::sync::OnceCell::new_with(Some(None))),
            data_dir: data_dir.to_path_buf(),
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
        let found = match &self.backend {
            Backend::Local(b) => b.stat(sha256_hex).await?,
            Backend::S3(b) => b.stat(sha256_hex).await?,
        };
        match (found, self.inline().await?) {
            (None, Some(inline)) => Ok(inline.stat(sha256_hex).await?.map(|(size, _)| size)),
            (found, _) => Ok(found),
        }
    }

    /// How long ago a blob was last written, when known.
    pub async fn blob_age(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<std::time::Duration>, StorageError> {
        let mut modified = match &self.backend {
            Backend::Local(b) => b.modified(sha256_hex).await?,
            Backend::S3(b) => b.modified(sha256_hex).await?,
        };
        if modified.is_none() {
            if let Some(inline) = self.inline().await? {
                modified = inline.stat(sha256_hex).await?.map(|(_, at)| at);
            }
        }
        Ok(modified.map(|t| t.elapsed().unwrap_or_default()))
    }

    /// The SHA-256 (hex) and length of a stored blob's actual content.
    pub async fn hash_blob(&self, sha256_hex: &str) -> io::Result<(String, u64)> {
        use sha2::Digest;
        if let Some(content) = self
            .inline_content(sha256_hex)
            .await
            .map_err(io::Error::other)?
        {
            let len = content.len() as u64;
            let hasher = staging::hash_chunk(sha2::Sha256::new(), content).await?;
            return Ok((hex::encode(sha2::Digest::finalize(hasher)), len));
        }
        match &self.backend {
            Backend::Local(b) => b.hash(sha256_hex).await,
            Backend::S3(b) => b.hash(sha256_hex).await,
        }
    }

    /// Every stored blob's name (its SHA-256 hex).
    pub async fn list_blobs(&self) -> Result<Vec<String>, StorageError> {
        let mut names = match &self.backend {
            Backend::Local(b) => b.list().await?,
            Backend::S3(b) => b.sizes().await?.into_iter().map(|(name, _)| name).collect(),
        };
        if let Some(inline) = self.inline().await? {
            names.extend(inline.list().await?);
            names.sort();
            names.dedup();
        }
        Ok(names)
    }

    /// The content of `sha256_hex` when it is stored inline (and not also as a file: a file
    /// blob is read as a file).
    async fn inline_content(&self, sha256_hex: &str) -> Result<Option<Bytes>, StorageError> {
        let Some(inline) = self.inline().await? else {
            return Ok(None);
        };
        if let Backend::Local(b) = &self.backend {
            if b.exists(sha256_hex).await? {
                return Ok(None);
            }
        }
        inline.get(sha256_hex).await
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
        if let Some(content) = self.inline_content(sha256_hex).await? {
            let from = usize::try_from(start)
                .unwrap_or(usize::MAX)
                .min(content.len());
            let to = match len {
                Some(n) => from.saturating_add(usize::try_from(n).unwrap_or(usize::MAX)),
                None => content.len(),
            }
            .min(content.len());
            let part = content.slice(from..to);
            return Ok(Box::pin(futures_util::stream::iter(
                (!part.is_empty()).then_some(Ok(part)),
            )));
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
    /// Content no larger than the inline limit stays in memory and gets no temp file.
    pub async fn begin(&self, limit: u64) -> Result<BlobWriter, StorageError> {
        staging::begin(&self.tmp_dir, limit, self.inline_limit.min(limit)).await
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
            inline: None,
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
    ///
    /// Content held in memory ([`StagedBlob`] with no file) is stored inline unless it is
    /// already stored, in either place; the row is committed (fsynced) when this returns.
    pub async fn commit(&self, mut staged: StagedBlob) -> Result<BlobRef, StorageError> {
        if let Some(content) = staged.inline.take() {
            return self.commit_inline(staged.blob, content).await;
        }
        match &self.backend {
            Backend::Local(b) => b.commit(staged).await,
            Backend::S3(b) => b.commit(staged).await,
        }
    }

    async fn commit_inline(&self, blob: BlobRef, content: Bytes) -> Result<BlobRef, StorageError> {
        if self.blob_exists(&blob.sha256).await? {
            return Ok(blob);
        }
        let Some(inline) = self.inline().await? else {
            return Err(StorageError::Io {
                op: "commit blob",
                source: io::Error::other("content held for inline storage, but no inline store"),
            });
        };
        crate::faults::check(crate::faults::Point::BeforeRename)
            .map_err(StorageError::io("store inline blob"))?;
        inline.put(&blob.sha256, content).await?;
        crate::faults::check(crate::faults::Point::AfterRename)
            .map_err(StorageError::io("store inline blob"))?;
        Ok(blob)
    }

    /// The blob as a file on local disk, for sending it without reading it
    /// ([`crate::zero_copy`]): `None` when it is not one (inline content, an object store);
    /// read those with [`BlobStore::read_blob`]. A file blob wins over an inline row, as there.
    pub async fn open_blob_file(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<std::fs::File>, StorageError> {
        match &self.backend {
            Backend::Local(b) => match b.open(sha256_hex).await {
                Ok(f) => Ok(Some(f.into_std().await)),
                Err(StorageError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            Backend::S3(_) => Ok(None),
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

    /// True when blob `sha256_hex` is stored, in the backend or inline.
    pub async fn blob_exists(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        let exists = match &self.backend {
            Backend::Local(b) => b.exists(sha256_hex).await?,
            Backend::S3(b) => b.exists(sha256_hex).await?,
        };
        match (exists, self.inline().await?) {
            (false, Some(inline)) => Ok(inline.stat(sha256_hex).await?.is_some()),
            (exists, _) => Ok(exists),
        }
    }

    /// Removes a blob. The caller must hold its lock and have checked that nothing references
    /// it. Removing a blob that is already gone is not an error.
    pub async fn delete_blob(&self, sha256_hex: &str) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Local(b) => b.delete(sha256_hex).await?,
            Backend::S3(b) => b.delete(sha256_hex).await?,
        }
        if let Some(inline) = self.inline().await? {
            if inline.stat(sha256_hex).await?.is_some() {
                inline.delete(sha256_hex).await?;
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use futures_util::StreamExt;
    use sha2::Digest;

    async fn read_all(store: &BlobStore, sha: &str, start: u64, len: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = store.read_blob(sha, start, len).await.unwrap();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_content_is_inline_and_large_content_spills_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_with_inline(dir.path(), 1000).await.unwrap();
        // Small, in two chunks: no temp file at any point, a row after the commit.
        let mut w = store.begin(1 << 20).await.unwrap();
        w.write(Bytes::from(vec![7u8; 600])).await.unwrap();
        w.write(Bytes::from(vec![8u8; 400])).await.unwrap();
        assert_eq!(staging::sweep(&store.tmp_dir).await.unwrap(), 0);
        let staged = w.finish(&store).await.unwrap();
        let content = [vec![7u8; 600], vec![8u8; 400]].concat();
        assert_eq!(
            staged.blob.sha256,
            hex::encode(sha2::Sha256::digest(&content))
        );
        let small = store.commit(staged).await.unwrap();
        assert!(!dir
            .path()
            .join("blobs")
            .join(&small.sha256[..2])
            .join(&small.sha256)
            .exists());
        assert_eq!(store.stat_blob(&small.sha256).await.unwrap(), Some(1000));
        assert!(store.blob_exists(&small.sha256).await.unwrap());
        assert!(store.blob_age(&small.sha256).await.unwrap().is_some());
        assert_eq!(
            store.hash_blob(&small.sha256).await.unwrap(),
            (small.sha256.clone(), 1000)
        );
        assert_eq!(read_all(&store, &small.sha256, 0, None).await, content);
        assert_eq!(
            read_all(&store, &small.sha256, 590, Some(20)).await,
            content[590..610]
        );
        assert!(read_all(&store, &small.sha256, 2000, None).await.is_empty());

        // One byte over the limit: a file blob, as before.
        let mut w = store.begin(1 << 20).await.unwrap();
        w.write(Bytes::from(vec![1u8; 1000])).await.unwrap();
        w.write(Bytes::from(vec![2u8; 1])).await.unwrap();
        let large = store.commit(w.finish(&store).await.unwrap()).await.unwrap();
        assert!(dir
            .path()
            .join("blobs")
            .join(&large.sha256[..2])
            .join(&large.sha256)
            .exists());
        let mut names = store.list_blobs().await.unwrap();
        names.sort();
        let mut want = vec![small.sha256.clone(), large.sha256.clone()];
        want.sort();
        assert_eq!(names, want);

        // Identical small content again: deduplicated (one row).
        let mut w = store.begin(1 << 20).await.unwrap();
        w.write(Bytes::from(content.clone())).await.unwrap();
        store.commit(w.finish(&store).await.unwrap()).await.unwrap();
        assert_eq!(store.list_blobs().await.unwrap().len(), 2);

        // Deleted, and durable across a reopen (offline, as fsck opens it).
        store.delete_blob(&small.sha256).await.unwrap();
        assert!(!store.blob_exists(&small.sha256).await.unwrap());
        let mut w = store.begin(1 << 20).await.unwrap();
        w.write(Bytes::from_static(b"kept")).await.unwrap();
        let kept = store.commit(w.finish(&store).await.unwrap()).await.unwrap();
        drop(store);
        let offline = BlobStore::at(dir.path());
        assert_eq!(offline.stat_blob(&kept.sha256).await.unwrap(), Some(4));
        assert_eq!(read_all(&offline, &kept.sha256, 0, None).await, b"kept");
        assert_eq!(offline.stat_blob(&small.sha256).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_small_commits_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_with_inline(dir.path(), 4096).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut w = store.begin(1 << 20).await.unwrap();
                w.write(Bytes::from(i.to_le_bytes().repeat(100)))
                    .await
                    .unwrap();
                store.commit(w.finish(&store).await.unwrap()).await.unwrap()
            }));
        }
        for t in tasks {
            let blob = t.await.unwrap();
            assert_eq!(store.stat_blob(&blob.sha256).await.unwrap(), Some(400));
        }
        assert_eq!(store.list_blobs().await.unwrap().len(), 64);
    }

    #[tokio::test]
    async fn an_offline_directory_without_inline_blobs_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let offline = BlobStore::at(dir.path());
        assert_eq!(offline.stat_blob(&"ab".repeat(32)).await.unwrap(), None);
        assert!(offline.list_blobs().await.unwrap().is_empty());
        assert!(!dir.path().join(inline::FILE_NAME).exists());
    }
}
