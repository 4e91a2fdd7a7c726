//! The `s3s::S3` backend: buckets, objects and listings over VaultFS files. Operations not
//! implemented here answer `NotImplemented` (the trait's default).

use s3s::crypto::Checksum as _;
use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

use super::errors::{from_path, from_service};
use super::write::Digests;
use crate::app::AppState;
use crate::paths::VPath;
use crate::services::auth::Narrowed;
use crate::services::files::RequestCtx;
use crate::services::metadata::{EtagMatch, FileMeta, MetadataError, Precondition};
use crate::services::s3_meta::{Checksums, ObjectAttrs, S3Meta};
use crate::services::ServiceError;

/// Most keys one listing page returns (S3's own maximum).
pub(super) const MAX_KEYS: i32 = 1000;
/// Most objects one DeleteObjects request names.
pub(super) const MAX_DELETE: usize = 1000;
/// Content-Type of an object stored without one.
pub(super) const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// The S3 backend. Cheap to clone.
#[derive(Clone)]
pub(crate) struct VaultS3 {
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
pub(super) fn secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

pub(super) fn strip_quotes(s: &str) -> &str {
    s.trim().trim_start_matches("W/").trim_matches('"')
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
    pub(crate) fn new(state: AppState, meta: S3Meta) -> Self {
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
}

/// The request header naming an open commit (issue 21) to stage the object into.
pub(super) const COMMIT_HEADER: &str = "x-vaultfs-commit";

/// The open commit a write stages into (`x-vaultfs-commit`), if the request names one.
pub(super) fn commit_header(headers: &axum::http::HeaderMap) -> S3Result<Option<String>> {
    let Some(value) = headers.get(COMMIT_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(id)
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(Some(id.to_string()))
        }
        _ => Err(s3_error!(
            InvalidArgument,
            "x-vaultfs-commit must be a commit id"
        )),
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
pub(super) fn check_read_conditions(
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

pub(super) fn attrs_from(
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

pub(super) fn user_metadata(attrs: &ObjectAttrs) -> Option<Metadata> {
    (!attrs.user.is_empty()).then(|| attrs.user.clone().into_iter().collect())
}

#[async_trait::async_trait]
impl S3 for VaultS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.s3_list_buckets(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.s3_create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.s3_head_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.s3_delete_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.s3_get_bucket_location(req).await
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        self.s3_get_bucket_versioning(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.s3_put_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.s3_get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.s3_head_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.s3_delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.s3_delete_objects(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.s3_copy_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.s3_list_objects_v2(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.s3_list_objects(req).await
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
