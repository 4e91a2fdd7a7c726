//! The deadlock invariant, proven three ways: a randomized-schedule model check (shuttle)
//! of two and three tasks naming overlapping sets in opposite orders, a control showing the
//! same model *does* deadlock without the canonical order, and a proptest of 64 real tokio
//! tasks with random overlapping sets.

use super::*;
use proptest::prelude::*;

fn path(p: &str) -> LockKey {
    LockKey::Path(p.to_string())
}

fn owner() -> LockOwner {
    LockOwner {
        request_id: "test".into(),
        operation: "test",
    }
}

/// Exclusive holders per key, to catch two holders of one exclusive key.
type Ledger = Arc<Mutex<HashMap<LockKey, (usize, usize)>>>;

fn enter(ledger: &Ledger, keys: &[(LockKey, LockMode)]) {
    let mut l = lock(ledger);
    for (k, m) in keys {
        let e = l.entry(k.clone()).or_insert((0, 0));
        match m {
            LockMode::Exclusive => e.0 += 1,
            LockMode::Shared => e.1 += 1,
        }
        assert!(e.0 <= 1, "two exclusive holders of {k}");
        assert!(
            e.0 == 0 || e.1 == 0,
            "exclusive and shared holders of {k} at once"
        );
    }
}

fn leave(ledger: &Ledger, keys: &[(LockKey, LockMode)]) {
    let mut l = lock(ledger);
    for (k, m) in keys {
        if let Some(e) = l.get_mut(k) {
            match m {
                LockMode::Exclusive => e.0 -= 1,
                LockMode::Shared => e.1 -= 1,
            }
        }
    }
}

/// One task of the model: takes `keys` (sorted first when `canonical`), yielding to the
/// scheduler between keys and while holding them.
async fn model_task(
    manager: LockManager,
    keys: Vec<(LockKey, LockMode)>,
    canonical: bool,
    ledger: Ledger,
) {
    let keys = if canonical {
        LockRequest { keys }.canonical()
    } else {
        keys
    };
    let mut guard = manager.register(&keys, owner());
    manager
        .lock_all(&keys, &mut guard, shuttle::future::yield_now)
        .await;
    enter(&ledger, &keys);
    shuttle::future::yield_now().await;
    leave(&ledger, &keys);
}

fn run_model(sets: Vec<Vec<(LockKey, LockMode)>>, canonical: bool) {
    shuttle::future::block_on(async move {
        let manager = LockManager::new(Duration::from_secs(10));
        let ledger: Ledger = Arc::default();
        let handles: Vec<_> = sets
            .into_iter()
            .map(|keys| {
                shuttle::future::spawn(model_task(
                    manager.clone(),
                    keys,
                    canonical,
                    Arc::clone(&ledger),
                ))
            })
            .collect();
        for h in handles {
            assert!(h.await.is_ok());
        }
        assert_eq!(manager.stats().table_entries, 0, "table emptied");
        assert_eq!(manager.stats().held_or_waiting_sets, 0);
    });
}

use LockMode::{Exclusive as X, Shared as S};

fn two_opposite() -> Vec<Vec<(LockKey, LockMode)>> {
    vec![
        vec![(path("a"), X), (path("b"), X)],
        vec![(path("b"), X), (path("a"), X)],
    ]
}

fn three_cycle() -> Vec<Vec<(LockKey, LockMode)>> {
    vec![
        vec![(path("a"), X), (path("b"), X)],
        vec![(path("b"), X), (path("c"), X)],
        vec![(path("c"), X), (path("a"), S), (path("d/"), S)],
    ]
}

#[test]
fn model_two_tasks_opposite_orders_never_deadlock() {
    shuttle::check_random(|| run_model(two_opposite(), true), 2000);
    shuttle::check_pct(|| run_model(two_opposite(), true), 2000, 3);
}

#[test]
fn model_three_tasks_in_a_cycle_never_deadlock() {
    shuttle::check_random(|| run_model(three_cycle(), true), 2000);
    shuttle::check_pct(|| run_model(three_cycle(), true), 2000, 3);
}

/// The control: the same model, keys taken in the callers' order, finds the escalation's
/// deadlock. This is what shows the model test has teeth.
#[test]
#[should_panic(expected = "deadlock")]
fn model_finds_the_deadlock_without_canonical_order() {
    shuttle::check_pct(|| run_model(two_opposite(), false), 2000, 3);
}

