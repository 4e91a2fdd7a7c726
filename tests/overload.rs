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
