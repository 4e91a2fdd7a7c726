//! The sync feed: `GET /api/v1/sync` (WebSocket) and `GET /api/v1/events` (long-poll).
//!
//! Close codes sent by the server:
//! - 1000: the client closed; we answer in kind.
//! - 1001: the server is shutting down, or the peer stopped answering pings (45 s).
//! - 1007: the client sent a text frame that is not UTF-8.
//! - 1008: the client flooded the feed with data messages (over 100 in 10 s; it takes none).
//! - 1009: the client sent a frame or message over 64 KiB.
//! - 1011: an internal error (the event log could not be read).
//! - 4000: `resync_required`: the cursor is outside the retained log; re-list, then resume from
//!   the `latest_seq` of the preceding frame.
//! - 4401: `token_invalid`: the session's token was revoked or expired (or, on a server that
//!   was open, the first token arrived). Reconnecting needs a valid token.
//!
//! A session re-checks its token at every change of the token table (at once for a
//! revocation through this process, within the reload interval for one made elsewhere) and
//! at the token's expiry; a long-poll waiting then answers 401 `invalid_token`.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::SplitStream;
use futures_util::{Sink, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::ApiQuery;
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::validate_prefix;
use crate::services::auth::Narrowed;
use crate::services::files::RequestCtx;
use crate::services::notification::{until_true, Filter, Frame, SubscribeError};

pub(crate) const MAX_CLIENT_FRAME: usize = 64 * 1024;
pub(crate) const PING_EVERY: Duration = Duration::from_secs(15);
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(45);
pub(crate) const CLOSE_RESYNC: u16 = 4000;
/// The session's token is no longer valid (revoked, expired).
pub const CLOSE_TOKEN_INVALID: u16 = 4401;
/// Client data messages tolerated per window (the feed takes none; pings are separate).
pub const MAX_CLIENT_MESSAGES: u32 = 100;
pub(crate) const CLIENT_MESSAGE_WINDOW: Duration = Duration::from_secs(10);
/// Longest long-poll.
pub const MAX_WAIT_SECS: u64 = 60;
pub(crate) const MAX_EVENTS_LIMIT: usize = 10_000;
/// Most event frames one socket write carries (a subscriber that is behind).
pub(crate) const MAX_BATCH_FRAMES: usize = 256;
/// Most bytes of event frames one socket write carries.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;
/// The WebSocket's read buffer: the feed takes only control frames and small messages, and
/// 10,000 idle subscribers at tungstenite's default of 128 KiB each would hold a lot of it.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes buffered before a write goes to the socket (tungstenite's default is 128 KiB).
const WRITE_BUFFER: usize = 64 * 1024;

/// Query of `GET /api/v1/sync`: resume after event `since`, only events under `prefix`.
#[derive(Debug, Deserialize)]
pub struct SyncQuery {
    since: Option<i64>,
    #[serde(default)]
    prefix: String,
}

/// `GET /api/v1/sync`: upgrades to the WebSocket that streams events from `since` on.
pub async fn sync(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<SyncQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    // Authorization first: a refused subscriber learns nothing about the feed.
    let filter = feed_filter(&q.prefix, &ctx)?;
    let ws = ws.map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("{e}; use GET /api/v1/events for the HTTP long-poll fallback"),
        )
    })?;
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            let notifier = state.files.notifier().clone();
            notifier.spawn_session(session(state, socket, q.since, filter, ctx.principal));
        }))
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Sends with a deadline: a peer that does not read cannot hold the session forever.
async fn send<S>(socket: &mut S, msg: Message) -> bool
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    matches!(
        tokio::time::timeout(PEER_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

/// The requested prefix, seen through the token's: a disjoint request is refused (403).
fn feed_filter(prefix: &str, ctx: &RequestCtx) -> Result<Filter, AppError> {
    let prefix = validate_prefix(prefix)?;
    if ctx.principal.narrow(&prefix) == Narrowed::Disjoint {
        return Err(AppError::forbidden("the token may not see this prefix"));
    }
    Ok(Filter {
        prefix,
        scope: ctx.principal.prefix.clone(),
    })
}

async fn session(
    state: AppState,
    mut socket: WebSocket,
    since: Option<i64>,
    filter: Filter,
    principal: crate::services::auth::Principal,
) {
    let notifier = state.files.notifier().clone();
    let (mut sub, latest) = match notifier.subscribe(since, filter).await {
        Ok(ok) => ok,
        Err(SubscribeError::ResyncRequired { latest, .. }) => {
            let frame = json!({"kind": "resync_required", "latest_seq": latest}).to_string();
            if send(&mut socket, Message::Text(frame.into())).await {
                let _ = send(&mut socket, close(CLOSE_RESYNC, "resync_required")).await;
            }
            return;
        }
        Err(SubscribeError::Store(e)) => {
            tracing::error!(error = %e, "sync: cannot subscribe");
            let _ = send(&mut socket, close(1011, "internal error")).await;
            return;
        }
    };
    let hello = json!({"kind": "hello", "latest_seq": latest}).to_string();
    if !send(&mut socket, Message::Text(hello.into())).await {
        return;
    }
    // The socket's reading half has a task of its own, which also watches for shutdown, the
    // token's revocation and the ping schedule: the writer below waits on the subscription
    // and on one signal from that task, so an event wakes it to poll two futures, not six
    // (at 10,000 subscribers every future polled per event is polled 10,000 times), and it
    // polls no socket read for each event (a read attempt costs a buffer fill and a
    // readiness check).
    let (mut sink, stream) = socket.split();
    let control = std::sync::Arc::new(ControlSignal::default());
    let watch = Watch {
        auth: state.auth.clone(),
        principal,
        shutdown: state.shutdown.clone(),
    };
    // Aborted when the writer ends.
    let reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(read_client(
        stream,
        watch,
        std::sync::Arc::clone(&control),
    )));
    loop {
        tokio::select! {
            biased;
            told = control.told() => match told {
                Control::Ping => {
                    if !send(&mut sink, Message::Ping(Vec::new().into())).await {
                        break;
                    }
                }
                Control::End(close_with) => {
                    if let Some((code, reason)) = close_with {
                        let _ = send(&mut sink, close(code, reason)).await;
                    }
                    break;
                }
            },
            next = sub.next_frame() => match next {
                Ok(Some(frame)) => match send_frames(&mut sink, &mut sub, frame).await {
                    Ok(true) => {}
                    Ok(false) => break, // peer gone or not reading for 45 s
                    Err(e) => {
                        tracing::error!(error = %e, "sync: cannot read the event log");
                        let _ = send(&mut sink, close(1011, "internal error")).await;
                        break;
                    }
                },
                Ok(None) => {
                    let _ = send(&mut sink, close(1001, "server shutting down")).await;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "sync: cannot read the event log");
                    let _ = send(&mut sink, close(1011, "internal error")).await;
                    break;
                }
            },
        }
    }
    drop(reader);
}

