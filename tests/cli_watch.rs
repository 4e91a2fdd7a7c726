//! `vaultfs watch` (the real binary) follows the feed across a server restart, losing nothing
//! and printing nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use vaultfs::config::Config;

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("watch printed nothing for 30 s")
        .unwrap()
        .expect("watch exited");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let addr = s.addr.to_string();
    s.put("w/0", b"before watch").await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vaultfs"))
        .args(["watch", "--server", &s.base, "--since", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        next_line(&mut lines).await["path"],
        "w/0",
        "replays from --since"
    );
    s.put("w/1", b"a").await;
    s.put("w/2", b"b").await;
    assert_eq!(next_line(&mut lines).await["seq"], 2);
    assert_eq!(next_line(&mut lines).await["seq"], 3);

    s.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = TestServer::start_on(Config::for_data_dir(dir.path()), &addr).await;
    s.put("w/3", b"c").await;
    s.put("w/4", b"d").await;
    let e = next_line(&mut lines).await;
    assert_eq!(
        (e["seq"].as_i64(), e["path"].as_str()),
        (Some(4), Some("w/3"))
    );
    assert_eq!(next_line(&mut lines).await["seq"], 5);
    child.kill().await.unwrap();
    s.stop().await;
}
