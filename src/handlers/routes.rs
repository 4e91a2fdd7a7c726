//! The route table: every route with its method, its one authorization rule ([`Access`]),
//! how its request body is read ([`BodyRule`]) and its handler; [`router`] builds the API from
//! that table only, and [`probe_router`] the probe listener's two routes from the same rows.

use std::collections::HashMap;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{delete, get, options, patch, post, put, MethodRouter};
use axum::Router;

use super::{
    admin, authz, body, commits, files, fs, health, list, metrics, openapi, share, sync, tus,
    upload, versions, web,
};
use crate::app::AppState;
use crate::error::AppError;
use crate::services::auth::Scope;

/// Largest JSON request body (move/copy requests).
const MAX_JSON_BODY: usize = 64 * 1024;

/// Who may call a route. Every route has exactly one rule, in [`routes`]; the authorization
/// layer refuses (403) a route it finds no rule for, so a route added elsewhere is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials: the probes.
    Open,
    /// A token with this scope (or, on an open server, nobody's token).
    Scope(Scope),
    /// A share link's signature, checked by the handler.
    Signed,
}

/// How a route's request body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRule {
    /// No body or a small JSON one, read under the generic deadlines of [`body::deadline`]
    /// (`body_timeout` in all, `body_idle_timeout` between bytes): 408 `body_timeout`.
    Bounded,
    /// Streamed by the handler under the upload's own deadlines (a transfer of gigabytes
    /// outlasts any fixed total).
    Streamed,
}

/// One route's authorization rule, as listed by [`route_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// The HTTP method the rule is for.
    pub method: Method,
    /// The route's path pattern, as given to the router (`/api/v1/files/{id}`).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

type Route = (
    &'static str,
    Method,
    Access,
    BodyRule,
    MethodRouter<AppState>,
);

