//! Object operations: Put, Get, Head, Delete, DeleteObjects, Copy.

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::errors::from_service;
use super::ops::*;
use super::write::{write_object, Record, WriteOptions};
use crate::services::files::RequestCtx;
use crate::services::metadata::{MetadataError, Precondition};
use crate::services::s3_meta::{Checksums, ObjectRecord};
use crate::services::ServiceError;

/// GetObject's or HeadObject's output (`$output`): the headers both take from the object
/// (`$shown`), its attributes and the request's (`$input`) `response-*` overrides, the
/// checksums to show (`$sums`), and the fields only one of them has (`$extra`).
macro_rules! object_output {
    ($output:ident, $shown:expr, $input:ident, $sums:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let shown: &Shown = $shown;
        let a = &shown.attrs;
        let pick = |asked: Option<String>, stored: &Option<String>| asked.or_else(|| stored.clone());
        with_checksums!($output, $sums, {
            $($field: $value,)*
            accept_ranges: Some("bytes".into()),
            content_type: pick($input.response_content_type, &Some(shown.meta.content_type.clone())),
            content_disposition: pick($input.response_content_disposition, &a.content_disposition),
            cache_control: pick($input.response_cache_control, &a.cache_control),
            content_encoding: pick($input.response_content_encoding, &a.content_encoding),
            content_language: pick($input.response_content_language, &a.content_language),
            e_tag: Some(ETag::Strong(shown.etag.clone())),
            last_modified: Some(timestamp(shown.meta.modified_ms)),
            metadata: user_metadata(a),
            parts_count: a.parts.and_then(|p| i32::try_from(p).ok()),
        })
    }};
}

