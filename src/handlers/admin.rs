//! Administrative introspection.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::app::AppState;

/// `GET /api/v1/admin/locks`: lock sets held or waited for, with holders and ages.
pub async fn locks(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"locks": state.files.lock_holders(), "stats": state.files.lock_stats()}))
}

/// `GET /api/v1/admin/runtime`: the stall watchdog's readings.
pub async fn runtime(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"stall": state.stall.snapshot()}))
}

/// Query of `POST /api/v1/admin/fsck`: `repair=true` also removes unreferenced
/// blobs and leftover temp files.
#[derive(Debug, serde::Deserialize)]
pub struct FsckQuery {
    #[serde(default)]
    repair: bool,
}

/// `POST /api/v1/admin/fsck[?repair=true]`: the online `vaultfs fsck`. One runs at a time
/// (409 `fsck_running` otherwise); the report has the offline check's shape.
pub async fn fsck(
    State(state): State<AppState>,
    super::ApiQuery(q): super::ApiQuery<FsckQuery>,
) -> Result<Json<crate::services::fsck::FsckReport>, crate::error::AppError> {
    let Ok(_running) = state.fsck_slot.try_lock() else {
        return Err(crate::error::AppError::new(
            axum::http::StatusCode::CONFLICT,
            "fsck_running",
            "a check is already running on this server",
        ));
    };
    tracing::info!(repair = q.repair, "online fsck started");
    let report =
        crate::services::fsck::run_online(&state.files, &state.config.data_dir, q.repair).await?;
    tracing::info!(
        files = report.files,
        damaged = report.damaged.len(),
        metadata_problems = report.metadata_problems.len(),
        orphans = report.orphan_blobs.len(),
        "online fsck finished"
    );
    Ok(Json(report))
}

/// JSON body of `POST /api/v1/admin/tokens`: label, scopes, path prefix and lifetime of the
/// new token.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    #[serde(default)]
    label: String,
    /// Also return the token's S3 key pair.
    #[serde(default)]
    s3: bool,
    /// `read`, `write`, `admin`, comma-separated.
    scopes: String,
    #[serde(default)]
    prefix: String,
    /// `90d`; none: never expires.
    expires_in: Option<String>,
}

fn auth_error(e: crate::services::auth::AuthError) -> crate::error::AppError {
    use crate::services::auth::AuthError;
    match e {
        AuthError::Invalid(m) => crate::error::AppError::bad_request("invalid_request", m),
        AuthError::NotFound => crate::error::AppError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "no such active token",
        ),
        AuthError::Metadata(m) => m.into(),
        AuthError::Random(_) | AuthError::Secret(_) => crate::error::AppError::from(
            crate::services::metadata::MetadataError::Backend(e.to_string()),
        ),
    }
}

/// `GET /api/v1/admin/tokens`: every token (never a secret).
pub async fn list_tokens(
    State(state): State<AppState>,
) -> Result<Json<Value>, crate::error::AppError> {
    let tokens = state.auth.list().await.map_err(auth_error)?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// `POST /api/v1/admin/tokens`: 201 with the token, shown this once.
pub async fn create_token(
    State(state): State<AppState>,
    super::ApiJson(body): super::ApiJson<NewTokenBody>,
) -> Result<(axum::http::StatusCode, Json<Value>), crate::error::AppError> {
    let expires_in = body
        .expires_in
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| {
            crate::error::AppError::bad_request("invalid_request", format!("expires_in: {e}"))
        })?;
    let created = state
        .auth
        .create(&body.label, &body.scopes, &body.prefix, expires_in)
        .await
        .map_err(auth_error)?;
    tracing::info!(id = %created.info.id, scopes = %created.info.scopes,
        prefix = %created.info.prefix, "token created");
    let mut out = serde_json::to_value(&created).unwrap_or_default();
    if body.s3 {
        let keys = super::s3::auth::keys_for(&state.auth, &created.info.id);
        out["s3"] = serde_json::to_value(keys).unwrap_or_default();
    }
    Ok((axum::http::StatusCode::CREATED, Json(out)))
}

/// `DELETE /api/v1/admin/tokens/{id}`: revokes at once on this replica, within a second on
/// the others.
pub async fn revoke_token(
    State(state): State<AppState>,
    super::ApiPath(id): super::ApiPath<String>,
) -> Result<axum::http::StatusCode, crate::error::AppError> {
    state.auth.revoke(&id).await.map_err(auth_error)?;
    tracing::info!(%id, "token revoked");
    Ok(axum::http::StatusCode::NO_CONTENT)
}
