//! VaultFS's own client: what the CLI, `vaultfs watch` and `vaultfs loadtest` are built on.

use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::services::metadata::FileMeta;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } => code,
            ClientError::Transport(_) => "transport",
            ClientError::Other(_) => "client",
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Transport(e.to_string())
    }
}

/// Percent-encodes a path for a query value or URL path (keeps `/`).
pub fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// `base` like `http://127.0.0.1:8080` (no trailing slash needed).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// Turns a response into `T` or a [`ClientError::Api`].
    pub async fn parse<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return resp.json::<T>().await.map_err(ClientError::from);
        }
        Err(Self::api_error(resp).await)
    }

    pub async fn api_error(resp: reqwest::Response) -> ClientError {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        ClientError::Api {
            status,
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            message: body["error"]["message"].as_str().unwrap_or("").to_string(),
            retry_after,
        }
    }

    /// Uploads `body` to `path`, declaring its SHA-256 when given. `len` sets Content-Length
    /// for a streamed body (otherwise it is sent chunked).
    pub async fn upload(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        len: Option<u64>,
        sha256_hex: Option<&str>,
        if_absent: bool,
    ) -> Result<FileMeta, ClientError> {
        let mut req = self
            .http
            .post(self.url(&format!("/api/v1/files/upload?path={}", encode_path(path))))
            .body(body);
        if let Some(len) = len {
            req = req.header("content-length", len);
        }
        if let Some(sha) = sha256_hex {
            req = req.header("x-checksum-sha256", sha);
        }
        if if_absent {
            req = req.header("if-none-match", "*");
        }
        Self::parse(req.send().await?).await
    }

    pub async fn move_file(
        &self,
        id: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileMeta, ClientError> {
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/files/{id}/move")))
            .json(&serde_json::json!({"to": to, "overwrite": overwrite}))
            .send()
            .await?;
        Self::parse(resp).await
    }

    pub async fn health(&self) -> Result<(), ClientError> {
        let resp = self.http.get(self.url("/healthz")).send().await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::api_error(resp).await)
        }
    }

    /// The `ws://` URL of the sync feed.
    pub fn sync_url(&self, since: Option<i64>, prefix: &str) -> String {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        let mut url = format!("{ws_base}/api/v1/sync?prefix={}", encode_path(prefix));
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        url
    }
}

/// What one sync connection ended with.
#[derive(Debug)]
pub enum WatchEnd {
    /// The server closed (shutdown, ping timeout...) or the connection broke: reconnect.
    Disconnected(String),
    /// The cursor is gone from the log: re-list, then resume from `latest`.
    ResyncRequired { latest: i64 },
    /// The consumer asked to stop.
    Stopped,
}

/// Follows the sync feed from `since` (live from now when `None`), calling `on_event` with each
/// event's JSON in order; `on_event` returns false to stop. Reconnects with exponential backoff
/// and jitter (100 ms to 10 s), resuming after the last seq delivered, so a server restart or a
/// network cut loses nothing. Returns when stopped or when a resync is required.
pub async fn watch<F>(
    client: &Client,
    mut since: Option<i64>,
    prefix: &str,
    mut on_event: F,
) -> WatchEnd
where
    F: FnMut(&Value) -> bool + Send,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match watch_once(client, &mut since, prefix, &mut on_event).await {
            WatchEnd::Disconnected(why) => {
                tracing::info!(reason = %why, since = ?since, retry_in = ?backoff, "sync disconnected; reconnecting");
            }
            other => return other,
        }
        let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn watch_once<F>(
    client: &Client,
    since: &mut Option<i64>,
    prefix: &str,
    on_event: &mut F,
) -> WatchEnd
where
    F: FnMut(&Value) -> bool + Send,
{
    let url = client.sync_url(*since, prefix);
    let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _)) => ws,
        Err(e) => return WatchEnd::Disconnected(e.to_string()),
    };
    loop {
        // The server pings every 15 s; 60 s of silence means the connection is dead.
        let msg = match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Err(_) => return WatchEnd::Disconnected("no frame for 60 s".into()),
            Ok(None) => return WatchEnd::Disconnected("connection closed".into()),
            Ok(Some(Err(e))) => return WatchEnd::Disconnected(e.to_string()),
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(frame) => {
                return WatchEnd::Disconnected(format!("closed by server: {frame:?}"));
            }
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return WatchEnd::Disconnected("server sent invalid JSON".into());
        };
        match v["kind"].as_str() {
            Some("hello") => {
                if since.is_none() {
                    *since = v["latest_seq"].as_i64();
                }
            }
            Some("resync_required") => {
                return WatchEnd::ResyncRequired {
                    latest: v["latest_seq"].as_i64().unwrap_or(0),
                };
            }
            _ => {
                if let Some(seq) = v["seq"].as_i64() {
                    if since.is_some_and(|s| seq <= s) {
                        continue; // already delivered before a reconnect
                    }
                    *since = Some(seq);
                }
                if !on_event(&v) {
                    return WatchEnd::Stopped;
                }
            }
        }
    }
}
