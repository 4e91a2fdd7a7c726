//! Lock manager overhead, against a bare `tokio::sync::Mutex` measured in the same run.
//! Run: `cargo run --release --example lock_bench` (or `bench/locks.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use vaultfs::paths::VPath;
use vaultfs::services::lock_manager::{LockKey, LockManager, LockMode, LockOwner, LockRequest};

fn owner() -> LockOwner {
    LockOwner {
        request_id: "bench".into(),
        operation: "bench",
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn contended_manager(tasks: usize, per_task: u64) -> f64 {
    let m = LockManager::new(Duration::from_secs(60));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let m = m.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                let g = m
                    .acquire(
                        LockRequest::new().add(LockKey::Path("hot".into()), LockMode::Exclusive),
                        owner(),
                    )
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                drop(g);
            }
        });
    }
    while set.join_next().await.is_some() {}
    rate(tasks as u64 * per_task, started.elapsed())
}

async fn contended_mutex(tasks: usize, per_task: u64) -> f64 {
    let m = Arc::new(tokio::sync::Mutex::new(()));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let m = Arc::clone(&m);
        set.spawn(async move {
            for _ in 0..per_task {
                let g = m.lock().await;
                tokio::task::yield_now().await;
                drop(g);
            }
        });
    }
    while set.join_next().await.is_some() {}
    rate(tasks as u64 * per_task, started.elapsed())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        const N: u64 = 300_000;
        println!("| measurement | VaultFS lock manager | peer: tokio Mutex | ratio |");
        println!("|---|---|---|---|");

        // Uncontended, one key.
        let m = LockManager::new(Duration::from_secs(10));
        let t = Instant::now();
        for _ in 0..N {
            let g = m
                .acquire(
                    LockRequest::new().add(LockKey::Path("k".into()), LockMode::Exclusive),
                    owner(),
                )
                .await
                .unwrap();
            drop(g);
        }
        let lm = rate(N, t.elapsed());
        let mu = tokio::sync::Mutex::new(());
        let t = Instant::now();
        for _ in 0..N {
            drop(mu.lock().await);
        }
        let peer = rate(N, t.elapsed());
        println!(
            "| uncontended, 1 key, acquisitions/s | {lm:.0} | {peer:.0} | {:.3} |",
            lm / peer
        );

        // Uncontended upload-shaped set: `a/b/file-i` = 2 shared parents + 1 exclusive, distinct paths.
        let paths: Vec<VPath> = (0..N)
            .map(|i| VPath::parse(&format!("ci/build/file-{i}")).unwrap())
            .collect();
        let t = Instant::now();
        for p in &paths {
            drop(
                m.acquire(LockRequest::new().write_path(p), owner())
                    .await
                    .unwrap(),
            );
        }
        let lm3 = rate(N, t.elapsed());
        println!("| uncontended, 3-key upload set, distinct paths, sets/s | {lm3:.0} | - | - |");
        assert_eq!(m.stats().table_entries, 0);

        // Contended: 16 tasks on one exclusive key, yielding while holding it.
        let lmc = contended_manager(16, 20_000).await;
        let muc = contended_mutex(16, 20_000).await;
        println!(
            "| contended, 16 tasks on 1 key, acquisitions/s | {lmc:.0} | {muc:.0} | {:.3} |",
            lmc / muc
        );
    });
}
