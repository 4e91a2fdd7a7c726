//! What watches the server while the load runs: the health prober (on a thread of its own)
//! and the sync subscribers that check the feed is gapless and in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::feed_socket::{FeedError, FeedSocket, Received};
use super::Shared;
use crate::client::{Client, ClientError};

/// The health prober: `GET /healthz` every 100 ms. It runs on a thread and runtime of its
/// own, with a client of its own, so what it measures is the server's answer, not this
/// tool's workers being busy with a thousand uploads.
pub(super) fn spawn_prober(
    sh: Arc<Shared>,
    done: Arc<AtomicBool>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (finished, finished_rx) = tokio::sync::oneshot::channel();
    let url = sh
        .cfg
        .probe_url
        .clone()
        .unwrap_or_else(|| sh.cfg.url.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("loadtest-prober".into())
        .spawn(move || {
            runtime.block_on(async move {
                match Client::new(&url) {
                    Ok(client) => prober(&sh, &client, &done).await,
                    Err(e) => sh.rec.fail(format!("prober: {e}")),
                }
            });
            let _ = finished.send(());
        })?;
    Ok(finished_rx)
}

async fn prober(sh: &Shared, client: &Client, done: &AtomicBool) {
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), client.health()).await;
        match r {
            Ok(Ok(())) => sh.rec.ok("health", started.elapsed(), 0),
            Ok(Err(e)) => sh.rec.err("health", &e),
            Err(_) => sh.rec.err(
                "health",
                &ClientError::Transport("health timed out after 10 s".into()),
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The fields of a feed frame a subscriber checks (the rest is not parsed).
#[derive(serde::Deserialize)]
struct FeedFrame<'a> {
    seq: Option<i64>,
    #[serde(borrow)]
    at: Option<std::borrow::Cow<'a, str>>,
}

/// Subscribers connecting at once: 10,000 at a time would overflow the server's accept
/// backlog and turn into SYN retransmits.
pub(super) const CONNECTING_AT_ONCE: usize = 256;
/// Delivery latencies a subscriber collects before it records them (under the recorder's
/// lock, once per batch instead of once per event).
const LATENCY_BATCH: usize = 256;

/// One subscriber: connects from `since`, checks order and gaps, records delivery latency,
/// and returns the last seq it saw once it reaches `target` (sent when the load is over).
pub(super) async fn subscriber(
    sh: Arc<Shared>,
    since: i64,
    target: tokio::sync::oneshot::Receiver<i64>,
    connecting: Arc<tokio::sync::Semaphore>,
) -> i64 {
    let url = sh.client.sync_url(Some(since), "");
    let connected = async {
        let _turn = connecting.acquire().await;
        tokio::time::timeout(Duration::from_secs(60), connect(&url)).await
    };
    let mut ws = match connected.await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            sh.rec.settled.fetch_add(1, Ordering::Relaxed);
            sh.rec.fail(format!("subscriber could not connect: {e}"));
            return since;
        }
        Err(_) => {
            sh.rec.settled.fetch_add(1, Ordering::Relaxed);
            sh.rec
                .fail("subscriber could not connect within 60 s".to_string());
            return since;
        }
    };
    let mut latencies = Vec::with_capacity(LATENCY_BATCH);
    let last = follow(&sh, &mut ws, since, target, &mut latencies).await;
    sh.rec.ok_many("event", &latencies);
    last
}

/// The feed's WebSocket at `url` (`ws://host[:port]/path?query`; the tool speaks no TLS).
async fn connect(url: &str) -> Result<FeedSocket<tokio::net::TcpStream>, FeedError> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        FeedError::Handshake(format!(
            "{url}: the load tool's subscribers speak ws:// only"
        ))
    })?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let tcp = tokio::net::TcpStream::connect(host).await?;
    tcp.set_nodelay(true)?;
    FeedSocket::handshake(tcp, host, path).await
}

/// Reads the feed from `since` on, checking order and gaps, until `target` (sent once the
/// load is over) is reached or the stream ends; returns the last seq seen. Delivery
/// latencies go to `latencies`, recorded every [`LATENCY_BATCH`].
async fn follow<S>(
    sh: &Shared,
    ws: &mut FeedSocket<S>,
    since: i64,
    mut target: tokio::sync::oneshot::Receiver<i64>,
    latencies: &mut Vec<f64>,
) -> i64
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut hello = false;
    let mut last = since;
    // The target, once sent (0: not yet); `target_known` also when it never will be.
    let mut want = 0;
    let mut target_known = false;
    loop {
        if want > 0 && last >= want {
            return last;
        }
        let received = tokio::select! {
            biased;
            r = ws.next() => r,
            sent = &mut target, if !target_known => {
                target_known = true;
                want = sent.unwrap_or(0);
                continue;
            }
        };
        let text = match received {
            Ok(Some(Received::Text(t))) => t,
            Ok(Some(Received::Close(c))) => {
                sh.rec
                    .fail(format!("subscriber closed by server at seq {last}: {c:?}"));
                return last;
            }
            Ok(Some(Received::Binary(_))) => continue,
            Err(e) => {
                sh.rec.fail(format!("subscriber error at seq {last}: {e}"));
                return last;
            }
            Ok(None) => return last,
        };
        let Ok(text) = std::str::from_utf8(text) else {
            sh.rec.fail(format!(
                "subscriber got a text frame that is not UTF-8 after seq {last}"
            ));
            return last;
        };
        let Ok(v) = serde_json::from_str::<FeedFrame<'_>>(text) else {
            sh.rec.fail("subscriber got invalid JSON".into());
            return last;
        };
        let Some(seq) = v.seq else {
            // hello: subscribed, the load may start
            if !hello {
                hello = true;
                sh.rec.connected.fetch_add(1, Ordering::Relaxed);
                sh.rec.settled.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        };
        if seq != last + 1 {
            sh.rec.gaps.fetch_add(1, Ordering::Relaxed);
            sh.rec
                .fail(format!("subscriber saw seq {seq} after {last}"));
        }
        last = seq;
        sh.rec.events.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = v.at.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }) {
            let lag = time::OffsetDateTime::now_utc() - at;
            latencies.push(lag.as_seconds_f64().max(0.0) * 1000.0);
            if latencies.len() >= LATENCY_BATCH {
                sh.rec.ok_many("event", latencies);
                latencies.clear();
            }
        }
    }
}

/// This process's CPU time (user + system, seconds) and peak RSS (MiB), from `/proc/self`
/// (Linux; `None` elsewhere). The tool shares the machine with the server it measures.
pub(super) async fn own_usage() -> Option<(f64, f64)> {
    let stat = tokio::fs::read_to_string("/proc/self/stat").await.ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = tokio::fs::read_to_string("/proc/self/status").await.ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    // USER_HZ: 100 on every Linux architecture the tool runs on.
    Some((ticks as f64 / 100.0, hwm_kib / 1024.0))
}

pub(super) async fn latest_seq(client: &Client) -> Result<i64, ClientError> {
    let resp = client
        .http()
        .get(client.url("/api/v1/events?wait=0&limit=1"))
        .send()
        .await?;
    let v: serde_json::Value = Client::parse(resp).await?;
    v["next_since"]
        .as_i64()
        .ok_or_else(|| ClientError::Other("events answer without next_since".into()))
}