/// What a session's reader task tells its writer.
#[derive(Debug, PartialEq, Eq)]
enum Control {
    /// Time for a keep-alive ping.
    Ping,
    /// The session is over: send this close frame first (`None`: the peer is gone).
    End(Option<(u16, &'static str)>),
}

/// [`ControlSignal::flags`]: a ping is due.
const PING_DUE: u8 = 1;
/// [`ControlSignal::flags`]: the session is over ([`ControlSignal::end`] says how).
const ENDED: u8 = 2;

/// From a session's reader task to its writer: a ping is due, or the session is over. The
/// writer polls this at every event, so it is one small allocation read with one atomic
/// load while nothing is pending (a channel's queue was 3.8% of the server's samples at
/// 10,000 subscribers: one more cold allocation per subscriber per event).
#[derive(Default)]
struct ControlSignal {
    /// [`PING_DUE`] and [`ENDED`] bits not yet taken by the writer.
    flags: std::sync::atomic::AtomicU8,
    /// The close frame to send, set once before [`ENDED`].
    end: std::sync::OnceLock<Option<(u16, &'static str)>>,
    /// The writer, waiting.
    waker: futures_util::task::AtomicWaker,
}

impl ControlSignal {
    fn raise(&self, flag: u8) {
        self.flags
            .fetch_or(flag, std::sync::atomic::Ordering::AcqRel);
        self.waker.wake();
    }

    /// A ping is due. Two before the writer takes them are one ping.
    fn ping(&self) {
        self.raise(PING_DUE);
    }

    /// The session is over; the writer sends `close_with` (if any) and stops.
    fn end(&self, close_with: Option<(u16, &'static str)>) {
        // Err: already ended (the first reason stands).
        let _ = self.end.set(close_with);
        self.raise(ENDED);
    }

    /// Takes what is pending, if anything: the end before a ping.
    fn take(&self) -> Option<Control> {
        use std::sync::atomic::Ordering;
        if self.flags.load(Ordering::Acquire) == 0 {
            return None;
        }
        let flags = self.flags.fetch_and(!PING_DUE, Ordering::AcqRel);
        if flags & ENDED != 0 {
            return Some(Control::End(self.end.get().copied().flatten()));
        }
        (flags & PING_DUE != 0).then_some(Control::Ping)
    }

    /// Waits for the next [`Control`]. Cancel-safe: nothing is taken until it is returned.
    async fn told(&self) -> Control {
        std::future::poll_fn(|cx| {
            if let Some(told) = self.take() {
                return std::task::Poll::Ready(told);
            }
            self.waker.register(cx.waker());
            match self.take() {
                Some(told) => std::task::Poll::Ready(told),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// What ends a session besides the client: shutdown and the token's validity.
struct Watch {
    auth: crate::services::auth::Auth,
    principal: crate::services::auth::Principal,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The session's reading half, and its clock: pings every [`PING_EVERY`] (told to the
/// writer), ends a peer silent for [`PEER_TIMEOUT`], and ends at shutdown or when the token
/// stops being valid. Tells the writer [`Control::End`] with the close frame to send: a close
/// in kind (1000), a flood (1008), a protocol error, shutdown or a ping timeout (1001), an
/// invalid token (4401), or `None` when the peer is gone. Pongs to the client's pings are
/// written by tungstenite as it reads.
async fn read_client(
    mut stream: SplitStream<WebSocket>,
    watch: Watch,
    control: std::sync::Arc<ControlSignal>,
) {
    let Watch {
        auth,
        principal,
        mut shutdown,
    } = watch;
    let revoked = auth.until_invalid(&principal);
    tokio::pin!(revoked);
    let shutting_down = until_true(&mut shutdown);
    tokio::pin!(shutting_down);
    let mut ping = tokio::time::interval(PING_EVERY);
    // The first tick would fire at once.
    ping.reset();
    let mut heard = Instant::now();
    let mut window_start = Instant::now();
    let mut client_messages = 0u32;
    let end = loop {
        tokio::select! {
            biased;
            () = &mut shutting_down => break Some((1001, "server shutting down")),
            () = &mut revoked => break Some((CLOSE_TOKEN_INVALID, "token_invalid")),
            _ = ping.tick() => {
                if heard.elapsed() > PEER_TIMEOUT {
                    break Some((1001, "ping timeout"));
                }
                // One still pending behind a busy writer counts as this one.
                control.ping();
            }
            msg = stream.next() => match msg {
                None => break None,
                Some(Ok(Message::Close(_))) => break Some((1000, "bye")),
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    // The feed takes no client data: a trickle is ignored, a flood ends it.
                    heard = Instant::now();
                    if window_start.elapsed() > CLIENT_MESSAGE_WINDOW {
                        window_start = Instant::now();
                        client_messages = 0;
                    }
                    client_messages += 1;
                    if client_messages > MAX_CLIENT_MESSAGES {
                        break Some((1008, "too many client messages"));
                    }
                }
                Some(Ok(_)) => heard = Instant::now(), // pong or ping
                Some(Err(e)) => {
                    let (code, reason) = classify(&e);
                    tracing::debug!(error = %e, code, "sync: client protocol error");
                    break Some((code, reason));
                }
            },
        }
    };
    control.end(end);
}

/// Sends `first` and whatever else the subscription has ready (a subscriber that fell behind
/// has a catch-up batch, a slow one a backlog in the channel), up to [`MAX_BATCH_FRAMES`]
/// frames or [`MAX_BATCH_BYTES`], in one flush: one socket write for many events. Each event
/// is still its own text frame, in seq order. `Ok(false)`: the peer is gone or did not read
/// for [`PEER_TIMEOUT`].
async fn send_frames<S>(
    socket: &mut S,
    sub: &mut crate::services::notification::Subscription,
    first: Frame,
) -> Result<bool, crate::services::metadata::MetadataError>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    // One deadline for the whole batch (one timer, not one per frame and one for the flush).
    let batch = async {
        let mut frames = 1;
        let mut bytes = first.json.len();
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            let Ok(text) = Utf8Bytes::try_from(frame.json) else {
                // Never: the hub and `Frame::of` encode with serde_json.
                tracing::error!(seq = frame.seq, "sync: an event frame is not UTF-8");
                return Ok(false);
            };
            if socket.feed(Message::Text(text)).await.is_err() {
                return Ok(false);
            }
            if frames < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                next = sub.try_next_frame()?;
                if let Some(f) = &next {
                    frames += 1;
                    bytes += f.json.len();
                }
            }
        }
        Ok(socket.flush().await.is_ok())
    };
    match tokio::time::timeout(PEER_TIMEOUT, batch).await {
        Ok(sent) => sent,
        Err(_) => Ok(false),
    }
}

fn classify(e: &axum::Error) -> (u16, &'static str) {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<WsError>() {
            return match ws {
                WsError::Capacity(_) => (1009, "message too big"),
                WsError::Utf8(_) => (1007, "invalid UTF-8"),
                _ => (1002, "protocol error"),
            };
        }
        source = err.source();
    }
    (1002, "protocol error")
}

/// Query of `GET /api/v1/events`: events after `since` under `prefix`, at most `limit`,
/// long-polling up to `wait` seconds.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    since: Option<i64>,
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    wait: Option<u64>,
}

/// `GET /api/v1/events`: `{"events": [...], "next_since": N}`, long-polling up to `wait` s.
pub async fn events(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, AppError> {
    let filter = feed_filter(&q.prefix, &ctx)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_EVENTS_LIMIT);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let poll = state.files.notifier().poll(q.since, &filter, limit, wait);
    let polled = tokio::select! {
        polled = poll => polled,
        () = state.auth.until_invalid(&ctx.principal) => {
            return Err(AppError::unauthorized(
                "invalid_token",
                "the token was revoked or expired while waiting",
            ));
        }
    };
    match polled {
        Ok((events, next_since)) => {
            Ok(Json(json!({"events": events, "next_since": next_since})).into_response())
        }
        Err(SubscribeError::ResyncRequired { latest, .. }) => {
            let body = json!({
                "error": {
                    "code": "resync_required",
                    "message": "the cursor is outside the retained event log; re-list and resume from latest_seq",
                },
                "latest_seq": latest,
            });
            Ok((StatusCode::GONE, Json(body)).into_response())
        }
        Err(SubscribeError::Store(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_control_signal_wakes_the_writer_merges_pings_and_ends_first() {
        let signal = std::sync::Arc::new(ControlSignal::default());
        assert_eq!(signal.take(), None);
        // A waiting writer is woken by a ping raised from another task.
        let writer = std::sync::Arc::clone(&signal);
        let waiting = tokio::spawn(async move { writer.told().await });
        tokio::task::yield_now().await;
        signal.ping();
        let woke = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(woke, Control::Ping);
        assert_eq!(signal.take(), None);
        // Two pings before the writer looks are one.
        signal.ping();
        signal.ping();
        assert_eq!(signal.told().await, Control::Ping);
        assert_eq!(signal.take(), None);
        // The end wins over a pending ping, keeps its first reason and stays raised.
        signal.ping();
        signal.end(Some((1001, "ping timeout")));
        signal.end(None);
        for _ in 0..2 {
            assert_eq!(
                signal.told().await,
                Control::End(Some((1001, "ping timeout")))
            );
        }
    }
}