impl VaultS3 {
    pub(super) async fn s3_put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let ctx = self.ctx(&req).await?;
        let trailers = req.trailing_headers.clone();
        let headers = req.headers.clone();
        let input = req.input;
        refuse_out_of_scope(
            input.acl.as_ref(),
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.ssekms_key_id.as_ref(),
        )?;
        self.require_bucket(&input.bucket, &ctx).await?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let commit = commit_header(&headers)?;
        if input.key.ends_with('/') && input.content_length.unwrap_or(0) == 0 {
            // A "directory marker": VaultFS has no empty directories. Accepted, not stored.
            return Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong("d41d8cd98f00b204e9800998ecf8427e".into())),
                ..Default::default()
            }));
        }
        let path = object_path(&input.bucket, &input.key)?;
        let precondition = self
            .write_precondition(
                &input.bucket,
                &input.key,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                &ctx,
            )
            .await?;
        let declared = declared_checksums(
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_crc64nvme,
            input.checksum_sha1,
            input.checksum_sha256,
        );
        let checksums = wanted_checksums(&headers, &declared, input.checksum_algorithm.as_ref());
        let content_md5 = input.content_md5;
        let attrs = attrs_from(
            input.metadata,
            input.content_disposition,
            input.cache_control,
            input.content_encoding,
            input.content_language,
        );
        let opts = WriteOptions {
            content_type: input
                .content_type
                .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
            precondition,
            md5: true,
            checksums,
            verify: Box::new(move |d| verify_digests(declared, content_md5, trailers, d)),
            record: Record {
                attrs,
                etag: None,
                body_checksums: true,
            },
            commit,
        };
        let written = write_object(&self.state, &ctx, &path, body, opts).await?;
        let etag = written.digests.md5.clone().unwrap_or_default();
        Ok(S3Response::new(with_checksums!(
            PutObjectOutput,
            written.digests.checksums,
            { e_tag: Some(ETag::Strong(etag)) }
        )))
    }

    pub(super) async fn s3_get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(NotImplemented, "GetObject by partNumber"));
        }
        let shown = self.shown(&input.bucket, &input.key, &ctx).await?;
        check_read_conditions(
            &shown,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let size = shown.meta.size;
        let (start, len, content_range) = match input.range {
            None => (0, size, None),
            Some(r) => {
                let range = r.check(size).map_err(|_| s3_error!(InvalidRange))?;
                let len = range.end - range.start;
                (
                    range.start,
                    len,
                    Some(format!("bytes {}-{}/{size}", range.start, range.end - 1)),
                )
            }
        };
        let stream = self
            .state
            .files
            .read_content(&shown.meta, start, len)
            .await
            .map_err(from_service)?;
        let body = StreamingBlob::wrap(sync_wrapper::SyncStream::new(stream));
        let sums = shown_checksums(&shown, input.checksum_mode.as_ref(), len == size);
        Ok(S3Response::new(object_output!(
            GetObjectOutput,
            &shown,
            input,
            sums,
            {
                body: Some(body),
                content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
                content_range: content_range,
                expires: input.response_expires,
            }
        )))
    }

    pub(super) async fn s3_head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let shown = self.shown(&input.bucket, &input.key, &ctx).await?;
        check_read_conditions(
            &shown,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let sums = shown_checksums(&shown, input.checksum_mode.as_ref(), true);
        let size = shown.meta.size;
        Ok(S3Response::new(object_output!(
            HeadObjectOutput,
            &shown,
            input,
            sums,
            { content_length: Some(i64::try_from(size).unwrap_or(i64::MAX)) }
        )))
    }

    pub(super) async fn s3_delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        self.delete_one(&input.bucket, &input.key, &ctx).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    pub(super) async fn s3_delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        if input.delete.objects.len() > MAX_DELETE {
            return Err(s3_error!(MalformedXML, "at most 1000 keys per request"));
        }
        self.require_bucket(&input.bucket, &ctx).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for obj in input.delete.objects {
            match self.delete_one(&input.bucket, &obj.key, &ctx).await {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(obj.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(obj.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    pub(super) async fn s3_copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let ctx = self.ctx(&req).await?;
        if commit_header(&req.headers)?.is_some() {
            // A copy is no upload: it has no staged content to hold in a commit.
            return Err(s3_error!(
                NotImplemented,
                "x-vaultfs-commit on CopyObject: stage the object with PutObject"
            ));
        }
        let input = req.input;
        refuse_out_of_scope(
            input.acl.as_ref(),
            input.server_side_encryption.as_ref(),
            input.sse_customer_algorithm.as_ref(),
            input.ssekms_key_id.as_ref(),
        )?;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copy from an access point"));
        };
        if version_id.is_some() {
            return Err(s3_error!(NotImplemented, "copy of a version"));
        }
        let src = self.shown(src_bucket, src_key, &ctx).await?;
        let lm = src.meta.modified_ms / 1000;
        let matches = |c: &ETagCondition| match c {
            ETagCondition::Any => true,
            ETagCondition::ETag(t) => strip_quotes(t.value()) == src.etag,
        };
        if let Some(c) = &input.copy_source_if_match {
            if !matches(c) {
                return Err(s3_error!(PreconditionFailed));
            }
        } else if let Some(t) = &input.copy_source_if_unmodified_since {
            if lm > secs(t) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        if let Some(c) = &input.copy_source_if_none_match {
            if matches(c) {
                return Err(s3_error!(PreconditionFailed));
            }
        } else if let Some(t) = &input.copy_source_if_modified_since {
            if lm <= secs(t) {
                return Err(s3_error!(PreconditionFailed));
            }
        }
        self.require_bucket(&input.bucket, &ctx).await?;
        let dst = object_path(&input.bucket, &input.key)?;
        ctx.check(dst.as_str()).map_err(from_service)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let same = dst.as_str() == src.meta.path;
        if same && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata, storage class, website redirect \
                 location or encryption attributes."
            ));
        }
        let mut attrs = if replace {
            attrs_from(
                input.metadata,
                input.content_disposition,
                input.cache_control,
                input.content_encoding,
                input.content_language,
            )
        } else {
            src.attrs.clone()
        };
        attrs.checksums = src.attrs.checksums.clone();
        attrs.parts = src.attrs.parts;
        let content_type = if replace {
            input
                .content_type
                .unwrap_or_else(|| src.meta.content_type.clone())
        } else {
            src.meta.content_type.clone()
        };
        let meta = if content_type != src.meta.content_type {
            // VaultFS keeps the Content-Type with the version: a new version, same content.
            let stream = self
                .state
                .files
                .read_content(&src.meta, 0, src.meta.size)
                .await
                .map_err(from_service)?;
            let opts = WriteOptions {
                content_type,
                precondition: Precondition::None,
                md5: false,
                checksums: s3s::checksum::ChecksumHasher::default(),
                verify: Box::new(|_| Ok(())),
                record: Record {
                    attrs,
                    etag: Some(src.etag.clone()),
                    body_checksums: false,
                },
                commit: None,
            };
            write_object(&self.state, &ctx, &dst, stream, opts)
                .await?
                .meta
                .ok_or_else(|| super::errors::internal(&"a copy was staged, not written"))?
        } else if same {
            // Metadata only (rclone sets mtime this way): no new version, no event.
            let rec = ObjectRecord {
                sha256: src.meta.sha256.clone(),
                etag: src.etag.clone(),
                attrs,
            };
            let updated = self
                .meta
                .update_in_place(&src.meta.path, &rec)
                .await
                .map_err(|e| from_service(e.into()))?;
            if !updated {
                return Err(s3_error!(
                    OperationAborted,
                    "the object changed during the copy; try again"
                ));
            }
            src.meta.clone()
        } else {
            let row = attrs
                .row(src.etag.clone())
                .map_err(|e| from_service(e.into()))?;
            self.state
                .files
                .copy_file_with_s3(&src.meta.id, &dst, true, Some(row), &ctx)
                .await
                .map_err(from_service)?
        };
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(src.etag)),
                last_modified: Some(timestamp(if same {
                    crate::services::metadata::now_ms()
                } else {
                    meta.modified_ms
                })),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn delete_one(&self, bucket: &str, key: &str, ctx: &RequestCtx) -> S3Result<()> {
        let path = object_path(bucket, key)?;
        let meta = match self.state.files.meta_by_path(&path, ctx).await {
            Ok(m) => m,
            // Deleting what is not there succeeds (S3 semantics).
            Err(ServiceError::Metadata(MetadataError::NotFound)) => return Ok(()),
            Err(e) => return Err(from_service(e)),
        };
        match self
            .state
            .files
            .delete(&meta.id, &Precondition::None, ctx)
            .await
        {
            Ok(_) | Err(ServiceError::Metadata(MetadataError::NotFound)) => {}
            Err(e) => return Err(from_service(e)),
        }
        Ok(())
    }
}

/// The stored checksums, when `x-amz-checksum-mode: ENABLED` asks and the whole object is
/// sent.
fn shown_checksums(shown: &Shown, mode: Option<&ChecksumMode>, whole: bool) -> Checksums {
    if whole && mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED) {
        shown.attrs.checksums.clone()
    } else {
        Checksums::default()
    }
}
