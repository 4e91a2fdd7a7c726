//! Authentication and authorization, route by route, and the secure defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{data, enc, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use vaultfs::handlers::routes::{route_rules, Access};
use vaultfs::services::auth::Scope;

/// Makes a token with the CLI, on the data directory of a running server.
async fn token(dir: &std::path::Path, scopes: &str, prefix: &str) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args([
            "token",
            "create",
            "--scope",
            scopes,
            "--prefix",
            prefix,
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("vfs_"), "{token}");
    token
}

/// A server whose first token another process just made closes within its reload interval
/// (1 s; the wait allows for a machine loaded by the parallel suite).
async fn closed(s: &TestServer) -> bool {
    common::eventually(Duration::from_secs(10), || async {
        s.get_json("/api/v1/list").await.0 == 401
    })
    .await
}

fn token_id(token: &str) -> &str {
    &token[4..16]
}

async fn cli(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("VAULTFS_TOKEN")
        .env_remove("VAULTFS_URL")
        .output()
        .await
        .unwrap()
}

/// The rule every route must have. A route added to the router without a line here fails
/// `every_route_has_a_rule_and_enforces_it`.
fn expected_rules() -> BTreeMap<(String, &'static str), Access> {
    use Access::{Open, Scope as S, Signed};
    use Scope::{Admin, Read, Write};
    [
        ("GET", "/healthz", Open),
        ("GET", "/readyz", Open),
        ("GET", "/", Open),
        ("GET", "/ui/{asset}", Open),
        ("GET", "/api/v1/session", Open),
        ("POST", "/api/v1/session", Open),
        ("DELETE", "/api/v1/session", Open),
        ("GET", "/metrics", S(Admin)),
        ("POST", "/api/v1/files/upload", S(Write)),
        ("GET", "/api/v1/files/{id}", S(Read)),
        ("DELETE", "/api/v1/files/{id}", S(Write)),
        ("GET", "/api/v1/files/{id}/meta", S(Read)),
        ("POST", "/api/v1/files/{id}/move", S(Write)),
        ("POST", "/api/v1/files/{id}/copy", S(Write)),
        ("GET", "/api/v1/fs/{*path}", S(Read)),
        ("PUT", "/api/v1/fs/{*path}", S(Write)),
        ("DELETE", "/api/v1/fs/{*path}", S(Write)),
        ("POST", "/api/v1/fs/{*path}", S(Write)),
        ("GET", "/api/v1/openapi.json", Open),
        ("GET", "/api/v1/stat", S(Read)),
        ("GET", "/api/v1/list", S(Read)),
        ("GET", "/api/v1/sync", S(Read)),
        ("GET", "/api/v1/events", S(Read)),
        ("POST", "/api/v1/share", S(Read)),
        ("GET", "/api/v1/shared/{*path}", Signed),
        ("GET", "/api/v1/admin/locks", S(Admin)),
        ("GET", "/api/v1/admin/runtime", S(Admin)),
        ("POST", "/api/v1/admin/fsck", S(Admin)),
        ("GET", "/api/v1/admin/tokens", S(Admin)),
        ("POST", "/api/v1/admin/tokens", S(Admin)),
        ("DELETE", "/api/v1/admin/tokens/{id}", S(Admin)),
        ("GET", "/api/v1/files/{id}/versions", S(Read)),
        ("GET", "/api/v1/files/{id}/versions/{n}", S(Read)),
        ("POST", "/api/v1/files/{id}/versions/{n}/restore", S(Write)),
        ("DELETE", "/api/v1/fs/{*path}", S(Write)),
        ("GET", "/api/v1/trash", S(Read)),
        ("POST", "/api/v1/trash/{trash_id}/restore", S(Write)),
        ("DELETE", "/api/v1/trash/{trash_id}", S(Write)),
        ("POST", "/api/v1/trash/batches/{batch_id}/restore", S(Write)),
        ("OPTIONS", "/api/v1/tus/", Open),
        ("POST", "/api/v1/tus/", S(Write)),
        ("POST", "/api/v1/commits", S(Write)),
        ("GET", "/api/v1/commits/{id}", S(Write)),
        ("DELETE", "/api/v1/commits/{id}", S(Write)),
        ("POST", "/api/v1/commits/{id}/finish", S(Write)),
        ("POST", "/api/v1/leases", S(Write)),
        ("POST", "/api/v1/leases/{id}/renew", S(Write)),
        ("DELETE", "/api/v1/leases/{id}", S(Write)),
        ("GET", "/api/v1/admin/leases", S(Admin)),
        ("OPTIONS", "/api/v1/tus/{id}", Open),
        ("GET", "/api/v1/tus/{id}", S(Write)),
        ("PATCH", "/api/v1/tus/{id}", S(Write)),
        ("DELETE", "/api/v1/tus/{id}", S(Write)),
    ]
    .into_iter()
    .map(|(m, p, a)| ((m.to_string(), p), a))
    .collect()
}

