//! `vaultfs fsck` finds a deleted and a corrupted blob, orphans and leftovers, and repairs
//! only what is safe to repair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{data, TestServer};
use serde_json::Value;

async fn fsck(dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["fsck", "--json", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report)
}

fn blob(dir: &std::path::Path, sha: &str) -> std::path::PathBuf {
    dir.join("blobs").join(&sha[..2]).join(sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_reports_missing_and_corrupt_blobs_and_repairs_only_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = TestServer::start_with(vaultfs::config::Config::for_data_dir(d)).await;
    let gone = s.put("f/gone", &data(10_000, 1)).await;
    let bad = s.put("f/bad", &data(20_000, 2)).await;
    s.put("f/good", &data(30_000, 3)).await;
    s.put("f/good-twin", &data(30_000, 3)).await; // same blob, two files

    // A running server's directory is refused.
    let (code, _) = fsck(d, &[]).await;
    assert_eq!(code, Some(2));
    s.stop().await;

    let (code, report) = fsck(d, &[]).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["files"].as_u64(), report["blobs_checked"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(report["bytes_checked"], 60_000);

    // Damage: one blob deleted, one flipped in place (same size), plus an orphan and a
    // leftover temp file.
    tokio::fs::remove_file(blob(d, gone["sha256"].as_str().unwrap()))
        .await
        .unwrap();
    let bad_path = blob(d, bad["sha256"].as_str().unwrap());
    let mut bytes = tokio::fs::read(&bad_path).await.unwrap();
    bytes[5] ^= 1;
    let mut perm = tokio::fs::metadata(&bad_path).await.unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    tokio::fs::set_permissions(&bad_path, perm).await.unwrap();
    tokio::fs::write(&bad_path, &bytes).await.unwrap();
    let orphan = "ab".repeat(32);
    tokio::fs::write(blob(d, &orphan), b"nobody's")
        .await
        .unwrap();
    tokio::fs::write(d.join("tmp").join("x.part"), b"half")
        .await
        .unwrap();

    let (code, report) = fsck(d, &[]).await;
    assert_eq!(code, Some(1), "{report}");
    let damaged: Vec<(String, String)> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap().into(),
                x["problem"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    assert!(damaged
        .iter()
        .any(|(p, why)| p == "f/gone" && why.contains("missing")));
    assert!(damaged
        .iter()
        .any(|(p, why)| p == "f/bad" && why.contains("hashes to")));
    assert_eq!(report["orphan_blobs"], serde_json::json!([orphan]));
    assert_eq!(report["temp_files"], 1);

    // A server started on this directory finds the missing blob by itself (a size check,
    // no hashing: the flipped byte is fsck's to find) and says so in its metrics.
    let s = TestServer::start_with(vaultfs::config::Config::for_data_dir(d)).await;
    let missing = common::eventually(std::time::Duration::from_secs(10), || async {
        let text = s
            .client
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().any(|l| l == "vaultfs_blobs_missing 1")
    })
    .await;
    assert!(missing, "vaultfs_blobs_missing 1 in /metrics");
    s.stop().await;
    // (The server swept tmp/ at start; leave another leftover for --repair.)
    tokio::fs::write(d.join("tmp").join("x.part"), b"half")
        .await
        .unwrap();

    // --repair removes the orphan and the leftover, never the damaged files' records, and
    // still exits 1: damage is not repaired into other content.
    let (code, report) = fsck(d, &["--repair"]).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["temp_files"], 1);
    assert_eq!(report["orphan_blobs"].as_array().unwrap().len(), 1);
    assert!(!blob(d, &orphan).exists());
    assert!(!d.join("tmp").join("x.part").exists());
    let (_, report) = fsck(d, &[]).await;
    assert_eq!(report["orphan_blobs"], serde_json::json!([]));
    assert_eq!(report["temp_files"], 0);
    assert_eq!(report["damaged"].as_array().unwrap().len(), 2);
    assert_eq!(report["files"], 4);
}
