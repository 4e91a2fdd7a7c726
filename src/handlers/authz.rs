//! The authorization layer: every matched route passes here first.
//!
//! It finds the route's rule ([`crate::handlers::routes::rule_for`]; none means 403, fail-closed),
//! authenticates the bearer token (or, for the sync feed only, an `access_token` query
//! parameter, for browsers, which cannot set headers on a WebSocket), checks the scope and
//! leaves the [`Principal`] in the request for the services, which check every path against
//! its prefix. On an open server (no token exists), requests without a token act with full
//! access, but browsers' cross-origin requests are refused. On a loopback listener, in every
//! auth mode (open, `--insecure-no-auth`, tokens), a foreign `Host` name (DNS rebinding) is
//! refused unless `allowed_hosts` names it, so a web page cannot reach a laptop's VaultFS.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::AppError;
use crate::handlers::routes::{rule_for, Access};
use crate::services::auth::{Principal, Scope};

/// The query parameter a browser's WebSocket may carry its token in.
pub const QUERY_TOKEN: &str = "access_token";
const SYNC_ROUTE: &str = "/api/v1/sync";

/// The authorization layer: finds the route's rule, authenticates the bearer token (or share
/// link, session cookie, sync query token) and answers 401/403 before the handler runs.
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // Decided without holding `&Request` across an await (the body is not `Sync`).
    let principal = match precheck(&state, &request) {
        Err(e) => return e.into_response(),
        Ok(Step::Done(p)) => p,
        Ok(Step::Authenticate { token, scope }) => match state.auth.authenticate(&token).await {
            None => {
                return AppError::unauthorized(
                    "invalid_token",
                    "the token is malformed, unknown, revoked or expired",
                )
                .into_response()
            }
            Some(p) if !p.scopes.allows(scope) => return lacks(scope).into_response(),
            // A prefixed admin token could otherwise mint itself an unprefixed one.
            Some(p) if scope == Scope::Admin && !p.prefix.is_empty() => {
                return AppError::forbidden("admin routes need an admin token without a prefix")
                    .into_response()
            }
            Some(p) => p,
        },
        // A browser session's cookie (handlers::web): the token it maps to, looked up now.
        Ok(Step::Session {
            cookie,
            csrf,
            scope,
        }) => match super::web::session_principal(&state, &cookie, csrf.as_deref()).await {
            Err(e) => return e.into_response(),
            Ok(p) if !p.scopes.allows(scope) => return lacks(scope).into_response(),
            Ok(p) if scope == Scope::Admin && !p.prefix.is_empty() => {
                return AppError::forbidden("admin routes need an admin token without a prefix")
                    .into_response()
            }
            Ok(p) => p,
        },
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

enum Step {
    Done(Principal),
    Authenticate {
        token: String,
        scope: Scope,
    },
    Session {
        cookie: String,
        /// A write's presented CSRF token.
        csrf: Option<String>,
        scope: Scope,
    },
}

fn lacks(scope: Scope) -> AppError {
    AppError::forbidden(format!("the token lacks the `{}` scope", scope.as_str()))
}

fn precheck(state: &AppState, request: &Request) -> Result<Step, AppError> {
    let Some(route) = request.extensions().get::<MatchedPath>() else {
        return Err(no_rule("(unmatched)"));
    };
    let route = route.as_str();
    let scope = match rule_for(request.method(), route) {
        None => return Err(no_rule(route)),
        Some(Access::Open | Access::Signed) => return Ok(Step::Done(Principal::nobody())),
        Some(Access::Scope(scope)) => scope,
    };
    check_origin(state, request.headers())?;
    check_host(state, request.headers())?;
    match credential(request, route)? {
        Some(token) => Ok(Step::Authenticate {
            token: token.to_string(),
            scope,
        }),
        None if state.auth.required() => match super::web::session_cookie(request.headers()) {
            Some(cookie) => {
                let (cookie, csrf) = super::web::session_for(request, cookie)?;
                Ok(Step::Session {
                    cookie,
                    csrf,
                    scope,
                })
            }
            None => Err(AppError::unauthorized(
                "unauthorized",
                "this server requires a token: Authorization: Bearer <token>",
            )),
        },
        None => Ok(Step::Done(Principal::open())),
    }
}

fn no_rule(route: &str) -> AppError {
    tracing::error!(
        route,
        "route has no authorization rule; refusing (see handlers::routes::routes)"
    );
    AppError::forbidden("this route has no authorization rule")
}

/// The presented token: `Authorization: Bearer ...`, or `?access_token=` on the sync feed.
fn credential<'a>(request: &'a Request, route: &str) -> Result<Option<&'a str>, AppError> {
    let malformed = || {
        AppError::unauthorized(
            "invalid_token",
            "the Authorization header must read `Bearer <token>`",
        )
    };
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(malformed());
        }
        let text = value.to_str().map_err(|_| malformed())?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(malformed)?;
        return Ok(Some(token));
    }
    if route == SYNC_ROUTE {
        let query = request.uri().query().unwrap_or("");
        for pair in query.split('&') {
            if let Some(token) = pair
                .strip_prefix(QUERY_TOKEN)
                .and_then(|r| r.strip_prefix('='))
            {
                return Ok(Some(token));
            }
        }
    }
    Ok(None)
}

