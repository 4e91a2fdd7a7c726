//! Atomic publish and leases with fencing tokens (issue 21): commits through the native
//! upload and tus, finish with `expect`/`delete`/`replace_prefix`/`if_unchanged_since`,
//! events with `commit`/`commit_size`, idempotency, abort and ttl expiry; leases and the
//! fence on every write; a consumer that never sees a mix; SIGKILL during finish; a stale
//! holder SIGSTOPed past its ttl. The PostgreSQL variants run on two replicas and need
//! `VAULTFS_TEST_POSTGRES_URL` and `VAULTFS_TEST_S3_URL` (SKIPPED without them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{enc, sha256_hex, TestServer};
use serde_json::{json, Value};
use vaultfs::config::Config;

async fn create_commit(s: &TestServer, body: Value) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/api/v1/commits"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn stage(s: &TestServer, commit: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let r = s
        .client
        .post(s.url(&format!(
            "/api/v1/files/upload?path={}&commit={commit}",
            enc(path)
        )))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn finish(s: &TestServer, commit: &str, body: Value, fence: Option<i64>) -> (u16, Value) {
    let mut r = s
        .client
        .post(s.url(&format!("/api/v1/commits/{commit}/finish")))
        .json(&body);
    if let Some(f) = fence {
        r = r.header("x-vaultfs-fence", f.to_string());
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn events_since(s: &TestServer, since: i64) -> Vec<Value> {
    let (_, page) = s
        .get_json(&format!("/api/v1/events?since={since}&limit=1000"))
        .await;
    page["events"].as_array().unwrap().clone()
}

async fn latest_seq(s: &TestServer) -> i64 {
    s.get_json("/api/v1/events?limit=1").await.1["next_since"]
        .as_i64()
        .unwrap()
}

async fn list(s: &TestServer, prefix: &str) -> Vec<Value> {
    let (status, page) = s
        .get_json(&format!("/api/v1/list?prefix={}", enc(prefix)))
        .await;
    assert_eq!(status, 200, "{page}");
    page["entries"].as_array().unwrap().clone()
}

async fn online_fsck(s: &TestServer) -> Value {
    let r = s
        .client
        .post(s.url("/api/v1/admin/fsck"))
        .send()
        .await
        .unwrap();
    r.json().await.unwrap()
}

/// Two replicas on PostgreSQL + S3 (or `None`, SKIPPED).
async fn cluster(test: &str) -> Option<(TestServer, TestServer, Vec<tempfile::TempDir>)> {
    cluster_at(test).await.map(|(a, b, dirs, _)| (a, b, dirs))
}

/// [`cluster`], with the metadata database's URL.
async fn cluster_at(
    test: &str,
) -> Option<(TestServer, TestServer, Vec<tempfile::TempDir>, String)> {
    let metadata_url = common::test_postgres_url(test).await?;
    let blob_store = common::test_s3_url(test)?;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &Path| Config {
        metadata_url: Some(metadata_url.clone()),
        blob_store: Some(blob_store.clone()),
        trash_retention: Some(Duration::from_secs(3600)),
        ..Config::for_data_dir(dir)
    };
    let a = TestServer::start_with(config(da.path())).await;
    let b = TestServer::start_with(config(db.path())).await;
    Some((a, b, vec![da, db], metadata_url))
}

/// The whole life of a commit, with `a` publishing and `b` reading (one server on SQLite).
async fn commit_lifecycle(a: &TestServer, b: &TestServer) {
    a.put("rel/latest/old.txt", b"old build").await;
    a.put("rel/latest/keep-out.txt", b"also old").await;
    let before = latest_seq(b).await;

    // Idempotency: the same key, the same commit.
    let (status, c) = create_commit(a, json!({"idempotency_key": "build-1", "ttl": "10m"})).await;
    assert_eq!(status, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    assert!(c["expires_at"].is_string());
    let (status, again) = create_commit(b, json!({"idempotency_key": "build-1"})).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));

    // Staging: raw (twice on one path: the last wins) and multipart; 202, no file id.
    let (status, staged) = stage(a, &id, "rel/latest/app", b"first").await;
    assert_eq!(status, 202, "{staged}");
    assert_eq!(staged["commit"], id.as_str());
    assert!(staged.get("id").is_none());
    let (status, staged) = stage(a, &id, "rel/latest/app", b"app v2").await;
    assert_eq!(
        (status, staged["sha256"].as_str()),
        (202, Some(sha256_hex(b"app v2").as_str()))
    );
    let form = reqwest::multipart::Form::new()
        .part(
            "a",
            reqwest::multipart::Part::bytes(b"sums".to_vec()).file_name("SHA256SUMS"),
        )
        .part(
            "b",
            reqwest::multipart::Part::bytes(b"sbom".to_vec()).file_name("sbom.json"),
        );
    let r = a
        .client
        .post(a.url(&format!("/api/v1/files/upload?path=rel/latest&commit={id}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let staged: Value = r.json().await.unwrap();
    assert_eq!(staged["files"].as_array().unwrap().len(), 2, "{staged}");

    // Invisible to reads, listings and the feed.
    assert_eq!(b.get_json("/api/v1/stat?path=rel/latest/app").await.0, 404);
    assert_eq!(list(b, "rel/latest/").await.len(), 2);
    assert_eq!(latest_seq(b).await, before);
    // Staged content is referenced: fsck finds no orphan and no damage.
    let report = online_fsck(a).await;
    assert_eq!(report["metadata_problems"], json!([]), "{report}");
    assert_eq!(report["orphan_blobs"], json!([]), "{report}");

    // `expect` that does not match: 409 naming the differences, the commit stays open.
    let expect_wrong =
        json!({"expect": [{"path": "rel/latest/app", "sha256": sha256_hex(b"first")}]});
    let (status, err) = finish(a, &id, expect_wrong, None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("commit_mismatch")),
        "{err}"
    );
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rel/latest/app") && message.contains("SHA256SUMS"),
        "{message}"
    );
    // `if_unchanged_since` older than a change under the prefix: 412.
    let (status, _) = finish(
        a,
        &id,
        json!({"replace_prefix": "rel/latest/", "if_unchanged_since": before - 1}),
        None,
    )
    .await;
    assert_eq!(status, 412);

    // The finish: one transaction, consecutive seqs, each event names the commit and size.
    let expect: Vec<Value> = [
        ("rel/latest/app", &b"app v2"[..]),
        ("rel/latest/SHA256SUMS", b"sums"),
        ("rel/latest/sbom.json", b"sbom"),
    ]
    .iter()
    .map(|(p, b)| json!({"path": p, "sha256": sha256_hex(b)}))
    .collect();
    let body =
        json!({"expect": expect, "replace_prefix": "rel/latest/", "if_unchanged_since": before});
    let (status, done) = finish(a, &id, body.clone(), None).await;
    assert_eq!(status, 200, "{done}");
    let (first, last) = (
        done["seq_first"].as_i64().unwrap(),
        done["seq_last"].as_i64().unwrap(),
    );
    assert_eq!(last - first + 1, 5, "3 puts and 2 deletions: {done}");
    assert_eq!(done["files"].as_array().unwrap().len(), 3);
    let events = events_since(b, before).await;
    assert_eq!(events.len(), 5, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_i64().unwrap(), first + i as i64);
        assert_eq!(e["commit"], id.as_str());
        assert_eq!(e["commit_size"], 5);
    }
    let kinds: BTreeSet<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains("deleted") && kinds.contains("created"),
        "{kinds:?}"
    );
    let paths: BTreeSet<String> = list(b, "rel/latest/")
        .await
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [
        "rel/latest/SHA256SUMS",
        "rel/latest/app",
        "rel/latest/sbom.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(paths, want);
    assert_eq!(b.get_bytes("/api/v1/fs/rel/latest/app").await.1, b"app v2");
    // The replaced files went to the trash.
    let (_, trash) = b.get_json("/api/v1/trash?prefix=rel/latest/").await;
    assert_eq!(trash["entries"].as_array().unwrap().len(), 2, "{trash}");

    // A second finish: the same answer, nothing written. The key gives the result too.
    let (status, again) = finish(b, &id, body, None).await;
    assert_eq!((status, &again), (200, &done));
    assert_eq!(latest_seq(b).await, last);
    let (status, by_key) = create_commit(a, json!({"idempotency_key": "build-1"})).await;
    assert_eq!((status, &by_key["result"]), (200, &done));
    // A finished commit takes no more files.
    let (status, err) = stage(a, &id, "rel/latest/late", b"late").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("commit_closed"))
    );

    // Abort: 204; its staged content is collected; a finish then is 404.
    let (_, c2) = create_commit(a, json!({})).await;
    let id2 = c2["id"].as_str().unwrap().to_string();
    let unique = format!("aborted content {id2}");
    stage(a, &id2, "rel/latest/x", unique.as_bytes()).await;
    let r = a
        .client
        .delete(a.url(&format!("/api/v1/commits/{id2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _) = finish(a, &id2, json!({}), None).await;
    assert_eq!(status, 404);
    let (status, _) = finish(a, "0123456789abcdef0123456789abcdef", json!({}), None).await;
    assert_eq!(status, 404);

    // The ttl: a finish after it is 410 at once; the expiry collects staged content.
    let (_, c3) = create_commit(a, json!({"ttl": "1s"})).await;
    let id3 = c3["id"].as_str().unwrap().to_string();
    let (status, _) = stage(
        a,
        &id3,
        "rel/latest/y",
        format!("expiring {id3}").as_bytes(),
    )
    .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, err) = finish(a, &id3, json!({}), None).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (410, Some("commit_expired"))
    );
    let audit_clean = common::eventually(Duration::from_secs(10), || async {
        let r = online_fsck(a).await;
        r["orphan_blobs"] == json!([]) && r["metadata_problems"] == json!([])
    })
    .await;
    assert!(audit_clean, "{}", online_fsck(a).await);
}

