//! Sessions staged in the object store (S3 blob store), so that any replica can continue
//! any upload.
//!
//! - **Layout.** Session `<id>` has a multipart upload of `tus/<id>/data`, started at
//!   creation. Bytes are cut into parts of [`Remote::part_size`] (at least 8 MiB: S3 wants
//!   5 MiB for every part but the last) at fixed offsets, so part `i` is always bytes
//!   `i * part_size ..`; each is uploaded as soon as a PATCH has delivered it whole. The bytes
//!   past the last full part (under one part) go into a `tail-<uuid>` object when the PATCH
//!   ends; the next PATCH, on whichever replica, reads that tail back (at most one part) and
//!   goes on from it.
//! - **The row is the truth.** The parts' ETags, the tail's key and length and the SHA-256
//!   state after the last full part are JSON in the session row's `remote` column, written
//!   by the same compare-and-set statement that moves the offset
//!   ([`super::TusStore::advance_remote`]). A part uploaded by a PATCH that was not
//!   acknowledged is simply uploaded again (same part number) by the next one.
//! - **No second read.** The SHA-256 state ([`MidSha`]) is carried over part boundaries in
//!   the row; completion feeds it the tail and has the whole file's digest. The tail becomes
//!   the last part, `CompleteMultipartUpload` assembles the object inside the store, and the
//!   commit copies it to its content address inside the store (`CopyObject`). The bytes pass
//!   through a replica once, as they arrive. (A final concatenation reads its partial uploads
//!   once: SHA-256 of the whole cannot be composed from the parts' digests, and object_store
//!   has no `UploadPartCopy`.)

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;

/// SHA-256's initial state.
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The smallest part (S3's minimum is 5 MiB; the CLI sends 16 MiB PATCHes).
pub(super) const MIN_PART: u64 = 8 * 1024 * 1024;
/// S3 allows 10,000 parts per multipart upload.
const MAX_PARTS: u64 = 10_000;

/// SHA-256 over a whole number of 64-byte blocks, as a state that can be stored and picked
/// up by another process (sha2's hasher cannot be serialized; its compression function is
/// the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MidSha {
    h: [u32; 8],
    /// Bytes fed so far (a multiple of 64).
    len: u64,
}

impl MidSha {
    #[cfg(test)]
    pub(super) fn new() -> Self {
        MidSha { h: H0, len: 0 }
    }

