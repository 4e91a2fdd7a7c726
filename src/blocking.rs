//! The one place that may hand work to tokio's blocking pool.
//!
//! Async code never blocks a runtime worker (docs/CONCURRENCY.md, invariant 2). Work that must
//! block (CPU-heavy hashing of large buffers, the odd synchronous syscall) goes through [`run`],
//! which keeps the caller's tracing span. `clippy.toml` bans `tokio::task::spawn_blocking`
//! everywhere else so that every use is accounted for here.

use std::io;

/// Runs `f` on the blocking pool and waits for it. A panic in `f` becomes an `io::Error`.
#[allow(clippy::disallowed_methods)] // this is the wrapper the lint points to
pub async fn run<F, T>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(result) => result,
        Err(join_error) => Err(io::Error::other(format!(
            "blocking task failed: {join_error}"
        ))),
    }
}
