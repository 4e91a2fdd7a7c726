//! The one place that may hand work to tokio's blocking pool.
//!
//! Async code never blocks a runtime worker (docs/CONCURRENCY.md, invariant 2). Work that must
//! block (CPU-heavy hashing of large buffers, the odd synchronous syscall) goes through [`run`],
//! which keeps the caller's tracing span. `clippy.toml` bans `tokio::task::spawn_blocking`
//! everywhere else so that every use is accounted for here.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

static QUEUED: AtomicUsize = AtomicUsize::new(0);
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Calls waiting for a blocking thread, and calls running on one (for `/metrics`).
pub(crate) fn depth() -> (usize, usize) {
    (
        QUEUED.load(Ordering::Relaxed),
        RUNNING.load(Ordering::Relaxed),
    )
}

/// Keeps the counters right even when a queued call is dropped with the runtime.
struct Count(&'static AtomicUsize);

impl Count {
    fn new(c: &'static AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Count(c)
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `f` on the blocking pool and waits for it. A panic in `f` becomes an `io::Error`.
#[allow(clippy::disallowed_methods)] // this is the wrapper the lint points to
pub(crate) async fn run<F, T>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    let queued = Count::new(&QUEUED);
    let work = move || {
        drop(queued);
        let _running = Count::new(&RUNNING);
        span.in_scope(f)
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => Err(io::Error::other(format!(
            "blocking task failed: {join_error}"
        ))),
    }
}
