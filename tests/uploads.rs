//! The upload pipeline against a real server: body deadlines (minimum rate, multipart part
//! wait), the whole-request size cap of multipart uploads, the multipart memory bounds under
//! the two attack shapes of issue 15, the guard's transparency to multer (property test), and
//! the pipeline's futures being `Send`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{eventually, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaultfs::config::Config;

/// The RSS tests measure this process (the server runs in it): one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn rss_kib() -> u64 {
    let status = tokio::fs::read_to_string("/proc/self/status")
        .await
        .unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// One slot, no queue: an upload that holds the slot makes the next one 503 at once.
fn one_slot(dir: &std::path::Path) -> Config {
    Config {
        max_concurrent_uploads: 1,
        max_queued_uploads: 0,
        ..Config::for_data_dir(dir)
    }
}

async fn slot_is_taken(s: &TestServer) -> bool {
    s.upload("probe/taken", b"x".to_vec()).await.status() == 503
}

async fn expect_cut_off(
    mut read: tokio::net::tcp::OwnedReadHalf,
    started: Instant,
    within: Duration,
) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&out).contains("}}") {
                    break;
                }
            }
        }
    }
    let answer = String::from_utf8_lossy(&out).into_owned();
    assert!(
        started.elapsed() < within,
        "cut off after {:?}",
        started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    answer
}

async fn connect_and_send(s: &TestServer, head: &str) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock
}

