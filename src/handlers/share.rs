//! Presigned share links: `POST /api/v1/share` makes one, `GET /api/v1/shared/{path}` serves
//! it without a token.
//!
//! A link names a path, its signing time and its expiry, and is signed (HMAC-SHA256) with a
//! key derived from the server secret (`Auth::derive_key("share-link-v1")`), which every
//! replica is given; nothing that signs is in the metadata store. A link lives at most 7 days
//! after its signing time. It stays valid only while the token that made it is active, so
//! revoking that token revokes its links. It serves whatever is at the path when
//! used (a new version of an artifact replaces the old under the same link).

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{content, ApiJson, ApiPath, ApiQuery};
use crate::api::encode_path;
use crate::app::AppState;
use crate::config::parse_duration;
use crate::error::AppError;
use crate::paths::VPath;
use crate::services::auth::{Principal, MAX_SHARE_TTL};
use crate::services::files::RequestCtx;
use crate::services::metadata::{now_ms, rfc3339};

/// JSON body of `POST /api/v1/share`: the file to share and how long the link lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareBody {
    path: String,
    /// `30m`, `1h`, `7d`; at most 7 days. Default 1 h.
    expires_in: Option<String>,
}

/// Answer of `POST /api/v1/share`: the signed link and when it expires.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShareLink {
    /// Path and query of the link, to append to the server's URL.
    pub link: String,
    pub(crate) path: String,
    pub(crate) expires_at: String,
}

/// `POST /api/v1/share`: a link to a file the caller may read, which must exist now.
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiJson(body): ApiJson<ShareBody>,
) -> Result<(StatusCode, Json<ShareLink>), AppError> {
    let path = VPath::parse(&body.path)?;
    let ttl = match body.expires_in.as_deref() {
        None => std::time::Duration::from_secs(3600),
        Some(text) => parse_duration(text)
            .map_err(|e| AppError::bad_request("invalid_request", format!("expires_in: {e}")))?,
    };
    if ttl > MAX_SHARE_TTL {
        return Err(AppError::bad_request(
            "invalid_request",
            "expires_in is at most 7d",
        ));
    }
    state.files.meta_by_path(&path, &ctx).await?;
    let issued = now_ms() / 1000;
    let expires = issued + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let sig = state
        .auth
        .sign_share(path.as_str(), issued, expires, &ctx.principal)
        .ok_or_else(|| AppError::bad_request("invalid_request", "cannot sign"))?;
    let by = ctx.principal.token_id.clone().unwrap_or_default();
    let link = format!(
        "/api/v1/shared/{}?expires={expires}&issued={issued}&by={by}&sig={sig}",
        encode_path(path.as_str())
    );
    Ok((
        StatusCode::CREATED,
        Json(ShareLink {
            link,
            path: path.into_string(),
            expires_at: rfc3339(expires.saturating_mul(1000)),
        }),
    ))
}

/// Query of a share link: expiry, signing time, signer and signature.
#[derive(Debug, Deserialize)]
pub struct SharedQuery {
    expires: i64,
    /// Signing time; links made before it was signed carry none (and are invalid).
    issued: Option<i64>,
    #[serde(default)]
    by: String,
    sig: String,
}

/// `GET|HEAD /api/v1/shared/{path}?expires=&issued=&by=&sig=[&inline=1]`.
pub async fn download(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<String>,
    ApiQuery(q): ApiQuery<SharedQuery>,
    request: Request,
) -> Result<Response, AppError> {
    let path = VPath::parse(&path)?;
    let valid = q.issued.is_some_and(|issued| {
        state
            .auth
            .verify_share(path.as_str(), issued, q.expires, &q.by, &q.sig)
    });
    if !valid {
        // One answer for a bad signature, an expired link and a revoked issuer.
        return Err(AppError::forbidden(
            "the share link is invalid, expired or revoked",
        ));
    }
    let ctx = RequestCtx {
        request_id: String::new(),
        principal: Principal::open(),
    };
    let meta = state.files.meta_by_path(&path, &ctx).await?;
    let head = request.method() == Method::HEAD;
    let inline = content::inline_requested(request.uri().query());
    content::serve(&state, meta, request.headers(), head, inline)
        .await
        .map(IntoResponse::into_response)
}