/// The blob files under a local data directory.
async fn local_blob_count(s: &TestServer) -> usize {
    s.blob_count().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_lifecycle_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config {
        trash_retention: Some(Duration::from_secs(3600)),
        ..Config::for_data_dir(dir.path())
    })
    .await;
    commit_lifecycle(&s, &s).await;
    // Aborted and expired content is gone from disk within seconds: 3 files' blobs left
    // plus the 2 trashed ones.
    let collected = common::eventually(Duration::from_secs(10), || async {
        local_blob_count(&s).await == 5
    })
    .await;
    assert!(collected, "blobs: {}", local_blob_count(&s).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_lifecycle_on_postgres_across_replicas() {
    let Some((a, b, _dirs)) = cluster("commit_lifecycle_on_postgres").await else {
        return;
    };
    commit_lifecycle(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// The metadata database of a running server, read (and aged) behind its back: the
/// sweep's work is seen in the rows, not guessed from a sleep.
enum MetaDb {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl MetaDb {
    /// The commit's state and its staged rows; `None` when the row is gone.
    async fn commit(&self, id: &str) -> Option<(String, i64)> {
        use sqlx::Connection;
        let state = "SELECT state, (SELECT COUNT(*) FROM commit_files WHERE commit_id = $1)
                     FROM commits WHERE id = $1";
        match self {
            MetaDb::Sqlite(path) => {
                let mut c = sqlx::SqliteConnection::connect_with(
                    &sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(path)
                        .busy_timeout(Duration::from_secs(10)),
                )
                .await
                .unwrap();
                sqlx::query_as(state)
                    .bind(id)
                    .fetch_optional(&mut c)
                    .await
                    .unwrap()
            }
            MetaDb::Postgres(url) => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query_as(state)
                    .bind(id)
                    .fetch_optional(&mut c)
                    .await
                    .unwrap()
            }
        }
    }

    /// Moves the commit's expiry `ms` into the past.
    async fn age(&self, id: &str, ms: i64) {
        use sqlx::Connection;
        let age = "UPDATE commits SET expires_at = expires_at - $1 WHERE id = $2";
        match self {
            MetaDb::Sqlite(path) => {
                let mut c = sqlx::SqliteConnection::connect_with(
                    &sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(path)
                        .busy_timeout(Duration::from_secs(10)),
                )
                .await
                .unwrap();
                sqlx::query(age)
                    .bind(ms)
                    .bind(id)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            MetaDb::Postgres(url) => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(age)
                    .bind(ms)
                    .bind(id)
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn get_commit(s: &TestServer, id: &str) -> (u16, Value) {
    s.get_json(&format!("/api/v1/commits/{id}")).await
}

async fn abort_commit(s: &TestServer, id: &str) -> u16 {
    s.client
        .delete(s.url(&format!("/api/v1/commits/{id}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// An expired commit answers 410 `commit_expired` to its finish, its GET and a staging,
/// before the sweep and after it (its row stays as a tombstone, its staged content goes);
/// an abort of it is 204 and changes nothing. An aborted commit answers 404. A week past
/// its expiry the tombstone is removed and the id is unknown (404). `a` and `b` share `db`.
async fn expired_commits_stay_gone(a: &TestServer, b: &TestServer, db: &MetaDb) {
    let expired = |(status, v): (u16, Value)| {
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (410, Some("commit_expired")),
            "{v}"
        );
    };
    let (_, c) = create_commit(a, json!({"ttl": "1s"})).await;
    let id = c["id"].as_str().unwrap().to_string();
    let (status, staged) = stage(a, &id, "exp/a", format!("expiring {id}").as_bytes()).await;
    assert_eq!(status, 202, "{staged}");
    assert_eq!(db.commit(&id).await, Some(("open".to_string(), 1)));
    // Past the ttl, before any sweep could have run: 410 already.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expired(get_commit(b, &id).await);

    // The sweep (every second) ends it: state `expired`, no staged rows.
    let swept = common::eventually(Duration::from_secs(15), || async {
        db.commit(&id).await == Some(("expired".to_string(), 0))
    })
    .await;
    assert!(swept, "not swept: {:?}", db.commit(&id).await);
    expired(finish(b, &id, json!({}), None).await);
    expired(finish(a, &id, json!({"replace_prefix": "exp/"}), None).await);
    expired(get_commit(b, &id).await);
    expired(stage(a, &id, "exp/b", b"late").await);
    assert_eq!(
        abort_commit(b, &id).await,
        204,
        "an expired commit aborts as a no-op"
    );
    expired(get_commit(a, &id).await);
    expired(finish(a, &id, json!({}), None).await);
    assert_eq!(db.commit(&id).await, Some(("expired".to_string(), 0)));
    assert_eq!(list(b, "exp/").await.len(), 0, "nothing landed");

    // Aborted: 404 on every route, while its tombstone is kept.
    let (_, c) = create_commit(a, json!({"ttl": "10m"})).await;
    let aborted = c["id"].as_str().unwrap().to_string();
    stage(a, &aborted, "exp/c", b"aborted").await;
    assert_eq!(abort_commit(a, &aborted).await, 204);
    assert_eq!(db.commit(&aborted).await, Some(("aborted".to_string(), 0)));
    assert_eq!(get_commit(b, &aborted).await.0, 404);
    assert_eq!(finish(b, &aborted, json!({}), None).await.0, 404);
    assert_eq!(stage(a, &aborted, "exp/c", b"again").await.0, 404);
    assert_eq!(abort_commit(b, &aborted).await, 404);

    // An ended commit's idempotency key starts a new commit (`vaultfs publish` run again
    // after its commit lapsed), and the ended one keeps answering as before.
    let (_, c) = create_commit(a, json!({"idempotency_key": "exp-key", "ttl": "1s"})).await;
    let lapsed = c["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, again) = create_commit(b, json!({"idempotency_key": "exp-key"})).await;
    assert_eq!(status, 201, "{again}");
    let fresh = again["id"].as_str().unwrap().to_string();
    assert_ne!(fresh, lapsed);
    assert_eq!(stage(b, &fresh, "exp/k", b"retried").await.0, 202);
    expired(get_commit(a, &lapsed).await);
    let (status, same) = create_commit(a, json!({"idempotency_key": "exp-key"})).await;
    assert_eq!(
        (status, same["id"].as_str()),
        (200, Some(fresh.as_str())),
        "{same}"
    );
    assert_eq!(abort_commit(a, &fresh).await, 204);
    let (status, third) = create_commit(b, json!({"idempotency_key": "exp-key"})).await;
    assert_eq!(
        status, 201,
        "an aborted commit's key starts anew too: {third}"
    );
    assert_ne!(third["id"].as_str(), Some(fresh.as_str()));
    assert_eq!(get_commit(a, &fresh).await.0, 404);

    // Bounded: a tombstone a week past its expiry is purged by the sweep; then 404.
    let week_ms = 7 * 24 * 3600 * 1000;
    db.age(&id, week_ms + 60_000).await;
    db.age(&aborted, week_ms + 11 * 60_000).await;
    let purged = common::eventually(Duration::from_secs(15), || async {
        db.commit(&id).await.is_none() && db.commit(&aborted).await.is_none()
    })
    .await;
    assert!(
        purged,
        "{:?} {:?}",
        db.commit(&id).await,
        db.commit(&aborted).await
    );
    for gone in [&id, &aborted] {
        assert_eq!(get_commit(b, gone).await.0, 404);
        assert_eq!(finish(a, gone, json!({}), None).await.0, 404);
    }
    let audit = online_fsck(a).await;
    assert_eq!(audit["metadata_problems"], json!([]), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_commits_stay_gone_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let db = MetaDb::Sqlite(dir.path().join("meta.db"));
    expired_commits_stay_gone(&s, &s, &db).await;
    // The expired commit's staged content is collected: no blob is left.
    let collected = common::eventually(Duration::from_secs(10), || async {
        s.blob_count().await == 0
    })
    .await;
    assert!(collected, "blobs: {}", s.blob_count().await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_commits_stay_gone_on_postgres_across_replicas() {
    let Some((a, b, _dirs, url)) = cluster_at("expired_commits_stay_gone_on_postgres").await else {
        return;
    };
    expired_commits_stay_gone(&a, &b, &MetaDb::Postgres(url)).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_limits_and_tus_staging() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config {
        commit_max_files: 2,
        ..Config::for_data_dir(dir.path())
    })
    .await;
    let (_, c) = create_commit(&s, json!({})).await;
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(stage(&s, &id, "l/a", b"a").await.0, 202);
    assert_eq!(stage(&s, &id, "l/b", b"b").await.0, 202);
    assert_eq!(
        stage(&s, &id, "l/b", b"b2").await.0,
        202,
        "a re-staged path is not a new file"
    );
    let (status, err) = stage(&s, &id, "l/c", b"c").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("commit_too_large"))
    );

    // tus with the `commit` key stages into the commit (invisible until the finish).
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let (_, c) = create_commit(&s, json!({})).await;
    let tid = c["id"].as_str().unwrap().to_string();
    let r = s
        .client
        .post(s.url("/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .header("content-type", "application/offset+octet-stream")
        .header(
            "upload-metadata",
            format!("path {},commit {}", b64("t/one.bin"), b64(&tid)),
        )
        .body(b"hello".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert_eq!(s.get_json("/api/v1/stat?path=t/one.bin").await.0, 404);
    let (status, done) = finish(&s, &tid, json!({}), None).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(s.get_bytes("/api/v1/fs/t/one.bin").await.1, b"hello");
    // An unknown commit in tus metadata: 400 at creation.
    let r = s
        .client
        .post(s.url("/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .header(
            "upload-metadata",
            format!("path {},commit {}", b64("t/two.bin"), b64("nope")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}

async fn lease(s: &TestServer, path: &str, ttl: &str) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/api/v1/leases"))
        .json(&json!({"path": path, "ttl": ttl}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn put_fenced(s: &TestServer, path: &str, body: &[u8], fence: Option<i64>) -> (u16, Value) {
    let mut r = s
        .client
        .post(s.url(&format!("/api/v1/files/upload?path={}", enc(path))))
        .body(body.to_vec());
    if let Some(f) = fence {
        r = r.header("x-vaultfs-fence", f.to_string());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

/// Leases: conflicts, fences on every kind of write, renew, release, the admin listing.
async fn leases_fence_writes(a: &TestServer, b: &TestServer) {
    a.put("p/in.txt", b"inside").await;
    a.put("q/out.txt", b"outside").await;
    let (status, l) = lease(a, "p/", "30s").await;
    assert_eq!(status, 201, "{l}");
    let (lid, fence) = (
        l["lease_id"].as_str().unwrap().to_string(),
        l["fence"].as_i64().unwrap(),
    );
    assert_eq!(l["path"], "p/");
    // Held: on the path, a descendant, an ancestor; with expires_at.
    for p in ["p/", "p/in.txt", "p/deeper/"] {
        let (status, err) = lease(b, p, "30s").await;
        assert_eq!(
            (status, code(&err)),
            (409, Some("lease_held")),
            "{p}: {err}"
        );
        assert!(err["error"]["expires_at"].is_string());
    }
    assert_eq!(
        lease(b, "pq/", "30s").await.0,
        201,
        "a sibling prefix is free"
    );

    // Writes under p/: no fence 423, an older fence 409, the fence 200; reads are open.
    assert_eq!(
        code(&put_fenced(b, "p/new", b"x", None).await.1),
        Some("locked")
    );
    assert_eq!(
        code(&put_fenced(b, "p/new", b"x", Some(fence - 1)).await.1),
        Some("fence_stale")
    );
    assert_eq!(put_fenced(b, "p/new", b"x", Some(fence)).await.0, 201);
    assert_eq!(b.get_bytes("/api/v1/fs/p/in.txt").await.0, 200);
    assert_eq!(
        put_fenced(b, "q/free", b"x", None).await.0,
        201,
        "outside the lease"
    );
    let send = |method: reqwest::Method, url: String, fence: Option<i64>| {
        let mut r = b.client.request(method, url);
        if let Some(f) = fence {
            r = r.header("x-vaultfs-fence", f.to_string());
        }
        r.send()
    };
    // Move in and out, copy onto, delete: each refused without the fence.
    let mv_in = b.url("/api/v1/fs/q/out.txt?op=move&to=p/moved.txt");
    assert_eq!(
        send(reqwest::Method::POST, mv_in.clone(), None)
            .await
            .unwrap()
            .status(),
        423
    );
    let mv_out = b.url("/api/v1/fs/p/in.txt?op=move&to=q/gone.txt");
    assert_eq!(
        send(reqwest::Method::POST, mv_out, None)
            .await
            .unwrap()
            .status(),
        423
    );
    let cp = b.url("/api/v1/fs/q/out.txt?op=copy&to=p/copy.txt");
    assert_eq!(
        send(reqwest::Method::POST, cp.clone(), None)
            .await
            .unwrap()
            .status(),
        423
    );
    assert_eq!(
        send(reqwest::Method::POST, cp, Some(fence))
            .await
            .unwrap()
            .status(),
        201
    );
    let del = b.url("/api/v1/fs/p/copy.txt");
    assert_eq!(
        send(reqwest::Method::DELETE, del.clone(), None)
            .await
            .unwrap()
            .status(),
        423
    );
    assert_eq!(
        send(reqwest::Method::DELETE, del, Some(fence))
            .await
            .unwrap()
            .status(),
        204
    );
    // Restore from the trash into the leased prefix.
    let (_, trash) = b.get_json("/api/v1/trash?prefix=p/").await;
    let trash_id = trash["entries"][0]["trash_id"]
        .as_str()
        .unwrap()
        .to_string();
    let restore = b.url(&format!("/api/v1/trash/{trash_id}/restore"));
    assert_eq!(
        send(reqwest::Method::POST, restore.clone(), None)
            .await
            .unwrap()
            .status(),
        423
    );
    assert_eq!(
        send(reqwest::Method::POST, restore, Some(fence))
            .await
            .unwrap()
            .status(),
        200
    );
    // A commit's finish under the lease.
    let (_, c) = create_commit(b, json!({})).await;
    let cid = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        stage(b, &cid, "p/committed", b"c").await.0,
        202,
        "staging needs no fence"
    );
    assert_eq!(
        code(&finish(b, &cid, json!({}), None).await.1),
        Some("locked")
    );
    assert_eq!(
        code(&finish(b, &cid, json!({}), Some(fence + 5)).await.1),
        Some("fence_stale")
    );
    assert_eq!(finish(b, &cid, json!({}), Some(fence)).await.0, 200);
    // A malformed fence header.
    assert_eq!(put_fenced(b, "q/x", b"x", None).await.0, 201);
    let r = send(reqwest::Method::DELETE, b.url("/api/v1/fs/q/x"), None);
    drop(r);
    let bad = b
        .client
        .delete(b.url("/api/v1/fs/q/x"))
        .header("x-vaultfs-fence", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // The admin listing; renew; release reopens the path; the fence lives on per path.
    let (_, listed) = a.get_json("/api/v1/admin/leases").await;
    let paths: Vec<&str> = listed["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["p/", "pq/"]);
    let r = b
        .client
        .post(b.url(&format!("/api/v1/leases/{lid}/renew")))
        .json(&json!({"ttl": "1m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["fence"], fence);
    let r = a
        .client
        .delete(a.url(&format!("/api/v1/leases/{lid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        put_fenced(b, "p/after", b"x", None).await.0,
        201,
        "open again"
    );
    assert_eq!(
        put_fenced(b, "p/after", b"y", Some(fence)).await.0,
        200,
        "the newest fence"
    );
    let (_, next) = lease(b, "p/", "1s").await;
    assert_eq!(next["fence"].as_i64().unwrap(), fence + 1);
    // Lapsed: renewal is 410; the old fence is stale now, the newest accepted.
    let next_id = next["lease_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = a
        .client
        .post(a.url(&format!("/api/v1/leases/{next_id}/renew")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(
        code(&put_fenced(a, "p/after", b"z", Some(fence)).await.1),
        Some("fence_stale")
    );
    assert_eq!(put_fenced(a, "p/after", b"z", Some(fence + 1)).await.0, 200);

    // Lapsed and taken over by someone else: still 410 `lease_expired` (not 404), on
    // either replica, while the new holder has it and after it released it.
    let (status, taken) = lease(b, "p/", "30s").await;
    assert_eq!(status, 201, "{taken}");
    assert_eq!(taken["fence"].as_i64().unwrap(), fence + 2);
    let renew = |s: &TestServer, id: &str| {
        s.client
            .post(s.url(&format!("/api/v1/leases/{id}/renew")))
            .json(&json!({"ttl": "30s"}))
            .send()
    };
    for s in [a, b] {
        let r = renew(s, &next_id).await.unwrap();
        assert_eq!(r.status(), 410);
        let err: Value = r.json().await.unwrap();
        assert_eq!(code(&err), Some("lease_expired"), "{err}");
    }
    // The takeover is untouched by the stale renewal: the new holder renews and holds on.
    let taken_id = taken["lease_id"].as_str().unwrap().to_string();
    let r = renew(a, &taken_id).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["fence"], fence + 2);
    assert_eq!(
        code(&put_fenced(a, "p/after", b"w", Some(fence + 1)).await.1),
        Some("fence_stale")
    );
    let r = b
        .client
        .delete(b.url(&format!("/api/v1/leases/{taken_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(renew(a, &next_id).await.unwrap().status(), 410);
    // An id that never existed: 404.
    let r = renew(b, "0123456789abcdef0123456789abcdef").await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(renew(a, "never-issued").await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fence_every_write_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config {
        trash_retention: Some(Duration::from_secs(3600)),
        ..Config::for_data_dir(dir.path())
    })
    .await;
    leases_fence_writes(&s, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fence_every_write_on_postgres_across_replicas() {
    let Some((a, b, _dirs)) = cluster("leases_fence_every_write_on_postgres").await else {
        return;
    };
    leases_fence_writes(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// The file contents of build `n`.
fn build_files(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..50)
        .map(|i| {
            (
                format!("releases/latest/f{i:02}.bin"),
                format!("build {n} file {i}").into_bytes(),
            )
        })
        .collect()
}

/// 20 commits of 50 files replace `releases/latest/` through `publisher` while a consumer
/// lists it on `consumer` in a loop: every listing is exactly one whole build.
async fn consumer_never_sees_a_mix(publisher: &TestServer, consumer: &TestServer) {
    let mut build_of: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..20 {
        for (_, body) in build_files(n) {
            build_of.insert(sha256_hex(&body), n);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let client = consumer.client.clone();
        let url = consumer.url("/api/v1/list?prefix=releases/latest/");
        let build_of = build_of.clone();
        tokio::spawn(async move {
            let (mut listings, mut seen) = (0usize, BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                let entries = page["entries"].as_array().unwrap();
                if entries.is_empty() {
                    continue;
                }
                let builds: BTreeSet<usize> = entries
                    .iter()
                    .map(|e| build_of[e["sha256"].as_str().unwrap()])
                    .collect();
                assert_eq!(builds.len(), 1, "a listing mixes builds {builds:?}");
                assert_eq!(entries.len(), 50, "a listing has a partial build");
                seen.extend(builds);
                listings += 1;
            }
            (listings, seen)
        })
    };
    for n in 0..20 {
        let (_, c) = create_commit(publisher, json!({"idempotency_key": format!("mix-{n}")})).await;
        let id = c["id"].as_str().unwrap().to_string();
        for (path, body) in build_files(n) {
            assert_eq!(stage(publisher, &id, &path, &body).await.0, 202);
        }
        let (status, done) = finish(
            publisher,
            &id,
            json!({"replace_prefix": "releases/latest/"}),
            None,
        )
        .await;
        assert_eq!(status, 200, "{done}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (listings, seen) = reader.await.unwrap();
    eprintln!(
        "consumer: {listings} listings, {} distinct builds seen",
        seen.len()
    );
    assert!(listings > 20, "{listings}");
    assert!(!seen.is_empty());
    // Afterwards: exactly the last build.
    let entries = list(consumer, "releases/latest/").await;
    let builds: BTreeSet<usize> = entries
        .iter()
        .map(|e| build_of[e["sha256"].as_str().unwrap()])
        .collect();
    assert_eq!((entries.len(), builds), (50, BTreeSet::from([19])));
    // The long-poll never splits a commit: pages of 7 end at commit boundaries (each
    // commit here has 50 events, more than 7, so each page is within one commit).
    let (_, page) = consumer
        .get_json("/api/v1/events?since=0&limit=60&prefix=releases/latest/")
        .await;
    let events = page["events"].as_array().unwrap();
    let last = events.last().unwrap();
    let commit = last["commit"].as_str().unwrap();
    let size = last["commit_size"].as_u64().unwrap();
    let of_last = events.iter().filter(|e| e["commit"] == commit).count() as u64;
    assert_eq!(of_last, size, "the page ends with a whole commit: {page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_never_sees_a_mix_on_sqlite() {
    let (_dir, s) = TestServer::start().await;
    consumer_never_sees_a_mix(&s, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_never_sees_a_mix_on_postgres_across_replicas() {
    let Some((a, b, _dirs)) = cluster("a_consumer_never_sees_a_mix_on_postgres").await else {
        return;
    };
    consumer_never_sees_a_mix(&a, &b).await;
    a.stop().await;
    b.stop().await;
}

/// Holder A (a separate process writing with its fence every 50 ms) is SIGSTOPed past its
/// ttl; B takes the lease and publishes; A is SIGCONTed and writes again: none of its
/// writes after the takeover land, and each gets `fence_stale`.
async fn stale_holder(a: &TestServer, b: &TestServer, log: &Path) {
    let (status, l) = lease(a, "stale/", "1s").await;
    assert_eq!(status, 201);
    let fence = l["fence"].as_i64().unwrap();
    let script = format!(
        "i=0; while true; do \
           code=$(curl -s -o /dev/null -w '%{{http_code}}' -X POST -H 'X-Vaultfs-Fence: {fence}' \
             --data-binary a '{base}/api/v1/files/upload?path=stale/a-'$i); \
           echo \"$i $code\" >> '{log}'; i=$((i+1)); sleep 0.05; \
         done",
        base = a.base,
        log = log.display()
    );
    let mut holder = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = holder.id().unwrap().to_string();
    let writing = common::eventually(Duration::from_secs(20), || async {
        tokio::fs::read_to_string(log)
            .await
            .is_ok_and(|l| l.lines().count() >= 3)
    })
    .await;
    assert!(writing, "holder A is writing");
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let stopped_at = tokio::fs::read_to_string(log)
        .await
        .unwrap()
        .lines()
        .count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // B takes over (the fence grows) and publishes under it.
    let (status, taken) = lease(b, "stale/", "30s").await;
    assert_eq!(status, 201, "{taken}");
    let new_fence = taken["fence"].as_i64().unwrap();
    assert!(new_fence > fence);
    let (_, c) = create_commit(b, json!({})).await;
    let id = c["id"].as_str().unwrap().to_string();
    stage(b, &id, "stale/b.bin", b"from b").await;
    assert_eq!(finish(b, &id, json!({}), Some(new_fence)).await.0, 200);
    assert!(signal("-CONT").success());
    // A few writes after the wake-up (each a fresh curl: slow on a loaded machine).
    let woke = common::eventually(Duration::from_secs(20), || async {
        tokio::fs::read_to_string(log)
            .await
            .is_ok_and(|l| l.lines().count() >= stopped_at + 4)
    })
    .await;
    holder.start_kill().unwrap();
    let _ = holder.wait().await;
    let lines: Vec<(usize, String)> = tokio::fs::read_to_string(log)
        .await
        .unwrap()
        .lines()
        .map(|l| {
            let (i, code) = l.split_once(' ').unwrap();
            (i.parse().unwrap(), code.to_string())
        })
        .collect();
    let before: Vec<_> = lines.iter().take(stopped_at).collect();
    assert!(
        before.iter().any(|(_, c)| c == "201"),
        "A wrote while it held the lease: {lines:?}"
    );
    // A request in flight at SIGSTOP may have landed before B's takeover; every one after
    // the stop was refused, and none of them exists.
    let after: Vec<_> = lines.iter().skip(stopped_at + 1).collect();
    assert!(
        woke && !after.is_empty(),
        "A wrote after SIGCONT: {lines:?}"
    );
    for (i, code) in &after {
        assert_eq!(code, "409", "write {i} after the takeover: {lines:?}");
        let (status, _) = b.get_json(&format!("/api/v1/stat?path=stale/a-{i}")).await;
        assert_eq!(status, 404, "write {i} landed");
    }
    // And it is fence_stale.
    let (_, err) = put_fenced(a, "stale/late", b"x", Some(fence)).await;
    assert_eq!(code(&err), Some("fence_stale"));
    assert_eq!(b.get_bytes("/api/v1/fs/stale/b.bin").await.1, b"from b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_is_fenced_off_on_sqlite() {
    let (dir, s) = TestServer::start().await;
    stale_holder(&s, &s, &dir.path().join("holder.log")).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_is_fenced_off_on_postgres_across_replicas() {
    let Some((a, b, dirs)) = cluster("a_stale_holder_is_fenced_off_on_postgres").await else {
        return;
    };
    stale_holder(&a, &b, &dirs[0].path().join("holder.log")).await;
    a.stop().await;
    b.stop().await;
}

/// A server as its own process, so it can be SIGKILLed.
async fn spawn_server(dir: &Path) -> (tokio::process::Child, String) {
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
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let up = common::eventually(Duration::from_secs(20), || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "server started");
    (child, base)
}

/// SIGKILL during finish, in a loop: after each restart, each commit is entirely visible
/// or not at all, and fsck is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_finish_leaves_each_commit_whole_or_absent() {
    let iterations: usize = std::env::var("VAULTFS_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let (mut whole, mut absent) = (0, 0);
    for round in 0..iterations {
        let (mut child, base) = spawn_server(dir.path()).await;
        let c: Value = client
            .post(format!("{base}/api/v1/commits"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = c["id"].as_str().unwrap().to_string();
        let prefix = format!("crash/{round}/");
        for i in 0..40 {
            let r = client
                .post(format!(
                    "{base}/api/v1/files/upload?path={prefix}f{i}&commit={id}"
                ))
                .body(format!("round {round} file {i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
        let finishing = tokio::spawn({
            let (client, base, id) = (client.clone(), base.clone(), id.clone());
            async move {
                client
                    .post(format!("{base}/api/v1/commits/{id}/finish"))
                    .send()
                    .await
            }
        });
        let delay = (uuid::Uuid::new_v4().as_u128() % 40) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.start_kill().unwrap();
        let _ = child.wait().await;
        let _ = finishing.await;

        let (mut child, base) = spawn_server(dir.path()).await;
        let page: Value = client
            .get(format!("{base}/api/v1/list?prefix={prefix}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = page["entries"].as_array().unwrap().len();
        assert!(n == 0 || n == 40, "round {round}: {n} of 40 files visible");
        if n == 40 {
            whole += 1;
        } else {
            absent += 1;
            // Still open: finishing now makes it whole.
            let r = client
                .post(format!("{base}/api/v1/commits/{id}/finish"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
            .args(["fsck", "--json", "--server", &base])
            .env("RUST_LOG", "off")
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "fsck after round {round}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
    eprintln!("finish crash loop: {iterations} SIGKILLs, {whole} whole, {absent} absent");
}

/// A free local port for an S3 listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with its S3 listener on; (server, S3 endpoint).
async fn with_s3(mut config: Config) -> (TestServer, String) {
    let port = free_port();
    config.s3_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let server = TestServer::start_with(config).await;
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await,
        "the S3 port did not open"
    );
    (server, format!("http://127.0.0.1:{port}"))
}

/// An S3 PutObject (unsigned: the server has no token yet), with `x-vaultfs-commit` when
/// `commit` is given: (status, ETag, body).
async fn s3_put(
    s: &TestServer,
    url: String,
    commit: Option<&str>,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut r = s
        .client
        .put(url)
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .body(body.to_vec());
    if let Some(c) = commit {
        r = r.header("x-vaultfs-commit", c);
    }
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, etag, r.text().await.unwrap())
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// `x-vaultfs-commit` on S3 PutObject (issue 21): the objects are staged, invisible to S3 and
/// native listings, reads and the feed until the commit's native finish (through `native`,
/// another replica on PostgreSQL), then there with their bytes, MD5 ETag and user metadata.
/// A closed, expired, aborted or unknown commit is an S3 XML error, and nothing lands.
async fn s3_puts_stage_into_a_commit(s: &TestServer, s3: &str, native: &TestServer) {
    let c = &s.client;
    assert_eq!(
        c.put(format!("{s3}/cbkt")).send().await.unwrap().status(),
        200
    );
    let before = latest_seq(native).await;
    let (status, commit) = create_commit(native, json!({"ttl": "10m"})).await;
    assert_eq!(status, 201, "{commit}");
    let id = commit["id"].as_str().unwrap().to_string();
    let alpha = b"alpha build".to_vec();
    let beta = common::data(200_000, 9);
    let (status, etag_a, text) = s3_put(
        s,
        format!("{s3}/cbkt/rel/a.txt"),
        Some(&id),
        &alpha,
        &[("content-type", "text/plain"), ("x-amz-meta-build", "7")],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(etag_a, format!("\"{}\"", md5_hex(&alpha)));
    let (status, etag_b, text) =
        s3_put(s, format!("{s3}/cbkt/rel/b.bin"), Some(&id), &beta, &[]).await;
    assert_eq!(status, 200, "{text}");

    // Nothing visible: S3 listing and reads, native listing, the feed.
    let listing = c
        .get(format!("{s3}/cbkt?list-type=2&prefix=rel/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("<KeyCount>0</KeyCount>"), "{listing}");
    assert!(!listing.contains("rel/a.txt") && !listing.contains("rel/b.bin"));
    let r = c.get(format!("{s3}/cbkt/rel/a.txt")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(list(native, "cbkt/").await.is_empty());
    assert!(list(s, "cbkt/").await.is_empty());
    assert!(events_since(native, before).await.is_empty());
    // The commit holds both, staged.
    let (status, staged) = native.get_json(&format!("/api/v1/commits/{id}")).await;
    assert_eq!(status, 200, "{staged}");
    let text = staged.to_string();
    assert!(
        text.contains("cbkt/rel/a.txt") && text.contains("cbkt/rel/b.bin"),
        "{staged}"
    );

    // The native finish makes both visible at once, with what S3 answered.
    let (status, done) = finish(native, &id, json!({}), None).await;
    assert_eq!(status, 200, "{done}");
    let mut paths: Vec<&str> = done["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["cbkt/rel/a.txt", "cbkt/rel/b.bin"]);
    let events = events_since(native, before).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e["commit"] == id.as_str()));
    let listing = c
        .get(format!("{s3}/cbkt?list-type=2&prefix=rel/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("<KeyCount>2</KeyCount>"), "{listing}");
    for (key, body, etag) in [("a.txt", &alpha, &etag_a), ("b.bin", &beta, &etag_b)] {
        let r = c.get(format!("{s3}/cbkt/rel/{key}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["etag"].to_str().unwrap(),
            etag.as_str(),
            "{key}"
        );
        if key == "a.txt" {
            assert_eq!(r.headers()["x-amz-meta-build"], "7");
            assert_eq!(r.headers()["content-type"], "text/plain");
        }
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice(), "{key}");
        let (status, native_bytes) = native
            .get_bytes(&format!("/api/v1/fs/cbkt/rel/{key}"))
            .await;
        assert_eq!((status, &native_bytes), (200, body), "{key}");
    }

    // Refusals, in S3 XML, and nothing of them lands.
    let late = format!("{s3}/cbkt/rel/late.bin");
    let (status, _, text) = s3_put(s, late.clone(), Some(&id), b"late", &[]).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("<Code>CommitClosed</Code>"), "{text}");
    let unknown = "0123456789abcdef0123456789abcdef";
    let (status, _, text) = s3_put(s, late.clone(), Some(unknown), b"late", &[]).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("<Code>NoSuchCommit</Code>"), "{text}");
    let (_, aborted) = create_commit(native, json!({})).await;
    let aborted = aborted["id"].as_str().unwrap().to_string();
    let r = native
        .client
        .delete(native.url(&format!("/api/v1/commits/{aborted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, text) = s3_put(s, late.clone(), Some(&aborted), b"late", &[]).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("<Code>NoSuchCommit</Code>"), "{text}");
    let (_, short) = create_commit(native, json!({"ttl": "1s"})).await;
    let short = short["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _, text) = s3_put(s, late.clone(), Some(&short), b"late", &[]).await;
    assert_eq!(status, 410, "{text}");
    assert!(text.contains("<Code>CommitExpired</Code>"), "{text}");
    let (status, _, text) = s3_put(s, late.clone(), Some("not a commit!"), b"late", &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("<Code>InvalidArgument</Code>"), "{text}");
    // A copy has no upload to stage: refused rather than written.
    let (_, open) = create_commit(native, json!({})).await;
    let r = c
        .put(late.clone())
        .header("x-amz-copy-source", "/cbkt/rel/a.txt")
        .header("x-vaultfs-commit", open["id"].as_str().unwrap())
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let (status, _) = native.get_json("/api/v1/stat?path=cbkt/rel/late.bin").await;
    assert_eq!(status, 404, "no refused write landed");
    assert_eq!(list(native, "cbkt/rel/").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_puts_stage_into_a_commit_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (s, s3) = with_s3(Config::for_data_dir(dir.path())).await;
    s3_puts_stage_into_a_commit(&s, &s3, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_puts_stage_into_a_commit_on_postgres_across_replicas() {
    const TEST: &str = "s3_puts_stage_into_a_commit_on_postgres";
    let Some(metadata_url) = common::test_postgres_url(TEST).await else {
        return;
    };
    let Some(blob_store) = common::test_s3_url(TEST) else {
        return;
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &Path| Config {
        metadata_url: Some(metadata_url.clone()),
        blob_store: Some(blob_store.clone()),
        ..Config::for_data_dir(dir)
    };
    let (a, s3) = with_s3(config(da.path())).await;
    let b = TestServer::start_with(config(db.path())).await;
    s3_puts_stage_into_a_commit(&a, &s3, &b).await;
    a.stop().await;
    b.stop().await;
}
