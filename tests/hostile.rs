//! Hostile input: paths on every route that takes one, malformed headers and bodies, abusive
//! WebSocket clients. Every answer is a 4xx (with a JSON error where VaultFS, not the HTTP
//! parser, answers), nothing is created, and no thread of the server panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{data, enc, TestServer};
use serde_json::{json, Value};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on any thread of this test process (the server runs in it).
fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The server's threads (runtime workers, blocking pool), not a test's assertions.
            let name = std::thread::current().name().unwrap_or("").to_string();
            if name.starts_with("tokio-runtime") || name.is_empty() {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Paths as the server sees them after the HTTP layer's own decoding. Each must be refused.
fn hostile_paths() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "/",
        "//x",
        "/etc/passwd",
        "..",
        "../x",
        "a/../../x",
        "a/..",
        ".",
        "./x",
        "a/./b",
        "a//b",
        "a/",
        "..\\x",
        "a\\b",
        "\\\\server\\share\\x",
        "C:\\Windows\\system32",
        "C:x",
        "c:",
        "z:/x",
        "\0",
        "a\0b",
        "%00",
        "a%00b",
        "%2e%2e",
        "%2e%2e/x",
        "%2e%2e%2fx",
        "%2E%2E%2Fx",
        "a/%2e%2e",
        "a%2f%2fb",
        "%2fetc",
        "%252e%252e%252fx",
        "%25252e%25252e/x",
        "%25%32%65%25%32%65/x",
        "a%5cb",
        "%5c",
        "..%5cx",
        "%c0%ae%c0%ae/x",
        "%c0%af",
        "%e0%80%ae%e0%80%ae/x",
        "%ff%fe",
        "\u{FF0E}\u{FF0E}\u{FF0F}x",
        "\u{FF0E}\u{FF0E}/x",
        "a\u{FF3C}b",
        "a/\u{FF0F}/b",
        "\u{2024}\u{2024}/x",
        "\u{FE52}\u{FE52}/x",
        "evil\u{202E}txt.exe",
        "\u{200E}x",
        "\u{200F}x",
        "\u{2066}x",
        "\u{FEFF}x",
        "x\u{FFFD}",
        "a\u{2028}b",
        "trailing./x",
        "trailing /x",
        "x.",
        "x ",
        "...",
        "a/ ./b",
        "\n",
        "a\rb",
        "a\tb",
        "\u{7f}",
        "\u{85}x",
        "\u{1b}[31mred",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("x".repeat(256)); // one segment over 255 bytes
    v.push(format!("{}y", "abcdefgh/".repeat(456))); // over 4 KiB
    v.push("é".repeat(2100)); // 4,200 bytes of two-byte characters
    v
}