/// A concrete request for a route pattern, touching `file` (path) / `id` (its id).
fn sample(
    method: &Method,
    pattern: &str,
    file: &str,
    id: &str,
    trashed: &(String, String),
) -> (String, Option<Value>, Vec<u8>) {
    let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
    let dest = format!("{dir}/moved-{}", uuid_like(id));
    match pattern {
        "/api/v1/files/upload" => (
            format!("{pattern}?path={}", enc(file)),
            None,
            b"new".to_vec(),
        ),
        "/api/v1/files/{id}" | "/api/v1/files/{id}/meta" => {
            (pattern.replace("{id}", id), None, Vec::new())
        }
        "/api/v1/files/{id}/move" | "/api/v1/files/{id}/copy" => (
            pattern.replace("{id}", id),
            Some(json!({ "to": dest })),
            Vec::new(),
        ),
        "/api/v1/fs/{*path}" if method == Method::PUT => {
            (format!("/api/v1/fs/{}", enc(file)), None, b"new".to_vec())
        }
        "/api/v1/fs/{*path}" if method == Method::POST => (
            format!("/api/v1/fs/{}?op=move&to={}", enc(file), enc(&dest)),
            None,
            Vec::new(),
        ),
        "/api/v1/fs/{*path}" => (format!("/api/v1/fs/{}", enc(file)), None, Vec::new()),
        "/api/v1/shared/{*path}" => (
            format!("/api/v1/shared/{}?expires=1&sig=00", enc(file)),
            None,
            Vec::new(),
        ),
        "/api/v1/stat" => (format!("{pattern}?path={}", enc(file)), None, Vec::new()),
        "/api/v1/list" | "/api/v1/events" | "/api/v1/sync" => (
            format!("{pattern}?prefix={}", enc(&format!("{dir}/"))),
            None,
            Vec::new(),
        ),
        "/api/v1/share" => (
            pattern.to_string(),
            Some(json!({ "path": file })),
            Vec::new(),
        ),
        "/api/v1/admin/tokens" if method == Method::POST => (
            pattern.to_string(),
            Some(json!({"scopes": "read", "label": "table"})),
            Vec::new(),
        ),
        "/api/v1/admin/tokens/{id}" => (pattern.replace("{id}", "000000000000"), None, Vec::new()),
        "/api/v1/files/{id}/versions" => (pattern.replace("{id}", id), None, Vec::new()),
        "/api/v1/files/{id}/versions/{n}" | "/api/v1/files/{id}/versions/{n}/restore" => (
            pattern.replace("{id}", id).replace("{n}", "1"),
            None,
            Vec::new(),
        ),
        "/api/v1/trash" => (
            format!("{pattern}?prefix={}", enc(&format!("{dir}/"))),
            None,
            Vec::new(),
        ),
        // `trashed`: a trash id and a batch id of the file's own trashed twin (see the loop).
        "/api/v1/trash/{trash_id}/restore" | "/api/v1/trash/{trash_id}" => {
            (pattern.replace("{trash_id}", &trashed.0), None, Vec::new())
        }
        "/api/v1/trash/batches/{batch_id}/restore" => {
            (pattern.replace("{batch_id}", &trashed.1), None, Vec::new())
        }
        // A creation whose target (`filename` joined to ?path=, see `call`) is `file`'s dir.
        "/api/v1/tus/" if method == Method::POST => (
            format!("{pattern}?path={}", enc(&format!("{dir}/"))),
            None,
            Vec::new(),
        ),
        // A session no token owns.
        "/api/v1/tus/{id}" => (
            pattern.replace("{id}", "0123456789abcdef"),
            None,
            Vec::new(),
        ),
        "/ui/{asset}" => ("/ui/app.js".to_string(), None, Vec::new()),
        "/api/v1/commits" => (pattern.to_string(), Some(json!({})), Vec::new()),
        // A commit or lease id nobody made.
        "/api/v1/commits/{id}"
        | "/api/v1/commits/{id}/finish"
        | "/api/v1/leases/{id}"
        | "/api/v1/leases/{id}/renew" => (
            pattern.replace("{id}", "0123456789abcdef0123456789abcdef"),
            None,
            Vec::new(),
        ),
        // A short lease on the request's own file (no later sample writes under it).
        "/api/v1/leases" => (
            pattern.to_string(),
            Some(json!({"path": file, "ttl": "1s"})),
            Vec::new(),
        ),
        other => (other.to_string(), None, Vec::new()),
    }
}

