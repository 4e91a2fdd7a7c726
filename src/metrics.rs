//! Prometheus metrics: the recorder ([`install`]), request metrics ([`track`]), in-flight
//! gauges ([`InFlight`]) and store timings ([`timed`]). A leaf: it imports nothing of the
//! crate, so services record metrics without depending on the HTTP layers; `GET /metrics`
//! (rendering, and the gauges read from the services at scrape time) is
//! `crate::handlers::metrics`.
//!
//! Counters and histograms are recorded where things happen (the `metrics` macros are no-ops
//! until a recorder is installed); gauges that describe state (locks held, subscribers'
//! lag, runtime stall, alive tasks) are read from their owners at scrape time. Every name
//! starts with `vaultfs_`; docs/OPERATIONS.md lists them.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets, seconds: 0.5 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several servers in one test process share it).
/// `None` when another recorder was installed first.
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
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
pub(crate) async fn track(request: Request, next: Next) -> Response {
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

/// Counts one in-flight transfer while alive.
#[derive(Debug)]
pub(crate) struct InFlight(&'static str);

impl InFlight {
    /// `name`: `vaultfs_uploads_in_flight` or `vaultfs_downloads_in_flight`.
    pub(crate) fn new(name: &'static str) -> Self {
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
pub(crate) async fn timed<T, E>(
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
