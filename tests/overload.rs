//! Admission control: uploads beyond the limit wait (bounded) and then get 503 `overloaded`
//! with Retry-After; health stays fast; the slot frees when the holder goes away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{eventually, TestServer};
use tokio::io::AsyncWriteExt;
use vaultfs::config::Config;

#[tokio::test]
async fn uploads_beyond_the_limit_get_503_and_health_stays_fast() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_concurrent_uploads: 1,
        upload_queue_timeout: Duration::from_millis(300),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;

    // Holds the only slot: headers and part of the body, then silence.
    let mut holder = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    holder
        .write_all(b"POST /api/v1/files/upload?path=slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\npartial")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 1
        })
        .await
    );

    let t = Instant::now();
    let r = s.upload("second", b"x".to_vec()).await;
    let waited = t.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "overloaded");
    assert!(
        waited >= Duration::from_millis(250),
        "it waited for a slot first: {waited:?}"
    );

    let t = Instant::now();
    let (status, _) = s.get_json("/healthz").await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "health answered while uploads are saturated"
    );
    // Reads are not limited by the upload gate.
    let (status, _) = s.get_json("/api/v1/list").await;
    assert_eq!(status, 200);

    drop(holder); // the slow client goes away: its slot and temp file are freed
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    let r = s.upload("third", b"y".to_vec()).await;
    assert_eq!(r.status(), 201);
    assert_eq!(s.get_bytes("/api/v1/fs/slow").await.0, 404);
    s.stop().await;
}

/// The status of `GET path` on the probe listener at `probes` (None: no answer).
async fn probe(client: &reqwest::Client, probes: std::net::SocketAddr, path: &str) -> Option<u16> {
    match client.get(format!("http://{probes}{path}")).send().await {
        Ok(r) => Some(r.status().as_u16()),
        Err(_) => None,
    }
}

