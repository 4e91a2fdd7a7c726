//! Staging: uploads streamed into `tmp/<uuid>.part`, hashed in flight, fdatasynced, and removed
//! again on every failure path (by [`TempFile`]'s drop) or by the sweep at start.
//!
//! Both backends stage here; only what happens at the commit differs (a rename on local disk,
//! an upload to the object store).

use std::io;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{BlobRef, BlobStore, StorageError};

/// Chunks up to this size are hashed inline (about 0.2 ms of CPU at most); larger ones are
/// hashed on the blocking pool so that no runtime worker is held for long.
pub const INLINE_HASH_LIMIT: usize = 256 * 1024;

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

/// Feeds `chunk` to `hasher`: inline when small, on the blocking pool otherwise.
pub(super) async fn hash_chunk(mut hasher: Sha256, chunk: Bytes) -> io::Result<Sha256> {
    if chunk.len() <= INLINE_HASH_LIMIT {
        hasher.update(&chunk);
        return Ok(hasher);
    }
    crate::blocking::run(move || {
        hasher.update(&chunk);
        Ok(hasher)
    })
    .await
}

/// `fsync`s a directory, so that a rename or a creation in it is durable.
pub(super) async fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = tokio::fs::File::open(dir)
        .await
        .map_err(StorageError::io("open dir for fsync"))?;
    handle
        .sync_all()
        .await
        .map_err(StorageError::io("fsync dir"))
}

/// Creates the staging directory if needed.
pub(super) async fn create_dir(tmp_dir: &Path) -> Result<(), StorageError> {
    tokio::fs::create_dir_all(tmp_dir)
        .await
        .map_err(StorageError::io("create tmp dir"))?;
    Ok(())
}

/// Removes every file in the staging directory (uploads of an earlier run): how many.
pub(super) async fn sweep(tmp_dir: &Path) -> Result<usize, StorageError> {
    let mut removed = 0;
    let mut dir = tokio::fs::read_dir(tmp_dir)
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
    if removed > 0 {
        tracing::info!(removed, "removed leftover temporary upload files");
    }
    Ok(removed)
}

/// Starts a new upload in `tmp_dir`: an empty hasher, at most `limit` bytes. With an
/// `inline_limit`, the body is held in memory while it is no larger than that (content the
/// store keeps inline, see [`super::inline`]), and only a larger one gets a temp file, created
/// when it passes the limit; without one, the temp file is created now.
pub(super) async fn begin(
    tmp_dir: &Path,
    limit: u64,
    inline_limit: u64,
) -> Result<BlobWriter, StorageError> {
    let mut writer = BlobWriter {
        file: None,
        temp: TempFile { path: None },
        tmp_dir: tmp_dir.to_path_buf(),
        pending: None,
        inline_limit,
        hasher: Some(Sha256::new()),
        size: 0,
        limit,
    };
    if inline_limit > 0 {
        writer.pending = Some(BytesMut::new());
    } else {
        writer.create_file().await?;
    }
    Ok(writer)
}

