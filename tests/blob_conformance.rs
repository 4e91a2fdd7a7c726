//! One conformance suite for the blob store's backends: local disk and S3-compatible object
//! storage (when `VAULTFS_TEST_S3_URL` names one; `.ci/run` starts moto with `.ci/s3.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use bytes::Bytes;
use futures_util::TryStreamExt;
use vaultfs::services::storage::{BlobStore, StorageError};

async fn store_and_read(store: &BlobStore, content: &[u8]) -> String {
    let mut w = store.begin(u64::MAX).await.unwrap();
    for chunk in content.chunks(300_000) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let staged = w.finish(store).await.unwrap();
    let blob = store.commit(staged).await.unwrap();
    assert_eq!(blob.sha256, common::sha256_hex(content));
    assert_eq!(blob.size, content.len() as u64);
    blob.sha256
}

async fn read(store: &BlobStore, sha: &str, start: u64, len: Option<u64>) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .read_blob(sha, start, len)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

async fn suite(store: BlobStore, tmp: &std::path::Path) {
    store.check().await.unwrap();
    // Small, and large enough for a multipart upload (parts of 8 MiB).
    for content in [
        common::data(1000, 1),
        common::data(20 * 1024 * 1024 + 17, 2),
    ] {
        let sha = store_and_read(&store, &content).await;
        assert_eq!(
            store.stat_blob(&sha).await.unwrap(),
            Some(content.len() as u64)
        );
        assert!(store.blob_exists(&sha).await.unwrap());
        assert_eq!(read(&store, &sha, 0, None).await, content);
        assert_eq!(
            read(&store, &sha, 10, Some(100)).await,
            content[10..110].to_vec()
        );
        let tail = content.len() as u64 - 5;
        assert_eq!(
            read(&store, &sha, tail, Some(5)).await,
            content[content.len() - 5..].to_vec()
        );
        assert_eq!(read(&store, &sha, 0, Some(0)).await, Vec::<u8>::new());
        assert_eq!(
            store.hash_blob(&sha).await.unwrap(),
            (sha.clone(), content.len() as u64)
        );
        assert!(store.list_blobs().await.unwrap().contains(&sha));
        assert!(store.blob_age(&sha).await.unwrap().is_some());
        // Storing identical content again is fine and changes nothing.
        assert_eq!(store_and_read(&store, &content).await, sha);
        store.delete_blob(&sha).await.unwrap();
        store.delete_blob(&sha).await.unwrap(); // already gone: not an error
        assert_eq!(store.stat_blob(&sha).await.unwrap(), None);
        assert!(matches!(
            store.read_blob(&sha, 0, None).await.map(|_| ()),
            Err(StorageError::NotFound(_))
        ));
        assert!(!store.list_blobs().await.unwrap().contains(&sha));
    }
    // Over the limit: refused while streaming, nothing stored, no temp file left.
    let mut w = store.begin(1000).await.unwrap();
    assert!(matches!(
        w.write(Bytes::from(vec![0u8; 1001])).await,
        Err(StorageError::TooLarge { limit: 1000 })
    ));
    drop(w);
    // A staged upload dropped before its commit leaves nothing behind either.
    let mut w = store.begin(u64::MAX).await.unwrap();
    w.write(Bytes::from_static(b"abandoned")).await.unwrap();
    let staged = w.finish(&store).await.unwrap();
    let sha = staged.blob.sha256.clone();
    drop(staged);
    assert_eq!(store.stat_blob(&sha).await.unwrap(), None);
    let empty = common::eventually(std::time::Duration::from_secs(5), || async {
        common::count_files(&tmp.join("tmp"), 1).await == 0
    })
    .await;
    assert!(empty, "temp files removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).await.unwrap();
    suite(store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conforms() {
    let Some(url) = common::test_s3_url("s3_conforms") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_s3(dir.path(), &url).await.unwrap();
    assert!(store.is_remote());
    suite(store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_urls_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["http://bucket", "s3://", "s3://bucket?unknown=1"] {
        assert!(BlobStore::open_s3(dir.path(), bad).await.is_err(), "{bad}");
    }
}
