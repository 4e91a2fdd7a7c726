//! Operations: probes, metrics, overload, slow clients, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{data, eventually, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaultfs::config::Config;

/// One parsed sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reader of the Prometheus text format (0.0.4): every line is a comment (`# HELP`
/// / `# TYPE` well formed), empty, or `name{label="value",...} number`.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut out = Vec::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_default();
            assert!(valid_name(name), "bad metric name in {line:?}");
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line:?}"
                    );
                    types.insert(name.to_string(), t.to_string());
                }
                "HELP" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    let end = after.find('"').unwrap_or_else(|| panic!("{line:?}"));
                    labels.push((k.to_string(), after[..end].to_string()));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        assert!(valid_name(&name), "bad series name in {line:?}");
        out.push((name, labels, value));
    }
    // Every histogram has its +Inf bucket, sum and count.
    for (name, t) in &types {
        if t == "histogram" {
            assert!(out.iter().any(|(n, l, _)| n == &format!("{name}_bucket")
                && l.iter().any(|(k, v)| k == "le" && v == "+Inf")));
            assert!(out.iter().any(|(n, _, _)| n == &format!("{name}_count")));
        }
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

async fn scrape(s: &TestServer) -> Vec<Sample> {
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    parse_prometheus(&r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    // Own process: exact counter deltas of the process-wide metrics recorder.
    if !common::isolated(
        module_path!(),
        "metrics_parse_as_prometheus_text_and_move_with_traffic",
    )
    .await
    {
        return;
    }
    let (_d, s) = TestServer::start().await;
    let before = scrape(&s).await;
    let content = data(300_000, 9);
    let meta = s.put("m/one.bin", &content).await;
    let (status, body) = s
        .get_bytes(&format!("/api/v1/files/{}", meta["id"].as_str().unwrap()))
        .await;
    assert_eq!((status, body.len()), (200, content.len()));
    let mut ws = s.ws("since=0").await;
    let _hello = common::next_json(&mut ws).await;
    let _event = common::next_json(&mut ws).await;
    let after = scrape(&s).await;

    let upload_route = [
        ("route", "/api/v1/files/upload"),
        ("method", "POST"),
        ("status", "201"),
    ];
    assert_eq!(
        value(&after, "vaultfs_http_requests_total", &upload_route)
            - value(&before, "vaultfs_http_requests_total", &upload_route),
        1.0
    );
    // Counters are process-wide (other tests' servers may share the recorder): at least ours.
    for (name, at_least) in [
        ("vaultfs_upload_bytes_total", content.len() as f64),
        ("vaultfs_download_bytes_total", content.len() as f64),
        ("vaultfs_lock_acquisitions_total", 1.0),
        ("vaultfs_events_published_total", 1.0),
    ] {
        let delta = value(&after, name, &[]) - value(&before, name, &[]);
        assert!(
            delta >= at_least,
            "{name} moved by {delta}, expected >= {at_least}"
        );
    }
    assert!(
        value(
            &after,
            "vaultfs_http_request_duration_seconds_count",
            &[("route", "/api/v1/files/upload")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "vaultfs_store_op_duration_seconds_count",
            &[("store", "metadata"), ("op", "put")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "vaultfs_store_op_duration_seconds_count",
            &[("store", "blob"), ("op", "commit")]
        ) >= 1.0
    );
    assert!(value(&after, "vaultfs_lock_wait_seconds_count", &[]) >= 1.0);
    assert!(
        value(&after, "vaultfs_sync_subscribers", &[]) >= 1.0,
        "our WebSocket subscriber"
    );
    assert!(
        value(&after, "vaultfs_sync_catchup_reads_total", &[]) >= 1.0,
        "the replay from since=0"
    );
    // Every family the operations guide names is exported.
    let names: std::collections::HashSet<_> = after.iter().map(|(n, _, _)| n.as_str()).collect();
    for required in [
        "vaultfs_http_requests_total",
        "vaultfs_http_request_duration_seconds_bucket",
        "vaultfs_uploads_in_flight",
        "vaultfs_downloads_in_flight",
        "vaultfs_upload_bytes_total",
        "vaultfs_download_bytes_total",
        "vaultfs_lock_acquisitions_total",
        "vaultfs_lock_wait_seconds_bucket",
        "vaultfs_lock_timeouts_total",
        "vaultfs_locks_held",
        "vaultfs_events_published_total",
        "vaultfs_sync_subscribers",
        "vaultfs_sync_subscriber_lag_max",
        "vaultfs_sync_catchup_reads_total",
        "vaultfs_runtime_stall_last_seconds",
        "vaultfs_runtime_stall_max_seconds",
        "vaultfs_runtime_alive_tasks",
        "vaultfs_blocking_queue_depth",
        "vaultfs_store_op_duration_seconds_bucket",
        "vaultfs_connections_open",
    ] {
        assert!(names.contains(required), "missing {required}");
    }
    drop(ws);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_at_shutdown_in_flight_uploads_finish_cut_ones_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        shutdown_drain_delay: Duration::from_millis(1500),
        shutdown_grace: Duration::from_secs(3),
        ..Config::for_data_dir(dir.path())
    };
    let mut s = TestServer::start_with(config.clone()).await;
    let (status, ready) = s.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["metadata"], "ok");

    let first = data(3 << 20, 1);
    let (finishing, finishing_resp) = s.streaming_upload("sd/finishes.bin");
    finishing.send(first[..1 << 20].to_vec()).await.unwrap();
    let (cut, cut_resp) = s.streaming_upload("sd/cut-off.bin");
    cut.send(vec![7u8; 1 << 20]).await.unwrap();
    // Both bodies are streaming on the server before the signal.
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.temp_count().await == 2
        })
        .await
    );

    s.signal_shutdown();
    // Readiness turns 503 at once (new connections are still accepted while draining);
    // liveness stays 200: the process is healthy, just leaving.
    assert!(
        eventually(Duration::from_secs(1), || async {
            s.get_json("/readyz").await.0 == 503
        })
        .await,
        "readiness did not flip"
    );
    let (_, body) = s.get_json("/readyz").await;
    assert_eq!(body["error"]["code"], "draining");
    assert_eq!(s.get_json("/healthz").await.0, 200);

    // The in-flight upload finishes within the grace period and is acknowledged.
    finishing.send(first[1 << 20..].to_vec()).await.unwrap();
    drop(finishing);
    let resp = finishing_resp
        .await
        .unwrap()
        .expect("acknowledged during shutdown");
    assert_eq!(resp.status(), 201);
    // The other never finishes: cut off when the grace period ends.
    let _keep_open = cut;
    let addr = s.addr.to_string();
    let started = Instant::now();
    s.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        cut_resp.await.unwrap().is_err(),
        "a cut-off upload is never acknowledged"
    );

    // After a restart: the acknowledged upload is there, byte-exact; the cut one is not
    // visible, and no temp data is left.
    let s = TestServer::start_on(config, &addr).await;
    assert_eq!(
        s.get_bytes("/api/v1/fs/sd/finishes.bin").await,
        (200, first)
    );
    assert_eq!(s.get_bytes("/api/v1/fs/sd/cut-off.bin").await.0, 404);
    assert_eq!(s.temp_count().await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_503_at_once_while_probes_stay_fast() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_concurrent_uploads: 2,
        max_queued_uploads: 0,
        max_connections: 40,
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let (a, a_resp) = s.streaming_upload("busy/a");
    let (b, b_resp) = s.streaming_upload("busy/b");
    a.send(vec![1; 1000]).await.unwrap();
    b.send(vec![2; 1000]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.temp_count().await == 2
        })
        .await
    );

    let started = Instant::now();
    let r = s
        .client
        .post(s.url("/api/v1/files/upload?path=busy/c"))
        .body(vec![3u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once, not queued"
    );
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let t = Instant::now();
        let r = s.client.get(s.url(probe)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{probe} took {:?}",
            t.elapsed()
        );
    }

    // The two admitted uploads complete normally.
    drop(a);
    drop(b);
    assert_eq!(a_resp.await.unwrap().unwrap().status(), 201);
    assert_eq!(b_resp.await.unwrap().unwrap().status(), 201);

    // Connections beyond the limit get a 503 and are closed, not left in the backlog.
    let mut idle = Vec::new();
    for _ in 0..45 {
        idle.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    let mut last = idle.pop().unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), last.read_to_string(&mut answer))
        .await
        .expect("the server answers a connection past the limit")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"overloaded\"") && answer.contains("retry-after"));
    drop(idle);
    assert!(
        eventually(Duration::from_secs(10), || async {
            s.client
                .get(s.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_is_cut_off_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        body_idle_timeout: Duration::from_millis(500),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(
        b"POST /api/v1/files/upload?path=stall/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    sock.write_all(&[9u8; 100_000]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 1
        })
        .await
    );
    let started = Instant::now();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_string(&mut answer))
        .await
        .expect("cut off within the idle timeout")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    assert_eq!(s.get_bytes("/api/v1/fs/stall/x").await.0, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_dropped_and_do_not_stop_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        header_read_timeout: Duration::from_secs(1),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(c);
    }
    // Everyone else is served meanwhile.
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(s.get_json("/healthz").await.0, 200);
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    // Past the header deadline, every slow connection has been closed by the server.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = 0;
    for c in &mut slow {
        let _ = c.write_all(b"a").await;
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, 300, "every slowloris connection was cut");
    s.stop().await;
}

