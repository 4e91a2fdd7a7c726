//! Versions and the trash: `/api/v1/files/{id}/versions...`, `/api/v1/trash...`, and the
//! path-addressed delete `DELETE /api/v1/fs/{*path}` (one file, or a tree with
//! `recursive=true`).

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::{content, write_precondition, ApiPath, ApiQuery};
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::{validate_prefix, VPath};
use crate::services::files::RequestCtx;
use crate::services::metadata::{FileMeta, Precondition};
use crate::services::versions::{TrashPage, VersionPage};

const DEFAULT_LIMIT: usize = 1000;

/// Ids are 32 lowercase hex digits; anything else names nothing.
fn check_hex_id(id: &str) -> Result<(), AppError> {
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

fn parse_version(n: &str) -> Result<i64, AppError> {
    n.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(AppError::not_found)
}

/// A page size: the default when absent, and 400 for 0 (as on `/api/v1/list`).
fn page_limit(limit: Option<usize>) -> Result<usize, AppError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(AppError::bad_request(
            "invalid_query",
            "limit must be at least 1",
        )),
        n => Ok(n),
    }
}

/// Query of the paged version listing: `cursor` from the previous page and page size `limit`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/files/{id}/versions`.
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<VersionPage>, AppError> {
    check_hex_id(&id)?;
    let limit = page_limit(q.limit)?;
    Ok(Json(
        state
            .files
            .versions(&id, q.cursor.as_deref(), limit, &ctx)
            .await?,
    ))
}

/// `GET|HEAD /api/v1/files/{id}/versions/{n}`: served like the current content.
pub async fn content(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath((id, n)): ApiPath<(String, String)>,
    request: Request,
) -> Result<Response, AppError> {
    check_hex_id(&id)?;
    let meta = state
        .files
        .version_meta(&id, parse_version(&n)?, &ctx)
        .await?;
    let head = request.method() == Method::HEAD;
    let inline = content::inline_requested(request.uri().query());
    content::serve(&state, meta, request.headers(), head, inline).await
}

/// `POST /api/v1/files/{id}/versions/{n}/restore`.
pub async fn restore(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath((id, n)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<FileMeta>, AppError> {
    check_hex_id(&id)?;
    let version = parse_version(&n)?;
    let precondition = write_precondition(&headers)?;
    Ok(Json(
        state
            .files
            .restore_version(&id, version, &precondition, &ctx)
            .await?,
    ))
}

/// Query of the delete endpoints: `permanent=true` skips the trash.
#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    #[serde(default)]
    pub(crate) permanent: bool,
    #[serde(default)]
    pub(crate) recursive: bool,
}

/// `?permanent=true` only where the server allows it.
pub(crate) fn check_permanent(state: &AppState, permanent: bool) -> Result<(), AppError> {
    if permanent && !state.config.allow_permanent_delete {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "permanent_delete_disabled",
            "this server keeps deleted files in the trash (allow_permanent_delete is off)",
        ));
    }
    Ok(())
}

/// A delete's precondition (`If-None-Match` means nothing on one).
fn delete_precondition(headers: &HeaderMap) -> Result<Precondition, AppError> {
    let precondition = write_precondition(headers)?;
    if precondition == Precondition::MustNotExist {
        return Err(AppError::bad_request(
            "invalid_request",
            "If-None-Match is meaningless on DELETE",
        ));
    }
    Ok(precondition)
}

/// Deletes file `id` to the trash, or for good with `permanent`.
pub(crate) async fn delete_by_id(
    state: &AppState,
    ctx: &RequestCtx,
    id: &str,
    permanent: bool,
    headers: &HeaderMap,
) -> Result<StatusCode, AppError> {
    check_permanent(state, permanent)?;
    let precondition = delete_precondition(headers)?;
    if permanent {
        state
            .files
            .delete_permanently(id, &precondition, ctx)
            .await?;
    } else {
        state.files.delete(id, &precondition, ctx).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/files/{id}[?permanent=true]`.
pub async fn delete_file(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, AppError> {
    check_hex_id(&id)?;
    delete_by_id(&state, &ctx, &id, q.permanent, &headers).await
}

/// Query of `GET /api/v1/trash`: entries under `prefix`, paged by `cursor` and `limit`.
#[derive(Debug, Deserialize)]
pub struct TrashQuery {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/trash?prefix=&cursor=&limit=`.
pub async fn trash_list(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<TrashQuery>,
) -> Result<Json<TrashPage>, AppError> {
    let prefix = validate_prefix(&q.prefix)?;
    let limit = page_limit(q.limit)?;
    Ok(Json(
        state
            .files
            .trash_list(&prefix, q.cursor.as_deref(), limit, &ctx)
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreBody {
    to: Option<String>,
    #[serde(default)]
    overwrite: bool,
}

/// `POST /api/v1/trash/{trash_id}/restore` with an optional `{"to", "overwrite"}`.
pub async fn trash_restore(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(trash_id): ApiPath<String>,
    body: Bytes,
) -> Result<Json<FileMeta>, AppError> {
    check_hex_id(&trash_id)?;
    let body: RestoreBody = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AppError::bad_request("invalid_json", format!("invalid restore request: {e}"))
        })?
    };
    let to = body.to.as_deref().map(VPath::parse).transpose()?;
    Ok(Json(
        state
            .files
            .trash_restore(&trash_id, to.as_ref(), body.overwrite, &ctx)
            .await?,
    ))
}

/// `DELETE /api/v1/trash/{trash_id}`: gone for good.
pub async fn trash_purge(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(trash_id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    check_hex_id(&trash_id)?;
    state.files.trash_purge(&trash_id, &ctx).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Answer of a batch restore: the files put back, as they are now.
#[derive(Debug, serde::Serialize)]
pub struct RestoredFiles {
    files: Vec<FileMeta>,
}

/// `POST /api/v1/trash/batches/{batch_id}/restore`.
pub async fn batch_restore(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(batch_id): ApiPath<String>,
) -> Result<Json<RestoredFiles>, AppError> {
    check_hex_id(&batch_id)?;
    let files = state.files.trash_restore_batch(&batch_id, &ctx).await?;
    Ok(Json(RestoredFiles { files }))
}
