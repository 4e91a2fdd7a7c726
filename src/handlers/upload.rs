//! `POST /api/v1/files/upload`: raw or multipart, streamed, verified, committed whole.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{header_str, multipart_guard, write_precondition, ApiQuery};
use crate::error::AppError;
use crate::paths::VPath;
use crate::server::AppState;
use crate::services::files::RequestCtx;
use crate::services::metadata::Precondition;
use crate::services::storage::BlobWriter;

/// Most file parts accepted in one multipart upload.
pub const MAX_MULTIPART_FILES: usize = 1000;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    path: Option<String>,
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

pub async fn upload(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<Response, AppError> {
    let (precondition, _permit, content_type) = admit(&state, request.headers()).await?;
    if content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        if expected_digest(request.headers())?.is_some() {
            return Err(AppError::bad_request(
                "invalid_request",
                "checksum headers apply to raw uploads; multipart parts are checked individually by their hash in the response",
            ));
        }
        return upload_multipart(state, ctx, q.path, precondition, request).await;
    }

    let path = VPath::parse(q.path.as_deref().ok_or_else(|| {
        AppError::bad_request("invalid_path", "query parameter `path` is required")
    })?)?;
    store_raw(&state, &ctx, &path, precondition, content_type, request).await
}

/// `PUT /api/v1/fs/{path}`: the raw upload with the path from the URL (any content type is
/// stored as it is). Same limits, preconditions, checksums and answers as the upload.
pub async fn upload_raw_at(
    state: &AppState,
    ctx: &RequestCtx,
    path: &VPath,
    request: Request,
) -> Result<Response, AppError> {
    let (precondition, _permit, content_type) = admit(state, request.headers()).await?;
    store_raw(state, ctx, path, precondition, content_type, request).await
}

/// What every upload checks before reading a byte of the body: the declared length, the
/// precondition and admission (the permit lives until the response).
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Precondition, crate::services::files::UploadPermit, String), AppError> {
    let limit = state.files.max_upload_size();
    if let Some(len) = header_str(headers, "content-length")? {
        let len: u64 = len.trim().parse().map_err(|_| {
            AppError::bad_request("invalid_header", "Content-Length is not a number")
        })?;
        if len > limit {
            return Err(crate::services::storage::StorageError::TooLarge { limit }.into());
        }
    }
    let precondition = write_precondition(headers)?;
    let permit = state.files.admit_upload().await?;
    let content_type = header_str(headers, "content-type")?
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_string();
    Ok((precondition, permit, content_type))
}

/// Streams a raw body to `path`, verifies the declared digest and commits: 201 or 200.
async fn store_raw(
    state: &AppState,
    ctx: &RequestCtx,
    path: &VPath,
    precondition: Precondition,
    content_type: String,
    request: Request,
) -> Result<Response, AppError> {
    let expected = expected_digest(request.headers())?;
    ctx.check(path.as_str())?;
    state.files.precheck(path, &precondition).await?;

    let mut writer = state.files.begin_upload().await?;
    let mut body = request.into_body().into_data_stream();
    let idle = state.config.body_idle_timeout;
    let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
    while let Some(chunk) = tokio::time::timeout(idle, body.next())
        .await
        .map_err(|_| body_idle_error(idle))?
    {
        let chunk = chunk.map_err(body_error)?;
        bytes_in.increment(chunk.len() as u64);
        writer.write(chunk).await?;
    }
    let staged = writer.finish(state.files.storage()).await?;
    if let Some(expected) = expected {
        if staged.sha256_bytes().as_deref() != Some(expected.as_slice()) {
            return Err(AppError::bad_request(
                "checksum_mismatch",
                format!(
                    "the body's SHA-256 is {}, not the {} the request declared",
                    staged.blob.sha256,
                    hex::encode(&expected)
                ),
            ));
        }
    }
    let outcome = state
        .files
        .commit_upload(path, staged, content_type, precondition, ctx)
        .await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome.meta)).into_response())
}

