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

/// One request to a fresh router over `state`: the status and the JSON body (errors are JSON).
async fn send(state: &AppState, method: Method, uri: &str, body: Body) -> (StatusCode, Value) {
    answer(state, method, uri, None, body).await
}

/// As [`send`], with a JSON body and its content type.
async fn send_json(state: &AppState, method: Method, uri: &str, body: &str) -> (StatusCode, Value) {
    let body = Body::from(body.to_owned());
    answer(state, method, uri, Some("application/json"), body).await
}

async fn answer(
    state: &AppState,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Body,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "127.0.0.1");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = common::router(state.clone())
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{status}: answers are JSON"
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

#[tokio::test]
async fn a_json_array_is_not_a_request_object() {
    // serde reads a struct from a sequence too (`["a/b"]` would be `{"to": "a/b"}`): every
    // object body of the API refuses that, as the spec's `type: object` says.
    let (_dir, state) = state().await;
    let (status, v) = send_json(&state, Method::POST, "/api/v1/files/upload?path=a.txt", "").await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    for (uri, array) in [
        (format!("/api/v1/files/{id}/move"), r#"["b.txt"]"#),
        (format!("/api/v1/files/{id}/copy"), r#"["c.txt"]"#),
        ("/api/v1/share".to_owned(), r#"["a.txt", "1h"]"#),
        ("/api/v1/admin/tokens".to_owned(), r#"["t", "read"]"#),
        ("/api/v1/leases".to_owned(), r#"["x/", "30s"]"#),
    ] {
        let (status, v) = send_json(&state, Method::POST, &uri, array).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{uri}: {v}"
        );
    }
    // The objects themselves still work, and nothing moved on the refused requests.
    let (status, v) = send_json(
        &state,
        Method::POST,
        &format!("/api/v1/files/{id}/move"),
        r#"{"to": "b.txt"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["path"], "b.txt", "{v}");
}
