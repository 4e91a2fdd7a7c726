//! The seed's reproduction: what froze the service VaultFS replaces, run at once against a
//! real server with default configuration. A hang detector with a generous bound, not a
//! timing test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data, sha256_hex, TestServer};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_load_completes_and_stays_consistent() {
    let (_dir, s) = TestServer::start().await;
    let s = Arc::new(s);

    // Files for the opposite-move pairs.
    let mut pairs = Vec::new();
    for i in 0..20 {
        let a = s
            .put(&format!("moves/{i}/a"), format!("A{i}").as_bytes())
            .await;
        let b = s
            .put(&format!("moves/{i}/b"), format!("B{i}").as_bytes())
            .await;
        pairs.push((
            i,
            a["id"].as_str().unwrap().to_string(),
            b["id"].as_str().unwrap().to_string(),
        ));
    }

    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let s = Arc::clone(&s);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = s
                    .client
                    .get(s.url("/healthz"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => latencies.push(t.elapsed()),
                    _ => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (latencies, failures)
        })
    };

    // Payloads are made before the clock starts: the test's own CPU work shares the runtime.
    let distinct_bodies: Vec<Vec<u8>> = (0..50u64).map(|i| data(1 << 20, 1000 + i)).collect();
    let same_bodies: Vec<Vec<u8>> = (0..20u64).map(|i| data(64 * 1024, 5000 + i)).collect();
    let started = Instant::now();
    let mut distinct = tokio::task::JoinSet::new();
    for (i, body) in distinct_bodies.into_iter().enumerate() {
        let s = Arc::clone(&s);
        distinct.spawn(async move {
            let r = s
                .upload(&format!("ci/build-{i}/artifact.bin"), body.clone())
                .await;
            assert_eq!(r.status(), 201);
            let meta: Value = r.json().await.unwrap();
            (meta, body)
        });
    }
    let mut same = tokio::task::JoinSet::new();
    for body in same_bodies {
        let s = Arc::clone(&s);
        same.spawn(async move {
            let r = s.upload("ci/latest/app.bin", body.clone()).await;
            assert!(r.status() == 201 || r.status() == 200, "{}", r.status());
            let meta: Value = r.json().await.unwrap();
            (meta, body)
        });
    }
    let mut moves = tokio::task::JoinSet::new();
    for (i, a, b) in pairs.clone() {
        for (id, to) in [(a, format!("moves/{i}/b")), (b, format!("moves/{i}/a"))] {
            let s = Arc::clone(&s);
            moves.spawn(async move {
                let r = s
                    .client
                    .post(s.url(&format!("/api/v1/files/{id}/move")))
                    .json(&json!({"to": to, "overwrite": true}))
                    .send()
                    .await
                    .unwrap();
                (i, r.status().as_u16())
            });
        }
    }

    let all = tokio::time::timeout(Duration::from_secs(300), async {
        let mut d = Vec::new();
        while let Some(r) = distinct.join_next().await {
            d.push(r.unwrap());
        }
        let mut sm = Vec::new();
        while let Some(r) = same.join_next().await {
            sm.push(r.unwrap());
        }
        let mut mv = Vec::new();
        while let Some(r) = moves.join_next().await {
            mv.push(r.unwrap());
        }
        (d, sm, mv)
    })
    .await;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (distinct, same, moves) = all.expect("requests hung: not all completed within 300 s");

    // Every acknowledged upload reads back byte-exact.
    for (meta, body) in &distinct {
        assert_eq!(meta["sha256"], sha256_hex(body));
        let (status, got) = s
            .get_bytes(&format!("/api/v1/files/{}", meta["id"].as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
        assert!(got == *body, "content of {}", meta["path"]);
    }
    // One path, 20 uploads: versions exactly 1..20, the last one's content wins.
    let versions: BTreeSet<i64> = same
        .iter()
        .map(|(m, _)| m["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=20).collect::<BTreeSet<i64>>());
    let ids: BTreeSet<&str> = same
        .iter()
        .map(|(m, _)| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one file id throughout");
    let (_, last_body) = same.iter().find(|(m, _)| m["version"] == 20).unwrap();
    assert_eq!(
        &s.get_bytes("/api/v1/fs/ci/latest/app.bin").await.1,
        last_body
    );
    // Each opposite-move pair leaves exactly one file.
    for (i, _, _) in &pairs {
        let statuses: Vec<u16> = moves
            .iter()
            .filter(|(j, _)| j == i)
            .map(|(_, st)| *st)
            .collect();
        assert!(statuses.contains(&200), "pair {i}: {statuses:?}");
        assert!(
            statuses.iter().all(|st| *st == 200 || *st == 404),
            "pair {i}: {statuses:?}"
        );
        let (_, page) = s.get_json(&format!("/api/v1/list?prefix=moves/{i}/")).await;
        assert_eq!(
            page["entries"].as_array().unwrap().len(),
            1,
            "pair {i}: {page}"
        );
    }
    // Health answered throughout.
    let (mut lat, failures) = prober.await.unwrap();
    assert_eq!(failures, 0, "health probe failed during the load");
    assert!(!lat.is_empty());
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    eprintln!(
        "escalation load: {} requests in {:.2?}; health probes {} p50 {:.2?} p99 {:.2?} max {:.2?}",
        50 + 20 + 40,
        elapsed,
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    let (_, locks) = s.get_json("/api/v1/admin/locks").await;
    assert_eq!(
        locks["locks"].as_array().unwrap().len(),
        0,
        "no lock left held: {locks}"
    );
    eprintln!("lock stats: {}", locks["stats"]);
    match Arc::try_unwrap(s) {
        Ok(s) => s.stop().await,
        Err(_) => panic!("server handle still shared"),
    }
}
