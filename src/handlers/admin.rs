//! Administrative introspection.

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use crate::server::AppState;

/// `GET /api/v1/admin/locks`: lock sets held or waited for, with holders and ages.
pub async fn locks(State(state): State<AppState>) -> Json<Value> {
    let locks = state.files.locks();
    Json(json!({"locks": locks.holders(), "stats": locks.stats()}))
}

/// `GET /api/v1/admin/runtime`: the stall watchdog's readings.
pub async fn runtime(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"stall": state.stall.snapshot()}))
}

#[derive(Debug, serde::Deserialize)]
pub struct FsckQuery {
    #[serde(default)]
    repair: bool,
}

/// `POST /api/v1/admin/fsck[?repair=true]`: the online `vaultfs fsck`. One runs at a time
/// (409 `fsck_running` otherwise); the report has the offline check's shape.
pub async fn fsck(
    State(state): State<AppState>,
    Query(q): Query<FsckQuery>,
) -> Result<Json<crate::fsck::FsckReport>, crate::error::AppError> {
    let Ok(_running) = state.fsck_slot.try_lock() else {
        return Err(crate::error::AppError::new(
            axum::http::StatusCode::CONFLICT,
            "fsck_running",
            "a check is already running on this server",
        ));
    };
    tracing::info!(repair = q.repair, "online fsck started");
    let report = crate::fsck::run_online(&state.files, &state.config.data_dir, q.repair).await?;
    tracing::info!(
        files = report.files,
        damaged = report.damaged.len(),
        metadata_problems = report.metadata_problems.len(),
        orphans = report.orphan_blobs.len(),
        "online fsck finished"
    );
    Ok(Json(report))
}
