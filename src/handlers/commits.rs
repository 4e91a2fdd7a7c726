//! Commits and leases (issue 21): `POST /api/v1/commits`, `GET`/`DELETE
//! /api/v1/commits/{id}`, `POST /api/v1/commits/{id}/finish`, `POST /api/v1/leases`,
//! `POST /api/v1/leases/{id}/renew`, `DELETE /api/v1/leases/{id}`, `GET
//! /api/v1/admin/leases`; and [`fence_scope`], which gives every request's future the
//! `X-Vaultfs-Fence` it carries (checked in the metadata transaction of each write).
//! Staging is the upload's `?commit=ID` (`handlers::upload`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::{header_str, object_json, ApiBytes, ApiPath};
use crate::app::AppState;
use crate::error::AppError;
use crate::paths::VPath;
use crate::services::commits::{parse_lease_path, FinishOptions, DEFAULT_COMMIT_TTL, MAX_TTL};
use crate::services::files::RequestCtx;
use crate::services::metadata::commits::{CommitRecord, Lease, FENCE};
use crate::services::metadata::{rfc3339, MetadataError};

/// The header a write's fence travels in.
pub(crate) const FENCE_HEADER: &str = "x-vaultfs-fence";
/// Default and longest ttl of a lease.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// Runs the request with its `X-Vaultfs-Fence` (a decimal number) in scope; 400
/// `invalid_header` when it is not one.
pub(crate) async fn fence_scope(request: Request, next: Next) -> Result<Response, AppError> {
    let fence = match header_str(request.headers(), FENCE_HEADER)? {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .ok()
                .and_then(|f| i64::try_from(f).ok())
                .ok_or_else(|| {
                    AppError::bad_request("invalid_header", "X-Vaultfs-Fence must be a number")
                })?,
        ),
    };
    Ok(FENCE.scope(fence, next.run(request)).await)
}

/// An optional JSON object body: empty means all defaults.
fn optional_json<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    object_json(body)
}

fn ttl(raw: Option<&str>, default: Duration) -> Result<Duration, AppError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let ttl = crate::config::parse_duration(raw)
        .map_err(|e| AppError::bad_request("invalid_request", format!("ttl: {e}")))?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(AppError::bad_request(
            "invalid_request",
            "ttl must be above 0 and at most 7d",
        ));
    }
    Ok(ttl)
}

/// A commit or lease id: 32 hex digits.
fn check_id(id: &str) -> Result<(), AppError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AppError::not_found())
    }
}

fn commit_json(c: &CommitRecord) -> serde_json::Value {
    json!({"id": c.id, "expires_at": rfc3339(c.expires_at_ms), "state": c.state})
}

fn lease_json(l: &Lease) -> serde_json::Value {
    json!({
        "lease_id": l.lease_id,
        "path": l.path,
        "fence": l.fence,
        "expires_at": rfc3339(l.expires_at_ms),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    idempotency_key: Option<String>,
    ttl: Option<String>,
}

/// `POST /api/v1/commits`: 201 `{"id", "expires_at", "state"}`; with a known
/// `idempotency_key`, 200 with that commit (and `result`, its finish, once finished).
pub(crate) async fn create(
    State(state): State<AppState>,
    ApiBytes(body): ApiBytes,
) -> Result<Response, AppError> {
    let body: CreateBody = optional_json(&body)?;
    if let Some(key) = &body.idempotency_key {
        if key.is_empty() || key.chars().count() > 200 || key.chars().any(char::is_control) {
            return Err(AppError::bad_request(
                "invalid_request",
                "idempotency_key must be 1 to 200 characters, no control characters",
            ));
        }
    }
    let ttl = ttl(body.ttl.as_deref(), DEFAULT_COMMIT_TTL)?;
    let (commit, created) = state.files.create_commit(body.idempotency_key, ttl).await?;
    let mut answer = commit_json(&commit);
    if let Some(done) = commit.finished() {
        answer["result"] = json!(done);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

/// `GET /api/v1/commits/{id}`: the commit and its staged files (`path`, `size`, `sha256`);
/// 404 once aborted, 410 `commit_expired` past its ttl (swept or not).
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    check_id(&id)?;
    let (commit, files) = state.files.commit_status(&id).await?;
    match commit.state.as_str() {
        "aborted" => return Err(AppError::not_found()),
        "expired" => return Err(MetadataError::CommitExpired.into()),
        _ => {}
    }
    let mut answer = commit_json(&commit);
    answer["files"] = json!(files);
    if let Some(done) = commit.finished() {
        answer["result"] = json!(done);
    }
    Ok(Json(answer))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    path: String,
    sha256: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishBody {
    expect: Option<Vec<Expected>>,
    #[serde(default)]
    delete: Vec<String>,
    replace_prefix: Option<String>,
    /// A JSON number: `44558.0` is the integer 44558 to JSON Schema, so it is one here too.
    if_unchanged_since: Option<serde_json::Number>,
}

/// The largest whole number a JSON double holds exactly (2^53 - 1): the spec's maximum.
const MAX_SAFE_SEQ: f64 = 9_007_199_254_740_991.0;

/// `if_unchanged_since` as a seq: a whole number from 0 up.
fn seq_number(n: &serde_json::Number) -> Result<i64, AppError> {
    let whole = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=MAX_SAFE_SEQ).contains(f))
            .map(|f| f as i64)
    });
    whole
        .filter(|v| (0..=MAX_SAFE_SEQ as i64).contains(v))
        .ok_or_else(|| {
            AppError::bad_request(
                "invalid_request",
                "if_unchanged_since must be a whole number from 0 to 2^53 - 1",
            )
        })
}

