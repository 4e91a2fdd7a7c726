//! Deadlines on request bodies: a body that does not arrive in time ends its request with 408
//! `body_timeout` and its connection.
//!
//! [`deadline`] wraps the request body of every route whose body is not streamed by its
//! handler (`BodyRule::Bounded` in `routes.rs`: the JSON routes, and every route that reads
//! no body) in a [`DeadlineBody`]: the whole body within `body_timeout`, and no gap between
//! bytes longer than `body_idle_timeout`. Whichever extractor reads the body (JSON, bytes)
//! then fails, and the layer answers 408 in its place. Without it a client that sends
//! `Content-Length: 1000` and then nothing holds a connection, and a slot of the connection
//! cap, for as long as it likes. Uploads enforce their own deadlines while they stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::Config;
use crate::error::AppError;

/// The two deadlines of a request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// The whole body, from the moment the handler is called.
    pub(crate) total: Duration,
    /// The longest wait for the next bytes.
    pub(crate) idle: Duration,
}

impl Deadlines {
    pub(crate) fn from_config(config: &Config) -> Self {
        Deadlines {
            total: config.body_timeout,
            idle: config.body_idle_timeout,
        }
    }
}

/// Which deadline ended a body (0: none yet).
const NOT_FIRED: u8 = 0;
const IDLE_FIRED: u8 = 1;
const TOTAL_FIRED: u8 = 2;

/// The body ended by a deadline; what the reading extractor sees as the body's error.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub(crate) struct BodyTimeout;

/// A request body that fails with [`BodyTimeout`] once a deadline passes, and records which.
pub(crate) struct DeadlineBody {
    inner: Body,
    total: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
    fired: Arc<AtomicU8>,
}

impl DeadlineBody {
    fn new(inner: Body, deadlines: Deadlines, fired: Arc<AtomicU8>) -> Self {
        let now = Instant::now();
        DeadlineBody {
            inner,
            total: Box::pin(tokio::time::sleep_until(now + deadlines.total)),
            idle: Box::pin(tokio::time::sleep_until(now + deadlines.idle)),
            idle_for: deadlines.idle,
            fired,
        }
    }

    fn expire(&self, which: u8) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.fired.store(which, Ordering::Relaxed);
        Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))))
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.fired.load(Ordering::Relaxed) != NOT_FIRED {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        // Checked before the body too: a client trickling bytes just often enough never
        // leaves the body pending long enough for the idle deadline.
        if this.total.as_mut().poll(cx).is_ready() {
            return this.expire(TOTAL_FIRED);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.idle_for;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => Poll::Ready(end),
            Poll::Pending => {
                if this.idle.as_mut().poll(cx).is_ready() {
                    return this.expire(IDLE_FIRED);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Route layer: the request body under [`Deadlines`]; a body ended by one is answered 408
/// `body_timeout` with `Connection: close` (the rest of the body may still come), whatever
/// the handler made of the failed read.
pub(crate) async fn deadline(
    State(deadlines): State<Deadlines>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let fired = Arc::new(AtomicU8::new(NOT_FIRED));
    let request =
        request.map(|body| Body::new(DeadlineBody::new(body, deadlines, Arc::clone(&fired))));
    let response = next.run(request).await;
    let message = match fired.load(Ordering::Relaxed) {
        NOT_FIRED => return response,
        IDLE_FIRED => format!(
            "no body bytes arrived for {} s",
            deadlines.idle.as_secs_f64()
        ),
        _ => format!(
            "the request body did not arrive within {} s",
            deadlines.total.as_secs_f64()
        ),
    };
    metrics::counter!("vaultfs_request_body_timeouts_total").increment(1);
    let mut response =
        AppError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", message).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
