//! Prometheus metrics: `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen (the `metrics` macros are no-ops
//! until a recorder is installed); gauges that describe state (locks held, subscribers'
//! lag, runtime stall, alive tasks) are read from their owners at scrape time. Every name
//! starts with `vaultfs_`; docs/OPERATIONS.md lists them.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::server::AppState;

/// Latency buckets, seconds: 0.5 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several servers in one test process share it).
/// `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets rejected; metrics disabled");
                    return None;
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    // Histogram samples queue until drained; drain them even when nobody
                    // scrapes, so memory stays bounded.
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("vaultfs-metrics-upkeep".into())
                        .spawn(move || loop {
                            // The upkeep thread's own sleep, not a runtime worker's.
                            std::thread::park_timeout(std::time::Duration::from_secs(5));
                            upkeep.run_upkeep();
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot start metrics upkeep");
                    }
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// Route-level middleware: requests by route, method and status, and their latency (to the
/// response head; a streamed body's transfer is counted in bytes).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("vaultfs_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("vaultfs_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed());
    response
}

/// `GET /metrics`: Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Response {
    let Some(handle) = install() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n",
        )
            .into_response();
    };
    sample_state(&state);
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

fn secs(ms: f64) -> f64 {
    ms / 1000.0
}

/// Gauges and totals owned by the services, read now.
fn sample_state(state: &AppState) {
    let locks = state.files.locks().stats();
    metrics::counter!("vaultfs_lock_acquisitions_total").absolute(locks.acquired);
    metrics::counter!("vaultfs_lock_contended_total").absolute(locks.contended);
    metrics::counter!("vaultfs_lock_timeouts_total").absolute(locks.timeouts);
    let held = state
        .files
        .locks()
        .holders()
        .iter()
        .filter(|h| h.state == crate::services::lock_manager::HolderState::Held)
        .count();
    metrics::gauge!("vaultfs_locks_held").set(held as f64);
    metrics::gauge!("vaultfs_locks_waiting")
        .set(locks.held_or_waiting_sets.saturating_sub(held) as f64);

    let notifier = state.files.notifier();
    let published = notifier.published();
    metrics::counter!("vaultfs_events_published_total")
        .absolute(u64::try_from(published).unwrap_or(0));
    let (subscribers, max_lag) = notifier.subscriber_lag();
    metrics::gauge!("vaultfs_sync_subscribers").set(subscribers as f64);
    metrics::gauge!("vaultfs_sync_subscriber_lag_max").set(max_lag as f64);

    let stall = state.stall.snapshot();
    metrics::gauge!("vaultfs_runtime_stall_last_seconds").set(secs(stall.last_delay_ms));
    metrics::gauge!("vaultfs_runtime_stall_max_seconds").set(secs(stall.max_delay_ms));
    metrics::gauge!("vaultfs_runtime_stall_current_seconds").set(secs(stall.current_delay_ms));
    metrics::counter!("vaultfs_runtime_stalls_total").absolute(stall.stalls_over_threshold);
    let runtime = tokio::runtime::Handle::current().metrics();
    metrics::gauge!("vaultfs_runtime_alive_tasks").set(runtime.num_alive_tasks() as f64);
    metrics::gauge!("vaultfs_runtime_workers").set(runtime.num_workers() as f64);
    let (queued, running) = crate::blocking::depth();
    metrics::gauge!("vaultfs_blocking_queue_depth").set(queued as f64);
    metrics::gauge!("vaultfs_blocking_running").set(running as f64);
    let gate = state.files.upload_gate_stats();
    metrics::gauge!("vaultfs_uploads_waiting").set(gate.waiting as f64);
}

/// Counts one in-flight transfer while alive.
#[derive(Debug)]
pub struct InFlight(&'static str);

impl InFlight {
    /// `name`: `vaultfs_uploads_in_flight` or `vaultfs_downloads_in_flight`.
    pub fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        InFlight(name)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// Times one store operation; errors are counted by operation.
pub async fn timed<T, E>(
    store: &'static str,
    op: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = fut.await;
    metrics::histogram!("vaultfs_store_op_duration_seconds", "store" => store, "op" => op)
        .record(started.elapsed());
    if result.is_err() {
        metrics::counter!("vaultfs_store_errors_total", "store" => store, "op" => op).increment(1);
    }
    result
}
