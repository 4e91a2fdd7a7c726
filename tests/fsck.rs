//! `vaultfs fsck` finds a deleted and a corrupted blob, orphans and leftovers, and repairs
//! only what is safe to repair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{data, sha256_hex, TestServer};
use serde_json::Value;

/// Runs `vaultfs fsck --json` with `args`: its exit code and its report.
async fn run_fsck(args: &[&std::ffi::OsStr]) -> (Option<i32>, Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["fsck", "--json"])
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report)
}

async fn fsck(dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--data-dir".as_ref(), dir.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_fsck(&args).await
}

/// Flips one bit of byte `at` in a (read-only) blob file: same size, other content.
async fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = tokio::fs::read(path).await.unwrap();
    bytes[at] ^= 1;
    let mut perm = tokio::fs::metadata(path).await.unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    tokio::fs::set_permissions(path, perm).await.unwrap();
    tokio::fs::write(path, &bytes).await.unwrap();
}

fn blob(dir: &std::path::Path, sha: &str) -> std::path::PathBuf {
    dir.join("blobs").join(&sha[..2]).join(sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_reports_missing_and_corrupt_blobs_and_repairs_only_leftovers() {
    // Own process: `vaultfs_blobs_missing` is a process-wide gauge every server start sets.
    if !common::isolated(
        module_path!(),
        "fsck_reports_missing_and_corrupt_blobs_and_repairs_only_leftovers",
    )
    .await
    {
        return;
    }
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
    flip_byte(&bad_path, 5).await;
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
    let missing = common::metric_line_appears(
        &s.client,
        &s.base,
        "vaultfs_blobs_missing 1",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(missing, "vaultfs_blobs_missing 1 in /metrics");
    // It also collected the orphan (a blob with no metadata at all, as a crash between the
    // rename and the metadata commit leaves), in the background, under the blob's lock.
    let swept = common::eventually(std::time::Duration::from_secs(10), || async {
        !blob(d, &orphan).exists()
    })
    .await;
    assert!(swept, "the start-up sweep collected the orphan");
    s.stop().await;
    // (The server swept tmp/ and the orphan at start; leave others for --repair.)
    tokio::fs::write(d.join("tmp").join("x.part"), b"half")
        .await
        .unwrap();
    tokio::fs::write(blob(d, &orphan), b"nobody's")
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

async fn sql(dir: &std::path::Path, statements: &[&str]) {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("meta.db"))
        .connect()
        .await
        .unwrap();
    for s in statements {
        sqlx::query(s).execute(&mut conn).await.unwrap();
    }
}

fn problems(report: &Value) -> Vec<(String, String)> {
    report["metadata_problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                format!(
                    "{} {}",
                    p["path"].as_str().unwrap(),
                    p["detail"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_checks_the_event_log_against_files_and_reference_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = TestServer::start_with(vaultfs::config::Config::for_data_dir(d)).await;
    let a = s.put("log/a", &data(1_000, 1)).await; // seq 1
    let b = s.put("log/b", &data(1_000, 2)).await; // seq 2
    s.put("log/a", &data(1_000, 3)).await; // seq 3: a v2
    s.put("log/twin1", &data(500, 9)).await; // seq 4
    s.put("log/twin2", &data(500, 9)).await; // seq 5: same blob, refcount 2
    s.stop().await;

    let (code, report) = fsck(d, &[]).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["events"].as_u64(), report["latest_seq"].as_i64()),
        (Some(5), Some(5))
    );
    assert_eq!(problems(&report), vec![]);

    // Damage the metadata: b's only event goes (a gap, and b has no event in a complete
    // log), a's row claims a version its log never recorded, the twins' blob undercounts
    // its users (the data-losing direction: a delete would collect a blob still in use).
    let twin_sha = sha256_hex(&data(500, 9));
    sql(
        d,
        &[
            "DELETE FROM events WHERE seq = 2",
            &format!(
                "UPDATE files SET version = 7 WHERE id = '{}'",
                a["id"].as_str().unwrap()
            ),
            &format!("UPDATE blobs SET refcount = 1 WHERE sha256 = '{twin_sha}'"),
        ],
    )
    .await;
    let (code, report) = fsck(d, &[]).await;
    assert_eq!(code, Some(1), "{report}");
    let found = problems(&report);
    let kinds: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["log_gap", "log_mismatch", "log_missing", "refcount"],
        "{found:?}"
    );
    assert!(
        found[0].1.contains("events 2 to 2 are missing"),
        "{found:?}"
    );
    assert!(
        found[1].1.starts_with("log/a ") && found[1].1.contains("v7"),
        "{found:?}"
    );
    assert!(
        found[2].1.starts_with(b["path"].as_str().unwrap()),
        "{found:?}"
    );
    assert!(found[3].1.contains("refcount 1, used by 2"), "{found:?}");
    // --repair never rewrites metadata: the problems stay, and so does the exit status.
    let (code, report) = fsck(d, &["--repair"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(problems(&report).len(), 4);

    // A file row deleted behind the log's back: its last event says it exists.
    sql(
        d,
        &[
            "INSERT INTO events (kind, file_id, path, from_path, version, size, sha256, at)
             SELECT 'deleted', id, path, NULL, version, size, sha256, 0 FROM files
             WHERE path = 'log/twin1'",
        ],
    )
    .await;
    let (_, report) = fsck(d, &[]).await;
    assert!(
        problems(&report).iter().any(
            |(k, p)| k == "log_mismatch" && p.contains("deleted the file, but it still exists")
        ),
        "{report}"
    );
}

async fn fsck_online(s: &TestServer, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["--server".as_ref(), s.base.as_ref()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    run_fsck(&args).await
}

/// Online: while uploads replace, delete and dedup files (so blobs are committed, released
/// and collected under fsck's feet), every check is clean; damage made while the server runs
/// is found, and `--repair` collects an orphan under its lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_fsck_has_no_false_positives_under_load_and_finds_damage() {
    let (_dir, s) = TestServer::start().await;
    for i in 0..40u64 {
        s.put(&format!("on/{i}"), &data(20_000, i)).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churn = Vec::new();
    for w in 0..4u64 {
        let (client, base, stop) = (s.client.clone(), s.base.clone(), stop.clone());
        churn.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let path = format!("on/{}", (n * 7 + w) % 40);
                // Few distinct contents: replacements release and re-create shared blobs.
                let body = data(20_000, n % 5);
                let url = format!("{base}/api/v1/files/upload?path={}", common::enc(&path));
                let r = client.post(url).body(body).send().await.unwrap();
                assert!(
                    r.status().is_success() || r.status() == 503,
                    "{}",
                    r.status()
                );
                if n.is_multiple_of(3) {
                    let meta: Value = client
                        .get(format!("{base}/api/v1/stat?path={}", common::enc(&path)))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if let Some(id) = meta["id"].as_str() {
                        client
                            .delete(format!("{base}/api/v1/files/{id}"))
                            .send()
                            .await
                            .unwrap();
                    }
                }
            }
            n
        }));
    }
    for round in 0..5 {
        let (code, report) = fsck_online(&s, &[]).await;
        assert_eq!(code, Some(0), "round {round}: {report}");
        assert_eq!(report["online"], true);
        assert!(report["blobs_checked"].as_u64().unwrap() > 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in churn {
        total += c.await.unwrap();
    }
    assert!(total > 20, "the churn made only {total} changes");

    // Damage while running: a deleted blob, a corrupted blob, an orphan.
    let gone = s.put("dmg/gone", &data(3_000, 100)).await;
    let bad = s.put("dmg/bad", &data(3_000, 101)).await;
    let d = s.data_dir.clone();
    tokio::fs::remove_file(blob(&d, gone["sha256"].as_str().unwrap()))
        .await
        .unwrap();
    let bad_path = blob(&d, bad["sha256"].as_str().unwrap());
    flip_byte(&bad_path, 0).await;
    let orphan = "cd".repeat(32);
    tokio::fs::create_dir_all(blob(&d, &orphan).parent().unwrap())
        .await
        .unwrap();
    tokio::fs::write(blob(&d, &orphan), b"nobody's")
        .await
        .unwrap();

    let (code, report) = fsck_online(&s, &["--repair"]).await;
    assert_eq!(code, Some(1), "{report}");
    let mut damaged: Vec<&str> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    damaged.sort_unstable();
    assert_eq!(damaged, ["dmg/bad", "dmg/gone"], "{report}");
    assert_eq!(report["orphan_blobs"], serde_json::json!([orphan]));
    assert!(!blob(&d, &orphan).exists(), "--repair collected the orphan");
    assert_eq!(problems(&report), vec![]);
    // The server kept serving throughout.
    let (status, _) = s.get_json("/api/v1/stat?path=dmg%2Fbad").await;
    assert_eq!(status, 200);
    s.stop().await;
}

/// Runs SQL on the inline blob store of `dir` (`inline-blobs.db`).
async fn inline_sql(dir: &std::path::Path, statements: &[&str]) {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("inline-blobs.db"))
        .connect()
        .await
        .unwrap();
    for s in statements {
        sqlx::query(s).execute(&mut conn).await.unwrap();
    }
}

/// Content stored inline (small uploads with `inline_max_size`) has fsck's guarantees: every
/// row re-hashed, a missing or corrupted row reported for the files using it, an orphan row
/// reported and removed by `--repair`; dedupe, versions and ranges read it as a file blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsck_checks_inline_blobs_like_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = vaultfs::config::Config::for_data_dir(d);
    config.inline_max_size = 64 * 1024;
    config.versions_keep = vaultfs::services::metadata::VersionsKeep::Newest(5);
    let s = TestServer::start_with(config.clone()).await;
    let gone = s.put("i/gone", &data(10_000, 1)).await;
    let bad = s.put("i/bad", &data(20_000, 2)).await;
    let v1 = data(30_000, 3);
    s.put("i/good", &v1).await;
    s.put("i/good-twin", &v1).await; // same blob, two files
    s.put("i/good", &data(40_000, 4)).await; // a second version
    let large = data(200_000, 5);
    s.put("i/large", &large).await; // over the limit: a file
    assert_eq!(s.blob_count().await, 1, "only the large one is a file");
    let (status, got) = s.get_bytes("/api/v1/fs/i/good-twin").await;
    assert_eq!((status, sha256_hex(&got)), (200, sha256_hex(&v1)));
    // A range of inline content.
    let r = s
        .client
        .get(format!("{}/api/v1/fs/i/good-twin", s.base))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &v1[100..200]);
    s.stop().await;

    let (code, report) = fsck(d, &[]).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["files"].as_u64(), report["blobs_checked"].as_u64()),
        (Some(5), Some(5)),
        "{report}"
    );

    let orphan = "cd".repeat(32);
    inline_sql(
        d,
        &[
            &format!(
                "DELETE FROM blobs WHERE sha256 = '{}'",
                gone["sha256"].as_str().unwrap()
            ),
            &format!(
                "UPDATE blobs SET content = zeroblob(20000) WHERE sha256 = '{}'",
                bad["sha256"].as_str().unwrap()
            ),
            &format!(
                "INSERT INTO blobs (sha256, size, content, written_ms) VALUES ('{orphan}', 3, x'010203', 0)"
            ),
        ],
    )
    .await;
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
        .any(|(p, why)| p == "i/gone" && why.contains("missing")));
    assert!(damaged
        .iter()
        .any(|(p, why)| p == "i/bad" && why.contains("hashes to")));
    assert_eq!(report["orphan_blobs"], serde_json::json!([orphan]));
    let (_, report) = fsck(d, &["--repair"]).await;
    assert_eq!(report["orphan_blobs"].as_array().unwrap().len(), 1);
    let (_, report) = fsck(d, &[]).await;
    assert_eq!(report["orphan_blobs"], serde_json::json!([]), "{report}");
}
