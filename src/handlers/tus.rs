//! tus 1.0 at `/api/v1/tus/` (creation) and `/api/v1/tus/{id}` (upload URLs): header parsing,
//! status codes and the tus response headers. The sessions themselves are
//! `services::tus`; completion goes through the one write entry point.
//!
//! Status codes follow the tus 1.0 protocol (and tusd where the protocol leaves a choice):
//! 412 wrong or missing `Tus-Resumable`, 415 PATCH without
//! `application/offset+octet-stream`, 409 wrong `Upload-Offset`, 460 checksum mismatch,
//! 404 unknown upload, 410 expired upload, 403 PATCH on a final concatenation, 413 past the
//! length or the size limit, 400 malformed headers.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::TryStreamExt;
use serde::Deserialize;

use super::{header_str, ApiPath, ApiQuery};
use crate::app::AppState;
use crate::error::AppError;
use crate::services::files::RequestCtx;
use crate::services::tus::{
    Append, Checksum, ChecksumAlgorithm, Concat, Creation, SessionView, TusError,
};
use crate::services::upload::UploadError;

pub(crate) const TUS_VERSION: &str = "1.0.0";
pub(crate) const TUS_EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,\
                                  checksum,termination,concatenation";
/// Where upload URLs live.
pub(crate) const BASE: &str = "/api/v1/tus/";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

#[derive(Debug, Deserialize)]
pub(crate) struct CreateQuery {
    path: Option<String>,
}

/// `Tus-Resumable: 1.0.0` on every answer of the tus routes, and `Connection: close` after
/// an error (a refused PATCH leaves its body unread on the connection).
pub(crate) async fn tus_headers(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    if response.status().is_client_error() || response.status().is_server_error() {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

/// `OPTIONS`: what this server supports.
pub(crate) async fn options(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-max-size", HeaderValue::from(state.tus.max_size()));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(ChecksumAlgorithm::ALL),
    );
    response
}

/// The 412 answer unless the request speaks tus 1.0.0.
fn check_version(headers: &HeaderMap) -> Option<Response> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(v) if v.trim() == TUS_VERSION => None,
        _ => {
            let mut response = AppError::new(
                StatusCode::PRECONDITION_FAILED,
                "unsupported_version",
                "missing or unsupported Tus-Resumable header (this server speaks 1.0.0)",
            )
            .into_response();
            response
                .headers_mut()
                .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
            Some(response)
        }
    }
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, AppError> {
    match header_str(headers, name)? {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            AppError::bad_request("invalid_header", format!("{name} is not a whole number"))
        }),
    }
}

fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, AppError> {
    let Some(value) = header_str(headers, "upload-checksum")? else {
        return Ok(None);
    };
    let (name, b64) = value.trim().split_once(' ').ok_or_else(|| {
        AppError::bad_request(
            "invalid_header",
            "Upload-Checksum must read `<algorithm> <base64 digest>`",
        )
    })?;
    let algorithm = ChecksumAlgorithm::parse(name).map_err(AppError::from)?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| AppError::bad_request("invalid_header", "Upload-Checksum is not base64"))?;
    Ok(Some(Checksum { algorithm, digest }))
}

/// The upload ids of `Upload-Concat: final;<url> <url>` (absolute URLs or paths).
fn concat(headers: &HeaderMap) -> Result<Concat, AppError> {
    let Some(value) = header_str(headers, "upload-concat")? else {
        return Ok(Concat::None);
    };
    let value = value.trim();
    if value == "partial" {
        return Ok(Concat::Partial);
    }
    let invalid = || {
        AppError::bad_request(
            "invalid_concat",
            "Upload-Concat must be `partial` or `final;<upload URL> <upload URL> ...`",
        )
    };
    let list = value.strip_prefix("final;").ok_or_else(invalid)?;
    let mut ids = Vec::new();
    for url in list.split(' ').map(str::trim).filter(|u| !u.is_empty()) {
        let (_, id) = url.split_once(BASE).ok_or_else(invalid)?;
        let id = id.trim_matches('/');
        if id.is_empty() || id.contains('/') {
            return Err(invalid());
        }
        ids.push(id.to_string());
    }
    if ids.is_empty() {
        return Err(invalid());
    }
    Ok(Concat::Final(ids))
}

