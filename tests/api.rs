//! API v1 against a real server: every route, every error code, conditional and range
//! requests, multipart, checksums, limits, dedupe and restart persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use base64::Engine;
use common::{data, enc, eventually, sha256_hex, TestServer};
use serde_json::{json, Value};
use vaultfs::config::Config;

fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn upload_download_roundtrip_by_id_and_path() {
    let (_dir, s) = TestServer::start().await;
    let body = data(300_000, 1);
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=releases/latest/app.tar.gz"))
        .header("content-type", "application/gzip")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-request-id"));
    let meta: Value = r.json().await.unwrap();
    assert_eq!(meta["path"], "releases/latest/app.tar.gz");
    assert_eq!(meta["size"], 300_000);
    assert_eq!(meta["sha256"], sha256_hex(&body));
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["content_type"], "application/gzip");
    for field in ["created_at", "modified_at"] {
        let t = meta[field].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(),
            "{field}={t}"
        );
    }
    let id = meta["id"].as_str().unwrap();

    let r = s
        .client
        .get(s.url(&format!("/api/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["etag"], format!("\"{}\"", sha256_hex(&body)).as_str());
    assert_eq!(h["content-length"], "300000");
    assert_eq!(h["content-type"], "application/gzip");
    assert!(httpdate::parse_http_date(h["last-modified"].to_str().unwrap()).is_ok());
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());

    let r = s
        .client
        .head(s.url(&format!("/api/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(r.headers()["etag"], h["etag"]);
    assert!(r.bytes().await.unwrap().is_empty());

    let (status, got) = s.get_bytes("/api/v1/fs/releases/latest/app.tar.gz").await;
    assert_eq!((status, got == body), (200, true));
    let r = s
        .client
        .head(s.url("/api/v1/fs/releases/latest/app.tar.gz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, m) = s.get_json(&format!("/api/v1/files/{id}/meta")).await;
    assert_eq!(status, 200);
    assert_eq!(m, meta);

    let (status, e) = s.get_json("/api/v1/fs/releases/nope").await;
    assert_eq!((status, err_code(&e)), (404, "not_found"));
    let (status, e) = s
        .get_json("/api/v1/files/00000000000000000000000000000000")
        .await;
    assert_eq!((status, err_code(&e)), (404, "not_found"));
    let (status, e) = s.get_json("/api/v1/files/not-an-id/meta").await;
    assert_eq!((status, err_code(&e)), (404, "not_found"));
    let (status, e) = s.get_json("/api/v1/nonexistent").await;
    assert_eq!((status, err_code(&e)), (404, "not_found"));
    let r = s.client.put(s.url("/api/v1/list")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "method_not_allowed");
    let (status, h) = s.get_json("/healthz").await;
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")));
    s.stop().await;
}

#[tokio::test]
async fn empty_file_and_default_content_type() {
    let (_dir, s) = TestServer::start().await;
    let meta = s.put("empty.bin", b"").await;
    assert_eq!(meta["size"], 0);
    assert_eq!(meta["content_type"], "application/octet-stream");
    let (status, got) = s.get_bytes("/api/v1/fs/empty.bin").await;
    assert_eq!((status, got.len()), (200, 0));
    s.stop().await;
}

#[tokio::test]
async fn replace_keeps_id_and_increments_version() {
    let (_dir, s) = TestServer::start().await;
    let m1 = s.put("a.txt", b"one").await;
    let r = s.upload("a.txt", b"two".to_vec()).await;
    assert_eq!(r.status(), 200);
    let m2: Value = r.json().await.unwrap();
    assert_eq!(m2["id"], m1["id"]);
    assert_eq!(m2["version"], 2);
    assert_eq!(m2["created_at"], m1["created_at"]);
    let m3 = s.put("a.txt", b"two").await;
    assert_eq!(m3["version"], 3, "same content is still a new version");
    let (_, got) = s.get_bytes("/api/v1/fs/a.txt").await;
    assert_eq!(got, b"two");
    s.stop().await;
}

#[tokio::test]
async fn conditional_writes() {
    let (_dir, s) = TestServer::start().await;
    let url = s.url("/api/v1/files/upload?path=c.txt");
    let r = s
        .client
        .post(&url)
        .header("if-none-match", "*")
        .body("v1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let m1: Value = r.json().await.unwrap();
    let r = s
        .client
        .post(&url)
        .header("if-none-match", "*")
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "precondition_failed");

    let etag = format!("\"{}\"", m1["sha256"].as_str().unwrap());
    let r = s
        .client
        .post(&url)
        .header("if-match", "\"deadbeef\"")
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = s
        .client
        .post(&url)
        .header("if-match", &etag)
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m2: Value = r.json().await.unwrap();
    assert_eq!(m2["version"], 2);
    // The old tag no longer matches: a lost update is refused.
    let r = s
        .client
        .post(&url)
        .header("if-match", &etag)
        .body("v3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=never.txt"))
        .header("if-match", "*")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "If-Match: * requires an existing file");
    let (_, got) = s.get_bytes("/api/v1/fs/c.txt").await;
    assert_eq!(got, b"v2");

    // Conditional reads.
    let id = m2["id"].as_str().unwrap();
    let etag2 = format!("\"{}\"", m2["sha256"].as_str().unwrap());
    let r = s
        .client
        .get(s.url(&format!("/api/v1/files/{id}")))
        .header("if-none-match", &etag2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag2.as_str());
    let r = s
        .client
        .get(s.url(&format!("/api/v1/files/{id}")))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lm = r.headers()["last-modified"].to_str().unwrap().to_string();
    let r = s
        .client
        .get(s.url(&format!("/api/v1/files/{id}")))
        .header("if-modified-since", &lm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    s.stop().await;
}

#[tokio::test]
async fn range_requests() {
    let (_dir, s) = TestServer::start().await;
    let body = data(1000, 7);
    let meta = s.put("r.bin", &body).await;
    let url = s.url(&format!("/api/v1/files/{}", meta["id"].as_str().unwrap()));
    let get = |range: &'static str| s.client.get(&url).header("range", range).send();

    let r = get("bytes=10-19").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[10..20]);

    let r = get("bytes=990-").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[990..]);

    let r = get("bytes=-5").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 995-999/1000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[995..]);

    let r = get("bytes=500-5000").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 500);

    let r = get("bytes=1000-").await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "range_not_satisfiable");

    let r = get("bytes=oops").await.unwrap();
    assert_eq!(r.status(), 416);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "invalid_range");

    // If-Range with a stale tag: the whole content.
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=0-0")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    let tag = format!("\"{}\"", meta["sha256"].as_str().unwrap());
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=0-0")
        .header("if-range", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);

    // By path, too.
    let r = s
        .client
        .get(s.url("/api/v1/fs/r.bin"))
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..4]);
    s.stop().await;
}

