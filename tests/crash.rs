//! Crash loop: SIGKILL the real server at a random moment during concurrent uploads, restart
//! it, and check the ledger of acknowledged uploads: none lost, none corrupt, nothing partial
//! visible, no temp file left, the event log gapless across every restart.
//!
//! CI runs 6 iterations; `VAULTFS_CRASH_ITERATIONS=100 cargo test --test integration crash:: -- --nocapture`
//! runs the full loop and prints the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{data, enc, sha256_hex};

struct Server {
    child: tokio::process::Child,
    base: String,
}

async fn start(dir: &Path) -> Server {
    start_with_env(dir, &[]).await
}

async fn start_with_env(dir: &Path, envs: &[(&str, &str)]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..400 {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Server { child, base };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server did not start");
}

/// A cheap random number from the OS (uuid v4).
fn rand(below: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % below.max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_sigkill_at_random_moments() {
    let iterations: u64 = std::env::var("VAULTFS_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // (path, sha256) of every upload answered 2xx.
    let ledger: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut attempted = 0u64;
    for iteration in 0..iterations {
        let server = start(&data_dir).await;
        let mut workers = Vec::new();
        for w in 0..8u64 {
            let (client, base, ledger) = (client.clone(), server.base.clone(), Arc::clone(&ledger));
            workers.push(tokio::spawn(async move {
                let mut n = 0u64;
                for i in 0.. {
                    let path = format!("crash/{iteration}/{w}/{i}");
                    let body = data(
                        1024 + rand(2 << 20) as usize,
                        iteration * 1_000_000 + w * 10_000 + i,
                    );
                    n += 1;
                    let sent = client
                        .post(format!("{base}/api/v1/files/upload?path={}", enc(&path)))
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            ledger.lock().unwrap().push((path, sha256_hex(&body)));
                        }
                        _ => break, // the server is gone
                    }
                }
                n
            }));
        }
        tokio::time::sleep(Duration::from_millis(100 + rand(500))).await;
        let mut server = server;
        server.child.start_kill().unwrap(); // SIGKILL
        server.child.wait().await.unwrap();
        for w in workers {
            attempted += w.await.unwrap();
        }
    }

    // Restart once more and check everything.
    let server = start(&data_dir).await;
    let base = &server.base;
    let ledger = ledger.lock().unwrap().clone();
    let mut lost = 0;
    let mut corrupt = 0;
    for (path, sha) in &ledger {
        let r = client
            .get(format!("{base}/api/v1/fs/{}", enc(path)))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            lost += 1;
            continue;
        }
        if sha256_hex(&r.bytes().await.unwrap()) != *sha {
            corrupt += 1;
        }
    }
    // Nothing partial: every visible file's content matches its recorded hash and size.
    let mut visible = 0;
    let mut cursor = String::new();
    loop {
        let page: serde_json::Value = client
            .get(format!(
                "{base}/api/v1/list?prefix=crash/&cursor={}",
                enc(&cursor)
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for f in page["entries"].as_array().unwrap() {
            visible += 1;
            let bytes = client
                .get(format!("{base}/api/v1/files/{}", f["id"].as_str().unwrap()))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap(), "{f}");
            assert_eq!(
                sha256_hex(&bytes),
                f["sha256"].as_str().unwrap(),
                "partial: {f}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    // The event log is gapless across every restart: one `created` per visible file.
    let mut seqs = Vec::new();
    let mut since = 0;
    loop {
        let page: serde_json::Value = client
            .get(format!("{base}/api/v1/events?since={since}&limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        seqs.extend(events.iter().map(|e| e["seq"].as_i64().unwrap()));
        since = page["next_since"].as_i64().unwrap();
    }
    let mut temp_left = 0;
    let mut tmp = tokio::fs::read_dir(data_dir.join("tmp")).await.unwrap();
    while tmp.next_entry().await.unwrap().is_some() {
        temp_left += 1;
    }
    eprintln!(
        "crash loop: {iterations} SIGKILLs, {attempted} uploads attempted, {} acknowledged and \
         checked, {visible} visible, lost {lost}, corrupt {corrupt}, temp files left {temp_left}, \
         events {}",
        ledger.len(),
        seqs.len()
    );
    assert_eq!((lost, corrupt), (0, 0));
    assert!(visible >= ledger.len());
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    assert_eq!(seqs.len(), visible, "one event per committed upload");
    assert_eq!(temp_left, 0, "temp files are swept at start");
    assert!(!ledger.is_empty());
    // And fsck agrees, online: every blob re-hashed, the log audited against the files and
    // reference counts, no orphan left by the crashes once the start-up sweep is done.
    let swept = common::metric_line_appears(
        &client,
        base,
        "vaultfs_startup_check_running 0",
        Duration::from_secs(60),
    )
    .await;
    assert!(swept, "the start-up check finished");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["fsck", "--json", "--server", base])
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck after the crash loop: {report}"
    );
    drop(server);
}

/// Versions and the trash under SIGKILL: workers replace, restore old versions and delete
/// (to a trash that expires after 1 s, so the background expiry runs too) while the server
/// is killed at random moments. After every restart the metadata audit and the blob check
/// are clean (crash leftovers aside: `repair=true` removes blobs that never got a reference),
/// and every live file and every version it lists reads back whole, with its own hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_and_trash_expiry_survive_sigkill() {
    let iterations: u64 = std::env::var("VAULTFS_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let envs = [
        ("VAULTFS_VERSIONS_KEEP", "3"),
        ("VAULTFS_TRASH_RETENTION", "1s"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for iteration in 0..iterations {
        let server = start_with_env(&data_dir, &envs).await;
        check_versions_and_trash(&client, &server.base).await;
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let (client, base) = (client.clone(), server.base.clone());
            workers.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let path = format!("vc/{iteration}/{w}/{i}");
                    let mut id = String::new();
                    for v in 0..3u64 {
                        let body = data(512 + rand(64 << 10) as usize, w * 1000 + i * 10 + v);
                        let url = format!("{base}/api/v1/files/upload?path={}", enc(&path));
                        match client.post(url).body(body).send().await {
                            Ok(r) if r.status().is_success() => {
                                let meta: serde_json::Value = match r.json().await {
                                    Ok(m) => m,
                                    Err(_) => return,
                                };
                                id = meta["id"].as_str().unwrap_or_default().to_string();
                            }
                            _ => return, // the server is gone
                        }
                    }
                    let restore = format!("{base}/api/v1/files/{id}/versions/1/restore");
                    if client.post(restore).send().await.is_err() {
                        return;
                    }
                    if i % 2 == 0 {
                        let del = format!("{base}/api/v1/files/{id}");
                        if client.delete(del).send().await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + rand(1200))).await;
        let mut server = server;
        server.child.start_kill().unwrap(); // SIGKILL
        server.child.wait().await.unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let mut server = start_with_env(&data_dir, &envs).await;
    // Let the trash expire and the background expiry purge it, then check once more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    check_versions_and_trash(&client, &server.base).await;
    let events: serde_json::Value = client
        .get(format!("{}/api/v1/events?since=0&limit=10000", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"restored") && kinds.contains(&"deleted"),
        "the loop restored and trashed files"
    );
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
}

async fn check_versions_and_trash(client: &reqwest::Client, base: &str) {
    let report: serde_json::Value = client
        .post(format!("{base}/api/v1/admin/fsck?repair=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        report["metadata_problems"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(report["damaged"], serde_json::json!([]), "{report}");
    let mut cursor = String::new();
    loop {
        let page: serde_json::Value = client
            .get(format!(
                "{base}/api/v1/list?prefix=vc/&cursor={}",
                enc(&cursor)
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for f in page["entries"].as_array().unwrap() {
            let id = f["id"].as_str().unwrap();
            let versions: serde_json::Value = client
                .get(format!("{base}/api/v1/files/{id}/versions"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for v in versions["versions"].as_array().unwrap() {
                let n = v["version"].as_i64().unwrap();
                let r = client
                    .get(format!("{base}/api/v1/files/{id}/versions/{n}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{f} v{n}");
                let bytes = r.bytes().await.unwrap();
                assert_eq!(
                    sha256_hex(&bytes),
                    v["sha256"].as_str().unwrap(),
                    "{f} v{n}"
                );
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
}

/// Small uploads are stored inline (`inline-blobs.db`, group-committed) with no file fsync of
/// their own, so this checks what that must still guarantee: the server is SIGKILLed right
/// after a 201 arrives (while other small uploads are in flight), and after the restart every
/// acknowledged file is there with its SHA-256, no file blob was written for them, and fsck
/// (online, then offline) is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_inline_uploads_are_durable_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let ledger: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for iteration in 0..3u64 {
        let server = start_with_env(&data_dir, &[("VAULTFS_INLINE_MAX_SIZE", "64KiB")]).await;
        // SIGKILL as soon as the `kill_after`-th answer of this run is a 201.
        let kill_after = 20 + rand(100) as usize;
        let acked = Arc::new(tokio::sync::Notify::new());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = Vec::new();
        for w in 0..16u64 {
            let (client, base, ledger) = (client.clone(), server.base.clone(), Arc::clone(&ledger));
            let (acked, count) = (Arc::clone(&acked), Arc::clone(&count));
            workers.push(tokio::spawn(async move {
                for i in 0.. {
                    let path = format!("small/{iteration}/{w}/{i}");
                    // 1 byte to 64 KiB; every fourth body repeats another worker's (dedupe).
                    let seed = if i % 4 == 0 {
                        i
                    } else {
                        (iteration << 40) + (w << 20) + i
                    };
                    let body = data(1 + (seed as usize * 7919) % (64 << 10), seed);
                    let sent = client
                        .post(format!("{base}/api/v1/files/upload?path={}", enc(&path)))
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            ledger.lock().unwrap().push((path, sha256_hex(&body)));
                            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if n + 1 == kill_after {
                                acked.notify_one();
                            }
                        }
                        _ => break, // the server is gone
                    }
                }
            }));
        }
        tokio::time::timeout(Duration::from_secs(60), acked.notified())
            .await
            .expect("uploads were acknowledged");
        let mut server = server;
        server.child.start_kill().unwrap(); // SIGKILL, right after the 201
        server.child.wait().await.unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }
    let server = start_with_env(&data_dir, &[("VAULTFS_INLINE_MAX_SIZE", "64KiB")]).await;
    let base = &server.base;
    let ledger = ledger.lock().unwrap().clone();
    assert!(ledger.len() >= 60, "{}", ledger.len());
    for (path, sha) in &ledger {
        let r = client
            .get(format!("{base}/api/v1/fs/{}", enc(path)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged {path} lost");
        let meta_sha = r.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(sha256_hex(&r.bytes().await.unwrap()), *sha, "{path}");
        assert!(meta_sha.contains(sha.as_str()), "{path}: {meta_sha}");
    }
    assert_eq!(
        common::count_files(&data_dir.join("blobs"), 2).await,
        0,
        "small content is inline, not files"
    );
    let swept = common::metric_line_appears(
        &client,
        base,
        "vaultfs_startup_check_running 0",
        Duration::from_secs(60),
    )
    .await;
    assert!(swept, "the start-up check finished");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["fsck", "--json", "--server", base])
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "online fsck: {report}");
    let mut server = server;
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["fsck", "--json", "--data-dir"])
        .arg(&data_dir)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "offline fsck: {report}");
    assert!(report["blobs_checked"].as_u64().unwrap() > 0, "{report}");
}
