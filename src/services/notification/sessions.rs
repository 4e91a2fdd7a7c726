//! The runtime that subscriber sessions run on.
//!
//! One event is written to every subscriber's socket: at 10,000 subscribers that is 10,000
//! tasks woken at once. On the server's main runtime they would queue in front of everything
//! the next event needs (the upload's request, the group commit's statements, the hub's read
//! of the log), so each event's delivery would wait for the previous event's fan-out. Sessions
//! therefore run on a small runtime of their own, and the operating system's scheduler shares
//! the cores between it and the main runtime: the commit path is never queued behind a
//! fan-out. The hub runs here too, so that its wake-ups of the sessions are pushes onto its
//! worker's own queue rather than one cross-runtime wake and thread unpark each (measured
//! with `perf sched`: the two session threads took turns sleeping and waking every ~10 µs).
//! Sockets stay registered with the main runtime's I/O driver (tokio wakes a task on any
//! runtime); timers of a session belong to this runtime.

use std::future::Future;

/// Worker threads of the session runtime: enough to use every core for a large fan-out.
const MAX_WORKERS: usize = 4;

/// The session runtime. Dropping it stops its tasks without waiting (it may be dropped from
/// inside an async context, where a blocking shutdown would panic).
pub(crate) struct SessionRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for SessionRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRuntime")
            .field("running", &self.runtime.is_some())
            .finish()
    }
}

impl SessionRuntime {
    /// A runtime of up to [`MAX_WORKERS`] threads (one per core). Where it cannot be built,
    /// sessions run on the runtime that starts them.
    pub(crate) fn start() -> Self {
        let workers = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
            .clamp(1, MAX_WORKERS);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("vaultfs-feed")
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => SessionRuntime {
                runtime: Some(runtime),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no session runtime; subscriber sessions share the main runtime");
                SessionRuntime { runtime: None }
            }
        }
    }

    /// Runs `session` on the session runtime (or, without one, on the current runtime).
    pub(crate) fn spawn<F>(&self, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(session)),
            None => drop(tokio::spawn(session)),
        }
    }
}

impl Drop for SessionRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_run_on_their_own_threads_and_dropping_inside_async_code_is_safe() {
        let sessions = SessionRuntime::start();
        let (tx, rx) = tokio::sync::oneshot::channel();
        sessions.spawn(async move {
            let name = std::thread::current().name().map(str::to_string);
            let _ = tx.send(name);
        });
        let name = rx.await.ok().flatten();
        assert_eq!(name.as_deref(), Some("vaultfs-feed"));
        // A session that never ends does not hold the drop (no blocking shutdown here).
        sessions.spawn(std::future::pending());
        drop(sessions);
    }
}
