//! tus 1.0 at `/api/v1/tus/`: the protocol's status codes (nothing changes on an error),
//! completion through the upload pipeline (one event, byte-exact), takeover of a stale PATCH,
//! expiry, the real clients (tuspy, tus-js-client; installed by `.ci/tus-clients.sh`), and a
//! SIGKILL loop in which every acknowledged offset survives.
//!
//! CI runs 5 kills; `VAULTFS_TUS_CRASH_ITERATIONS=50 cargo test --test tus -- --nocapture`
//! runs the full loop and prints the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::{data, enc, sha256_hex, TestServer};
use reqwest::StatusCode;
use vaultfs::config::Config;

const OCTETS: &str = "application/offset+octet-stream";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn meta_path(path: &str) -> String {
    format!("path {}", b64(path.as_bytes()))
}

async fn create(
    client: &reqwest::Client,
    base: &str,
    length: Option<u64>,
    metadata: &str,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{base}/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-metadata", metadata);
    req = match length {
        Some(l) => req.header("upload-length", l.to_string()),
        None => req.header("upload-defer-length", "1"),
    };
    req.send().await.unwrap()
}

async fn create_url(client: &reqwest::Client, base: &str, length: u64, path: &str) -> String {
    let r = create(client, base, Some(length), &meta_path(path)).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with("/api/v1/tus/"), "{loc}");
    format!("{base}{loc}")
}

async fn patch(
    client: &reqwest::Client,
    url: &str,
    offset: u64,
    body: Vec<u8>,
    checksum: Option<String>,
) -> reqwest::Response {
    let mut req = client
        .patch(url)
        .header("tus-resumable", "1.0.0")
        .header("content-type", OCTETS)
        .header("upload-offset", offset.to_string());
    if let Some(c) = checksum {
        req = req.header("upload-checksum", c);
    }
    req.body(body).send().await.unwrap()
}

async fn head(client: &reqwest::Client, url: &str) -> reqwest::Response {
    client
        .head(url)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap()
}

