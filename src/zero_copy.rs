//! Zero-copy file responses on plain-TCP HTTP/1.1 connections (Linux).
//!
//! hyper writes a response body through the connection's `AsyncWrite`, so the bytes of a file
//! would be read into user space and copied back into the socket. For a whole file or a single
//! range of a blob on local disk, the handler instead gives hyper a body of *placeholders*:
//! slices of one private static buffer ([`PLACEHOLDER`]) that is never read, standing for the
//! file's bytes, and hands the file region to the connection through a [`Handle`]. hyper queues
//! body chunks as they are (its vectored write strategy, which `server.rs` pins), so when a
//! write reaches [`crate::conn::ServerIo`] it recognizes the placeholder slices by address and
//! moves the region's bytes with `splice(2)` instead: file to a pipe on the blocking pool (the
//! only step that may wait for the disk), pipe to socket on the runtime worker when the socket
//! is writable (never blocks: nonblocking socket, `SPLICE_F_NONBLOCK`, and tokio's readiness
//! handling through `try_io`). The page-cache pages travel by reference; the only copy left is
//! the kernel's into the socket buffer, as with nginx's `sendfile`.
//!
//! Where it applies: only connections served without TLS put a [`Handle`] in the task-local
//! [`current`] (TLS must encrypt the bytes, so it gets the ordinary stream), only local file
//! blobs (not inline, not S3). Everything else about the response (status, headers, `Range`,
//! HEAD, conditional requests, metrics) is decided by the handler as before; a placeholder the
//! connection cannot match to a region fails the write (the connection closes) rather than
//! sending the placeholder's zeros.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::Stream;

/// Length of [`PLACEHOLDER`]: the largest body chunk of a zero-copy response.
const PLACEHOLDER_LEN: usize = 1 << 20;

/// Stands for file bytes; never read (in `.bss`, so it costs no memory either).
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

/// True when `buf` lies in [`PLACEHOLDER`]: bytes the connection sends from its region.
pub(crate) fn is_placeholder(buf: &[u8]) -> bool {
    let range = PLACEHOLDER.as_ptr_range();
    !buf.is_empty() && range.contains(&buf.as_ptr()) && buf.as_ptr_range().end <= range.end
}

tokio::task_local! {
    /// The zero-copy handle of the connection this task serves (plain TCP only).
    static CONNECTION: Handle;
}

/// The zero-copy handle of the connection whose task calls this: `Some` only while serving a
/// plain-TCP connection on Linux.
pub(crate) fn current() -> Option<Handle> {
    CONNECTION.try_with(Handle::clone).ok()
}

/// Runs `serve` (one connection's future) with `handle` as its [`current`].
pub(crate) async fn scope<F: std::future::Future>(handle: Handle, serve: F) -> F::Output {
    CONNECTION.scope(handle, serve).await
}

/// A file region to be sent on a connection.
struct Region {
    file: Arc<std::fs::File>,
    /// File offset of the next byte not yet moved into the pipe.
    next: u64,
    /// Bytes not yet moved into the pipe.
    unfilled: u64,
}

/// Shared between a connection ([`Sender`]) and the response body it is writing.
#[derive(Clone, Default)]
pub(crate) struct Handle {
    /// The region the placeholders being written stand for: set by the body when hyper first
    /// polls it, taken by the connection once every byte of it is sent.
    region: Arc<Mutex<Option<Region>>>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("zero_copy::Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// The body of a response of `len` bytes of `file` from `offset`: placeholders that the
    /// connection replaces by the file's bytes. `len` is not 0.
    pub(crate) fn body(
        &self,
        file: std::fs::File,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let region = Region {
            file: Arc::new(file),
            next: offset,
            unfilled: len,
        };
        let state = (self.clone(), Some(region), len);
        futures_util::stream::unfold(state, |(handle, region, left)| async move {
            if left == 0 {
                return None;
            }
            if let Some(region) = region {
                // Installed when hyper starts on the body, so that a response that is never
                // written (replaced, dropped) cannot leave its region to the next one.
                let Ok(mut slot) = handle.region.lock() else {
                    return Some((
                        Err(io::Error::other("zero-copy slot poisoned")),
                        (handle, None, 0),
                    ));
                };
                if slot.is_some() {
                    drop(slot);
                    let e =
                        io::Error::other("zero-copy region still in use by an earlier response");
                    return Some((Err(e), (handle, None, 0)));
                }
                *slot = Some(region);
            }
            let n = usize::try_from(left).map_or(PLACEHOLDER_LEN, |l| l.min(PLACEHOLDER_LEN));
            let chunk = Bytes::from_static(&PLACEHOLDER[..n]);
            Some((Ok(chunk), (handle, None, left - n as u64)))
        })
    }
}

/// Capacity asked for the pipe: the most a single hop to the blocking pool moves.
#[cfg(target_os = "linux")]
const PIPE_SIZE: usize = 1 << 20;

/// A pipe between the file and the socket.
#[cfg(target_os = "linux")]
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: Arc<std::os::fd::OwnedFd>,
    capacity: usize,
}

