//! [`InstrumentedMetadata`]: any [`MetadataStore`] with every operation timed
//! (`vaultfs_store_op_duration_seconds{store="metadata",op=...}`) and its errors counted
//! (`vaultfs_store_errors_total`).

use std::sync::Arc;

use super::{
    BatchOutcome, BlobFence, ChangeOutcome, Event, FileMeta, LevelPage, LevelQuery, MetadataAudit,
    MetadataError, MetadataStore, Precondition, PutOutcome, PutRequest, RetentionPolicy,
    RetentionStats, S3ObjectRow, TokenRecord, TrashEntry,
};
use crate::metrics::timed;

/// Wraps a metadata store, timing every operation.
pub(crate) struct InstrumentedMetadata {
    inner: Arc<dyn MetadataStore>,
}

impl std::fmt::Debug for InstrumentedMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedMetadata")
            .finish_non_exhaustive()
    }
}

impl InstrumentedMetadata {
    pub(crate) fn wrap(inner: Arc<dyn MetadataStore>) -> Arc<dyn MetadataStore> {
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
    async fn list_level(&self, q: &LevelQuery<'_>) -> Result<LevelPage, MetadataError> {
        timed(M, "list_level", self.inner.list_level(q)).await
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

    fn set_retention(&self, policy: RetentionPolicy) {
        self.inner.set_retention(policy);
    }
    async fn delete_permanently(
        &self,
        id: &str,
        expected_path: &str,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError> {
        let op = self
            .inner
            .delete_permanently(id, expected_path, precondition);
        timed(M, "delete_permanently", op).await
    }
    async fn versions(
        &self,
        id: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<FileMeta>, MetadataError> {
        timed(M, "versions", self.inner.versions(id, before, limit)).await
    }
    async fn restore_version(
        &self,
        id: &str,
        expected_path: &str,
        version: i64,
        precondition: &Precondition,
    ) -> Result<ChangeOutcome, MetadataError> {
        let op = self
            .inner
            .restore_version(id, expected_path, version, precondition);
        timed(M, "restore_version", op).await
    }
    async fn delete_tree(
        &self,
        prefix: &str,
        expected_ids: &[String],
        batch_id: &str,
        permanent: bool,
    ) -> Result<BatchOutcome, MetadataError> {
        let op = self
            .inner
            .delete_tree(prefix, expected_ids, batch_id, permanent);
        timed(M, "delete_tree", op).await
    }
    async fn trash_entries(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Vec<TrashEntry>, MetadataError> {
        let op = self.inner.trash_entries(prefix, after, limit, now_ms);
        timed(M, "trash_entries", op).await
    }
    async fn trash_entry(&self, trash_id: &str) -> Result<Option<TrashEntry>, MetadataError> {
        timed(M, "trash_entry", self.inner.trash_entry(trash_id)).await
    }
    async fn trash_batch(&self, batch_id: &str) -> Result<Vec<TrashEntry>, MetadataError> {
        timed(M, "trash_batch", self.inner.trash_batch(batch_id)).await
    }
    async fn restore_trash(
        &self,
        trash_id: &str,
        to: Option<&str>,
        overwrite: bool,
    ) -> Result<ChangeOutcome, MetadataError> {
        let op = self.inner.restore_trash(trash_id, to, overwrite);
        timed(M, "restore_trash", op).await
    }
    async fn restore_batch(&self, batch_id: &str) -> Result<BatchOutcome, MetadataError> {
        timed(M, "restore_batch", self.inner.restore_batch(batch_id)).await
    }
    async fn purge_trash(&self, trash_id: &str) -> Result<Vec<String>, MetadataError> {
        timed(M, "purge_trash", self.inner.purge_trash(trash_id)).await
    }
    async fn expire_trash(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(usize, Vec<String>), MetadataError> {
        timed(M, "expire_trash", self.inner.expire_trash(now_ms, limit)).await
    }
    async fn atomic(
        &self,
        op: super::commits::AtomicOp,
    ) -> Result<super::commits::AtomicDone, MetadataError> {
        timed(M, "atomic", self.inner.atomic(op)).await
    }
    async fn retention_stats(&self) -> Result<RetentionStats, MetadataError> {
        timed(M, "retention_stats", self.inner.retention_stats()).await
    }

    async fn ping(&self) -> Result<(), MetadataError> {
        timed(M, "ping", self.inner.ping()).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}
