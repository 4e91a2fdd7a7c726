//! Test harness: a real VaultFS server on 127.0.0.1:0 in a temporary data directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vaultfs::config::Config;

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), vaultfs::app::ServerError>>>,
}

impl TestServer {
    /// A fresh server in a new temp dir; keep the `TempDir` alive for the test's duration.
    pub async fn start() -> (tempfile::TempDir, TestServer) {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start_with(Config::for_data_dir(dir.path())).await;
        (dir, server)
    }

    pub async fn start_with(config: Config) -> TestServer {
        Self::start_on(config, "127.0.0.1:0").await
    }

    /// On a given address (a restart on the same port, for reconnecting clients).
    pub async fn start_on(config: Config, addr: &str) -> TestServer {
        Self::start_listening(config, addr, None).await
    }

    /// With a probe listener (`probe_listen`) on 127.0.0.1:0 too; returns its address.
    pub async fn start_with_probes(config: Config) -> (TestServer, SocketAddr) {
        let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let probe_addr = probes.local_addr().unwrap();
        let server = Self::start_listening(config, "127.0.0.1:0", Some(probes)).await;
        (server, probe_addr)
    }

    async fn start_listening(
        config: Config,
        addr: &str,
        probes: Option<tokio::net::TcpListener>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe_addr = probes.as_ref().map(|p| p.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let handle = tokio::spawn(vaultfs::server::run_with_probes(
            listener,
            probes,
            config,
            async move {
                let _ = rx.await;
            },
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let server = TestServer {
            addr,
            base: format!("http://{addr}"),
            client,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        // With a probe listener, health is asked there: no kept-alive client connection
        // then takes one of the API listener's `max_connections`.
        let health = match probe_addr {
            Some(p) => format!("http://{p}/healthz"),
            None => server.url("/healthz"),
        };
        server.wait_healthy(&health).await;
        server
    }

    /// An upload whose body the test feeds chunk by chunk; the response arrives on the
    /// returned task.
    pub fn streaming_upload(
        &self,
        path: &str,
    ) -> (
        tokio::sync::mpsc::Sender<Vec<u8>>,
        JoinHandle<Result<reqwest::Response, reqwest::Error>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
        });
        let req = self
            .client
            .post(self.url(&format!("/api/v1/files/upload?path={}", enc(path))))
            .body(reqwest::Body::wrap_stream(body));
        (tx, tokio::spawn(req.send()))
    }

    async fn wait_healthy(&self, url: &str) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become healthy");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends the shutdown signal (like SIGTERM) without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("server did not stop within 30 s")
                .expect("server task panicked")
                .expect("server returned an error");
        }
    }

