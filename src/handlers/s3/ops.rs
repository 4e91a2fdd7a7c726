//! The `s3s::S3` backend: buckets, objects and listings over VaultFS files. Operations not
//! implemented here answer `NotImplemented` (the trait's default).

use s3s::crypto::Checksum as _;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

use super::errors::{from_path, from_service};
use super::write::{write_object, Digests, WriteOptions};
use crate::paths::VPath;
use crate::server::AppState;
use crate::services::auth::Narrowed;
use crate::services::files::RequestCtx;
use crate::services::metadata::{EtagMatch, FileMeta, MetadataError, Precondition};
use crate::services::s3_meta::{Checksums, ObjectAttrs, ObjectRecord, S3Meta};
use crate::services::ServiceError;

/// Most keys one listing page returns (S3's own maximum).
const MAX_KEYS: i32 = 1000;
/// Most objects one DeleteObjects request names.
const MAX_DELETE: usize = 1000;
/// Content-Type of an object stored without one.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The S3 backend. Cheap to clone.
#[derive(Clone)]
pub struct VaultS3 {
    pub(super) state: AppState,
    pub(super) meta: S3Meta,
}

impl std::fmt::Debug for VaultS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultS3")
    }
}

/// The object's file path: `bucket/key`.
pub(super) fn object_path(bucket: &str, key: &str) -> S3Result<VPath> {
    VPath::parse(&format!("{bucket}/{key}")).map_err(from_path)
}

pub(super) fn timestamp(ms: i64) -> Timestamp {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    Timestamp::from(t)
}

/// Seconds since the epoch of a timestamp (HTTP dates have second precision).
fn secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

pub(super) fn strip_quotes(s: &str) -> &str {
    s.trim().trim_start_matches("W/").trim_matches('"')
}

/// Percent-encodes a key for `encoding-type=url` (everything but unreserved and `/`).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A listing position in VaultFS's cursor format (`services/files.rs`): after `key`, or from
/// it when `inclusive`.
fn cursor_at(key: &str, inclusive: bool) -> String {
    use base64::Engine;
    let tagged = format!("{}{key}", if inclusive { "i:" } else { "x:" });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tagged)
}

/// ACLs and server-side encryption are out of scope: `NotImplemented`, except the canned ACL
/// `private`, which is what VaultFS does anyway (clients send it by default).
pub(super) fn refuse_out_of_scope(
    acl: Option<&ObjectCannedACL>,
    sse: Option<&ServerSideEncryption>,
    sse_c: Option<&String>,
    kms: Option<&String>,
) -> S3Result<()> {
    if acl.is_some_and(|a| a.as_str() != ObjectCannedACL::PRIVATE) {
        return Err(s3_error!(NotImplemented, "ACLs are not supported"));
    }
    if sse.is_some() || sse_c.is_some() || kms.is_some() {
        return Err(s3_error!(
            NotImplemented,
            "server-side encryption is not supported"
        ));
    }
    Ok(())
}

/// What a stored object shows through S3.
pub(super) struct Shown {
    pub meta: FileMeta,
    pub etag: String,
    pub attrs: ObjectAttrs,
}

impl VaultS3 {
    pub fn new(state: AppState, meta: S3Meta) -> Self {
        VaultS3 { state, meta }
    }

