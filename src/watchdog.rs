//! Runtime stall watchdog (docs/CONCURRENCY.md, invariant 2).
//!
//! A dedicated OS thread (not a runtime task, so it keeps working when every worker is
//! wedged) spawns a tiny probe task onto the runtime every `interval` and measures how long the
//! runtime takes to poll it: the scheduling delay. A delay past `threshold` is logged as a
//! warning while it lasts and counted; the last and maximum delays, and the age of a probe
//! still waiting, are readable through [`StallMonitor::snapshot`] for the admin endpoint, the
//! metrics exporter and liveness.
//!
//! What it sees: any stall of the whole runtime (all workers blocked or saturated), and of a
//! single-threaded runtime. A single blocked worker among several is seen only when the probe
//! lands on that worker's queue; the lints (`clippy.toml`) are what keep blocking calls out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug)]
struct Inner {
    origin: Instant,
    threshold: Duration,
    interval: Duration,
    stop: AtomicBool,
    last_delay_ns: AtomicU64,
    max_delay_ns: AtomicU64,
    stalls: AtomicU64,
    probes: AtomicU64,
    /// Nanoseconds after `origin` at which the outstanding probe was sent; 0 when none waits.
    outstanding_since_ns: AtomicU64,
    /// Recent stalls over the threshold: (ended at, ns after `origin`; delay, ns). Written by
    /// the watchdog thread only, read by liveness; never held across an await.
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, u64)>>,
}

/// Stalls remembered for liveness.
const RECENT_STALLS: usize = 64;

/// Why liveness fails.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Unresponsive {
    /// The stall's length (so far, when `ongoing`).
    pub delay_ms: f64,
    pub ongoing: bool,
    /// How long ago it ended (0 when ongoing).
    pub ended_ms_ago: f64,
}

/// Handle to the watchdog thread; stops it when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct StallMonitor {
    inner: Arc<Inner>,
    _stopper: Arc<Stopper>,
}

#[derive(Debug)]
struct Stopper {
    inner: Arc<Inner>,
    thread: Option<std::thread::Thread>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StallSnapshot {
    pub last_delay_ms: f64,
    pub max_delay_ms: f64,
    /// How long the probe now in flight has waited (0 when none is waiting).
    pub current_delay_ms: f64,
    pub stalls_over_threshold: u64,
    pub probes: u64,
    pub threshold_ms: f64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl StallMonitor {
    /// Starts probing `handle`'s runtime.
    pub(crate) fn start(
        handle: tokio::runtime::Handle,
        interval: Duration,
        threshold: Duration,
    ) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            origin: Instant::now(),
            threshold,
            interval,
            stop: AtomicBool::new(false),
            last_delay_ns: AtomicU64::new(0),
            max_delay_ns: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            outstanding_since_ns: AtomicU64::new(0),
            recent: std::sync::Mutex::new(std::collections::VecDeque::new()),
        });
        let thread_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("vaultfs-watchdog".into())
            .spawn(move || probe_loop(&thread_inner, &handle))?;
        Ok(StallMonitor {
            _stopper: Arc::new(Stopper {
                inner: Arc::clone(&inner),
                thread: Some(thread.thread().clone()),
            }),
            inner,
        })
    }

    pub(crate) fn snapshot(&self) -> StallSnapshot {
        let i = &self.inner;
        let since = i.outstanding_since_ns.load(Ordering::Relaxed);
        let current = if since == 0 {
            0
        } else {
            nanos(i.origin.elapsed()).saturating_sub(since)
        };
        StallSnapshot {
            last_delay_ms: ms(i.last_delay_ns.load(Ordering::Relaxed)),
            max_delay_ms: ms(i.max_delay_ns.load(Ordering::Relaxed).max(current)),
            current_delay_ms: ms(current),
            stalls_over_threshold: i.stalls.load(Ordering::Relaxed),
            probes: i.probes.load(Ordering::Relaxed),
            threshold_ms: ms(nanos(i.threshold)),
        }
    }
}

impl StallMonitor {
    /// Liveness: `Err` when the runtime's scheduling delay is over `grace` now, or was at any
    /// time in the last `window`. Kubernetes restarts a pod whose runtime keeps wedging, even
    /// if each probe happens to land between stalls.
    pub(crate) fn liveness(&self, grace: Duration, window: Duration) -> Result<(), Unresponsive> {
        let i = &self.inner;
        let now = nanos(i.origin.elapsed());
        let since = i.outstanding_since_ns.load(Ordering::Relaxed);
        if since != 0 && now.saturating_sub(since) > nanos(grace) {
            return Err(Unresponsive {
                delay_ms: ms(now.saturating_sub(since)),
                ongoing: true,
                ended_ms_ago: 0.0,
            });
        }
        let recent = match i.recent.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        let worst = recent
            .iter()
            .filter(|(end, delay)| {
                *delay > nanos(grace) && now.saturating_sub(*end) <= nanos(window)
            })
            .max_by_key(|(_, delay)| *delay);
        match worst {
            Some((end, delay)) => Err(Unresponsive {
                delay_ms: ms(*delay),
                ongoing: false,
                ended_ms_ago: ms(now.saturating_sub(*end)),
            }),
            None => Ok(()),
        }
    }
}

fn probe_loop(inner: &Inner, handle: &tokio::runtime::Handle) {
    while !inner.stop.load(Ordering::Relaxed) {
        let (tx, rx) = sync_channel::<()>(1);
        let sent = Instant::now();
        inner
            .outstanding_since_ns
            .store(nanos(inner.origin.elapsed()).max(1), Ordering::Relaxed);
        handle.spawn(async move {
            let _ = tx.try_send(());
        });
        let mut warned = false;
        loop {
            match rx.recv_timeout(inner.threshold) {
                Ok(()) => break,
                Err(RecvTimeoutError::Timeout) => {
                    if inner.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    warned = true;
                    tracing::warn!(
                        waited_ms = sent.elapsed().as_millis() as u64,
                        "runtime stall: a probe task has not been scheduled yet"
                    );
                }
                // The runtime shut down and dropped the probe.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let delay = nanos(sent.elapsed());
        inner.outstanding_since_ns.store(0, Ordering::Relaxed);
        inner.probes.fetch_add(1, Ordering::Relaxed);
        inner.last_delay_ns.store(delay, Ordering::Relaxed);
        inner.max_delay_ns.fetch_max(delay, Ordering::Relaxed);
        if delay > nanos(inner.threshold) {
            inner.stalls.fetch_add(1, Ordering::Relaxed);
            let mut recent = match inner.recent.lock() {
                Ok(r) => r,
                Err(poisoned) => poisoned.into_inner(),
            };
            if recent.len() == RECENT_STALLS {
                recent.pop_front();
            }
            recent.push_back((nanos(inner.origin.elapsed()), delay));
            drop(recent);
            tracing::warn!(
                delay_ms = ms(delay),
                recovered = warned,
                "runtime stall: scheduling delay over threshold"
            );
        }
        // Not a sleep in async code: this is the watchdog's own OS thread.
        std::thread::park_timeout(inner.interval);
    }
}
