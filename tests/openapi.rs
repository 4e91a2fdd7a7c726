//! The OpenAPI document against the code: the route table both ways (every route, method and
//! access rule documented, nothing documented without a route), the served bytes against the
//! committed docs/openapi.json, the links the stateful fuzzer chains, the error codes; the
//! path-addressed verbs; and the schemathesis run (`.ci/schemathesis.sh`) when installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Plain #[test]s reading the source tree and the committed spec: no runtime to block.
#![allow(clippy::disallowed_methods)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{data, enc, sha256_hex, TestServer};
use serde_json::Value;
use vaultfs::handlers::routes::{route_rules, Access};

fn spec() -> Value {
    serde_json::from_str(vaultfs::handlers::openapi::SPEC).expect("docs/openapi.json is JSON")
}

/// `{*path}` in axum is `{path}` in OpenAPI.
fn openapi_path(route: &str) -> String {
    route.replace("{*", "{")
}

fn access_text(access: Access) -> String {
    match access {
        Access::Open => "open".to_string(),
        Access::Signed => "signed".to_string(),
        Access::Scope(s) => format!("scope:{}", s.as_str()),
    }
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Every (method, path) of the spec with its `x-vaultfs-access`, checking that `security`
/// says the same thing.
fn documented(spec: &Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unexpected key {method}"
            );
            let access = op["x-vaultfs-access"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no x-vaultfs-access"))
                .to_string();
            let security = &op["security"];
            let expected = match access.as_str() {
                "open" => serde_json::json!([]),
                "signed" => serde_json::json!([{"shareLink": []}]),
                scope => {
                    let scope = scope
                        .strip_prefix("scope:")
                        .unwrap_or_else(|| panic!("{method} {path}: access {scope}"));
                    serde_json::json!([{ "bearerAuth": [scope] }])
                }
            };
            assert_eq!(security, &expected, "{method} {path}: security vs access");
            out.insert((method.to_uppercase(), path.clone()), access);
        }
    }
    out
}

#[test]
fn every_route_is_documented_with_its_rule_and_nothing_else_is() {
    let table: BTreeMap<(String, String), String> = route_rules()
        .into_iter()
        .map(|r| {
            (
                (r.method.to_string(), openapi_path(r.path)),
                access_text(r.access),
            )
        })
        .collect();
    let spec = documented(&spec());
    let missing: Vec<_> = table.keys().filter(|k| !spec.contains_key(*k)).collect();
    let extra: Vec<_> = spec.keys().filter(|k| !table.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the spec: {missing:?}"
    );
    assert!(extra.is_empty(), "spec entries without a route: {extra:?}");
    for (key, access) in &table {
        assert_eq!(&spec[key], access, "{key:?}: the spec's access rule");
    }
    assert!(table.len() >= 26, "{} routes", table.len());
}

#[test]
fn operations_are_well_formed_and_links_chain_the_upload() {
    let spec = spec();
    let mut ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        let params: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|p| p.split('}').next().unwrap().to_string())
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
            // Every path template variable is a required path parameter.
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| resolve(&spec, p))
                        .filter(|p| p["in"] == "path")
                        .map(|p| {
                            assert_eq!(p["required"], true, "{method} {path}");
                            p["name"].as_str().unwrap().to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, params, "{method} {path}: path parameters");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2') || s == "101"),
                "{method} {path}: no success response"
            );
            // Errors the router and the authorization layer give every route.
            assert!(responses.contains_key("405"), "{method} {path}: 405");
            if op["x-vaultfs-access"]
                .as_str()
                .unwrap()
                .starts_with("scope:")
            {
                for s in ["401", "403"] {
                    assert!(responses.contains_key(s), "{method} {path}: {s}");
                }
            }
            for (status, r) in responses {
                let r = resolve(&spec, r);
                if status.as_str() >= "400" {
                    let schema = &r["content"]["application/json"]["schema"];
                    let named = schema["$ref"]
                        .as_str()
                        .or(schema["allOf"][0]["$ref"].as_str());
                    assert!(
                        named.is_some_and(|n| n.ends_with("/Error")
                            || ["HealthFailure", "NotReady", "ResyncRequired"]
                                .iter()
                                .any(|s| n.ends_with(s))),
                        "{method} {path} {status}: not the JSON error body"
                    );
                }
            }
        }
    }
    // The links the stateful phase chains: upload -> the file by id, its meta, move, copy,
    // delete; every link names an operation that exists.
    let upload = &spec["paths"]["/api/v1/files/upload"]["post"]["responses"]["201"]["links"];
    let targets: BTreeSet<&str> = upload
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["operationId"].as_str().unwrap())
        .collect();
    for want in [
        "getFileContent",
        "getFileMeta",
        "moveFile",
        "copyFile",
        "deleteFile",
    ] {
        assert!(targets.contains(want), "upload links lack {want}");
    }
    let mut links = 0;
    for item in spec["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for r in op["responses"].as_object().unwrap().values() {
                for link in r["links"].as_object().into_iter().flatten() {
                    let target = link.1["operationId"].as_str().unwrap();
                    assert!(ids.contains(target), "link to unknown {target}");
                    links += 1;
                }
            }
        }
    }
    assert!(links >= 30, "{links} links");
}

fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => spec.pointer(r.trim_start_matches('#')).unwrap(),
        None => v,
    }
}

/// Every error code the code answers with (string literals right after the error
/// constructors, and the handful chosen by expression), scanned from src/.
fn codes_in_source() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    let mut stack = vec![std::path::PathBuf::from("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for marker in [
                "bad_request(",
                "unauthorized(",
                "unavailable(",
                "AppError::new(",
                "Self::new(",
                "\"code\":",
                "let code = ",
            ] {
                for (at, _) in text.match_indices(marker) {
                    let window: String = text[at + marker.len()..].chars().take(220).collect();
                    // Up to the message: the literals that are snake_case words are codes. A
                    // literal the window cuts (an odd count of quotes) is the next statement's
                    // and is read whole from its own marker.
                    let literals: Vec<&str> = window.split('"').skip(1).step_by(2).collect();
                    let whole = if window.matches('"').count() % 2 == 1 {
                        &literals[..literals.len().saturating_sub(1)]
                    } else {
                        &literals[..]
                    };
                    for lit in whole {
                        if !lit.is_empty()
                            && lit.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                            && lit.contains(|c: char| c.is_ascii_lowercase())
                        {
                            codes.insert(lit.to_string());
                        }
                    }
                }
            }
        }
    }
    // Literals in those windows that are not codes (words inside the next statement).
    for not_a_code in [
        "status",
        "ok",
        "unhealthy",
        "ready",
        "error",
        "message",
        "code",
        "latest_seq",
        "stall",
        // A `Connection: close` header value and a variable name.
        "close",
        "ev",
    ] {
        codes.remove(not_a_code);
    }
    codes
}

