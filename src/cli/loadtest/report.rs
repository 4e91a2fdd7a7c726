//! The load test's report, and the recorder the workers write their results into.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::client::ClientError;

/// Latency samples kept per kind (a run longer than this keeps the first ones).
const MAX_SAMPLES: usize = 2_000_000;

/// Latency percentiles of one kind of request, in milliseconds (all 0 when there were no samples).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(super) fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        Latency {
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            max_ms: samples[samples.len() - 1],
        }
    }
}

/// Results for one kind of request (`upload`, `download`, `move`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    /// Requests of this kind that finished, failed ones included.
    pub count: u64,
    pub(crate) errors: u64,
    pub(crate) per_sec: f64,
    pub(crate) mib_per_sec: f64,
    pub(crate) latency: Latency,
}

/// What the sync subscribers saw of the event feed.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    pub(crate) subscribers: usize,
    /// Events each subscriber should have received: the feed's seq advance over the run.
    pub expected_per_subscriber: i64,
    /// Events received, summed over all subscribers.
    pub delivered: u64,
    /// Subscribers that received every event up to the final seq.
    pub subscribers_complete: usize,
    /// Times a subscriber saw a seq other than the one after its last (each is also a failure).
    pub gaps: u64,
    /// From the event's commit timestamp (millisecond resolution) to its arrival.
    pub delivery_latency: Latency,
    /// Subscribers whose WebSocket connected.
    pub connected: u64,
}

