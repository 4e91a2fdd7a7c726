//! Blob I/O: content-addressed, durable, never blocking a runtime worker.
//!
//! Layout under the data directory:
//! - `blobs/<aa>/<sha256 hex>`: immutable content, named by its SHA-256. The 256 fan-out
//!   directories are created (and fsynced) at start, so committing a blob only needs the fsync
//!   of its own fan-out directory.
//! - `tmp/<uuid>.part`: uploads in flight. Removed on failure (by [`BlobWriter`]'s and
//!   [`StagedBlob`]'s drop) and swept at every start.
//!
//! Durability order for a new blob: write + hash while streaming, `fdatasync` the temp file,
//! rename it into place, `fsync` the fan-out directory. Only then may metadata reference it.
//!
//! All file I/O goes through `tokio::fs` (which runs it on the blocking pool); hashing of a
//! chunk larger than [`INLINE_HASH_LIMIT`] goes through [`crate::blocking::run`].

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Chunks up to this size are hashed inline (about 0.2 ms of CPU at most); larger ones are
/// hashed on the blocking pool so that no runtime worker is held for long.
pub const INLINE_HASH_LIMIT: usize = 256 * 1024;

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

/// Reads `reader` to its end, hashing it: the hasher and the length. Blocking: call it on the
/// blocking pool.
pub fn hash_to_end(reader: &mut impl io::Read) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// SHA-256 (hex) and length of a file, read on the blocking pool.
pub async fn hash_file(path: PathBuf) -> io::Result<(String, u64)> {
    crate::blocking::run(move || {
        #[allow(clippy::disallowed_methods)] // runs on the blocking pool
        let mut file = std::fs::File::open(&path)?;
        let (hasher, len) = hash_to_end(&mut file)?;
        Ok((hex::encode(hasher.finalize()), len))
    })
    .await
}

/// Blob store: content on local disk (default) or in S3-compatible object storage; uploads
/// are always staged in a local temp directory first.
#[derive(Debug, Clone)]
pub struct BlobStore {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    remote: Option<Remote>,
}

/// Blobs in an object store, under `{prefix}blobs/<aa>/<sha256>`.
#[derive(Clone)]
struct Remote {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: String,
    description: String,
    /// Uploads to the object store at once (each holds up to 5 parts in memory).
    uploads: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

/// Parts of a multipart upload to the object store, and how many go at once: memory per
/// upload is bounded by their product.
const PART_SIZE: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 4;
/// Object-store uploads per process at once: with a part being filled and
/// [`PARTS_IN_FLIGHT`] in flight, their memory stays under 8 x 5 x 8 MiB = 320 MiB whatever
/// the number of uploads admitted. The wait is bounded like the store's own calls.
const REMOTE_UPLOADS: usize = 8;
const REMOTE_UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn remote_err(op: &'static str) -> impl FnOnce(object_store::Error) -> StorageError {
    move |e| StorageError::Io {
        op,
        source: io::Error::other(e.to_string()),
    }
}

impl Remote {
    fn key(&self, sha256_hex: &str) -> object_store::path::Path {
        let fan = sha256_hex.get(..2).unwrap_or("00");
        object_store::path::Path::from(format!("{}blobs/{fan}/{sha256_hex}", self.prefix))
    }

