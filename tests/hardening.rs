//! Issue 15, the gaps found when VaultFS was attacked from outside: each test replays an
//! attack against a real server and expects the safe answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{enc, Frame, TestServer};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use vaultfs::config::Config;

/// Makes a token with the CLI, on the data directory of a running server.
async fn cli_token(dir: &std::path::Path, scopes: &str) -> String {
    let out = cli(
        &["token", "create", "--scope", scopes, "--data-dir"],
        Some(dir),
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn cli(
    args: &[&str],
    dir: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.arg(d);
    }
    cmd.env("RUST_LOG", "off")
        .env_remove("VAULTFS_TOKEN")
        .env_remove("VAULTFS_URL")
        .env_remove("VAULTFS_SECRET_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

/// Waits until the server has seen its first token (it reloads every second).
async fn closed(s: &TestServer) {
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            s.get_json("/api/v1/list").await.0 == 401
        })
        .await
    );
}

/// An admin API call to make a token.
async fn api_token(s: &TestServer, admin: &str, body: Value) -> (u16, Value) {
    let r = s
        .client
        .post(s.url("/api/v1/admin/tokens"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A start that must be refused: the error, or a failure after 30 s of serving.
async fn refused(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = vaultfs::server::run(listener, config, std::future::pending());
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the server stopped without an error"),
        Err(_) => panic!("the server started (and served for 30 s) instead of refusing"),
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A share-link signature the way an attacker holding `key` would make it: HMAC-SHA256 over
/// the length-prefixed fields.
fn forge(key: &[u8], fields: &[&str]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for f in fields {
        mac.update(&(f.len() as u64).to_be_bytes());
        mac.update(f.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The share-link key derived from a server secret, as `Auth::derive_key` documents it.
fn derived(secret: &[u8], purpose: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn mode(path: &std::path::Path) -> u32 {
    // stat, not open: opening meta.db in this process would cancel the server's POSIX locks.
    #[allow(clippy::disallowed_methods)]
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    m.permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------------------
// Item 2: a copy of the database can mint share links.

/// The attack: copy meta.db (and its WAL), take every secret found in it, and sign a link
/// valid for a year, in both the old and the current link format. None may work; and the
/// files are private to the server's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_copy_cannot_mint_share_links() {
    use sqlx::{Connection, Row};
    let (dir, s) = TestServer::start().await;
    let reader = cli_token(dir.path(), "read,write").await;
    closed(&s).await;
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=rel/app.bin"))
        .bearer_auth(&reader)
        .body("release")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A legitimate link works (the server's key is in use).
    let r = s
        .client
        .post(s.url("/api/v1/share"))
        .bearer_auth(&reader)
        .json(&json!({"path": "rel/app.bin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let link = r.json::<Value>().await.unwrap()["link"]
        .as_str()
        .unwrap()
        .to_string();
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(plain.get(s.url(&link)).send().await.unwrap().status(), 200);

    // The copy, made by another process (see security.rs on POSIX locks).
    let copy = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("cp")
        .arg(dir.path().join("meta.db"))
        .arg(dir.path().join("meta.db-wal"))
        .arg(copy.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let url = format!("sqlite://{}", copy.path().join("meta.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let mut secrets: Vec<Vec<u8>> = sqlx::query("SELECT value FROM server_secrets")
        .fetch_all(&mut db)
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.get::<Vec<u8>, _>(0))
        .collect();
    // Whatever else a copy holds: every blob-like value of every table.
    for table in ["tokens"] {
        let rows = sqlx::query(&format!("SELECT secret_hash FROM {table}"))
            .fetch_all(&mut db)
            .await
            .unwrap();
        for r in rows {
            let h: String = r.get(0);
            secrets.push(hex::decode(h).unwrap());
        }
    }
    db.close().await.unwrap();
    assert!(!secrets.is_empty());
    let by = &reader[4..16];
    let issued = now_s();
    let expires = (issued + 365 * 86_400).to_string();
    let issued = issued.to_string();
    let path = "rel/app.bin";
    for key in &secrets {
        for k in [key.clone(), derived(key, "share-link-v1")] {
            let old = forge(&k, &[path, &expires, by]);
            let new = forge(&k, &[path, &issued, &expires, by]);
            for q in [
                format!("expires={expires}&by={by}&sig={old}"),
                format!("expires={expires}&issued={issued}&by={by}&sig={new}"),
            ] {
                let r = plain
                    .get(s.url(&format!("/api/v1/shared/{path}?{q}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 403, "a link forged from the database copy: {q}");
            }
        }
    }
    // Nobody else on the machine can read the database or the key.
    assert_eq!(mode(dir.path()), 0o700, "data directory");
    for f in ["meta.db", "meta.db-wal", "meta.db-shm"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    s.stop().await;
}

fn secret_config(dir: &std::path::Path, secret: &str) -> Config {
    let mut c = Config::for_data_dir(dir);
    c.secret_key = Some(secret.to_string());
    c
}

/// With the real server secret in hand, a link signed for longer than 7 days is refused, as
/// is one signed in the future; rotating the secret kills every link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_live_at_most_seven_days_after_signing() {
    let dir = tempfile::tempdir().unwrap();
    let secret_hex = hex::encode(
        (0u8..32)
            .map(|i| i.wrapping_mul(37) ^ 0xa5)
            .collect::<Vec<_>>(),
    );
    let s = TestServer::start_with(secret_config(dir.path(), &secret_hex)).await;
    let reader = cli_token(dir.path(), "read,write").await;
    closed(&s).await;
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=a.bin"))
        .bearer_auth(&reader)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = derived(&hex::decode(&secret_hex).unwrap(), "share-link-v1");
    let by = &reader[4..16];
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let link = |issued: i64, expires: i64| {
        let (i, e) = (issued.to_string(), expires.to_string());
        let sig = forge(&key, &["a.bin", &i, &e, by]);
        format!("/api/v1/shared/a.bin?expires={e}&issued={i}&by={by}&sig={sig}")
    };
    let now = now_s();
    let day = 86_400;
    // The signer is right: a link within the limits works.
    let good = link(now, now + 3600);
    assert_eq!(plain.get(s.url(&good)).send().await.unwrap().status(), 200);
    assert_eq!(
        plain
            .get(s.url(&link(now - 6 * day, now + day - 60)))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (issued, expires, what) in [
        (now, now + 365 * day, "a year"),
        (now, now + 7 * day + 60, "7 days and a minute"),
        (
            now - 7 * day,
            now + 3600,
            "signed 7 days ago, valid another hour",
        ),
        (now + day, now + 2 * day, "signed tomorrow"),
    ] {
        let r = plain
            .get(s.url(&link(issued, expires)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{what}");
    }
    s.stop().await;
    // The same secret after a restart: links survive. Another secret: every link is dead.
    let s = TestServer::start_with(secret_config(dir.path(), &secret_hex)).await;
    assert_eq!(plain.get(s.url(&good)).send().await.unwrap().status(), 200);
    s.stop().await;
    let rotated = hex::encode(b"another secret of 32 bytes......");
    let s = TestServer::start_with(secret_config(dir.path(), &rotated)).await;
    assert_eq!(plain.get(s.url(&good)).send().await.unwrap().status(), 403);
    s.stop().await;
}

/// Without `VAULTFS_SECRET_KEY` the secret is a key file in the data directory, made at
/// first start, private, and kept across restarts; a weak or unreadable secret stops the
/// start with a message that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_secret_is_a_private_key_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    s.put("a.bin", b"x").await;
    let key_file = dir.path().join("secret.key");
    assert_eq!(mode(&key_file), 0o600);
    let text = tokio::fs::read_to_string(&key_file).await.unwrap();
    assert_eq!(
        hex::decode(text.trim()).unwrap().len(),
        32,
        "32 random bytes"
    );
    let r = s
        .client
        .post(s.url("/api/v1/share"))
        .json(&json!({"path": "a.bin"}))
        .send()
        .await
        .unwrap();
    let link = r.json::<Value>().await.unwrap()["link"]
        .as_str()
        .unwrap()
        .to_string();
    s.stop().await;
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    assert_eq!(
        s.get_bytes(&link).await.0,
        200,
        "same key file after a restart"
    );
    assert_eq!(
        tokio::fs::read_to_string(&key_file).await.unwrap(),
        text,
        "not replaced"
    );
    s.stop().await;
    // A configured key file that is not there is not made up: replicas must share one.
    let mut c = Config::for_data_dir(dir.path());
    c.secret_key_file = Some(dir.path().join("missing.key"));
    let err = refused(c).await;
    assert!(err.contains("missing.key"), "{err}");
    // A weak secret is refused.
    for weak in ["hunter2", &"ab".repeat(16)] {
        let err = refused(secret_config(dir.path(), weak)).await;
        assert!(err.contains("VAULTFS_SECRET_KEY"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// Item 3: a revoked or expired token keeps its live sync WebSocket.

async fn ws_with(s: &TestServer, token: &str) -> common::Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/api/v1/sync", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

/// The close code a session ends with, within `within` (events are skipped).
async fn close_code(ws: &mut common::Ws, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            match common::next_frame(ws).await {
                Frame::Json(_) => continue,
                Frame::Closed(c) => return c,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the session is still open after {within:?}"))
}

fn long_poll(
    s: &TestServer,
    token: &str,
) -> tokio::task::JoinHandle<(u16, Value, std::time::Instant)> {
    let req = s
        .client
        .get(s.url("/api/v1/events?wait=40&prefix=nothing-here/"))
        .bearer_auth(token);
    tokio::spawn(async move {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (
            status,
            r.json().await.unwrap_or(Value::Null),
            std::time::Instant::now(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_closes_its_sync_socket_and_long_poll() {
    let (dir, s) = TestServer::start().await;
    let admin = cli_token(dir.path(), "admin").await;
    closed(&s).await;
    let (status, made) = api_token(&s, &admin, json!({"scopes": "read"})).await;
    assert_eq!(status, 201);
    let reader = made["token"].as_str().unwrap().to_string();
    let mut ws = ws_with(&s, &reader).await;
    assert_eq!(common::next_json(&mut ws).await["kind"], "hello");
    let mut bystander = ws_with(&s, &admin).await;
    assert_eq!(common::next_json(&mut bystander).await["kind"], "hello");
    let poll = long_poll(&s, &reader);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Revoked through this server's API: at once.
    let revoked_at = std::time::Instant::now();
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/admin/tokens/{}", &reader[4..16])))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(5)).await,
        Some(4401)
    );
    let (status, body, answered) = poll.await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token");
    assert!(answered.duration_since(revoked_at) < Duration::from_secs(5));
    // Others keep their feed.
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=b/x"))
        .bearer_auth(&admin)
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(common::next_json(&mut bystander).await["path"], "b/x");

    // Revoked by another process (the CLI on the data directory): within the reload
    // interval (1 s; 10 s allowed on a loaded machine).
    let (_, made) = api_token(&s, &admin, json!({"scopes": "read"})).await;
    let reader2 = made["token"].as_str().unwrap().to_string();
    let mut ws2 = ws_with(&s, &reader2).await;
    assert_eq!(common::next_json(&mut ws2).await["kind"], "hello");
    let out = cli(
        &["token", "revoke", &reader2[4..16], "--data-dir"],
        Some(dir.path()),
        &[],
    )
    .await;
    assert!(out.status.success());
    assert_eq!(
        close_code(&mut ws2, Duration::from_secs(10)).await,
        Some(4401)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_its_sync_socket_and_long_poll() {
    let (dir, s) = TestServer::start().await;
    let admin = cli_token(dir.path(), "admin").await;
    closed(&s).await;
    let (status, made) = api_token(&s, &admin, json!({"scopes": "read", "expires_in": "3s"})).await;
    assert_eq!(status, 201, "{made}");
    let reader = made["token"].as_str().unwrap().to_string();
    let mut ws = ws_with(&s, &reader).await;
    assert_eq!(common::next_json(&mut ws).await["kind"], "hello");
    let poll = long_poll(&s, &reader);
    let started = std::time::Instant::now();
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(10)).await,
        Some(4401)
    );
    let (status, body, _) = poll.await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(started.elapsed() < Duration::from_secs(12));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 7: uploaded HTML runs on the API's origin.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_served_so_that_browsers_do_not_run_it() {
    let (_dir, s) = TestServer::start().await;
    let cases = [
        ("page.html", "text/html; charset=utf-8", true),
        ("img.svg", "image/svg+xml", true),
        ("feed.xml", "application/xml", true),
        ("x.xhtml", "application/xhtml+xml", true),
        ("app.js", "text/javascript", true),
        ("app2.js", "application/javascript", true),
        ("odd", "TEXT/HTML", true),
        ("doc.pdf", "application/pdf", true),
        ("blob", "application/octet-stream", true),
        ("notes.txt", "text/plain", false),
        ("pic.png", "image/png", false),
    ];
    let body = b"<html><script>fetch('/api/v1/list')</script></html>";
    let mut ids = Vec::new();
    for (path, ct, _) in cases {
        let r = s
            .client
            .post(s.url(&format!("/api/v1/files/upload?path=web/{}", enc(path))))
            .header("content-type", ct)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{path}");
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let check = |r: &reqwest::Response, active: bool, inline: bool, what: &str| {
        let h = r.headers();
        assert_eq!(
            h.get("x-content-type-options").map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{what}"
        );
        let csp = h
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            csp.split(';').any(|d| d.trim() == "sandbox"),
            "{what}: {csp:?}"
        );
        let cd = h
            .get("content-disposition")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        if active || !inline {
            assert!(cd.starts_with("attachment"), "{what}: {cd:?}");
        } else {
            assert!(cd.starts_with("inline"), "{what}: {cd:?}");
        }
    };
    for ((path, _, active), id) in cases.iter().zip(&ids) {
        for inline in [false, true] {
            let q = if inline { "?inline=1" } else { "" };
            let by_id = s
                .client
                .get(s.url(&format!("/api/v1/files/{id}{q}")))
                .send()
                .await
                .unwrap();
            assert_eq!(by_id.status(), 200);
            check(&by_id, *active, inline, &format!("{path} by id{q}"));
            let by_path = s
                .client
                .get(s.url(&format!("/api/v1/fs/web/{}{q}", enc(path))))
                .send()
                .await
                .unwrap();
            assert_eq!(by_path.status(), 200);
            check(&by_path, *active, inline, &format!("{path} by path{q}"));
            let head = s
                .client
                .head(s.url(&format!("/api/v1/fs/web/{}{q}", enc(path))))
                .send()
                .await
                .unwrap();
            check(&head, *active, inline, &format!("{path} HEAD{q}"));
        }
        // Share links.
        let r = s
            .client
            .post(s.url("/api/v1/share"))
            .json(&json!({"path": format!("web/{path}")}))
            .send()
            .await
            .unwrap();
        let link = r.json::<Value>().await.unwrap()["link"]
            .as_str()
            .unwrap()
            .to_string();
        let shared = s.client.get(s.url(&link)).send().await.unwrap();
        assert_eq!(shared.status(), 200);
        check(&shared, *active, false, &format!("{path} shared"));
        let shared = s
            .client
            .get(s.url(&format!("{link}&inline=1")))
            .send()
            .await
            .unwrap();
        assert_eq!(shared.status(), 200);
        check(&shared, *active, true, &format!("{path} shared inline"));
    }
    // Ranges and conditional requests still work, with the same headers.
    let url = s.url(&format!("/api/v1/files/{}", ids[0]));
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=0-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    check(&r, true, false, "range");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"<html>");
    let r = s
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    check(&r, true, false, "304");
    let r = s
        .client
        .get(&url)
        .header("range", "bytes=6-")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[6..]);
    // The file name travels with the attachment, safely quoted.
    let r = s
        .client
        .get(s.url("/api/v1/fs/web/page.html"))
        .send()
        .await
        .unwrap();
    let cd = r.headers()["content-disposition"].to_str().unwrap();
    assert!(cd.contains("filename=\"page.html\""), "{cd}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 8: --insecure-no-auth on a loopback address switches off the DNS-rebinding check.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_on_loopback_keeps_the_dns_rebinding_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::for_data_dir(dir.path());
    c.insecure_no_auth = true;
    let s = TestServer::start_with(c).await;
    let get = |host: &'static str, token: Option<String>| {
        let mut req = s.client.get(s.url("/api/v1/list")).header("host", host);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("localhost:8080", None).await, 200);
    assert_eq!(get("evil.example:8080", None).await, 403, "rebound name");
    s.stop().await;

    // With tokens on loopback, too; `allowed_hosts` lets a chosen name through.
    let mut c = Config::for_data_dir(dir.path());
    c.allowed_hosts = vec!["vaultfs.lan".into()];
    let s = TestServer::start_with(c).await;
    let admin = cli_token(dir.path(), "admin").await;
    closed(&s).await;
    let get = |host: &'static str, token: Option<String>| {
        let mut req = s.client.get(s.url("/api/v1/list")).header("host", host);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("evil.example", Some(admin.clone())).await, 403);
    assert_eq!(get("vaultfs.lan:8080", Some(admin.clone())).await, 200);
    assert_eq!(get("127.0.0.1:8080", Some(admin.clone())).await, 200);
    s.stop().await;
}

/// The binary warns at every start in this mode, on loopback too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_no_auth_warns_at_every_start() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-no-auth",
                "--data-dir",
            ])
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push(line.clone());
                if line.contains("VaultFS listening") {
                    return seen
                        .iter()
                        .any(|l| l.contains("WARN") && l.contains("--insecure-no-auth"));
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(found, "no warning at start: {seen:#?}");
        child.kill().await.unwrap();
        let _ = child.wait().await;
    }
}

// ---------------------------------------------------------------------------------------
// Item 10: weak bootstrap tokens are accepted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_bootstrap_tokens_are_refused() {
    for weak in [
        "vfs_000000000000_aaaaaaaaaaaaaaaaaaaa".to_string(),
        format!("vfs_0123456789ab_{}", "a".repeat(43)),
        format!("vfs_0123456789ab_{}", "abcd".repeat(11)),
        // 31 random-looking bytes.
        format!(
            "vfs_0123456789ab_{}",
            &vaultfs::services::auth::Auth::generate().unwrap()[17..58]
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::for_data_dir(dir.path());
        c.bootstrap_token = Some(weak.clone());
        let msg = refused(c).await;
        assert!(msg.contains("vaultfs token generate"), "{weak}: {msg}");
    }
    // A generated one works.
    let dir = tempfile::tempdir().unwrap();
    let good = vaultfs::services::auth::Auth::generate().unwrap();
    let mut c = Config::for_data_dir(dir.path());
    c.bootstrap_token = Some(good.clone());
    let s = TestServer::start_with(c).await;
    let r = s
        .client
        .get(s.url("/api/v1/list"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 11: the smaller items.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiries_labels_and_prefixes_are_checked() {
    let (dir, s) = TestServer::start().await;
    let admin = cli_token(dir.path(), "admin").await;
    closed(&s).await;
    for (body, what) in [
        (
            json!({"scopes": "read", "expires_in": "99999999999d"}),
            "overflowing expiry",
        ),
        (
            json!({"scopes": "read", "expires_in": "999999999999999999999d"}),
            "unparsable expiry",
        ),
        (
            json!({"scopes": "read", "expires_in": "3651d"}),
            "over ten years",
        ),
        (
            json!({"scopes": "read", "label": "build\u{202E}gpj.exe"}),
            "bidi override in label",
        ),
        (
            json!({"scopes": "read", "label": "a\u{2066}b"}),
            "bidi isolate in label",
        ),
        (
            json!({"scopes": "read", "label": "a\nb"}),
            "newline in label",
        ),
        (json!({"scopes": "read", "prefix": "/"}), "prefix /"),
        (json!({"scopes": "read", "prefix": "//"}), "prefix //"),
    ] {
        let (status, reply) = api_token(&s, &admin, body).await;
        assert_eq!(status, 400, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_request", "{what}");
    }
    let (status, reply) =
        api_token(&s, &admin, json!({"scopes": "read", "expires_in": "3650d"})).await;
    assert_eq!(status, 201, "{reply}");
    let year: i32 = reply["expires_at"].as_str().unwrap()[..4].parse().unwrap();
    assert!(year >= 2035, "{reply}");
    // The CLI on the data directory refuses the same.
    for args in [
        vec![
            "token",
            "create",
            "--scope",
            "read",
            "--expires",
            "99999999999d",
        ],
        vec!["token", "create", "--scope", "read", "--prefix", "/"],
        vec![
            "token",
            "create",
            "--scope",
            "read",
            "--label",
            "x\u{202E}y",
        ],
    ] {
        let mut args = args.clone();
        args.push("--data-dir");
        let out = cli(&args, Some(dir.path()), &[]).await;
        assert!(!out.status.success(), "{args:?}");
    }
    let listing = cli(
        &["token", "list", "--json", "--data-dir"],
        Some(dir.path()),
        &[],
    )
    .await;
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(!listing.contains("1970"), "{listing}");
    assert_eq!(listing.lines().count(), 2, "{listing}");
    s.stop().await;
}

/// `--token` shows in the process list; `--token-file` and `VAULTFS_TOKEN` do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_come_from_a_file_or_the_environment() {
    let (dir, s) = TestServer::start().await;
    let admin = cli_token(dir.path(), "admin").await;
    closed(&s).await;
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("token");
    tokio::fs::write(&token_file, format!("{admin}\n"))
        .await
        .unwrap();
    let tf = token_file.to_str().unwrap().to_string();
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&cli(&["ls", "--server", &s.base, "--token-file", &tf], None, &[]).await);
    ok(&cli(
        &["ls", "--server", &s.base],
        None,
        &[("VAULTFS_TOKEN", &admin)],
    )
    .await);
    ok(&cli(
        &["ls", "--server", &s.base],
        None,
        &[("VAULTFS_TOKEN_FILE", &tf)],
    )
    .await);
    ok(&cli(
        &["token", "list", "--server", &s.base, "--token-file", &tf],
        None,
        &[],
    )
    .await);
    let out = cli(
        &["ls", "--server", &s.base, "--token-file", "/nonexistent/x"],
        None,
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x"));
    s.stop().await;
}
