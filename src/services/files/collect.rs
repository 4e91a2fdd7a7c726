//! Blob collection: a blob that no version, staged commit or S3 record references is
//! deleted under its exclusive lock and the cross-replica blob fence.

use super::FileService;
use crate::services::lock_manager::{LockOwner, LockRequest};
use crate::services::ServiceError;

impl FileService {
    /// Removes a blob that no version references any more. Runs in the background after the
    /// change that released it; failures are logged and retried at the next start.
    pub(crate) fn spawn_collect(&self, sha256: String) {
        let service = self.clone();
        tokio::spawn(async move {
            if let Err(e) = service.collect_blob(&sha256).await {
                tracing::warn!(sha256, error = %e, "blob collection failed; will retry at start");
            }
        });
    }

    /// Deletes the blob if, under its lock, nothing references it.
    pub async fn collect_blob(&self, sha256: &str) -> Result<bool, ServiceError> {
        let owner = LockOwner {
            request_id: "gc".to_string(),
            operation: "collect",
        };
        let _guard = self
            .locks
            .acquire(LockRequest::new().blob(sha256), owner)
            .await?;
        // And across replicas: no commit of this content is between its upload and its
        // reference while we look and delete.
        let _fence = self.meta.fence_blob(sha256, true).await?;
        if self.meta.blob_refcount(sha256).await? > 0 {
            return Ok(false);
        }
        crate::metrics::timed("blob", "delete", self.storage.delete_blob(sha256)).await?;
        self.meta.forget_blob(sha256).await?;
        Ok(true)
    }

    /// True when, under its exclusive lock, nothing references the blob (fsck's orphan test:
    /// a blob an upload is committing is held under its shared lock until the commit ends).
    pub async fn is_orphan(&self, sha256: &str) -> Result<bool, ServiceError> {
        let owner = LockOwner {
            request_id: "fsck".to_string(),
            operation: "fsck",
        };
        let _guard = self
            .locks
            .acquire(LockRequest::new().blob(sha256), owner)
            .await?;
        let _fence = self.meta.fence_blob(sha256, true).await?;
        Ok(self.meta.blob_refcount(sha256).await? == 0)
    }

    /// Collects every unreferenced blob (start-up recovery).
    pub async fn collect_unreferenced(&self) -> Result<usize, ServiceError> {
        let mut collected = 0;
        loop {
            let batch = self.meta.unreferenced_blobs(500).await?;
            if batch.is_empty() {
                return Ok(collected);
            }
            let mut progressed = false;
            for sha in batch {
                if self.collect_blob(&sha).await? {
                    collected += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(collected);
            }
        }
    }
}