/// A browser's request (it has an `Origin`) must come from an allowed origin: one of
/// `allowed_origins` when set, else the server's own origin.
pub(crate) fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(()); // not a browser (CLI, CI scripts, tungstenite)
    };
    let origin = origin
        .to_str()
        .map(str::to_ascii_lowercase)
        .map_err(|_| origin_refused())?;
    let allowed = if state.config.allowed_origins.is_empty() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase);
        host.is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"))
    } else {
        state.config.allowed_origins.contains(&origin)
    };
    if allowed {
        Ok(())
    } else {
        Err(origin_refused())
    }
}

fn origin_refused() -> AppError {
    AppError::forbidden("requests from this Origin are not allowed (see allowed_origins)")
}

/// On a loopback listener, the `Host` must be a loopback name or one of `allowed_hosts`: a
/// page on another site that re-points its own name at 127.0.0.1 (DNS rebinding) sends its
/// own name. Whatever the auth mode: `--insecure-no-auth` does not turn this off. A listener
/// on another address is reached under names the operator chose; no check there.
pub(crate) fn check_host(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    if !state.config.listen.ip().is_loopback() {
        return Ok(());
    }
    let Some(host) = headers.get(header::HOST) else {
        return Ok(()); // HTTP/1.0 without Host: not a browser
    };
    let allowed = host.to_str().is_ok_and(|h| {
        is_loopback_host(h)
            || state
                .config
                .allowed_hosts
                .iter()
                .any(|a| host_name(h) == *a)
    });
    if allowed {
        Ok(())
    } else {
        Err(AppError::forbidden(
            "this loopback server answers loopback host names only (see allowed_hosts)",
        ))
    }
}

/// The name part of a `Host` value, lowercase, without the port.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name.to_string()
        }
        _ => host,
    }
}

/// Logs at every start what `--insecure-no-auth` means here. `exposed`: the listener or the
/// configured address is not loopback; `required`: tokens exist.
pub fn warn_if_insecure(config: &crate::config::Config, exposed: bool, required: bool) {
    if !config.insecure_no_auth {
        return;
    }
    if required {
        tracing::warn!(
            "--insecure-no-auth is set but tokens exist: it has no effect, every \
            request needs a token; remove the flag"
        );
    } else if !exposed {
        tracing::warn!(listen = %config.listen, "AUTHENTICATION IS DISABLED \
            (--insecure-no-auth): every local user and program can read, write and delete \
            every file; browsers are still refused foreign Host names and origins");
    }
    // Exposed and open: `server::run` logs its own warning.
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || port.starts_with(':') => ip.to_string(),
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
            _ => host.clone(),
        }
    };
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:1",
            "127.9.9.9",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.com",
            "evil.com:8080",
            "127.0.0.1.evil.com",
            "[::2]:1",
            "0.0.0.0",
            "10.0.0.1",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