/// The server and this test share a single-threaded runtime: blocking it is exactly what a
/// `std::thread::sleep` in a handler would do.
#[tokio::test(flavor = "current_thread")]
async fn liveness_fails_after_the_runtime_is_blocked_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        liveness_stall_grace: Duration::from_millis(300),
        liveness_window: Duration::from_secs(2),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    assert_eq!(s.get_json("/healthz").await.0, 200);
    tokio::spawn(async {
        // The test-only hook: deliberately blocking the runtime.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(800));
    });
    tokio::task::yield_now().await;
    let (status, body) = s.get_json("/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "runtime_stalled");
    assert!(
        body["stall"]["delay_ms"].as_f64().unwrap() >= 300.0,
        "{body}"
    );
    // Once the window has passed without another stall, liveness recovers.
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.get_json("/healthz").await.0 == 200
        })
        .await
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_download_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        write_idle_timeout: Duration::from_millis(500),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let size = 48usize << 20;
    s.put("big/slow-reader", &data(size, 4)).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"GET /api/v1/fs/big/slow-reader HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Read nothing while the socket buffers fill and the server's writes stall.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let read_all = async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the server closed the connection");
    assert!(
        got < size,
        "the response was cut off ({got} of {size} bytes)"
    );
    // Nothing is left counting it as in flight, and others are served.
    assert_eq!(s.get_json("/healthz").await.0, 200);
    s.stop().await;
}
