//! Staging of tus upload sessions in the object store (the S3 backend only), under
//! `{prefix}tus/<session id>/`: the session's multipart upload (`data`, its parts uploaded as
//! PATCHes deliver them) and small `tail-<uuid>` objects holding the bytes past the last full
//! part. What the session row records of them is `services::tus`'s business; this is the
//! object-store side, so that any replica can continue a session.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use object_store::multipart::{MultipartStore as _, PartId};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore as _;

use super::StorageError;

/// The largest object S3 copies in one `CopyObject`.
pub(crate) const MAX_COPY: u64 = 5 * 1024 * 1024 * 1024;

/// Session staging in the object store of an S3 blob store.
#[derive(Clone)]
pub struct TusStaging {
    store: Arc<object_store::aws::AmazonS3>,
    prefix: String,
}

impl std::fmt::Debug for TusStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TusStaging({}tus/)", self.prefix)
    }
}

fn remote(op: &'static str) -> impl FnOnce(object_store::Error) -> StorageError {
    move |e| StorageError::Io {
        op,
        source: io::Error::other(e.to_string()),
    }
}

impl TusStaging {
    pub(super) fn new(store: Arc<object_store::aws::AmazonS3>, prefix: String) -> Self {
        TusStaging { store, prefix }
    }

    /// The key of `name` in session `id`'s staging.
    pub fn key(&self, id: &str, name: &str) -> String {
        format!("{}tus/{id}/{name}", self.prefix)
    }

    /// Starts the multipart upload of `key`: its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        self.store
            .create_multipart(&ObjectPath::from(key))
            .await
            .map_err(remote("start tus multipart upload"))
    }

    /// Uploads part `index` (from 0) of `key`'s multipart upload: its ETag.
    pub async fn put_part(
        &self,
        key: &str,
        upload: &str,
        index: usize,
        data: Bytes,
    ) -> Result<String, StorageError> {
        let part = self
            .store
            .put_part(
                &ObjectPath::from(key),
                &upload.to_string(),
                index,
                data.into(),
            )
            .await
            .map_err(remote("upload tus part"))?;
        Ok(part.content_id)
    }

    /// Completes `key`'s multipart upload from its parts' ETags, in order.
    pub async fn complete(
        &self,
        key: &str,
        upload: &str,
        etags: &[String],
    ) -> Result<(), StorageError> {
        let parts = etags
            .iter()
            .map(|e| PartId {
                content_id: e.clone(),
            })
            .collect();
        self.store
            .complete_multipart(&ObjectPath::from(key), &upload.to_string(), parts)
            .await
            .map_err(remote("complete tus multipart upload"))?;
        Ok(())
    }

    /// Aborts `key`'s multipart upload (its parts are freed); an unknown one is not an error.
    pub async fn abort(&self, key: &str, upload: &str) -> Result<(), StorageError> {
        match self
            .store
            .abort_multipart(&ObjectPath::from(key), &upload.to_string())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote("abort tus multipart upload")(e)),
        }
    }

    /// Stores a small object (a tail) whole.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&ObjectPath::from(key), data.into())
            .await
            .map_err(remote("store tus tail"))?;
        Ok(())
    }

    /// Reads a small object (a tail) whole.
    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let got = match self.store.get(&ObjectPath::from(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::NotFound(key.to_string()))
            }
            Err(e) => return Err(remote("read tus tail")(e)),
        };
        got.bytes().await.map_err(remote("read tus tail"))
    }

    /// `key`'s content as a stream (a completed partial upload read into a concatenation).
    pub async fn read(&self, key: &str) -> Result<super::BlobStream, StorageError> {
        use futures_util::TryStreamExt;
        let got = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(remote("read tus staging"))?;
        Ok(Box::pin(
            got.into_stream()
                .map_err(|e| io::Error::other(e.to_string())),
        ))
    }

    /// Removes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote("remove tus staging")(e)),
        }
    }

    /// The session ids that have objects under `tus/` (for the sweep).
    pub async fn sessions(&self) -> Result<Vec<String>, StorageError> {
        let prefix = ObjectPath::from(format!("{}tus", self.prefix));
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(remote("list tus staging"))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Every object of session `id` (for its removal).
    pub async fn objects(&self, id: &str) -> Result<Vec<String>, StorageError> {
        use futures_util::TryStreamExt;
        let prefix = ObjectPath::from(format!("{}tus/{id}", self.prefix));
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(remote("list tus staging"))?
        {
            out.push(meta.location.to_string());
        }
        Ok(out)
    }
}
