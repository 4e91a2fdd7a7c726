//! The sync feed against a real server: gapless under concurrency, slow subscribers, resume
//! across disconnects and restarts, resync, long-poll, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{next_frame, next_json, Frame, TestServer};
use futures_util::SinkExt;
use serde_json::Value;
use vaultfs::config::Config;

async fn replay(s: &TestServer, since: i64) -> Vec<Value> {
    let (status, v) = s
        .get_json(&format!("/api/v1/events?since={since}&limit=10000"))
        .await;
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

fn seqs(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_subscribers_see_two_hundred_uploads_gapless() {
    let (_dir, s) = TestServer::start().await;
    let s = Arc::new(s);
    s.put("before.txt", b"x").await;

    let mut subs = Vec::new();
    for _ in 0..100 {
        let mut ws = s.ws("").await;
        let hello = next_json(&mut ws).await;
        assert_eq!(hello["kind"], "hello");
        assert_eq!(hello["latest_seq"], 1);
        subs.push(ws);
    }
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..200 {
        let s = Arc::clone(&s);
        uploads.spawn(async move {
            // A few paths are hit repeatedly, so updates interleave with creates.
            let path = if i % 10 == 0 {
                "hot/same.bin".to_string()
            } else {
                format!("up/{i}.bin")
            };
            s.put(&path, format!("content {i}").as_bytes()).await
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = uploads.join_next().await {
        acked.push(r.unwrap());
    }
    let log = replay(&s, 1).await;
    assert_eq!(
        seqs(&log),
        (2..=201).collect::<Vec<i64>>(),
        "the log is gapless"
    );
    // Each acknowledged change appears exactly once.
    let changes: HashSet<(String, i64)> = log
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes.len(), 200);
    for m in &acked {
        assert!(changes.contains(&(
            m["id"].as_str().unwrap().to_string(),
            m["version"].as_i64().unwrap()
        )));
    }
    // Every subscriber got exactly the log.
    let mut readers = tokio::task::JoinSet::new();
    for mut ws in subs {
        readers.spawn(async move {
            let mut got = Vec::new();
            while got.len() < 200 {
                got.push(next_json(&mut ws).await);
            }
            got
        });
    }
    while let Some(r) = readers.join_next().await {
        assert_eq!(r.unwrap(), log, "subscriber stream equals a fresh replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_hurts_nobody() {
    let (_dir, s) = TestServer::start().await;
    let rss_before = rss_kib();
    // Connects, then never reads a byte.
    let mut stalled = s.ws("").await;
    let _ = next_json(&mut stalled).await;
    let mut healthy = s.ws("").await;
    let _ = next_json(&mut healthy).await;
    let n = 1500; // more than the live buffer (1024)
    let s = Arc::new(s);
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let s = Arc::clone(&s);
                set.spawn(async move { s.put(&format!("flood/{i}"), b"x").await });
                if set.len() >= 16 {
                    set.join_next().await;
                }
            }
            while set.join_next().await.is_some() {}
        })
    };
    let started = Instant::now();
    for want in 1..=n as i64 {
        let e = next_json(&mut healthy).await;
        assert_eq!(
            e["seq"], want,
            "the healthy subscriber is unaffected: in order, no gap"
        );
    }
    writer.await.unwrap();
    let rss_after = rss_kib();
    eprintln!(
        "healthy subscriber received {n} events in {:.2?}; process RSS {} -> {} KiB with a stalled subscriber",
        started.elapsed(),
        rss_before,
        rss_after
    );
    assert!(rss_after < rss_before + 64 * 1024, "memory stays bounded");
    // The stalled subscriber, once it reads, still gets everything in order (it lagged, then
    // caught up from the log).
    for want in 1..=n as i64 {
        let e = next_json(&mut stalled).await;
        assert_eq!(e["seq"], want);
    }
}

fn rss_kib() -> u64 {
    #[allow(clippy::disallowed_methods)] // a test reading /proc, not server code
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn resume_after_disconnect_and_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let mut ws = s.ws("since=0").await;
    assert_eq!(next_json(&mut ws).await["kind"], "hello");
    for i in 0..5 {
        s.put(&format!("r/{i}"), b"a").await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = next_json(&mut ws).await["seq"].as_i64().unwrap();
    }
    assert_eq!(last, 3);
    drop(ws); // disconnect mid-stream
    for i in 5..8 {
        s.put(&format!("r/{i}"), b"b").await;
    }
    let mut ws = s.ws(&format!("since={last}")).await;
    assert_eq!(next_json(&mut ws).await["latest_seq"], 8);
    for want in 4..=8 {
        let e = next_json(&mut ws).await;
        assert_eq!(e["seq"], want, "exactly the missing events, in order");
        last = want;
    }
    s.stop().await;
    // The stream ends with 1001 when the server stops.
    assert!(matches!(
        next_frame(&mut ws).await,
        Frame::Closed(Some(1001))
    ));

    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    s.put("r/after-restart", b"c").await;
    let mut ws = s.ws(&format!("since={last}")).await;
    assert_eq!(next_json(&mut ws).await["latest_seq"], 9);
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["seq"].as_i64(), e["path"].as_str()),
        (Some(9), Some("r/after-restart"))
    );
    // And live events keep coming after the replay, with no duplicate at the switch.
    s.put("r/live", b"d").await;
    assert_eq!(next_json(&mut ws).await["seq"], 10);
    s.stop().await;
}