    /// Uploads the staged temp file to its content address: one PUT when small, otherwise a
    /// multipart upload with [`PARTS_IN_FLIGHT`] parts of [`PART_SIZE`] in flight, aborted on
    /// any error so no incomplete upload lingers.
    async fn upload(&self, temp: &Path, sha256_hex: &str, size: u64) -> Result<(), StorageError> {
        use object_store::ObjectStore as _;
        use tokio::io::AsyncReadExt;
        let key = self.key(sha256_hex);
        let _slot = tokio::time::timeout(
            REMOTE_UPLOAD_WAIT,
            std::sync::Arc::clone(&self.uploads).acquire_owned(),
        )
        .await
        .map_err(|_| StorageError::Busy("object-store uploads backed up"))?
        .map_err(|_| StorageError::Busy("object-store upload slots closed"))?;
        let mut file = tokio::fs::File::open(temp)
            .await
            .map_err(StorageError::io("open staged blob"))?;
        if size <= PART_SIZE as u64 {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            file.read_to_end(&mut buf)
                .await
                .map_err(StorageError::io("read staged blob"))?;
            self.store
                .put(&key, Bytes::from(buf).into())
                .await
                .map_err(remote_err("put blob"))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(remote_err("start multipart upload"))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let result: Result<(), StorageError> = async {
            loop {
                let mut chunk = vec![0u8; PART_SIZE];
                let mut filled = 0;
                while filled < PART_SIZE {
                    let n = file
                        .read(&mut chunk[filled..])
                        .await
                        .map_err(StorageError::io("read staged blob"))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(());
                }
                chunk.truncate(filled);
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(remote_err("upload part"))?;
                writer.put(Bytes::from(chunk));
            }
        }
        .await;
        match result {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(remote_err("complete multipart upload"))?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "could not abort a multipart upload");
                }
                Err(e)
            }
        }
    }
}

/// Read size for streaming a local blob.
const READ_CHUNK: usize = 256 * 1024;

