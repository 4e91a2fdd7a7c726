//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the native API.
//!
//! Kept by hand in `docs/openapi.json` and compiled in; `tests/openapi.rs` checks it against
//! the route table (every route, method and access rule, both ways), checks that the served
//! bytes are the committed file, and `.ci/schemathesis.sh` fuzzes the server against it.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, byte for byte as committed.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

pub(crate) async fn spec() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SPEC,
    )
}