#[test]
fn the_error_code_enum_is_every_code_the_server_answers() {
    let spec = spec();
    let documented: BTreeSet<String> = spec["components"]["schemas"]["Error"]["properties"]
        ["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let used = codes_in_source();
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "codes missing from the spec: {undocumented:?}"
    );
    // And every documented code is a literal somewhere in the server.
    let mut all_source = String::new();
    let mut stack = vec![std::path::PathBuf::from("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                all_source.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    for code in &documented {
        assert!(
            all_source.contains(&format!("\"{code}\"")),
            "spec documents {code}, which the server never answers"
        );
    }
    assert!(documented.len() >= 30, "{documented:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_spec_is_the_committed_file_and_needs_no_token() {
    let (dir, s) = TestServer::start().await;
    // With a token in place the spec stays readable: it is the public docs file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["token", "create", "--scope", "read", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = s
        .client
        .get(s.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.bytes().await.unwrap();
    let committed = tokio::fs::read("docs/openapi.json").await.unwrap();
    assert!(
        served.as_ref() == committed.as_slice(),
        "the served spec differs from docs/openapi.json"
    );
    let v: Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    // Once the server has picked the token up, other routes need it and the spec still not.
    assert!(
        common::eventually(std::time::Duration::from_secs(10), || async {
            s.get_json("/api/v1/list").await.0 == 401
        })
        .await
    );
    assert_eq!(s.get_json("/api/v1/openapi.json").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_addressed_put_delete_move_copy() {
    let (_dir, s) = TestServer::start().await;
    let url = |p: &str| s.url(&format!("/api/v1/fs/{p}"));
    let body = data(5000, 7);

    // PUT creates (201), with the checksum verified; a wrong one is refused.
    let r = s
        .client
        .put(url("releases/app.tar.gz"))
        .header("x-checksum-sha256", sha256_hex(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let meta: Value = r.json().await.unwrap();
    assert_eq!(meta["path"], "releases/app.tar.gz");
    assert_eq!(meta["version"], 1);
    let r = s
        .client
        .put(url("releases/other"))
        .header("x-checksum-sha256", sha256_hex(b"x"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "checksum_mismatch"
    );
    assert_eq!(s.get_json("/api/v1/stat?path=releases/other").await.0, 404);

    // If-None-Match: * refuses to replace; If-Match with a stale tag too; the right one replaces.
    let put = |h: (&'static str, String), b: Vec<u8>| {
        s.client
            .put(url("releases/app.tar.gz"))
            .header(h.0, h.1)
            .body(b)
    };
    let r = put(("if-none-match", "*".into()), b"v2".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = put(
        ("if-match", format!("\"{}\"", sha256_hex(b"nope"))),
        b"v2".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 412);
    let r = put(
        (
            "if-match",
            format!("\"{}\"", meta["sha256"].as_str().unwrap()),
        ),
        b"v2".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let replaced: Value = r.json().await.unwrap();
    assert_eq!(replaced["id"], meta["id"]);
    assert_eq!(replaced["version"], 2);
    let (status, got) = s.get_bytes("/api/v1/fs/releases/app.tar.gz").await;
    assert_eq!((status, got), (200, b"v2".to_vec()));
    // A malformed If-Match is a client error, not a tag that matches nothing.
    let r = put(("if-match", "not a tag".into()), b"v3".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_header"
    );

    // Copy (201, new id) and move (200, same id) by path.
    let r = s
        .client
        .post(format!(
            "{}?op=copy&to={}",
            url("releases/app.tar.gz"),
            enc("backup/app")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let copy: Value = r.json().await.unwrap();
    assert_ne!(copy["id"], meta["id"]);
    let r = s
        .client
        .post(format!(
            "{}?op=move&to={}",
            url("releases/app.tar.gz"),
            enc("backup/app")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "the target exists");
    let r = s
        .client
        .post(format!(
            "{}?op=move&to={}&overwrite=true",
            url("releases/app.tar.gz"),
            enc("backup/app")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let moved: Value = r.json().await.unwrap();
    assert_eq!(moved["id"], meta["id"]);
    assert_eq!(moved["path"], "backup/app");
    let r = s.client.post(url("backup/app")).send().await.unwrap();
    assert_eq!(r.status(), 400, "op and to are required");

    // Delete by path: If-Match honoured, 204, then 404.
    let r = s
        .client
        .delete(url("backup/app"))
        .header("if-match", format!("\"{}\"", sha256_hex(b"nope")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = s.client.delete(url("backup/app")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = s.client.delete(url("backup/app")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
    let r = s.client.delete(url("a/b%5Cc")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}

/// The schemathesis run of `.ci/run`, from `cargo test` too when its virtualenv exists.
#[test]
fn schemathesis_passes_against_a_real_server() {
    let venv = std::env::var("VAULTFS_ST_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/vaultfs-venv-st",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    if !std::path::Path::new(&venv).join("bin/st").exists() {
        common::skipped(
            "schemathesis_passes_against_a_real_server",
            "run .ci/schemathesis.sh --install-only (PyPI)",
        );
        return;
    }
    let out = std::process::Command::new("bash")
        .arg(".ci/schemathesis.sh")
        .env("VAULTFS_BIN", env!("CARGO_BIN_EXE_vaultfs"))
        .env("VAULTFS_ST_VENV", &venv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = {
        let lines: Vec<&str> = stdout.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    };
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{tail}\n{stderr}"
    );
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.contains(" in ") && (l.contains("passed") || l.contains("took")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
