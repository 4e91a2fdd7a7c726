//! Zero-copy downloads (src/zero_copy.rs): on plain HTTP/1.1 a file blob's bytes are spliced
//! from the file to the socket. Every response must be byte-exact (whole files, ranges across
//! chunk and page boundaries, several on one kept-alive connection, concurrent ones), HEAD and
//! conditional requests unchanged, TLS served the ordinary way, slow readers served in full
//! within the write-idle timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{data, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use vaultfs::config::Config;

/// Larger than the inline limit (so a file blob), not a multiple of the page or chunk size.
const SIZE: usize = (3 << 20) + 12_345;

/// One request on `io` (kept alive), its status, head and body (read by Content-Length).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    request: impl AsRef<[u8]>,
    head_only: bool,
) -> (u16, String, Vec<u8>) {
    io.write_all(request.as_ref()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = io.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed in the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    io.read_exact(&mut body).await.unwrap();
    (status, head, body)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{extra}\r\n")
}

/// The server's zero-copy byte counter (process-wide: other tests add to it too).
async fn zero_copy_bytes(s: &TestServer) -> u64 {
    let text = s.client.get(s.url("/metrics")).send().await.unwrap();
    let text = text.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("vaultfs_download_zero_copy_bytes_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_files_and_ranges_are_byte_exact_on_one_connection() {
    let (_dir, s) = TestServer::start().await;
    let body = data(SIZE, 11);
    let meta = s.put("zc/big.bin", &body).await;
    let small = data(1000, 12); // inline: the ordinary stream, on the same connection
    s.put("zc/small.bin", &small).await;
    let before = zero_copy_bytes(&s).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let path = "/api/v1/fs/zc/big.bin";

    let (status, head, got) = exchange(&mut sock, &get(path, ""), false).await;
    assert_eq!(status, 200, "{head}");
    assert!(got == body, "whole file differs");
    for (range, from, to) in [
        ("bytes=0-0", 0, 1),
        ("bytes=4097-2100000", 4097, 2_100_001),
        // Across the 1 MiB chunk boundary, one byte each side.
        ("bytes=1048575-1048576", 1_048_575, 1_048_577),
        ("bytes=-70000", SIZE - 70_000, SIZE),
        ("bytes=3000000-", 3_000_000, SIZE),
        ("bytes=1-99999999", 1, SIZE),
    ] {
        let (status, head, got) =
            exchange(&mut sock, &get(path, &format!("range: {range}\r\n")), false).await;
        assert_eq!(status, 206, "{range}: {head}");
        let want = format!("content-range: bytes {from}-{}/{SIZE}", to - 1);
        assert!(head.to_ascii_lowercase().contains(&want), "{range}: {head}");
        assert!(got == body[from..to], "{range}: content differs");
    }
    let (status, _, got) = exchange(&mut sock, &get("/api/v1/fs/zc/small.bin", ""), false).await;
    assert_eq!((status, got == small), (200, true));

    // HEAD: the length, no body (the next response on the connection parses).
    let head_req = format!("HEAD {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let (status, head, _) = exchange(&mut sock, &head_req, true).await;
    assert_eq!(status, 200);
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    // Conditional: 304 on the current tag; a stale If-Range serves the whole file.
    let tag = format!("\"{}\"", meta["sha256"].as_str().unwrap());
    let (status, _, got) = exchange(
        &mut sock,
        &get(path, &format!("if-none-match: {tag}\r\n")),
        false,
    )
    .await;
    assert_eq!((status, got.len()), (304, 0));
    let stale = "range: bytes=5-9\r\nif-range: \"stale\"\r\n";
    let (status, _, got) = exchange(&mut sock, &get(path, stale), false).await;
    assert_eq!(status, 200);
    assert!(got == body, "whole file after a stale If-Range differs");
    let (status, _, got) = exchange(&mut sock, &get(path, "range: bytes=5-9\r\n"), false).await;
    assert_eq!((status, got.as_slice()), (206, &body[5..10]));

    // The bytes went by splice (at least ours: the counter is shared by the process).
    let spliced = zero_copy_bytes(&s).await - before;
    assert!(spliced >= 3 * SIZE as u64, "{spliced} bytes spliced");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_zero_copy_downloads_get_their_own_bytes() {
    let (_dir, s) = TestServer::start().await;
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| data(SIZE - i * 4099, 20 + i as u64))
        .collect();
    for (i, f) in files.iter().enumerate() {
        s.put(&format!("zc/f{i}"), f).await;
    }
    let files = Arc::new(files);
    let mut tasks = Vec::new();
    for n in 0..16usize {
        let (files, client, base) = (Arc::clone(&files), s.client.clone(), s.base.clone());
        tasks.push(tokio::spawn(async move {
            let i = n % 4;
            let start = n * 7919;
            let r = client
                .get(format!("{base}/api/v1/fs/zc/f{i}"))
                .header("range", format!("bytes={start}-"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            let got = r.bytes().await.unwrap();
            assert!(got.as_ref() == &files[i][start..], "download {n} differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_within_the_write_idle_timeout_gets_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        write_idle_timeout: Duration::from_millis(1500),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    let body = data(12 << 20, 5);
    s.put("zc/slow.bin", &body).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(get("/api/v1/fs/zc/slow.bin", "").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    // Pauses shorter than the timeout, so the server's writes stall and resume many times.
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .expect("the server stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
        if head_end.is_some_and(|h| got.len() - h - 4 >= body.len()) {
            break;
        }
    }
    let h = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got[h..] == body[..],
        "slow download differs ({} bytes)",
        got.len() - h
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_download_leaves_the_server_serving() {
    let (_dir, s) = TestServer::start().await;
    let body = data(16 << 20, 6);
    s.put("zc/gone.bin", &body).await;
    for _ in 0..8 {
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(get("/api/v1/fs/zc/gone.bin", "").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        sock.read_exact(&mut buf).await.unwrap();
        // Closed with unread bytes: the server's next splice meets a reset (EPIPE), which
        // must end that connection only (no SIGPIPE, no stuck region).
        drop(sock);
    }
    let (status, got) = s.get_bytes("/api/v1/fs/zc/gone.bin").await;
    assert_eq!(status, 200);
    assert!(got == body, "download after the aborted ones differs");
    s.stop().await;
}

/// A self-signed certificate for 127.0.0.1 from the openssl CLI, or `None` (SKIPPED).
fn make_cert(
    dir: &std::path::Path,
    test: &str,
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        // webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        common::skipped(test, "install the openssl CLI");
        return None;
    }
    Some((cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_downloads_are_served_without_zero_copy_and_byte_exact() {
    use rustls_pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(certs.path(), "tls_downloads_are_served_without_zero_copy")
    else {
        return;
    };
    let mut config = Config::for_data_dir(dir.path());
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key);
    // Health is asked on the (plain) probe listener.
    let (s, _probes) = TestServer::start_with_probes(config).await;
    let body = data(SIZE, 31);
    // The harness's client speaks plain HTTP: upload through a TLS connection of our own.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(s.addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let upload = format!(
        "POST /api/v1/files/upload?path=zc/tls.bin HTTP/1.1\r\nhost: localhost\r\n\
         content-length: {SIZE}\r\n\r\n"
    );
    tls.write_all(upload.as_bytes()).await.unwrap();
    let (status, head, _) = exchange(&mut tls, &body, false).await;
    assert_eq!(status, 201, "{head}");
    let path = "/api/v1/fs/zc/tls.bin";
    let (status, _, got) = exchange(&mut tls, &get(path, ""), false).await;
    assert_eq!(status, 200);
    assert!(got == body, "whole file over TLS differs");
    let (status, _, got) =
        exchange(&mut tls, &get(path, "range: bytes=4097-2100000\r\n"), false).await;
    assert_eq!(status, 206);
    assert!(got == body[4097..2_100_001], "range over TLS differs");
    s.stop().await;
}
