//! The local blob store: `blobs/<aa>/<sha256 hex>` under the data directory, immutable files
//! named by their content.
//!
//! The 256 fan-out directories are created (and fsynced) at start, so committing a blob only
//! needs the fsync of its own fan-out directory. Durability order for a new blob: the staged
//! temp file is fdatasynced ([`super::staging`]), renamed into place, and the fan-out directory
//! fsynced. Only then may metadata reference it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::staging::{self, StagedBlob};
use super::{BlobRef, BlobStream, StorageError};

/// Read size for streaming a local blob.
const READ_CHUNK: usize = 256 * 1024;

/// Blobs on local disk, under `blobs_dir`.
#[derive(Debug, Clone)]
pub(super) struct LocalStore {
    blobs_dir: PathBuf,
}

impl LocalStore {
    /// The store under `data_dir` as it is: nothing created.
    pub(super) fn at(data_dir: &Path) -> Self {
        LocalStore {
            blobs_dir: data_dir.join("blobs"),
        }
    }

    /// Creates the blobs directory and its 256 fan-out directories when missing, and makes
    /// them (and whatever else was just created in `data_dir`) durable.
    pub(super) async fn create(&self, data_dir: &Path) -> Result<(), StorageError> {
        tokio::fs::create_dir_all(&self.blobs_dir)
            .await
            .map_err(StorageError::io("create blobs dir"))?;
        for i in 0..=255u8 {
            let dir = self.blobs_dir.join(format!("{i:02x}"));
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
        staging::fsync_dir(&self.blobs_dir).await?;
        staging::fsync_dir(data_dir).await
    }

    fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        let fan = sha256_hex.get(..2).unwrap_or("00");
        self.blobs_dir.join(fan).join(sha256_hex)
    }

    pub(super) async fn stat(&self, sha256_hex: &str) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.blob_path(sha256_hex)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("stat blob")(e)),
        }
    }

    pub(super) async fn modified(
        &self,
        sha256_hex: &str,
    ) -> Result<Option<SystemTime>, StorageError> {
        match tokio::fs::metadata(self.blob_path(sha256_hex)).await {
            Ok(m) => Ok(m.modified().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("stat blob")(e)),
        }
    }

    pub(super) async fn hash(&self, sha256_hex: &str) -> io::Result<(String, u64)> {
        staging::hash_file(self.blob_path(sha256_hex)).await
    }

    pub(super) async fn exists(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        tokio::fs::try_exists(self.blob_path(sha256_hex))
            .await
            .map_err(StorageError::io("stat blob"))
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
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
        Ok(out)
    }

    /// `len` bytes from `start` (to the end when `None`); `len` is not `Some(0)`.
    pub(super) async fn read(
        &self,
        sha256_hex: &str,
        start: u64,
        len: Option<u64>,
    ) -> Result<BlobStream, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = self.open(sha256_hex).await?;
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

    pub(super) async fn open(&self, sha256_hex: &str) -> Result<tokio::fs::File, StorageError> {
        match tokio::fs::File::open(self.blob_path(sha256_hex)).await {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(sha256_hex.to_string()))
            }
            Err(e) => Err(StorageError::io("open blob")(e)),
        }
    }

    /// Readiness: the blobs directory is there.
    pub(super) async fn check(&self) -> Result<(), StorageError> {
        super::check_dir(&self.blobs_dir).await
    }

    /// Whether a finished upload must be fdatasynced before its commit: not when identical
    /// content is already stored (the staged copy will only be deleted).
    pub(super) async fn staged_needs_fsync(&self, sha256_hex: &str) -> Result<bool, StorageError> {
        Ok(!self.exists(sha256_hex).await?)
    }

    /// Renames the staged file into its content address (or drops it when identical content is
    /// already stored) and fsyncs the fan-out directory.
    pub(super) async fn commit(&self, mut staged: StagedBlob) -> Result<BlobRef, StorageError> {
        let target = self.blob_path(&staged.blob.sha256);
        let exists = tokio::fs::try_exists(&target)
            .await
            .map_err(StorageError::io("stat blob"))?;
        if exists {
            // Identical content is stored once; our copy is discarded by TempFile's drop.
            return Ok(staged.blob.clone());
        }
        let Some(temp_path) = staged.temp.take() else {
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
                staged.temp.restore(temp_path);
                return Err(StorageError::io("fsync temp file")(e));
            }
        }
        let renamed = match crate::faults::check(crate::faults::Point::BeforeRename) {
            Ok(()) => tokio::fs::rename(&temp_path, &target).await,
            Err(e) => Err(e),
        };
        if let Err(e) = renamed {
            staged.temp.restore(temp_path);
            return Err(StorageError::io("rename blob into place")(e));
        }
        if let Some(dir) = target.parent() {
            staging::fsync_dir(dir).await?;
        }
        crate::faults::check(crate::faults::Point::AfterRename)
            .map_err(StorageError::io("rename blob into place"))?;
        Ok(staged.blob.clone())
    }

    pub(super) async fn delete(&self, sha256_hex: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.blob_path(sha256_hex)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("remove blob")(e)),
        }
    }
}
