//! A small `vaultfs loadtest` run, so the tool itself stays working: 20 uploaders, movers and
//! subscribers for a few seconds' worth of uploads, all verified.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::TestServer;
use vaultfs::cli::loadtest::{parse_sizes, run, LoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_loadtest_passes_and_verifies() {
    let (_dir, s) = TestServer::start().await;
    let config = LoadConfig {
        uploaders: 20,
        downloaders: 5,
        movers: 3,
        subscribers: 5,
        duration: None,
        count: Some(200),
        sizes: parse_sizes("4KiB:60,256KiB:35,2MiB:5").unwrap(),
        stall_limit: Duration::from_secs(20),
        ..LoadConfig::new(&s.base)
    };
    let report = run(config).await.unwrap();
    eprintln!("{}", report.text());
    assert!(report.passed, "{:?}", report.failures);
    assert_eq!(report.kinds["upload"].count, 200);
    assert_eq!(
        report.kinds["download"].count, 200,
        "every upload read back"
    );
    assert!(report.kinds["move"].count > 0);
    assert!(report.kinds["health"].count > 0);
    assert_eq!(report.events.subscribers_complete, 5);
    assert!(report.events.expected_per_subscriber >= 200);
    assert_eq!(
        report.events.delivered,
        5 * report.events.expected_per_subscriber as u64
    );
    assert_eq!(report.events.gaps, 0);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["kinds"]["upload"]["latency"]["p99_ms"].is_number());
    s.stop().await;
}

#[test]
fn size_mix_parses() {
    assert_eq!(
        parse_sizes("4KiB:50,1MiB:45,64MiB:5").unwrap(),
        vec![(4096, 50), (1 << 20, 45), (64 << 20, 5)]
    );
    assert!(parse_sizes("4KiB").is_err());
    assert!(parse_sizes("4KiB:x").is_err());
    assert!(parse_sizes("4KiB:0").is_err());
}
