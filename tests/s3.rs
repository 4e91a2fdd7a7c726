//! The S3 API against real clients: a real server with `--s3-listen`, driven by aws-cli,
//! boto3, rclone, s3cmd and minio-py (tests/s3/clients.py), over HTTP and over TLS with a
//! throwaway certificate. Install the clients with `.ci/s3-clients.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vaultfs::config::Config;

const CLIENTS: &[&str] = &["aws", "boto3", "rclone", "s3cmd", "minio"];

fn venv_bin() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    std::env::var("VAULTFS_S3_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(&home).join(".cache/vaultfs-venv"))
        .join("bin")
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Whether `client` is installed; prints the one SKIPPED line when not.
fn available(test: &str, client: &str) -> bool {
    let bin = venv_bin();
    let ok = match client {
        "aws" => bin.join("aws").exists(),
        "s3cmd" => bin.join("s3cmd").exists(),
        "rclone" => on_path("rclone"),
        "boto3" | "minio" | "denied" | "revoked" | "tls" => {
            bin.join("python").exists()
                && std::process::Command::new(bin.join("python"))
                    .args(["-c", "import boto3, minio"])
                    .status()
                    .is_ok_and(|s| s.success())
                && (client != "denied" || (bin.join("aws").exists() && on_path("rclone")))
        }
        _ => false,
    };
    if !ok {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test}/{client}: run .ci/s3-clients.sh"
        );
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vaultfs token create --s3 --json` on the data directory: (token id, token, access key,
/// secret).
fn cli_token(data_dir: &Path, scope: &str, prefix: &str) -> (String, String, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args([
            "token", "create", "--scope", scope, "--prefix", prefix, "--s3", "--json",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
        v["s3"]["access_key_id"].as_str().unwrap().to_string(),
        v["s3"]["secret_access_key"].as_str().unwrap().to_string(),
    )
}

/// Runs one check of tests/s3/clients.py; panics with its output on failure.
async fn run_check(check: &str, endpoint: &str, keys: (&str, &str), extra: &[(&str, String)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/clients.py");
    let work = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(venv_bin().join("python"));
    cmd.arg(&script)
        .arg(check)
        .env("S3_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", keys.0)
        .env("AWS_SECRET_ACCESS_KEY", keys.1)
        .env("S3_BIN", venv_bin())
        .env("S3_WORK", work.path())
        .env("S3_TAG", &uuid::Uuid::new_v4().simple().to_string()[..8])
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .expect("client check timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("PASS {check}")),
        "S3 check {check} failed against {endpoint}:\n{stdout}\n{stderr}"
    );
    eprint!("{stdout}");
}

async fn wait_port(port: u16) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("port {port} did not open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_clients_over_http() {
    const TEST: &str = "s3_clients_over_http";
    let dir = tempfile::tempdir().unwrap();
    // The CLI derives the key pair offline; the server derives the same one.
    let (_id, admin, key, secret) = cli_token(dir.path(), "admin", "");
    let s3_port = free_port();
    let mut config = Config::for_data_dir(dir.path());
    config.s3_listen = Some(format!("127.0.0.1:{s3_port}").parse().unwrap());
    let server = common::TestServer::start_with(config).await;
    wait_port(s3_port).await;
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let auth = format!("Bearer {admin}");

    // The admin API hands out key pairs too.
    let created: Value = server
        .client
        .post(server.url("/api/v1/admin/tokens"))
        .header("authorization", &auth)
        .json(&serde_json::json!({"scopes": "read,write", "prefix": "shared/allowed", "s3": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pkey = created["s3"]["access_key_id"].as_str().unwrap().to_string();
    let psecret = created["s3"]["secret_access_key"]
        .as_str()
        .unwrap()
        .to_string();
    let rw: Value = server
        .client
        .post(server.url("/api/v1/admin/tokens"))
        .header("authorization", &auth)
        .json(&serde_json::json!({"scopes": "read,write", "s3": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rw_keys = (
        rw["s3"]["access_key_id"].as_str().unwrap().to_string(),
        rw["s3"]["secret_access_key"].as_str().unwrap().to_string(),
    );
    // Something outside the prefixed token's reach.
    let r = server
        .client
        .post(server.url("/api/v1/files/upload?path=elsewhere/secret.txt"))
        .header("authorization", &auth)
        .body("secret")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());

    for client in CLIENTS {
        if available(TEST, client) {
            run_check(client, &endpoint, (&key, &secret), &[]).await;
        }
    }
    if available(TEST, "denied") {
        run_check(
            "denied",
            &endpoint,
            (&key, &secret),
            &[("S3_PREFIXED_KEY", pkey), ("S3_PREFIXED_SECRET", psecret)],
        )
        .await;
    }

    // S3 writes land in the sync feed with their paths: a multipart Complete is one event.
    if available(TEST, "boto3") {
        let events: Value = server
            .client
            .get(server.url("/api/v1/events?since=0&limit=10000"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = events["events"].as_array().unwrap();
        let mpu: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("boto-") && p.ends_with("/mpu.bin"))
            })
            .collect();
        assert_eq!(
            mpu.len(),
            1,
            "one event for a completed multipart upload: {mpu:?}"
        );
        assert_eq!(mpu[0]["kind"], "created");
        assert!(events.iter().any(|e| e["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("boto-") && p.contains("/pre/signed.bin"))));
        // And the native API sees the S3 object.
        let path = mpu[0]["path"].as_str().unwrap();
        let meta = server
            .client
            .get(server.url(&format!("/api/v1/stat?path={}", common::enc(path))))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(meta.status(), 200);

        // Revoking the token revokes its key pair.
        let id = rw["id"].as_str().unwrap();
        let r = server
            .client
            .delete(server.url(&format!("/api/v1/admin/tokens/{id}")))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        run_check("revoked", &endpoint, (&rw_keys.0, &rw_keys.1), &[]).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_clients_over_tls() {
    const TEST: &str = "s3_clients_over_tls";
    if !available(TEST, "tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("cert.pem");
    let key_file = certs.path().join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {TEST}: install the openssl CLI"
        );
        return;
    }
    let (_id, _admin, key, secret) = cli_token(dir.path(), "read,write", "");
    let s3_port = free_port();
    let mut config = Config::for_data_dir(dir.path());
    config.s3_listen = Some(format!("127.0.0.1:{s3_port}").parse().unwrap());
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key_file.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let main_port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(vaultfs::server::run(listener, config, async move {
        let _ = rx.await;
    }));
    wait_port(s3_port).await;
    let endpoint = format!("https://127.0.0.1:{s3_port}");
    let ca = ("S3_CA", cert.display().to_string());
    // boto3 and aws-cli send trailing checksums (aws-chunked) over HTTPS.
    for client in CLIENTS {
        if available(TEST, client) {
            run_check(
                client,
                &endpoint,
                (&key, &secret),
                std::slice::from_ref(&ca),
            )
            .await;
        }
    }
    run_check(
        "tls",
        &endpoint,
        (&key, &secret),
        &[
            ca.clone(),
            ("S3_MAIN", format!("https://127.0.0.1:{main_port}")),
            ("S3_TLS_KEY", key_file.display().to_string()),
        ],
    )
    .await;
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The S3 tables on PostgreSQL (the metadata store replicas share).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_on_postgres() {
    const TEST: &str = "s3_on_postgres";
    let Some(url) = common::test_postgres_url(TEST).await else {
        return;
    };
    if !available(TEST, "boto3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let admin = vaultfs::services::auth::Auth::generate().unwrap();
    let s3_port = free_port();
    let mut config = Config::for_data_dir(dir.path());
    config.metadata_url = Some(url);
    config.bootstrap_token = Some(admin.clone());
    config.s3_listen = Some(format!("127.0.0.1:{s3_port}").parse().unwrap());
    let server = common::TestServer::start_with(config).await;
    wait_port(s3_port).await;
    let rw: Value = server
        .client
        .post(server.url("/api/v1/admin/tokens"))
        .header("authorization", format!("Bearer {admin}"))
        .json(&serde_json::json!({"scopes": "read,write", "s3": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = (
        rw["s3"]["access_key_id"].as_str().unwrap(),
        rw["s3"]["secret_access_key"].as_str().unwrap(),
    );
    run_check("boto3", &format!("http://127.0.0.1:{s3_port}"), keys, &[]).await;
    server.stop().await;
}

/// Without any client: virtual-host addressing, the bucket-name rule, NotImplemented for out of
/// scope operations, the presigned expiry bound, and signatures required once tokens exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_addressing_names_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let s3_port = free_port();
    let mut config = Config::for_data_dir(dir.path());
    config.s3_listen = Some(format!("127.0.0.1:{s3_port}").parse().unwrap());
    config.s3_domain = Some("s3.test".into());
    // An open server (no token yet): unsigned requests are served.
    let server = common::TestServer::start_with(config).await;
    wait_port(s3_port).await;
    let s3 = format!("http://127.0.0.1:{s3_port}");
    let c = &server.client;
    let unsigned = [("x-amz-content-sha256", "UNSIGNED-PAYLOAD")];
    let r = c.put(format!("{s3}/vhbucket")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut put = c
        .put(format!("{s3}/k%20one.txt"))
        .header("host", "vhbucket.s3.test")
        .body("hello");
    for (k, v) in unsigned {
        put = put.header(k, v);
    }
    assert_eq!(put.send().await.unwrap().status(), 200);
    let got = c
        .get(format!("{s3}/vhbucket/k%20one.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.headers()["etag"].to_str().unwrap(),
        "\"5d41402abc4b2a76b9719d911017c592\"",
        "the ETag is the MD5"
    );
    assert_eq!(got.text().await.unwrap(), "hello");
    // The native API sees it at bucket/key.
    let (status, meta) = server
        .get_json("/api/v1/stat?path=vhbucket/k%20one.txt")
        .await;
    assert_eq!(status, 200, "{meta}");

    // A top-level segment that is no valid bucket name is not listed, nor addressable.
    assert!(server.put("My Files/x.txt", b"x").await["id"].is_string());
    server.put("ok-bucket/x.txt", b"x").await;
    let list = c
        .get(format!("{s3}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains("<Name>ok-bucket</Name>") && list.contains("<Name>vhbucket</Name>"));
    assert!(!list.contains("My Files"), "{list}");
    let r = c.get(format!("{s3}/Bad_Bucket/x")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<Code>InvalidBucketName</Code>"));
    let r = c.get(format!("{s3}/vhbucket?acl")).send().await.unwrap();
    assert_eq!(r.status(), 501);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<Code>NotImplemented</Code>"));
    let r = c.get(format!("{s3}/vhbucket/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("<Code>NoSuchKey</Code>"));
    let r = c.delete(format!("{s3}/ok-bucket")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<Code>BucketNotEmpty</Code>"));
    let r = c
        .get(format!(
            "{s3}/vhbucket/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=604801"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("AuthorizationQueryParametersError"));

    // Once a token exists, every S3 request must be signed.
    let _ = cli_token(&server.data_dir, "read", "");
    let denied = common::eventually(Duration::from_secs(5), || async {
        c.get(format!("{s3}/vhbucket/k%20one.txt"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 403)
    })
    .await;
    assert!(
        denied,
        "unsigned requests must be refused once tokens exist"
    );
    server.stop().await;
}

/// Overload is the native upload gate's: past it, S3 writes get `503 SlowDown` with
/// `Retry-After`, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_overload_is_slow_down() {
    let dir = tempfile::tempdir().unwrap();
    let s3_port = free_port();
    let mut config = Config::for_data_dir(dir.path());
    config.s3_listen = Some(format!("127.0.0.1:{s3_port}").parse().unwrap());
    config.max_concurrent_uploads = 1;
    config.max_queued_uploads = 0;
    let server = common::TestServer::start_with(config).await;
    wait_port(s3_port).await;
    let s3 = format!("http://127.0.0.1:{s3_port}");
    let c = &server.client;
    assert_eq!(
        c.put(format!("{s3}/busy")).send().await.unwrap().status(),
        200
    );
    // A native upload holds the only slot while its body trickles in.
    let (tx, pending) = server.streaming_upload("busy/native.bin");
    tx.send(vec![1u8; 1024]).await.unwrap();
    let busy = common::eventually(Duration::from_secs(5), || async {
        c.put(format!("{s3}/busy/s3.bin"))
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .body("x")
            .send()
            .await
            .is_ok_and(|r| {
                r.status() == 503 && r.headers().get("retry-after").is_some_and(|v| v == "1")
            })
    })
    .await;
    assert!(
        busy,
        "an S3 write past the upload gate answers 503 SlowDown with Retry-After"
    );
    let r = c
        .put(format!("{s3}/busy/s3.bin"))
        .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("<Code>SlowDown</Code>"));
    drop(tx);
    let _ = pending.await;
    let r = c.get(format!("{s3}/busy/s3.bin")).send().await.unwrap();
    assert_eq!(r.status(), 404, "nothing stored");
    server.stop().await;
}
