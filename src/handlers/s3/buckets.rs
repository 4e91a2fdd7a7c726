//! Bucket operations: a bucket is a top-level path segment.

use s3s::dto::*;
use s3s::{s3_error, S3Request, S3Response, S3Result};

use super::errors::from_service;
use super::ops::*;
use crate::services::auth::Narrowed;

impl VaultS3 {
    pub(super) async fn s3_list_buckets(
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

    pub(super) async fn s3_create_bucket(
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

    pub(super) async fn s3_head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let ctx = self.ctx(&req).await?;
        self.require_bucket(&req.input.bucket, &ctx).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    pub(super) async fn s3_delete_bucket(
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

    pub(super) async fn s3_get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let ctx = self.ctx(&req).await?;
        self.require_bucket(&req.input.bucket, &ctx).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    pub(super) async fn s3_get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let ctx = self.ctx(&req).await?;
        self.require_bucket(&req.input.bucket, &ctx).await?;
        // VaultFS keeps no old versions yet: versioning was never enabled.
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }
}
