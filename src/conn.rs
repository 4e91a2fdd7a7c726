//! The server side of one TCP connection: write-idle timeout and lingering close.
//!
//! Lingering close: when the server answers before reading a request body (412, 413, 503...)
//! and closes, unread bytes in the socket's receive buffer make the kernel send RST instead of
//! FIN, and the client's kernel then throws away the answer it had already received. The
//! client sees "connection reset" in place of the error that says why. Like nginx's
//! `lingering_close`, a dropped connection is handed to a small task that shuts down the
//! write side and reads and discards what the client still sends, for a bounded time and
//! amount, before closing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How long a closed connection keeps draining, in all.
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// How long it waits for the next bytes while draining.
const LINGER_IDLE: Duration = Duration::from_secs(1);
/// How much it drains at most.
const LINGER_BYTES: u64 = 64 << 20;

#[derive(Debug)]
pub(crate) struct ServerIo {
    stream: Option<TcpStream>,
    write_timeout: Duration,
    /// Armed once a write has to wait; kept (not re-created) across writes. When it fires, the
    /// connection is cut only if no write progressed since `last_progress + write_timeout`.
    write_deadline: Option<Pin<Box<Sleep>>>,
    last_progress: Instant,
    /// Sends the file regions of zero-copy responses ([`crate::zero_copy`]); set by
    /// [`ServerIo::zero_copy`] on plain-TCP connections only.
    zero_copy: Option<crate::zero_copy::Sender>,
}

impl ServerIo {
    /// `write_timeout`: a write that makes no progress for this long fails (the client
    /// stopped reading).
    pub(crate) fn new(stream: TcpStream, write_timeout: Duration) -> Self {
        ServerIo {
            stream: Some(stream),
            write_timeout,
            write_deadline: None,
            last_progress: Instant::now(),
            zero_copy: None,
        }
    }

    /// Turns on zero-copy responses for this connection and returns the handle that the
    /// connection's task must serve with ([`crate::zero_copy::scope`]); `None` where the
    /// platform has no splice. Only for connections whose bytes go to the socket as written
    /// (never under TLS).
    pub(crate) fn zero_copy(&mut self) -> Option<crate::zero_copy::Handle> {
        let (sender, handle) = crate::zero_copy::Sender::new()?;
        self.zero_copy = Some(sender);
        Some(handle)
    }

    /// One write of `len` placeholder bytes: the zero-copy sender moves that much of its file
    /// region to the socket. Without a sender (placeholders on a connection that did not turn
    /// zero-copy on) the write fails: never the placeholder's zeros in place of content.
    fn send_region(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let (Some(stream), Some(sender)) = (self.stream.as_ref(), self.zero_copy.as_mut()) else {
            return Poll::Ready(Err(io::Error::other(
                "zero-copy body on a connection without zero-copy",
            )));
        };
        match sender.poll_send(stream, cx, len) {
            Poll::Ready(r) => {
                self.last_progress = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }

    /// Whether a zero-copy send is half-way (its bytes must go out before anything else).
    fn sending_region(&self) -> bool {
        self.zero_copy
            .as_ref()
            .is_some_and(crate::zero_copy::Sender::busy)
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Turns a pending write into a timeout error once no write progressed for
    /// `write_timeout`. One timer per connection, re-armed only when it fires early: a busy
    /// download does not pay a timer registration per pending write.
    fn pending_write<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let due = self.last_progress + self.write_timeout;
        let deadline = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            if deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last_progress + self.write_timeout;
            if Instant::now() >= due {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading the response",
                )));
            }
            // Writes progressed since the timer was set: wait for the rest of the period.
            deadline.as_mut().reset(due);
        }
    }

    /// One write attempt through `write`, with progress tracking and the idle deadline.
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut TcpStream, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let polled = match self.stream() {
            Ok(s) => write(s, cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        match polled {
            Poll::Ready(r) => {
                self.last_progress = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => self.pending_write(cx),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if crate::zero_copy::is_placeholder(buf) {
            return this.send_region(cx, buf.len());
        }
        if this.sending_region() {
            return Poll::Ready(Err(interleaved()));
        }
        this.write_with(cx, |s, cx| Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Placeholders go out by splice, everything else by writev: a write is either the
        // first (non-empty) placeholder slice or the slices before the first placeholder.
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return this.write_with(cx, |s, cx| Pin::new(s).poll_write_vectored(cx, bufs));
        };
        if crate::zero_copy::is_placeholder(&bufs[first]) {
            return this.send_region(cx, bufs[first].len());
        }
        if this.sending_region() {
            return Poll::Ready(Err(interleaved()));
        }
        let end = bufs
            .iter()
            .position(|b| crate::zero_copy::is_placeholder(b))
            .unwrap_or(bufs.len());
        let bufs = &bufs[..end];
        this.write_with(cx, |s, cx| Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Other bytes written while a zero-copy send is half-way: they would land inside it.
fn interleaved() -> io::Error {
    io::Error::other("a write interleaved with a zero-copy send")
}

impl Drop for ServerIo {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(linger(stream));
            }
        }
    }
}

/// Sends FIN, then discards what the client still sends until it closes, goes quiet for
/// [`LINGER_IDLE`], or the bounds are reached.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let end = Instant::now() + LINGER_TOTAL;
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0u64;
    while drained < LINGER_BYTES {
        let wait = LINGER_IDLE.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n as u64,
            _ => break,
        }
    }
}
