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

/// `x-vaultfs-commit` (issue 21) from boto3: PutObject and CompleteMultipartUpload stage into
/// an open commit, invisible until the native finish, then there with their S3 records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_boto3_stages_into_a_commit() {
    const TEST: &str = "s3_boto3_stages_into_a_commit";
    if !available(TEST, "boto3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_id, admin, key, secret) = cli_token(dir.path(), "admin", "");
    let s3_port = free_port();
    let mut config = Config::for_data_dir(dir.path());
    config.s3_listen = Some(format!("127.0.0.1:{s3_port}").parse().unwrap());
    let server = common::TestServer::start_with(config).await;
    wait_port(s3_port).await;
    run_check(
        "commit",
        &format!("http://127.0.0.1:{s3_port}"),
        (&key, &secret),
        &[("S3_NATIVE", server.url("")), ("S3_TOKEN", admin)],
    )
    .await;
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
    // A native upload holds the only slot while its body trickles in. Under load it can
    // arrive while one of the probes below holds that slot, and is then refused itself (no
    // queue): it is started again until it holds the slot and the probe is the one refused.
    let (mut tx, mut pending) = server.streaming_upload("busy/native.bin");
    tx.send(vec![1u8; 1024]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut busy = false;
    while tokio::time::Instant::now() < deadline {
        if pending.is_finished() {
            (tx, pending) = server.streaming_upload("busy/native.bin");
            tx.send(vec![1u8; 1024]).await.unwrap();
        }
        let probe = c
            .put(format!("{s3}/busy/probe.bin"))
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            .body("x")
            .send()
            .await;
        if probe.is_ok_and(|r| {
            r.status() == 503 && r.headers().get("retry-after").is_some_and(|v| v == "1")
        }) {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

// The S3 tables in the metadata database (migration 20): an object's record commits in the
// transaction of the version it describes, and the tables of an earlier release are kept.

mod records {
    use super::common;

    use std::path::Path;
    use std::time::Duration;

    use vaultfs::services::metadata::postgres::PostgresMetadata;
    use vaultfs::services::metadata::sqlite::SqliteMetadata;
    use vaultfs::services::metadata::{
        MetadataError, MetadataStore, Precondition, PutRequest, S3ObjectRow,
    };
    use vaultfs::services::s3_meta::{ObjectAttrs, ObjectRecord, S3Meta};
    use vaultfs::services::storage::BlobRef;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn sha(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn row(etag: &str, user: &str) -> S3ObjectRow {
        let mut attrs = ObjectAttrs::default();
        attrs.user.insert("who".into(), user.into());
        attrs.row(etag.into()).unwrap()
    }

    fn put(
        path: &str,
        blob: u8,
        precondition: Precondition,
        s3: Option<S3ObjectRow>,
    ) -> PutRequest {
        PutRequest {
            path: path.into(),
            blob: BlobRef {
                sha256: sha(blob),
                size: u64::from(blob),
            },
            content_type: "application/octet-stream".into(),
            precondition,
            s3,
        }
    }

    /// The record at `path` for content `blob`: (etag, the `who` user metadata).
    async fn record(meta: &S3Meta, path: &str, blob: u8) -> Option<(String, String)> {
        meta.object(path, &sha(blob))
            .await
            .unwrap()
            .map(|r| (r.etag, r.attrs.user["who"].clone()))
    }

    fn is(etag: &str, who: &str) -> Option<(String, String)> {
        Some((etag.into(), who.into()))
    }

    /// Every write that carries, keeps, moves or drops a record, on one backend.
    async fn records_commit_with_their_version(store: &dyn MetadataStore, meta: &S3Meta) {
        let a = store
            .put(put("b/a", 1, Precondition::None, Some(row("e1", "first"))))
            .await
            .unwrap();
        assert_eq!(record(meta, "b/a", 1).await, is("e1", "first"));
        // A write refused by its precondition leaves the record as it was.
        let refused = store
            .put(put(
                "b/a",
                2,
                Precondition::MustNotExist,
                Some(row("e2", "no")),
            ))
            .await;
        assert!(matches!(refused, Err(MetadataError::PreconditionFailed)));
        assert_eq!(record(meta, "b/a", 1).await, is("e1", "first"));
        // A batch that fails as a whole leaves no record of its first put.
        let batch = store
            .put_many(vec![
                put("b/new", 3, Precondition::None, Some(row("e3", "batch"))),
                put("b/a", 4, Precondition::MustNotExist, None),
            ])
            .await;
        assert!(batch.is_err());
        assert_eq!(record(meta, "b/new", 3).await, None);
        // A native write (no record) of other content: the record no longer shows; of the
        // same content again, it describes it again.
        store
            .put(put("b/a", 5, Precondition::None, None))
            .await
            .unwrap();
        assert_eq!(record(meta, "b/a", 5).await, None);
        store
            .put(put("b/a", 1, Precondition::None, None))
            .await
            .unwrap();
        assert_eq!(record(meta, "b/a", 1).await, is("e1", "first"));
        let a2 = store
            .put(put("b/a", 1, Precondition::None, Some(row("e4", "again"))))
            .await
            .unwrap();
        assert_eq!(a2.meta.id, a.meta.id);
        assert_eq!(record(meta, "b/a", 1).await, is("e4", "again"));
        // A move takes the record along.
        store
            .rename(&a.meta.id, "b/a", "b/moved", false)
            .await
            .unwrap();
        assert_eq!(record(meta, "b/a", 1).await, None);
        assert_eq!(record(meta, "b/moved", 1).await, is("e4", "again"));
        // A copy gets the record it is given, or none.
        store
            .copy_with_s3(
                &a.meta.id,
                "b/moved",
                "b/copy",
                false,
                Some(row("e5", "copy")),
            )
            .await
            .unwrap();
        assert_eq!(record(meta, "b/copy", 1).await, is("e5", "copy"));
        store
            .copy(&a.meta.id, "b/moved", "b/plain", false)
            .await
            .unwrap();
        assert_eq!(record(meta, "b/plain", 1).await, None);
        // A metadata-only change applies only to the content it was read for.
        let mut attrs = ObjectAttrs::default();
        attrs.user.insert("who".into(), "replaced".into());
        let stale = ObjectRecord {
            sha256: sha(9),
            etag: "e6".into(),
            attrs: attrs.clone(),
        };
        assert!(!meta.update_in_place("b/copy", &stale).await.unwrap());
        assert_eq!(record(meta, "b/copy", 1).await, is("e5", "copy"));
        let fresh = ObjectRecord {
            sha256: sha(1),
            ..stale
        };
        assert!(meta.update_in_place("b/copy", &fresh).await.unwrap());
        assert_eq!(record(meta, "b/copy", 1).await, is("e6", "replaced"));
        // A delete removes it.
        let copy = store.get_by_path("b/copy").await.unwrap().unwrap();
        store
            .delete(&copy.id, "b/copy", &Precondition::None)
            .await
            .unwrap();
        assert_eq!(record(meta, "b/copy", 1).await, None);
        assert_eq!(store.audit().await.unwrap().problems, vec![]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_records_commit_with_their_version_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteMetadata::open(dir.path(), TIMEOUT, 2).await.unwrap();
        let meta = S3Meta::open(dir.path(), None, TIMEOUT).await.unwrap();
        records_commit_with_their_version(&store, &meta).await;
        meta.close().await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_records_commit_with_their_version_postgres() {
        let Some(url) =
            common::test_postgres_url("s3_records_commit_with_their_version_postgres").await
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = PostgresMetadata::open(&url, TIMEOUT, 4).await.unwrap();
        let meta = S3Meta::open(dir.path(), Some(&url), TIMEOUT).await.unwrap();
        records_commit_with_their_version(&store, &meta).await;
        meta.close().await;
        store.close().await;
    }

    /// Part directories whose upload the database no longer knows (finished through another
    /// replica) are removed once idle; those of live uploads stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_orphaned_part_directories_are_swept() {
        use vaultfs::services::s3_meta::UploadRecord;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteMetadata::open(dir.path(), TIMEOUT, 2).await.unwrap();
        let meta = S3Meta::open(dir.path(), None, TIMEOUT).await.unwrap();
        let live = UploadRecord {
            id: "live".into(),
            path: "b/k".into(),
            token_id: String::new(),
            created_ms: 0,
            attrs: ObjectAttrs::default(),
        };
        meta.create_upload(&live).await.unwrap();
        tokio::fs::write(meta.part_path("live", 1), b"part")
            .await
            .unwrap();
        let orphan = dir.path().join("s3-uploads/orphan");
        tokio::fs::create_dir_all(&orphan).await.unwrap();
        tokio::fs::write(orphan.join("00001"), b"part")
            .await
            .unwrap();
        assert_eq!(
            meta.sweep_orphan_parts(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "not idle long enough"
        );
        assert_eq!(meta.sweep_orphan_parts(Duration::ZERO).await.unwrap(), 1);
        assert!(!orphan.exists());
        assert!(meta.part_path("live", 1).exists());
        meta.close().await;
        store.close().await;
    }

    /// The S3 tables as releases before migration 20 made them (`s3_meta::SCHEMA`), in
    /// `s3.db` or in the PostgreSQL metadata database.
    const EARLIER_RELEASE_SCHEMA: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS s3_objects (path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, \
         etag TEXT NOT NULL, attrs TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_buckets (name TEXT PRIMARY KEY, created_ms BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_uploads (id TEXT PRIMARY KEY, path TEXT NOT NULL, \
         token_id TEXT NOT NULL, created_ms BIGINT NOT NULL, attrs TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_parts (upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, \
         size BIGINT NOT NULL, md5 TEXT NOT NULL, checksums TEXT NOT NULL, modified_ms BIGINT NOT NULL, \
         PRIMARY KEY (upload_id, part_number))",
        "CREATE INDEX IF NOT EXISTS s3_uploads_path ON s3_uploads (path, id)",
    ];

    const EARLIER_RELEASE_ROWS: &[&str] = &[
        "INSERT INTO s3_objects VALUES ('old/a', \
         '0101010101010101010101010101010101010101010101010101010101010101', \
         'd41d8cd98f00b204e9800998ecf8427e', '{\"user\":{\"who\":\"kept\"},\"cache_control\":\"no-cache\"}')",
        "INSERT INTO s3_buckets VALUES ('empty-bucket', 1000)",
        "INSERT INTO s3_uploads VALUES ('u1', 'old/big', '', 2000, '{}')",
        "INSERT INTO s3_parts VALUES ('u1', 1, 5242880, 'aa', '{}', 2000)",
    ];

    /// What an upgraded server must still find.
    async fn earlier_release_data_is_there(meta: &S3Meta) {
        let obj = meta.object("old/a", &sha(1)).await.unwrap().unwrap();
        assert_eq!(obj.etag, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(obj.attrs.user["who"], "kept");
        assert_eq!(obj.attrs.cache_control.as_deref(), Some("no-cache"));
        assert_eq!(meta.bucket("empty-bucket").await.unwrap(), Some(1000));
        let up = meta.upload("u1").await.unwrap().unwrap();
        assert_eq!((up.path.as_str(), up.created_ms), ("old/big", 2000));
        let parts = meta.parts("u1").await.unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].part_number, parts[0].size), (1, 5_242_880));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_tables_of_an_earlier_release_are_imported_from_s3_db() {
        let dir = tempfile::tempdir().unwrap();
        make_legacy_db(&dir.path().join("s3.db")).await;
        let store = SqliteMetadata::open(dir.path(), TIMEOUT, 2).await.unwrap();
        let meta = S3Meta::open(dir.path(), None, TIMEOUT).await.unwrap();
        earlier_release_data_is_there(&meta).await;
        assert!(!dir.path().join("s3.db").exists(), "imported once");
        assert!(dir.path().join("s3.db.imported").exists(), "kept aside");
        // A row the upgraded server writes, then a restart: nothing is imported again
        // over it, and the imported data stays.
        store
            .put(put("old/a", 1, Precondition::None, Some(row("new", "new"))))
            .await
            .unwrap();
        meta.close().await;
        let meta = S3Meta::open(dir.path(), None, TIMEOUT).await.unwrap();
        assert_eq!(record(&meta, "old/a", 1).await, is("new", "new"));
        assert_eq!(meta.bucket("empty-bucket").await.unwrap(), Some(1000));
        meta.close().await;
        store.close().await;
    }

    /// Re-running an interrupted import (a crash before the rename) changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_db_import_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteMetadata::open(dir.path(), TIMEOUT, 2).await.unwrap();
        make_legacy_db(&dir.path().join("s3.db")).await;
        let meta = S3Meta::open(dir.path(), None, TIMEOUT).await.unwrap();
        meta.close().await;
        tokio::fs::rename(dir.path().join("s3.db.imported"), dir.path().join("s3.db"))
            .await
            .unwrap();
        let meta = S3Meta::open(dir.path(), None, TIMEOUT).await.unwrap();
        earlier_release_data_is_there(&meta).await;
        assert_eq!(meta.buckets().await.unwrap().len(), 1);
        meta.close().await;
        store.close().await;
    }

    /// An `s3.db` as the earlier release left it (WAL, as it opened it).
    async fn make_legacy_db(path: &Path) {
        use sqlx::sqlite::SqliteConnectOptions;
        use sqlx::{ConnectOptions, Connection};
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap();
        for statement in EARLIER_RELEASE_SCHEMA.iter().chain(EARLIER_RELEASE_ROWS) {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_tables_of_an_earlier_release_are_adopted_on_postgres() {
        use sqlx::Connection;
        let Some(url) =
            common::test_postgres_url("s3_tables_of_an_earlier_release_are_adopted_on_postgres")
                .await
        else {
            return;
        };
        // The S3 tables and rows as the earlier release's S3 listener made them in the
        // metadata database (beside the store's own tables, which do not depend on them).
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for statement in EARLIER_RELEASE_SCHEMA.iter().chain(EARLIER_RELEASE_ROWS) {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        let store = PostgresMetadata::open(&url, TIMEOUT, 4).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let meta = S3Meta::open(dir.path(), Some(&url), TIMEOUT).await.unwrap();
        earlier_release_data_is_there(&meta).await;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert!(applied.contains(&20), "{applied:?}");
        meta.close().await;
        store.close().await;
        conn.close().await.unwrap();
    }
}