#[tokio::test]
async fn pruned_cursor_gets_resync_required() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        events_max: 5,
        events_prune_interval: Duration::from_millis(50),
        ..Config::for_data_dir(dir.path())
    };
    let s = TestServer::start_with(config).await;
    for i in 0..20 {
        s.put(&format!("p/{i}"), b"x").await;
    }
    let pruned = common::eventually(Duration::from_secs(10), || async {
        s.get_json("/api/v1/events?since=0").await.0 == 410
    })
    .await;
    assert!(pruned, "old events were pruned");
    let (status, body) = s.get_json("/api/v1/events?since=0").await;
    assert_eq!(status, 410);
    assert_eq!(body["error"]["code"], "resync_required");
    assert_eq!(body["latest_seq"], 20);

    let mut ws = s.ws("since=0").await;
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["kind"], "resync_required");
    assert_eq!(frame["latest_seq"], 20);
    assert!(matches!(
        next_frame(&mut ws).await,
        Frame::Closed(Some(4000))
    ));
    // A cursor from the future is refused too; a retained one works.
    let mut ws = s.ws("since=999").await;
    assert_eq!(next_json(&mut ws).await["kind"], "resync_required");
    let mut ws = s.ws("since=17").await;
    assert_eq!(next_json(&mut ws).await["kind"], "hello");
    assert_eq!(next_json(&mut ws).await["seq"], 18);
    s.stop().await;
}