async fn upload_multipart(
    state: AppState,
    ctx: RequestCtx,
    base: Option<String>,
    precondition: Precondition,
    request: Request,
) -> Result<Response, AppError> {
    let base = base.as_deref().map(VPath::parse).transpose()?;
    // The parser buffers part headers without limit: bound them (and the part count) first.
    let verdict = multipart_guard::Verdict::default();
    let content_type = header_str(request.headers(), "content-type")?.unwrap_or("");
    let request = match multipart_guard::boundary(content_type) {
        Some(boundary) => {
            let (parts, body) = request.into_parts();
            let guarded = multipart_guard::guard_body(body, &boundary, verdict.clone());
            Request::from_parts(parts, axum::body::Body::from_stream(guarded))
        }
        None => request, // refused by the parser below
    };
    let mut multipart = Multipart::from_request(request, &state)
        .await
        .map_err(|e| AppError::bad_request("invalid_multipart", e.body_text()))?;
    let multipart_error = |e| match verdict.get() {
        multipart_guard::Verdict::HEADER_TOO_LARGE => AppError::bad_request(
            "invalid_multipart",
            format!(
                "a part's headers exceed {} bytes",
                multipart_guard::MAX_PART_HEADER_BYTES
            ),
        ),
        multipart_guard::Verdict::TOO_MANY_PARTS => AppError::bad_request(
            "too_many_parts",
            format!(
                "at most {} parts per multipart upload",
                multipart_guard::MAX_PARTS
            ),
        ),
        _ => multipart_error(e),
    };
    let mut stored = Vec::new();
    let mut all_created = true;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let Some(file_name) = field.file_name().map(str::to_string) else {
            continue; // a plain form field, not a file
        };
        if stored.len() == MAX_MULTIPART_FILES {
            return Err(AppError::bad_request(
                "too_many_parts",
                format!("at most {MAX_MULTIPART_FILES} files per multipart upload"),
            ));
        }
        let path = match &base {
            Some(base) => base.join(&file_name)?,
            None => VPath::parse(&file_name)?,
        };
        let content_type = field
            .content_type()
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_string();
        ctx.check(path.as_str())?;
        state.files.precheck(&path, &precondition).await?;
        let mut writer: BlobWriter = state.files.begin_upload().await?;
        let idle = state.config.body_idle_timeout;
        let bytes_in = metrics::counter!("vaultfs_upload_bytes_total");
        while let Some(chunk) = tokio::time::timeout(idle, field.chunk())
            .await
            .map_err(|_| body_idle_error(idle))?
            .map_err(multipart_error)?
        {
            bytes_in.increment(chunk.len() as u64);
            writer.write(chunk).await?;
        }
        let staged = writer.finish(state.files.storage()).await?;
        let outcome = state
            .files
            .commit_upload(&path, staged, content_type, precondition.clone(), &ctx)
            .await?;
        all_created &= outcome.created;
        stored.push(outcome.meta);
    }
    if stored.is_empty() {
        return Err(AppError::bad_request(
            "invalid_multipart",
            "the multipart body has no file part (a part with a filename)",
        ));
    }
    let status = if all_created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"files": stored}))).into_response())
}

/// The client stopped sending mid-body: 408, and the writer's drop removes the temp file.
fn body_idle_error(idle: std::time::Duration) -> AppError {
    metrics::counter!("vaultfs_upload_body_timeouts_total").increment(1);
    AppError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "no body bytes arrived for {} s; the upload was discarded",
            idle.as_secs_f64()
        ),
    )
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> AppError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return AppError::new(status, "too_large", e.body_text());
    }
    AppError::bad_request("invalid_multipart", e.body_text())
}

fn body_error(e: axum::Error) -> AppError {
    tracing::debug!(error = %e, "request body could not be read");
    AppError::bad_request(
        "body_read_failed",
        "the request body could not be read to its end",
    )
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
