//! The web file browser: `GET /` and its assets, built into the binary, and the session
//! endpoints that exchange a token for a cookie.
//!
//! The assets under `web/` are plain ES modules and CSS with no build step: what is in the
//! repository is what the browser runs, embedded here with `include_bytes!`. Every asset has a
//! strong ETag (its SHA-256) and is revalidated (`Cache-Control: no-cache`), so an upgrade is
//! seen at the next load and an unchanged asset costs a 304.
//!
//! The page and its assets carry a strict Content-Security-Policy ([`PAGE_CSP`]: scripts from
//! this origin only, no inline script or style, `frame-ancestors 'none'`), `nosniff` and
//! `Referrer-Policy: no-referrer` (share-link signatures never leak through a Referer).
//!
//! Sessions ([`crate::services::web_session`]): `POST /api/v1/session` with `{"token"}` sets
//! an HttpOnly, SameSite=Strict cookie (Secure under TLS); [`session_principal`] is the
//! authorization layer's hook for requests that carry it; writes through a cookie need the
//! session's CSRF token in [`CSRF_HEADER`] and a same-origin `Origin`.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiJson, ApiPath};
use crate::app::AppState;
use crate::error::AppError;
use crate::services::auth::Principal;
use crate::services::web_session::{SessionError, SessionInfo, Sessions};

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "vaultfs_session";
/// The header a cookie-authenticated write carries its session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The page's policy: nothing runs or loads but this origin's own scripts and styles; images,
/// media and text previews come from this origin (blob: for PDF previews); no framing.
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob:; media-src 'self'; connect-src 'self'; frame-src blob:; \
    object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};

/// Everything under `/ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/dom.js"),
    },
    Asset {
        name: "uploads.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/uploads.js"),
    },
    Asset {
        name: "live.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/live.js"),
    },
    Asset {
        name: "preview.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/preview.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/icon.svg"),
    },
];

/// Each asset's strong ETag (quoted hex SHA-256), computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        std::iter::once(&INDEX)
            .chain(ASSETS.iter())
            .map(|a| {
                (
                    a.name,
                    format!("\"{}\"", hex::encode(Sha256::digest(a.body))),
                )
            })
            .collect()
    });
    tags.get(asset.name).map_or("\"\"", String::as_str)
}

