//! Writes addressed by path: `PUT`, `DELETE` and `POST ?op=move|copy&to=` on `/api/v1/fs/{path}`
//! (`GET`/`HEAD` are in `files.rs`). They answer like the id routes and the upload.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::versions::{check_permanent, DeleteQuery};
use super::{upload, write_precondition, ApiPath, ApiQuery};
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::validate_prefix;
use crate::paths::VPath;
use crate::services::files::RequestCtx;
use crate::services::metadata::Precondition;

/// `PUT /api/v1/fs/{path}`: the body, streamed to the path (201 created, 200 replaced).
pub async fn put(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(path): ApiPath<String>,
    request: Request,
) -> Result<Response, AppError> {
    let path = VPath::parse(&path)?;
    upload::upload_raw_at(&state, &ctx, &path, request).await
}

/// `DELETE /api/v1/fs/{path}[?permanent=true]`: the file at the path to the trash (or for
/// good), 204, `If-Match` honoured. With `recursive=true` (the path a prefix ending in `/`) the
/// whole tree in one transaction, its trash entries sharing one `batch_id` (200 `{"files",
/// "batch_id"}`).
pub async fn delete(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(path): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
    request: Request,
) -> Result<Response, AppError> {
    check_permanent(&state, q.permanent)?;
    if q.recursive {
        let mut prefix = validate_prefix(&path)?;
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let done = state.files.delete_tree(&prefix, q.permanent, &ctx).await?;
        return Ok(Json(done).into_response());
    }
    let path = VPath::parse(&path)?;
    let precondition = write_precondition(request.headers())?;
    if precondition == Precondition::MustNotExist {
        return Err(AppError::bad_request(
            "invalid_request",
            "If-None-Match is meaningless on DELETE",
        ));
    }
    state
        .files
        .delete_at(&path, &precondition, q.permanent, &ctx)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `move` or `copy`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelocateOp {
    /// Rename: the file leaves its old path.
    Move,
    /// Duplicate: a new file at the target shares the source's blob.
    Copy,
}

/// Query of `POST /api/v1/fs`: `op` (move or copy) and `to`, the destination path.
#[derive(Debug, Deserialize)]
pub struct RelocateQuery {
    op: RelocateOp,
    to: String,
    #[serde(default)]
    overwrite: bool,
}

/// `POST /api/v1/fs/{path}?op=move&to=TO` (200) or `?op=copy&to=TO` (201), `&overwrite=true`
/// to replace a file at TO. Two required parameters, so the spec states the shape exactly.
pub async fn relocate(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(path): ApiPath<String>,
    ApiQuery(q): ApiQuery<RelocateQuery>,
) -> Result<Response, AppError> {
    let path = VPath::parse(&path)?;
    let to = VPath::parse(&q.to)?;
    match q.op {
        RelocateOp::Move => {
            let meta = state.files.move_at(&path, &to, q.overwrite, &ctx).await?;
            Ok(Json(meta).into_response())
        }
        RelocateOp::Copy => {
            let meta = state.files.copy_at(&path, &to, q.overwrite, &ctx).await?;
            Ok((StatusCode::CREATED, Json(meta)).into_response())
        }
    }
}
