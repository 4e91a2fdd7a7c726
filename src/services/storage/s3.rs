//! Blobs in S3-compatible object storage (through `object_store`), under
//! `{prefix}blobs/<aa>/<sha256>`. Uploads are staged on local disk first ([`super::staging`])
//! and uploaded at the commit: the object store's acknowledgement makes a blob durable.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::ObjectStore as _;
use sha2::{Digest, Sha256};

use super::staging::{self, StagedBlob};
use super::{BlobRef, BlobStream, StorageError};

/// Parts of a multipart upload to the object store, and how many go at once: memory per
/// upload is bounded by their product.
const PART_SIZE: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 4;
/// Object-store uploads per process at once: with a part being filled and
/// [`PARTS_IN_FLIGHT`] in flight, their memory stays under 8 x 5 x 8 MiB = 320 MiB whatever
/// the number of uploads admitted. The wait is bounded like the store's own calls.
const REMOTE_UPLOADS: usize = 8;
const REMOTE_UPLOAD_WAIT: Duration = Duration::from_secs(60);

/// Blobs in an object store.
#[derive(Clone)]
pub(super) struct S3Store {
    store: Arc<dyn object_store::ObjectStore>,
    /// tus session staging, on the same bucket and prefix.
    tus: super::tus_staging::TusStaging,
    prefix: String,
    description: String,
    /// Uploads to the object store at once (each holds up to 5 parts in memory).
    uploads: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

fn remote_err(op: &'static str) -> impl FnOnce(object_store::Error) -> StorageError {
    move |e| StorageError::Io {
        op,
        source: io::Error::other(e.to_string()),
    }
}

impl S3Store {
    /// The store `url` names: `s3://bucket[/prefix]?endpoint=http://host:port&region=...`.
    /// Credentials come from the usual `AWS_*` environment variables. Nothing is contacted.
    pub(super) fn from_url(url: &str) -> Result<Self, StorageError> {
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
        let store = Arc::new(store);
        Ok(S3Store {
            tus: super::tus_staging::TusStaging::new(Arc::clone(&store), prefix.clone()),
            store,
            prefix,
            description: format!("s3://{location}"),
            uploads: Arc::new(tokio::sync::Semaphore::new(REMOTE_UPLOADS)),
        })
    }

    pub(super) fn tus(&self) -> &super::tus_staging::TusStaging {
        &self.tus
    }

    fn key(&self, sha256_hex: &str) -> object_store::path::Path {
        let fan = sha256_hex.get(..2).unwrap_or("00");
        object_store::path::Path::from(format!("{}blobs/{fan}/{sha256_hex}", self.prefix))
    }

