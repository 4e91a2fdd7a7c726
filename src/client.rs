//! VaultFS's own client: what the CLI, `vaultfs watch` and `vaultfs loadtest` are built on.

use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::api::encode_path;
use crate::api::{FileMeta, ListPage};

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
    /// A failure on this side (a local file, a checksum): never retried.
    #[error("{code}: {message}")]
    Local { code: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    pub fn code(&self) -> &str {
        match self {
            ClientError::Api { code, .. } => code,
            ClientError::Transport(_) => "transport",
            ClientError::Local { code, .. } => code,
            ClientError::Other(_) => "client",
        }
    }
}

impl ClientError {
    /// Worth another attempt: the request may succeed later. Connection errors, 429, 502-504
    /// (503 covers `lock_timeout`, `overloaded`, `busy` and `contended`).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, code, .. } => {
                matches!(status, 429 | 502..=504) || code == "lock_timeout"
            }
            ClientError::Other(_) | ClientError::Local { .. } => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Exponential backoff with jitter, honouring `Retry-After`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

/// A number in [0, 1) from the OS's randomness (uuid v4), for jitter.
fn unit_random() -> f64 {
    let b = uuid::Uuid::new_v4().as_u128();
    (b >> 75) as f64 / (1u64 << 53) as f64
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based) after `err`: half to all of
    /// `base * 2^(retry-1)` capped at `max`, and never less than the server's `Retry-After`.
    pub fn delay(&self, retry: u32, err: &ClientError) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(16))
            .min(self.max);
        let jittered = exp.mul_f64(0.5 + unit_random() / 2.0);
        match err.retry_after() {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the retries are spent.
    /// `on_retry(attempt, error, delay)` is told about each retry. Returns the result and the
    /// number of attempts made.
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        mut on_retry: impl FnMut(u32, &ClientError, Duration) + Send,
    ) -> (Result<T, ClientError>, u32)
    where
        F: FnMut(u32) -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, ClientError>> + Send,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return (Ok(v), attempt),
                Err(e) if e.is_retryable() && attempt <= self.retries => {
                    let delay = self.delay(attempt, &e);
                    on_retry(attempt, &e, delay);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return (Err(e), attempt),
            }
        }
    }
}

impl ClientError {
    pub fn local(code: &str, message: impl Into<String>) -> Self {
        ClientError::Local {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's own message is terse ("error sending request"); the causes say why.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        ClientError::Transport(msg)
    }
}

/// The environment variable whose value every request sends as `X-Vaultfs-Fence`.
pub(crate) const FENCE_ENV: &str = "VAULTFS_FENCE";

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// For the WebSocket handshake, which reqwest's default headers do not cover.
    token: Option<String>,
}

/// Settings of a [`Client`] beyond its server URL.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Fail a request when no byte arrives for this long (none: wait as long as it takes).
    pub read_timeout: Option<Duration>,
}

