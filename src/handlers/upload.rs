//! `POST /api/v1/files/upload`: raw or multipart. This layer parses (headers, multipart
//! framing) and calls the upload pipeline (`services::upload`), which streams, verifies and
//! commits; no storage or lock call is made here.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{header_str, multipart_guard, write_precondition, ApiQuery};
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::VPath;
use crate::services::files::RequestCtx;
use crate::services::metadata::Precondition;
use crate::services::upload::{UploadError, UploadOptions};

/// Most file parts accepted in one multipart upload.
pub const MAX_MULTIPART_FILES: usize = 1000;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Query of `POST /api/v1/files/upload`: the target path (raw bodies) and an optional open commit.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    path: Option<String>,
    /// Stage into this open commit (issue 21): 202, nothing visible until its finish.
    commit: Option<String>,
}

/// An upload refused before its body was read leaves that body on the connection: say
/// `Connection: close` so the client does not send its next request there (the server
/// drains what is in flight, then closes; see `conn.rs`).
pub async fn close_after_error(mut response: Response) -> Response {
    if response.status().is_client_error() || response.status().is_server_error() {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// `POST /api/v1/files/upload`: a raw body or a multipart form, streamed through the one upload
/// entry point (`services::upload`); answers the new version's FileMeta (201 when it created
/// the file).
pub async fn upload(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<Response, AppError> {
    let headers = request.headers();
    let size_hint = content_length(headers)?;
    let precondition = write_precondition(headers)?;
    let content_type = header_str(headers, "content-type")?
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        if expected_digest(headers)?.is_some() {
            return Err(AppError::bad_request(
                "invalid_request",
                "checksum headers apply to raw uploads; multipart parts are checked individually by their hash in the response",
            ));
        }
        let base = q.path.as_deref().map(VPath::parse).transpose()?;
        let multipart = Multipart {
            content_type: &content_type,
            base: base.as_ref(),
            precondition,
            size_hint,
            commit: q.commit.as_deref(),
        };
        return upload_multipart(&state, &ctx, multipart, request.into_body()).await;
    }

    let path = VPath::parse(q.path.as_deref().ok_or_else(|| {
        AppError::bad_request("invalid_path", "query parameter `path` is required")
    })?)?;
    if let Some(commit) = q.commit.as_deref() {
        return stage_raw(&state, &ctx, commit, &path, request).await;
    }
    store_raw(&state, &ctx, &path, request).await
}

/// `PUT /api/v1/fs/{path}`: the raw upload with the path from the URL (any content type is
/// stored as it is). Same limits, preconditions, checksums and answers as the upload.
pub async fn upload_raw_at(
    state: &AppState,
    ctx: &RequestCtx,
    path: &VPath,
    request: Request,
) -> Result<Response, AppError> {
    store_raw(state, ctx, path, request).await
}

/// Streams a raw body to `path` through the upload pipeline: 201 created, 200 replaced.
async fn store_raw(
    state: &AppState,
    ctx: &RequestCtx,
    path: &VPath,
    request: Request,
) -> Result<Response, AppError> {
    let headers = request.headers();
    let options = UploadOptions {
        content_type: header_str(headers, "content-type")?
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_string(),
        precondition: write_precondition(headers)?,
        expected_sha256: expected_digest(headers)?,
        size_hint: content_length(headers)?,
        digest_sink: None,
    };
    let body = request.into_body().into_data_stream().map_err(read_error);
    let outcome = state.files.upload(ctx, path, body, options).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome.meta)).into_response())
}