/// A temporary file that removes itself when dropped unless its path was taken.
#[derive(Debug)]
pub(super) struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// No file at all (a blob staged elsewhere, see [`StagedBlob::remote`]).
    pub(super) fn none() -> Self {
        TempFile { path: None }
    }

    /// The file's path while it is still owned (not taken and not yet removed).
    pub(super) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Takes the path: the file is no longer removed on drop (it is about to be renamed).
    pub(super) fn take(&mut self) -> Option<PathBuf> {
        self.path.take()
    }

    /// Gives a taken path back (the rename failed): the drop removes the file again.
    pub(super) fn restore(&mut self, path: PathBuf) {
        self.path = Some(path);
    }
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
    /// The temp file; `None` while the body is held in `pending` (and after `finish`).
    file: Option<tokio::fs::File>,
    temp: TempFile,
    tmp_dir: PathBuf,
    /// The body so far, while it is small enough to be kept inline.
    pending: Option<BytesMut>,
    inline_limit: u64,
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

    /// Creates the temp file the body is streamed into.
    async fn create_file(&mut self) -> Result<(), StorageError> {
        let path = self
            .tmp_dir
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(StorageError::io("create temp file"))?;
        self.temp = TempFile { path: Some(path) };
        self.file = Some(file);
        Ok(())
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
        if let Some(pending) = self.pending.as_mut() {
            if new_size <= self.inline_limit {
                // Still small: kept in memory, hashed now.
                pending.extend_from_slice(&chunk);
                let hasher = self.hasher.take().ok_or_else(lost_hasher)?;
                self.hasher = Some(
                    hash_chunk(hasher, chunk)
                        .await
                        .map_err(StorageError::io("hash chunk"))?,
                );
                return crate::faults::check(crate::faults::Point::AfterTempWrite)
                    .map_err(StorageError::io("write temp file"));
            }
            // Past the inline limit: what was held goes to a temp file (already hashed).
            let held = self.pending.take().unwrap_or_default().freeze();
            self.create_file().await?;
            if let Some(file) = self.file.as_mut() {
                file.write_all(&held)
                    .await
                    .map_err(StorageError::io("write temp file"))?;
            }
        }
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
            let hasher = self.hasher.take().ok_or_else(lost_hasher)?;
            let hashing = hash_chunk(hasher, chunk.clone());
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
    /// fdatasynced here unless the store says it need not be: identical content is already
    /// stored on local disk (then it will only be deleted; should that content be collected
    /// before the commit, [`BlobStore::commit`] syncs it before the rename), or blobs live in
    /// an object store (the temp file is only read back for the upload; the object store's
    /// acknowledgement, not this disk, makes the blob durable).
    ///
    /// A body held in memory (no larger than the inline limit) is returned as it is, with no
    /// file at all: the commit stores it inline, durable when the commit returns.
    pub async fn finish(mut self, store: &BlobStore) -> Result<StagedBlob, StorageError> {
        if let Some(pending) = self.pending.take() {
            let digest = self.hasher.take().ok_or_else(lost_hasher)?.finalize();
            return Ok(StagedBlob {
                temp: TempFile::none(),
                blob: BlobRef {
                    sha256: hex::encode(digest),
                    size: self.size,
                },
                synced: true,
                remote: None,
                inline: Some(pending.freeze()),
            });
        }
        let mut file = self.file.take().ok_or_else(|| StorageError::Io {
            op: "finish temp file",
            source: io::Error::other("writer already finished"),
        })?;
        file.flush()
            .await
            .map_err(StorageError::io("flush temp file"))?;
        let digest = self.hasher.take().ok_or_else(lost_hasher)?.finalize();
        let sha256 = hex::encode(digest);
        let synced = if store.staged_needs_fsync(&sha256).await? {
            // A failed fsync is never retried: the upload fails (PostgreSQL's "fsyncgate").
            crate::faults::check(crate::faults::Point::BeforeFsync)
                .map_err(StorageError::io("fsync temp file"))?;
            file.sync_data()
                .await
                .map_err(StorageError::io("fsync temp file"))?;
            crate::faults::check(crate::faults::Point::AfterFsync)
                .map_err(StorageError::io("fsync temp file"))?;
            true
        } else {
            false
        };
        drop(file);
        Ok(StagedBlob {
            temp: TempFile {
                path: self.temp.take(),
            },
            blob: BlobRef {
                sha256,
                size: self.size,
            },
            synced,
            remote: None,
            inline: None,
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

/// A complete upload in the temp directory (fsynced when the backend needs it), not yet part
/// of the store.
#[derive(Debug)]
pub struct StagedBlob {
    pub(super) temp: TempFile,
    /// The content's hash and size, computed while it streamed in.
    pub blob: BlobRef,
    /// Whether the temp file's data is on disk (fdatasync done).
    pub(super) synced: bool,
    /// Instead of a temp file: an object in the blob store's bucket holding the content (a
    /// tus session staged there), copied into place by the commit.
    pub(super) remote: Option<String>,
    /// Instead of a temp file: the whole content, held in memory (no larger than the store's
    /// inline limit), which the commit stores inline.
    pub(super) inline: Option<Bytes>,
}

impl StagedBlob {
    /// The raw SHA-256 digest, for comparing with a client-supplied checksum.
    pub fn sha256_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(&self.blob.sha256).ok()
    }
}

/// Stages a file that is already complete and durable elsewhere under the data directory (a
/// tus session's bytes, fdatasynced as they were acknowledged) without copying it: a hard
/// link in `tmp_dir`, which the commit renames into place and every failure path removes,
/// while the original stays where it is until its owner removes it. Falls back to a copy
/// (fdatasynced) where the file system has no hard links.
pub(super) async fn adopt(
    tmp_dir: &Path,
    source: &Path,
    blob: BlobRef,
) -> Result<StagedBlob, StorageError> {
    let path = tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4().simple()));
    if tokio::fs::hard_link(source, &path).await.is_err() {
        tokio::fs::copy(source, &path)
            .await
            .map_err(StorageError::io("copy staged file"))?;
        let temp = TempFile {
            path: Some(path.clone()),
        };
        tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await
            .map_err(StorageError::io("open staged copy"))?
            .sync_data()
            .await
            .map_err(StorageError::io("fsync staged copy"))?;
        return Ok(StagedBlob {
            temp,
            blob,
            synced: true,
            remote: None,
            inline: None,
        });
    }
    Ok(StagedBlob {
        temp: TempFile { path: Some(path) },
        blob,
        synced: true,
        remote: None,
        inline: None,
    })
}
