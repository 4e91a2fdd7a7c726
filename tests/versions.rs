//! Versions with restore and a trash with retention (issue 20), against a real server, on
//! SQLite and (with `VAULTFS_TEST_POSTGRES_URL`) PostgreSQL metadata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{data, enc, eventually, sha256_hex, TestServer};
use serde_json::{json, Value};
use vaultfs::config::Config;
use vaultfs::services::metadata::VersionsKeep;

/// A server with `versions_keep` and `trash_retention` set, on SQLite or PostgreSQL.
async fn server(
    test: &str,
    pg: bool,
    keep: VersionsKeep,
    trash: Duration,
) -> Option<(tempfile::TempDir, TestServer)> {
    server_and_url(test, pg, keep, trash)
        .await
        .map(|(d, s, _)| (d, s))
}

/// [`server`], and its PostgreSQL URL if any.
async fn server_and_url(
    test: &str,
    pg: bool,
    keep: VersionsKeep,
    trash: Duration,
) -> Option<(tempfile::TempDir, TestServer, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let metadata_url = if pg {
        Some(common::test_postgres_url(test).await?)
    } else {
        None
    };
    let config = Config {
        versions_keep: keep,
        trash_retention: Some(trash),
        metadata_url: metadata_url.clone(),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    Some((dir, s, metadata_url))
}

async fn fsck_clean(s: &TestServer) -> Value {
    let r = s
        .client
        .post(s.url("/api/v1/admin/fsck"))
        .send()
        .await
        .unwrap();
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["metadata_problems"], json!([]), "{report}");
    assert_eq!(report["damaged"], json!([]), "{report}");
    assert_eq!(report["orphan_blobs"], json!([]), "{report}");
    report
}

async fn events_since(s: &TestServer, since: i64) -> Vec<Value> {
    let (_, body) = s
        .get_json(&format!("/api/v1/events?since={since}&limit=10000"))
        .await;
    body["events"].as_array().unwrap().clone()
}

async fn latest_seq(s: &TestServer) -> i64 {
    let (_, body) = s.get_json("/api/v1/events?limit=1").await;
    body["next_since"].as_i64().unwrap()
}

fn blob_file(s: &TestServer, sha: &str) -> std::path::PathBuf {
    s.data_dir.join("blobs").join(&sha[..2]).join(sha)
}

/// Twenty replacing uploads with `versions_keep = 5` leave 16..20; version 17 is served
/// with ranges and conditionals; restoring it makes 21 with its bytes and no new blob
/// (`If-Match` honoured, a `restored` event with `restored_from`); fsck is clean.
async fn round_trip(pg: bool) {
    let Some((_dir, s)) = server(
        "versions::round_trip",
        pg,
        VersionsKeep::Newest(5),
        Duration::from_secs(3600),
    )
    .await
    else {
        return;
    };
    let mut metas = Vec::new();
    for n in 1..=20u64 {
        metas.push(s.put("rel/app", &data(1000 + n as usize, n)).await);
    }
    let id = metas[0]["id"].as_str().unwrap().to_string();
    let (status, page) = s.get_json(&format!("/api/v1/files/{id}/versions")).await;
    assert_eq!(status, 200);
    let versions: Vec<(i64, bool)> = page["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (20, true),
            (19, false),
            (18, false),
            (17, false),
            (16, false)
        ]
    );
    assert_eq!(page["next_cursor"], Value::Null);
    let v17 = &page["versions"][3];
    assert_eq!(v17["sha256"], metas[16]["sha256"]);
    assert_eq!(v17["size"], 1017);
    // Paginated, newest first.
    let (_, p1) = s
        .get_json(&format!("/api/v1/files/{id}/versions?limit=2"))
        .await;
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = s
        .get_json(&format!(
            "/api/v1/files/{id}/versions?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(p2["versions"][0]["version"], 18);
    assert_eq!(p2["versions"][1]["version"], 17);
    // Out of the window: 404.
    let (status, body) = s.get_json(&format!("/api/v1/files/{id}/versions/15")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Content of version 17: whole, ranged, conditional.
    let url = s.url(&format!("/api/v1/files/{id}/versions/17"));
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", metas[16]["sha256"].as_str().unwrap())
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), data(1017, 17));
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data(1017, 17)[10..20]);
    let r = s
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // Restore 17: a stale If-Match is refused, a fresh one makes version 21.
    let blobs_before = s.blob_count().await;
    let restore = s.url(&format!("/api/v1/files/{id}/versions/17/restore"));
    let stale = format!("\"{}\"", metas[18]["sha256"].as_str().unwrap());
    let r = s
        .client
        .post(&restore)
        .header("if-match", stale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let since = latest_seq(&s).await;
    let current = format!("\"{}\"", metas[19]["sha256"].as_str().unwrap());
    let r = s
        .client
        .post(&restore)
        .header("if-match", current)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let meta: Value = r.json().await.unwrap();
    assert_eq!(meta["version"], 21);
    assert_eq!(meta["id"], id.as_str());
    assert_eq!(meta["sha256"], metas[16]["sha256"]);
    assert_eq!(s.get_bytes("/api/v1/fs/rel/app").await.1, data(1017, 17));
    let events = events_since(&s, since).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            &events[0]["kind"],
            &events[0]["version"],
            &events[0]["restored_from"]
        ),
        (&json!("restored"), &json!(21), &json!(17))
    );
    // No new blob; version 16 left the window and its blob is collected.
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.blob_count().await == blobs_before - 1
        })
        .await,
        "restore copies no blob; the version pushed out is collected"
    );
    assert!(!blob_file(&s, metas[15]["sha256"].as_str().unwrap()).exists());
    let report = fsck_clean(&s).await;
    assert_eq!(
        (report["files"].as_u64(), report["versions"].as_u64()),
        (Some(1), Some(4))
    );
    s.stop().await;
}