/// Streams a raw body into open commit `commit` at `path`: 202 `{"commit", "path", "size",
/// "sha256"}` (no file id: the file does not exist before the finish).
async fn stage_raw(
    state: &AppState,
    ctx: &RequestCtx,
    commit: &str,
    path: &VPath,
    request: Request,
) -> Result<Response, AppError> {
    let headers = request.headers();
    let options = UploadOptions {
        content_type: header_str(headers, "content-type")?
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_string(),
        precondition: write_precondition(headers)?,
        expected_sha256: expected_digest(headers)?,
        size_hint: content_length(headers)?,
        digest_sink: None,
    };
    let body = request.into_body().into_data_stream().map_err(read_error);
    let max = state.config.commit_max_files;
    let staged = state
        .files
        .upload_to_commit(ctx, (commit, max), path, body, options)
        .await?;
    let answer = json!({"commit": commit, "path": staged.path, "size": staged.size, "sha256": staged.sha256});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The declared `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, AppError> {
    match header_str(headers, "content-length")? {
        Some(len) => Ok(Some(len.trim().parse::<u64>().map_err(|_| {
            AppError::bad_request("invalid_header", "Content-Length is not a number")
        })?)),
        None => Ok(None),
    }
}

/// What the headers of a multipart upload said.
struct Multipart<'a> {
    content_type: &'a str,
    /// `?path=`: the directory the parts' file names are joined to.
    base: Option<&'a VPath>,
    precondition: Precondition,
    size_hint: Option<u64>,
    /// Stage into this commit instead of committing.
    commit: Option<&'a str>,
}

/// Parses the parts (multer, held to the guard's bounds) and hands each file part's bytes to
/// the upload pipeline; the files commit together once the body has been read to its end.
async fn upload_multipart(
    state: &AppState,
    ctx: &RequestCtx,
    request: Multipart<'_>,
    body: axum::body::Body,
) -> Result<Response, AppError> {
    let boundary = multipart_guard::boundary(request.content_type)?;
    let mut batch = state.files.begin_batch(request.size_hint).await?;
    let budget = multipart_guard::Budget::default();
    let body = batch.body(body.into_data_stream().map_err(read_error));
    let mut parser = multipart_guard::parser(body, boundary, budget.clone());
    let mut parts = 0;
    while let Some(field) = batch
        .next_part(parser.next_field())
        .await?
        .map_err(multipart_guard::multer_error)?
    {
        budget.progress();
        parts += 1;
        if parts > multipart_guard::MAX_PARTS {
            return Err(UploadError::TooManyParts(multipart_guard::MAX_PARTS).into());
        }
        let Some(file_name) = field.file_name().map(str::to_string) else {
            // A plain form field, not a file.
            multipart_guard::skip_part(field, budget.clone()).await?;
            continue;
        };
        if batch.len() == MAX_MULTIPART_FILES {
            return Err(UploadError::TooManyFiles(MAX_MULTIPART_FILES).into());
        }
        let path = match request.base {
            Some(base) => base.join(&file_name)?,
            None => VPath::parse(&file_name)?,
        };
        let options = UploadOptions {
            content_type: field
                .content_type()
                .map_or(DEFAULT_CONTENT_TYPE, |m| m.as_ref())
                .to_string(),
            precondition: request.precondition.clone(),
            ..UploadOptions::default()
        };
        let part = multipart_guard::part_stream(field, budget.clone());
        batch.stage(ctx, &path, part, options).await?;
    }
    if batch.is_empty() {
        return Err(UploadError::NoFilePart.into());
    }
    if let Some(commit) = request.commit {
        let max = state.config.commit_max_files;
        let staged = batch.commit_to(ctx, (commit, max)).await?;
        let answer = json!({"commit": commit, "files": staged});
        return Ok((StatusCode::ACCEPTED, Json(answer)).into_response());
    }
    let outcomes = batch.commit(ctx).await?;
    let status = if outcomes.iter().all(|o| o.created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let stored: Vec<_> = outcomes.into_iter().map(|o| o.meta).collect();
    Ok((status, Json(json!({"files": stored}))).into_response())
}

fn read_error(e: axum::Error) -> UploadError {
    UploadError::Read(e.to_string())
}

/// The SHA-256 the client declared, from `Content-Digest` (RFC 9530) or `X-Checksum-Sha256`.
fn expected_digest(headers: &HeaderMap) -> Result<Option<Vec<u8>>, AppError> {
    let invalid = |what: &str| AppError::bad_request("invalid_digest", what.to_string());
    let mut found: Option<Vec<u8>> = None;
    if let Some(value) = header_str(headers, "content-digest")? {
        for member in value.split(',') {
            let Some((alg, rest)) = member.trim().split_once('=') else {
                return Err(invalid("Content-Digest is malformed"));
            };
            if !alg.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let b64 = rest
                .trim()
                .strip_prefix(':')
                .and_then(|r| r.strip_suffix(':'))
                .ok_or_else(|| invalid("Content-Digest sha-256 must be :base64:"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| invalid("Content-Digest sha-256 is not base64"))?;
            if bytes.len() != 32 {
                return Err(invalid("Content-Digest sha-256 must be 32 bytes"));
            }
            found = Some(bytes);
        }
    }
    if let Some(value) = header_str(headers, "x-checksum-sha256")? {
        let bytes = hex::decode(value.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| invalid("X-Checksum-Sha256 must be 64 hex digits"))?;
        if found.as_ref().is_some_and(|f| *f != bytes) {
            return Err(invalid("Content-Digest and X-Checksum-Sha256 disagree"));
        }
        found = Some(bytes);
    }
    Ok(found)
}