/// Every route, with its method and rules. The routers are built from this list only.
fn routes() -> Vec<Route> {
    use Access::{Open, Scope as S, Signed};
    use BodyRule::{Bounded, Streamed};
    use Scope::{Admin, Read, Write};
    vec![
        ("/healthz", Method::GET, Open, Bounded, get(health::healthz)),
        // The web file browser (handlers::web): the page and its assets hold no data; the
        // session endpoints check the token, Origin, Host and CSRF token themselves.
        ("/", Method::GET, Open, Bounded, get(web::index)),
        ("/ui/{asset}", Method::GET, Open, Bounded, get(web::asset)),
        (
            "/api/v1/session",
            Method::GET,
            Open,
            Bounded,
            get(web::get_session),
        ),
        (
            "/api/v1/session",
            Method::POST,
            Open,
            Bounded,
            post(web::sign_in),
        ),
        (
            "/api/v1/session",
            Method::DELETE,
            Open,
            Bounded,
            delete(web::sign_out),
        ),
        ("/readyz", Method::GET, Open, Bounded, get(health::readyz)),
        (
            "/metrics",
            Method::GET,
            S(Admin),
            Bounded,
            get(metrics::render),
        ),
        (
            "/api/v1/files/upload",
            Method::POST,
            S(Write),
            Streamed,
            post(upload::upload)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::map_response(upload::close_after_error)),
        ),
        // tus 1.0 resumable uploads (handlers::tus): creation endpoint and upload URLs.
        // OPTIONS is open (protocol discovery, browser preflight); the rest needs `write`.
        (
            "/api/v1/tus/",
            Method::OPTIONS,
            Open,
            Bounded,
            options(tus::options).layer(axum::middleware::from_fn(tus::tus_headers)),
        ),
        (
            "/api/v1/tus/",
            Method::POST,
            S(Write),
            Streamed,
            post(tus::create)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::from_fn(tus::tus_headers)),
        ),
        (
            "/api/v1/tus/{id}",
            Method::OPTIONS,
            Open,
            Bounded,
            options(tus::options).layer(axum::middleware::from_fn(tus::tus_headers)),
        ),
        (
            "/api/v1/tus/{id}",
            Method::GET,
            S(Write),
            Bounded,
            get(tus::head).layer(axum::middleware::from_fn(tus::tus_headers)),
        ),
        (
            "/api/v1/tus/{id}",
            Method::PATCH,
            S(Write),
            Streamed,
            patch(tus::patch)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::from_fn(tus::tus_headers)),
        ),
        (
            "/api/v1/tus/{id}",
            Method::DELETE,
            S(Write),
            Bounded,
            delete(tus::delete).layer(axum::middleware::from_fn(tus::tus_headers)),
        ),
        (
            "/api/v1/files/{id}",
            Method::GET,
            S(Read),
            Bounded,
            get(files::get_content),
        ),
        (
            "/api/v1/files/{id}",
            Method::DELETE,
            S(Write),
            Bounded,
            delete(versions::delete_file),
        ),
        (
            "/api/v1/files/{id}/versions",
            Method::GET,
            S(Read),
            Bounded,
            get(versions::list),
        ),
        (
            "/api/v1/files/{id}/versions/{n}",
            Method::GET,
            S(Read),
            Bounded,
            get(versions::content),
        ),
        (
            "/api/v1/files/{id}/versions/{n}/restore",
            Method::POST,
            S(Write),
            Bounded,
            post(versions::restore),
        ),
        (
            "/api/v1/trash",
            Method::GET,
            S(Read),
            Bounded,
            get(versions::trash_list),
        ),
        (
            "/api/v1/trash/{trash_id}/restore",
            Method::POST,
            S(Write),
            Bounded,
            post(versions::trash_restore),
        ),
        (
            "/api/v1/trash/{trash_id}",
            Method::DELETE,
            S(Write),
            Bounded,
            delete(versions::trash_purge),
        ),
        (
            "/api/v1/trash/batches/{batch_id}/restore",
            Method::POST,
            S(Write),
            Bounded,
            post(versions::batch_restore),
        ),
        (
            "/api/v1/files/{id}/meta",
            Method::GET,
            S(Read),
            Bounded,
            get(files::get_meta),
        ),
        (
            "/api/v1/files/{id}/move",
            Method::POST,
            S(Write),
            Bounded,
            post(files::move_file),
        ),
        (
            "/api/v1/files/{id}/copy",
            Method::POST,
            S(Write),
            Bounded,
            post(files::copy_file),
        ),
        (
            "/api/v1/fs/{*path}",
            Method::GET,
            S(Read),
            Bounded,
            get(files::get_by_path),
        ),
        (
            "/api/v1/fs/{*path}",
            Method::PUT,
            S(Write),
            Streamed,
            put(fs::put)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::map_response(upload::close_after_error)),
        ),
        (
            "/api/v1/fs/{*path}",
            Method::DELETE,
            S(Write),
            Bounded,
            delete(fs::delete),
        ),
        (
            "/api/v1/fs/{*path}",
            Method::POST,
            S(Write),
            Bounded,
            post(fs::relocate),
        ),
        // The document is the committed docs/openapi.json: no data, needed before a token.
        (
            "/api/v1/openapi.json",
            Method::GET,
            Open,
            Bounded,
            get(openapi::spec),
        ),
        (
            "/api/v1/stat",
            Method::GET,
            S(Read),
            Bounded,
            get(files::stat),
        ),
        (
            "/api/v1/list",
            Method::GET,
            S(Read),
            Bounded,
            get(list::list),
        ),
        (
            "/api/v1/sync",
            Method::GET,
            S(Read),
            Bounded,
            get(sync::sync),
        ),
        (
            "/api/v1/events",
            Method::GET,
            S(Read),
            Bounded,
            get(sync::events),
        ),
        (
            "/api/v1/share",
            Method::POST,
            S(Read),
            Bounded,
            post(share::create),
        ),
        (
            "/api/v1/shared/{*path}",
            Method::GET,
            Signed,
            Bounded,
            get(share::download),
        ),
        (
            "/api/v1/admin/locks",
            Method::GET,
            S(Admin),
            Bounded,
            get(admin::locks),
        ),
        (
            "/api/v1/admin/runtime",
            Method::GET,
            S(Admin),
            Bounded,
            get(admin::runtime),
        ),
        (
            "/api/v1/admin/fsck",
            Method::POST,
            S(Admin),
            Bounded,
            post(admin::fsck),
        ),
        (
            "/api/v1/admin/tokens",
            Method::GET,
            S(Admin),
            Bounded,
            get(admin::list_tokens),
        ),
        (
            "/api/v1/admin/tokens",
            Method::POST,
            S(Admin),
            Bounded,
            post(admin::create_token),
        ),
        (
            "/api/v1/admin/tokens/{id}",
            Method::DELETE,
            S(Admin),
            Bounded,
            delete(admin::revoke_token),
        ),
        // Commits and leases (issue 21, handlers::commits).
        (
            "/api/v1/commits",
            Method::POST,
            S(Write),
            Bounded,
            post(commits::create),
        ),
        (
            "/api/v1/commits/{id}",
            Method::GET,
            S(Write),
            Bounded,
            get(commits::get),
        ),
        (
            "/api/v1/commits/{id}",
            Method::DELETE,
            S(Write),
            Bounded,
            delete(commits::abort),
        ),
        (
            "/api/v1/commits/{id}/finish",
            Method::POST,
            S(Write),
            Bounded,
            post(commits::finish),
        ),
        (
            "/api/v1/leases",
            Method::POST,
            S(Write),
            Bounded,
            post(commits::acquire),
        ),
        (
            "/api/v1/leases/{id}/renew",
            Method::POST,
            S(Write),
            Bounded,
            post(commits::renew),
        ),
        (
            "/api/v1/leases/{id}",
            Method::DELETE,
            S(Write),
            Bounded,
            delete(commits::release),
        ),
        (
            "/api/v1/admin/leases",
            Method::GET,
            S(Admin),
            Bounded,
            get(commits::list),
        ),
    ]
}