#[tokio::test]
async fn timeout_releases_partial_set_and_names_the_key() {
    let m = LockManager::new(Duration::from_millis(50));
    let blocker = m
        .acquire(LockRequest::new().add(path("b"), X), owner())
        .await
        .map_err(|e| e.to_string());
    assert!(blocker.is_ok());
    let r = m
        .acquire(
            LockRequest::new().add(path("b"), X).add(path("a"), X),
            owner(),
        )
        .await;
    match r {
        Err(LockError::Timeout { key, .. }) => assert_eq!(key, "path:b"),
        Ok(_) => panic!("should have timed out"),
    }
    // `a` (taken first, canonical order) was released: another request gets it at once.
    let a = m
        .acquire_with_timeout(
            LockRequest::new().add(path("a"), X),
            owner(),
            Duration::from_millis(1),
        )
        .await;
    assert!(a.is_ok());
    assert_eq!(m.stats().timeouts, 1);
    drop(a);
    drop(blocker);
    assert_eq!(m.stats().table_entries, 0);
}

#[tokio::test]
async fn cancelled_acquisition_releases_everything() {
    let m = LockManager::new(Duration::from_secs(10));
    let blocker = m
        .acquire(LockRequest::new().add(path("z"), X), owner())
        .await
        .map_err(|e| e.to_string());
    let waiting = m.acquire(
        LockRequest::new().add(path("a"), X).add(path("z"), X),
        owner(),
    );
    // The client goes away while the request waits for `z`, holding `a`.
    let cancelled = tokio::time::timeout(Duration::from_millis(20), waiting).await;
    assert!(cancelled.is_err());
    assert_eq!(m.holders().len(), 1, "only the blocker is registered");
    let a = m
        .acquire_with_timeout(
            LockRequest::new().add(path("a"), X),
            owner(),
            Duration::from_millis(1),
        )
        .await;
    assert!(a.is_ok(), "`a` was released by the cancelled request");
    drop(a);
    drop(blocker);
    assert_eq!(m.stats().table_entries, 0);
}

#[tokio::test]
async fn table_stays_flat_after_many_distinct_paths() {
    let m = LockManager::new(Duration::from_secs(10));
    for i in 0..200_000u32 {
        let p = crate::paths::VPath::parse(&format!("dir{}/file{i}", i % 97));
        let p = p.map_err(|e| e.to_string());
        let p = match p {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let g = m.acquire(LockRequest::new().write_path(&p), owner()).await;
        assert!(g.is_ok());
    }
    let stats = m.stats();
    assert_eq!(stats.table_entries, 0);
    assert_eq!(stats.held_or_waiting_sets, 0);
    assert_eq!(stats.acquired, 200_000);
}

#[test]
fn canonical_sorts_dedups_and_upgrades() {
    let req = LockRequest::new()
        .add(path("b"), S)
        .add(LockKey::Blob("ff".into()), X)
        .add(path("a"), S)
        .add(path("b"), X)
        .add(path("a"), S);
    assert_eq!(
        req.canonical(),
        vec![
            (path("a"), S),
            (path("b"), X),
            (LockKey::Blob("ff".into()), X)
        ]
    );
}

fn lock_set() -> impl Strategy<Value = Vec<(u8, bool)>> {
    proptest::collection::vec((0u8..12, any::<bool>()), 1..5)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// 64 tasks on a real multi-threaded runtime, random overlapping sets named in random
    /// orders: all finish (a hang detector, generous bound) and no exclusive key is ever
    /// held twice.
    #[test]
    fn random_overlapping_sets_all_finish(sets in proptest::collection::vec(lock_set(), 64)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build();
        let rt = match rt { Ok(rt) => rt, Err(e) => panic!("{e}") };
        let finished = rt.block_on(async move {
            let m = LockManager::new(Duration::from_secs(30));
            let ledger: Ledger = Arc::default();
            let mut tasks = tokio::task::JoinSet::new();
            for set in sets {
                let m = m.clone();
                let ledger = Arc::clone(&ledger);
                tasks.spawn(async move {
                    let mut req = LockRequest::new();
                    for (k, exclusive) in set {
                        req = req.add(path(&format!("k{k}")), if exclusive { X } else { S });
                    }
                    let keys = req.clone().canonical();
                    for _ in 0..3 {
                        let g = m.acquire(req.clone(), owner()).await;
                        assert!(g.is_ok(), "lock timeout: a hang");
                        enter(&ledger, &keys);
                        tokio::task::yield_now().await;
                        leave(&ledger, &keys);
                    }
                });
            }
            let all = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(r) = tasks.join_next().await {
                    assert!(r.is_ok(), "task panicked");
                }
            })
            .await;
            all.is_ok() && m.stats().table_entries == 0
        });
        prop_assert!(finished, "all 64 tasks finish and the table empties");
    }
}
