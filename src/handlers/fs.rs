//! Writes addressed by path: `PUT`, `DELETE` and `POST ?move=|?copy=` on `/api/v1/fs/{path}`
//! (`GET`/`HEAD` are in `files.rs`). They answer like the id routes and the upload.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{upload, write_precondition, ApiPath, ApiQuery};
use crate::error::AppError;
use crate::paths::VPath;
use crate::server::AppState;
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

/// `DELETE /api/v1/fs/{path}`: 204; `If-Match` honoured.
pub async fn delete(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(path): ApiPath<String>,
    request: Request,
) -> Result<StatusCode, AppError> {
    let path = VPath::parse(&path)?;
    let precondition = write_precondition(request.headers())?;
    if precondition == Precondition::MustNotExist {
        return Err(AppError::bad_request(
            "invalid_request",
            "If-None-Match is meaningless on DELETE",
        ));
    }
    state.files.delete_at(&path, &precondition, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct RelocateQuery {
    #[serde(rename = "move")]
    move_to: Option<String>,
    copy: Option<String>,
    #[serde(default)]
    overwrite: bool,
}

/// `POST /api/v1/fs/{path}?move=TO` (200) or `?copy=TO` (201), `&overwrite=true` to replace.
pub async fn relocate(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(path): ApiPath<String>,
    ApiQuery(q): ApiQuery<RelocateQuery>,
) -> Result<Response, AppError> {
    let path = VPath::parse(&path)?;
    match (q.move_to, q.copy) {
        (Some(to), None) => {
            let to = VPath::parse(&to)?;
            let meta = state.files.move_at(&path, &to, q.overwrite, &ctx).await?;
            Ok(Json(meta).into_response())
        }
        (None, Some(to)) => {
            let to = VPath::parse(&to)?;
            let meta = state.files.copy_at(&path, &to, q.overwrite, &ctx).await?;
            Ok((StatusCode::CREATED, Json(meta)).into_response())
        }
        _ => Err(AppError::bad_request(
            "invalid_query",
            "exactly one of `move=TO` and `copy=TO` is required (PUT uploads)",
        )),
    }
}
