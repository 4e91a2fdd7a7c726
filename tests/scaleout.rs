//! Two replicas on one PostgreSQL and one S3 bucket behave as one service. Needs
//! `VAULTFS_TEST_POSTGRES_URL` and `VAULTFS_TEST_S3_URL` (`.ci/run` starts both); without
//! them each test prints one SKIPPED line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{data, enc, next_json, sha256_hex, TestServer};
use serde_json::{json, Value};
use vaultfs::config::Config;

struct Cluster {
    a: TestServer,
    b: TestServer,
    metadata_url: String,
    blob_store: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn cluster(test: &str) -> Option<Cluster> {
    let metadata_url = common::test_postgres_url(test).await?;
    let blob_store = common::test_s3_url(test)?;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path| Config {
        metadata_url: Some(metadata_url.clone()),
        blob_store: Some(blob_store.clone()),
        ..Config::for_data_dir(dir)
    };
    let a = TestServer::start_with(config(da.path())).await;
    let b = TestServer::start_with(config(db.path())).await;
    Some(Cluster {
        a,
        b,
        metadata_url,
        blob_store,
        _dirs: (da, db),
    })
}

/// The online fsck report of one replica.
async fn online_fsck(s: &TestServer) -> Value {
    let r = s
        .client
        .post(s.url("/api/v1/admin/fsck"))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

impl Cluster {
    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_the_feed_cross_replicas() {
    let Some(c) = cluster("uploads_and_the_feed_cross_replicas").await else {
        return;
    };
    // A subscriber on B from the start of the log.
    let mut ws = c.b.ws("since=0").await;
    assert_eq!(next_json(&mut ws).await["kind"], "hello");

    let mut expected = Vec::new();
    for i in 0..30u64 {
        // Through A mostly, through B sometimes; one large enough for a multipart upload.
        let size = if i == 7 {
            9 * 1024 * 1024
        } else {
            1000 + i as usize * 37
        };
        let body = data(size, i);
        let via = if i % 5 == 4 { &c.b } else { &c.a };
        let meta = via.put(&format!("x/f{i}"), &body).await;
        expected.push((
            meta["path"].as_str().unwrap().to_string(),
            sha256_hex(&body),
        ));
        // Readable at once through the other replica, byte for byte.
        let other = if i % 5 == 4 { &c.a } else { &c.b };
        let (status, got) = other
            .get_bytes(&format!("/api/v1/fs/{}", enc(&format!("x/f{i}"))))
            .await;
        assert_eq!(status, 200);
        assert_eq!(sha256_hex(&got), sha256_hex(&body), "x/f{i}");
    }
    // B's subscriber saw every change, A's included, in order and without a gap.
    let mut seen = Vec::new();
    for _ in 0..30 {
        let e = next_json(&mut ws).await;
        seen.push((
            e["seq"].as_i64().unwrap(),
            e["path"].as_str().unwrap().to_string(),
        ));
    }
    let seqs: Vec<i64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    let paths: Vec<&str> = seen.iter().map(|s| s.1.as_str()).collect();
    let want: Vec<&str> = expected.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(paths, want);
    drop(ws);

    // The subscriber switches to A and resumes from its cursor.
    for i in 30..35u64 {
        c.b.put(&format!("x/f{i}"), &data(500, i)).await;
    }
    let mut ws = c.a.ws("since=30").await;
    assert_eq!(next_json(&mut ws).await["kind"], "hello");
    for (n, i) in (30..35u64).enumerate() {
        let e = next_json(&mut ws).await;
        assert_eq!(e["seq"], 31 + n as i64);
        assert_eq!(e["path"], format!("x/f{i}"));
    }
    // Listings agree.
    let (_, la) = c.a.get_json("/api/v1/list?prefix=x/").await;
    let (_, lb) = c.b.get_json("/api/v1/list?prefix=x/").await;
    assert_eq!(la["entries"], lb["entries"]);
    assert_eq!(la["entries"].as_array().unwrap().len(), 35);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_path_uploads_across_replicas_get_versions_1_to_20() {
    let Some(c) = cluster("same_path_uploads_across_replicas").await else {
        return;
    };
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let base = if i % 2 == 0 {
            c.a.base.clone()
        } else {
            c.b.base.clone()
        };
        let client = c.a.client.clone();
        tasks.push(tokio::spawn(async move {
            let body = data(4096, 1000 + i);
            let r = client
                .post(format!("{base}/api/v1/files/upload?path=hot/artifact.bin"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            let meta: Value = r.json().await.unwrap();
            (meta["version"].as_i64().unwrap(), sha256_hex(&body))
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results.sort();
    let versions: Vec<i64> = results.iter().map(|r| r.0).collect();
    assert_eq!(versions, (1..=20).collect::<Vec<_>>(), "no lost update");
    // The last version's content is what both replicas serve.
    let (_, meta) = c.b.get_json("/api/v1/stat?path=hot/artifact.bin").await;
    assert_eq!(meta["version"], 20);
    assert_eq!(meta["sha256"].as_str().unwrap(), results[19].1);
    let (_, bytes) = c.a.get_bytes("/api/v1/fs/hot/artifact.bin").await;
    assert_eq!(sha256_hex(&bytes), results[19].1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_moves_across_replicas_never_deadlock() {
    let Some(c) = cluster("opposite_moves_across_replicas").await else {
        return;
    };
    for round in 0..20 {
        let (pa, pb) = (format!("m/{round}/a"), format!("m/{round}/b"));
        let a = c.a.put(&pa, b"a").await;
        let b = c.b.put(&pb, b"b").await;
        let mv = |s: &TestServer, id: &str, to: &str| {
            let req = s
                .client
                .post(s.url(&format!("/api/v1/files/{id}/move")))
                .json(&json!({"to": to, "overwrite": true}));
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let (ra, rb) = tokio::time::timeout(Duration::from_secs(15), async {
            tokio::join!(
                mv(&c.a, a["id"].as_str().unwrap(), &pb),
                mv(&c.b, b["id"].as_str().unwrap(), &pa)
            )
        })
        .await
        .expect("opposite moves across replicas finished");
        // One wins; the other finds its file gone (deleted by the winner's overwrite).
        assert!(
            [200, 404].contains(&ra) && [200, 404].contains(&rb),
            "round {round}: {ra} {rb}"
        );
        assert!(ra == 200 || rb == 200, "round {round}");
    }
    // Consistent afterwards, by the online fsck of either replica.
    let report = online_fsck(&c.b).await;
    assert_eq!(report["metadata_problems"], json!([]), "{report}");
    assert_eq!(report["damaged"], json!([]), "{report}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upload_leaves_nothing_and_holds_nothing() {
    let Some(c) = cluster("a_replica_killed_mid_upload").await else {
        return;
    };
    // A third replica as its own process, so it can be SIGKILLed.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("VAULTFS_METADATA_URL", &c.metadata_url)
        .env("VAULTFS_BLOB_STORE", &c.blob_store)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let up = common::eventually(Duration::from_secs(20), || async {
        c.a.client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the third replica started");
    let latest_before = c.b.get_json("/api/v1/events?limit=1").await.1["next_since"]
        .as_i64()
        .unwrap();

    // Half an upload into it, then SIGKILL.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let req =
        c.a.client
            .post(format!("{base}/api/v1/files/upload?path=victim/big.bin"))
            .body(reqwest::Body::wrap_stream(body))
            .send();
    let pending = tokio::spawn(req);
    for i in 0..8 {
        tx.send(data(1 << 20, i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    drop(tx);
    // The client saw the connection die (its answer never came).
    let answer = pending.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| !r.status().is_success()),
        "{answer:?}"
    );

    // Nothing is visible through the survivors, and nothing is held: the same path takes a
    // new upload at once, as version 1.
    assert_eq!(
        c.b.get_json("/api/v1/stat?path=victim/big.bin").await.0,
        404
    );
    let (_, page) = c.a.get_json("/api/v1/list?prefix=victim/").await;
    assert_eq!(page["entries"], json!([]));
    let t0 = std::time::Instant::now();
    let meta = c.b.put("victim/big.bin", b"from b").await;
    assert_eq!(meta["version"], 1);
    assert!(t0.elapsed() < Duration::from_secs(5));
    let (_, events) =
        c.a.get_json(&format!("/api/v1/events?since={latest_before}"))
            .await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["path"], "victim/big.bin");
    c.stop().await;
}

/// The race blob fences exist for: replica B deletes the last file using some content (and
/// collects the blob) while replica A commits a new file with that same content. Whatever the
/// interleaving, A's acknowledged file must download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_on_one_replica_never_deletes_content_another_is_committing() {
    let Some(c) = cluster("collection_vs_commit_across_replicas").await else {
        return;
    };
    for round in 0..25u64 {
        let content = data(40_000, 7000 + round);
        let old = c.a.put(&format!("race/{round}/old"), &content).await;
        let id = old["id"].as_str().unwrap().to_string();
        let delete =
            c.b.client
                .delete(c.b.url(&format!("/api/v1/files/{id}")))
                .send();
        let upload =
            c.a.client
                .post(c.a.url(&format!("/api/v1/files/upload?path=race/{round}/new")))
                .body(content.clone())
                .send();
        let (d, u) = tokio::join!(delete, upload);
        assert_eq!(d.unwrap().status(), 204);
        assert_eq!(u.unwrap().status(), 201);
        // Give B's background collection time to run, then read through both replicas.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for s in [&c.a, &c.b] {
            let (status, got) = s.get_bytes(&format!("/api/v1/fs/race/{round}/new")).await;
            assert_eq!(status, 200, "round {round}");
            assert_eq!(got, content, "round {round}");
        }
    }
    let report = online_fsck(&c.a).await;
    assert_eq!(report["damaged"], json!([]), "{report}");
    assert_eq!(report["metadata_problems"], json!([]), "{report}");
    c.stop().await;
}

/// Content removed from the bucket behind VaultFS's back is reported, not hidden: by the
/// start-up check of a replica (one listing, not a HEAD per blob) and by online fsck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_missing_from_the_bucket_is_reported() {
    // Own process: `vaultfs_blobs_missing` is a process-wide gauge every server start sets.
    if !common::isolated(
        module_path!(),
        "content_missing_from_the_bucket_is_reported",
    )
    .await
    {
        return;
    }
    let Some(c) = cluster("content_missing_from_the_bucket").await else {
        return;
    };
    let keep = c.a.put("gone/keep.bin", &data(3000, 1)).await;
    let lost = c.a.put("gone/lost.bin", &data(3000, 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let bucket = vaultfs::services::storage::BlobStore::open_s3(dir.path(), &c.blob_store)
        .await
        .unwrap();
    bucket
        .delete_blob(lost["sha256"].as_str().unwrap())
        .await
        .unwrap();
    // A replica starting now finds it.
    let d3 = tempfile::tempdir().unwrap();
    let third = TestServer::start_with(Config {
        metadata_url: Some(c.metadata_url.clone()),
        blob_store: Some(c.blob_store.clone()),
        ..Config::for_data_dir(d3.path())
    })
    .await;
    let reported = common::metric_line_appears(
        &third.client,
        &third.base,
        "vaultfs_blobs_missing 1",
        Duration::from_secs(20),
    )
    .await;
    assert!(reported, "the start-up check reports the missing blob");
    let report = online_fsck(&c.b).await;
    let damaged: Vec<&str> = report["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(damaged, ["gone/lost.bin"], "{report}");
    // The other file is untouched and served.
    let (status, got) = third.get_bytes("/api/v1/fs/gone/keep.bin").await;
    assert_eq!(
        (status, sha256_hex(&got)),
        (200, keep["sha256"].as_str().unwrap().to_string())
    );
    third.stop().await;
    c.stop().await;
}