    /// Raw upload of `body` to `path` (the path is percent-encoded here).
    pub async fn upload(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/files/upload?path={}", enc(path))))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Uploads and returns the FileMeta JSON, asserting success.
    pub async fn put(&self, path: &str, body: &[u8]) -> serde_json::Value {
        let r = self.upload(path, body.to_vec()).await;
        let status = r.status();
        let json: serde_json::Value = r.json().await.unwrap();
        assert!(status.is_success(), "upload {path}: {status} {json}");
        json
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `method path` with a bearer token (none when `token` is `None`), an optional JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        json: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = json {
            req = req.json(body);
        }
        req.send().await.unwrap()
    }

    /// GET with a bearer token.
    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// POST of a JSON body with a bearer token: the status and the JSON answer (`Null` when
    /// the body is not JSON).
    pub async fn post_json_as(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .request(reqwest::Method::POST, path, Some(token), Some(body))
            .await;
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Raw upload of `body` to `path` with a bearer token.
    pub async fn upload_as(
        &self,
        path: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/files/upload?path={}", enc(path))))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// DELETE with a bearer token.
    pub async fn delete_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    pub async fn blob_count(&self) -> usize {
        count_files(&self.data_dir.join("blobs"), 2).await
    }

    pub async fn temp_count(&self) -> usize {
        count_files(&self.data_dir.join("tmp"), 1).await
    }

    /// Sends raw bytes on a fresh connection and returns what the server answered (until it
    /// closes or `read_for` passes).
    pub async fn raw(&self, request: &[u8], read_for: Duration) -> String {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(read_for, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Percent-encodes a query value (the client's own encoder).
pub fn enc(s: &str) -> String {
    vaultfs::api::encode_path(s)
}

/// Files at exactly `depth` levels below `dir`.
pub async fn count_files(dir: &Path, depth: usize) -> usize {
    let mut n = 0;
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    while let Ok(Some(entry)) = rd.next_entry().await {
        if depth <= 1 {
            n += 1;
        } else {
            n += Box::pin(count_files(&entry.path(), depth - 1)).await;
        }
    }
    n
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a sync client reads: a JSON text frame, or the close code.
#[derive(Debug)]
pub enum Frame {
    Json(serde_json::Value),
    Closed(Option<u16>),
}

impl TestServer {
    /// Opens `/api/v1/sync?{query}`.
    pub async fn ws(&self, query: &str) -> Ws {
        let url = format!("ws://{}/api/v1/sync?{query}", self.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws
    }
}

/// Next frame within 20 s (pings are skipped; tungstenite answers them).
pub async fn next_frame(ws: &mut Ws) -> Frame {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("no frame within 20 s");
        match msg {
            Some(Ok(Message::Text(t))) => return Frame::Json(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => return Frame::Closed(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::Closed(None),
        }
    }
}

pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    match next_frame(ws).await {
        Frame::Json(v) => v,
        Frame::Closed(c) => panic!("stream closed ({c:?}) while a frame was expected"),
    }
}

/// Prints one line to the terminal (not captured by libtest) saying a test was skipped.
pub fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A fresh S3 location (its own prefix in the test bucket) from `VAULTFS_TEST_S3_URL`, or
/// `None` after saying how to enable the test.
pub fn test_s3_url(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("VAULTFS_TEST_S3_URL") else {
        skipped(
            test,
            "set VAULTFS_TEST_S3_URL=s3://bucket?endpoint=...&region=... with AWS_* credentials \
             (or run .ci/run, which starts one with .ci/s3.sh)",
        );
        return None;
    };
    let (location, query) = url.split_once('?').unwrap_or((&url, ""));
    let unique = uuid::Uuid::new_v4().simple().to_string();
    Some(format!(
        "{}/{test}-{unique}?{query}",
        location.trim_end_matches('/')
    ))
}

/// A fresh database on the server `VAULTFS_TEST_POSTGRES_URL` names, or `None` after saying
/// how to enable the test.
pub async fn test_postgres_url(test: &str) -> Option<String> {
    use sqlx::Connection;
    let Ok(admin_url) = std::env::var("VAULTFS_TEST_POSTGRES_URL") else {
        skipped(
            test,
            "set VAULTFS_TEST_POSTGRES_URL=postgres://... (or run .ci/run, which starts \
             PostgreSQL with .ci/postgres.sh)",
        );
        return None;
    };
    let db = format!("vfs_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
    Some(format!("{base}/{db}"))
}

/// True once `/metrics` at `base` has the exact line `line`, within `within`.
pub async fn metric_line_appears(
    client: &reqwest::Client,
    base: &str,
    line: &str,
    within: Duration,
) -> bool {
    eventually(within, || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines().any(|l| l == line)
    })
    .await
}

/// The application's router over `state`, for in-process requests with
/// `tower::ServiceExt::oneshot` (no socket, no accept loop). The one place that names where
/// the router lives.
pub fn router(state: vaultfs::app::AppState) -> axum::Router {
    vaultfs::handlers::routes::router(state)
}

/// Runs the calling test in a process of its own, for tests that touch process-wide state
/// (an armed fault point, exact values of the global metrics recorder, a panic hook) which
/// other tests of this binary would disturb or be disturbed by.
///
/// Call it first with `module_path!()` and the test function's name. In the test binary's
/// own run it re-runs just that test in a child process, checks that exactly that one test
/// passed there, and returns `false` (the caller returns). In the child it returns `true` (the
/// caller runs the test's body).
pub async fn isolated(module: &str, test: &str) -> bool {
    const CHILD: &str = "VAULTFS_TEST_ISOLATED";
    // libtest names tests by their path below the crate root.
    let name = match module.split_once("::") {
        Some((_crate, rest)) => format!("{rest}::{test}"),
        None => test.to_string(),
    };
    if std::env::var(CHILD).as_deref() == Ok(name.as_str()) {
        return true;
    }
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &name)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What the child printed, shown with this test's output; SKIPPED lines reach the terminal.
    eprintln!("{stdout}{stderr}");
    for line in stderr.lines().filter(|l| l.starts_with("SKIPPED")) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    assert!(out.status.success(), "{name} failed in its own process");
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name}: the child process did not run exactly this test"
    );
    false
}