impl Client {
    /// `base` like `http://127.0.0.1:8080` (no trailing slash needed).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_options(base, &ClientOptions::default())
    }

    pub fn with_options(base: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Other(format!(
                "server URL must start with http:// or https://, got {base:?}"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024);
        if let Some(t) = options.read_timeout {
            builder = builder.read_timeout(t);
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = options.token.as_deref().filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Other("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        // Under `vaultfs lease run`, every request carries the lease's fence (issue 21).
        if let Some(fence) = std::env::var(FENCE_ENV)
            .ok()
            .filter(|f| !f.trim().is_empty())
        {
            let value = reqwest::header::HeaderValue::from_str(fence.trim()).map_err(|_| {
                ClientError::Other(format!("{FENCE_ENV} is not a valid header value"))
            })?;
            headers.insert("x-vaultfs-fence", value);
        }
        if !headers.is_empty() {
            builder = builder.default_headers(headers);
        }
        Ok(Client {
            http: builder.build()?,
            base: base.trim_end_matches('/').to_string(),
            token: options.token.clone().filter(|t| !t.is_empty()),
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

    /// Uploads `body` to `path` (`PUT /api/v1/fs/{path}`), declaring its SHA-256 when given.
    /// `len` sets Content-Length for a streamed body (otherwise it is sent chunked).
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
            .put(self.url(&format!("/api/v1/fs/{}", encode_path(path))))
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
        self.relocate(id, "move", to, overwrite).await
    }

    pub async fn copy_file(
        &self,
        id: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileMeta, ClientError> {
        self.relocate(id, "copy", to, overwrite).await
    }

    /// `POST /api/v1/files/{id}/{move|copy}`.
    async fn relocate(
        &self,
        id: &str,
        op: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileMeta, ClientError> {
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/files/{}/{op}", encode_path(id))))
            .json(&serde_json::json!({"to": to, "overwrite": overwrite}))
            .send()
            .await?;
        Self::parse(resp).await
    }

    /// GET `path_and_query` as JSON.
    async fn get_json<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, ClientError> {
        Self::parse(self.http.get(self.url(path_and_query)).send().await?).await
    }

    /// The file at `path`.
    pub async fn stat(&self, path: &str) -> Result<FileMeta, ClientError> {
        self.get_json(&format!("/api/v1/stat?path={}", encode_path(path)))
            .await
    }

    /// The file with id `id`.
    pub async fn meta(&self, id: &str) -> Result<FileMeta, ClientError> {
        self.get_json(&format!("/api/v1/files/{}/meta", encode_path(id)))
            .await
    }

    /// Deletes the file with id `id`.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        let resp = self
            .http
            .delete(self.url(&format!("/api/v1/files/{}", encode_path(id))))
            .send()
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::api_error(resp).await)
        }
    }

    /// One page of the listing under `prefix`.
    pub async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListPage, ClientError> {
        let mut q = format!("/api/v1/list?prefix={}", encode_path(prefix));
        if delimiter {
            q.push_str("&delimiter=/");
        }
        if let Some(c) = cursor {
            q.push_str(&format!("&cursor={}", encode_path(c)));
        }
        if let Some(l) = limit {
            q.push_str(&format!("&limit={l}"));
        }
        self.get_json(&q).await
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
pub(crate) enum WatchEnd {
    /// The server closed (shutdown, ping timeout...) or the connection broke: reconnect.
    Disconnected(String),
    /// The cursor is gone from the log: re-list, then resume from `latest`.
    ResyncRequired { latest: i64 },
    /// The consumer asked to stop.
    Stopped,
    /// The server refused the subscription (401/403/400): retrying cannot help.
    Refused(String),
}

/// Follows the sync feed from `since` (live from now when `None`), calling `on_event` with each
/// event's JSON in order; `on_event` returns false to stop. Reconnects with exponential backoff
/// and jitter (100 ms to 10 s), resuming after the last seq delivered, so a server restart or a
/// network cut loses nothing. Returns when stopped or when a resync is required.
pub(crate) async fn watch<F>(
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
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = client.sync_url(*since, prefix);
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return WatchEnd::Refused(e.to_string()),
    };
    if let Some(token) = &client.token {
        match reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(v) => {
                request
                    .headers_mut()
                    .insert(reqwest::header::AUTHORIZATION, v);
            }
            Err(_) => return WatchEnd::Refused("the token is not a valid header value".into()),
        }
    }
    let mut ws = match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp))
            if resp.status().is_client_error() =>
        {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .to_string();
            return WatchEnd::Refused(format!("{}: {body}", resp.status()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, retry_after: Option<u64>) -> ClientError {
        ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn what_is_retried() {
        assert!(ClientError::Transport("reset".into()).is_retryable());
        for s in [429, 502, 503, 504] {
            assert!(api(s, "x", None).is_retryable(), "{s}");
        }
        assert!(api(500, "lock_timeout", None).is_retryable());
        for s in [400, 404, 409, 412, 413, 500, 507] {
            assert!(!api(s, "x", None).is_retryable(), "{s}");
        }
        assert!(!ClientError::local("checksum_mismatch", "x").is_retryable());
    }

    #[test]
    fn backoff_grows_with_jitter_and_respects_retry_after() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let e = ClientError::Transport(String::new());
            let d1 = p.delay(1, &e);
            assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
            let d4 = p.delay(4, &e);
            assert!(d4 >= Duration::from_millis(800) && d4 <= Duration::from_millis(1600));
            let d30 = p.delay(30, &e);
            assert!(d30 <= p.max && d30 >= p.max / 2);
            assert!(p.delay(1, &api(503, "overloaded", Some(3))) >= Duration::from_secs(3));
        }
    }
}