async fn offset_of(client: &reqwest::Client, url: &str) -> u64 {
    let r = head(client, url).await;
    assert_eq!(r.status(), 200, "HEAD {url}");
    r.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn sha1_b64(data: &[u8]) -> String {
    use sha1::Digest;
    format!("sha1 {}", b64(&sha1::Sha1::digest(data)))
}

async fn events(s: &TestServer) -> Vec<serde_json::Value> {
    let (_, page) = s.get_json("/api/v1/events?since=0&limit=1000").await;
    page["events"].as_array().cloned().unwrap_or_default()
}

async fn staged_sessions(data_dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(mut rd) = tokio::fs::read_dir(data_dir.join("tus")).await {
        while let Ok(Some(_)) = rd.next_entry().await {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_answers_with_its_status_codes_and_errors_change_nothing() {
    let (_dir, s) = TestServer::start().await;
    let c = &s.client;
    let base = &s.base;

    // OPTIONS: discovery, no Tus-Resumable needed.
    let r = c
        .request(reqwest::Method::OPTIONS, format!("{base}/api/v1/tus/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let h = r.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(h["tus-resumable"], "1.0.0");
    let ext = h["tus-extension"].to_str().unwrap();
    for e in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} in {ext}");
    }
    assert_eq!(h["tus-checksum-algorithm"], "sha1,md5,sha256");
    assert!(h["tus-max-size"].to_str().unwrap().parse::<u64>().unwrap() > 0);

    // Tus-Resumable missing or wrong: 412.
    let r = c
        .post(format!("{base}/api/v1/tus/"))
        .header("upload-length", "10")
        .header("upload-metadata", meta_path("t/a.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    // No target: 400.
    let r = create(c, base, Some(10), "").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // `commit` is reserved: refused.
    let r = create(
        c,
        base,
        Some(10),
        &format!("{},commit {}", meta_path("t/a.bin"), b64(b"c1")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("commit"));

    let body = data(300_000, 1);
    let url = create_url(c, base, body.len() as u64, "t/a.bin").await;
    let r = head(c, &url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["upload-offset"], "0");
    assert_eq!(r.headers()["upload-length"], "300000");
    assert!(r.headers().contains_key("upload-expires"));

    // Wrong content type: 415. Wrong offset: 409. Wrong checksum: 460. Offset unchanged.
    let r = c
        .patch(&url)
        .header("tus-resumable", "1.0.0")
        .header("content-type", "application/octet-stream")
        .header("upload-offset", "0")
        .body(body[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = patch(c, &url, 5, body[..1000].to_vec(), None).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = patch(
        c,
        &url,
        0,
        body[..100_000].to_vec(),
        Some(sha1_b64(b"something else")),
    )
    .await;
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(offset_of(c, &url).await, 0, "offset unchanged after 460");
    let r = patch(
        c,
        &url,
        0,
        body[..100_000].to_vec(),
        Some("crc32 AAAA".into()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "unknown algorithm");
    assert_eq!(offset_of(c, &url).await, 0);

    // Right checksums (sha1, md5, sha256): accepted.
    let r = patch(
        c,
        &url,
        0,
        body[..100_000].to_vec(),
        Some(sha1_b64(&body[..100_000])),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["upload-offset"], "100000");
    assert!(r.headers().contains_key("upload-expires"));
    use md5::Digest as _;
    let md5 = format!("md5 {}", b64(&md5::Md5::digest(&body[100_000..200_000])));
    let r = patch(c, &url, 100_000, body[100_000..200_000].to_vec(), Some(md5)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Past the length: 413, nothing kept.
    let mut long = body[200_000..].to_vec();
    long.push(0);
    let r = patch(c, &url, 200_000, long, None).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(offset_of(c, &url).await, 200_000);
    // Nothing visible before the last byte.
    let (status, _) = s.get_bytes("/api/v1/fs/t/a.bin").await;
    assert_eq!(status, 404);
    assert!(events(&s).await.is_empty());
    let sha = {
        use sha2::Digest as _;
        format!("sha256 {}", b64(&sha2::Sha256::digest(&body[200_000..])))
    };
    let r = patch(c, &url, 200_000, body[200_000..].to_vec(), Some(sha)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["upload-offset"], "300000");
    let (status, got) = s.get_bytes("/api/v1/fs/t/a.bin").await;
    assert_eq!(status, 200);
    assert_eq!(got, body, "byte-exact");
    let evs = events(&s).await;
    assert_eq!(evs.len(), 1, "exactly one event: {evs:?}");
    assert_eq!(evs[0]["kind"], "created");
    assert_eq!(evs[0]["sha256"], sha256_hex(&body));
    // A finished upload's HEAD still answers; a PATCH at its end is a no-op.
    assert_eq!(offset_of(c, &url).await, 300_000);
    assert_eq!(staged_sessions(&s.data_dir).await, 0, "staging removed");

    // Unknown upload: 404 on HEAD and PATCH.
    let unknown = format!("{base}/api/v1/tus/0123456789abcdef");
    assert_eq!(head(c, &unknown).await.status(), 404);
    assert_eq!(patch(c, &unknown, 0, vec![1], None).await.status(), 404);

    // Concatenation: two partials, one final; PATCH on the final: 403.
    let part = |i: u64| data(70_000, 10 + i);
    let mut partial_urls = Vec::new();
    for i in 0..2 {
        let r = c
            .post(format!("{base}/api/v1/tus/"))
            .header("tus-resumable", "1.0.0")
            .header("upload-concat", "partial")
            .header("upload-length", "70000")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let u = format!("{base}{}", r.headers()["location"].to_str().unwrap());
        let r = patch(c, &u, 0, part(i), None).await;
        assert_eq!(r.status(), 204);
        partial_urls.push(u);
    }
    // An unfinished partial refuses the final.
    let r = c
        .post(format!("{base}/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-concat", "partial")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    let unfinished = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let final_of = |urls: Vec<String>| {
        let paths: Vec<String> = urls
            .iter()
            .map(|u| u.trim_start_matches(base).to_string())
            .collect();
        c.post(format!("{base}/api/v1/tus/"))
            .header("tus-resumable", "1.0.0")
            .header("upload-concat", format!("final;{}", paths.join(" ")))
            .header("upload-metadata", meta_path("t/concat.bin"))
            .send()
    };
    let r = final_of(vec![partial_urls[0].clone(), unfinished.clone()])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = final_of(partial_urls.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let final_url = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let (status, got) = s.get_bytes("/api/v1/fs/t/concat.bin").await;
    assert_eq!(status, 200);
    assert_eq!(got, [part(0), part(1)].concat());
    let r = head(c, &final_url).await;
    assert_eq!(r.headers()["upload-offset"], "140000");
    assert!(r.headers()["upload-concat"]
        .to_str()
        .unwrap()
        .starts_with("final;"));
    let before = events(&s).await.len();
    let r = patch(c, &final_url, 140_000, vec![1], None).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(events(&s).await.len(), before, "nothing changed");

    // Termination.
    let r = c
        .delete(&unfinished)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(head(c, &unfinished).await.status(), 404);

    // Deferred length, declared on the last PATCH; creation-with-upload.
    let r = create(c, base, None, &meta_path("t/deferred.bin")).await;
    assert_eq!(r.status(), 201);
    let u = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    assert_eq!(head(c, &u).await.headers()["upload-defer-length"], "1");
    let r = patch(c, &u, 0, b"hello ".to_vec(), None).await;
    assert_eq!(r.status(), 204);
    let r = c
        .patch(&u)
        .header("tus-resumable", "1.0.0")
        .header("content-type", OCTETS)
        .header("upload-offset", "6")
        .header("upload-length", "11")
        .body(b"world".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        s.get_bytes("/api/v1/fs/t/deferred.bin").await.1,
        b"hello world"
    );
    let r = c
        .post(format!("{base}/api/v1/tus/?path=t/dir/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .header("upload-metadata", format!("filename {}", b64(b"c.txt")))
        .header("content-type", OCTETS)
        .body(b"12345".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["upload-offset"], "5");
    assert_eq!(s.get_bytes("/api/v1/fs/t/dir/c.txt").await.1, b"12345");
    // if_none_match: the path exists now, so the creation is refused (412).
    let r = create(
        c,
        base,
        Some(1),
        &format!("{},if_none_match {}", meta_path("t/dir/c.txt"), b64(b"*")),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // A wrong whole-file sha256: refused at the last byte, nothing visible, session ended.
    let r = create(
        c,
        base,
        Some(3),
        &format!(
            "{},sha256 {}",
            meta_path("t/bad.bin"),
            b64(hex::encode([0u8; 32]).as_bytes())
        ),
    )
    .await;
    let u = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    let r = patch(c, &u, 0, b"abc".to_vec(), None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.get_bytes("/api/v1/fs/t/bad.bin").await.0, 404);
    assert_eq!(head(c, &u).await.status(), 404);
    assert_eq!(staged_sessions(&s.data_dir).await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_answer_410_and_their_staging_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        tus_expiry: Duration::from_secs(1),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let c = &s.client;
    let url = create_url(c, &s.base, 100, "t/expired.bin").await;
    assert_eq!(patch(c, &url, 0, vec![7; 50], None).await.status(), 204);
    assert_eq!(staged_sessions(&s.data_dir).await, 1);
    let gone = common::eventually(Duration::from_secs(10), || async {
        staged_sessions(&s.data_dir).await == 0
    })
    .await;
    assert!(gone, "the sweep removed the expired session's bytes");
    assert_eq!(head(c, &url).await.status(), StatusCode::GONE);
    assert_eq!(
        patch(c, &url, 50, vec![7; 50], None).await.status(),
        StatusCode::GONE
    );
    assert_eq!(s.get_bytes("/api/v1/fs/t/expired.bin").await.0, 404);
    assert!(events(&s).await.is_empty());
    s.stop().await;
}

/// A client whose PATCH hangs on a half-dead connection reconnects: its new PATCH takes the
/// session over at once (the old request is ended), never 423.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_patch_takes_over_a_stale_one() {
    let (_dir, s) = TestServer::start().await;
    let c = &s.client;
    let body = data(1 << 20, 3);
    let url = create_url(c, &s.base, body.len() as u64, "t/takeover.bin").await;
    // The stale PATCH: a few bytes, then silence (the connection stays open).
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let stale = tokio::spawn(
        c.patch(&url)
            .header("tus-resumable", "1.0.0")
            .header("content-type", OCTETS)
            .header("upload-offset", "0")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    tx.send(body[..1000].to_vec()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let r = patch(c, &url, 0, body.clone(), None).await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    eprintln!("takeover: the new PATCH finished {took:?} after it was sent");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(s.get_bytes("/api/v1/fs/t/takeover.bin").await.1, body);
    drop(tx);
    let _ = stale.await;
    s.stop().await;
}

/// Where `.ci/tus-clients.sh` put the clients, when it did.
fn clients() -> Option<(PathBuf, PathBuf)> {
    let home = PathBuf::from(std::env::var("HOME").ok()?);
    let python = std::env::var("VAULTFS_TUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".cache/vaultfs-venv-tus/bin/python"));
    let modules = std::env::var("VAULTFS_TUS_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".cache/vaultfs-node-tus/node_modules"));
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (python.exists() && modules.join("tus-js-client").exists() && node_ok)
        .then_some((python, modules))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tus_clients")
        .join(name)
}

async fn run(cmd: &mut tokio::process::Command) -> serde_json::Value {
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_real_clients() {
    let Some((python, modules)) = clients() else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: tus_real_clients: run .ci/tus-clients.sh"
        );
        return;
    };
    let (dir, s) = TestServer::start().await;
    let endpoint = format!("{}/api/v1/tus/", s.base);
    let work = dir.path().join("client-work");
    tokio::fs::create_dir_all(&work).await.unwrap();

    // tuspy: 48 MiB in 4 MiB chunks, sha1 per chunk; interrupted after about half (the
    // process exits), then resumed from the URL it stored.
    let body = data(48 << 20, 48);
    let file = work.join("py.bin");
    tokio::fs::write(&file, &body).await.unwrap();
    let store = work.join("tuspy-store.json");
    let py = |stop: Option<u64>| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(script("tuspy_upload.py"))
            .arg(&endpoint)
            .arg(&file)
            .arg("tus/py.bin")
            .arg(&store);
        if let Some(stop) = stop {
            cmd.arg(stop.to_string());
        }
        cmd
    };
    let first = run(&mut py(Some(24 << 20))).await;
    let url = first["url"].as_str().unwrap().to_string();
    let half = first["offset"].as_u64().unwrap();
    assert!((24 << 20..48 << 20).contains(&half), "{first}");
    assert_eq!(s.get_bytes("/api/v1/fs/tus/py.bin").await.0, 404);
    assert_eq!(offset_of(&s.client, &url).await, half);
    let second = run(&mut py(None)).await;
    assert_eq!(second["url"], first["url"], "resumed from the stored URL");
    assert_eq!(second["started_at"].as_u64().unwrap(), half, "{second}");
    let (status, got) = s.get_bytes("/api/v1/fs/tus/py.bin").await;
    assert_eq!(status, 200);
    assert!(got == body, "tuspy upload is byte-exact");
    eprintln!("tuspy: interrupted at {half} bytes, resumed there, 48 MiB byte-exact");

    // tus-js-client: parallelUploads 4 (partials + final), then uploadDataDuringCreation.
    let js = |mode: &str, file: &Path, target: &str| {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(script("tus_js.mjs"))
            .arg(mode)
            .arg(&endpoint)
            .arg(file)
            .arg(target)
            .env("NODE_MODULES_DIR", &modules);
        cmd
    };
    let body = data(9 << 20, 9);
    let file = work.join("js.bin");
    tokio::fs::write(&file, &body).await.unwrap();
    run(&mut js("parallel", &file, "tus/js-parallel.bin")).await;
    assert!(s.get_bytes("/api/v1/fs/tus/js-parallel.bin").await.1 == body);
    run(&mut js("creation", &file, "tus/js-creation.bin")).await;
    assert!(s.get_bytes("/api/v1/fs/tus/js-creation.bin").await.1 == body);
    let evs = events(&s).await;
    assert_eq!(evs.len(), 3, "one event per upload: {evs:?}");
    // abort(true): terminated, nothing of it remains.
    let out = run(&mut js("abort", &file, "tus/js-aborted.bin")).await;
    let url = out["url"].as_str().unwrap();
    assert_eq!(head(&s.client, url).await.status(), 404);
    assert_eq!(s.get_bytes("/api/v1/fs/tus/js-aborted.bin").await.0, 404);
    let settled = common::eventually(Duration::from_secs(5), || async {
        staged_sessions(&s.data_dir).await == 0
    })
    .await;
    assert!(settled, "no staging left");
    assert_eq!(events(&s).await.len(), 3);
    eprintln!("tus-js-client: parallelUploads 4, uploadDataDuringCreation and abort(true) passed");
    s.stop().await;
}

struct Server {
    child: tokio::process::Child,
    base: String,
}

async fn start_binary(dir: &Path) -> Server {
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

fn rand(below: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) % below.max(1)
}

/// SIGKILL at random moments while uploads PATCH away: after every restart each session's
/// HEAD offset is at least the last one acknowledged, the bytes up to it are the right
/// ones (the upload continues from there and ends byte-exact), and nothing is visible early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_offsets_survive_sigkill() {
    let iterations: u64 = std::env::var("VAULTFS_TUS_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    const UPLOADS: u64 = 4;
    const LEN: usize = 24 << 20;
    let bodies: Vec<Vec<u8>> = (0..UPLOADS).map(|i| data(LEN, 500 + i)).collect();
    let mut urls: Vec<Option<String>> = vec![None; UPLOADS as usize];
    let mut acked = vec![0u64; UPLOADS as usize];
    let mut lost_bytes = 0u64;
    let mut checks = 0u64;
    for _ in 0..iterations {
        let server = start_binary(&data_dir).await;
        // After the restart: every acknowledged offset is still there.
        for i in 0..UPLOADS as usize {
            let Some(url) = &urls[i] else { continue };
            let url = format!("{}{url}", server.base);
            let r = head(&client, &url).await;
            if acked[i] as usize == LEN {
                continue;
            }
            assert_eq!(r.status(), 200, "session {i} after restart");
            let now: u64 = r.headers()["upload-offset"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            if now < acked[i] {
                lost_bytes += acked[i] - now;
            }
            checks += 1;
            acked[i] = now.max(acked[i]);
        }
        let mut workers = Vec::new();
        for i in 0..UPLOADS as usize {
            let (client, base) = (client.clone(), server.base.clone());
            let body = bodies[i].clone();
            let (mut url, mut offset) = (urls[i].clone(), acked[i]);
            workers.push(tokio::spawn(async move {
                if offset as usize == LEN {
                    return (url, offset);
                }
                if url.is_none() {
                    let r = create(
                        &client,
                        &base,
                        Some(LEN as u64),
                        &meta_path(&format!("crash/{i}.bin")),
                    )
                    .await;
                    url = Some(r.headers()["location"].to_str().unwrap().to_string());
                }
                let full = format!("{base}{}", url.as_deref().unwrap_or(""));
                loop {
                    let n = (32 * 1024 + rand(256 * 1024)) as usize;
                    let end = (offset as usize + n).min(LEN);
                    let r = client
                        .patch(&full)
                        .header("tus-resumable", "1.0.0")
                        .header("content-type", OCTETS)
                        .header("upload-offset", offset.to_string())
                        .body(body[offset as usize..end].to_vec())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 204 => {
                            offset = r.headers()["upload-offset"]
                                .to_str()
                                .unwrap()
                                .parse()
                                .unwrap();
                            if offset as usize == LEN {
                                return (url, offset);
                            }
                        }
                        _ => return (url, offset), // the server is gone
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150 + rand(600))).await;
        let mut server = server;
        server.child.start_kill().unwrap(); // SIGKILL
        server.child.wait().await.unwrap();
        for (i, w) in workers.into_iter().enumerate() {
            let (url, offset) = w.await.unwrap();
            urls[i] = url;
            acked[i] = offset;
        }
    }
    // Finish every upload from its HEAD offset; the results are byte-exact.
    let server = start_binary(&data_dir).await;
    let base = &server.base;
    for i in 0..UPLOADS as usize {
        let path = format!("crash/{i}.bin");
        if acked[i] as usize != LEN {
            let url = match &urls[i] {
                Some(u) => format!("{base}{u}"),
                None => create_url(&client, base, LEN as u64, &path).await,
            };
            let now = offset_of(&client, &url).await;
            if now < acked[i] {
                lost_bytes += acked[i] - now;
            }
            assert!(
                s_get(&client, base, &path).await.is_none(),
                "nothing visible before the last byte"
            );
            let r = patch(&client, &url, now, bodies[i][now as usize..].to_vec(), None).await;
            assert_eq!(r.status(), 204, "finishing {path}");
        }
        let got = s_get(&client, base, &path).await.expect("committed");
        assert!(got == bodies[i], "{path} is byte-exact");
    }
    eprintln!(
        "tus crash loop: {iterations} SIGKILLs, {checks} offsets checked after restarts, \
         acknowledged bytes lost: {lost_bytes}"
    );
    assert_eq!(lost_bytes, 0);
    assert!(checks > 0, "some sessions were mid-upload at a kill");
    let left = staged_sessions(&data_dir).await;
    assert_eq!(left, 0, "no staging left once all finished");
    drop(server);
}

async fn s_get(client: &reqwest::Client, base: &str, path: &str) -> Option<Vec<u8>> {
    let r = client
        .get(format!("{base}/api/v1/fs/{}", enc(path)))
        .send()
        .await
        .unwrap();
    if r.status() == 200 {
        Some(r.bytes().await.unwrap().to_vec())
    } else {
        None
    }
}

/// A TCP proxy in front of `upstream` that cuts the connection carrying the upload each time
/// another `every` bytes went from the client to the server. Returns its address.
async fn cutting_proxy(upstream: std::net::SocketAddr, every: u64) -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let before = sent.fetch_add(n as u64, Ordering::Relaxed);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        if (before + n as u64) / every > before / every {
                            return; // the cut: both directions end, both sockets close
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    addr
}

/// `vaultfs upload` of 256 MiB through tus (4 parallel parts) over a connection cut every
/// 8 MiB: it finishes byte-exact, and re-sends less than one chunk per cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finishes_a_large_upload_over_a_connection_cut_every_8_mib() {
    let (_dir, s) = TestServer::start().await;
    const SIZE: usize = 256 << 20;
    const EVERY: u64 = 8 << 20;
    let proxy = cutting_proxy(s.addr, EVERY).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big.bin");
    let body = data(SIZE, 256);
    tokio::fs::write(&file, &body).await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["upload"])
        .arg(&file)
        .args(["big/big.bin", "--json", "--retries", "8", "--server"])
        .arg(format!("http://{proxy}"))
        .env("XDG_STATE_HOME", work.path().join("state"))
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let note = result["note"].as_str().unwrap_or_default().to_string();
    let resent: u64 = note
        .split(", ")
        .find_map(|p| p.strip_suffix(" bytes re-sent"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no re-sent figure in {result}"));
    let cuts = SIZE as u64 / EVERY;
    eprintln!(
        "cut every 8 MiB: {cuts} cuts, {resent} bytes re-sent ({} per cut); {note}",
        resent / cuts
    );
    // One chunk: a PATCH of the CLI carries at most 16 MiB.
    assert!(
        resent < cuts * (16 << 20),
        "{resent} bytes re-sent over {cuts} cuts"
    );
    let (status, got) = s.get_bytes("/api/v1/fs/big/big.bin").await;
    assert_eq!(status, 200);
    assert!(got == body, "byte-exact");
    assert_eq!(events(&s).await.len(), 1, "one commit");
    s.stop().await;
}

/// The session rows on PostgreSQL: creation, offsets, a HEAD after a restart, completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_live_in_postgres_too() {
    let Some(url) = common::test_postgres_url("sessions_live_in_postgres_too").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        metadata_url: Some(url),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config.clone()).await;
    let body = data(200_000, 77);
    let upload = create_url(&s.client, &s.base, body.len() as u64, "pg/a.bin").await;
    let path = upload.trim_start_matches(&s.base).to_string();
    let r = patch(&s.client, &upload, 0, body[..120_000].to_vec(), None).await;
    assert_eq!(r.status(), 204);
    s.stop().await;
    let s = TestServer::start_with(config).await;
    let upload = format!("{}{path}", s.base);
    assert_eq!(offset_of(&s.client, &upload).await, 120_000);
    let r = patch(&s.client, &upload, 120_000, body[120_000..].to_vec(), None).await;
    assert_eq!(r.status(), 204);
    assert!(s.get_bytes("/api/v1/fs/pg/a.bin").await.1 == body);
    s.stop().await;
}

/// A client of the test's S3 location (`s3://bucket/prefix?endpoint=..&region=..`) and the
/// keys under its `tus/` staging prefix.
async fn s3_tus_keys(blob_store: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    use object_store::ObjectStore;
    let rest = blob_store.strip_prefix("s3://").unwrap();
    let (location, query) = rest.split_once('?').unwrap();
    let (bucket, prefix) = location.split_once('/').unwrap();
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap();
        builder = match k {
            "endpoint" => builder
                .with_endpoint(v)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false),
            _ => builder.with_region(v),
        };
    }
    let store = builder.build().unwrap();
    let tus = object_store::path::Path::from(format!("{}/tus", prefix.trim_matches('/')));
    store
        .list(Some(&tus))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

async fn create_partial(client: &reqwest::Client, base: &str, length: u64) -> String {
    let r = client
        .post(format!("{base}/api/v1/tus/"))
        .header("tus-resumable", "1.0.0")
        .header("upload-concat", "partial")
        .header("upload-length", length.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Two replicas on one PostgreSQL and one bucket: an upload started on A continues on B
/// (its bytes are staged in the object store, its state in the row), the result is
/// byte-exact on both, no replica stages anything on its disk, and the staging objects are
/// gone afterwards. The same for a concatenation whose partial uploads go through different
/// replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_continues_any_upload_on_postgres_and_s3() {
    let test = "any_replica_continues_any_upload_on_postgres_and_s3";
    let Some(metadata_url) = common::test_postgres_url(test).await else {
        return;
    };
    let Some(blob_store) = common::test_s3_url(test) else {
        return;
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &Path| Config {
        metadata_url: Some(metadata_url.clone()),
        blob_store: Some(blob_store.clone()),
        ..Config::for_data_dir(dir)
    };
    let a = TestServer::start_with(config(da.path())).await;
    let b = TestServer::start_with(config(db.path())).await;
    const MIB: usize = 1024 * 1024;

    // 21 MiB and a bit: two full 8 MiB parts and a tail.
    let body = data(21 * MIB + 12_345, 5);
    let on_a = create_url(&a.client, &a.base, body.len() as u64, "x/big.bin").await;
    let path = on_a.trim_start_matches(&a.base).to_string();
    let on_b = format!("{}{path}", b.base);
    // A: 5 MiB (a tail only), then 8 MiB more (the first part fills; a new tail).
    let r = patch(&a.client, &on_a, 0, body[..5 * MIB].to_vec(), None).await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    let r = patch(
        &a.client,
        &on_a,
        5 * MIB as u64,
        body[5 * MIB..13 * MIB].to_vec(),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        staged_sessions(da.path()).await,
        0,
        "nothing staged on A's disk"
    );
    assert!(
        !s3_tus_keys(&blob_store).await.is_empty(),
        "the tail is in the bucket"
    );
    // B knows the offset and goes on from it (with a checksum), to the end.
    assert_eq!(offset_of(&b.client, &on_b).await, 13 * MIB as u64);
    let rest = body[13 * MIB..].to_vec();
    let r = patch(
        &b.client,
        &on_b,
        13 * MIB as u64,
        rest.clone(),
        Some(sha1_b64(&rest)),
    )
    .await;
    assert_eq!(r.status(), 204, "{:?}", r.text().await);
    assert_eq!(
        r.headers()["upload-offset"].to_str().unwrap(),
        body.len().to_string()
    );
    for s in [&a, &b] {
        let (status, got) = s.get_bytes("/api/v1/fs/x/big.bin").await;
        assert_eq!(status, 200);
        assert!(got == body, "byte-exact through {}", s.base);
    }
    let r = a
        .client
        .head(a.url("/api/v1/fs/x/big.bin"))
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.contains(&sha256_hex(&body)),
        "content address from the carried hash: {etag}"
    );
    assert_eq!(
        staged_sessions(db.path()).await,
        0,
        "nothing staged on B's disk"
    );
    assert!(
        s3_tus_keys(&blob_store).await.is_empty(),
        "staging collected: {:?}",
        s3_tus_keys(&blob_store).await
    );

    // A concatenation: partial 1 on A, partial 2 started on A and finished on B, the final
    // created on B.
    let whole = data(19 * MIB + 7, 9);
    let (p1, p2) = whole.split_at(9 * MIB + 3);
    let u1 = create_partial(&a.client, &a.base, p1.len() as u64).await;
    let u2 = create_partial(&a.client, &a.base, p2.len() as u64).await;
    let r = patch(&a.client, &format!("{}{u1}", a.base), 0, p1.to_vec(), None).await;
    assert_eq!(r.status(), 204);
    let r = patch(
        &a.client,
        &format!("{}{u2}", a.base),
        0,
        p2[..MIB].to_vec(),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = patch(
        &b.client,
        &format!("{}{u2}", b.base),
        MIB as u64,
        p2[MIB..].to_vec(),
        None,
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = b
        .client
        .post(format!("{}/api/v1/tus/", b.base))
        .header("tus-resumable", "1.0.0")
        .header("upload-concat", format!("final;{u1} {u2}"))
        .header("upload-metadata", meta_path("x/concat.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    for s in [&a, &b] {
        let (status, got) = s.get_bytes("/api/v1/fs/x/concat.bin").await;
        assert_eq!(status, 200);
        assert!(got == whole, "concatenation byte-exact through {}", s.base);
    }
    assert!(
        s3_tus_keys(&blob_store).await.is_empty(),
        "staging collected"
    );
    assert_eq!(
        staged_sessions(da.path()).await + staged_sessions(db.path()).await,
        0
    );
    a.stop().await;
    b.stop().await;
}

/// A PATCH streaming when its token is revoked stops within a second with 401; the session
/// keeps exactly the bytes acknowledged before, and later requests with the token fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_patch_stops_and_keeps_only_acknowledged_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["token", "create", "--scope", "admin", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let c = &s.client;
    let r = c
        .post(s.url("/api/v1/admin/tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"scopes": "read,write"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let (writer, id) = (
        created["token"].as_str().unwrap().to_string(),
        created["id"].as_str().unwrap().to_string(),
    );
    const MIB: usize = 1024 * 1024;
    let body = data(8 * MIB, 3);
    let r = c
        .post(s.url("/api/v1/tus/"))
        .bearer_auth(&writer)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", body.len().to_string())
        .header("upload-metadata", meta_path("r/f.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let upload = s.url(r.headers()["location"].to_str().unwrap());
    let session = upload.rsplit('/').next().unwrap().to_string();
    let r = c
        .patch(&upload)
        .bearer_auth(&writer)
        .header("tus-resumable", "1.0.0")
        .header("content-type", OCTETS)
        .header("upload-offset", "0")
        .body(body[..MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "1 MiB acknowledged");

    // A PATCH that keeps streaming (the test feeds it), revoked in the middle.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let req = c
        .patch(&upload)
        .bearer_auth(&writer)
        .header("tus-resumable", "1.0.0")
        .header("content-type", OCTETS)
        .header("upload-offset", MIB.to_string())
        .body(reqwest::Body::wrap_stream(stream));
    let answer = tokio::spawn(req.send());
    for i in 1..3 {
        tx.send(body[i * MIB..(i + 1) * MIB].to_vec())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!answer.is_finished(), "still streaming");
    let r = c
        .delete(s.url(&format!("/api/v1/admin/tokens/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Keep feeding: the server must stop on its own, not because the body ended.
    let feeder = tokio::spawn(async move {
        let mut i = 0;
        while tx.send(vec![7u8; 64 * 1024]).await.is_ok() && i < 1000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            i += 1;
        }
    });
    let r = tokio::time::timeout(Duration::from_secs(2), answer)
        .await
        .expect("the PATCH stops within 2 s of the revocation")
        .unwrap();
    match r {
        Ok(r) => assert_eq!(r.status(), 401, "{:?}", r.text().await),
        // The server may close the connection while the client is still sending.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    feeder.abort();
    // Later requests with the token fail.
    let r = c
        .head(&upload)
        .bearer_auth(&writer)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .patch(&upload)
        .bearer_auth(&writer)
        .header("tus-resumable", "1.0.0")
        .header("content-type", OCTETS)
        .header("upload-offset", MIB.to_string())
        .body(body[MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The staged bytes are the acknowledged ones, nothing of the revoked PATCH.
    let staged = tokio::fs::metadata(dir.path().join("tus").join(&session))
        .await
        .unwrap()
        .len();
    assert_eq!(staged, MIB as u64, "only the acknowledged MiB is kept");
    let r = s.get_as("/api/v1/fs/r/f.bin", &admin).await;
    assert_eq!(r.status(), 404, "nothing committed");
    s.stop().await;
}
