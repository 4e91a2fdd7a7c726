//! `GET /metrics`: the Prometheus text format, with the gauges the services own read at
//! scrape time (locks held, subscribers' lag, runtime stall, alive tasks, upload queue).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::metrics::install;

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
    let locks = state.files.lock_stats();
    metrics::counter!("vaultfs_lock_acquisitions_total").absolute(locks.acquired);
    metrics::counter!("vaultfs_lock_contended_total").absolute(locks.contended);
    metrics::counter!("vaultfs_lock_timeouts_total").absolute(locks.timeouts);
    let held = state
        .files
        .lock_holders()
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
