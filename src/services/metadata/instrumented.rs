//! [`InstrumentedMetadata`]: any [`MetadataStore`] with every operation timed
//! (`vaultfs_store_op_duration_seconds{store="metadata",op=...}`) and its errors counted
//! (`vaultfs_store_errors_total`).

use std::sync::Arc;

use super::{
    BlobFence, ChangeOutcome, Event, FileMeta, MetadataAudit, MetadataError, MetadataStore,
    Precondition, PutOutcome, PutRequest, S3ObjectRow, TokenRecord,
};
use crate::metrics::timed;

/// Wraps a metadata store, timing every operation.
pub struct InstrumentedMetadata {
    inner: Arc<dyn MetadataStore>,
}

impl std::fmt::Debug for InstrumentedMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedMetadata")
            .finish_non_exhaustive()
    }
}

impl InstrumentedMetadata {
    pub fn wrap(inner: Arc<dyn MetadataStore>) -> Arc<dyn MetadataStore> {
        Arc::new(InstrumentedMetadata { inner })
    }
}

const M: &str = "metadata";

#[async_trait::async_trait]
impl MetadataStore for InstrumentedMetadata {
    async fn get_by_id(&self, id: &str) -> Result<Option<FileMeta>, MetadataError> {
        timed(M, "get_by_id", self.inner.get_by_id(id)).await
    }
    async fn get_by_path(&self, path: &str) -> Result<Option<FileMeta>, MetadataError> {
        timed(M, "get_by_path", self.inner.get_by_path(path)).await
    }
    async fn put(&self, req: PutRequest) -> Result<PutOutcome, MetadataError> {
        timed(M, "put", self.inner.put(req)).await
    }
    async fn put_many(&self, reqs: Vec<PutRequest>) -> Result<Vec<PutOutcome>, MetadataError> {
        timed(M, "put_many", self.inner.put_many(reqs)).await
    }
    async fn delete(
        &self,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError> {
        timed(
            M,
            "delete",
            self.inner.delete(id, expected_path, precondition),
        )
        .await
    }
    async fn rename(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        timed(
            M,
            "rename",
            self.inner.rename(id, expected_path, to, overwrite),
        )
        .await
    }
    async fn copy(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        timed(M, "copy", self.inner.copy(id, expected_path, to, overwrite)).await
    }
    async fn copy_with_s3(
        &self,
        id: &str,
        expected_path: &str,
        to: &str,
        overwrite: bool,
        s3: Option<S3ObjectRow>,
    ) -> Result<ChangeOutcome, MetadataError> {
        let copy = self
            .inner
            .copy_with_s3(id, expected_path, to, overwrite, s3);
        timed(M, "copy", copy).await
    }
    async fn scan(
        &self,
        start: &str,
        inclusive: bool,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError> {
        timed(M, "scan", self.inner.scan(start, inclusive, limit)).await
    }
    async fn blob_refcount(&self, sha256: &str) -> Result<i64, MetadataError> {
        timed(M, "blob_refcount", self.inner.blob_refcount(sha256)).await
    }
    async fn forget_blob(&self, sha256: &str) -> Result<bool, MetadataError> {
        timed(M, "forget_blob", self.inner.forget_blob(sha256)).await
    }
    async fn unreferenced_blobs(&self, limit: usize) -> Result<Vec<String>, MetadataError> {
        timed(
            M,
            "unreferenced_blobs",
            self.inner.unreferenced_blobs(limit),
        )
        .await
    }
    async fn events_after(&self, since: i64, limit: usize) -> Result<Vec<Event>, MetadataError> {
        timed(M, "events_after", self.inner.events_after(since, limit)).await
    }
    async fn events_matching(
        &self,
        since: i64,
        through: i64,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<Event>, MetadataError> {
        let query = self.inner.events_matching(since, through, prefix, limit);
        timed(M, "events_matching", query).await
    }
    async fn latest_seq(&self) -> Result<i64, MetadataError> {
        timed(M, "latest_seq", self.inner.latest_seq()).await
    }
    async fn oldest_seq(&self) -> Result<Option<i64>, MetadataError> {
        timed(M, "oldest_seq", self.inner.oldest_seq()).await
    }
    async fn prune_events(&self, older_than_ms: i64, keep_last: i64) -> Result<u64, MetadataError> {
        timed(
            M,
            "prune_events",
            self.inner.prune_events(older_than_ms, keep_last),
        )
        .await
    }
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), MetadataError> {
        timed(M, "insert_token", self.inner.insert_token(token)).await
    }
    async fn tokens(&self) -> Result<Vec<TokenRecord>, MetadataError> {
        timed(M, "tokens", self.inner.tokens()).await
    }
    async fn revoke_token(&self, id: &str, at_ms: i64) -> Result<bool, MetadataError> {
        timed(M, "revoke_token", self.inner.revoke_token(id, at_ms)).await
    }
    async fn server_secret(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, MetadataError> {
        timed(M, "server_secret", self.inner.server_secret(name, fresh)).await
    }
    async fn fence_blob(&self, sha256: &str, exclusive: bool) -> Result<BlobFence, MetadataError> {
        timed(M, "fence_blob", self.inner.fence_blob(sha256, exclusive)).await
    }
    async fn audit(&self) -> Result<MetadataAudit, MetadataError> {
        timed(M, "audit", self.inner.audit()).await
    }

    async fn ping(&self) -> Result<(), MetadataError> {
        timed(M, "ping", self.inner.ping()).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}