/// Empty pipes kept for the next zero-copy responses, at most [`PIPE_POOL`] (a pipe costs
/// four syscalls to make and close).
#[cfg(target_os = "linux")]
static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Pipes kept in [`PIPES`] at most: kept-alive idle connections hold none.
#[cfg(target_os = "linux")]
const PIPE_POOL: usize = 64;

#[cfg(target_os = "linux")]
impl Pipe {
    /// An empty pipe, from the pool or new.
    fn take() -> io::Result<Self> {
        let pooled = PIPES.lock().ok().and_then(|mut pool| pool.pop());
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Self::new(),
        }
    }

    /// Back to the pool; only ever called with an empty pipe.
    fn give_back(self) {
        if let Ok(mut pool) = PIPES.lock() {
            if pool.len() < PIPE_POOL {
                pool.push(self);
            }
        }
    }

    fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        // Past the per-user pipe allowance the kernel refuses a larger pipe: keep the default.
        let capacity = match rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE) {
            Ok(n) => n,
            Err(_) => rustix::pipe::fcntl_getpipe_size(&write)?,
        };
        Ok(Pipe {
            read,
            write: Arc::new(write),
            capacity,
        })
    }
}

type Fill = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<usize>> + Send>>;

/// The connection's side: sends the placeholders' bytes from the [`Handle`]'s region.
pub(crate) struct Sender {
    handle: Handle,
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
    /// Bytes of the region in the pipe, not yet sent.
    in_pipe: usize,
    /// Moving the next part of the region into the pipe, on the blocking pool.
    filling: Option<Fill>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("zero_copy::Sender")
            .field("in_pipe", &self.in_pipe)
            .field("filling", &self.filling.is_some())
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender and the handle its connection's task serves with; `None` where splice is not
    /// available.
    pub(crate) fn new() -> Option<(Sender, Handle)> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let handle = Handle::default();
        let sender = Sender {
            handle: handle.clone(),
            #[cfg(target_os = "linux")]
            pipe: None,
            in_pipe: 0,
            filling: None,
        };
        Some((sender, handle))
    }

    /// True while a part of the region is on its way into the pipe: the connection may not
    /// write anything else meanwhile.
    pub(crate) fn busy(&self) -> bool {
        self.filling.is_some() || self.in_pipe > 0
    }

    /// Sends at most `max` bytes of the region on `stream`, as one write of `max` placeholder
    /// bytes. While one part is sent from the pipe, the next is read into it on the blocking
    /// pool. Pending while no byte is in the pipe yet (read from disk), or while the socket is
    /// full (the caller's write-idle deadline applies to both).
    #[cfg(target_os = "linux")]
    pub(crate) fn poll_send(
        &mut self,
        stream: &tokio::net::TcpStream,
        cx: &mut std::task::Context<'_>,
        max: usize,
    ) -> std::task::Poll<io::Result<usize>> {
        use std::os::fd::AsFd;
        use std::task::Poll;
        loop {
            if let Some(fill) = self.filling.as_mut() {
                if let Poll::Ready(filled) = fill.as_mut().poll(cx) {
                    self.filling = None;
                    match filled {
                        Ok(0) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the blob is shorter than its metadata says",
                            )))
                        }
                        Ok(n) => {
                            self.filled(n)?;
                            self.in_pipe += n;
                        }
                        // The pipe's slots were used up: filled again once it drains.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.in_pipe > 0 => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            // Keep the pipe topped up: the disk is read while the socket is written.
            let capacity = self.pipe.as_ref().map_or(0, |p| p.capacity);
            if self.filling.is_none() && self.in_pipe <= capacity / 2 && self.start_fill()? {
                continue;
            }
            if self.in_pipe == 0 {
                if self.filling.is_some() {
                    return Poll::Pending;
                }
                // Never the placeholder's zeros in place of content.
                return Poll::Ready(Err(io::Error::other(
                    "placeholder bytes without a file region",
                )));
            }
            let Some(pipe) = &self.pipe else {
                return Poll::Ready(Err(io::Error::other("zero-copy pipe missing")));
            };
            if let Err(e) = std::task::ready!(stream.poll_write_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            let want = self.in_pipe.min(max);
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                let flags = rustix::pipe::SpliceFlags::NONBLOCK;
                Ok(rustix::pipe::splice(
                    &pipe.read,
                    None,
                    stream.as_fd(),
                    None,
                    want,
                    flags,
                )?)
            });
            match sent {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.in_pipe -= n;
                    self.finish_if_done()?;
                    metrics::counter!("vaultfs_download_zero_copy_bytes_total").increment(n as u64);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Hands the next part of the region (as much as the pipe has room for) to the blocking
    /// pool; false when the whole region is in the pipe already (or there is none).
    #[cfg(target_os = "linux")]
    fn start_fill(&mut self) -> io::Result<bool> {
        let (file, offset, unfilled) = {
            let slot = self
                .handle
                .region
                .lock()
                .map_err(|_| io::Error::other("zero-copy slot poisoned"))?;
            match slot.as_ref().filter(|r| r.unfilled > 0) {
                Some(r) => (Arc::clone(&r.file), r.next, r.unfilled),
                None => return Ok(false),
            }
        };
        if self.pipe.is_none() {
            self.pipe = Some(Pipe::take()?);
        }
        let Some(pipe) = &self.pipe else {
            return Err(io::Error::other("zero-copy pipe missing"));
        };
        let room = pipe.capacity.saturating_sub(self.in_pipe);
        let want = usize::try_from(unfilled).map_or(room, |u| u.min(room));
        let pipe_in = Arc::clone(&pipe.write);
        self.filling = Some(Box::pin(crate::blocking::run(move || {
            fill(&file, offset, &pipe_in, want)
        })));
        Ok(true)
    }

    /// Accounts `n` bytes moved into the pipe by the fill that just finished.
    #[cfg(target_os = "linux")]
    fn filled(&mut self, n: usize) -> io::Result<()> {
        let mut slot = self
            .handle
            .region
            .lock()
            .map_err(|_| io::Error::other("zero-copy slot poisoned"))?;
        let Some(region) = slot.as_mut().filter(|r| r.unfilled >= n as u64) else {
            return Err(io::Error::other("zero-copy region changed during a fill"));
        };
        region.next += n as u64;
        region.unfilled -= n as u64;
        Ok(())
    }

    /// Once the whole region is sent: frees the slot for the next response and returns the
    /// pipe to the pool (an idle kept-alive connection holds no pipe).
    #[cfg(target_os = "linux")]
    fn finish_if_done(&mut self) -> io::Result<()> {
        if self.in_pipe > 0 || self.filling.is_some() {
            return Ok(());
        }
        let mut slot = self
            .handle
            .region
            .lock()
            .map_err(|_| io::Error::other("zero-copy slot poisoned"))?;
        if slot.as_ref().is_some_and(|r| r.unfilled == 0) {
            *slot = None;
            drop(slot);
            // Empty now (every fill accounted, every byte sent): reusable.
            if let Some(pipe) = self.pipe.take() {
                pipe.give_back();
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn poll_send(
        &mut self,
        _stream: &tokio::net::TcpStream,
        _cx: &mut std::task::Context<'_>,
        _max: usize,
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// Moves `want` bytes of `file` from `offset` into the pipe `pipe_in`, which has room for them
/// (blocking pool: reading the file may wait for the disk). Returns how many it moved (0 at the
/// file's end); fewer than `want`, or `WouldBlock` for none, when the pipe's slots are used up
/// first (partly filled pages).
#[cfg(target_os = "linux")]
fn fill(
    file: &std::fs::File,
    offset: u64,
    pipe_in: &std::os::fd::OwnedFd,
    want: usize,
) -> io::Result<usize> {
    let mut off = offset;
    let mut moved = 0;
    while moved < want {
        let flags = rustix::pipe::SpliceFlags::NONBLOCK;
        match rustix::pipe::splice(file, Some(&mut off), pipe_in, None, want - moved, flags) {
            Ok(0) => break,
            Ok(n) => moved += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) if moved > 0 => break,
            // The pipe's slots are used up (partly filled pages): nothing moved this time.
            Err(e) => return Err(e.into()),
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognized_by_address_only() {
        assert!(is_placeholder(&PLACEHOLDER[..10]));
        assert!(is_placeholder(&PLACEHOLDER[PLACEHOLDER_LEN - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]));
        let zeros = vec![0u8; 16];
        assert!(!is_placeholder(&zeros));
    }
}
