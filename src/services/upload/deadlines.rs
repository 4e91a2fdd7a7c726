//! The deadlines every upload body is held to ([`BodyLimits`]), applied as a stream
//! wrapper ([`Deadlines`]) that the one upload pipeline puts around each body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::Instant;

use super::UploadError;

/// The deadlines every upload body is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Longest wait for the next chunk.
    pub idle: Duration,
    /// Bytes per second, averaged over `window` of waiting for the client; 0: no minimum.
    pub min_rate: u64,
    pub(crate) window: Duration,
    /// Longest wait for the next multipart part's headers.
    pub part_wait: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self::from_config(&crate::config::Config::default())
    }
}

impl BodyLimits {
    pub(crate) fn from_config(config: &crate::config::Config) -> Self {
        BodyLimits {
            idle: config.body_idle_timeout,
            min_rate: config.upload_min_rate,
            window: config.upload_min_rate_window,
            part_wait: config.multipart_field_timeout,
        }
    }
}

/// A body held to [`BodyLimits`] (and optionally to a total size). The rate counts only time
/// spent waiting for the client: a server busy writing to disk does not make a client slow.
pub(super) struct Deadlines<S> {
    inner: Pin<Box<S>>,
    limits: BodyLimits,
    size_limit: Option<u64>,
    received: u64,
    /// Armed while the inner stream is pending.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Start of the current wait (the idle deadline runs from it).
    idle_since: Option<Instant>,
    /// Start of the part of the current wait not yet added to `window_waited`.
    rate_since: Option<Instant>,
    /// Waiting time and bytes of the current rate window.
    window_waited: Duration,
    window_bytes: u64,
    done: bool,
}

impl<S> Deadlines<S> {
    pub(super) fn new(inner: S, limits: BodyLimits, size_limit: Option<u64>) -> Self {
        Deadlines {
            inner: Box::pin(inner),
            limits,
            size_limit,
            received: 0,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            idle_since: None,
            rate_since: None,
            window_waited: Duration::ZERO,
            window_bytes: 0,
            done: false,
        }
    }

    fn rate_checked(&self) -> bool {
        self.limits.min_rate > 0 && !self.limits.window.is_zero()
    }

    /// Closes the rate window once it is full: an error if too few bytes came in it.
    fn close_window(&mut self) -> Result<(), UploadError> {
        if !self.rate_checked() || self.window_waited < self.limits.window {
            return Ok(());
        }
        let needed = (self.limits.min_rate as f64 * self.limits.window.as_secs_f64()) as u64;
        if self.window_bytes < needed {
            return Err(UploadError::TooSlow {
                min_rate: self.limits.min_rate,
                window: self.limits.window,
            });
        }
        self.window_waited = Duration::ZERO;
        self.window_bytes = 0;
        Ok(())
    }

    fn fail(&mut self, e: UploadError) -> Poll<Option<Result<Bytes, UploadError>>> {
        if e.is_timeout() {
            metrics::counter!("vaultfs_upload_body_timeouts_total").increment(1);
        }
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl<S, E> Stream for Deadlines<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<UploadError>,
{
    type Item = Result<Bytes, UploadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.idle_since = None;
                if let Some(since) = this.rate_since.take() {
                    this.window_waited += since.elapsed();
                }
                this.window_bytes += chunk.len() as u64;
                this.received += chunk.len() as u64;
                if let Some(limit) = this.size_limit.filter(|l| this.received > *l) {
                    return this.fail(UploadError::TooLarge { limit });
                }
                if let Err(e) = this.close_window() {
                    return this.fail(e);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(e.into()),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let now = Instant::now();
                let idle_since = *this.idle_since.get_or_insert(now);
                let mut rate_since = *this.rate_since.get_or_insert(now);
                loop {
                    let idle_deadline = idle_since + this.limits.idle;
                    let deadline = if this.rate_checked() {
                        let left = this.limits.window.saturating_sub(this.window_waited);
                        idle_deadline.min(rate_since + left)
                    } else {
                        idle_deadline
                    };
                    if this.timer.deadline() != deadline {
                        this.timer.as_mut().reset(deadline);
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let now = Instant::now();
                    if now >= idle_deadline {
                        return this.fail(UploadError::Idle(this.limits.idle));
                    }
                    // The rate window filled while waiting: judge it, then wait on in a new one.
                    this.window_waited += now.duration_since(rate_since);
                    rate_since = now;
                    this.rate_since = Some(now);
                    if let Err(e) = this.close_window() {
                        return this.fail(e);
                    }
                }
            }
        }
    }
}