/// Sends `request` on a new connection, then reads the answer until the server closes the
/// connection (or `within` passes): the answer's text, and whether it ended in a close.
async fn answer_then_close(stream: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

const STALLED_SHARE: &[u8] = b"POST /api/v1/share HTTP/1.1\r\nHost: localhost\r\n\
Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n";

/// Issue 15 item 4 (the test starts the server healthy through the probe listener, so no
/// other connection holds an API slot): 100 connections that send `POST /api/v1/share` with `Content-Length: 1000`
/// and then nothing fill `max_connections=100`. The body deadline cuts every one of them off
/// with 408 `body_timeout` and closes it; while they hold the API listener (where new
/// connections get 503), the probe listener answers `/healthz` and `/readyz`; afterwards the
/// API listener serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_json_bodies_are_cut_off_while_probes_stay_answerable() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_connections: 100,
        body_timeout: Duration::from_secs(3),
        ..Config::for_data_dir(dir.path())
    };
    let (s, probes) = TestServer::start_with_probes(config).await;

    let mut held = Vec::new();
    for _ in 0..100 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(STALLED_SHARE).await.unwrap();
        held.push(c);
    }
    // The cap is full: a new API connection is refused with 503 `overloaded`...
    let mut extra = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = answer_then_close(&mut extra, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("overloaded") && closed,
        "the API listener is full while the bodies stall: {answer:?}"
    );
    // ...while the probe listener answers both probes, again and again.
    for _ in 0..5 {
        assert_eq!(probe(&s.client, probes, "/healthz").await, Some(200));
        assert_eq!(probe(&s.client, probes, "/readyz").await, Some(200));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every stalled body is cut off by the deadline: 408 `body_timeout`, then the close.
    let answers = futures_util::future::join_all(
        held.iter_mut()
            .map(|c| answer_then_close(c, Duration::from_secs(30))),
    )
    .await;
    for (answer, closed) in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "cut off by the body deadline: {answer:?}"
        );
        assert!(answer.contains("\"code\":\"body_timeout\""), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(closed, "the connection is closed after the 408");
    }

    // The slots are free again: the probes answer on the API listener too.
    assert!(
        eventually(Duration::from_secs(10), || async {
            matches!(s.client.get(s.url("/healthz")).send().await, Ok(r) if r.status() == 200)
        })
        .await
    );
    assert_eq!(probe(&s.client, probes, "/readyz").await, Some(200));
    // The probe listener serves nothing but the probes.
    let r = s
        .client
        .get(format!("http://{probes}/api/v1/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

/// Both deadlines on every body-reading route but the upload (which has its own): a body that
/// goes quiet is cut off by the idle deadline, one that trickles a byte at a time by the
/// total deadline; either way 408 `body_timeout` and a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_route_has_an_idle_and_a_total_body_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        body_idle_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(3),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let json_routes = vaultfs::handlers::routes::route_rules()
        .into_iter()
        .filter(|r| r.method == axum::http::Method::POST && r.path != "/api/v1/files/upload")
        // tus creation streams its body under the upload deadlines (tests/tus.rs).
        .filter(|r| !r.path.starts_with("/api/v1/tus/"))
        .map(|r| {
            r.path
                .replace("{id}", "f_unknown")
                .replace("{n}", "1")
                .replace("{trash_id}", "0123456789abcdef0123456789abcdef")
                .replace("{batch_id}", "0123456789abcdef0123456789abcdef")
        })
        // fsck, the path-addressed move/copy (`op` and `to` in the query), a version's
        // restore and a batch restore read no body.
        .filter(|p| {
            p != "/api/v1/admin/fsck"
                && p != "/api/v1/fs/{*path}"
                && p != "/api/v1/files/f_unknown/versions/1/restore"
                && !p.starts_with("/api/v1/trash/batches/")
        });
    let json_routes: Vec<String> = json_routes.collect();
    assert_eq!(
        json_routes,
        [
            "/api/v1/session",
            "/api/v1/trash/0123456789abcdef0123456789abcdef/restore",
            "/api/v1/files/f_unknown/move",
            "/api/v1/files/f_unknown/copy",
            "/api/v1/share",
            "/api/v1/admin/tokens",
            "/api/v1/commits",
            "/api/v1/commits/f_unknown/finish",
            "/api/v1/leases",
            "/api/v1/leases/f_unknown/renew"
        ],
        "the routes that read a JSON body"
    );
    for route in &json_routes {
        let head = format!(
            "POST {route} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n"
        );
        // Quiet after a few bytes: the idle deadline.
        let mut quiet = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        quiet.write_all(head.as_bytes()).await.unwrap();
        quiet.write_all(b"{\"path\":").await.unwrap();
        let (answer, closed) = answer_then_close(&mut quiet, Duration::from_secs(20)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{route}: {answer:?}");
        assert!(
            answer.contains("\"code\":\"body_timeout\""),
            "{route}: {answer}"
        );
        assert!(
            answer.contains("no body bytes arrived for 1 s"),
            "{route}: {answer}"
        );
        assert!(closed, "{route}: closed after the 408");

        // A byte every 200 ms never trips the idle deadline; the total one ends it.
        let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let (mut read, mut write) = stream.into_split();
        write.write_all(head.as_bytes()).await.unwrap();
        let trickle = tokio::spawn(async move {
            for _ in 0..1000 {
                if write.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut got = Vec::new();
        let read_all = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut got);
        let closed = tokio::time::timeout(Duration::from_secs(20), read_all)
            .await
            .is_ok();
        let answer = String::from_utf8_lossy(&got);
        assert!(answer.starts_with("HTTP/1.1 408"), "{route}: {answer:?}");
        assert!(
            answer.contains("the request body did not arrive within 3 s"),
            "{route}: {answer}"
        );
        assert!(closed, "{route}: closed after the 408");
        trickle.abort();
    }

    // A route that reads no body does not wait for one: answered, and the unread body
    // ends the connection instead of holding it.
    let mut fsck = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    fsck.write_all(
        b"POST /api/v1/admin/fsck HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    let (answer, closed) = answer_then_close(&mut fsck, Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "not held open waiting for the unread body");

    // Bodies that arrive in time are unaffected.
    let r = s
        .client
        .post(s.url("/api/v1/admin/tokens"))
        .json(&serde_json::json!({"scopes": "read", "label": "in time"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    s.stop().await;
}

/// Issue 18: admission is size-aware. With 4 slots, one is reserved for small uploads
/// (declared length up to 1 MiB): while large uploads hold every shared slot and another
/// large one waits, a small upload is admitted and committed at once; the waiting large one
/// gets 503 `overloaded` after the queue timeout.
#[tokio::test]
async fn a_flood_of_large_uploads_does_not_block_a_small_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_concurrent_uploads: 4,
        upload_queue_timeout: Duration::from_millis(500),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    // Three large uploads (2 MiB declared) hold the three shared slots: headers and part of
    // the body, then silence.
    let mut holders = Vec::new();
    for i in 0..3 {
        let mut holder = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST /api/v1/files/upload?path=large{i} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2097152\r\n\r\npartial"
        );
        holder.write_all(head.as_bytes()).await.unwrap();
        holders.push(holder);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 3
        })
        .await
    );
    // A fourth large upload waits for a shared slot, in the background.
    let big = {
        let client = s.client.clone();
        let url = format!("{}/api/v1/files/upload?path=large3", s.base);
        tokio::spawn(async move {
            client
                .post(url)
                .body(vec![7u8; 2 << 20])
                .send()
                .await
                .unwrap()
        })
    };
    // The small upload takes the reserved slot.
    let r = s.upload("small", b"tiny".to_vec()).await;
    assert_eq!(
        r.status(),
        201,
        "a small upload is not queued behind large ones"
    );
    let big = big.await.unwrap();
    assert_eq!(big.status(), 503, "the large one waited for a shared slot");
    let e: serde_json::Value = big.json().await.unwrap();
    assert_eq!(e["error"]["code"], "overloaded");
    assert_eq!(s.get_bytes("/api/v1/fs/small").await.0, 200);
    drop(holders);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    s.stop().await;
}

/// Issue 18: the probe listener runs on a runtime of its own. While every worker of the
/// server's runtime is blocked (here the only one: the test's current-thread runtime),
/// `/healthz` on the probe listener is still answered, from another thread.
#[tokio::test(flavor = "current_thread")]
async fn the_probe_listener_answers_while_the_main_runtime_is_blocked() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (s, probes) = TestServer::start_with_probes(Config::for_data_dir(dir.path())).await;
    let (go, wait) = std::sync::mpsc::sync_channel::<()>(1);
    let prober = std::thread::spawn(move || {
        wait.recv().unwrap();
        let mut c = std::net::TcpStream::connect(probes).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        (answer, Instant::now())
    });
    go.send(()).unwrap();
    let blocked = Instant::now();
    // Deliberately blocking the runtime that serves the API listener.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(Duration::from_millis(1500));
    let unblocked = Instant::now();
    let (answer, answered_at) = prober.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    assert!(
        answered_at < unblocked,
        "answered during the block ({:?} after it began)",
        answered_at - blocked
    );
    s.stop().await;
}
