//! Probes: liveness (`/healthz`) and readiness (`/readyz`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::AppState;

/// How long readiness waits for each store.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the runtime schedules promptly; 503 `runtime_stalled` when the
/// stall watchdog saw a scheduling delay over `liveness_stall_grace` now or within
/// `liveness_window`, so an orchestrator restarts a wedged process.
pub async fn healthz(State(state): State<AppState>) -> Response {
    let c = &state.config;
    match state
        .stall
        .liveness(c.liveness_stall_grace, c.liveness_window)
    {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(stall) => {
            tracing::error!(?stall, "liveness failing: the runtime stalled");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unhealthy",
                    "error": {"code": "runtime_stalled", "message": "the async runtime stopped scheduling tasks promptly"},
                    "stall": stall,
                })),
            )
                .into_response()
        }
    }
}

/// `GET /readyz`: 200 when the metadata store and the blob store answer and the server is not
/// draining; 503 `not_ready` with the failing checks otherwise.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let draining = state.is_draining();
    let metadata = tokio::time::timeout(READY_CHECK_TIMEOUT, state.files.metadata().ping()).await;
    let metadata = match metadata {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".to_string(),
    };
    let blobs = tokio::time::timeout(READY_CHECK_TIMEOUT, state.files.check_blobs()).await;
    let blobs = match blobs {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".to_string(),
    };
    let ready = !draining && metadata == "ok" && blobs == "ok";
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"draining": draining, "metadata": metadata, "blobs": blobs},
    });
    if ready {
        Json(body).into_response()
    } else {
        let mut body = body;
        body["error"] = json!({"code": if draining { "draining" } else { "not_ready" }, "message": "not ready for traffic"});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
