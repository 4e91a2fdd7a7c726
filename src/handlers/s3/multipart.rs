//! Multipart uploads. Parts are staged durably (fsynced, then renamed into place) under the
//! data directory, may arrive in parallel and in any order, and are invisible: only
//! CompleteMultipartUpload makes the object, streaming the parts in order through
//! [`write_object`] (one commit, one event). Uploads left unfinished are collected after
//! `s3_multipart_max_age`.

use bytes::Bytes;
use futures_util::StreamExt;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result};
use tokio::io::AsyncWriteExt;

use super::errors::{from_metadata, from_service};
use super::ops::{
    commit_header, declared_checksums, object_path, strip_quotes, timestamp, verify_digests,
    wanted_checksums, VaultS3,
};
use super::write::{write_object, Hashing, Record, WriteOptions};
use crate::services::files::RequestCtx;
use crate::services::metadata::now_ms;
use crate::services::s3_meta::{ObjectAttrs, PartRecord, S3Meta, UploadRecord};

/// S3's limits: part numbers 1..=10000, every part but the last at least 5 MiB.
const MAX_PART_NUMBER: i32 = 10_000;
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Read size when assembling parts.
const ASSEMBLE_CHUNK: usize = 256 * 1024;

/// Collects uploads older than `max_age` every `every`, until shutdown.
pub(crate) fn spawn_sweeper(
    meta: S3Meta,
    max_age: std::time::Duration,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = crate::services::notification::until_true(&mut shutdown) => return,
            }
            let before = now_ms() - i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
            match meta.uploads_older_than(before).await {
                Ok(ids) => {
                    for id in ids {
                        match meta.remove_upload(&id).await {
                            Ok(()) => {
                                tracing::info!(upload_id = %id, "collected an abandoned S3 multipart upload")
                            }
                            Err(e) => {
                                tracing::warn!(upload_id = %id, error = %e, "could not collect a multipart upload")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "multipart sweep failed"),
            }
            match meta.sweep_orphan_parts(max_age).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(dirs = n, "removed the staged parts of finished S3 uploads")
                }
                Err(e) => tracing::warn!(error = %e, "multipart part sweep failed"),
            }
        }
    });
}