    /// Feeds `data`, whose length is a multiple of 64. Blocking for large inputs: call it
    /// on the blocking pool.
    pub(super) fn update(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 64, 0);
        for block in data.chunks_exact(64) {
            sha2::compress256(
                &mut self.h,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        self.len += data.len() as u64;
    }

    /// The digest of everything fed plus `tail` (any length).
    pub(super) fn finalize(mut self, tail: &[u8]) -> [u8; 32] {
        let total_bits = (self.len + tail.len() as u64).wrapping_mul(8);
        let whole = tail.len() / 64 * 64;
        self.update(&tail[..whole]);
        let mut last = tail[whole..].to_vec();
        last.push(0x80);
        while last.len() % 64 != 56 {
            last.push(0);
        }
        last.extend_from_slice(&total_bits.to_be_bytes());
        for block in last.chunks_exact(64) {
            sha2::compress256(
                &mut self.h,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        let mut out = [0u8; 32];
        for (i, word) in self.h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// What a session row records of its staging in the object store (its `remote` column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Remote {
    /// The multipart upload's object key (`tus/<id>/data`).
    pub key: String,
    /// The multipart upload's id.
    pub upload: String,
    pub part_size: u64,
    /// The ETags of parts `0..`, each `part_size` bytes.
    pub parts: Vec<String>,
    /// The SHA-256 state after the parts.
    pub sha: [u32; 8],
    /// The object holding the bytes past the parts, if any.
    pub tail: Option<String>,
    pub tail_len: u64,
    /// Set once the multipart upload is completed (the object `key` holds the whole file).
    #[serde(default)]
    pub assembled: bool,
}

impl Remote {
    /// A new session's record: `max_len` (its length, or the size limit while deferred)
    /// decides the part size so that it fits in S3's 10,000 parts.
    pub(super) fn new(key: String, upload: String, max_len: u64) -> Self {
        let mib = 1024 * 1024;
        let needed = max_len.div_ceil(MAX_PARTS).div_ceil(mib) * mib;
        Remote {
            key,
            upload,
            part_size: needed.max(MIN_PART),
            parts: Vec::new(),
            sha: H0,
            tail: None,
            tail_len: 0,
            assembled: false,
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, super::TusError> {
        serde_json::from_str(text).map_err(|e| {
            super::TusError::Io(std::io::Error::other(format!(
                "unreadable tus staging record: {e}"
            )))
        })
    }

    pub(super) fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Bytes the record covers: the session's offset.
    pub(super) fn offset(&self) -> u64 {
        self.parts.len() as u64 * self.part_size + self.tail_len
    }

    pub(super) fn mid(&self) -> MidSha {
        MidSha {
            h: self.sha,
            len: self.parts.len() as u64 * self.part_size,
        }
    }
}

/// Feeds a part to the SHA-256 state on the blocking pool.
pub(super) async fn hash_part(mut mid: MidSha, part: Bytes) -> std::io::Result<MidSha> {
    crate::blocking::run(move || {
        mid.update(&part);
        Ok(mid)
    })
    .await
}

use bytes::BytesMut;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::checksum::Checksum;
use super::receive::{End, Stops};
use super::{Inner, SessionRow, TusError, TusStaging, UploadError};
use crate::services::metadata::now_ms;
use crate::services::upload::StagedObject;
use crate::services::ServiceError;

fn storage(e: crate::services::storage::StorageError) -> TusError {
    match e {
        crate::services::storage::StorageError::NotFound(_) => TusError::StagingLost,
        other => TusError::Service(ServiceError::from(other)),
    }
}

impl Inner {
    /// Starts a new session's multipart upload: its record.
    pub(super) async fn start_remote(&self, id: &str, max_len: u64) -> Result<Remote, TusError> {
        let staging = self.remote.as_ref().ok_or(TusError::StagingLost)?;
        let key = staging.key(id, "data");
        let upload = staging.create_multipart(&key).await.map_err(storage)?;
        Ok(Remote::new(key, upload, max_len))
    }

    /// Removes what a session staged in the object store (its multipart upload aborted, its
    /// objects deleted). Failures are logged; the sweep removes leftovers.
    pub(super) async fn drop_remote(&self, row: &SessionRow) {
        let (Some(staging), Some(text)) = (&self.remote, &row.remote) else {
            return;
        };
        if let Ok(record) = Remote::parse(text) {
            if !record.assembled {
                if let Err(e) = staging.abort(&record.key, &record.upload).await {
                    tracing::warn!(id = %row.id, error = %e, "could not abort a tus multipart upload");
                }
            }
        }
        self.remove_objects(staging, &row.id).await;
    }

    pub(super) async fn remove_objects(&self, staging: &TusStaging, id: &str) {
        let objects = match staging.objects(id).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(id, error = %e, "could not list tus staging objects");
                return;
            }
        };
        for key in objects {
            if let Err(e) = staging.delete(&key).await {
                tracing::warn!(id, key, error = %e, "could not remove a tus staging object");
            }
        }
    }

    /// [`Inner::receive`] for a session staged in the object store: from the row's record
    /// (its tail read back), full parts uploaded as they fill, the rest stored as the new
    /// tail, then the row's offset and record moved together. Returns the acknowledged
    /// offset, the record at it and the error to answer with, as `receive` does.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn receive_remote(
        &self,
        staging: &TusStaging,
        row: &SessionRow,
        record: Remote,
        limit: u64,
        checksum: Option<&Checksum>,
        body: impl Stream<Item = Result<Bytes, UploadError>> + Send,
        stops: &Stops<'_>,
    ) -> Result<(u64, Remote, Option<TusError>), TusError> {
        let start = row.offset;
        if record.offset() != start || record.assembled {
            return Err(TusError::StagingLost);
        }
        let part_size = usize::try_from(record.part_size).unwrap_or(usize::MAX);
        let mut buf = BytesMut::new();
        if let Some(tail) = &record.tail {
            let bytes = staging.get(tail).await.map_err(storage)?;
            if bytes.len() as u64 != record.tail_len {
                return Err(TusError::StagingLost);
            }
            buf.extend_from_slice(&bytes);
        }
        let mut next = record.clone();
        let mut mid = record.mid();
        let mut check = checksum.map(|c| c.algorithm.hasher());
        let mut received = 0u64;
        let mut body = std::pin::pin!(body);
        let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
        let end = loop {
            let item = tokio::select! {
                biased;
                () = stops.takeover.cancelled() => break End::Cancelled,
                () = stops.revoked.cancelled() => break End::Revoked,
                item = body.next() => item,
            };
            let chunk = match item {
                None => break End::Complete,
                Some(Err(e)) => break End::Body(e),
                Some(Ok(chunk)) => chunk,
            };
            bytes_in.increment(chunk.len() as u64);
            if start + received + chunk.len() as u64 > limit {
                break End::TooLong;
            }
            received += chunk.len() as u64;
            if let Some(h) = check.as_mut() {
                h.update(&chunk);
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= part_size {
                let part = buf.split_to(part_size).freeze();
                let index = next.parts.len();
                let uploaded = tokio::select! {
                    biased;
                    () = stops.takeover.cancelled() => break End::Cancelled,
                    () = stops.revoked.cancelled() => break End::Revoked,
                    r = staging.put_part(&next.key, &next.upload, index, part.clone()) => r,
                };
                match uploaded {
                    Ok(etag) => next.parts.push(etag),
                    Err(e) => break End::Write(std::io::Error::other(e.to_string())),
                }
                mid = match hash_part(mid, part).await {
                    Ok(m) => m,
                    Err(e) => break End::Write(e),
                };
            }
        };
        let keep = match &end {
            End::Complete => true,
            End::Body(_) => checksum.is_none(),
            End::Cancelled | End::Revoked | End::TooLong | End::Write(_) => false,
        };
        let refusal = |end: End| match end {
            End::Cancelled | End::Complete => TusError::Interrupted,
            End::Revoked => TusError::Revoked,
            End::TooLong => TusError::LengthExceeded { length: limit },
            End::Write(e) => TusError::Io(e),
            End::Body(e) => TusError::Service(e.into()),
        };
        if !keep {
            // Nothing of this request is acknowledged; parts it uploaded are uploaded again
            // (same numbers) by the request that does get acknowledged.
            return Ok((start, record, Some(refusal(end))));
        }
        if let (Some(expected), Some(check)) = (checksum, check.take()) {
            if check.finalize() != expected.digest {
                return Err(TusError::ChecksumMismatch(expected.algorithm.name()));
            }
        }
        if received == 0 {
            let failure = match end {
                End::Body(e) => Some(TusError::Service(e.into())),
                _ => None,
            };
            return Ok((start, record, failure));
        }
        next.sha = mid.h;
        next.tail_len = buf.len() as u64;
        next.tail = None;
        if !buf.is_empty() {
            let key = staging.key(&row.id, &format!("tail-{}", uuid::Uuid::new_v4().simple()));
            staging.put(&key, buf.freeze()).await.map_err(storage)?;
            next.tail = Some(key);
        }
        let offset = start + received;
        debug_assert_eq!(next.offset(), offset);
        let expires = now_ms().saturating_add(self.expiry_ms());
        let moved = self
            .store
            .advance_remote(&row.id, start, offset, expires, &next.to_text())
            .await;
        if !matches!(moved, Ok(true)) {
            if let Some(tail) = &next.tail {
                let _ = staging.delete(tail).await;
            }
            moved?;
            return Err(TusError::NotFound);
        }
        if let Some(old) = record
            .tail
            .as_ref()
            .filter(|t| next.tail.as_ref() != Some(*t))
        {
            if let Err(e) = staging.delete(old).await {
                tracing::warn!(id = %row.id, error = %e, "could not remove an old tus tail");
            }
        }
        metrics::counter!("vaultfs_tus_bytes_acknowledged_total").increment(received);
        let failure = match end {
            End::Body(e) => Some(TusError::Service(e.into())),
            _ => None,
        };
        Ok((offset, next, failure))
    }

    /// Completes a full session's multipart upload (its tail as the last part) and returns
    /// the object and its SHA-256 from the carried state: no byte is read but the tail.
    /// Safe to repeat (a commit refused for a passing reason is retried by a later PATCH,
    /// maybe on another replica): an assembled record is not assembled again.
    pub(super) async fn assemble(
        &self,
        staging: &TusStaging,
        row: &SessionRow,
        mut record: Remote,
    ) -> Result<StagedObject, TusError> {
        let size = row.length.unwrap_or(row.offset);
        if record.offset() != size {
            return Err(TusError::StagingLost);
        }
        let tail = match &record.tail {
            Some(key) => staging.get(key).await.map_err(storage)?,
            None => Bytes::new(),
        };
        if tail.len() as u64 != record.tail_len {
            return Err(TusError::StagingLost);
        }
        let sha = {
            let (mid, tail) = (record.mid(), tail.clone());
            crate::blocking::run(move || Ok(mid.finalize(&tail))).await?
        };
        if !record.assembled {
            let mut etags = record.parts.clone();
            if !tail.is_empty() || etags.is_empty() {
                let etag = staging
                    .put_part(&record.key, &record.upload, etags.len(), tail)
                    .await
                    .map_err(storage)?;
                etags.push(etag);
            }
            staging
                .complete(&record.key, &record.upload, &etags)
                .await
                .map_err(storage)?;
            record.assembled = true;
            // Recorded so that a retry does not complete twice; the offset stays.
            let expires = now_ms().saturating_add(self.expiry_ms());
            self.store
                .advance_remote(&row.id, row.offset, row.offset, expires, &record.to_text())
                .await?;
        }
        Ok(StagedObject {
            key: record.key,
            size,
            sha256: sha,
        })
    }

    /// A final concatenation of sessions staged in the object store: each partial is
    /// assembled in the store, then read once, in order, hashed and uploaded as the final's
    /// parts; the final is committed like any remote session.
    pub(super) async fn concatenate_remote(
        &self,
        ctx: &crate::services::files::RequestCtx,
        mut row: SessionRow,
        partials: Vec<SessionRow>,
    ) -> Result<super::SessionView, TusError> {
        let total = row.length.unwrap_or(0);
        let mut record = match self.start_remote(&row.id, total).await {
            Ok(r) => r,
            Err(e) => {
                let _ = self.store.delete(&row.id).await;
                return Err(e);
            }
        };
        row.remote = Some(record.to_text());
        let result = async {
            let staging = self.remote.as_ref().ok_or(TusError::StagingLost)?;
            let batch = self.files.begin_batch(Some(total)).await?;
            let part_size = usize::try_from(record.part_size).unwrap_or(usize::MAX);
            let mut sha = Sha256::new();
            let mut buf = BytesMut::new();
            let mut etags = Vec::new();
            for p in &partials {
                let text = p.remote.as_deref().ok_or(TusError::StagingLost)?;
                let object = self.assemble(staging, p, Remote::parse(text)?).await?;
                let mut stream = staging.read(&object.key).await.map_err(storage)?;
                let mut read = 0u64;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    read += chunk.len() as u64;
                    sha = hash_chunk(sha, chunk.clone()).await?;
                    buf.extend_from_slice(&chunk);
                    while buf.len() >= part_size {
                        let part = buf.split_to(part_size).freeze();
                        let etag = staging
                            .put_part(&record.key, &record.upload, etags.len(), part)
                            .await
                            .map_err(storage)?;
                        etags.push(etag);
                    }
                }
                if read != object.size {
                    return Err(TusError::StagingLost);
                }
            }
            if !buf.is_empty() || etags.is_empty() {
                let etag = staging
                    .put_part(&record.key, &record.upload, etags.len(), buf.freeze())
                    .await
                    .map_err(storage)?;
                etags.push(etag);
            }
            staging
                .complete(&record.key, &record.upload, &etags)
                .await
                .map_err(storage)?;
            Ok::<_, TusError>((batch, sha))
        }
        .await;
        let (batch, sha) = match result {
            Ok(r) => r,
            Err(e) => {
                self.drop_remote(&row).await;
                let _ = self.store.delete(&row.id).await;
                return Err(e);
            }
        };
        // The final's record says it is assembled; its digest is the one just computed
        // (a final is never retried: a PATCH on it is refused).
        record.assembled = true;
        let text = record.to_text();
        let expires = now_ms().saturating_add(self.expiry_ms());
        if !self
            .store
            .advance_remote(&row.id, 0, total, expires, &text)
            .await?
            && total > 0
        {
            return Err(TusError::NotFound);
        }
        row.offset = total;
        row.remote = Some(text);
        let view = self.complete(ctx, batch, row, Some(sha)).await?;
        for p in &partials {
            self.forget(&p.id).await;
            self.drop_remote(p).await;
            let _ = self.store.delete(&p.id).await;
        }
        Ok(view)
    }
}

/// Feeds `chunk` to `sha`: inline when small, on the blocking pool otherwise.
async fn hash_chunk(mut sha: Sha256, chunk: Bytes) -> std::io::Result<Sha256> {
    if chunk.len() <= crate::services::storage::INLINE_HASH_LIMIT {
        sha.update(&chunk);
        return Ok(sha);
    }
    crate::blocking::run(move || {
        sha.update(&chunk);
        Ok(sha)
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn mid_state_matches_sha256_at_every_split() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for cut in [0usize, 64, 128, 640, 4992] {
            for end in [cut, cut + 1, cut + 55, cut + 56, cut + 64, 5000] {
                let end = end.min(data.len());
                let mut mid = MidSha::new();
                mid.update(&data[..cut]);
                // Through the stored form, as another replica would.
                let r = Remote {
                    parts: vec![String::new(); cut / 64],
                    part_size: 64,
                    sha: mid.h,
                    ..Remote::new("k".into(), "u".into(), 0)
                };
                let back = Remote::parse(&r.to_text()).unwrap().mid();
                assert_eq!(back, mid);
                let got = back.finalize(&data[cut..end]);
                let want: [u8; 32] = Sha256::digest(&data[..end]).into();
                assert_eq!(got, want, "cut {cut} end {end}");
            }
        }
    }

    #[test]
    fn part_size_fits_the_part_limit() {
        assert_eq!(
            Remote::new(String::new(), String::new(), 1 << 30).part_size,
            MIN_PART
        );
        let big = 200u64 << 30;
        let r = Remote::new(String::new(), String::new(), big);
        assert!(r.part_size * MAX_PARTS >= big && r.part_size.is_multiple_of(1 << 20));
    }
}