    pub(super) async fn stat(&self, sha256_hex: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&self.key(sha256_hex)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err("stat blob")(e)),
        }
    }

    pub(super) async fn modified(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<SystemTime>, StorageError> {
        match self.store.head(&self.key(sha256_hex)).await {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err("stat blob")(e)),
        }
    }

    /// Reads the blob back and hashes what the object store returns.
    pub(super) async fn hash(&self, sha256_hex: &str) -> io::Result<(String, u64)> {
        use futures_util::StreamExt;
        let mut stream = self.read(sha256_hex, 0, None).await.map_err(|e| match e {
            StorageError::NotFound(_) => io::Error::new(io::ErrorKind::NotFound, "blob missing"),
            other => io::Error::other(other.to_string()),
        })?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            len += chunk.len() as u64;
            hasher = staging::hash_chunk(hasher, chunk).await?;
        }
        Ok((hex::encode(hasher.finalize()), len))
    }

    pub(super) async fn exists(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        Ok(self.stat(sha256_hex).await?.is_some())
    }

    /// Every blob and its size, from one listing of the bucket.
    pub(super) async fn sizes(&self) -> Result<Vec<(String, u64)>, StorageError> {
        use futures_util::TryStreamExt;
        let prefix = object_store::path::Path::from(format!("{}blobs", self.prefix));
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = listing.try_next().await.map_err(remote_err("list blobs"))? {
            if let Some(name) = meta.location.filename() {
                out.push((name.to_string(), meta.size));
            }
        }
        Ok(out)
    }

    /// `len` bytes from `start` (to the end when `None`); `len` is not `Some(0)`.
    pub(super) async fn read(
        &self,
        sha256_hex: &str,
        start: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, StorageError> {
        use futures_util::TryStreamExt;
        let range = match len {
            Some(n) => object_store::GetRange::Bounded(start..start.saturating_add(n)),
            None => object_store::GetRange::Offset(start),
        };
        let options = object_store::GetOptions {
            range: Some(range),
            ..Default::default()
        };
        let got = match self.store.get_opts(&self.key(sha256_hex), options).await {
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

    /// Readiness: the object store answers (a HEAD that finds nothing is an answer too).
    pub(super) async fn check(&self) -> Result<(), StorageError> {
        let probe = object_store::path::Path::from(format!("{}.vaultfs-probe", self.prefix));
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_err("reach the object store")(e)),
        }
    }

    /// Uploads the staged blob to its content address, unless identical content is already
    /// stored: the caller's blob fence keeps every replica's collection away until its
    /// reference commits. The temp file goes with `staged`'s drop.
    pub(super) async fn commit(&self, staged: StagedBlob) -> Result<BlobRef, StorageError> {
        if self.stat(&staged.blob.sha256).await? == Some(staged.blob.size) {
            return Ok(staged.blob.clone());
        }
        if let Some(source) = &staged.remote {
            // A tus session assembled in the bucket: copied inside the object store.
            crate::faults::check(crate::faults::Point::BeforeRename)
                .map_err(StorageError::io("upload blob"))?;
            self.copy_in(source, &staged.blob.sha256, staged.blob.size)
                .await?;
            return Ok(staged.blob.clone());
        }
        let Some(temp_path) = staged.temp.path() else {
            return Err(StorageError::Io {
                op: "commit blob",
                source: io::Error::other("staged blob has no temporary file"),
            });
        };
        crate::faults::check(crate::faults::Point::BeforeRename)
            .map_err(StorageError::io("upload blob"))?;
        self.upload(temp_path, &staged.blob.sha256, staged.blob.size)
            .await?;
        crate::faults::check(crate::faults::Point::AfterRename)
            .map_err(StorageError::io("upload blob"))?;
        Ok(staged.blob.clone())
    }

    /// Uploads the staged temp file to its content address: one PUT when small, otherwise a
    /// multipart upload with [`PARTS_IN_FLIGHT`] parts of [`PART_SIZE`] in flight, aborted on
    /// any error so no incomplete upload lingers.
    async fn upload(&self, temp: &Path, sha256_hex: &str, size: u64) -> Result<(), StorageError> {
        use tokio::io::AsyncReadExt;
        let key = self.key(sha256_hex);
        let _slot = tokio::time::timeout(
            REMOTE_UPLOAD_WAIT,
            Arc::clone(&self.uploads).acquire_owned(),
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

    /// Copies the object `source` (of `size` bytes) to the blob's content address inside the
    /// object store: one `CopyObject` up to its 5 GiB limit, no bytes through this process;
    /// past it (object_store has no `UploadPartCopy`), streamed through it once.
    async fn copy_in(&self, source: &str, sha256_hex: &str, size: u64) -> Result<(), StorageError> {
        let from = object_store::path::Path::from(source);
        let to = self.key(sha256_hex);
        if size <= super::tus_staging::MAX_COPY {
            return self
                .store
                .copy(&from, &to)
                .await
                .map_err(remote_err("copy tus upload into place"));
        }
        use futures_util::StreamExt;
        let _slot = tokio::time::timeout(
            REMOTE_UPLOAD_WAIT,
            Arc::clone(&self.uploads).acquire_owned(),
        )
        .await
        .map_err(|_| StorageError::Busy("object-store uploads backed up"))?
        .map_err(|_| StorageError::Busy("object-store upload slots closed"))?;
        let mut stream = self
            .store
            .get(&from)
            .await
            .map_err(remote_err("read tus upload"))?
            .into_stream();
        let upload = self
            .store
            .put_multipart(&to)
            .await
            .map_err(remote_err("start multipart upload"))?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let result: Result<(), StorageError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(remote_err("read tus upload"))?;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(remote_err("upload part"))?;
                writer.write(&chunk);
            }
            Ok(())
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

    pub(super) async fn delete(&self, sha256_hex: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.key(sha256_hex)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote_err("remove blob")(e)),
        }
    }
}
