//! Handler edge cases in process: requests sent to the router with `ServiceExt::oneshot`, no
//! socket and no accept loop, so each answer is the router's and the handlers' alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;
use vaultfs::app::AppState;
use vaultfs::config::Config;

use crate::common;

/// One request to a fresh router over `state`: the status and the JSON body.
async fn send(state: &AppState, method: Method, uri: &str, body: Body) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1")
        .body(body)
        .unwrap();
    let response = common::router(state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{status}: errors are JSON"
    );
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn state() -> (tempfile::TempDir, AppState) {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::open(Config::for_data_dir(dir.path()))
        .await
        .unwrap();
    (dir, state)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let (_dir, state) = state().await;
    let (status, v) = send(&state, Method::GET, "/api/v1/nope", Body::empty()).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "not_found"),
        "{v}"
    );
    // `/` is the web page (issue 22); any other path outside the table is a JSON 404.
    let (status, v) = send(&state, Method::GET, "/nope", Body::empty()).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "not_found"),
        "{v}"
    );
}

#[tokio::test]
async fn a_known_route_with_another_method_is_a_json_405() {
    let (_dir, state) = state().await;
    for (method, uri) in [
        (Method::DELETE, "/healthz"),
        (Method::GET, "/api/v1/files/upload"),
        (Method::PUT, "/api/v1/list"),
    ] {
        let (status, v) = send(&state, method.clone(), uri, Body::empty()).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            "{method} {uri}: {v}"
        );
    }
}

#[tokio::test]
async fn an_upload_without_a_path_is_invalid_path() {
    let (dir, state) = state().await;
    let (status, v) = send(
        &state,
        Method::POST,
        "/api/v1/files/upload",
        Body::from("content"),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_path"),
        "{v}"
    );
    let (status, v) = send(
        &state,
        Method::POST,
        "/api/v1/files/upload?path=",
        Body::from("content"),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_path"),
        "{v}"
    );
    // Nothing was stored or left staged.
    assert_eq!(common::count_files(&dir.path().join("blobs"), 2).await, 0);
}

#[tokio::test]
async fn a_bad_list_cursor_is_a_400() {
    let (_dir, state) = state().await;
    for cursor in ["garbage!", "AAAA", "%FF%FE"] {
        let (status, v) = send(
            &state,
            Method::GET,
            &format!("/api/v1/list?cursor={cursor}"),
            Body::empty(),
        )
        .await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_cursor"),
            "cursor {cursor:?}: {v}"
        );
    }
}