fn uuid_like(id: &str) -> &str {
    &id[..8]
}

struct Caller<'a> {
    name: &'a str,
    auth: Option<String>,
}

async fn call(
    s: &TestServer,
    method: &Method,
    uri: &str,
    json_body: &Option<Value>,
    raw_body: &[u8],
    auth: &Option<String>,
) -> (StatusCode, Value) {
    let mut req = s.client.request(method.clone(), s.url(uri));
    if uri.starts_with("/api/v1/tus/") {
        // tus requests speak the protocol; a creation names a small upload.
        req = req.header("tus-resumable", "1.0.0");
        if *method == Method::POST {
            req = req
                .header("upload-length", "3")
                .header("upload-metadata", "filename dHVzLXNhbXBsZQ==");
        }
        if *method == Method::PATCH {
            req = req
                .header("content-type", "application/offset+octet-stream")
                .header("upload-offset", "0");
        }
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req = match json_body {
        Some(j) => req.json(j),
        None if !raw_body.is_empty() => req.body(raw_body.to_vec()),
        None => req,
    };
    let r = req.send().await.unwrap();
    let status = r.status();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The table: every route with no token, a malformed token, a revoked token, a token of
/// the wrong scope and a token of another prefix expects 401/403; the right token passes. The
/// routes come from the router's own table, so a new route is covered (or fails) by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_has_a_rule_and_enforces_it() {
    // With a trash, so the trash routes have entries to work on.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(vaultfs::config::Config {
        trash_retention: Some(std::time::Duration::from_secs(3600)),
        ..vaultfs::config::Config::for_data_dir(dir.path())
    })
    .await;
    // Checked against the hand-written table first: a route without a reviewed rule fails.
    let actual: BTreeMap<(String, &'static str), Access> = route_rules()
        .into_iter()
        .map(|r| ((r.method.to_string(), r.path), r.access))
        .collect();
    assert_eq!(
        actual,
        expected_rules(),
        "route table changed: review its rules here"
    );

    let d = dir.path();
    let admin = token(d, "admin", "").await;
    let team_read = token(d, "read", "team-a/").await;
    let team_write = token(d, "write", "team-a/").await;
    let team_rw = token(d, "read,write", "team-a/").await;
    let other_rw = token(d, "read,write", "team-b/").await;
    let other_admin = token(d, "admin", "team-b/").await;
    let revoked = token(d, "admin", "").await;
    let out = cli(&[
        "token",
        "revoke",
        token_id(&revoked),
        "--data-dir",
        d.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success());
    let bearer = |t: &str| Some(format!("Bearer {t}"));
    let admin_client = |m: Method, uri: &str| {
        s.client
            .request(m, s.url(uri))
            .header("authorization", format!("Bearer {admin}"))
    };

    let mut checked = 0;
    for rule in route_rules() {
        let mut methods = vec![rule.method.clone()];
        if rule.method == Method::GET {
            methods.push(Method::HEAD);
        }
        for method in methods {
            // A fresh file for every request: some of them move or delete it.
            let file = format!("team-a/f{checked}.bin");
            let r = admin_client(
                Method::POST,
                &format!("/api/v1/files/upload?path={}", enc(&file)),
            )
            .body(data(100, checked))
            .send()
            .await
            .unwrap();
            assert!(r.status().is_success());
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            // For the trash routes: a twin of the file deleted alone (a trash id) and one
            // deleted with its directory (a batch id).
            let trashed = if rule.path.starts_with("/api/v1/trash/") {
                let twin = format!("team-a/twin{checked}/f.bin");
                admin_client(
                    Method::POST,
                    &format!("/api/v1/files/upload?path={}", enc(&twin)),
                )
                .body(data(10, checked))
                .send()
                .await
                .unwrap();
                let r = admin_client(
                    Method::DELETE,
                    &format!("/api/v1/fs/team-a/twin{checked}/?recursive=true"),
                )
                .send()
                .await
                .unwrap();
                let batch = r.json::<Value>().await.unwrap()["batch_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let r = admin_client(Method::GET, "/api/v1/trash?prefix=team-a/")
                    .send()
                    .await
                    .unwrap();
                let entries = r.json::<Value>().await.unwrap()["entries"].clone();
                let trash_id = entries
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["batch_id"] == batch.as_str())
                    .unwrap()["trash_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                (trash_id, batch)
            } else {
                (String::new(), String::new())
            };
            let (uri, body, raw) = sample(&method, rule.path, &file, &id, &trashed);
            // The web sign-in takes a valid token in its body (the route itself is open).
            let body = match (rule.path, &method) {
                ("/api/v1/session", &Method::POST) => Some(json!({ "token": team_rw })),
                _ => body,
            };
            let what = format!("{method} {uri}");

            let denied: Vec<(Caller, StatusCode)> = match rule.access {
                Access::Open | Access::Signed => vec![],
                Access::Scope(scope) => {
                    let wrong_scope = match scope {
                        Scope::Read => team_write.clone(),
                        Scope::Write => team_read.clone(),
                        Scope::Admin => team_rw.clone(),
                    };
                    let other_prefix = match scope {
                        Scope::Admin => other_admin.clone(),
                        _ => other_rw.clone(),
                    };
                    vec![
                        (
                            Caller {
                                name: "no token",
                                auth: None,
                            },
                            StatusCode::UNAUTHORIZED,
                        ),
                        (
                            Caller {
                                name: "malformed",
                                auth: Some("Bearer not-a-token".into()),
                            },
                            StatusCode::UNAUTHORIZED,
                        ),
                        (
                            Caller {
                                name: "not bearer",
                                auth: Some(format!("Basic {admin}")),
                            },
                            StatusCode::UNAUTHORIZED,
                        ),
                        (
                            Caller {
                                name: "wrong secret",
                                auth: bearer(&format!("{}x", &admin[..admin.len() - 1])),
                            },
                            StatusCode::UNAUTHORIZED,
                        ),
                        (
                            Caller {
                                name: "revoked",
                                auth: bearer(&revoked),
                            },
                            StatusCode::UNAUTHORIZED,
                        ),
                        (
                            Caller {
                                name: "wrong scope",
                                auth: bearer(&wrong_scope),
                            },
                            StatusCode::FORBIDDEN,
                        ),
                        (
                            Caller {
                                name: "other prefix",
                                auth: bearer(&other_prefix),
                            },
                            StatusCode::FORBIDDEN,
                        ),
                    ]
                }
            };
            for (caller, want) in &denied {
                // A commit names no path when it is created: any write token may create
                // one, and its files are checked against the token as they are staged.
                if (rule.path, caller.name) == ("/api/v1/commits", "other prefix") {
                    continue;
                }
                let (status, body) = call(&s, &method, &uri, &body, &raw, &caller.auth).await;
                // A tus session belongs to the token that created it: to any other token,
                // whatever its prefix, it does not exist. The sample commit and lease ids
                // exist for nobody.
                let want = match (rule.path, caller.name) {
                    ("/api/v1/tus/{id}", "other prefix") => StatusCode::NOT_FOUND,
                    (
                        "/api/v1/commits/{id}"
                        | "/api/v1/commits/{id}/finish"
                        | "/api/v1/leases/{id}"
                        | "/api/v1/leases/{id}/renew",
                        "other prefix",
                    ) => StatusCode::NOT_FOUND,
                    _ => *want,
                };
                assert_eq!(status, want, "{what} as {}: {body}", caller.name);
                if method != Method::HEAD {
                    let code = body["error"]["code"].as_str().unwrap_or("");
                    assert!(
                        ["unauthorized", "invalid_token", "forbidden"].contains(&code)
                            || (want == StatusCode::NOT_FOUND && code == "not_found"),
                        "{what} as {}: {body}",
                        caller.name
                    );
                }
                // Nothing happened: the file is still where it was, with its content.
                let r = admin_client(Method::GET, &format!("/api/v1/fs/{}", enc(&file)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "{what} as {} changed the file",
                    caller.name
                );
                assert_eq!(r.bytes().await.unwrap().to_vec(), data(100, checked));
            }
            // The right token passes the authorization layer.
            let allowed = match rule.access {
                Access::Open | Access::Signed => None,
                Access::Scope(Scope::Admin) => bearer(&admin),
                Access::Scope(_) => bearer(&team_rw),
            };
            let (status, body) = call(&s, &method, &uri, &body, &raw, &allowed).await;
            let expected_ok = match (rule.access, rule.path) {
                // No signature: refused by the handler, whoever asks.
                (Access::Signed, _) => status == StatusCode::FORBIDDEN,
                // Not a WebSocket handshake: authorized, then told to upgrade.
                (_, "/api/v1/sync") => status == StatusCode::BAD_REQUEST,
                // The sample revokes a token id that does not exist.
                (_, "/api/v1/admin/tokens/{id}") => status == StatusCode::NOT_FOUND,
                // No token owns the sample session.
                (Access::Scope(_), "/api/v1/tus/{id}") => status == StatusCode::NOT_FOUND,
                (
                    _,
                    "/api/v1/commits/{id}"
                    | "/api/v1/commits/{id}/finish"
                    | "/api/v1/leases/{id}"
                    | "/api/v1/leases/{id}/renew",
                ) => status == StatusCode::NOT_FOUND,
                _ => status.is_success(),
            };
            assert!(expected_ok, "{what} with the right token: {status} {body}");
            checked += 1;
        }
    }
    eprintln!(
        "{checked} route/method pairs checked with 7 denied callers and the right token each"
    );
    assert!(checked >= 30, "{checked} route/method pairs");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixed_tokens_see_only_their_prefix() {
    let (dir, s) = TestServer::start().await;
    let d = dir.path();
    let admin = token(d, "admin", "").await;
    let team = token(d, "read,write", "team-a/").await;
    let as_admin = |m: Method, uri: &str| {
        s.client
            .request(m, s.url(uri))
            .header("authorization", format!("Bearer {admin}"))
    };
    let as_team = |m: Method, uri: &str| {
        s.client
            .request(m, s.url(uri))
            .header("authorization", format!("Bearer {team}"))
    };
    for p in ["team-a/x/1", "team-a/2", "team-b/secret", "top"] {
        let r = as_admin(
            Method::POST,
            &format!("/api/v1/files/upload?path={}", enc(p)),
        )
        .body(p.as_bytes().to_vec())
        .send()
        .await
        .unwrap();
        assert!(r.status().is_success());
    }
    let list = |uri: String| {
        let req = as_team(Method::GET, &uri);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    // The root, by directory: only the way down to the prefix.
    let root = list("/api/v1/list?delimiter=/".into()).await;
    assert_eq!(root["prefixes"], json!(["team-a/"]), "{root}");
    assert_eq!(root["entries"], json!([]));
    // Recursive from the root: the prefix's contents only.
    let all = list("/api/v1/list".into()).await;
    let paths: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["team-a/2", "team-a/x/1"]);
    // A disjoint listing is refused, not silently empty.
    let r = as_team(Method::GET, "/api/v1/list?prefix=team-b/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Moves across the boundary, as the team's feed shows them.
    let feed_start = s.get_json("/api/v1/events?limit=1").await; // open? no: tokens exist
    assert_eq!(feed_start.0, 401);
    let latest = as_admin(Method::GET, "/api/v1/events?limit=10000")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["next_since"]
        .as_i64()
        .unwrap();
    let id_of = |p: &'static str| {
        let req = as_admin(Method::GET, &format!("/api/v1/stat?path={}", enc(p)));
        async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let secret = id_of("team-b/secret").await;
    let two = id_of("team-a/2").await;
    // In: team-b/secret -> team-a/in (the source path must not show).
    let r = as_admin(Method::POST, &format!("/api/v1/files/{secret}/move"))
        .json(&json!({"to": "team-a/in"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Out: team-a/2 -> team-b/out (the destination must not show).
    let r = as_admin(Method::POST, &format!("/api/v1/files/{two}/move"))
        .json(&json!({"to": "team-b/out"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Elsewhere entirely.
    let r = as_admin(Method::POST, "/api/v1/files/upload?path=team-b/more")
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let feed = as_team(Method::GET, &format!("/api/v1/events?since={latest}"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let seen: Vec<(String, String, Value)> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e.get("from_path").cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("created".to_string(), "team-a/in".to_string(), Value::Null),
            ("deleted".to_string(), "team-a/2".to_string(), Value::Null),
        ],
        "{feed}"
    );
    assert!(!feed.to_string().contains("team-b"), "{feed}");

    // Id-addressed operations on a file outside the prefix are refused and change nothing.
    let out_id = id_of("team-b/out").await;
    for (m, uri, body) in [
        (Method::GET, format!("/api/v1/files/{out_id}"), None),
        (Method::GET, format!("/api/v1/files/{out_id}/meta"), None),
        (Method::DELETE, format!("/api/v1/files/{out_id}"), None),
        (
            Method::POST,
            format!("/api/v1/files/{out_id}/move"),
            Some(json!({"to": "team-a/stolen"})),
        ),
        (
            Method::POST,
            format!("/api/v1/files/{out_id}/copy"),
            Some(json!({"to": "team-a/stolen"})),
        ),
    ] {
        let mut req = as_team(m.clone(), &uri);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{m} {uri}");
    }
    // And a move of an inside file to outside is refused.
    let in_id = id_of("team-a/in").await;
    let r = as_team(Method::POST, &format!("/api/v1/files/{in_id}/move"))
        .json(&json!({"to": "team-b/exfil"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = as_admin(Method::GET, "/api/v1/stat?path=team-b/out")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = as_admin(Method::GET, "/api/v1/stat?path=team-a/stolen")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_lifecycle_and_revocation_take_effect() {
    let (dir, s) = TestServer::start().await;
    let d = dir.path().to_str().unwrap().to_string();
    // Open on loopback while no token exists (the zero-configuration quick start).
    assert_eq!(s.get_json("/api/v1/list").await.0, 200);

    let out = cli(&[
        "token",
        "create",
        "--scope",
        "admin",
        "--label",
        "ops",
        "--json",
        "--data-dir",
        &d,
    ])
    .await;
    assert!(out.status.success());
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let admin = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["scopes"], "admin");
    assert!(created.get("secret_hash").is_none());
    // Now closed, at once (the server reloads on an unknown id; the open state ends with the
    // next reload, within a second).
    let closed = common::eventually(Duration::from_secs(10), || async {
        s.get_json("/api/v1/list").await.0 == 401
    })
    .await;
    assert!(closed, "a token exists: requests need one");
    assert_eq!(s.get_json("/healthz").await.0, 200, "probes stay open");
    let r = s.get_as("/api/v1/list", &admin).await;
    assert_eq!(r.status(), 200);
    let unauthorized = s.client.get(s.url("/api/v1/list")).send().await.unwrap();
    assert_eq!(
        unauthorized.headers()["www-authenticate"],
        "Bearer realm=\"vaultfs\""
    );

    // Through the server's admin API: create, list (no secrets), revoke (at once).
    let server = s.base.clone();
    let out = cli(&[
        "token",
        "create",
        "--scope",
        "write",
        "--prefix",
        "ci",
        "--expires",
        "1d",
        "--server",
        &server,
        "--token",
        &admin,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ci = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = cli(&["token", "list", "--server", &server, "--token", &admin]).await;
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains(token_id(&ci)) && listing.contains("ci/") && listing.contains("ops"));
    assert!(!listing.contains(&ci[16..]), "the secret is never listed");
    // The database and its write-ahead log, where a fresh row is, read by another process:
    // opening and closing meta.db in this process would cancel the POSIX locks the server's
    // SQLite connections hold on it (they are per process), and a later writer in another
    // process could then lose updates. (That happened here: a revocation vanished.)
    let db = tokio::process::Command::new("cat")
        .arg(dir.path().join("meta.db"))
        .arg(dir.path().join("meta.db-wal"))
        .output()
        .await
        .unwrap()
        .stdout;
    assert!(db.len() > 4096);
    assert!(
        !db.windows(20).any(|w| w == &ci.as_bytes()[17..37]),
        "the secret is not stored"
    );
    let upload = |t: String| {
        let req = s
            .client
            .post(s.url("/api/v1/files/upload?path=ci/a"))
            .bearer_auth(t)
            .body("x");
        async move { req.send().await.unwrap().status() }
    };
    assert!(upload(ci.clone()).await.is_success());
    let out = cli(&[
        "token",
        "revoke",
        token_id(&ci),
        "--server",
        &server,
        "--token",
        &admin,
    ])
    .await;
    assert!(out.status.success());
    assert_eq!(
        upload(ci.clone()).await,
        401,
        "revoked through the API: at once"
    );

    // Revoked on the data directory by another process: within the reload interval.
    let ci2 = token(dir.path(), "write", "ci/").await;
    assert!(
        upload(ci2.clone()).await.is_success(),
        "a token made by another process works at once"
    );
    let out = cli(&["token", "revoke", token_id(&ci2), "--data-dir", &d]).await;
    assert!(out.status.success());
    let gone = common::eventually(Duration::from_secs(10), || async {
        upload(ci2.clone()).await == 401
    })
    .await;
    assert!(
        gone,
        "revoked by another process within the reload interval"
    );
    let out = cli(&["token", "revoke", token_id(&ci2), "--data-dir", &d]).await;
    assert_eq!(out.status.code(), Some(1), "revoking twice is an error");

    // An expired token is refused like a revoked one.
    let body = json!({"scopes": "read", "expires_in": "1s"});
    let (status, created) = s.post_json_as("/api/v1/admin/tokens", &admin, &body).await;
    assert_eq!(status, 201);
    let short = created["token"].as_str().unwrap().to_string();
    assert_eq!(s.get_as("/api/v1/list", &short).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.get_as("/api/v1/list", &short).await.status(), 401);

    // Bad requests to the admin API are 400s with a code.
    for body in [
        json!({"scopes": "root"}),
        json!({"scopes": ""}),
        json!({"scopes": "read", "prefix": "../x"}),
        json!({"scopes": "read", "expires_in": "soon"}),
        json!({"scopes": "read", "label": "a\u{0}b"}),
        json!({"scopes": 7}),
        json!({"scopes": "read", "extra": true}),
    ] {
        let (status, _) = s.post_json_as("/api/v1/admin/tokens", &admin, &body).await;
        assert_eq!(status, 400, "{body}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_work_without_a_token_until_they_expire_or_are_revoked() {
    let (dir, s) = TestServer::start().await;
    let d = dir.path();
    let admin = token(d, "admin", "").await;
    let team = token(d, "read,write", "team-a/").await;
    let content = data(50_000, 7);
    let r = s
        .upload_as("team-a/app v1.bin", &team, content.clone())
        .await;
    assert_eq!(r.status(), 201);

    let out = cli(&[
        "share",
        "team-a/app v1.bin",
        "--expires",
        "1h",
        "--server",
        &s.base,
        "--token",
        &team,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(url.starts_with(&s.base), "{url}");
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), content);
    // Ranges and HEAD work as on any download.
    let r = plain
        .get(&url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), content[..10].to_vec());

    // Tampering: another path, a later expiry, another issuer, a flipped signature.
    let tampered = [
        url.replace("app%20v1.bin", "app%20v2.bin"),
        url.replace("expires=", "expires=9"),
        url.replace(
            &format!("by={}", token_id(&team)),
            &format!("by={}", token_id(&admin)),
        ),
        {
            let i = url.len() - 1;
            let last = if url.ends_with('0') { "1" } else { "0" };
            format!("{}{last}", &url[..i])
        },
        url.split("&sig=").next().unwrap().to_string(),
    ];
    for t in &tampered {
        let r = plain.get(t).send().await.unwrap();
        assert!(
            r.status() == 403 || r.status() == 400,
            "{t}: {}",
            r.status()
        );
    }
    // Outside the token's prefix: no link.
    let r = s
        .client
        .post(s.url("/api/v1/share"))
        .bearer_auth(&team)
        .json(&json!({"path": "team-b/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Too long, or nothing there.
    for body in [
        json!({"path": "team-a/app v1.bin", "expires_in": "8d"}),
        json!({"path": "team-a/none"}),
    ] {
        let r = s
            .client
            .post(s.url("/api/v1/share"))
            .bearer_auth(&team)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 400 || r.status() == 404,
            "{body}: {}",
            r.status()
        );
    }
    // Expiry.
    let r = s
        .client
        .post(s.url("/api/v1/share"))
        .bearer_auth(&team)
        .json(&json!({"path": "team-a/app v1.bin", "expires_in": "1s"}))
        .send()
        .await
        .unwrap();
    let short = format!(
        "{}{}",
        s.base,
        r.json::<Value>().await.unwrap()["link"].as_str().unwrap()
    );
    assert_eq!(plain.get(&short).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(plain.get(&short).send().await.unwrap().status(), 403);
    // Revoking the issuing token kills its links.
    let r = s
        .delete_as(&format!("/api/v1/admin/tokens/{}", token_id(&team)), &admin)
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(plain.get(&url).send().await.unwrap().status(), 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_made_while_open_die_when_tokens_arrive() {
    let (dir, s) = TestServer::start().await;
    s.put("open/a.bin", b"artifact").await;
    let r = s
        .client
        .post(s.url("/api/v1/share"))
        .json(&json!({"path": "open/a.bin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let link = format!(
        "{}{}",
        s.base,
        r.json::<Value>().await.unwrap()["link"].as_str().unwrap()
    );
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(plain.get(&link).send().await.unwrap().status(), 200);
    token(dir.path(), "admin", "").await;
    assert!(closed(&s).await);
    assert_eq!(plain.get(&link).send().await.unwrap().status(), 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loopback_server_refuses_browsers_from_elsewhere() {
    let (_dir, s) = TestServer::start().await;
    s.put("a", b"x").await;
    let get = |headers: &[(&str, &str)]| {
        let mut req = s.client.get(s.url("/api/v1/list"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move { req.send().await.unwrap().status() }
    };
    let own = format!("http://{}", s.addr);
    assert_eq!(get(&[]).await, 200, "CLI and scripts: no Origin");
    assert_eq!(get(&[("origin", &own)]).await, 200, "same origin");
    assert_eq!(
        get(&[("origin", "https://evil.example")]).await,
        403,
        "cross-site page"
    );
    assert_eq!(get(&[("origin", "null")]).await, 403, "sandboxed page");
    // DNS rebinding: the page's own name, resolved to 127.0.0.1.
    assert_eq!(get(&[("host", "evil.example:8080")]).await, 403);
    assert_eq!(get(&[("host", "localhost:8080")]).await, 200);
    // A cross-site form POST cannot write a file.
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=pwned"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(s.get_json("/api/v1/stat?path=pwned").await.0, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_authenticated_before_the_upgrade() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut config = vaultfs::config::Config::for_data_dir(dir.path());
    config.allowed_origins = vec!["https://ui.example".into()];
    let s = TestServer::start_with(config).await;
    let team = token(dir.path(), "read", "team-a/").await;
    assert!(closed(&s).await);
    let ws_url = format!("ws://{}/api/v1/sync?prefix=team-a/", s.addr);
    let connect = |url: String, headers: Vec<(&'static str, String)>| async move {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(k, v.parse().unwrap());
        }
        tokio_tungstenite::connect_async(req).await
    };
    let status_of = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(status_of(connect(ws_url.clone(), vec![]).await), 401);
    assert_eq!(
        status_of(
            connect(
                format!("{ws_url}&access_token=vfs_000000000000_{}", "a".repeat(43)),
                vec![]
            )
            .await
        ),
        401
    );
    assert_eq!(
        status_of(
            connect(
                ws_url.replace("team-a/", "team-b/"),
                vec![("authorization", format!("Bearer {team}"))]
            )
            .await
        ),
        403
    );
    assert_eq!(
        status_of(
            connect(
                format!("{ws_url}&access_token={team}"),
                vec![("origin", "https://evil.example".into())]
            )
            .await
        ),
        403,
        "an origin outside allowed_origins"
    );
    // A browser on the allowed origin, token in the query.
    let (mut ws, _) = connect(
        format!("{ws_url}&access_token={team}"),
        vec![("origin", "https://ui.example".into())],
    )
    .await
    .unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("hello"));
    // The CLI's way: the header.
    let (mut ws2, _) = connect(
        ws_url.clone(),
        vec![("authorization", format!("Bearer {team}"))],
    )
    .await
    .unwrap();
    assert!(ws2
        .next()
        .await
        .unwrap()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("hello"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_address_without_tokens_is_refused_unless_insecure() {
    // The configured address is what the operator asked to expose; the test's listener
    // stays on 127.0.0.1.
    let dir = tempfile::tempdir().unwrap();
    let mut config = vaultfs::config::Config::for_data_dir(dir.path());
    config.listen = "0.0.0.0:8080".parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = vaultfs::server::run(listener, config.clone(), std::future::pending())
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("0.0.0.0:8080") && msg.contains("--insecure-no-auth"),
        "{msg}"
    );

    // With --insecure-no-auth it serves, open.
    let mut insecure = config.clone();
    insecure.insecure_no_auth = true;
    let s = TestServer::start_with(insecure).await;
    assert_eq!(s.get_json("/api/v1/list").await.0, 200);
    s.stop().await;

    // With a token it serves, closed from the start.
    let admin = token(dir.path(), "admin", "").await;
    let s = TestServer::start_with(config).await;
    assert_eq!(s.get_json("/api/v1/list").await.0, 401);
    let r = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_token_is_installed_once_and_revocation_sticks() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["token", "generate"]).await;
    let bootstrap = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(bootstrap.starts_with("vfs_"));
    assert!(
        !dir.path().join("meta.db").exists(),
        "generate stores nothing"
    );
    let mut config = vaultfs::config::Config::for_data_dir(dir.path());
    config.bootstrap_token = Some(bootstrap.clone());
    let s = TestServer::start_with(config.clone()).await;
    let r = s
        .client
        .get(s.url("/api/v1/admin/tokens"))
        .bearer_auth(&bootstrap)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed = r.json::<Value>().await.unwrap();
    assert_eq!(listed["tokens"][0]["label"], "bootstrap");
    assert_eq!(listed["tokens"][0]["scopes"], "read,write,admin");
    let r = s
        .delete_as(
            &format!("/api/v1/admin/tokens/{}", token_id(&bootstrap)),
            &bootstrap,
        )
        .await;
    assert_eq!(r.status(), 204);
    s.stop().await;
    // Restarted with the same environment: still revoked.
    let s = TestServer::start_with(config.clone()).await;
    let r = s.get_as("/api/v1/list", &bootstrap).await;
    assert_eq!(r.status(), 401);
    s.stop().await;
    // A malformed one stops the start with a clear error.
    config.bootstrap_token = Some("hunter2".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = vaultfs::server::run(listener, config, std::future::pending())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("VAULTFS_BOOTSTRAP_TOKEN"), "{err}");
}