/// `POST /api/v1/commits/{id}/finish`: 200 with the commit id, `seq_first`, `seq_last`, `files`.
pub(crate) async fn finish(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiPath(id): ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> Result<Response, AppError> {
    check_id(&id)?;
    let body: FinishBody = optional_json(&body)?;
    let mut options = FinishOptions {
        if_unchanged_since: body
            .if_unchanged_since
            .as_ref()
            .map(seq_number)
            .transpose()?,
        ..FinishOptions::default()
    };
    if let Some(expect) = body.expect {
        let mut pairs = Vec::with_capacity(expect.len());
        for e in expect {
            pairs.push((VPath::parse(&e.path)?.into_string(), e.sha256));
        }
        options.expect = Some(pairs);
    }
    for path in &body.delete {
        options.delete.push(VPath::parse(path)?);
    }
    if let Some(prefix) = &body.replace_prefix {
        if !prefix.ends_with('/') {
            return Err(AppError::bad_request(
                "invalid_path",
                "replace_prefix must end in /",
            ));
        }
        options.replace_prefix = Some(crate::paths::validate_prefix(prefix)?);
    }
    let outcome = state.files.finish_commit(&ctx, &id, options).await?;
    Ok(Json(outcome).into_response())
}

/// `DELETE /api/v1/commits/{id}`: 204; the staged content is collected.
pub(crate) async fn abort(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    check_id(&id)?;
    state.files.abort_commit(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    path: String,
    ttl: Option<String>,
}

/// `POST /api/v1/leases`: 201 with the lease; 409 `lease_held` (with `expires_at`).
pub(crate) async fn acquire(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiBytes(body): ApiBytes,
) -> Result<Response, AppError> {
    let body: LeaseBody = object_json(&body)?;
    let path = parse_lease_path(&body.path)?;
    let ttl = ttl(body.ttl.as_deref(), DEFAULT_LEASE_TTL)?;
    let lease = state.files.acquire_lease(&ctx, &path, ttl).await?;
    Ok((StatusCode::CREATED, Json(lease_json(&lease))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    ttl: Option<String>,
}

/// `POST /api/v1/leases/{id}/renew`: 200 with the lease's new `expires_at`; 410
/// `lease_expired` once it lapsed.
pub(crate) async fn renew(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> Result<Json<serde_json::Value>, AppError> {
    check_id(&id)?;
    let body: RenewBody = optional_json(&body)?;
    let ttl = ttl(body.ttl.as_deref(), DEFAULT_LEASE_TTL)?;
    let lease = state.files.renew_lease(&id, ttl).await?;
    Ok(Json(lease_json(&lease)))
}

/// `DELETE /api/v1/leases/{id}`: 204.
pub(crate) async fn release(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    check_id(&id)?;
    state.files.release_lease(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/admin/leases`: `{"leases": [lease]}`.
pub(crate) async fn list(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, AppError> {
    let leases = state.files.leases().await?;
    let leases: Vec<_> = leases.iter().map(lease_json).collect();
    Ok(Json(json!({ "leases": leases })))
}
