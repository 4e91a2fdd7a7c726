//! Administrative introspection.

use axum::extract::State;
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