/// A blob's content as a stream of chunks.
pub type BlobStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static>>;

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir`, and removes leftover temp files.
    pub async fn open(data_dir: &Path) -> Result<Self, StorageError> {
        let store = BlobStore::at(data_dir);
        tokio::fs::create_dir_all(&store.tmp_dir)
            .await
            .map_err(StorageError::io("create tmp dir"))?;
        tokio::fs::create_dir_all(&store.blobs_dir)
            .await
            .map_err(StorageError::io("create blobs dir"))?;
        for i in 0..=255u8 {
            let dir = store.blobs_dir.join(format!("{i:02x}"));
            if !tokio::fs::try_exists(&dir)
                .await
                .map_err(StorageError::io("stat fan-out dir"))?
            {
                tokio::fs::create_dir(&dir)
                    .await
                    .or_else(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(StorageError::io("create fan-out dir"))?;
            }
        }
        fsync_dir(&store.blobs_dir).await?;
        fsync_dir(data_dir).await?;
        let removed = store.sweep_tmp().await?;
        if removed > 0 {
            tracing::info!(removed, "removed leftover temporary upload files");
        }
        Ok(store)
    }

    /// The store under `data_dir` as it is: nothing created, nothing swept (offline fsck).
    pub fn at(data_dir: &Path) -> Self {
        BlobStore {
            blobs_dir: data_dir.join("blobs"),
            tmp_dir: data_dir.join("tmp"),
            remote: None,
        }
    }

    /// Blobs in S3-compatible object storage, named by `url`:
    /// `s3://bucket[/prefix]?endpoint=http://host:port&region=us-east-1`. Credentials come
    /// from the usual `AWS_*` environment variables. Uploads are staged in `data_dir/tmp`.
    pub async fn open_s3(data_dir: &Path, url: &str) -> Result<Self, StorageError> {
        let invalid = |why: String| StorageError::Io {
            op: "parse blob store URL",
            source: io::Error::new(io::ErrorKind::InvalidInput, why),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid(format!("{url:?}: expected s3://bucket[/prefix]?...")))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("{url:?}: no bucket")));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            builder = match k {
                "endpoint" => builder
                    .with_endpoint(v)
                    .with_allow_http(v.starts_with("http://"))
                    .with_virtual_hosted_style_request(false),
                "region" => builder.with_region(v),
                other => return Err(invalid(format!("{url:?}: unknown parameter {other:?}"))),
            };
        }
        let store = builder
            .build()
            .map_err(|e| invalid(format!("{url:?}: {e}")))?;
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let blob_store = BlobStore {
            remote: Some(Remote {
                store: std::sync::Arc::new(store),
                prefix,
                description: format!("s3://{location}"),
                uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(REMOTE_UPLOADS)),
            }),
            ..BlobStore::at(data_dir)
        };
        tokio::fs::create_dir_all(&blob_store.tmp_dir)
            .await
            .map_err(StorageError::io("create tmp dir"))?;
        let removed = blob_store.sweep_tmp().await?;
        if removed > 0 {
            tracing::info!(removed, "removed leftover temporary upload files");
        }
        blob_store.check().await?;
        Ok(blob_store)
    }

    /// True when blobs live in an object store rather than on local disk.
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Size of a stored blob, `None` when it does not exist.
    pub async fn stat_blob(&self, sha256_hex: &str) -> Result<Option<u64>, StorageError> {
        use object_store::ObjectStore as _;
        match &self.remote {
            Some(r) => match r.store.head(&r.key(sha256_hex)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(remote_err("stat blob")(e)),
            },
            None => match tokio::fs::metadata(self.blob_path(sha256_hex)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StorageError::io("stat blob")(e)),
            },
        }
    }

    /// How long ago a blob was last written, when known.
    pub async fn blob_age(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<std::time::Duration>, StorageError> {
        use object_store::ObjectStore as _;
        let modified: Option<std::time::SystemTime> = match &self.remote {
            Some(r) => match r.store.head(&r.key(sha256_hex)).await {
                Ok(meta) => Some(meta.last_modified.into()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(remote_err("stat blob")(e)),
            },
            None => match tokio::fs::metadata(self.blob_path(sha256_hex)).await {
                Ok(m) => m.modified().ok(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(StorageError::io("stat blob")(e)),
            },
        };
        Ok(modified.map(|t| t.elapsed().unwrap_or_default()))
    }

    /// The SHA-256 (hex) and length of a stored blob's actual content.
    pub async fn hash_blob(&self, sha256_hex: &str) -> io::Result<(String, u64)> {
        use futures_util::StreamExt;
        if self.remote.is_none() {
            return hash_file(self.blob_path(sha256_hex)).await;
        }
        let mut stream = self
            .read_blob(sha256_hex, 0, None)
            .await
            .map_err(|e| match e {
                StorageError::NotFound(_) => {
                    io::Error::new(io::ErrorKind::NotFound, "blob missing")
                }
                other => io::Error::other(other.to_string()),
            })?;
        let mut hasher = Some(Sha256::new());
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            len += chunk.len() as u64;
            let mut h = hasher
                .take()
                .ok_or_else(|| io::Error::other("hasher lost"))?;
            h = if chunk.len() <= INLINE_HASH_LIMIT {
                h.update(&chunk);
                h
            } else {
                crate::blocking::run(move || {
                    h.update(&chunk);
                    Ok(h)
                })
                .await?
            };
            hasher = Some(h);
        }
        let digest = hasher
            .ok_or_else(|| io::Error::other("hasher lost"))?
            .finalize();
        Ok((hex::encode(digest), len))
    }

    /// Every stored blob's name (its SHA-256 hex).
    pub async fn list_blobs(&self) -> Result<Vec<String>, StorageError> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore as _;
        let mut out = Vec::new();
        match &self.remote {
            Some(r) => {
                let prefix = object_store::path::Path::from(format!("{}blobs", r.prefix));
                let mut listing = r.store.list(Some(&prefix));
                while let Some(meta) = listing.try_next().await.map_err(remote_err("list blobs"))? {
                    if let Some(name) = meta.location.filename() {
                        out.push(name.to_string());
                    }
                }
            }
            None => {
                let mut fans = match tokio::fs::read_dir(&self.blobs_dir).await {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(StorageError::io("read blobs dir")(e)),
                };
                while let Some(fan) = fans
                    .next_entry()
                    .await
                    .map_err(StorageError::io("read blobs dir"))?
                {
                    let mut blobs = match tokio::fs::read_dir(fan.path()).await {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == io::ErrorKind::NotADirectory => continue,
                        Err(e) => return Err(StorageError::io("read fan-out dir")(e)),
                    };
                    while let Some(b) = blobs
                        .next_entry()
                        .await
                        .map_err(StorageError::io("read fan-out dir"))?
                    {
                        if let Some(name) = b.file_name().to_str() {
                            out.push(name.to_string());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every stored blob's size, from one listing of the bucket (`None` on local disk, where a
    /// stat per blob is as cheap): what a check of many blobs uses instead of a HEAD each.
    pub async fn remote_sizes(
        &self,
    ) -> Result<Option<std::collections::HashMap<String, u64>>, StorageError> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore as _;
        let Some(r) = &self.remote else {
            return Ok(None);
        };
        let prefix = object_store::path::Path::from(format!("{}blobs", r.prefix));
        let mut listing = r.store.list(Some(&prefix));
        let mut sizes = std::collections::HashMap::new();
        while let Some(meta) = listing.try_next().await.map_err(remote_err("list blobs"))? {
            if let Some(name) = meta.location.filename() {
                sizes.insert(name.to_string(), meta.size);
            }
        }
        Ok(Some(sizes))
    }

    /// `len` bytes of a blob from `start` (to the end when `None`), streamed.
    pub async fn read_blob(
        &self,
        sha256_hex: &str,
        start: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, StorageError> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore as _;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        if len == Some(0) {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        match &self.remote {
            Some(r) => {
                let range = match len {
                    Some(n) => object_store::GetRange::Bounded(start..start.saturating_add(n)),
                    None => object_store::GetRange::Offset(start),
                };
                let options = object_store::GetOptions {
                    range: Some(range),
                    ..Default::default()
                };
                let got = match r.store.get_opts(&r.key(sha256_hex), options).await {
                    Ok(g) => g,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(StorageError::NotFound(sha256_hex.to_string()))
                    }
                    Err(e) => return Err(remote_err("read blob")(e)),
                };
                Ok(Box::pin(
                    got.into_stream()
                        .map_err(|e| io::Error::other(e.to_string())),
                ))
            }
            None => {
                let mut file = self.open_blob(sha256_hex).await?;
                if start > 0 {
                    file.seek(io::SeekFrom::Start(start))
                        .await
                        .map_err(StorageError::io("seek blob"))?;
                }
                let reader = file.take(len.unwrap_or(u64::MAX));
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    reader, READ_CHUNK,
                )))
            }
        }
    }

    async fn sweep_tmp(&self) -> Result<usize, StorageError> {
        let mut removed = 0;
        let mut dir = tokio::fs::read_dir(&self.tmp_dir)
            .await
            .map_err(StorageError::io("read tmp dir"))?;
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(StorageError::io("read tmp dir"))?
        {
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove temp file")(e)),
            }
        }
        Ok(removed)
    }

    /// Readiness: the store's directories are there and answer (and the object store, when
    /// blobs live in one: a HEAD that finds nothing is an answer too).
    pub async fn check(&self) -> Result<(), StorageError> {
        use object_store::ObjectStore as _;
        if let Some(r) = &self.remote {
            let probe = object_store::path::Path::from(format!("{}.vaultfs-probe", r.prefix));
            match r.store.head(&probe).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote_err("reach the object store")(e)),
            }
        }
        let local: &[&PathBuf] = if self.remote.is_some() {
            &[&self.tmp_dir]
        } else {
            &[&self.blobs_dir, &self.tmp_dir]
        };
        for dir in local.iter().copied() {
            let meta = tokio::fs::metadata(dir)
                .await
                .map_err(StorageError::io("stat store dir"))?;
            if !meta.is_dir() {
                return Err(StorageError::Io {
                    op: "stat store dir",
                    source: io::Error::other(format!("{} is not a directory", dir.display())),
                });
            }
        }
        Ok(())
    }

    fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        let fan = sha256_hex.get(..2).unwrap_or("00");
        self.blobs_dir.join(fan).join(sha256_hex)
    }

    /// Starts streaming a new upload into a temporary file. `limit` is the maximum size.
    pub async fn begin(&self, limit: u64) -> Result<BlobWriter, StorageError> {
        let path = self
            .tmp_dir
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(StorageError::io("create temp file"))?;
        Ok(BlobWriter {
            file: Some(file),
            temp: TempFile { path: Some(path) },
            hasher: Some(Sha256::new()),
            size: 0,
            limit,
        })
    }

    /// Makes a staged blob part of the store: renames it into its content address (or drops it
    /// when identical content is already stored) and fsyncs the directory.
    ///
    /// The caller must hold the blob's lock ([`super::lock_manager::LockKey::Blob`], shared is
    /// enough) so that collection of the same content cannot run concurrently. Two uploads of
    /// identical content may both rename: the second atomically replaces the same bytes.
    pub async fn commit(&self, mut staged: StagedBlob) -> Result<BlobRef, StorageError> {
        if let Some(remote) = &self.remote {
            // Identical content already stored is not uploaded again: the caller's blob fence
            // keeps every replica's collection away until its reference commits. The temp
            // file goes with `staged`'s drop.
            if self.stat_blob(&staged.blob.sha256).await? == Some(staged.blob.size) {
                return Ok(staged.blob.clone());
            }
            let Some(temp_path) = staged.temp.path.as_deref() else {
                return Err(StorageError::Io {
                    op: "commit blob",
                    source: io::Error::other("staged blob has no temporary file"),
                });
            };
            crate::faults::check(crate::faults::Point::BeforeRename)
                .map_err(StorageError::io("upload blob"))?;
            remote
                .upload(temp_path, &staged.blob.sha256, staged.blob.size)
                .await?;
            crate::faults::check(crate::faults::Point::AfterRename)
                .map_err(StorageError::io("upload blob"))?;
            return Ok(staged.blob.clone());
        }
        let target = self.blob_path(&staged.blob.sha256);
        let exists = tokio::fs::try_exists(&target)
            .await
            .map_err(StorageError::io("stat blob"))?;
        if exists {
            // Identical content is stored once; our copy is discarded by TempFile's drop.
            return Ok(staged.blob.clone());
        }
        let Some(temp_path) = staged.temp.path.take() else {
            return Err(StorageError::Io {
                op: "commit blob",
                source: io::Error::other("staged blob has no temporary file"),
            });
        };
        if !staged.synced {
            // The identical blob seen at finish() was collected since: make ours durable.
            let synced = async {
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&temp_path)
                    .await?
                    .sync_data()
                    .await
            }
            .await;
            if let Err(e) = synced {
                staged.temp.path = Some(temp_path);
                return Err(StorageError::io("fsync temp file")(e));
            }
        }
        let renamed = match crate::faults::check(crate::faults::Point::BeforeRename) {
            Ok(()) => tokio::fs::rename(&temp_path, &target).await,
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            staged.temp.path = Some(temp_path);
            return Err(StorageError::io("rename blob into place")(e));
        }
        if let Some(dir) = target.parent() {
            fsync_dir(dir).await?;
        }
        crate::faults::check(crate::faults::Point::AfterRename)
            .map_err(StorageError::io("rename blob into place"))?;
        Ok(staged.blob.clone())
    }

    /// Opens a blob for reading.
    pub async fn open_blob(&self, sha256_hex: &str) -> Result<tokio::fs::File, StorageError> {
        match tokio::fs::File::open(self.blob_path(sha256_hex)).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(sha256_hex.to_string()))
            }
            Err(e) => Err(StorageError::io("open blob")(e)),
        }
    }

    pub async fn blob_exists(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        if self.remote.is_some() {
            return Ok(self.stat_blob(sha256_hex).await?.is_some());
        }
        tokio::fs::try_exists(self.blob_path(sha256_hex))
            .await
            .map_err(StorageError::io("stat blob"))
    }

    /// Removes a blob. The caller must hold its lock and have checked that nothing references
    /// it. Removing a blob that is already gone is not an error.
    pub async fn delete_blob(&self, sha256_hex: &str) -> Result<(), StorageError> {
        use object_store::ObjectStore as _;
        if let Some(r) = &self.remote {
            return match r.store.delete(&r.key(sha256_hex)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(remote_err("remove blob")(e)),
            };
        }
        match tokio::fs::remove_file(self.blob_path(sha256_hex)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove blob")(e)),
        }
    }
}

async fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = tokio::fs::File::open(dir)
        .await
        .map_err(StorageError::io("open dir for fsync"))?;
    handle
        .sync_all()
        .await
        .map_err(StorageError::io("fsync dir"))
}

/// A temporary file that removes itself when dropped unless its path was taken.
#[derive(Debug)]
struct TempFile {
    path: Option<PathBuf>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let Some(path) = self.path.take() else {
            return;
        };
        // Never block in drop: hand the unlink to the runtime. Without a runtime (process
        // exiting) the file stays, and the sweep at the next start removes it.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove temp file");
                    }
                }
            });
        }
    }
}

/// An upload being streamed to a temporary file, hashed in flight.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<tokio::fs::File>,
    temp: TempFile,
    /// `None` only while a large chunk is being hashed on the blocking pool.
    hasher: Option<Sha256>,
    size: u64,
    limit: u64,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a chunk. Fails with [`StorageError::TooLarge`] as soon as the limit is passed.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        let new_size = self.size.saturating_add(chunk.len() as u64);
        if new_size > self.limit {
            return Err(StorageError::TooLarge { limit: self.limit });
        }
        self.size = new_size;
        crate::faults::check(crate::faults::Point::BeforeTempWrite)
            .map_err(StorageError::io("write temp file"))?;
        let file = self.file.as_mut().ok_or_else(|| StorageError::Io {
            op: "write temp file",
            source: io::Error::other("writer already finished"),
        })?;
        if chunk.len() <= INLINE_HASH_LIMIT {
            if let Some(h) = self.hasher.as_mut() {
                h.update(&chunk);
            }
            file.write_all(&chunk)
                .await
                .map_err(StorageError::io("write temp file"))?;
        } else {
            // Hash on the blocking pool while the write proceeds.
            let mut hasher = self.hasher.take().ok_or_else(lost_hasher)?;
            let to_hash = chunk.clone();
            let hashing = crate::blocking::run(move || {
                hasher.update(&to_hash);
                Ok(hasher)
            });
            let writing = file.write_all(&chunk);
            let (hashed, written) = tokio::join!(hashing, writing);
            self.hasher = Some(hashed.map_err(StorageError::io("hash chunk"))?);
            written.map_err(StorageError::io("write temp file"))?;
        }
        crate::faults::check(crate::faults::Point::AfterTempWrite)
            .map_err(StorageError::io("write temp file"))?;
        Ok(())
    }

    /// Flushes the temp file and returns the staged blob with its digest. The temp file is
    /// fdatasynced here unless identical content is already stored (then it will only be
    /// deleted; should that content be collected before the commit, [`BlobStore::commit`]
    /// syncs it before the rename).
    pub async fn finish(mut self, store: &BlobStore) -> Result<StagedBlob, StorageError> {
        let mut file = self.file.take().ok_or_else(|| StorageError::Io {
            op: "finish temp file",
            source: io::Error::other("writer already finished"),
        })?;
        file.flush()
            .await
            .map_err(StorageError::io("flush temp file"))?;
        let digest = self.hasher.take().ok_or_else(lost_hasher)?.finalize();
        let sha256 = hex::encode(digest);
        let synced = if store.is_remote() {
            // The temp file is only read back for the upload; the object store's
            // acknowledgement, not this disk, makes the blob durable.
            true
        } else if store.blob_exists(&sha256).await? {
            false
        } else {
            // A failed fsync is never retried: the upload fails (PostgreSQL's "fsyncgate").
            crate::faults::check(crate::faults::Point::BeforeFsync)
                .map_err(StorageError::io("fsync temp file"))?;
            file.sync_data()
                .await
                .map_err(StorageError::io("fsync temp file"))?;
            crate::faults::check(crate::faults::Point::AfterFsync)
                .map_err(StorageError::io("fsync temp file"))?;
            true
        };
        drop(file);
        Ok(StagedBlob {
            temp: TempFile {
                path: self.temp.path.take(),
            },
            blob: BlobRef {
                sha256,
                size: self.size,
            },
            synced,
        })
    }
}

/// The hasher is taken out only while a chunk is hashed on the blocking pool; if that future
/// was cancelled the digest is unknown and the upload must fail rather than guess.
fn lost_hasher() -> StorageError {
    StorageError::Io {
        op: "hash upload",
        source: io::Error::other("hash state lost after an interrupted write"),
    }
}

/// A complete, fsynced upload in the temp directory, not yet part of the store.
#[derive(Debug)]
pub struct StagedBlob {
    temp: TempFile,
    pub blob: BlobRef,
    /// Whether the temp file's data is on disk (fdatasync done).
    synced: bool,
}

impl StagedBlob {
    /// The raw SHA-256 digest, for comparing with a client-supplied checksum.
    pub fn sha256_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.blob.sha256).ok()
    }
}