/// The headers of the page and of every asset.
fn page_headers(headers: &mut HeaderMap) {
    for (name, value) in [
        ("content-security-policy", PAGE_CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cache-control", "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

fn serve(asset: &Asset, request_headers: &HeaderMap, method: &Method) -> Response {
    let tag = etag(asset);
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        (
            [(header::CONTENT_LENGTH, asset.body.len().to_string())],
            StatusCode::OK,
        )
            .into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    page_headers(headers);
    headers.insert(header::ETAG, HeaderValue::from_static(tag));
    if !fresh {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    response
}

/// `GET /`: the file browser (the folder comes from `?prefix=`, read by the page).
pub(crate) async fn index(method: Method, headers: HeaderMap) -> Response {
    serve(&INDEX, &headers, &method)
}

/// `GET /ui/{asset}`: one of the page's scripts, its style sheet or its icon.
pub(crate) async fn asset(
    method: Method,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, AppError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AppError::new(StatusCode::NOT_FOUND, "not_found", "no such asset"))?;
    Ok(serve(asset, &headers, &method))
}

/// Every asset's name and size (the page is `index.html`), for the size check.
#[cfg(test)]
pub(crate) fn asset_sizes() -> Vec<(&'static str, usize)> {
    std::iter::once(&INDEX)
        .chain(ASSETS.iter())
        .map(|a| (a.name, a.body.len()))
        .collect()
}

/// The session id a request's cookie carries, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The authorization layer's hook, before any await: a write through a session cookie must
/// carry an `Origin` (which the layer has already compared with the server's own) and
/// presents its CSRF token, checked by [`session_principal`]. Returns (session id, the
/// presented CSRF token for a write, `None` for a read).
pub(crate) fn session_for(
    request: &Request,
    cookie: String,
) -> Result<(String, Option<String>), AppError> {
    if !is_write(request.method()) {
        return Ok((cookie, None));
    }
    let headers = request.headers();
    // `Origin` is compared with the server's own by the layer when present; a write
    // through a cookie must have one (browsers send it on every non-GET fetch).
    if headers.get(header::ORIGIN).is_none() {
        return Err(SessionError::Csrf.into());
    }
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok((cookie, Some(presented.to_string())))
}

/// The principal of a live session's token as it is now (a dead token ends the session);
/// a write's CSRF token (`csrf`) must be the session's.
pub(crate) async fn session_principal(
    state: &AppState,
    cookie: &str,
    csrf: Option<&str>,
) -> Result<Principal, AppError> {
    let info = state.sessions.get(cookie).await?;
    if let Some(presented) = csrf {
        if !Sessions::csrf_matches(&info, presented) {
            return Err(SessionError::Csrf.into());
        }
    }
    Ok(info.principal)
}

/// What the page needs to know about its session.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SessionView {
    /// Tokens exist: the page must sign in.
    pub auth_required: bool,
    /// A live session (or an open server, which needs none).
    pub signed_in: bool,
    /// The session token's scopes (`read,write`); all of them on an open server.
    pub scopes: String,
    /// The session token's prefix (empty: all paths).
    pub prefix: String,
    /// The header value cookie-authenticated writes carry in `X-CSRF-Token`.
    pub csrf_token: Option<String>,
}

impl SessionView {
    fn open() -> Self {
        SessionView {
            auth_required: false,
            signed_in: true,
            scopes: crate::services::auth::Scopes::ALL.to_text(),
            prefix: String::new(),
            csrf_token: None,
        }
    }

    fn signed_out() -> Self {
        SessionView {
            auth_required: true,
            signed_in: false,
            scopes: String::new(),
            prefix: String::new(),
            csrf_token: None,
        }
    }
}

fn same_origin_only(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    super::authz::check_origin(state, headers)?;
    super::authz::check_host(state, headers)
}

fn cookie_header(state: &AppState, headers: &HeaderMap, value: &str, clear: bool) -> HeaderValue {
    let https_origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let secure = if state.config.tls_cert.is_some() || https_origin {
        "; Secure"
    } else {
        ""
    };
    let max_age = if clear { "; Max-Age=0" } else { "" };
    let text =
        format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{max_age}");
    // The value is base64url (or empty): always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET /api/v1/session`: whether sign-in is needed, and the live session's scope, prefix
/// and CSRF token.
pub(crate) async fn get_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    same_origin_only(&state, &headers)?;
    if !state.auth.required() {
        return Ok(Json(SessionView::open()).into_response());
    }
    let Some(cookie) = session_cookie(&headers) else {
        return Ok(Json(SessionView::signed_out()).into_response());
    };
    let info = match state.sessions.get(&cookie).await {
        Ok(info) => Some(info),
        Err(SessionError::Store(e)) => return Err(e.into()),
        Err(_) => None,
    };
    let Some(SessionInfo { principal, csrf }) = info else {
        let mut response = Json(SessionView::signed_out()).into_response();
        response.headers_mut().insert(
            header::SET_COOKIE,
            cookie_header(&state, &headers, "", true),
        );
        return Ok(response);
    };
    Ok(Json(SessionView {
        auth_required: true,
        signed_in: true,
        scopes: principal.scopes.to_text(),
        prefix: principal.prefix,
        csrf_token: Some(csrf),
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    token: String,
}

/// `POST /api/v1/session` with `{"token"}`: a session for a valid token, as a cookie.
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, AppError> {
    same_origin_only(&state, &headers)?;
    // Authenticated first: an unknown id reloads the token table (a token made moments ago
    // by the CLI on another process makes the server require tokens).
    let principal = match state.auth.authenticate(body.token.trim()).await {
        Some(p) => p,
        None if !state.auth.required() => return Err(SessionError::NotRequired.into()),
        None => return Err(SessionError::BadToken.into()),
    };
    let (cookie, info) = state.sessions.open(&principal).await?;
    let mut response = (
        StatusCode::CREATED,
        Json(SessionView {
            auth_required: true,
            signed_in: true,
            scopes: principal.scopes.to_text(),
            prefix: principal.prefix,
            csrf_token: Some(info.csrf),
        }),
    )
        .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&state, &headers, &cookie, false),
    );
    Ok(response)
}

/// `DELETE /api/v1/session`: signs out (the session ends on the server; the cookie is
/// cleared). A live session needs its CSRF token; without one there is nothing to end.
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    same_origin_only(&state, &headers)?;
    if let Some(cookie) = session_cookie(&headers) {
        let live = match state.sessions.get(&cookie).await {
            Ok(info) => Some(info),
            Err(SessionError::Store(e)) => return Err(e.into()),
            Err(_) => None,
        };
        if let Some(info) = live {
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !Sessions::csrf_matches(&info, presented) {
                return Err(SessionError::Csrf.into());
            }
            state.sessions.end(&cookie).await?;
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&state, &headers, "", true),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_assets_stay_under_100_kib() {
        let total: usize = asset_sizes().iter().map(|(_, n)| n).sum();
        assert!(total < 100 * 1024, "{total} bytes: {:?}", asset_sizes());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; vaultfs_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("vaultfs_session="));
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn etags_are_strong_and_stable() {
        let tag = etag(&INDEX);
        assert!(tag.starts_with('"') && tag.len() == 66, "{tag}");
        assert_eq!(tag, etag(&INDEX));
    }
}