/// Every byte percent-encoded: what a careful client puts in a URL path.
fn enc_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn is_refusal(status: u16, body: &Value) -> bool {
    status == 400
        && ["invalid_path", "invalid_query", "invalid_multipart"]
            .contains(&body["error"]["code"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_on_every_route_that_takes_one() {
    // Own process: the panic hook counts panics on every runtime thread of the process.
    if !common::isolated(
        module_path!(),
        "hostile_paths_on_every_route_that_takes_one",
    )
    .await
    {
        return;
    }
    count_panics();
    let (_dir, s) = TestServer::start().await;
    let legit = s.put("legit/file.txt", b"ok").await;
    let id = legit["id"].as_str().unwrap().to_string();
    let cases = hostile_paths();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    // Every route whose input names a path, and how it takes it.
    let routes = [
        "upload ?path",
        "upload multipart filename",
        "upload multipart ?path base + filename",
        "GET /fs/{path}",
        "HEAD /fs/{path}",
        "GET /shared/{path}",
        "GET /stat ?path",
        "move {to}",
        "copy {to}",
        "share {path}",
        "admin token {prefix}",
    ];
    let mut checked = 0;
    for raw in &cases {
        for route in routes {
            let (status, body) = match route {
                "upload ?path" => {
                    let r = s
                        .client
                        .post(s.url(&format!("/api/v1/files/upload?path={}", enc_all(raw))))
                        .body("x")
                        .send()
                        .await
                        .unwrap();
                    (
                        r.status().as_u16(),
                        r.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
                "upload multipart filename" | "upload multipart ?path base + filename" => {
                    let (uri, name) = if route.contains("base") {
                        ("/api/v1/files/upload?path=legit".to_string(), raw.clone())
                    } else {
                        ("/api/v1/files/upload".to_string(), raw.clone())
                    };
                    let drive = name.as_bytes().get(1) == Some(&b':');
                    if name.is_empty()
                        || name.contains(['\r', '\n', '"', '\0'])
                        || (route.contains("base") && drive)
                    {
                        // Not expressible in a Content-Disposition filename (the raw-body and
                        // URL routes cover these), or, under a base directory, a drive letter
                        // that is no longer the first segment (`legit/C:x` is a fine name).
                        continue;
                    }
                    let form = reqwest::multipart::Form::new().part(
                        "f",
                        reqwest::multipart::Part::bytes(b"x".to_vec()).file_name(name),
                    );
                    let r = s
                        .client
                        .post(s.url(&uri))
                        .multipart(form)
                        .send()
                        .await
                        .unwrap();
                    (
                        r.status().as_u16(),
                        r.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
                "GET /fs/{path}" | "HEAD /fs/{path}" | "GET /shared/{path}" => {
                    // Raw: HTTP libraries normalize `..` and `%2e%2e` away before sending.
                    let method = if route.starts_with("HEAD") {
                        "HEAD"
                    } else {
                        "GET"
                    };
                    let base = if route.contains("shared") {
                        "/api/v1/shared/"
                    } else {
                        "/api/v1/fs/"
                    };
                    let q = if route.contains("shared") {
                        "?expires=1&sig=00"
                    } else {
                        ""
                    };
                    let req = format!(
                        "{method} {base}{}{q} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                        enc_all(raw)
                    );
                    let answer = s.raw(req.as_bytes(), Duration::from_secs(5)).await;
                    let status: u16 = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                    let body = answer
                        .split("\r\n\r\n")
                        .nth(1)
                        .and_then(|b| serde_json::from_str(b).ok())
                        .unwrap_or(Value::Null);
                    // An empty path does not match the route at all.
                    if raw.is_empty() {
                        assert!(status == 404 || status == 400, "{route} {raw:?}: {answer}");
                        checked += 1;
                        continue;
                    }
                    if method == "HEAD" {
                        assert_eq!(status, 400, "{route} {raw:?}: {answer}");
                        checked += 1;
                        continue;
                    }
                    (status, body)
                }
                "GET /stat ?path" => {
                    let (st, b) = s
                        .get_json(&format!("/api/v1/stat?path={}", enc_all(raw)))
                        .await;
                    (st, b)
                }
                "move {to}" | "copy {to}" => {
                    let op = if route.starts_with("move") {
                        "move"
                    } else {
                        "copy"
                    };
                    let r = s
                        .client
                        .post(s.url(&format!("/api/v1/files/{id}/{op}")))
                        .json(&json!({ "to": raw }))
                        .send()
                        .await
                        .unwrap();
                    (
                        r.status().as_u16(),
                        r.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
                "share {path}" => {
                    let r = s
                        .client
                        .post(s.url("/api/v1/share"))
                        .json(&json!({ "path": raw }))
                        .send()
                        .await
                        .unwrap();
                    (
                        r.status().as_u16(),
                        r.json::<Value>().await.unwrap_or(Value::Null),
                    )
                }
                "admin token {prefix}" => {
                    if raw.is_empty() || raw == "/" || raw == "a/" {
                        continue; // "everything", and "a" with its optional trailing slash
                    }
                    let r = s
                        .client
                        .post(s.url("/api/v1/admin/tokens"))
                        .json(&json!({ "scopes": "read", "prefix": raw }))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    assert_eq!(status, 400, "{route} {raw:?}: {body}");
                    assert_eq!(body["error"]["code"], "invalid_request", "{route} {raw:?}");
                    checked += 1;
                    continue;
                }
                _ => unreachable!(),
            };
            assert!(
                is_refusal(status, &body),
                "{route} {raw:?}: {status} {body}"
            );
            checked += 1;
        }
    }
    eprintln!("{checked} hostile path requests refused");
    assert!(checked >= 600);
    // Nothing was created, moved or tokenized by any of it; the server is healthy.
    let (_, page) = s.get_json("/api/v1/list").await;
    let paths: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["legit/file.txt"]);
    let (_, tokens) = s.get_json("/api/v1/admin/tokens").await;
    assert_eq!(tokens["tokens"], json!([]));
    assert_eq!(s.get_json("/healthz").await.0, 200);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a server thread panicked");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_prefixes_are_refused_or_harmless() {
    // Own process: the panic hook counts panics on every runtime thread of the process.
    if !common::isolated(module_path!(), "hostile_prefixes_are_refused_or_harmless").await {
        return;
    }
    count_panics();
    let (_dir, s) = TestServer::start().await;
    s.put("a/b", b"x").await;
    for raw in hostile_paths() {
        for route in ["/api/v1/list", "/api/v1/events"] {
            let (status, body) = s
                .get_json(&format!("{route}?prefix={}", enc_all(&raw)))
                .await;
            // A prefix is only compared with stored, validated paths: refusing it or
            // answering with what matches are both safe; a 5xx or a leak is not.
            assert!(
                status == 400 || status == 200,
                "{route} {raw:?}: {status} {body}"
            );
            if status == 200
                && route == "/api/v1/list"
                && !raw.is_empty()
                && !"a/b".starts_with(&raw)
            {
                assert_eq!(body["entries"], json!([]), "{route} {raw:?}");
            }
        }
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    s.stop().await;
}

/// Raw requests the HTTP parser or VaultFS must refuse with a 4xx, leaving nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_and_bodies_get_4xx() {
    // Own process: the panic hook counts panics on every runtime thread of the process.
    if !common::isolated(module_path!(), "malformed_headers_and_bodies_get_4xx").await {
        return;
    }
    count_panics();
    let dir = tempfile::tempdir().unwrap();
    let config = vaultfs::config::Config {
        body_idle_timeout: Duration::from_secs(2),
        ..vaultfs::config::Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let f = s.put("f.bin", &data(1000, 1)).await;
    let id = f["id"].as_str().unwrap().to_string();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    // hyper stops reading a head at its buffer limit (64 KiB, met within one read: ~128 KiB).
    let big_header = "x".repeat(256 * 1024);
    let many_headers: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let ranges: String = (0..2000)
        .map(|i| format!("{i}-{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let long_name = "n".repeat(64 * 1024);
    let post = |uri: &str, headers: &str, body: &str| {
        format!(
            "POST {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let multipart = |parts: &str| {
        post(
            "/api/v1/files/upload",
            "Content-Type: multipart/form-data; boundary=B\r\n",
            parts,
        )
    };
    let many_parts: String = (0..10_001)
        .map(|_| "--B\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n")
        .collect::<String>()
        + "--B--\r\n";
    let cases: Vec<(&str, String, &[u16])> = vec![
        (
            "oversized header",
            format!("GET /api/v1/list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Big: {big_header}\r\n\r\n"),
            &[431],
        ),
        (
            "500 headers",
            format!("GET /api/v1/list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{many_headers}\r\n"),
            &[431],
        ),
        ("garbage request line", "GARBAGE\r\n\r\n".to_string(), &[400]),
        (
            "Content-Length and chunked",
            "POST /api/v1/files/upload?path=smuggle HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string(),
            // RFC 9112 6.3: chunked wins and the connection is closed after the answer
            // (checked below), so nothing can be smuggled behind it.
            &[400, 201],
        ),
        (
            "two Content-Lengths",
            "POST /api/v1/files/upload?path=smuggle HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_string(),
            &[400],
        ),
        (
            "bad chunk size",
            "POST /api/v1/files/upload?path=badchunk HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_string(),
            &[400],
        ),
        (
            "Content-Length longer than the body",
            "POST /api/v1/files/upload?path=short HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 100000\r\n\r\nonly this".to_string(),
            &[400, 408],
        ),
        (
            "chunked body that never ends",
            "POST /api/v1/files/upload?path=forever HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_string(),
            &[400, 408],
        ),
        ("deeply nested JSON", post(&format!("/api/v1/files/{id}/move"), "Content-Type: application/json\r\n", &format!("{{\"to\": {deep}}}")), &[400]),
        ("JSON of the wrong type", post(&format!("/api/v1/files/{id}/move"), "Content-Type: application/json\r\n", "{\"to\": 42}"), &[400]),
        ("JSON array", post(&format!("/api/v1/files/{id}/copy"), "Content-Type: application/json\r\n", "[1,2]"), &[400]),
        ("truncated JSON", post("/api/v1/share", "Content-Type: application/json\r\n", "{\"path\": \"f.b"), &[400]),
        ("JSON without content type", post(&format!("/api/v1/files/{id}/move"), "", "{\"to\": \"g\"}"), &[400, 415]),
        ("unknown JSON field", post(&format!("/api/v1/files/{id}/move"), "Content-Type: application/json\r\n", "{\"to\": \"g\", \"as_root\": true}"), &[400]),
        ("JSON body over 64 KiB", post(&format!("/api/v1/files/{id}/move"), "Content-Type: application/json\r\n", &format!("{{\"to\": \"{}\"}}", "a".repeat(70_000))), &[400, 413]),
        ("multipart with 10,001 parts", multipart(&many_parts), &[400]),
        (
            "multipart part header of 64 KiB",
            multipart(&format!("--B\r\nContent-Disposition: form-data; name=\"{long_name}\"; filename=\"a\"\r\n\r\nx\r\n--B--\r\n")),
            &[400],
        ),
        (
            "multipart filename of 64 KiB",
            multipart(&format!("--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"{}\"\r\n\r\nx\r\n--B--\r\n", "n".repeat(15_000))),
            &[400],
        ),
        ("multipart without a boundary", post("/api/v1/files/upload", "Content-Type: multipart/form-data\r\n", "x"), &[400]),
        ("multipart cut short", multipart("--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"cut\"\r\n\r\nxx"), &[400]),
        ("multipart with no file part", multipart("--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n--B--\r\n"), &[400]),
        ("bad If-Match", format!("DELETE /api/v1/files/{id} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIf-Match: \u{e9}\r\n\r\n"), &[400, 412]),
        ("bad digest header", post("/api/v1/files/upload?path=dig", "Content-Digest: sha-256=nonsense\r\n", "x"), &[400]),
        ("wrong declared checksum", post("/api/v1/files/upload?path=dig2", &format!("X-Checksum-Sha256: {}\r\n", "0".repeat(64)), "x"), &[400, 422]),
        ("bad id", format!("GET /api/v1/files/{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", "%00".repeat(40)), &[404, 400]),
        ("negative limit", "GET /api/v1/list?limit=-1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(), &[400]),
        ("huge limit", "GET /api/v1/events?limit=99999999999999999999999 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(), &[400]),
        ("bad cursor", "GET /api/v1/list?cursor=%00%ff HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(), &[400]),
        ("since in the future", "GET /api/v1/events?since=999999999 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(), &[410]),
        ("unknown method", "BREW /api/v1/list HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(), &[405]),
    ];
    let range_cases = [
        "bytes=abc",
        "bytes=5-1",
        "bytes=-",
        "bytes=--1",
        "bytes=99999999999999999999999-",
        "items=0-1",
        "bytes=0-0,",
        &format!("bytes={ranges}"),
    ];
    for (what, req, allowed) in &cases {
        let answer = s.raw(req.as_bytes(), Duration::from_secs(8)).await;
        let status: u16 = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!(
            allowed.contains(&status),
            "{what}: {}",
            &answer[..answer.len().min(400)]
        );
        if *what == "Content-Length and chunked" {
            assert!(answer.contains("connection: close"), "{answer}");
            // Delete what it made: the listing below expects only the legit file.
            let (_, m) = s.get_json("/api/v1/stat?path=smuggle").await;
            if let Some(sid) = m["id"].as_str() {
                s.client
                    .delete(s.url(&format!("/api/v1/files/{sid}")))
                    .send()
                    .await
                    .unwrap();
            }
        }
        // VaultFS's own answers carry a JSON error; the HTTP parser's (431, garbage, framing
        // errors) are bare.
        if status >= 400
            && ![431].contains(&status)
            && !answer.is_empty()
            && status != 405
            && answer.contains("content-type: application/json")
        {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            assert!(v["error"]["code"].is_string(), "{what}: {body}");
        }
    }
    for range in range_cases {
        let r = s
            .client
            .get(s.url(&format!("/api/v1/files/{id}")))
            .header("range", range)
            .send()
            .await
            .unwrap();
        // RFC 9110: an unparseable Range is ignored (200); an unsatisfiable one is 416.
        assert!(
            [200, 206, 416].contains(&r.status().as_u16()),
            "{range}: {}",
            r.status()
        );
        let n = r.bytes().await.unwrap().len();
        assert!(n <= 1000, "{range}: {n} bytes (no range amplification)");
    }
    // Nothing partial or smuggled was stored; no temp file left; healthy; no panic.
    let (_, page) = s.get_json("/api/v1/list").await;
    let paths: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["f.bin"]);
    let no_temp = common::eventually(Duration::from_secs(5), || async {
        s.temp_count().await == 0
    })
    .await;
    assert!(no_temp, "temp files removed");
    assert_eq!(s.get_json("/healthz").await.0, 200);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_websocket_clients_are_closed_with_the_right_code() {
    // Own process: the panic hook counts panics on every runtime thread of the process.
    if !common::isolated(
        module_path!(),
        "abusive_websocket_clients_are_closed_with_the_right_code",
    )
    .await
    {
        return;
    }
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::Message;
    count_panics();
    let (_dir, s) = TestServer::start().await;
    let url = format!("ws://{}/api/v1/sync", s.addr);
    async fn close_code(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code.into()),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return None,
            }
        }
    }
    // Over 64 KiB: 1009.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let _ = ws.send(Message::Binary(vec![0u8; 70_000].into())).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    // Text that is not UTF-8: 1007 (sent as a raw frame; the library will not make one).
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        is_final: true,
        ..FrameHeader::default()
    };
    let _ = ws
        .send(Message::Frame(Frame::from_payload(
            header,
            vec![0xff, 0xfe, 0xfd].into(),
        )))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(1007));
    // A flood of small messages: 1008, quickly, and others are served meanwhile.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let flood = tokio::spawn(async move {
        for i in 0..10_000 {
            if ws
                .send(Message::Text(format!("spam {i}").into()))
                .await
                .is_err()
            {
                break;
            }
        }
        close_code(&mut ws).await
    });
    let t0 = std::time::Instant::now();
    assert_eq!(s.get_json("/healthz").await.0, 200);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(flood.await.unwrap(), Some(1008));
    // A well-behaved subscriber is unaffected and still gets events.
    let (mut ok, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello = ok.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("hello"));
    s.put("after", b"x").await;
    let ev = tokio::time::timeout(Duration::from_secs(5), ok.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ev.to_text().unwrap().contains("\"after\""));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_merely_unusual_still_work() {
    // The other side of the table: strictness must not refuse real artifact names.
    let (_dir, s) = TestServer::start().await;
    for p in [
        "build-2026-11-28T10:00:00Z/app.tar.gz",
        "a/C:x",
        "100%/done",
        "ünïcode/ファイル.txt",
        "with space/inside name.txt",
        ".github/workflows/ci.yml",
        "a..b/c...d",
        "emoji/🚀.bin",
    ] {
        let m = s.put(p, p.as_bytes()).await;
        assert_eq!(m["path"], p);
        let (status, got) = s.get_bytes(&format!("/api/v1/fs/{}", enc(p))).await;
        assert_eq!((status, got), (200, p.as_bytes().to_vec()), "{p}");
    }
    s.stop().await;
}