/// What the load tool itself used: it shares the machine with the server it measures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadToolReport {
    /// User + system CPU seconds over the run (`None` where `/proc` is not available).
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` over the run's wall time: the cores the tool kept busy.
    pub cores: Option<f64>,
    /// Peak resident memory of the tool, in MiB (`None` where `/proc` is not available).
    pub peak_rss_mib: Option<f64>,
}

impl LoadToolReport {
    pub(super) fn between(
        before: Option<(f64, f64)>,
        after: Option<(f64, f64)>,
        secs: f64,
    ) -> Self {
        match (before, after) {
            (Some((b, _)), Some((a, rss))) => LoadToolReport {
                cpu_seconds: Some(a - b),
                cores: Some((a - b) / secs.max(1e-9)),
                peak_rss_mib: Some(rss),
            },
            _ => LoadToolReport::default(),
        }
    }
}

/// The outcome of a load test run: per-kind throughput and latency, the event feed, failures;
/// printed as text and optionally as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(crate) url: String,
    pub(crate) seconds: f64,
    pub(crate) uploaders: usize,
    pub(crate) downloaders: usize,
    pub(crate) movers: usize,
    /// Per kind of request (`upload`, `download`, `move`, ...), sorted by name.
    pub kinds: BTreeMap<String, KindReport>,
    pub(crate) longest_stall_seconds: f64,
    /// What the sync subscribers received.
    pub events: EventsReport,
    /// CPU and memory the load tool itself used.
    pub load_tool: LoadToolReport,
    /// Failed requests counted by `"<HTTP status> <error code>"`, or the client error code when
    /// there was no response; any entry fails the run.
    pub errors_by_status: BTreeMap<String, u64>,
    /// Every failure, in the order found (failed requests, gaps, stalls, incomplete subscribers).
    pub failures: Vec<String>,
    /// True when there were no failures and no failed requests.
    pub passed: bool,
}

#[derive(Default)]
pub(super) struct KindStats {
    pub(super) count: u64,
    pub(super) errors: u64,
    pub(super) bytes: u64,
    pub(super) samples: Vec<f64>,
}

#[derive(Default)]
pub(super) struct Recorder {
    /// Guards per-kind counters; held for one update, never across `.await`.
    pub(super) kinds: Mutex<HashMap<&'static str, KindStats>>,
    /// Guards the error tally; same discipline.
    pub(super) errors: Mutex<BTreeMap<String, u64>>,
    /// Guards the first failure messages; same discipline.
    pub(super) failures: Mutex<Vec<String>>,
    pub(super) completions: AtomicU64,
    pub(super) in_flight: AtomicI64,
    pub(super) events: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) connected: AtomicU64,
    /// Subscribers that got their `hello` or gave up connecting.
    pub(super) settled: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// Whether a finished request of `kind` counts toward "requests completing": the stall
    /// detector watches the load, not the prober or the feed.
    fn counts_as_completion(kind: &str) -> bool {
        kind != "event" && kind != "health"
    }

    pub(super) fn ok(&self, kind: &'static str, took: Duration, bytes: u64) {
        let mut kinds = lock(&self.kinds);
        let k = kinds.entry(kind).or_default();
        k.count += 1;
        k.bytes += bytes;
        if k.samples.len() < MAX_SAMPLES {
            k.samples.push(took.as_secs_f64() * 1000.0);
        }
        if Self::counts_as_completion(kind) {
            self.completions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Several successes of `kind` at once, each with its latency in milliseconds and no
    /// bytes: a subscriber's batch of deliveries, recorded under one lock.
    pub(super) fn ok_many(&self, kind: &'static str, latencies_ms: &[f64]) {
        let mut kinds = lock(&self.kinds);
        let k = kinds.entry(kind).or_default();
        k.count += latencies_ms.len() as u64;
        let room = MAX_SAMPLES.saturating_sub(k.samples.len());
        k.samples.extend_from_slice(
            latencies_ms
                .get(..room.min(latencies_ms.len()))
                .unwrap_or(&[]),
        );
        if Self::counts_as_completion(kind) {
            self.completions
                .fetch_add(latencies_ms.len() as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn err(&self, kind: &'static str, e: &ClientError) {
        {
            let mut kinds = lock(&self.kinds);
            let k = kinds.entry(kind).or_default();
            k.count += 1;
            k.errors += 1;
        }
        if Self::counts_as_completion(kind) {
            self.completions.fetch_add(1, Ordering::Relaxed);
        }
        let key = match e {
            ClientError::Api { status, code, .. } => format!("{status} {code}"),
            other => other.code().to_string(),
        };
        *lock(&self.errors).entry(key).or_default() += 1;
        self.fail(format!("{kind}: {e}"));
    }

    pub(super) fn fail(&self, msg: String) {
        let mut f = lock(&self.failures);
        if f.len() < 100 {
            f.push(msg);
        } else if f.len() == 100 {
            f.push("... more failures not shown".into());
        }
    }

    pub(super) fn failure_count(&self) -> usize {
        lock(&self.failures).len()
    }

    pub(super) fn count(&self, kind: &str) -> u64 {
        lock(&self.kinds).get(kind).map_or(0, |k| k.count)
    }
}

impl Report {
    /// A human-readable summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "VaultFS load test against {} for {:.1}s ({} uploaders, {} downloaders, {} movers, {} subscribers)\n\n",
            self.url, self.seconds, self.uploaders, self.downloaders, self.movers, self.events.subscribers
        );
        s.push_str(
            "kind       count  errors    req/s    MiB/s   p50 ms   p90 ms   p99 ms   max ms\n",
        );
        for (name, k) in &self.kinds {
            s.push_str(&format!(
                "{name:<9} {:>6} {:>7} {:>8.1} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
                k.count,
                k.errors,
                k.per_sec,
                k.mib_per_sec,
                k.latency.p50_ms,
                k.latency.p90_ms,
                k.latency.p99_ms,
                k.latency.max_ms
            ));
        }
        s.push_str(&format!(
            "\nlongest window with no completion: {:.3}s\nevents: {} delivered to {} subscribers ({} complete, {} gaps), {} expected each\n",
            self.longest_stall_seconds,
            self.events.delivered,
            self.events.subscribers,
            self.events.subscribers_complete,
            self.events.gaps,
            self.events.expected_per_subscriber
        ));
        let l = &self.events.delivery_latency;
        s.push_str(&format!(
            "event delivery (commit to receipt): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} subscribers connected\n",
            l.p50_ms, l.p99_ms, l.max_ms, self.events.connected
        ));
        if let (Some(cpu), Some(cores), Some(rss)) = (
            self.load_tool.cpu_seconds,
            self.load_tool.cores,
            self.load_tool.peak_rss_mib,
        ) {
            s.push_str(&format!(
                "load tool itself: {cpu:.1} s CPU ({cores:.2} cores), peak RSS {rss:.0} MiB\n"
            ));
        }
        if !self.errors_by_status.is_empty() {
            s.push_str(&format!("errors by status: {:?}\n", self.errors_by_status));
        }
        for f in &self.failures {
            s.push_str(&format!("FAILURE: {f}\n"));
        }
        s.push_str(if self.passed {
            "\nPASSED\n"
        } else {
            "\nFAILED\n"
        });
        s
    }
}