#[tokio::test]
async fn long_poll_answers_on_commit_and_after_wait() {
    let (_dir, s) = TestServer::start().await;
    s.put("lp/0", b"x").await;
    // Nothing newer: answers after `wait`.
    let t = Instant::now();
    let (status, v) = s.get_json("/api/v1/events?since=1&wait=1").await;
    let waited = t.elapsed();
    assert_eq!(status, 200);
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
    assert_eq!(v["next_since"], 1);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // An event commits while polling: answers promptly.
    let poll = {
        let url = s.url("/api/v1/events?since=1&wait=30");
        let client = s.client.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let v: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            (t.elapsed(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.put("lp/1", b"y").await;
    let (took, v) = poll.await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "long-poll returned in {took:?}"
    );
    assert_eq!(v["events"][0]["path"], "lp/1");
    assert_eq!(v["next_since"], 2);

    // Prefix filtering advances the cursor past non-matching events.
    s.put("other/x", b"z").await;
    let (_, v) = s.get_json("/api/v1/events?since=2&prefix=lp/&wait=0").await;
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
    assert_eq!(v["next_since"], 3);
    s.stop().await;
}

#[tokio::test]
async fn event_kinds_and_protocol_errors() {
    let (_dir, s) = TestServer::start().await;
    let mut ws = s.ws("prefix=k/").await;
    assert_eq!(next_json(&mut ws).await["kind"], "hello");
    let a = s.put("k/a", b"1").await;
    s.put("k/a", b"2").await;
    let id = a["id"].as_str().unwrap();
    s.put("elsewhere", b"not for this prefix").await;
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{id}/copy")))
        .json(&serde_json::json!({"to": "k/c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .client
        .post(s.url(&format!("/api/v1/files/{id}/move")))
        .json(&serde_json::json!({"to": "k/b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .delete(s.url(&format!("/api/v1/files/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let kinds: Vec<(String, String, Option<String>)> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            let e = next_json(&mut ws).await;
            v.push((
                e["kind"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["from_path"].as_str().map(str::to_string),
            ));
        }
        v
    };
    assert_eq!(
        kinds,
        vec![
            ("created".into(), "k/a".into(), None),
            ("updated".into(), "k/a".into(), None),
            ("copied".into(), "k/c".into(), Some("k/a".into())),
            ("moved".into(), "k/b".into(), Some("k/a".into())),
            ("deleted".into(), "k/b".into(), None),
        ]
    );

    // A frame over 64 KiB closes with 1009.
    let mut big = s.ws("").await;
    let _ = next_json(&mut big).await;
    let _ = big
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "x".repeat(100 * 1024).into(),
        ))
        .await;
    assert!(matches!(
        next_frame(&mut big).await,
        Frame::Closed(Some(1009)) | Frame::Closed(None)
    ));

    // The client's ping gets its pong while events flow, and its close ends the session.
    let mut polite = s.ws("").await;
    let _ = next_json(&mut polite).await;
    polite
        .send(tokio_tungstenite::tungstenite::Message::Ping(
            b"are you there".to_vec().into(),
        ))
        .await
        .unwrap();
    s.put("k/after-ping", b"p").await;
    let (mut pong, mut event) = (false, false);
    while !(pong && event) {
        use futures_util::StreamExt;
        let msg = tokio::time::timeout(Duration::from_secs(20), polite.next())
            .await
            .expect("a frame within 20 s")
            .expect("the session is open")
            .unwrap();
        match msg {
            tokio_tungstenite::tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                pong = true;
            }
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["path"], "k/after-ping");
                event = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    polite
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "done".into(),
        }))
        .await
        .unwrap();
    // tungstenite echoes the close frame and then reports the stream as ended.
    let answer = next_frame(&mut polite).await;
    assert!(
        matches!(answer, Frame::Closed(Some(1000) | None)),
        "{answer:?}"
    );

    // Plain HTTP on the WebSocket route: a JSON error.
    let (status, e) = s.get_json("/api/v1/sync").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("websocket_required"))
    );
    let (status, e) = s.get_json("/api/v1/sync?prefix=../").await;
    assert_eq!(status, 400, "{e}");
    s.stop().await;
}

