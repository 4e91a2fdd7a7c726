//! Streaming a PATCH body into the session's local staging file, fsynced before the offset
//! moves, and what ends a body early (shared with [`super::remote`]).

use std::io::{self, Seek, Write};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::checksum::{Checksum, ChecksumHasher};
use super::live::Live;
use super::{Inner, TusError};
use crate::services::metadata::now_ms;
use crate::services::metadata::tus::SessionRow;
use crate::services::upload::UploadError;

/// Bytes gathered from the body before one write (and hash) on the blocking pool.
const WRITE_BLOCK: usize = 512 * 1024;

/// How a PATCH body ended.
pub(super) enum End {
    /// Read to its end.
    Complete,
    /// The body failed (connection reset, a deadline): what arrived is kept.
    Body(UploadError),
    /// A newer request took the session over.
    Cancelled,
    /// The request's token was revoked (or expired).
    Revoked,
    /// More bytes than the upload's length.
    TooLong,
    /// Writing or hashing failed.
    Write(io::Error),
}

/// The staging file and the digests fed with it, moved to the blocking pool for each block.
struct Sink {
    file: std::fs::File,
    sha: Option<Sha256>,
    check: Option<ChecksumHasher>,
}

impl Sink {
    async fn write(mut self, block: Bytes) -> io::Result<Sink> {
        crate::blocking::run(move || {
            self.file.write_all(&block)?;
            if let Some(h) = self.sha.as_mut() {
                h.update(&block);
            }
            if let Some(h) = self.check.as_mut() {
                h.update(&block);
            }
            Ok(self)
        })
        .await
    }

    async fn sync(self) -> io::Result<Sink> {
        crate::blocking::run(move || {
            #[allow(clippy::disallowed_methods)] // on the blocking pool
            self.file.sync_data()?;
            Ok(self)
        })
        .await
    }
}

/// What ends a PATCH body early.
pub(super) struct Stops<'a> {
    /// A newer request took the session over.
    pub(super) takeover: &'a CancellationToken,
    /// The request's token was revoked or expired.
    pub(super) revoked: &'a CancellationToken,
}

impl Inner {
    /// Streams the body into the staging file from the row's offset. Returns the new
    /// acknowledged offset, the whole-file hasher at it (when known), and the error to
    /// answer with when the body did not end well (its bytes kept or discarded as the tus
    /// rules say: kept on a broken connection, discarded with a checksum, on a takeover, or
    /// past the length).
    pub(super) async fn receive(
        &self,
        live: &Live,
        row: &SessionRow,
        limit: u64,
        checksum: Option<&Checksum>,
        body: impl Stream<Item = Result<Bytes, UploadError>> + Send,
        stops: &Stops<'_>,
    ) -> Result<(u64, Option<Sha256>, Option<TusError>), TusError> {
        let start = row.offset;
        let path = self.file_path(&row.id);
        let file = crate::blocking::run(move || open_at(&path, start)).await?;
        // A new session's hasher starts here; after a restart it is unknown (None).
        let base = live
            .take_hasher(start)
            .or_else(|| (start == 0).then(Sha256::new));
        let mut sink = Some(Sink {
            file,
            sha: base.clone(),
            check: checksum.map(|c| c.algorithm.hasher()),
        });
        let mut block = BytesMut::new();
        let mut written = 0u64;
        let mut body = std::pin::pin!(body);
        let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
        let end = loop {
            let next = tokio::select! {
                biased;
                () = stops.takeover.cancelled() => break End::Cancelled,
                () = stops.revoked.cancelled() => break End::Revoked,
                next = body.next() => next,
            };
            let chunk = match next {
                None => break End::Complete,
                Some(Err(e)) => break End::Body(e),
                Some(Ok(chunk)) => chunk,
            };
            bytes_in.increment(chunk.len() as u64);
            let total = start + written + block.len() as u64 + chunk.len() as u64;
            if total > limit {
                break End::TooLong;
            }
            block.extend_from_slice(&chunk);
            if block.len() >= WRITE_BLOCK {
                let Some(s) = sink.take() else {
                    break End::Write(io::Error::other("staging writer lost"));
                };
                let n = block.len() as u64;
                match s.write(block.split().freeze()).await {
                    Ok(s) => {
                        sink = Some(s);
                        written += n;
                    }
                    Err(e) => break End::Write(e),
                }
            }
        };
        let keep = match &end {
            End::Complete => true,
            End::Body(_) => checksum.is_none(),
            End::Cancelled | End::Revoked | End::TooLong | End::Write(_) => false,
        };
        if !keep {
            // Nothing of this request is acknowledged; the next one truncates the file back.
            // A revoked token's bytes go at once: there may be no next request.
            if let (End::Revoked, Some(s)) = (&end, sink.take()) {
                let cut = crate::blocking::run(move || s.file.set_len(start)).await;
                if let Err(e) = cut {
                    tracing::warn!(id = %row.id, error = %e, "could not cut a revoked PATCH's bytes");
                }
            }
            live.put_hasher(
                start,
                if matches!(end, End::Write(_)) {
                    None
                } else {
                    base
                },
            );
            return Ok((
                start,
                None,
                Some(match end {
                    End::Cancelled => TusError::Interrupted,
                    End::Revoked => TusError::Revoked,
                    End::TooLong => TusError::LengthExceeded { length: limit },
                    End::Write(e) => TusError::Io(e),
                    End::Body(e) => TusError::Service(e.into()),
                    End::Complete => TusError::Interrupted,
                }),
            ));
        }
        // Write the rest, then fsync: only then does the offset move.
        let Some(mut s) = sink.take() else {
            live.put_hasher(start, None);
            return Err(TusError::Io(io::Error::other("staging writer lost")));
        };
        if !block.is_empty() {
            let n = block.len() as u64;
            s = match s.write(block.freeze()).await {
                Ok(s) => s,
                Err(e) => {
                    live.put_hasher(start, None);
                    return Err(e.into());
                }
            };
            written += n;
        }
        if let (Some(expected), Some(check)) = (checksum, s.check.take()) {
            if check.finalize() != expected.digest {
                live.put_hasher(start, base);
                return Err(TusError::ChecksumMismatch(expected.algorithm.name()));
            }
        }
        let s = match s.sync().await {
            Ok(s) => s,
            Err(e) => {
                live.put_hasher(start, None);
                return Err(e.into());
            }
        };
        let offset = start + written;
        let expires = now_ms().saturating_add(self.expiry_ms());
        if written > 0 && !self.store.advance(&row.id, start, offset, expires).await? {
            live.put_hasher(start, None);
            return Err(TusError::NotFound);
        }
        metrics::counter!("vaultfs_tus_bytes_acknowledged_total").increment(written);
        live.put_hasher(offset, s.sha.clone());
        let failure = match end {
            End::Body(e) => Some(TusError::Service(e.into())),
            _ => None,
        };
        Ok((offset, s.sha, failure))
    }
}

/// Opens a session's staging file for appending at `offset`: bytes past it (never
/// acknowledged) are cut off. Blocking: runs on the blocking pool.
fn open_at(path: &Path, offset: u64) -> io::Result<std::fs::File> {
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let mut file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound && offset == 0 => {
            #[allow(clippy::disallowed_methods)] // on the blocking pool
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(io::ErrorKind::NotFound, "staging lost"))
        }
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < offset {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("staging file has {len} bytes, the session acknowledged {offset}"),
        ));
    }
    if len > offset {
        file.set_len(offset)?;
    }
    file.seek(io::SeekFrom::Start(offset))?;
    Ok(file)
}