impl VaultS3 {
    /// The upload `id` of `bucket/key`, continued by the principal that started it.
    async fn upload_of(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        ctx: &RequestCtx,
    ) -> S3Result<UploadRecord> {
        let path = object_path(bucket, key)?;
        ctx.check(path.as_str()).map_err(from_service)?;
        let up = self
            .meta
            .upload(id)
            .await
            .map_err(from_metadata)?
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        let owner = ctx.principal.token_id.clone().unwrap_or_default();
        if up.path != path.as_str() || up.token_id != owner {
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(up)
    }

    pub(super) async fn mpu_create(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        super::ops::refuse_out_of_scope(
            input.acl.as_ref(),
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.ssekms_key_id.as_ref(),
        )?;
        self.require_bucket(&input.bucket, &ctx).await?;
        let path = object_path(&input.bucket, &input.key)?;
        ctx.check(path.as_str()).map_err(from_service)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let attrs = ObjectAttrs {
            user: input.metadata.unwrap_or_default().into_iter().collect(),
            content_disposition: input.content_disposition,
            cache_control: input.cache_control,
            content_encoding: input.content_encoding,
            content_language: input.content_language,
            content_type: input.content_type,
            checksum_algorithm: input
                .checksum_algorithm
                .as_ref()
                .map(|a| a.as_str().to_string()),
            ..ObjectAttrs::default()
        };
        self.meta
            .create_upload(&UploadRecord {
                id: id.clone(),
                path: path.into_string(),
                token_id: ctx.principal.token_id.clone().unwrap_or_default(),
                created_ms: now_ms(),
                attrs,
            })
            .await
            .map_err(from_metadata)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    /// Streams one part into its staging file (hashing it), fsyncs, verifies, renames it
    /// into place and records it.
    #[allow(clippy::too_many_arguments)]
    async fn stage_part<S, E>(
        &self,
        up: &UploadRecord,
        part_number: i32,
        body: S,
        hashing: Hashing,
        verify: super::write::Verify,
    ) -> S3Result<PartRecord>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Send,
        E: Into<super::write::BodyError>,
    {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let n = u32::try_from(part_number).unwrap_or(0);
        let _permit = self
            .state
            .files
            .admit_upload()
            .await
            .map_err(from_service)?;
        let limit = self.state.files.max_upload_size();
        let temp = self.meta.part_temp_path(&up.id, n);
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| super::errors::internal(&e))?;
            let mut hashing = hashing;
            let idle = self.state.config.body_idle_timeout;
            let mut size: u64 = 0;
            tokio::pin!(body);
            while let Some(chunk) = tokio::time::timeout(idle, body.next())
                .await
                .map_err(|_| s3_error!(RequestTimeout, "no body bytes arrived in time"))?
            {
                let chunk = chunk.map_err(super::write::body_error)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(s3_error!(
                        EntityTooLarge,
                        "larger than the limit of {limit} bytes"
                    ));
                }
                hashing.update(chunk.clone()).await?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| super::errors::internal(&e))?;
            }
            file.flush()
                .await
                .map_err(|e| super::errors::internal(&e))?;
            file.sync_data()
                .await
                .map_err(|e| super::errors::internal(&e))?;
            drop(file);
            let digests = hashing.finish()?;
            verify(&digests)?;
            tokio::fs::rename(&temp, self.meta.part_path(&up.id, n))
                .await
                .map_err(|e| super::errors::internal(&e))?;
            let part = PartRecord {
                part_number: n,
                size,
                md5: digests.md5.clone().unwrap_or_default(),
                checksums: digests.checksums,
                modified_ms: now_ms(),
            };
            self.meta
                .put_part(&up.id, &part)
                .await
                .map_err(from_metadata)?;
            Ok(part)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    pub(super) async fn mpu_upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let ctx = self.ctx(&req).await?;
        let trailers = req.trailing_headers.clone();
        let headers = req.headers.clone();
        let input = req.input;
        let up = self
            .upload_of(&input.bucket, &input.key, &input.upload_id, &ctx)
            .await?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let declared = declared_checksums(
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_crc64nvme,
            input.checksum_sha1,
            input.checksum_sha256,
        );
        let algorithm = input.checksum_algorithm.clone().or_else(|| {
            up.attrs
                .checksum_algorithm
                .as_deref()
                .map(|a| ChecksumAlgorithm::from(a.to_string()))
        });
        let hashing = Hashing::new(
            true,
            wanted_checksums(&headers, &declared, algorithm.as_ref()),
        );
        let content_md5 = input.content_md5;
        let part = self
            .stage_part(
                &up,
                input.part_number,
                body,
                hashing,
                Box::new(move |d| verify_digests(declared, content_md5, trailers, d)),
            )
            .await?;
        Ok(S3Response::new(with_checksums!(
            UploadPartOutput,
            part.checksums,
            { e_tag: Some(ETag::Strong(part.md5)) }
        )))
    }

    pub(super) async fn mpu_upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let up = self
            .upload_of(&input.bucket, &input.key, &input.upload_id, &ctx)
            .await?;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copy from an access point"));
        };
        let src = self.shown(src_bucket, src_key, &ctx).await?;
        if let Some(ETagCondition::ETag(t)) = &input.copy_source_if_match {
            if strip_quotes(t.value()) != src.etag {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        let size = src.meta.size;
        let (start, len) = match &input.copy_source_range {
            None => (0, size),
            Some(r) => {
                let spec = r
                    .strip_prefix("bytes=")
                    .ok_or_else(|| s3_error!(InvalidArgument, "x-amz-copy-source-range"))?;
                let (a, b) = spec
                    .split_once('-')
                    .ok_or_else(|| s3_error!(InvalidArgument, "x-amz-copy-source-range"))?;
                let a: u64 = a.parse().map_err(|_| s3_error!(InvalidArgument))?;
                let b: u64 = b.parse().map_err(|_| s3_error!(InvalidArgument))?;
                if a > b || b >= size {
                    return Err(s3_error!(InvalidRange));
                }
                (a, b - a + 1)
            }
        };
        let stream = self
            .state
            .files
            .read_content(&src.meta, start, len)
            .await
            .map_err(from_service)?;
        let part = self
            .stage_part(
                &up,
                input.part_number,
                stream,
                Hashing::new(true, s3s::checksum::ChecksumHasher::default()),
                Box::new(|_| Ok(())),
            )
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(part.md5)),
                last_modified: Some(timestamp(part.modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    pub(super) async fn mpu_complete(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let ctx = self.ctx(&req).await?;
        // Complete may stage the assembled object into an open commit (issue 21).
        let commit = commit_header(&req.headers)?;
        let input = req.input;
        let up = self
            .upload_of(&input.bucket, &input.key, &input.upload_id, &ctx)
            .await?;
        let asked = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if asked.is_empty() {
            return Err(s3_error!(
                InvalidRequest,
                "You must specify at least one part"
            ));
        }
        let staged = self.meta.parts(&up.id).await.map_err(from_metadata)?;
        let by_number: std::collections::HashMap<u32, &PartRecord> =
            staged.iter().map(|p| (p.part_number, p)).collect();
        let mut chosen: Vec<PartRecord> = Vec::with_capacity(asked.len());
        let mut previous = 0i32;
        for (i, p) in asked.iter().enumerate() {
            let n = p
                .part_number
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no number"))?;
            if n <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = n;
            let stored = u32::try_from(n)
                .ok()
                .and_then(|n| by_number.get(&n))
                .ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            if let Some(tag) = &p.e_tag {
                if strip_quotes(tag.value()) != stored.md5 {
                    return Err(s3_error!(InvalidPart, "part {n}'s ETag does not match"));
                }
            }
            let mismatch = |want: &Option<String>, have: &Option<String>| {
                want.as_ref().is_some_and(|w| have.as_ref() != Some(w))
            };
            if mismatch(&p.checksum_crc32, &stored.checksums.crc32)
                || mismatch(&p.checksum_crc32c, &stored.checksums.crc32c)
                || mismatch(&p.checksum_crc64nvme, &stored.checksums.crc64nvme)
                || mismatch(&p.checksum_sha1, &stored.checksums.sha1)
                || mismatch(&p.checksum_sha256, &stored.checksums.sha256)
            {
                return Err(s3_error!(InvalidPart, "part {n}'s checksum does not match"));
            }
            if i + 1 < asked.len() && stored.size < MIN_PART_SIZE {
                return Err(s3_error!(EntityTooSmall));
            }
            chosen.push((*stored).clone());
        }
        let precondition = self
            .write_precondition(
                &input.bucket,
                &input.key,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                &ctx,
            )
            .await?;
        let path = object_path(&input.bucket, &input.key)?;
        // The object's ETag: MD5 of the parts' MD5s, and their count.
        let mut etag_md5 = Md5::new();
        for p in &chosen {
            let raw = hex::decode(&p.md5).map_err(|e| super::errors::internal(&e))?;
            etag_md5.update(&raw);
        }
        let etag = format!("{}-{}", hex::encode(etag_md5.finalize()), chosen.len());
        let total: u64 = chosen.iter().map(|p| p.size).sum();
        let body = assemble(&self.meta, &up.id, &chosen);
        let mut attrs = up.attrs.clone();
        attrs.content_type = None;
        attrs.checksum_algorithm = None;
        attrs.parts = u32::try_from(chosen.len()).ok();
        let opts = WriteOptions {
            content_type: up
                .attrs
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".to_string()),
            precondition,
            md5: false,
            checksums: s3s::checksum::ChecksumHasher::default(),
            verify: Box::new(move |d| {
                if d.size == total {
                    Ok(())
                } else {
                    Err(S3Error::internal_error(std::io::Error::other(
                        "a staged part changed size",
                    )))
                }
            }),
            record: Record {
                attrs,
                etag: Some(etag.clone()),
                body_checksums: false,
            },
            commit,
        };
        write_object(&self.state, &ctx, &path, body, opts).await?;
        if let Err(e) = self.meta.remove_upload(&up.id).await {
            tracing::warn!(upload_id = %up.id, error = %e, "could not remove a completed upload's parts");
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(etag)),
            location: None,
            ..Default::default()
        }))
    }

    pub(super) async fn mpu_abort(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let up = self
            .upload_of(&input.bucket, &input.key, &input.upload_id, &ctx)
            .await?;
        self.meta
            .remove_upload(&up.id)
            .await
            .map_err(from_metadata)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub(super) async fn mpu_list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let up = self
            .upload_of(&input.bucket, &input.key, &input.upload_id, &ctx)
            .await?;
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000);
        let marker = input.part_number_marker.unwrap_or(0);
        let all = self.meta.parts(&up.id).await.map_err(from_metadata)?;
        let after: Vec<&PartRecord> = all
            .iter()
            .filter(|p| i64::from(p.part_number) > i64::from(marker))
            .collect();
        let take = usize::try_from(max).unwrap_or(1000);
        let truncated = after.len() > take;
        let shown: Vec<&PartRecord> = after.into_iter().take(take).collect();
        let next = shown.last().and_then(|p| i32::try_from(p.part_number).ok());
        let parts = shown
            .into_iter()
            .map(|p| Part {
                part_number: i32::try_from(p.part_number).ok(),
                size: i64::try_from(p.size).ok(),
                e_tag: Some(ETag::Strong(p.md5.clone())),
                last_modified: Some(timestamp(p.modified_ms)),
                checksum_crc32: p.checksums.crc32.clone(),
                checksum_crc32c: p.checksums.crc32c.clone(),
                checksum_crc64nvme: p.checksums.crc64nvme.clone(),
                checksum_sha1: p.checksums.sha1.clone(),
                checksum_sha256: p.checksums.sha256.clone(),
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(up.id),
            max_parts: Some(max),
            part_number_marker: Some(marker),
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    pub(super) async fn mpu_list_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        self.require_bucket(&input.bucket, &ctx).await?;
        let base = format!("{}/", input.bucket);
        let prefix = format!("{base}{}", input.prefix.as_deref().unwrap_or(""));
        let max = input.max_uploads.unwrap_or(1000).clamp(1, 1000);
        let after_path = input
            .key_marker
            .as_deref()
            .map(|k| format!("{base}{k}"))
            .unwrap_or_default();
        let after_id = if input.key_marker.is_some() {
            input.upload_id_marker.clone().unwrap_or_else(|| "~".into())
        } else {
            String::new()
        };
        let rows = self
            .meta
            .uploads(&prefix, &after_path, &after_id, i64::from(max) + 1)
            .await
            .map_err(from_metadata)?;
        let owner = ctx.principal.token_id.clone().unwrap_or_default();
        let visible: Vec<UploadRecord> = rows
            .into_iter()
            .filter(|u| ctx.principal.may_touch(&u.path) && u.token_id == owner)
            .collect();
        let take = usize::try_from(max).unwrap_or(1000);
        let truncated = visible.len() > take;
        let page: Vec<UploadRecord> = visible.into_iter().take(take).collect();
        let (next_key, next_id) = match page.last() {
            Some(u) if truncated => (
                u.path.strip_prefix(&base).map(str::to_string),
                Some(u.id.clone()),
            ),
            _ => (None, None),
        };
        let uploads = page
            .into_iter()
            .map(|u| MultipartUpload {
                key: u.path.strip_prefix(&base).map(str::to_string),
                upload_id: Some(u.id),
                initiated: Some(timestamp(u.created_ms)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: next_key,
            next_upload_id_marker: next_id,
            max_uploads: Some(max),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }
}

/// The chosen parts' contents, in order, as one stream (read by a task, through a bounded
/// channel).
fn assemble(
    meta: &S3Meta,
    id: &str,
    parts: &[PartRecord],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let paths: Vec<std::path::PathBuf> = parts
        .iter()
        .map(|p| meta.part_path(id, p.part_number))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        for path in paths {
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, ASSEMBLE_CHUNK);
            while let Some(chunk) = chunks.next().await {
                let failed = chunk.is_err();
                // The receiver is gone: the upload failed or was cancelled; stop reading.
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}
