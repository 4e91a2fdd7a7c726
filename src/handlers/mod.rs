//! HTTP endpoints. Handlers parse, call a service, and map errors; they take no locks and do
//! no I/O of their own (streaming a request body into a service writer is their job).
//!
//! - [`routes`]: the route table (one authorization rule and one body rule per route) and
//!   the routers built from it.
//! - [`authz`]: the authorization layer (token, scope, Origin and Host checks).
//! - [`body`]: deadlines on request bodies (408 `body_timeout`).
//! - [`upload`], [`multipart_guard`]: `POST /api/v1/files/upload`, raw and multipart.
//! - [`files`], [`content`], [`list`]: file operations, downloads (Range, conditional), lists.
//! - [`sync`]: the WebSocket feed and the long-poll.
//! - [`tus`]: tus 1.0 resumable uploads at `/api/v1/tus/`.
//! - [`share`]: share links; [`admin`]: locks, runtime, fsck, tokens.
//! - [`web`]: the web file browser (`GET /`, embedded assets) and its session endpoints.
//! - [`health`]: `/healthz`, `/readyz`; [`metrics`]: `GET /metrics`.
//! - this module: request ids and the JSON-error extractors ([`ApiJson`], [`ApiPath`],
//!   [`ApiQuery`]).
//!
//! Handlers import the state from `crate::app` and the services below it, never
//! `crate::server` (which imports them).

pub mod admin;
pub mod authz;
pub(crate) mod body;
pub(crate) mod commits;
pub mod content;
pub mod files;
pub mod fs;
pub mod health;
pub mod list;
pub mod metrics;
pub mod multipart_guard;
pub mod openapi;
pub mod routes;
pub(crate) mod s3;
pub mod share;
pub mod sync;
pub(crate) mod tus;
pub mod upload;
pub mod versions;
pub(crate) mod web;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::error::AppError;
use crate::services::auth::Principal;
use crate::services::files::RequestCtx;
use crate::services::metadata::{EtagMatch, Precondition};

/// The request id of the current request, set by [`request_id`].
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Accepts a sane `X-Request-Id` from the client or makes one, exposes it to handlers, carries
/// it in the request's tracing span and returns it in the response.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), uri = %request.uri().path());
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for RequestCtx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        // Set by the authorization layer; a request that skipped it may do nothing.
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .unwrap_or_else(Principal::nobody);
        Ok(RequestCtx {
            request_id,
            principal,
        })
    }
}

/// `Query` whose rejection is a JSON error.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(query_rejection(e)),
        }
    }
}

fn query_rejection(e: QueryRejection) -> AppError {
    AppError::bad_request("invalid_query", e.body_text())
}

/// `Path` whose rejection is a JSON error (an undecodable path is `invalid_path`).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(path_rejection(e)),
        }
    }
}

fn path_rejection(e: PathRejection) -> AppError {
    AppError::bad_request("invalid_path", e.body_text())
}

/// `Json` of a JSON object body, whose rejection is a JSON error. Every request body of the
/// native API is an object; serde would also read a struct from an array (a two-element array for
/// `{from, to}`), so anything but an object is `invalid_json`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => object_value(value).map(ApiJson),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

/// A JSON object body read from bytes (the routes whose body is optional read it as
/// [`ApiBytes`] first): anything but an object is `invalid_json`, as [`ApiJson`] answers.
pub(crate) fn object_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    let value = serde_json::from_slice::<serde_json::Value>(body)
        .map_err(|e| AppError::bad_request("invalid_json", format!("invalid request body: {e}")))?;
    object_value(value)
}

fn object_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, AppError> {
    match value {
        object @ serde_json::Value::Object(_) => serde_json::from_value(object).map_err(|e| {
            AppError::bad_request("invalid_json", format!("invalid request body: {e}"))
        }),
        _ => Err(AppError::bad_request(
            "invalid_json",
            "the request body must be a JSON object",
        )),
    }
}

/// A whole small body as `Bytes` (for optional JSON bodies), whose rejection is a JSON
/// error: 413 `too_large` past the route's body limit, as [`ApiJson`] answers.
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => Ok(ApiBytes(b)),
            Err(e) => {
                let status = e.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "invalid_request"
                };
                Err(AppError::new(status, code, e.body_text()))
            }
        }
    }
}

fn json_rejection(e: JsonRejection) -> AppError {
    // Syntax and data errors alike are 400 `invalid_json` (axum says 422 for the latter).
    let status = match e.status() {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        "unsupported_media_type"
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "invalid_json"
    };
    AppError::new(status, code, e.body_text())
}

/// Parses an `If-Match` / `If-None-Match` list. Weak tags never match (strong comparison).
pub fn parse_etags(value: &str) -> EtagMatch {
    EtagMatch::parse(value)
}

/// The precondition of a write, from `If-Match` / `If-None-Match: *`.
///
/// `If-Match` must be `*` or a list of entity tags (RFC 9110): anything else is a client
/// error, not a tag that happens to match nothing. Both headers together are evaluated in
/// the RFC's order (If-Match, then If-None-Match: *), which no file can pass: 412 when the
/// precondition is checked.
pub fn write_precondition(headers: &HeaderMap) -> Result<Precondition, AppError> {
    let if_match = header_str(headers, "if-match")?
        .map(|m| {
            parse_if_match(m).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_header",
                    "If-Match must be `*` or a list of entity tags (\"...\")",
                )
            })
        })
        .transpose()?;
    let if_none_match = match header_str(headers, "if-none-match")? {
        None => None,
        Some(n) if n.trim() == "*" => Some(Precondition::MustNotExist),
        Some(_) => {
            return Err(AppError::bad_request(
                "invalid_request",
                "only `If-None-Match: *` is supported on writes",
            ))
        }
    };
    match (if_match, if_none_match) {
        // Evaluated with the other preconditions, after the request is otherwise valid: a
        // tag list that names no version never holds, so the write answers 412.
        (Some(_), Some(_)) => Ok(Precondition::MustMatch(EtagMatch::OneOf(Vec::new()))),
        (Some(m), None) => Ok(Precondition::MustMatch(m)),
        (None, Some(n)) => Ok(n),
        (None, None) => Ok(Precondition::None),
    }
}

/// `*`, or entity tags separated by commas: `"x"`, `W/"x"` (weak: never matches a write) or a
/// bare `x` (clients that leave out the quotes). No empty members, no spaces inside a tag.
fn parse_if_match(value: &str) -> Option<EtagMatch> {
    let tagc = |b: u8| b == 0x21 || (0x23..=0x7e).contains(&b) && b != b',';
    let value = value.trim_matches([' ', '\t']);
    if value == "*" {
        return Some(EtagMatch::Any);
    }
    let mut strong = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        let (weak, rest) = match member.strip_prefix("W/") {
            Some(rest) if rest.starts_with('"') => (true, rest),
            _ => (false, member),
        };
        let quoted = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .filter(|inner| inner.bytes().all(tagc));
        let tag = match quoted {
            Some(inner) => inner,
            None if !rest.is_empty() && rest.bytes().all(tagc) && !weak => rest,
            None => return None,
        };
        if !weak {
            strong.push(tag.to_string());
        }
    }
    Some(EtagMatch::OneOf(strong))
}

/// A header as text; a header that is not visible ASCII is a client error.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AppError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            AppError::bad_request("invalid_header", format!("header {name} is not valid text"))
        }),
    }
}
