//! File endpoints addressed by id or by path.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{content, ApiJson, ApiPath};
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::VPath;
use crate::services::files::RequestCtx;
use crate::services::metadata::FileMeta;

/// Ids are 32 lowercase hex digits; anything else cannot name a file.
fn check_id(id: &str) -> Result<(), AppError> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(AppError::not_found())
    }
}

/// `GET|HEAD /api/v1/files/{id}`.
pub async fn get_content(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> Result<Response, AppError> {
    check_id(&id)?;
    let meta = state.files.meta_by_id(&id, &ctx).await?;
    let head = request.method() == Method::HEAD;
    let inline = content::inline_requested(request.uri().query());
    content::serve(&state, meta, request.headers(), head, inline).await
}

/// `GET|HEAD /api/v1/fs/{*path}`.
pub async fn get_by_path(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(path): ApiPath<String>,
    request: Request,
) -> Result<Response, AppError> {
    let path = VPath::parse(&path)?;
    let meta = state.files.meta_by_path(&path, &ctx).await?;
    let head = request.method() == Method::HEAD;
    let inline = content::inline_requested(request.uri().query());
    content::serve(&state, meta, request.headers(), head, inline).await
}

/// `GET /api/v1/files/{id}/meta`.
pub async fn get_meta(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FileMeta>, AppError> {
    check_id(&id)?;
    Ok(Json(state.files.meta_by_id(&id, &ctx).await?))
}

/// JSON body of the move and copy endpoints: `{"to": path}`, the destination path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    to: String,
    #[serde(default)]
    overwrite: bool,
}

/// `POST /api/v1/files/{id}/move`.
pub async fn move_file(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<Json<FileMeta>, AppError> {
    check_id(&id)?;
    let to = VPath::parse(&body.to)?;
    Ok(Json(
        state
            .files
            .move_file(&id, &to, body.overwrite, &ctx)
            .await?,
    ))
}

/// `POST /api/v1/files/{id}/copy`.
pub async fn copy_file(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TargetBody>,
) -> Result<Response, AppError> {
    check_id(&id)?;
    let to = VPath::parse(&body.to)?;
    let meta = state
        .files
        .copy_file(&id, &to, body.overwrite, &ctx)
        .await?;
    Ok((StatusCode::CREATED, Json(meta)).into_response())
}

/// Query of `GET /api/v1/stat`: `path`, the file to describe.
#[derive(Debug, Deserialize)]
pub struct StatQuery {
    path: String,
}

/// `GET /api/v1/stat?path=P`: the FileMeta of the file at P.
pub async fn stat(
    State(state): State<AppState>,
    ctx: RequestCtx,
    super::ApiQuery(q): super::ApiQuery<StatQuery>,
) -> Result<Json<FileMeta>, AppError> {
    let path = VPath::parse(&q.path)?;
    Ok(Json(state.files.meta_by_path(&path, &ctx).await?))
}