fn set(response: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), v);
    }
}

fn expires_header(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The headers a session is described by (HEAD; POST and PATCH answers carry some).
fn describe(response: &mut Response, view: &SessionView, full: bool) {
    set(response, "upload-offset", view.offset.to_string());
    if let Some(ms) = view.expires_at {
        set(response, "upload-expires", expires_header(ms));
    }
    if !full {
        return;
    }
    match view.length {
        Some(len) => set(response, "upload-length", len.to_string()),
        None => set(response, "upload-defer-length", "1".into()),
    }
    if !view.metadata.is_empty() {
        set(response, "upload-metadata", view.metadata.clone());
    }
    match &view.concat {
        Concat::None => {}
        Concat::Partial => set(response, "upload-concat", "partial".into()),
        Concat::Final(ids) => {
            let urls: Vec<String> = ids.iter().map(|id| format!("{BASE}{id}")).collect();
            set(
                response,
                "upload-concat",
                format!("final;{}", urls.join(" ")),
            );
        }
    }
}

/// `POST /api/v1/tus/`: creation (with an upload in the body when it is
/// `application/offset+octet-stream`).
pub(crate) async fn create(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiQuery(q): ApiQuery<CreateQuery>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if let Some(r) = check_version(&headers) {
        return r;
    }
    match create_inner(&state, &ctx, q, &headers, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    state: &AppState,
    ctx: &RequestCtx,
    q: CreateQuery,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, AppError> {
    let concat = concat(headers)?;
    let length = number(headers, "upload-length")?;
    let deferred = match header_str(headers, "upload-defer-length")? {
        None => false,
        Some(v) if v.trim() == "1" => true,
        Some(_) => {
            return Err(AppError::bad_request(
                "invalid_header",
                "Upload-Defer-Length must be 1",
            ))
        }
    };
    let with_body = header_str(headers, "content-type")?
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM));
    if matches!(concat, Concat::Final(_)) {
        if with_body {
            return Err(TusError::ModifyFinal.into());
        }
    } else {
        match (length, deferred) {
            (Some(_), true) => {
                return Err(AppError::bad_request(
                    "invalid_header",
                    "Upload-Length and Upload-Defer-Length cannot both be sent",
                ))
            }
            (None, false) => {
                return Err(AppError::bad_request(
                    "invalid_header",
                    "Upload-Length (or Upload-Defer-Length: 1) is required",
                ))
            }
            _ => {}
        }
    }
    let creation = Creation {
        length,
        metadata: header_str(headers, "upload-metadata")?
            .unwrap_or("")
            .to_string(),
        dir: q.path,
        concat,
    };
    let created = state.tus.create(ctx, creation).await?;
    let location = format!("{BASE}{}", created.id);
    let mut view = created;
    if with_body {
        let append = Append {
            offset: 0,
            length: None,
            checksum: checksum(headers)?,
            content_length: number(headers, "content-length")?,
        };
        let body = request.into_body().into_data_stream().map_err(read_error);
        match state
            .tus
            .append(ctx, &view.id, append, body, revoked(state, ctx))
            .await
        {
            Ok(v) => view = v,
            Err(e) => {
                let mut response = AppError::from(e).into_response();
                set(&mut response, "location", location);
                return Ok(response);
            }
        }
    }
    let mut response = StatusCode::CREATED.into_response();
    set(&mut response, "location", location);
    describe(&mut response, &view, false);
    Ok(response)
}

/// `HEAD /api/v1/tus/{id}` (and GET, which answers the same headers).
pub(crate) async fn head(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check_version(&headers) {
        return no_store(r);
    }
    let response = match state.tus.status(&ctx, &id).await {
        Ok(view) => {
            let mut response = StatusCode::OK.into_response();
            describe(&mut response, &view, true);
            response
        }
        Err(e) => AppError::from(e).into_response(),
    };
    no_store(response)
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// `PATCH /api/v1/tus/{id}`: appends the body at `Upload-Offset`.
pub(crate) async fn patch(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if let Some(r) = check_version(&headers) {
        return r;
    }
    match patch_inner(&state, &ctx, &id, &headers, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn patch_inner(
    state: &AppState,
    ctx: &RequestCtx,
    id: &str,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, AppError> {
    let content_type = header_str(headers, "content-type")?.unwrap_or("");
    if !content_type
        .trim()
        .eq_ignore_ascii_case(OFFSET_OCTET_STREAM)
    {
        return Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "PATCH bodies must be Content-Type: application/offset+octet-stream",
        ));
    }
    let offset = number(headers, "upload-offset")?
        .ok_or_else(|| AppError::bad_request("invalid_header", "Upload-Offset is required"))?;
    let append = Append {
        offset,
        length: number(headers, "upload-length")?,
        checksum: checksum(headers)?,
        content_length: number(headers, "content-length")?,
    };
    let body = request.into_body().into_data_stream().map_err(read_error);
    let view = state
        .tus
        .append(ctx, id, append, body, revoked(state, ctx))
        .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    describe(&mut response, &view, false);
    Ok(response)
}

/// `DELETE /api/v1/tus/{id}`: termination.
pub(crate) async fn delete(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check_version(&headers) {
        return r;
    }
    match state.tus.terminate(&ctx, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => AppError::from(e).into_response(),
    }
}

/// Resolves when the request's token is revoked or expires: a PATCH streaming then stops.
fn revoked(state: &AppState, ctx: &RequestCtx) -> impl std::future::Future<Output = ()> + Send {
    let (auth, principal) = (state.auth.clone(), ctx.principal.clone());
    async move { auth.until_invalid(&principal).await }
}

fn read_error(e: axum::Error) -> UploadError {
    UploadError::Read(e.to_string())
}

impl From<TusError> for AppError {
    fn from(e: TusError) -> Self {
        let message = e.to_string();
        let status = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        match e {
            TusError::NotFound => AppError::new(StatusCode::NOT_FOUND, "not_found", message),
            TusError::Gone => AppError::new(StatusCode::GONE, "gone", message),
            TusError::OffsetMismatch { .. } => {
                AppError::new(StatusCode::CONFLICT, "offset_mismatch", message)
            }
            TusError::ModifyFinal => AppError::new(StatusCode::FORBIDDEN, "modify_final", message),
            TusError::ChecksumMismatch(_) => {
                AppError::new(status(460), "checksum_mismatch", message)
            }
            TusError::UnsupportedChecksum(_) => {
                AppError::bad_request("unsupported_checksum", message)
            }
            TusError::Invalid(_) => AppError::bad_request("invalid_request", message),
            TusError::LengthExceeded { .. } => {
                AppError::new(StatusCode::PAYLOAD_TOO_LARGE, "length_exceeded", message)
            }
            TusError::TooLarge { .. } => {
                AppError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            TusError::PartialNotFinished => AppError::bad_request("partial_not_finished", message),
            TusError::TooManySessions(_) => AppError {
                retry_after: Some(60),
                ..AppError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", message)
            },
            TusError::StagingQuota { .. } => {
                AppError::new(StatusCode::PAYLOAD_TOO_LARGE, "staging_quota", message)
            }
            TusError::Interrupted => AppError::bad_request("interrupted", message),
            TusError::Revoked => AppError::unauthorized("token_revoked", message),
            TusError::Busy => AppError {
                retry_after: Some(1),
                ..AppError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
            },
            TusError::StagingLost => {
                tracing::error!(error = %message, "tus staging lost");
                AppError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "staging_lost",
                    "the upload's staged bytes are not on this server",
                )
            }
            TusError::Io(e) => crate::services::storage::StorageError::Io {
                op: "tus staging",
                source: e,
            }
            .into(),
            TusError::Service(e) => e.into(),
        }
    }
}