#[tokio::test]
async fn checksums_are_verified_and_mismatch_stores_nothing() {
    let (_dir, s) = TestServer::start().await;
    let body = data(50_000, 3);
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&body));
    let b64 = base64::engine::general_purpose::STANDARD.encode(digest);

    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=ok-digest.bin"))
        .header("content-digest", format!("sha-512=:AAAA:, sha-256=:{b64}:"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=ok-hex.bin"))
        .header("x-checksum-sha256", sha256_hex(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let wrong = sha256_hex(b"something else");
    for (name, value) in [
        ("x-checksum-sha256", wrong.clone()),
        (
            "content-digest",
            format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(hex::decode(&wrong).unwrap())
            ),
        ),
    ] {
        let r = s
            .client
            .post(s.url("/api/v1/files/upload?path=bad.bin"))
            .header(name, value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(err_code(&e), "checksum_mismatch");
    }
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=bad.bin"))
        .header("x-checksum-sha256", "xyz")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "invalid_digest");

    let (status, _) = s.get_bytes("/api/v1/fs/bad.bin").await;
    assert_eq!(status, 404, "a mismatched upload must not be visible");
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    assert_eq!(s.blob_count().await, 1, "only the good content is stored");
    s.stop().await;
}

#[tokio::test]
async fn multipart_uploads() {
    let (_dir, s) = TestServer::start().await;
    let form = reqwest::multipart::Form::new()
        .text("comment", "ignored form field")
        .part(
            "a",
            reqwest::multipart::Part::bytes(b"alpha".to_vec())
                .file_name("a.txt")
                .mime_str("text/plain")
                .unwrap(),
        )
        .part(
            "b",
            reqwest::multipart::Part::bytes(data(200_000, 9)).file_name("b.bin"),
        );
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=build/42"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["path"], "build/42/a.txt");
    assert_eq!(files[0]["content_type"], "text/plain");
    assert_eq!(files[1]["path"], "build/42/b.bin");
    let (_, got) = s.get_bytes("/api/v1/fs/build/42/b.bin").await;
    assert_eq!(got, data(200_000, 9));

    // Without a path: the filename alone.
    let form = reqwest::multipart::Form::new().part(
        "f",
        reqwest::multipart::Part::bytes(b"top".to_vec()).file_name("top.txt"),
    );
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, got) = s.get_bytes("/api/v1/fs/top.txt").await;
    assert_eq!(got, b"top");

    // A hostile filename is refused like any path.
    let form = reqwest::multipart::Form::new().part(
        "f",
        reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("../../etc/passwd"),
    );
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=build"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "invalid_path");

    // No file part at all.
    let form = reqwest::multipart::Form::new().text("only", "fields");
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "invalid_multipart");

    // A broken multipart body.
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body(
            "--XYZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\ntruncated",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = s.get_bytes("/api/v1/fs/x").await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[tokio::test]
async fn delete_with_and_without_if_match() {
    let (_dir, s) = TestServer::start().await;
    let m = s.put("d.txt", b"bye").await;
    let id = m["id"].as_str().unwrap();
    let url = s.url(&format!("/api/v1/files/{id}"));
    let r = s
        .client
        .delete(&url)
        .header("if-match", "\"nope\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = s
        .client
        .delete(&url)
        .header("if-match", format!("\"{}\"", m["sha256"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = s.client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let (status, _) = s.get_bytes("/api/v1/fs/d.txt").await;
    assert_eq!(status, 404);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.blob_count().await == 0
        })
        .await,
        "unreferenced blob collected"
    );

    let m = s.put("d2.txt", b"plain").await;
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{}", m["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    s.stop().await;
}

#[tokio::test]
async fn move_and_copy() {
    let (_dir, s) = TestServer::start().await;
    let a = s.put("src/a.txt", b"AAA").await;
    let b = s.put("dst/b.txt", b"BBB").await;
    let a_id = a["id"].as_str().unwrap();
    let mv = |id: &str, body: Value| {
        s.client
            .post(s.url(&format!("/api/v1/files/{id}/move")))
            .json(&body)
            .send()
    };

    // Target exists, no overwrite: 409.
    let r = mv(a_id, json!({"to": "dst/b.txt"})).await.unwrap();
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "already_exists");

    // Plain move keeps id and version.
    let r = mv(a_id, json!({"to": "moved/a.txt"})).await.unwrap();
    assert_eq!(r.status(), 200);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        (m["id"].as_str(), m["path"].as_str(), &m["version"]),
        (Some(a_id), Some("moved/a.txt"), &json!(1))
    );
    assert_eq!(s.get_bytes("/api/v1/fs/src/a.txt").await.0, 404);
    assert_eq!(s.get_bytes("/api/v1/fs/moved/a.txt").await.1, b"AAA");

    // Overwrite replaces the target, which is deleted.
    let r = mv(a_id, json!({"to": "dst/b.txt", "overwrite": true}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get_bytes("/api/v1/fs/dst/b.txt").await.1, b"AAA");
    let (status, _) = s
        .get_json(&format!("/api/v1/files/{}/meta", b["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 404, "the overwritten file is gone");

    // Invalid bodies and targets.
    let r = mv(a_id, json!({"to": "../escape"})).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "invalid_path");
    let r = mv(a_id, json!({"destination": "x"})).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(err_code(&e), "invalid_json");
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{a_id}/move")))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{a_id}/move")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = mv("0123456789abcdef0123456789abcdef", json!({"to": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Copy: new id, shared content, 201.
    let blobs_before = s.blob_count().await;
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{a_id}/copy")))
        .json(&json!({"to": "copies/a.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let c: Value = r.json().await.unwrap();
    assert_ne!(c["id"], json!(a_id));
    assert_eq!(c["sha256"], a["sha256"]);
    assert_eq!(c["version"], 1);
    assert_eq!(s.blob_count().await, blobs_before, "copy shares the blob");
    assert_eq!(s.get_bytes("/api/v1/fs/copies/a.txt").await.1, b"AAA");
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{a_id}/copy")))
        .json(&json!({"to": "copies/a.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{a_id}/copy")))
        .json(&json!({"to": "copies/a.txt", "overwrite": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Deleting the original keeps the copy readable.
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{a_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.get_bytes("/api/v1/fs/copies/a.txt").await.1, b"AAA");
    s.stop().await;
}

#[tokio::test]
async fn listing_with_prefix_delimiter_and_cursor() {
    let (_dir, s) = TestServer::start().await;
    for i in 0..25 {
        s.put(&format!("logs/{i:02}.txt"), format!("{i}").as_bytes())
            .await;
    }
    s.put("logs/sub/x.txt", b"x").await;
    s.put("logs/sub/deeper/y.txt", b"y").await;
    s.put("logs/zz/z.txt", b"z").await;
    s.put("other.txt", b"o").await;
    s.put("logs0", b"not under logs/").await;

    // Full listing of a prefix, paged by 10, while a writer adds entries ahead and behind.
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let mut url = "/api/v1/list?prefix=logs/&limit=10".to_string();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", enc(c)));
        }
        let (status, page) = s.get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["path"].as_str().unwrap().to_string());
        }
        pages += 1;
        if pages == 1 {
            s.put("logs/00-behind.txt", b"b").await; // behind the cursor: not revisited
            s.put("logs/zz/ahead.txt", b"a").await; // ahead of the cursor: seen
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by path");
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no duplicates across pages");
    assert!(seen.contains(&"logs/zz/ahead.txt".to_string()));
    assert!(seen.contains(&"logs/sub/deeper/y.txt".to_string()));
    assert!(!seen.iter().any(|p| p == "logs0" || p == "other.txt"));
    assert_eq!(seen.len(), 25 + 4);

    // Delimiter: files directly under, prefixes rolled up.
    let (_, page) = s
        .get_json("/api/v1/list?prefix=logs/&delimiter=/&limit=1000")
        .await;
    let prefixes: Vec<&str> = page["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(prefixes, vec!["logs/sub/", "logs/zz/"]);
    assert_eq!(page["entries"].as_array().unwrap().len(), 26);
    assert!(page["next_cursor"].is_null());

    // Delimiter with small pages: prefixes count toward the limit and are not repeated.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = "/api/v1/list?prefix=logs/&delimiter=/&limit=3".to_string();
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", enc(c)));
        }
        let (_, page) = s.get_json(&url).await;
        let n =
            page["entries"].as_array().unwrap().len() + page["prefixes"].as_array().unwrap().len();
        assert!(n <= 3);
        for e in page["entries"].as_array().unwrap() {
            all.push(e["path"].as_str().unwrap().to_string());
        }
        for p in page["prefixes"].as_array().unwrap() {
            all.push(p.as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(all.len(), 28);

    // Root listing with delimiter.
    let (_, page) = s.get_json("/api/v1/list?delimiter=/").await;
    let prefixes: Vec<&str> = page["prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(prefixes, vec!["logs/"]);
    let names: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["logs0", "other.txt"]);

    // Errors.
    let (status, e) = s.get_json("/api/v1/list?cursor=garbage!").await;
    assert_eq!((status, err_code(&e)), (400, "invalid_cursor"));
    let (status, e) = s.get_json("/api/v1/list?limit=abc").await;
    assert_eq!((status, err_code(&e)), (400, "invalid_query"));
    let (status, e) = s.get_json("/api/v1/list?delimiter=-").await;
    assert_eq!((status, err_code(&e)), (400, "invalid_query"));
    let (status, e) = s.get_json("/api/v1/list?prefix=../").await;
    assert_eq!((status, err_code(&e)), (400, "invalid_path"));
    let (status, page) = s.get_json("/api/v1/list?limit=99999").await;
    assert_eq!(status, 200, "limit is clamped to 10000");
    assert!(page["entries"].as_array().unwrap().len() <= 10_000);
    s.stop().await;
}

/// Raw, already-encoded query values an attacker might send, and what they decode to.
const HOSTILE_PATHS: &[&str] = &[
    "",
    "%2F",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "..",
    "../x",
    "a/../../x",
    "%2e%2e/x",
    "%2E%2E%2Fx",
    "%252e%252e%252fx",
    "a/./b",
    "a//b",
    "a/",
    "..%5Cx",
    "a%5Cb",
    "C:%5CWindows%5Csystem32",
    "a%00b",
    "a%2500b",
    "%0Aline",
    "a%09tab",
    "a%7Fdel",
    "%C0%AE%C0%AE/x",
    "%EF%BC%8E%EF%BC%8E%EF%BC%8Fx",
    "%EF%BC%8E%EF%BC%8E/x",
    "a%EF%BC%BCb",
    "evil%E2%80%AEtxt.exe",
    "trailing.%2Fx",
    "trailing%20/x",
    "%FF%FE",
];

#[tokio::test]
async fn hostile_paths_are_rejected_everywhere() {
    let (_dir, s) = TestServer::start().await;
    let target = s.put("legit.txt", b"ok").await;
    let id = target["id"].as_str().unwrap();
    let long_segment = "x".repeat(256);
    let long_path = format!("{}y", "abcdefgh/".repeat(456));
    let mut cases: Vec<String> = HOSTILE_PATHS.iter().map(|s| s.to_string()).collect();
    cases.push(long_segment.clone());
    cases.push(long_path.clone());
    assert!(cases.len() >= 25);
    for raw in &cases {
        let r = s
            .client
            .post(s.url(&format!("/api/v1/files/upload?path={raw}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "upload path {raw:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(err_code(&e), "invalid_path", "upload path {raw:?}: {e}");
    }
    // Move and copy targets (JSON strings, decoded once by the server's percent rule).
    let decoded: Vec<String> = vec![
        "../x".into(),
        "/abs".into(),
        "a//b".into(),
        "a\\b".into(),
        "a\u{0}b".into(),
        "\u{FF0E}\u{FF0E}\u{FF0F}x".into(),
        "%2e%2e%2fx".into(),
        "a\u{202E}b".into(),
        long_segment.clone(),
        long_path.clone(),
    ];
    for to in &decoded {
        for op in ["move", "copy"] {
            let r = s
                .client
                .post(s.url(&format!("/api/v1/files/{id}/{op}")))
                .json(&json!({"to": to}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{op} to {to:?}");
            let e: Value = r.json().await.unwrap();
            assert_eq!(err_code(&e), "invalid_path");
        }
    }
    // By-path reads.
    // Sent raw: an HTTP client library would normalize `%2e%2e` away before sending.
    for raw in [
        "..%2F..%2Fetc%2Fpasswd",
        "a%2F%2Fb",
        "%2e%2e",
        "%2e%2e/x",
        "x/%2E%2E/y",
        "x%00",
        "%C0%AE%C0%AE",
        "a%5Cb",
    ] {
        let req = format!(
            "GET /api/v1/fs/{raw} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let answer = s.raw(req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "fs path {raw:?}: {answer}"
        );
        assert!(
            answer.contains("\"invalid_path\""),
            "fs path {raw:?}: {answer}"
        );
    }
    // Nothing was created by any of it.
    let (_, page) = s.get_json("/api/v1/list").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn nfc_and_nfd_name_the_same_file() {
    let (_dir, s) = TestServer::start().await;
    let nfd = "caf\u{0065}\u{0301}.txt";
    let nfc = "caf\u{00E9}.txt";
    let m1 = s.put(nfd, b"one").await;
    assert_eq!(m1["path"], nfc);
    let m2 = s.put(nfc, b"two").await;
    assert_eq!(m2["id"], m1["id"]);
    assert_eq!(m2["version"], 2);
    let (status, got) = s.get_bytes(&format!("/api/v1/fs/{}", enc(nfd))).await;
    assert_eq!((status, got.as_slice()), (200, b"two".as_slice()));
    s.stop().await;
}

#[tokio::test]
async fn size_limit_with_and_without_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_upload_size: 64 * 1024,
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;

    // Declared too large: refused before any byte is read.
    let req = "POST /api/v1/files/upload?path=big1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n";
    let answer = s.raw(req.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");

    // Chunked, no length: cut off as soon as the limit is passed.
    let mut req = b"POST /api/v1/files/upload?path=big2 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(b"1000\r\n");
        req.extend_from_slice(&[b'a'; 0x1000]);
        req.extend_from_slice(b"\r\n");
    }
    let answer = s.raw(&req, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too_large\""), "{answer}");

    // Exactly at the limit is fine.
    let r = s.upload("at-limit", vec![7u8; 64 * 1024]).await;
    assert_eq!(r.status(), 201);
    for p in ["big1", "big2"] {
        assert_eq!(s.get_bytes(&format!("/api/v1/fs/{p}")).await.0, 404);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    s.stop().await;
}

#[tokio::test]
async fn interrupted_upload_leaves_nothing() {
    let (_dir, s) = TestServer::start().await;
    let mut req = b"POST /api/v1/files/upload?path=partial.bin HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    req.extend_from_slice(&[1u8; 100_000]);
    {
        use tokio::io::AsyncWriteExt;
        let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(&req).await.unwrap();
        // Let the server start streaming to a temp file, then vanish.
        assert!(
            eventually(Duration::from_secs(5), || async {
                s.temp_count().await == 1
            })
            .await
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await,
        "temp file removed"
    );
    assert_eq!(s.get_bytes("/api/v1/fs/partial.bin").await.0, 404);
    // The server keeps serving everyone else.
    s.put("after.bin", b"fine").await;
    s.stop().await;
}

#[tokio::test]
async fn identical_content_is_stored_once() {
    let (_dir, s) = TestServer::start().await;
    let body = data(100_000, 5);
    let a = s.put("one.bin", &body).await;
    let b = s.put("two.bin", &body).await;
    assert_eq!(a["sha256"], b["sha256"]);
    assert_eq!(s.blob_count().await, 1);
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{}", a["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.blob_count().await, 1, "still referenced by two.bin");
    assert_eq!(s.get_bytes("/api/v1/fs/two.bin").await.1, body);
    // Replacing the last reference frees the old blob.
    s.put("two.bin", b"new content").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.blob_count().await == 1
        })
        .await
    );
    assert_eq!(s.get_bytes("/api/v1/fs/two.bin").await.1, b"new content");
    s.stop().await;
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let mut metas = Vec::new();
    for i in 0..20 {
        metas.push((
            i,
            s.put(&format!("persist/{i}.bin"), &data(10_000 + i, i as u64))
                .await,
        ));
    }
    let moved = s.put("persist/moveme", b"m").await;
    let r = s
        .client
        .post(s.url(&format!(
            "/api/v1/files/{}/move",
            moved["id"].as_str().unwrap()
        )))
        .json(&json!({"to": "persist/moved"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;

    // A second server may not open a directory that is in use.
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let second = vaultfs::app::AppState::open(Config::for_data_dir(dir.path())).await;
    assert!(
        second.is_err(),
        "data directory lock must refuse a second process"
    );
    for (i, meta) in &metas {
        let (status, m) = s
            .get_json(&format!(
                "/api/v1/files/{}/meta",
                meta["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200);
        assert_eq!(&m, meta);
        assert_eq!(
            s.get_bytes(&format!("/api/v1/fs/persist/{i}.bin")).await.1,
            data(10_000 + i, *i as u64)
        );
    }
    assert_eq!(s.get_bytes("/api/v1/fs/persist/moved").await.1, b"m");
    let (_, page) = s.get_json("/api/v1/list?prefix=persist/").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 21);
    s.stop().await;
}

/// An upload refused before its body is read (412 here) still reaches the client as that
/// answer, not as a connection reset, and the connection is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_clients_that_are_still_sending() {
    let (_d, s) = TestServer::start().await;
    s.put("early/x", b"exists").await;
    let body = data(16 << 20, 5);
    for _ in 0..5 {
        let r = s
            .client
            .post(s.url("/api/v1/files/upload?path=early/x"))
            .header("if-none-match", "*")
            .body(body.clone())
            .send()
            .await
            .expect("the answer arrives, not a reset");
        assert_eq!(r.status(), 412);
        assert_eq!(r.headers()["connection"], "close");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "precondition_failed");
    }
    // A simple client that sends its whole body before it reads (Python's http.client, many
    // scripts): the server drains instead of resetting, so the 412 arrives. Without the
    // lingering close, the write fails with a broken pipe and the answer is lost.
    for _ in 0..3 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let len = 32usize << 20;
        let head = format!(
            "POST /api/v1/files/upload?path=early/x HTTP/1.1\r\nhost: localhost\r\n\
             if-none-match: *\r\ncontent-length: {len}\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..32 {
            sock.write_all(&chunk)
                .await
                .expect("the server drains the refused body");
        }
        let mut answer = Vec::new();
        let _ = sock.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 412"), "{answer}");
    }
    // The server keeps serving on fresh connections.
    assert_eq!(
        s.get_bytes("/api/v1/fs/early/x").await,
        (200, b"exists".to_vec())
    );
    s.stop().await;
}