/// Sends `head` and then one byte of `trickle` every 1.5 s on `sock`'s write half; returns
/// the read half and the writer task.
fn trickle_on(
    sock: tokio::net::TcpStream,
    trickle: &'static [u8],
) -> (tokio::net::tcp::OwnedReadHalf, tokio::task::JoinHandle<()>) {
    let (read, mut write) = sock.into_split();
    let task = tokio::spawn(async move {
        for b in trickle {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    (read, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_upload_trickling_below_the_minimum_rate_is_cut_off_and_frees_its_slot() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        // The idle timeout alone never fires: a byte comes every 1.5 s.
        body_idle_timeout: Duration::from_secs(10),
        upload_min_rate: 1024,
        upload_min_rate_window: Duration::from_secs(3),
        ..one_slot(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let sock = connect_and_send(
        &s,
        "POST /api/v1/files/upload?path=slow/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n",
    )
    .await;
    let started = Instant::now();
    let (read, writer) = trickle_on(sock, &[7u8; 40]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 1
        })
        .await,
        "the trickler is streaming"
    );
    assert!(slot_is_taken(&s).await, "the trickler holds the only slot");
    expect_cut_off(read, started, Duration::from_secs(9)).await;
    writer.abort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await,
        "no temp file left"
    );
    assert_eq!(s.get_bytes("/api/v1/fs/slow/x").await.0, 404);
    s.put("after/slow", b"the slot is free").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_that_sends_nothing_after_its_headers_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        body_idle_timeout: Duration::from_secs(30),
        multipart_field_timeout: Duration::from_secs(1),
        ..one_slot(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let sock = connect_and_send(
        &s,
        "POST /api/v1/files/upload HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary=B\r\ncontent-length: 1000\r\n\r\n",
    )
    .await;
    let started = Instant::now();
    let (read, writer) = trickle_on(sock, &[]);
    // The probe goes in only once the server has admitted the silent client: on two
    // connections there is no order between the requests, and a probe that came first would
    // take the only slot itself (and the silent client would get the 503).
    assert!(
        common::metric_line_appears(
            &s.client,
            &s.base,
            "vaultfs_uploads_in_flight 1",
            Duration::from_millis(900)
        )
        .await,
        "the silent client is admitted"
    );
    assert!(
        slot_is_taken(&s).await,
        "the silent client holds the only slot"
    );
    expect_cut_off(read, started, Duration::from_secs(6)).await;
    writer.abort();
    assert_eq!(s.temp_count().await, 0);
    s.put("after/silent", b"the slot is free").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_part_trickling_below_the_minimum_rate_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        body_idle_timeout: Duration::from_secs(10),
        upload_min_rate: 1024,
        upload_min_rate_window: Duration::from_secs(3),
        ..one_slot(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let part = "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"trickled\"\r\n\r\n";
    let sock = connect_and_send(
        &s,
        &format!("POST /api/v1/files/upload HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary=B\r\ncontent-length: 100000\r\n\r\n{part}"),
    )
    .await;
    let started = Instant::now();
    let (read, writer) = trickle_on(sock, &[b'z'; 40]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 1
        })
        .await,
        "the part is streaming"
    );
    expect_cut_off(read, started, Duration::from_secs(9)).await;
    writer.abort();
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    assert_eq!(s.get_bytes("/api/v1/fs/trickled").await.0, 404);
    s.put("after/trickled", b"the slot is free").await;
    s.stop().await;
}

#[tokio::test]
async fn the_minimum_rate_can_be_switched_off() {
    let c = vaultfs::config::resolve(
        None,
        &vaultfs::config::Overrides::from_env(&|k| {
            (k == "VAULTFS_UPLOAD_MIN_RATE").then(|| "0".to_string())
        }),
        &vaultfs::config::Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.upload_min_rate, 0);
    assert_eq!(Config::default().upload_min_rate, 16 * 1024);
    assert_eq!(
        Config::default().upload_min_rate_window,
        Duration::from_secs(30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_multipart_request_is_held_to_the_upload_limit() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        max_upload_size: 1024 * 1024,
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let chunked_part = |seed: u64| {
        let bytes = common::data(900 * 1024, seed);
        let stream = futures_util::stream::iter(
            bytes
                .chunks(64 * 1024)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        );
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream))
    };
    // One such part alone fits.
    let form = reqwest::multipart::Form::new().part("f", chunked_part(0).file_name("one.bin"));
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Five of them, chunked (no Content-Length): 413 like the Content-Length case.
    let mut form = reqwest::multipart::Form::new();
    for i in 0..5 {
        form = form.part("f", chunked_part(i + 1).file_name(format!("five/{i}.bin")));
    }
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "too_large", "{e}");
    for i in 0..5 {
        assert_eq!(
            s.get_bytes(&format!("/api/v1/fs/five/{i}.bin")).await.0,
            404,
            "part {i} was not committed"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_commits_all_its_files_or_none() {
    let (_dir, s) = TestServer::start().await;
    let (_, before) = s.get_json("/api/v1/events?since=0&limit=1000&wait=0").await;
    let seq_before = before["next_since"].as_u64().unwrap_or(0);
    // Both parts pass the precheck (neither path exists yet), but under the lock the second
    // put of `twice/a` finds the first: `If-None-Match: *` fails, and the whole request with
    // it. Committed per part, `first/ok` and the first `twice/a` would stay behind.
    let part = |name: &str, body: &[u8]| {
        reqwest::multipart::Part::bytes(body.to_vec()).file_name(name.to_string())
    };
    let form = reqwest::multipart::Form::new()
        .part("f", part("first/ok", b"one"))
        .part("f", part("twice/a", b"two"))
        .part("f", part("twice/a", b"three"));
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .header("if-none-match", "*")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    for path in ["first/ok", "twice/a"] {
        assert_eq!(
            s.get_bytes(&format!("/api/v1/fs/{path}")).await.0,
            404,
            "{path}"
        );
    }
    let (_, after) = s.get_json("/api/v1/events?since=0&limit=1000&wait=0").await;
    assert_eq!(
        after["next_since"].as_u64().unwrap_or(0),
        seq_before,
        "{after}"
    );

    // The same request without the precondition commits all three, with consecutive seqs.
    let form = reqwest::multipart::Form::new()
        .part("f", part("first/ok", b"one"))
        .part("f", part("twice/a", b"two"))
        .part("f", part("twice/a", b"three"));
    let r = s
        .client
        .post(s.url("/api/v1/files/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(s.get_bytes("/api/v1/fs/twice/a").await.1, b"three");
    let (_, events) = s
        .get_json(&format!(
            "/api/v1/events?since={seq_before}&limit=1000&wait=0"
        ))
        .await;
    let seqs: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 3, "{events}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    s.stop().await;
}

/// Sends `prefix` and then up to `total` bytes of `filler` as one request with that
/// Content-Length, sampling this process's RSS; returns the answer, the bytes sent and the
/// largest RSS growth seen (KiB).
async fn attack(
    s: &TestServer,
    content_type: &str,
    prefix: &[u8],
    total: u64,
) -> (String, u64, u64) {
    let head = format!(
        "POST /api/v1/files/upload HTTP/1.1\r\nhost: localhost\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        prefix.len() as u64 + total
    );
    let sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut read, mut write) = sock.into_split();
    let before = rss_kib().await;
    let prefix = prefix.to_vec();
    let sender = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        write.write_all(&prefix).await.unwrap();
        let filler = vec![b'n'; 64 * 1024];
        let mut sent = 0u64;
        let mut peak = 0u64;
        while sent < total {
            let n = filler.len().min((total - sent) as usize);
            let ok = tokio::time::timeout(Duration::from_secs(5), write.write_all(&filler[..n]))
                .await
                .is_ok_and(|r| r.is_ok());
            if !ok {
                break;
            }
            sent += n as u64;
            if sent.is_multiple_of(4 << 20) {
                peak = peak.max(rss_kib().await.saturating_sub(before));
            }
        }
        (sent, peak.max(rss_kib().await.saturating_sub(before)))
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(60), read.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains("}}") {
            break;
        }
    }
    let (sent, peak) = sender.await.unwrap();
    (String::from_utf8_lossy(&out).into_owned(), sent, peak)
}

const ATTACK_BYTES: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_part_header_behind_a_quoted_fake_boundary_is_refused_in_bounded_memory() {
    // Own process: the RSS measured is this process's, and other tests would grow it.
    if !common::isolated(
        module_path!(),
        "an_endless_part_header_behind_a_quoted_fake_boundary_is_refused_in_bounded_memory",
    )
    .await
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (_dir, s) = TestServer::start().await;
    let (answer, sent, peak_kib) = attack(
        &s,
        "multipart/form-data; x=\"; boundary=fake\"; boundary=B",
        b"--B\r\nContent-Disposition: form-data; name=\"",
        ATTACK_BYTES,
    )
    .await;
    println!("quoted fake boundary: sent {sent} bytes, RSS grew by at most {peak_kib} KiB");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_multipart"), "{answer}");
    assert!(peak_kib < 64 * 1024, "RSS grew by {peak_kib} KiB");
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_part_header_after_a_delimiter_inside_file_data_is_refused_in_bounded_memory() {
    // Own process: the RSS measured is this process's, and other tests would grow it.
    if !common::isolated(
        module_path!(),
        "an_endless_part_header_after_a_delimiter_inside_file_data_is_refused_in_bounded_memory",
    )
    .await
    {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (_dir, s) = TestServer::start().await;
    let (answer, sent, peak_kib) = attack(
        &s,
        "multipart/form-data; boundary=B",
        b"--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n\r\nfile data --B-- more data\r\n--B\r\nContent-Disposition: form-data; name=\"",
        ATTACK_BYTES,
    )
    .await;
    println!("delimiter in data: sent {sent} bytes, RSS grew by at most {peak_kib} KiB");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_multipart"), "{answer}");
    assert!(peak_kib < 64 * 1024, "RSS grew by {peak_kib} KiB");
    assert_eq!(
        s.get_bytes("/api/v1/fs/a").await.0,
        404,
        "nothing committed"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.temp_count().await == 0
        })
        .await
    );
    s.stop().await;
}

mod guard_and_multer {
    //! The guard is transparent: for any body in any chunking, parsing through the guard
    //! gives what multer alone gives (the guard never ends a body multer is still parsing),
    //! unless the guard refuses a part header (or preamble) over its limit, which it may only
    //! do where multer held more than the limit of non-data bytes.
    use bytes::Bytes;
    use futures_util::StreamExt;
    use proptest::prelude::*;
    use vaultfs::handlers::multipart_guard::{multer_error, parser, part_stream, Budget};
    use vaultfs::services::upload::UploadError;

    type Parts = Vec<(Option<String>, Option<String>, Vec<u8>)>;

    fn chunks(body: &[u8], size: usize) -> Vec<Bytes> {
        body.chunks(size.max(1))
            .map(Bytes::copy_from_slice)
            .collect()
    }

    async fn alone(body: &[u8], size: usize) -> Result<Parts, ()> {
        let stream =
            futures_util::stream::iter(chunks(body, size).into_iter().map(Ok::<_, std::io::Error>));
        let mut mp = multer::Multipart::new(stream, "B");
        let mut parts = Vec::new();
        while let Some(mut f) = mp.next_field().await.map_err(|_| ())? {
            let (name, file) = (
                f.name().map(str::to_string),
                f.file_name().map(str::to_string),
            );
            let mut data = Vec::new();
            while let Some(c) = f.chunk().await.map_err(|_| ())? {
                data.extend_from_slice(&c);
            }
            parts.push((name, file, data));
        }
        Ok(parts)
    }

    async fn guarded(
        body: &[u8],
        size: usize,
    ) -> Result<Parts, vaultfs::services::upload::UploadError> {
        let stream = futures_util::stream::iter(chunks(body, size).into_iter().map(Ok));
        let budget = Budget::default();
        let mut mp = parser(stream, "B".to_string(), budget.clone());
        let mut parts = Vec::new();
        while let Some(f) = mp.next_field().await.map_err(multer_error)? {
            budget.progress();
            let (name, file) = (
                f.name().map(str::to_string),
                f.file_name().map(str::to_string),
            );
            let mut data = Vec::new();
            let mut s = std::pin::pin!(part_stream(f, budget.clone()));
            while let Some(c) = s.next().await {
                data.extend_from_slice(&c?);
            }
            parts.push((name, file, data));
        }
        Ok(parts)
    }

    /// Pieces bodies are made of: framing, near-framing and data.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"--B\r\n".to_vec()),
            Just(b"\r\n--B\r\n".to_vec()),
            Just(b"\r\n--B--\r\n".to_vec()),
            Just(b"--B--".to_vec()),
            Just(b"\r\n--B".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\n".to_vec()),
            Just(b"Content-Disposition: form-data; name=\"v\"\r\n\r\n".to_vec()),
            Just(b"Content-Type: text/plain\r\n".to_vec()),
            (1usize..1500).prop_map(|n| format!("X-Long: {}\r\n", "h".repeat(n)).into_bytes()),
            (1usize..1500).prop_map(|n| vec![b'-'; n]),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    /// A well-formed body, then noise spliced in at random places.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let part = (
            proptest::collection::vec(piece(), 0..3),
            prop_oneof![Just(0usize), 1usize..200_000],
            any::<bool>(),
        )
            .prop_map(|(extra, data, dashes)| {
                let mut p =
                    b"--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n"
                        .to_vec();
                p.extend_from_slice(b"\r\n");
                p.extend(vec![if dashes { b'-' } else { b'd' }; data]);
                for e in extra {
                    p.extend(e);
                }
                p.extend_from_slice(b"\r\n");
                p
            });
        (
            proptest::collection::vec(part, 0..5),
            proptest::collection::vec(piece(), 0..6),
            any::<u64>(),
        )
            .prop_map(|(parts, noise, seed)| {
                let mut body: Vec<u8> = parts.concat();
                body.extend_from_slice(b"--B--\r\n");
                let mut at = seed;
                for n in noise {
                    at = at
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (at % (body.len() as u64 + 1)) as usize;
                    body.splice(i..i, n);
                }
                body
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn the_guard_never_changes_what_multer_parses(body in body(), size in 1usize..100_000) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (a, g) = rt.block_on(async { (alone(&body, size).await, guarded(&body, size).await) });
            match (a, g) {
                (Ok(a), Ok(g)) => prop_assert_eq!(a, g),
                (Err(()), Err(_)) => {}
                // A refusal is right only where multer held more than the limit of bytes that
                // were not data (headers, preamble, framing).
                (Ok(a), Err(UploadError::PartHeaderTooLarge(limit))) => {
                    let data: usize = a.iter().map(|p| p.2.len()).sum();
                    prop_assert!(body.len() - data > limit, "refused with only {} non-data bytes", body.len() - data);
                }
                (a, g) => prop_assert!(false, "multer alone: {:?}, guarded: {:?}", a.map(|p| p.len()), g.map(|p| p.len())),
            }
        }
    }
}

/// The pipeline's futures are `Send` (type-checking the closure is the test).
#[test]
#[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
fn upload_pipeline_futures_are_send() {
    use vaultfs::paths::VPath;
    use vaultfs::services::files::{FileService, RequestCtx};
    use vaultfs::services::upload::{UploadBatch, UploadError, UploadOptions};

    fn assert_send<T: Send>(_: &T) {}
    let _never_called = || {
        let files: FileService = todo!();
        let ctx: RequestCtx = todo!();
        let path: VPath = todo!();
        let body = futures_util::stream::empty::<Result<bytes::Bytes, UploadError>>();
        assert_send(&files.upload(&ctx, &path, body, UploadOptions::default()));
        assert_send(&files.begin_batch(None));
        let mut batch: UploadBatch = todo!();
        let part = futures_util::stream::empty::<Result<bytes::Bytes, UploadError>>();
        assert_send(&batch.next_part(async {}));
        assert_send(&batch.body(futures_util::stream::empty::<
            Result<bytes::Bytes, UploadError>,
        >()));
        assert_send(&batch.stage(&ctx, &path, part, UploadOptions::default()));
        assert_send(&batch.commit(&ctx));
    };
}
