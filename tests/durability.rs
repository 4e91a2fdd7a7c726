//! Durability under a full disk: the upload that hits ENOSPC fails with 507 and leaves
//! nothing, everything else keeps working, and uploads succeed again once space is freed,
//! without a restart. Needs root (a small tmpfs is mounted); skipped with a message otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{data, TestServer};
use vaultfs::config::Config;

/// A tmpfs mounted for the test's duration.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_one_upload_with_507_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_disk) = SmallDisk::mount(dir.path(), "24m") else {
        eprintln!(
            "SKIPPED a_full_disk_fails_one_upload_with_507_and_recovers_without_restart: \
             mounting a tmpfs needs root (run the suite as root to include it)"
        );
        return;
    };
    let s = TestServer::start_with(Config::for_data_dir(dir.path().join("data"))).await;
    let a = data(10 << 20, 1);
    let meta_a = s.put("disk/a", &a).await;

    // 20 MiB more does not fit: 507, nothing visible, no temp file.
    let r = s.upload("disk/b", data(20 << 20, 2)).await;
    assert_eq!(r.status(), 507);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_storage");
    assert_eq!(s.get_bytes("/api/v1/fs/disk/b").await.0, 404);
    assert_eq!(s.temp_count().await, 0);

    // Everyone else is served: download, listing, the sync feed.
    assert_eq!(s.get_bytes("/api/v1/fs/disk/a").await, (200, a));
    let (status, list) = s.get_json("/api/v1/list?prefix=disk/").await;
    assert_eq!(
        (status, list["entries"].as_array().unwrap().len()),
        (200, 1)
    );
    let (status, events) = s.get_json("/api/v1/events?since=0").await;
    assert_eq!(
        (status, events["events"].as_array().unwrap().len()),
        (200, 1)
    );

    // Space freed: uploads succeed again, no restart.
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{}", meta_a["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let c = data(12 << 20, 3);
    let r = s.upload("disk/c", c.clone()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.get_bytes("/api/v1/fs/disk/c").await, (200, c));
    s.stop().await;
}

/// Another process holding SQLite's write lock: uploads answer 503 `busy` with Retry-After
/// within the metadata deadline, reads and probes keep answering, and writes resume when the
/// lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_metadata_store_answers_503_within_the_deadline() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        metadata_timeout: std::time::Duration::from_millis(500),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    s.put("busy/before", b"x").await;
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let r = s.upload("busy/during", b"y".to_vec()).await;
    let waited = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "busy", "{v}");
    assert!(
        waited < std::time::Duration::from_secs(5),
        "answered within the deadline: {waited:?}"
    );
    assert_eq!(
        s.get_bytes("/api/v1/fs/busy/before").await,
        (200, b"x".to_vec())
    );
    assert_eq!(s.get_json("/healthz").await.0, 200);

    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    drop(other);
    assert_eq!(s.upload("busy/after", b"z".to_vec()).await.status(), 201);
    assert_eq!(s.get_bytes("/api/v1/fs/busy/during").await.0, 404);
    s.stop().await;
}