/// The authorization rule of every route (GET routes answer HEAD under the same rule).
pub fn route_rules() -> Vec<RouteRule> {
    routes()
        .into_iter()
        .map(|(path, method, access, _, _)| RouteRule {
            method,
            path,
            access,
        })
        .collect()
}

/// The rule for a matched route, looked up by the authorization layer.
pub fn rule_for(method: &Method, path: &str) -> Option<Access> {
    static RULES: std::sync::OnceLock<HashMap<(Method, &'static str), Access>> =
        std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        route_rules()
            .into_iter()
            .map(|r| ((r.method, r.path), r.access))
            .collect()
    });
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    rules.get(&(method.clone(), path)).copied()
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    build(state, routes())
}

/// The probe listener's router (`--probe-listen`): only the open routes, `/healthz` and
/// `/readyz`, with the same handlers, rules and layers as on the API listener.
pub(crate) fn probe_router(state: AppState) -> Router {
    let probes = routes()
        .into_iter()
        .filter(|(path, _, access, _, _)| {
            *access == Access::Open && matches!(*path, "/healthz" | "/readyz")
        })
        .collect();
    build(state, probes)
}

fn build(state: AppState, routes: Vec<Route>) -> Router {
    let deadlines = body::Deadlines::from_config(&state.config);
    let mut router = Router::new();
    for (path, _, _, body_rule, method_router) in routes {
        let method_router = match body_rule {
            BodyRule::Bounded => method_router.layer(axum::middleware::from_fn_with_state(
                deadlines,
                body::deadline,
            )),
            BodyRule::Streamed => method_router,
        };
        // Same path, other method: axum merges the method routers.
        router = router.route(path, method_router);
    }
    router
        // Inside the authorization layer: a write's X-Vaultfs-Fence, in scope for its future.
        .route_layer(axum::middleware::from_fn(commits::fence_scope))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authz::authorize,
        ))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(|| async {
            AppError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            )
        })
        .method_not_allowed_fallback(|| async {
            AppError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(super::request_id))
        .with_state(state)
}