/// `rm -r` of 100 files (each with two versions), then a batch restore: every file back
/// byte-exact with its versions; the feed shows one `deleted` per file (with `trash_id`),
/// then one `restored` per file, on consecutive seqs. Listings and stat show live files only.
async fn delete_and_restore_tree(pg: bool) {
    let Some((_dir, s)) = server(
        "versions::delete_and_restore_tree",
        pg,
        VersionsKeep::Newest(10),
        Duration::from_secs(3600),
    )
    .await
    else {
        return;
    };
    let mut files = Vec::new();
    for i in 0..100u64 {
        let path = format!("tree/d{}/f{i}", i % 7);
        s.put(&path, &data(200, i)).await;
        let meta = s.put(&path, &data(300, 1000 + i)).await;
        files.push((path, meta));
    }
    s.put("treeless", b"stays").await;
    let since = latest_seq(&s).await;
    let r = s
        .client
        .delete(s.url("/api/v1/fs/tree/?recursive=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    assert_eq!(done["files"].as_array().unwrap().len(), 100);
    let batch = done["batch_id"].as_str().unwrap().to_string();
    let (_, listing) = s.get_json("/api/v1/list?prefix=tree/").await;
    assert_eq!(listing["entries"], json!([]));
    let (status, _) = s
        .get_json(&format!("/api/v1/stat?path={}", enc(&files[0].0)))
        .await;
    assert_eq!(status, 404);
    let (_, trash) = s.get_json("/api/v1/trash?prefix=tree/&limit=1000").await;
    let entries = trash["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 100);
    assert!(entries.iter().all(|e| e["batch_id"] == batch.as_str()));
    assert_eq!(entries[0]["version"], 2);
    // Paged.
    let (_, page) = s.get_json("/api/v1/trash?prefix=tree/&limit=60").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = s
        .get_json(&format!(
            "/api/v1/trash?prefix=tree/&limit=60&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 40);

    let r = s
        .client
        .post(s.url(&format!("/api/v1/trash/batches/{batch}/restore")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let restored: Value = r.json().await.unwrap();
    assert_eq!(restored["files"].as_array().unwrap().len(), 100);
    for (i, (path, meta)) in files.iter().enumerate() {
        let (status, body) = s.get_bytes(&format!("/api/v1/fs/{}", enc(path))).await;
        assert_eq!((status, body), (200, data(300, 1000 + i as u64)), "{path}");
        let id = meta["id"].as_str().unwrap();
        let (_, v) = s.get_json(&format!("/api/v1/files/{id}/versions")).await;
        let sizes: Vec<u64> = v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["size"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, [300, 200], "{path} keeps its versions");
    }
    let events = events_since(&s, since).await;
    assert_eq!(events.len(), 200);
    for (k, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_i64().unwrap(), since + 1 + k as i64, "gapless");
        let want = if k < 100 { "deleted" } else { "restored" };
        assert_eq!(e["kind"], want, "{e}");
        if k < 100 {
            assert!(e["trash_id"].is_string(), "{e}");
        }
    }
    let (status, _) = s
        .get_json(&format!("/api/v1/trash/batches/{batch}/restore"))
        .await;
    assert_eq!(status, 405);
    let r = s
        .client
        .post(s.url(&format!("/api/v1/trash/batches/{batch}/restore")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a restored batch is gone");
    fsck_clean(&s).await;
    s.stop().await;
}

/// Single deletes, restores to another path and onto a taken one, purge, and the
/// permanent-delete gate (off by default).
async fn trash_single_files(pg: bool) {
    let Some((_dir, s)) = server(
        "versions::trash_single_files",
        pg,
        VersionsKeep::Newest(10),
        Duration::from_secs(3600),
    )
    .await
    else {
        return;
    };
    let a = s.put("t/a", b"first").await;
    let id = a["id"].as_str().unwrap();
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{id}?permanent=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "permanent deletes are off by default");
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, trash) = s.get_json("/api/v1/trash").await;
    let entry = trash["entries"][0].clone();
    assert_eq!(entry["id"], id);
    assert_eq!(entry["batch_id"], Value::Null);
    let tid = entry["trash_id"].as_str().unwrap();
    s.put("t/a", b"occupant").await;
    let restore = s.url(&format!("/api/v1/trash/{tid}/restore"));
    let r = s.client.post(&restore).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "already_exists");
    let r = s
        .client
        .post(&restore)
        .json(&json!({"to": "t/elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back: Value = r.json().await.unwrap();
    assert_eq!(
        (back["id"].as_str(), back["version"].as_i64()),
        (Some(id), Some(1))
    );
    assert_eq!(s.get_bytes("/api/v1/fs/t/elsewhere").await.1, b"first");
    // Delete by path, then purge: the blob goes.
    let r = s
        .client
        .delete(s.url("/api/v1/fs/t/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, trash) = s.get_json("/api/v1/trash?prefix=t/").await;
    let tid = trash["entries"][0]["trash_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/trash/{tid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let sha = a["sha256"].as_str().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !blob_file(&s, sha).exists()
        })
        .await,
        "the purged entry's blob is collected"
    );
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/trash/{tid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    fsck_clean(&s).await;
    s.stop().await;
}

/// With `trash_retention = 1s`: expired entries disappear at once from the listing and with
/// their blobs within seconds, while blobs live files share stay; uploads of the content
/// being expired, racing the expiry, lose nothing (25 rounds).
async fn expiry(pg: bool) {
    let Some((_dir, s)) = server(
        "versions::expiry",
        pg,
        VersionsKeep::Newest(3),
        Duration::from_secs(1),
    )
    .await
    else {
        return;
    };
    let shared = s.put("live/shared", b"shared by a live file").await;
    let twin = s.put("tmp/twin", b"shared by a live file").await;
    let lonely = s.put("tmp/lonely", b"only in the trash").await;
    for m in [&twin, &lonely] {
        let id = m["id"].as_str().unwrap();
        let r = s
            .client
            .delete(s.url(&format!("/api/v1/files/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let lonely_blob = blob_file(&s, lonely["sha256"].as_str().unwrap());
    assert!(lonely_blob.exists());
    assert!(
        eventually(Duration::from_secs(10), || async { !lonely_blob.exists() }).await,
        "an expired entry's blob is collected"
    );
    let (_, trash) = s.get_json("/api/v1/trash").await;
    assert_eq!(trash["entries"], json!([]));
    assert_eq!(
        s.get_bytes("/api/v1/fs/live/shared").await.1,
        b"shared by a live file"
    );
    assert!(blob_file(&s, shared["sha256"].as_str().unwrap()).exists());

    for round in 0..25u64 {
        let content = data(4096, 50_000 + round);
        let doomed = s.put(&format!("tmp/r{round}"), &content).await;
        let id = doomed["id"].as_str().unwrap().to_string();
        s.client
            .delete(s.url(&format!("/api/v1/files/{id}")))
            .send()
            .await
            .unwrap();
        // Upload the same content elsewhere again and again while the entry expires.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1600);
        let mut n = 0;
        while tokio::time::Instant::now() < deadline {
            let path = format!("keep/r{round}/{}", n % 3);
            let other = format!("{path}b");
            let (a, b) = tokio::join!(s.put(&path, &content), s.put(&other, &content));
            assert_eq!(a["sha256"], b["sha256"]);
            n += 1;
        }
        for k in 0..3 {
            for suffix in ["", "b"] {
                let path = format!("keep/r{round}/{k}{suffix}");
                let (status, body) = s.get_bytes(&format!("/api/v1/fs/{}", enc(&path))).await;
                assert_eq!(status, 200, "round {round}: {path}");
                assert_eq!(
                    sha256_hex(&body),
                    sha256_hex(&content),
                    "round {round}: {path}"
                );
            }
        }
        assert!(
            blob_file(&s, &sha256_hex(&content)).exists(),
            "round {round}"
        );
    }
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    let metrics = r.text().await.unwrap();
    for name in [
        "vaultfs_trash_entries",
        "vaultfs_trash_bytes",
        "vaultfs_versions_retained",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    fsck_clean(&s).await;
    s.stop().await;
}

/// A token limited to a prefix sees and restores only its own trash and versions.
async fn prefixed_tokens(pg: bool) {
    let Some((_dir, s)) = server(
        "versions::prefixed_tokens",
        pg,
        VersionsKeep::Newest(10),
        Duration::from_secs(3600),
    )
    .await
    else {
        return;
    };
    // Tokens through the admin API (the first on the still open server), which works on
    // either backend.
    let make = |auth: Option<String>, scopes: &'static str, prefix: &'static str| {
        let mut req = s
            .client
            .post(s.url("/api/v1/admin/tokens"))
            .json(&json!({"scopes": scopes, "prefix": prefix, "label": "versions"}));
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let admin = make(None, "admin,read,write", "").await;
    let team = make(Some(admin.clone()), "read,write", "team-a/").await;
    let call = |t: &str, m: reqwest::Method, uri: &str| {
        s.client
            .request(m, s.url(uri))
            .header("authorization", format!("Bearer {t}"))
    };
    // Tokens made by another process are loaded within the server's reload interval.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let r = call(&team, reqwest::Method::GET, "/api/v1/trash?prefix=team-a/");
            r.send().await.unwrap().status() == 200
        })
        .await,
        "the new tokens are known"
    );
    let mut ids = Vec::new();
    for p in ["team-a/x", "team-b/y"] {
        for body in [&b"one"[..], b"two"] {
            let r = call(
                &admin,
                reqwest::Method::POST,
                &format!("/api/v1/files/upload?path={p}"),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
            assert!(r.status().is_success());
            if body == b"two" {
                ids.push(
                    r.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    let (a, b) = (&ids[0], &ids[1]);
    let get = |t: &str, uri: &str| call(t, reqwest::Method::GET, uri).send();
    assert_eq!(
        get(&team, &format!("/api/v1/files/{a}/versions"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get(&team, &format!("/api/v1/files/{b}/versions"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        get(&team, &format!("/api/v1/files/{b}/versions/1"))
            .await
            .unwrap()
            .status(),
        403
    );
    let r = call(
        &team,
        reqwest::Method::POST,
        &format!("/api/v1/files/{b}/versions/1/restore"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    for id in [a, b] {
        let r = call(
            &admin,
            reqwest::Method::DELETE,
            &format!("/api/v1/files/{id}"),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 204);
    }
    // The team's listing of everything shows its own entry only.
    let r = get(&team, "/api/v1/trash").await.unwrap();
    let trash: Value = r.json().await.unwrap();
    let paths: Vec<&str> = trash["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["team-a/x"]);
    assert_eq!(
        get(&team, "/api/v1/trash?prefix=team-b/")
            .await
            .unwrap()
            .status(),
        403
    );
    let r = get(&admin, "/api/v1/trash").await.unwrap();
    let all: Value = r.json().await.unwrap();
    let other = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "team-b/y")
        .unwrap()["trash_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = trash["entries"][0]["trash_id"]
        .as_str()
        .unwrap()
        .to_string();
    let post = |t: &str, uri: String| call(t, reqwest::Method::POST, &uri).send();
    assert_eq!(
        post(&team, format!("/api/v1/trash/{other}/restore"))
            .await
            .unwrap()
            .status(),
        403
    );
    let r = call(
        &team,
        reqwest::Method::DELETE,
        &format!("/api/v1/trash/{other}"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // Restoring into another prefix is refused too.
    let r = call(
        &team,
        reqwest::Method::POST,
        &format!("/api/v1/trash/{mine}/restore"),
    )
    .json(&json!({"to": "team-b/stolen"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        post(&team, format!("/api/v1/trash/{mine}/restore"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(&admin, format!("/api/v1/trash/{other}/restore"))
            .await
            .unwrap()
            .status(),
        200
    );
    s.stop().await;
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(false).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(true).await;
                }
            )*
        }
    };
}

on_both_backends!(
    round_trip,
    delete_and_restore_tree,
    trash_single_files,
    expiry,
    prefixed_tokens,
);

/// The permanent-delete setting: with it on, `?permanent=true` bypasses the trash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_delete_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config {
        versions_keep: VersionsKeep::Newest(10),
        trash_retention: Some(Duration::from_secs(3600)),
        allow_permanent_delete: true,
        ..Config::for_data_dir(dir.path())
    })
    .await;
    s.put("p/a", b"one").await;
    let m = s.put("p/a", b"two").await;
    let id = m["id"].as_str().unwrap();
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{id}?permanent=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (_, trash) = s.get_json("/api/v1/trash").await;
    assert_eq!(trash["entries"], json!([]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.blob_count().await == 0
        })
        .await,
        "the file and its version are gone with their blobs"
    );
    s.stop().await;
}

/// The CLI: `rm -r` is one recursive delete whose batch `trash restore --batch` brings
/// back; `versions`, `restore --version`, `download --version`, `trash ls|restore|purge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_versions_and_trash() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config {
        versions_keep: VersionsKeep::All,
        trash_retention: Some(Duration::from_secs(3600)),
        ..Config::for_data_dir(dir.path())
    })
    .await;
    let run = |args: Vec<String>| {
        let base = s.base.clone();
        let cwd = work.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
                .args(&args)
                .arg("--server")
                .arg(base)
                .current_dir(cwd)
                .env("RUST_LOG", "off")
                .env_remove("VAULTFS_TOKEN")
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{args:?}: {err}");
            (text, err)
        }
    };
    let args = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    for n in 1..=3u64 {
        s.put("c/doc", &data(100, n)).await;
    }
    s.put("c/other", b"other").await;
    let (out, _) = run(args(&["versions", "c/doc"])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("v3\t") && lines[0].ends_with("current"),
        "{out}"
    );
    run(args(&["download", "c/doc", "old.bin", "--version", "1"])).await;
    let old = tokio::fs::read(work.path().join("old.bin")).await.unwrap();
    assert_eq!(old, data(100, 1));
    let (out, _) = run(args(&["restore", "c/doc", "--version", "2", "--json"])).await;
    let meta: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(meta["version"], 4);
    assert_eq!(s.get_bytes("/api/v1/fs/c/doc").await.1, data(100, 2));

    let (_, err) = run(args(&["rm", "-r", "c"])).await;
    let batch = err
        .split("--batch ")
        .nth(1)
        .and_then(|rest| rest.get(..32))
        .unwrap_or_else(|| panic!("no batch id in {err}"))
        .to_string();
    let (out, _) = run(args(&["trash", "ls", "c/", "--json"])).await;
    assert_eq!(out.lines().count(), 2, "{out}");
    run(args(&["trash", "restore", "--batch", &batch])).await;
    assert_eq!(s.get_bytes("/api/v1/fs/c/other").await.1, b"other");
    let (_, v) = s.get_json("/api/v1/stat?path=c/doc").await;
    assert_eq!(v["version"], 4, "restored without a new version");

    let id = v["id"].as_str().unwrap();
    s.client
        .delete(s.url(&format!("/api/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    let (out, _) = run(args(&["trash", "ls", "--json"])).await;
    let entry: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let tid = entry["trash_id"].as_str().unwrap().to_string();
    run(args(&["trash", "restore", &tid, "--to", "c/doc2"])).await;
    assert_eq!(s.get_bytes("/api/v1/fs/c/doc2").await.1, data(100, 2));
    s.client
        .delete(s.url(&format!("/api/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    let (out, _) = run(args(&["trash", "ls"])).await;
    let tid = out.split('\t').next().unwrap().to_string();
    run(args(&["trash", "purge", &tid])).await;
    let (out, _) = run(args(&["trash", "ls"])).await;
    assert_eq!(out, "");
    s.stop().await;
}