/// Sum of the metadata store's `events_after` and `events_matching` calls so far, from
/// `/metrics` (every server in this process shares the recorder: other tests add a little).
async fn event_reads(s: &TestServer) -> u64 {
    let text = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("vaultfs_store_op_duration_seconds_count{"))
        .filter(|l| l.contains("store=\"metadata\""))
        .filter(|l| l.contains("op=\"events_after\"") || l.contains("op=\"events_matching\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Issue 15 item 9: `events?since=0&limit=1&prefix=zzz/` over a long log of other events
/// used to read it one page (of `limit`) at a time, with no cap. Now one request examines at
/// most 10,000 seqs in a few queries and answers with `next_since` advanced past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_long_poll_over_a_long_log_is_bounded() {
    use vaultfs::services::metadata::sqlite::SqliteMetadata;
    use vaultfs::services::metadata::{MetadataStore, Precondition, PutRequest};
    use vaultfs::services::storage::BlobRef;

    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let meta = s.put("big/x", b"content").await;
    s.stop().await;
    // 25,000 more events (replacements of big/x by the same blob), written straight into
    // the stopped server's store in one transaction.
    let store = SqliteMetadata::open(dir.path(), Duration::from_secs(30), 1)
        .await
        .unwrap();
    let blob = BlobRef {
        sha256: meta["sha256"].as_str().unwrap().to_string(),
        size: meta["size"].as_u64().unwrap(),
    };
    let reqs = (0..25_000)
        .map(|_| PutRequest {
            path: "big/x".into(),
            blob: blob.clone(),
            content_type: "application/octet-stream".into(),
            precondition: Precondition::None,
            s3: None,
        })
        .collect();
    store.put_many(reqs).await.unwrap();
    assert_eq!(store.latest_seq().await.unwrap(), 25_001);
    store.close().await;

    let s = TestServer::start_with(Config::for_data_dir(dir.path())).await;
    let before = event_reads(&s).await;
    let (status, v) = s
        .get_json("/api/v1/events?since=0&limit=1&prefix=zzz/&wait=5")
        .await;
    let reads = event_reads(&s).await - before;
    println!("event-log queries for one prefix long-poll over 25,001 events: {reads}");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 0);
    assert_eq!(
        v["next_since"], 10_000,
        "answers after the scan cap, not after the whole log"
    );
    assert!(reads < 200, "{reads} event-log queries for one long-poll");
    // The client continues from there and reaches the end of the log.
    let (_, v) = s
        .get_json("/api/v1/events?since=10000&limit=1&prefix=zzz/")
        .await;
    assert_eq!(v["next_since"], 20_000);
    let (_, v) = s
        .get_json("/api/v1/events?since=20000&limit=1&prefix=zzz/")
        .await;
    assert_eq!(v["next_since"], 25_001);
    // And a matching event is found by the prefix filter.
    s.put("zzz/y", b"y").await;
    let (_, v) = s
        .get_json("/api/v1/events?since=25001&limit=1&prefix=zzz/&wait=5")
        .await;
    assert_eq!(v["events"][0]["path"], "zzz/y", "{v}");
    assert_eq!(v["next_since"], 25_002);
    // Without a prefix, a small limit still pages through in order.
    let (_, v) = s.get_json("/api/v1/events?since=0&limit=2").await;
    assert_eq!(seqs(v["events"].as_array().unwrap()), [1, 2]);
    assert_eq!(v["next_since"], 2);
    s.stop().await;
}

/// Issue 18: a subscriber that starts far behind gets its catch-up reads written several
/// events per socket write; the frames still carry every seq, once each, in order, one event
/// per text frame, and the live events after the catch-up follow without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_frames_carry_every_seq_in_order() {
    let (_dir, s) = TestServer::start().await;
    let s = Arc::new(s);
    // More than two catch-up reads' worth (500 each), committed before the subscriber.
    let before = 1_100;
    let mut puts = tokio::task::JoinSet::new();
    for w in 0..16 {
        let s = Arc::clone(&s);
        puts.spawn(async move {
            for i in (w..before).step_by(16) {
                s.put(&format!("batch/{i}"), b"x").await;
            }
        });
    }
    while let Some(r) = puts.join_next().await {
        r.unwrap();
    }
    let mut ws = s.ws("since=0").await;
    assert_eq!(next_json(&mut ws).await["kind"], "hello");
    // Live events while the catch-up is being sent.
    let after = 200;
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            for i in 0..after {
                s.put(&format!("live/{i}"), b"y").await;
            }
        })
    };
    let total = (before + after) as i64;
    let mut seen = Vec::new();
    while seen.len() < total as usize {
        let frame = next_json(&mut ws).await;
        assert!(frame.is_object(), "one event per frame: {frame}");
        seen.push(frame["seq"].as_i64().unwrap());
    }
    writer.await.unwrap();
    assert_eq!(seen, (1..=total).collect::<Vec<i64>>());
}