    pub(super) async fn ctx<T: Sync>(&self, req: &S3Request<T>) -> S3Result<RequestCtx> {
        let key = req.credentials.as_ref().map(|c| c.access_key.as_str());
        let principal = super::auth::principal(&self.state.auth, key).await?;
        Ok(RequestCtx {
            request_id: req
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string),
            principal,
        })
    }

    /// Whether the bucket exists for this principal: made by CreateBucket, or holding files.
    pub(super) async fn bucket_exists(&self, bucket: &str, ctx: &RequestCtx) -> S3Result<bool> {
        let prefix = format!("{bucket}/");
        match ctx.principal.narrow(&prefix) {
            Narrowed::Disjoint => return Ok(false),
            // A token limited to a prefix inside the bucket: the bucket is its window, and
            // exists for it (ListBuckets shows it too).
            Narrowed::To(_) => return Ok(true),
            Narrowed::Unchanged => {}
        }
        if self
            .meta
            .bucket(bucket)
            .await
            .map_err(|e| from_service(e.into()))?
            .is_some()
        {
            return Ok(true);
        }
        let rows = self
            .state
            .files
            .metadata()
            .scan(&prefix, true, 1)
            .await
            .map_err(|e| from_service(e.into()))?;
        Ok(rows.first().is_some_and(|r| r.path.starts_with(&prefix)))
    }

    pub(super) async fn require_bucket(&self, bucket: &str, ctx: &RequestCtx) -> S3Result<()> {
        if self.bucket_exists(bucket, ctx).await? {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    /// The object at `bucket/key`, with its S3 ETag and attributes.
    pub(super) async fn shown(&self, bucket: &str, key: &str, ctx: &RequestCtx) -> S3Result<Shown> {
        let path = object_path(bucket, key)?;
        let meta = match self.state.files.meta_by_path(&path, ctx).await {
            Ok(m) => m,
            Err(ServiceError::Metadata(MetadataError::NotFound)) => {
                self.require_bucket(bucket, ctx).await?;
                return Err(s3_error!(NoSuchKey));
            }
            Err(e) => return Err(from_service(e)),
        };
        let record = self
            .meta
            .object(&meta.path, &meta.sha256)
            .await
            .map_err(|e| from_service(e.into()))?;
        let (etag, attrs) = match record {
            Some(r) => (r.etag, r.attrs),
            // Written through the native API: its SHA-256 is the ETag there too.
            None => (meta.sha256.clone(), ObjectAttrs::default()),
        };
        Ok(Shown { meta, etag, attrs })
    }

    /// The write precondition for `If-Match` / `If-None-Match`, in terms of the content
    /// now at the path (the commit re-checks it under the lock).
    pub(super) async fn write_precondition(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        ctx: &RequestCtx,
    ) -> S3Result<Precondition> {
        if let Some(c) = if_none_match {
            if c.is_any() {
                return Ok(Precondition::MustNotExist);
            }
            return Err(s3_error!(
                NotImplemented,
                "If-None-Match on writes takes only *"
            ));
        }
        let Some(cond) = if_match else {
            return Ok(Precondition::None);
        };
        let current = match self.shown(bucket, key, ctx).await {
            Ok(s) => s,
            Err(e) if *e.code() == s3s::S3ErrorCode::NoSuchKey => {
                return Err(s3_error!(PreconditionFailed))
            }
            Err(e) => return Err(e),
        };
        let ok = match cond {
            ETagCondition::Any => true,
            ETagCondition::ETag(tag) => strip_quotes(tag.value()) == current.etag,
        };
        if !ok {
            return Err(s3_error!(PreconditionFailed));
        }
        Ok(Precondition::MustMatch(EtagMatch::OneOf(vec![
            current.meta.sha256,
        ])))
    }

    /// Records an object's S3 view after a committed write.
    pub(super) async fn record(&self, meta: &FileMeta, etag: String, attrs: ObjectAttrs) {
        let rec = ObjectRecord {
            sha256: meta.sha256.clone(),
            etag,
            attrs,
        };
        // The file is committed; without its record it shows the native ETag.
        if let Err(e) = self.meta.put_object(&meta.path, &rec).await {
            tracing::warn!(path = %meta.path, error = %e, "could not record S3 attributes");
        }
    }
}

/// Which flexible checksums a request declares (headers, the SDK algorithm, or a trailer).
pub(super) fn wanted_checksums(
    headers: &axum::http::HeaderMap,
    declared: &Checksums,
    algorithm: Option<&ChecksumAlgorithm>,
) -> s3s::checksum::ChecksumHasher {
    let trailer = headers
        .get("x-amz-trailer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let alg = algorithm
        .map(|a| a.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    let wants = |name: &str, declared: bool| {
        declared || alg == name || trailer.contains(&format!("x-amz-checksum-{name}"))
    };
    let mut h = s3s::checksum::ChecksumHasher::default();
    if wants("crc32", declared.crc32.is_some()) {
        h.crc32 = Some(s3s::crypto::Crc32::new());
    }
    if wants("crc32c", declared.crc32c.is_some()) {
        h.crc32c = Some(s3s::crypto::Crc32c::new());
    }
    if wants("crc64nvme", declared.crc64nvme.is_some()) {
        h.crc64nvme = Some(s3s::crypto::Crc64Nvme::new());
    }
    if wants("sha1", declared.sha1.is_some()) {
        h.sha1 = Some(s3s::crypto::Sha1::new());
    }
    if wants("sha256", declared.sha256.is_some()) {
        h.sha256 = Some(s3s::crypto::Sha256::new());
    }
    h
}

/// Compares the computed digests with what the request declared (headers, then trailers,
/// which are complete once the body is): `BadDigest` on any difference.
pub(super) fn verify_digests(
    declared: Checksums,
    content_md5: Option<String>,
    trailers: Option<s3s::TrailingHeaders>,
    got: &Digests,
) -> S3Result<()> {
    let mut declared = declared;
    if let Some(t) = trailers.and_then(|t| t.take()) {
        let get = |n: &str| {
            t.get(format!("x-amz-checksum-{n}").as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        declared.crc32 = declared.crc32.or_else(|| get("crc32"));
        declared.crc32c = declared.crc32c.or_else(|| get("crc32c"));
        declared.crc64nvme = declared.crc64nvme.or_else(|| get("crc64nvme"));
        declared.sha1 = declared.sha1.or_else(|| get("sha1"));
        declared.sha256 = declared.sha256.or_else(|| get("sha256"));
    }
    let pairs = [
        ("crc32", &declared.crc32, &got.checksums.crc32),
        ("crc32c", &declared.crc32c, &got.checksums.crc32c),
        ("crc64nvme", &declared.crc64nvme, &got.checksums.crc64nvme),
        ("sha1", &declared.sha1, &got.checksums.sha1),
        ("sha256", &declared.sha256, &got.checksums.sha256),
    ];
    for (name, want, have) in pairs {
        if let Some(want) = want {
            if have.as_deref() != Some(want.as_str()) {
                return Err(s3_error!(
                    BadDigest,
                    "the x-amz-checksum-{name} you specified did not match the body"
                ));
            }
        }
    }
    if let Some(b64) = content_md5 {
        use base64::Engine;
        let want = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| s3_error!(InvalidDigest))?;
        if got.md5.as_deref() != Some(hex::encode(want).as_str()) {
            return Err(s3_error!(
                BadDigest,
                "the Content-MD5 you specified did not match the body"
            ));
        }
    }
    Ok(())
}

pub(super) fn declared_checksums(
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64nvme: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
) -> Checksums {
    Checksums {
        crc32,
        crc32c,
        crc64nvme,
        sha1,
        sha256,
    }
}

/// The condition headers of a read, against the object's ETag and modification time.
fn check_read_conditions(
    shown: &Shown,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let lm = shown.meta.modified_ms / 1000;
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(t) => strip_quotes(t.value()) == shown.etag,
    };
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(PreconditionFailed));
        }
    } else if let Some(t) = if_unmodified_since {
        if lm > secs(t) {
            return Err(s3_error!(PreconditionFailed));
        }
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since {
        if lm <= secs(t) {
            return Err(s3_error!(NotModified));
        }
    }
    Ok(())
}

fn attrs_from(
    metadata: Option<Metadata>,
    content_disposition: Option<String>,
    cache_control: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
) -> ObjectAttrs {
    ObjectAttrs {
        user: metadata.unwrap_or_default().into_iter().collect(),
        content_disposition,
        cache_control,
        content_encoding,
        content_language,
        ..ObjectAttrs::default()
    }
}

fn user_metadata(attrs: &ObjectAttrs) -> Option<Metadata> {
    (!attrs.user.is_empty()).then(|| attrs.user.clone().into_iter().collect())
}

#[async_trait::async_trait]
impl S3 for VaultS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let ctx = self.ctx(&req).await?;
        let mut names = std::collections::BTreeMap::new();
        for (name, created) in self
            .meta
            .buckets()
            .await
            .map_err(|e| from_service(e.into()))?
        {
            if ctx.principal.narrow(&format!("{name}/")) != Narrowed::Disjoint {
                names.insert(name, created);
            }
        }
        // Top-level segments that hold files (at most 100 pages of them).
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let page = self
                .state
                .files
                .list("", true, cursor.as_deref(), 1000, &ctx)
                .await
                .map_err(from_service)?;
            for p in page.prefixes {
                let name = p.trim_end_matches('/');
                if s3s::path::check_bucket_name(name) {
                    names.entry(name.to_string()).or_insert(0);
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let now = crate::services::metadata::now_ms();
        let buckets = names
            .into_iter()
            .map(|(name, created)| Bucket {
                name: Some(name),
                creation_date: Some(timestamp(if created > 0 { created } else { now })),
                bucket_region: None,
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("vaultfs".into()),
                id: Some("vaultfs".into()),
            }),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let ctx = self.ctx(&req).await?;
        let bucket = &req.input.bucket;
        // Before the prefix check: clients (rclone) create the bucket they write into and
        // take "already yours" as success, also for a token limited to a prefix inside it.
        if self.bucket_exists(bucket, &ctx).await? {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        if !ctx.principal.may_touch(&format!("{bucket}/")) {
            return Err(s3_error!(AccessDenied, "outside the token's prefix"));
        }
        self.meta
            .create_bucket(bucket)
            .await
            .map_err(|e| from_service(e.into()))?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let ctx = self.ctx(&req).await?;
        self.require_bucket(&req.input.bucket, &ctx).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let ctx = self.ctx(&req).await?;
        let bucket = &req.input.bucket;
        if !ctx.principal.may_touch(&format!("{bucket}/")) {
            return Err(s3_error!(AccessDenied, "outside the token's prefix"));
        }
        self.require_bucket(bucket, &ctx).await?;
        let prefix = format!("{bucket}/");
        let rows = self
            .state
            .files
            .metadata()
            .scan(&prefix, true, 1)
            .await
            .map_err(|e| from_service(e.into()))?;
        if rows.first().is_some_and(|r| r.path.starts_with(&prefix)) {
            return Err(s3_error!(BucketNotEmpty));
        }
        self.meta
            .delete_bucket(bucket)
            .await
            .map_err(|e| from_service(e.into()))?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let ctx = self.ctx(&req).await?;
        self.require_bucket(&req.input.bucket, &ctx).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let ctx = self.ctx(&req).await?;
        self.require_bucket(&req.input.bucket, &ctx).await?;
        // VaultFS keeps no old versions yet: versioning was never enabled.
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn put_object(
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
        let opts = WriteOptions {
            content_type: input
                .content_type
                .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
            precondition,
            md5: true,
            checksums,
            verify: Box::new(move |d| verify_digests(declared, content_md5, trailers, d)),
        };
        let written = write_object(&self.state, &ctx, &path, body, opts).await?;
        let etag = written.digests.md5.clone().unwrap_or_default();
        let mut attrs = attrs_from(
            input.metadata,
            input.content_disposition,
            input.cache_control,
            input.content_encoding,
            input.content_language,
        );
        attrs.checksums = written.digests.checksums.clone();
        self.record(&written.meta, etag.clone(), attrs).await;
        let c = written.digests.checksums;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }))
    }

    async fn get_object(
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
        let whole = len == size;
        let want_sums = whole
            && input
                .checksum_mode
                .as_ref()
                .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let c = if want_sums {
            shown.attrs.checksums.clone()
        } else {
            Checksums::default()
        };
        let a = &shown.attrs;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
            content_range,
            accept_ranges: Some("bytes".into()),
            content_type: Some(
                input
                    .response_content_type
                    .unwrap_or_else(|| shown.meta.content_type.clone()),
            ),
            content_disposition: input
                .response_content_disposition
                .or_else(|| a.content_disposition.clone()),
            cache_control: input
                .response_cache_control
                .or_else(|| a.cache_control.clone()),
            content_encoding: input
                .response_content_encoding
                .or_else(|| a.content_encoding.clone()),
            content_language: input
                .response_content_language
                .or_else(|| a.content_language.clone()),
            expires: input.response_expires,
            e_tag: Some(ETag::Strong(shown.etag.clone())),
            last_modified: Some(timestamp(shown.meta.modified_ms)),
            metadata: user_metadata(a),
            parts_count: a.parts.and_then(|p| i32::try_from(p).ok()),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }))
    }

    async fn head_object(
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
        let want_sums = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let c = if want_sums {
            shown.attrs.checksums.clone()
        } else {
            Checksums::default()
        };
        let a = &shown.attrs;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(i64::try_from(shown.meta.size).unwrap_or(i64::MAX)),
            accept_ranges: Some("bytes".into()),
            content_type: Some(
                input
                    .response_content_type
                    .unwrap_or_else(|| shown.meta.content_type.clone()),
            ),
            content_disposition: input
                .response_content_disposition
                .or_else(|| a.content_disposition.clone()),
            cache_control: input
                .response_cache_control
                .or_else(|| a.cache_control.clone()),
            content_encoding: input
                .response_content_encoding
                .or_else(|| a.content_encoding.clone()),
            content_language: input
                .response_content_language
                .or_else(|| a.content_language.clone()),
            e_tag: Some(ETag::Strong(shown.etag.clone())),
            last_modified: Some(timestamp(shown.meta.modified_ms)),
            metadata: user_metadata(a),
            parts_count: a.parts.and_then(|p| i32::try_from(p).ok()),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        self.delete_one(&input.bucket, &input.key, &ctx).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
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

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let ctx = self.ctx(&req).await?;
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
            };
            write_object(&self.state, &ctx, &dst, stream, opts)
                .await?
                .meta
        } else if same {
            // Metadata only (rclone sets mtime this way): no new version, no event.
            src.meta.clone()
        } else {
            self.state
                .files
                .copy_file(&src.meta.id, &dst, true, &ctx)
                .await
                .map_err(from_service)?
        };
        self.record(&meta, src.etag.clone(), attrs).await;
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

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let page = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                input.continuation_token.as_deref(),
                input.start_after.as_deref(),
                input.max_keys,
                &ctx,
            )
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(page.max_keys),
            key_count: Some(i32::try_from(page.objects.len() + page.prefixes.len()).unwrap_or(0)),
            is_truncated: Some(page.next.is_some()),
            continuation_token: input.continuation_token,
            next_continuation_token: page.next,
            start_after: input.start_after.map(enc),
            encoding_type: input.encoding_type,
            contents: Some(page.objects.into_iter().map(|o| o.encoded(url)).collect()),
            common_prefixes: Some(
                page.prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let ctx = self.ctx(&req).await?;
        let input = req.input;
        let page = self
            .list_page(
                &input.bucket,
                input.prefix.as_deref().unwrap_or(""),
                input.delimiter.as_deref(),
                None,
                input.marker.as_deref(),
                input.max_keys,
                &ctx,
            )
            .await?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let truncated = page.next.is_some();
        let next_marker = if truncated {
            page.last.clone().map(enc)
        } else {
            None
        };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(input.prefix.unwrap_or_default())),
            delimiter: input.delimiter.map(enc),
            marker: Some(enc(input.marker.unwrap_or_default())),
            max_keys: Some(page.max_keys),
            is_truncated: Some(truncated),
            next_marker,
            encoding_type: input.encoding_type,
            contents: Some(page.objects.into_iter().map(|o| o.encoded(url)).collect()),
            common_prefixes: Some(
                page.prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.mpu_create(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.mpu_upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.mpu_upload_part_copy(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.mpu_complete(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.mpu_abort(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.mpu_list_parts(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.mpu_list_uploads(req).await
    }
}

/// One listed object, before encoding.
struct Listed {
    key: String,
    size: u64,
    etag: String,
    modified_ms: i64,
}

impl Listed {
    fn encoded(self, url: bool) -> Object {
        Object {
            key: Some(if url { url_encode(&self.key) } else { self.key }),
            size: Some(i64::try_from(self.size).unwrap_or(i64::MAX)),
            e_tag: Some(ETag::Strong(self.etag)),
            last_modified: Some(timestamp(self.modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        }
    }
}

struct ListResult {
    objects: Vec<Listed>,
    prefixes: Vec<String>,
    /// Continuation token when truncated.
    next: Option<String>,
    /// The last key or prefix returned (v1's NextMarker).
    last: Option<String>,
    max_keys: i32,
}

impl VaultS3 {
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
        if let Err(e) = self.meta.forget_object(path.as_str()).await {
            tracing::debug!(error = %e, "could not forget S3 attributes");
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        start_after: Option<&str>,
        max_keys: Option<i32>,
        ctx: &RequestCtx,
    ) -> S3Result<ListResult> {
        self.require_bucket(bucket, ctx).await?;
        let delimiter = match delimiter {
            None | Some("") => false,
            Some("/") => true,
            Some(_) => {
                return Err(s3_error!(
                    NotImplemented,
                    "only '/' is supported as a delimiter"
                ))
            }
        };
        let max_keys = max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let base = format!("{bucket}/");
        let full_prefix = format!("{base}{prefix}");
        if max_keys == 0 {
            return Ok(ListResult {
                objects: Vec::new(),
                prefixes: Vec::new(),
                next: None,
                last: None,
                max_keys,
            });
        }
        let cursor = match (token, start_after) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(after)) if !after.is_empty() => {
                let key = format!("{base}{after}");
                if key.as_str() < full_prefix.as_str() {
                    None
                } else if delimiter && after.ends_with('/') {
                    // After a common prefix: skip everything under it ('/' + 1 == '0').
                    Some(cursor_at(&format!("{}0", &key[..key.len() - 1]), true))
                } else {
                    Some(cursor_at(&key, false))
                }
            }
            _ => None,
        };
        let page = self
            .state
            .files
            .list(
                &full_prefix,
                delimiter,
                cursor.as_deref(),
                usize::try_from(max_keys).unwrap_or(1000),
                ctx,
            )
            .await
            .map_err(|e| match e {
                ServiceError::Forbidden => s3_error!(AccessDenied, "outside the token's prefix"),
                other => from_service(other),
            })?;
        let records = match (page.entries.first(), page.entries.last()) {
            (Some(a), Some(b)) => self
                .meta
                .objects_in(&a.path, &b.path)
                .await
                .map_err(|e| from_service(e.into()))?,
            _ => Default::default(),
        };
        let mut last: Option<String> = None;
        let objects: Vec<Listed> = page
            .entries
            .into_iter()
            .filter_map(|m| {
                let key = m.path.strip_prefix(&base)?.to_string();
                let etag = match records.get(&m.path) {
                    Some((sha, etag)) if *sha == m.sha256 => etag.clone(),
                    _ => m.sha256.clone(),
                };
                Some(Listed {
                    key,
                    size: m.size,
                    etag,
                    modified_ms: m.modified_ms,
                })
            })
            .collect();
        let prefixes: Vec<String> = page
            .prefixes
            .into_iter()
            .filter_map(|p| p.strip_prefix(&base).map(str::to_string))
            .collect();
        if let Some(o) = objects.last() {
            last = Some(o.key.clone());
        }
        if let Some(p) = prefixes.last() {
            if last.as_ref().is_none_or(|l| p > l) {
                last = Some(p.clone());
            }
        }
        Ok(ListResult {
            objects,
            prefixes,
            next: page.next_cursor,
            last,
            max_keys,
        })
    }
}
