//! The web file browser (issue 22): the page's headers and caching, the session endpoints
//! (cookie flags, CSRF, sign-out, revocation) over plain HTTP, and the browser suite
//! (`tests/webui/suite.mjs`: Debian's chromium driven headless by playwright-core) against a
//! real server. The browser suite prints one SKIPPED line when chromium or playwright-core is
//! missing: `bash .ci/webui.sh` installs both.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

/// Makes a token with the CLI on a running server's data directory.
async fn cli_token(dir: &std::path::Path, scopes: &str, prefix: &str) -> String {
    let mut args = vec!["token", "create", "--scope", scopes, "--label", "webui"];
    if !prefix.is_empty() {
        args.extend(["--prefix", prefix]);
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(&args)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "off")
        .env_remove("VAULTFS_TOKEN")
        .env_remove("VAULTFS_URL")
        .env_remove("VAULTFS_SECRET_KEY")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn token_id(token: &str) -> &str {
    &token[4..16]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_embedded_cacheable_and_locked_down() {
    let (_dir, s) = TestServer::start().await;
    let r = s.client.get(s.url("/?prefix=web/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let etag = h["etag"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(
        body.contains("/ui/app.js") && !body.contains("<script>"),
        "no inline script"
    );
    let r = s
        .client
        .get(s.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);

    let mut total = body.len();
    for asset in [
        "app.js",
        "api.js",
        "dom.js",
        "uploads.js",
        "live.js",
        "preview.js",
        "style.css",
        "icon.svg",
    ] {
        let r = s
            .client
            .get(s.url(&format!("/ui/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers().contains_key("etag"), "{asset}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let expected = match asset.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            _ => "image/svg+xml",
        };
        assert!(ct.starts_with(expected), "{asset}: {ct}");
        total += r.bytes().await.unwrap().len();
    }
    assert!(total < 100 * 1024, "the page and its assets: {total} bytes");
    let r = s.client.get(s.url("/ui/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");

    // Open loopback server: no sign-in needed, and sign-in says so.
    let v: Value = s
        .client
        .get(s.url("/api/v1/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["auth_required"], false);
    assert_eq!(v["signed_in"], true);
    let r = s
        .client
        .post(s.url("/api/v1/session"))
        .json(&json!({"token": "vfs_x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "sign_in_not_needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_carry_the_token_and_die_with_it() {
    let (dir, s) = TestServer::start().await;
    let admin = cli_token(dir.path(), "admin", "").await;
    let team = cli_token(dir.path(), "read,write", "team/").await;
    let base = s.base.clone();
    let c = &s.client;

    // A wrong token is refused; no cookie.
    let r = c
        .post(s.url("/api/v1/session"))
        .json(&json!({"token": format!("{}x", &team[..team.len() - 1])}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // A foreign Origin may not sign in (login CSRF).
    let r = c
        .post(s.url("/api/v1/session"))
        .header("origin", "http://evil.example")
        .json(&json!({ "token": team }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = c
        .post(s.url("/api/v1/session"))
        .header("origin", &base)
        .json(&json!({ "token": team }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"));
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(&team), "the cookie is not the token");
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["prefix"], "team/");
    assert_eq!(view["scopes"], "read,write");
    let csrf = view["csrf_token"].as_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();

    // Reads through the cookie carry the token's prefix.
    let get = |path: &str| c.get(s.url(path)).header("cookie", &cookie).send();
    assert_eq!(
        get("/api/v1/list?prefix=team/").await.unwrap().status(),
        200
    );
    assert_eq!(
        get("/api/v1/list?prefix=other/").await.unwrap().status(),
        403
    );
    let v: Value = get("/api/v1/session").await.unwrap().json().await.unwrap();
    assert_eq!(v["signed_in"], true);
    assert_eq!(v["csrf_token"], csrf.as_str());

    // Writes need the CSRF header and an Origin of this server.
    let put = |headers: Vec<(&'static str, String)>| {
        let mut req = c
            .put(s.url("/api/v1/fs/team/a.txt"))
            .header("cookie", &cookie)
            .body("data");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    for (what, headers) in [
        ("no CSRF header", vec![("origin", base.clone())]),
        ("no Origin", vec![("x-csrf-token", csrf.clone())]),
        (
            "wrong CSRF",
            vec![("origin", base.clone()), ("x-csrf-token", "0".repeat(64))],
        ),
        (
            "foreign Origin",
            vec![
                ("origin", "http://evil.example".to_string()),
                ("x-csrf-token", csrf.clone()),
            ],
        ),
    ] {
        let r = put(headers).await.unwrap();
        assert_eq!(r.status(), 403, "{what}");
        let err: Value = r.json().await.unwrap();
        let code = err["error"]["code"].as_str().unwrap();
        assert!(
            code == "csrf_failed" || code == "forbidden",
            "{what}: {code}"
        );
    }
    let r = c
        .get(s.url("/api/v1/stat?path=team/a.txt"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing was written");
    let r = put(vec![
        ("origin", base.clone()),
        ("x-csrf-token", csrf.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    // The token's prefix holds for the session's writes too.
    let r = c
        .put(s.url("/api/v1/fs/other/a.txt"))
        .header("cookie", &cookie)
        .header("origin", &base)
        .header("x-csrf-token", &csrf)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A made-up cookie is not a session.
    let r = c
        .get(s.url("/api/v1/list?prefix=team/"))
        .header("cookie", "vaultfs_session=AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_session");

    // Sign-out needs the CSRF token, then ends the session on the server.
    let r = c
        .delete(s.url("/api/v1/session"))
        .header("cookie", &cookie)
        .header("origin", &base)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .delete(s.url("/api/v1/session"))
        .header("cookie", &cookie)
        .header("origin", &base)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        get("/api/v1/list?prefix=team/").await.unwrap().status(),
        401
    );

    // Revoking the token ends its sessions at once.
    let r = c
        .post(s.url("/api/v1/session"))
        .json(&json!({ "token": team }))
        .send()
        .await
        .unwrap();
    let cookie2 = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let list = || {
        c.get(s.url("/api/v1/list?prefix=team/"))
            .header("cookie", &cookie2)
            .send()
    };
    assert_eq!(list().await.unwrap().status(), 200);
    let r = c
        .delete(s.url(&format!("/api/v1/admin/tokens/{}", token_id(&team))))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(list().await.unwrap().status(), 401);
    let v: Value = c
        .get(s.url("/api/v1/session"))
        .header("cookie", &cookie2)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["signed_in"], false);

    // An expiring token's session ends with it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args([
            "token",
            "create",
            "--scope",
            "read",
            "--expires",
            "5s",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "off")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = std::time::Instant::now();
    let short = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Past the rate limit of reloads on unknown ids: the server has read the new token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .post(s.url("/api/v1/session"))
        .json(&json!({ "token": short }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie3 = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let list3 = || {
        c.get(s.url("/api/v1/list"))
            .header("cookie", &cookie3)
            .send()
    };
    assert_eq!(list3().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(5300).saturating_sub(made.elapsed())).await;
    assert_eq!(list3().await.unwrap().status(), 401);
}

/// Signs in at `s` with `token` (from the server's own origin); returns the cookie pair
/// (`vaultfs_session=...`) and the session's CSRF token.
async fn sign_in(s: &TestServer, token: &str) -> (String, String) {
    let r = s
        .client
        .post(s.url("/api/v1/session"))
        .header("origin", &s.base)
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let view: Value = r.json().await.unwrap();
    (cookie, view["csrf_token"].as_str().unwrap().to_string())
}

/// The status of `GET /api/v1/list?prefix=team/` through a session cookie.
async fn list_status(s: &TestServer, cookie: &str) -> u16 {
    s.client
        .get(s.url("/api/v1/list?prefix=team/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The status of a cookie-authenticated `PUT /api/v1/fs/<path>` with the CSRF token.
async fn put_status(s: &TestServer, cookie: &str, csrf: &str, path: &str) -> u16 {
    s.client
        .put(s.url(&format!("/api/v1/fs/{path}")))
        .header("cookie", cookie)
        .header("origin", &s.base)
        .header("x-csrf-token", csrf)
        .body("data")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Signs out at `s`; the status.
async fn sign_out(s: &TestServer, cookie: &str, csrf: &str) -> u16 {
    s.client
        .delete(s.url("/api/v1/session"))
        .header("cookie", cookie)
        .header("origin", &s.base)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn sha256_hex(text: &str) -> String {
    common::sha256_hex(text.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_restart_and_only_its_hash_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(vaultfs::config::Config::for_data_dir(dir.path())).await;
    let team = cli_token(dir.path(), "read,write", "team/").await;
    // The server has read the token made by another process.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (cookie, csrf) = sign_in(&s, &team).await;
    assert_eq!(list_status(&s, &cookie).await, 200);
    s.stop().await;

    // The database holds the session's hash and CSRF token, never the cookie value. Read as
    // bytes by another process (opening meta.db here would touch this process's locks).
    let value = cookie.strip_prefix("vaultfs_session=").unwrap();
    let db = tokio::process::Command::new("cat")
        .arg(dir.path().join("meta.db"))
        .arg(dir.path().join("meta.db-wal"))
        .output()
        .await
        .unwrap()
        .stdout;
    assert!(db.len() > 4096);
    assert!(
        !db.windows(value.len()).any(|w| w == value.as_bytes()),
        "the cookie value is not stored"
    );
    let hash = sha256_hex(value);
    assert!(
        db.windows(hash.len()).any(|w| w == hash.as_bytes()),
        "the row is keyed by the cookie's SHA-256"
    );

    // The same data directory again: the browser is still signed in, writes included.
    let s = TestServer::start_with(vaultfs::config::Config::for_data_dir(dir.path())).await;
    assert_eq!(list_status(&s, &cookie).await, 200);
    let v: Value = s
        .client
        .get(s.url("/api/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["signed_in"], true);
    assert_eq!(v["prefix"], "team/");
    assert_eq!(v["csrf_token"], csrf.as_str());
    assert_eq!(
        put_status(&s, &cookie, &csrf, "team/after-restart.txt").await,
        201
    );
    assert_eq!(sign_out(&s, &cookie, &csrf).await, 204);
    assert_eq!(list_status(&s, &cookie).await, 401);
    s.stop().await;
    // Signed out for good: a restart does not bring it back.
    let s = TestServer::start_with(vaultfs::config::Config::for_data_dir(dir.path())).await;
    assert_eq!(list_status(&s, &cookie).await, 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_shared_by_replicas_on_postgres() {
    use sqlx::Connection;
    const TEST: &str = "sessions_are_shared_by_replicas_on_postgres";
    let Some(metadata_url) = common::test_postgres_url(TEST).await else {
        return;
    };
    // One bucket for both when there is one; else each replica keeps its few bytes on its
    // own disk (these checks read the shared metadata only).
    let blob_store = std::env::var("VAULTFS_TEST_S3_URL")
        .ok()
        .and_then(|_| common::test_s3_url(TEST));
    let admin = vaultfs::services::auth::Auth::generate().unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &std::path::Path| vaultfs::config::Config {
        metadata_url: Some(metadata_url.clone()),
        blob_store: blob_store.clone(),
        bootstrap_token: Some(admin.clone()),
        ..vaultfs::config::Config::for_data_dir(dir)
    };
    let a = TestServer::start_with(config(da.path())).await;
    let b = TestServer::start_with(config(db.path())).await;
    let make = |scopes: &str| {
        a.client
            .post(a.url("/api/v1/admin/tokens"))
            .bearer_auth(&admin)
            .json(&json!({"scopes": scopes, "prefix": "team/", "label": "web"}))
            .send()
    };
    let r = make("read,write").await.unwrap();
    assert_eq!(r.status(), 201);
    let team = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Made on A, known on B: reads, and writes with the same CSRF token.
    let (cookie, csrf) = sign_in(&a, &team).await;
    assert_eq!(list_status(&b, &cookie).await, 200);
    let v: Value = b
        .client
        .get(b.url("/api/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["signed_in"], true);
    assert_eq!(v["prefix"], "team/");
    assert_eq!(v["csrf_token"], csrf.as_str());
    assert_eq!(put_status(&b, &cookie, &csrf, "team/via-b.txt").await, 201);
    assert_eq!(
        put_status(&b, &cookie, &"0".repeat(64), "team/no.txt").await,
        403
    );

    // The row: the cookie's hash, never its value.
    let value = cookie.strip_prefix("vaultfs_session=").unwrap();
    let mut pg = sqlx::PgConnection::connect(&metadata_url).await.unwrap();
    let rows: Vec<(String, String, String, i64, i64)> =
        sqlx::query_as("SELECT id_hash, token_id, csrf, created_at, last_seen FROM web_sessions")
            .fetch_all(&mut pg)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    let (id_hash, stored_token, stored_csrf, _, _) = &rows[0];
    assert_eq!(*id_hash, sha256_hex(value));
    assert_eq!(stored_token, token_id(&team));
    assert_eq!(*stored_csrf, csrf);
    let whole = format!("{:?}", rows[0]);
    assert!(!whole.contains(value), "the cookie value is not stored");

    // Signed out on B: over on A too, at once.
    assert_eq!(sign_out(&b, &cookie, &csrf).await, 204);
    assert_eq!(list_status(&a, &cookie).await, 401);
    assert_eq!(list_status(&b, &cookie).await, 401);

    // Revoked on A: B refuses the token's session at once (the lookup joins the token's row).
    let (cookie2, _) = sign_in(&b, &team).await;
    assert_eq!(list_status(&a, &cookie2).await, 200);
    let r = a
        .client
        .delete(a.url(&format!("/api/v1/admin/tokens/{}", token_id(&team))))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(list_status(&b, &cookie2).await, 401);
    assert_eq!(list_status(&a, &cookie2).await, 401);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM web_sessions")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(left, 0, "the refused session's row is deleted");
    pg.close().await.unwrap();
    a.stop().await;
    b.stop().await;
}

/// The browser, from `VAULTFS_CHROMIUM` or Debian's path.
fn chromium() -> Option<PathBuf> {
    let p = std::env::var("VAULTFS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/chromium"));
    p.exists().then_some(p)
}

/// The directory whose node_modules holds playwright-core (`.ci/webui.sh` installs it).
fn playwright_dir() -> Option<PathBuf> {
    let p = std::env::var("VAULTFS_PLAYWRIGHT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vaultfs-node-web")
        });
    p.join("node_modules/playwright-core/package.json")
        .exists()
        .then_some(p)
}

/// `GET /api/v1/list` with `sort`, `order` and `filter` (what the page's column headers and
/// filter box send): server-side order across pages, the cursor tied to its sort, and the
/// plain listing unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_sorts_and_filters_one_level_over_http() {
    let (_dir, s) = TestServer::start().await;
    for (name, len) in [
        ("b.txt", 30),
        ("a.log", 10),
        ("c.txt", 20),
        ("A_1", 5),
        ("d/x", 1),
    ] {
        s.put(&format!("q/{name}"), &vec![b'x'; len]).await;
    }
    let paths = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect()
    };
    // Pages of two, biggest first, the folder before the files.
    let mut seen = Vec::new();
    let mut folders = Vec::new();
    let mut url = "/api/v1/list?prefix=q/&delimiter=/&sort=size&order=desc&limit=2".to_string();
    let mut last_cursor = String::new();
    loop {
        let (status, page) = s.get_json(&url).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(paths(&page));
        folders.extend(page["prefixes"].as_array().unwrap().iter().cloned());
        let Some(c) = page["next_cursor"].as_str() else {
            break;
        };
        last_cursor = c.to_string();
        url = format!("/api/v1/list?prefix=q/&delimiter=/&sort=size&order=desc&limit=2&cursor={c}");
    }
    assert_eq!(folders, [json!("q/d/")]);
    assert_eq!(seen, ["q/b.txt", "q/c.txt", "q/a.log", "q/A_1"]);
    // A cursor answers only the sort it came from, and the plain listing's only the plain.
    for other in [
        "sort=size",
        "sort=name&order=desc",
        "sort=modified&order=desc",
        "",
    ] {
        let (status, body) = s
            .get_json(&format!(
                "/api/v1/list?prefix=q/&delimiter=/&{other}&cursor={last_cursor}"
            ))
            .await;
        assert_eq!(status, 400, "{other}: {body}");
        assert_eq!(body["error"]["code"], "cursor_sort_mismatch", "{other}");
    }
    let (_, plain) = s
        .get_json("/api/v1/list?prefix=q/&delimiter=/&limit=1")
        .await;
    let plain_cursor = plain["next_cursor"].as_str().unwrap();
    let (status, body) = s
        .get_json(&format!(
            "/api/v1/list?prefix=q/&delimiter=/&sort=version&cursor={plain_cursor}"
        ))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("cursor_sort_mismatch"))
    );
    // The default is the plain listing, byte for byte.
    let (_, default) = s.get_json("/api/v1/list?prefix=q/&delimiter=/").await;
    let (_, named) = s
        .get_json("/api/v1/list?prefix=q/&delimiter=/&sort=name&order=asc")
        .await;
    assert_eq!(default, named);
    assert_eq!(paths(&default), ["q/A_1", "q/a.log", "q/b.txt", "q/c.txt"]);
    // A substring filter, case-insensitive, '_' taken literally.
    let (_, txt) = s
        .get_json("/api/v1/list?prefix=q/&delimiter=/&filter=TXT&sort=name&order=desc")
        .await;
    assert_eq!(paths(&txt), ["q/c.txt", "q/b.txt"]);
    let (_, under) = s
        .get_json("/api/v1/list?prefix=q/&delimiter=/&filter=_")
        .await;
    assert_eq!(paths(&under), ["q/A_1"]);
    assert_eq!(under["prefixes"], json!([]));
    let (_, folder) = s
        .get_json("/api/v1/list?prefix=q/&delimiter=/&filter=D")
        .await;
    assert_eq!(folder["prefixes"], json!(["q/d/"]));
    // Without a delimiter: every file below the prefix, the filter anywhere in the path.
    let (_, all) = s
        .get_json("/api/v1/list?prefix=q/&sort=size&order=desc")
        .await;
    assert_eq!(
        paths(&all),
        ["q/b.txt", "q/c.txt", "q/a.log", "q/A_1", "q/d/x"]
    );
    let (_, d) = s.get_json("/api/v1/list?prefix=q/&filter=D/").await;
    assert_eq!(paths(&d), ["q/d/x"]);
    for bad in ["delimiter=/&sort=colour", "order=up", "sort=Size"] {
        let (status, body) = s.get_json(&format!("/api/v1/list?prefix=q/&{bad}")).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_query")),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_suite_passes_in_headless_chromium() {
    let (Some(browser), Some(pw)) = (chromium(), playwright_dir()) else {
        common::skipped(
            "webui::the_browser_suite_passes_in_headless_chromium",
            "chromium or playwright-core missing: run bash .ci/webui.sh",
        );
        return;
    };
    // With a trash and old versions (the suite restores from both).
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(vaultfs::config::Config {
        trash_retention: Some(Duration::from_secs(3600)),
        versions_keep: vaultfs::services::metadata::VersionsKeep::Newest(10),
        ..vaultfs::config::Config::for_data_dir(dir.path())
    })
    .await;
    let admin = cli_token(dir.path(), "admin", "").await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let artifacts = target.join("webui");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root.join("tests/webui/suite.mjs"))
        .env("VAULTFS_URL", &s.base)
        .env("VAULTFS_ADMIN_TOKEN", &admin)
        .env("VAULTFS_CHROMIUM", &browser)
        .env("VAULTFS_PLAYWRIGHT", &pw)
        .env("VAULTFS_ARTIFACTS", &artifacts)
        .kill_on_drop(true);
    // `VAULTFS_UPDATE_SCREENSHOT=1` refreshes the README's screenshot from this run.
    if std::env::var("VAULTFS_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        cmd.env("VAULTFS_DOCS_SCREENSHOT", root.join("docs/webui.png"));
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the browser suite finished within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("WEBUI OK"),
        "browser suite failed:\n{stdout}\n{stderr}"
    );
    for shot in ["desktop.png", "phone.png"] {
        let len = tokio::fs::metadata(artifacts.join(shot))
            .await
            .map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot}: {len} bytes");
    }
}
