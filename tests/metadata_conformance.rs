//! One conformance suite for every `MetadataStore` implementation: the behaviour the services
//! rely on (versions, preconditions, reference counts, the gapless event log, tokens), checked
//! against the trait only. Each backend runs the same `suite`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use vaultfs::services::metadata::{
    EtagMatch, EventKind, MetadataError, MetadataStore, Precondition, PutRequest, TokenRecord,
};
use vaultfs::services::metadata_sqlite::SqliteMetadata;
use vaultfs::services::storage::BlobRef;

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn put(path: &str, blob: u8, precondition: Precondition) -> PutRequest {
    PutRequest {
        path: path.to_string(),
        blob: BlobRef {
            sha256: sha(blob),
            size: u64::from(blob) * 10,
        },
        content_type: "application/octet-stream".to_string(),
        precondition,
    }
}

async fn kinds_after(store: &dyn MetadataStore, since: i64) -> Vec<(i64, EventKind, String)> {
    store
        .events_after(since, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind, e.path))
        .collect()
}

/// The suite. `store` must be empty.
async fn suite(store: Arc<dyn MetadataStore>) {
    let s = store.as_ref();
    assert_eq!(s.latest_seq().await.unwrap(), 0);
    assert_eq!(s.oldest_seq().await.unwrap(), None);

    // Create, then replace: same id, next version, the old blob released.
    let a1 = s.put(put("d/a", 1, Precondition::None)).await.unwrap();
    assert!(a1.created && a1.released.is_none());
    assert_eq!((a1.meta.version, a1.meta.path.as_str()), (1, "d/a"));
    let a2 = s.put(put("d/a", 2, Precondition::None)).await.unwrap();
    assert!(!a2.created);
    assert_eq!(
        (a2.meta.id.as_str(), a2.meta.version),
        (a1.meta.id.as_str(), 2)
    );
    assert_eq!(a2.released.as_deref(), Some(sha(1).as_str()));
    assert_eq!(s.blob_refcount(&sha(1)).await.unwrap(), 0);
    assert_eq!(s.blob_refcount(&sha(2)).await.unwrap(), 1);
    assert_eq!(s.get_by_path("d/a").await.unwrap().unwrap(), a2.meta);
    assert_eq!(s.get_by_id(&a1.meta.id).await.unwrap().unwrap(), a2.meta);
    assert_eq!(s.get_by_path("d/none").await.unwrap(), None);

    // Preconditions.
    let pf = |r: Result<_, MetadataError>| matches!(r, Err(MetadataError::PreconditionFailed));
    assert!(pf(s.put(put("d/a", 3, Precondition::MustNotExist)).await));
    assert!(pf(s
        .put(put(
            "d/a",
            3,
            Precondition::MustMatch(EtagMatch::OneOf(vec![sha(1)]))
        ))
        .await));
    assert!(pf(s
        .put(put("d/new", 3, Precondition::MustMatch(EtagMatch::Any)))
        .await));
    let a3 = s
        .put(put(
            "d/a",
            3,
            Precondition::MustMatch(EtagMatch::OneOf(vec![sha(2)])),
        ))
        .await
        .unwrap();
    assert_eq!(a3.meta.version, 3);

    // Shared blobs: counted per file, released with the last.
    let b = s
        .put(put("d/b", 3, Precondition::MustNotExist))
        .await
        .unwrap();
    assert_eq!(s.blob_refcount(&sha(3)).await.unwrap(), 2);
    let gone = s
        .delete(&b.meta.id, "d/b", &Precondition::None)
        .await
        .unwrap();
    assert!(gone.released.is_empty());
    assert!(matches!(
        s.delete(&b.meta.id, "d/b", &Precondition::None).await,
        Err(MetadataError::NotFound)
    ));
    assert!(matches!(
        s.delete(&a1.meta.id, "d/elsewhere", &Precondition::None)
            .await,
        Err(MetadataError::PathChanged)
    ));

    // Copy: a new file sharing the blob; onto itself or an existing file without overwrite:
    // refused.
    let c = s.copy(&a1.meta.id, "d/a", "d/c", false).await.unwrap();
    assert_ne!(c.meta.id, a1.meta.id);
    assert_eq!(
        (c.meta.version, c.meta.sha256.as_str()),
        (1, sha(3).as_str())
    );
    assert_eq!(s.blob_refcount(&sha(3)).await.unwrap(), 2);
    assert!(matches!(
        s.copy(&a1.meta.id, "d/a", "d/a", false).await,
        Err(MetadataError::AlreadyExists)
    ));
    assert!(matches!(
        s.copy(&a1.meta.id, "d/a", "d/c", false).await,
        Err(MetadataError::AlreadyExists)
    ));

    // Move: onto an existing file only with overwrite (which deletes it first).
    let e = s.put(put("d/e", 5, Precondition::None)).await.unwrap();
    assert!(matches!(
        s.rename(&e.meta.id, "d/e", "d/c", false).await,
        Err(MetadataError::AlreadyExists)
    ));
    let before = s.latest_seq().await.unwrap();
    let moved = s.rename(&e.meta.id, "d/e", "d/c", true).await.unwrap();
    assert_eq!(
        (moved.meta.id.as_str(), moved.meta.path.as_str()),
        (e.meta.id.as_str(), "d/c")
    );
    assert!(
        moved.released.is_empty(),
        "the victim's blob is still used by d/a"
    );
    assert_eq!(
        kinds_after(s, before).await,
        [
            (before + 1, EventKind::Deleted, "d/c".to_string()),
            (before + 2, EventKind::Moved, "d/c".to_string())
        ]
    );
    let same = s.rename(&e.meta.id, "d/c", "d/c", false).await.unwrap();
    assert_eq!(same.meta.path, "d/c");
    assert_eq!(
        s.latest_seq().await.unwrap(),
        before + 2,
        "a no-op move logs nothing"
    );

    // Scan: path order, inclusive or not, limited.
    for p in ["s/1", "s/2", "s/3", "t/1"] {
        s.put(put(p, 9, Precondition::None)).await.unwrap();
    }
    let names = |v: Vec<vaultfs::services::metadata::FileMeta>| -> Vec<String> {
        v.into_iter().map(|f| f.path).collect()
    };
    assert_eq!(names(s.scan("s/", true, 2).await.unwrap()), ["s/1", "s/2"]);
    assert_eq!(
        names(s.scan("s/2", false, 10).await.unwrap()),
        ["s/3", "t/1"]
    );
    assert_eq!(names(s.scan("s/2", true, 1).await.unwrap()), ["s/2"]);

    // The event log: gapless from 1, in commit order, one event per change.
    let all = s.events_after(0, 10_000).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=all.len() as i64).collect::<Vec<_>>());
    assert_eq!(s.latest_seq().await.unwrap(), all.len() as i64);
    assert_eq!(all[0].kind, EventKind::Created);
    assert_eq!(all[1].kind, EventKind::Updated);
    assert!(all
        .iter()
        .any(|e| e.kind == EventKind::Copied && e.from_path.as_deref() == Some("d/a")));
    assert_eq!(s.events_after(3, 2).await.unwrap().len(), 2);
    // Pruning keeps the newest and never moves the latest seq.
    let latest = s.latest_seq().await.unwrap();
    let pruned = s.prune_events(0, 3).await.unwrap();
    assert_eq!(pruned, latest as u64 - 3);
    assert_eq!(s.latest_seq().await.unwrap(), latest);
    assert_eq!(s.oldest_seq().await.unwrap(), Some(latest - 2));
    let next = s
        .put(put("d/after-prune", 7, Precondition::None))
        .await
        .unwrap();
    assert_eq!(
        kinds_after(s, latest).await[0].0,
        latest + 1,
        "seqs are never reused"
    );
    let _ = next;

    // Blobs left without references are listed and forgotten only while unreferenced.
    let unref = s.unreferenced_blobs(100).await.unwrap();
    assert!(
        unref.contains(&sha(1)) && unref.contains(&sha(2)),
        "{unref:?}"
    );
    assert!(!unref.contains(&sha(3)));
    assert!(s.forget_blob(&sha(1)).await.unwrap());
    assert!(!s.forget_blob(&sha(3)).await.unwrap(), "still referenced");
    assert!(!s.unreferenced_blobs(100).await.unwrap().contains(&sha(1)));

    // Tokens and server secrets.
    let token = TokenRecord {
        id: "0123456789ab".into(),
        label: "ci".into(),
        secret_hash: "ab".repeat(32),
        scopes: "read,write".into(),
        prefix: "ci/".into(),
        created_at: 1,
        expires_at: Some(2),
        revoked_at: None,
    };
    s.insert_token(&token).await.unwrap();
    assert!(matches!(
        s.insert_token(&token).await,
        Err(MetadataError::AlreadyExists)
    ));
    assert_eq!(s.tokens().await.unwrap(), vec![token.clone()]);
    assert!(s.revoke_token(&token.id, 5).await.unwrap());
    assert!(
        !s.revoke_token(&token.id, 6).await.unwrap(),
        "already revoked"
    );
    assert_eq!(s.tokens().await.unwrap()[0].revoked_at, Some(5));
    let k1 = s.server_secret("k", b"first").await.unwrap();
    let k2 = s.server_secret("k", b"second").await.unwrap();
    assert_eq!(
        (k1.as_slice(), k2.as_slice()),
        (b"first".as_slice(), b"first".as_slice())
    );

    // Consistent by its own audit.
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.problems, vec![], "{audit:?}");
    s.ping().await.unwrap();
}

/// Concurrent writers to one path: every write gets its own version, none is lost.
async fn concurrent_same_path(store: Arc<dyn MetadataStore>) {
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .put(put("hot/file", i + 100, Precondition::None))
                .await
                .unwrap()
                .meta
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<_>>());
    let events = store.events_after(0, 1000).await.unwrap();
    let mut event_versions: Vec<i64> = events
        .iter()
        .filter(|e| e.path == "hot/file")
        .map(|e| e.version)
        .collect();
    event_versions.sort_unstable();
    assert_eq!(event_versions, (1..=20).collect::<Vec<_>>());
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn MetadataStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMetadata::open(dir.path(), Duration::from_secs(10), 2)
        .await
        .unwrap();
    (dir, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conforms() {
    let (_dir, store) = sqlite().await;
    suite(Arc::clone(&store)).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_serializes_same_path_writers() {
    let (_dir, store) = sqlite().await;
    concurrent_same_path(Arc::clone(&store)).await;
    store.close().await;
}

/// A PostgreSQL store on a fresh database (see `common::test_postgres_url`), and its URL.
async fn postgres(test: &str) -> Option<(Arc<dyn MetadataStore>, String)> {
    let url = common::test_postgres_url(test).await?;
    let store = vaultfs::services::metadata_postgres::PostgresMetadata::open(
        &url,
        Duration::from_secs(10),
        16,
    )
    .await
    .unwrap();
    Some((Arc::new(store), url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms() {
    let Some((store, _)) = postgres("postgres_conforms").await else {
        return;
    };
    suite(Arc::clone(&store)).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serializes_same_path_writers_across_replicas() {
    let Some((store, url)) = postgres("postgres_serializes_same_path_writers").await else {
        return;
    };
    // Two stores on one database: two replicas' connection pools.
    let other: Arc<dyn MetadataStore> = Arc::new(
        vaultfs::services::metadata_postgres::PostgresMetadata::open(
            &url,
            Duration::from_secs(10),
            16,
        )
        .await
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let s = if i % 2 == 0 {
            Arc::clone(&store)
        } else {
            Arc::clone(&other)
        };
        tasks.push(tokio::spawn(async move {
            s.put(put("hot/file", i + 100, Precondition::None))
                .await
                .unwrap()
                .meta
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<_>>());
    // The log is gapless and in commit order: versions rise with seqs.
    let events = other.events_after(0, 1000).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let versions_by_seq: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions_by_seq, (1..=20).collect::<Vec<_>>());
    // Opposite moves through the two pools (a -> b while b -> a) never deadlock: each pair
    // ends within the deadline, one move wins, and the store stays consistent.
    for round in 0..20 {
        let (pa, pb) = (format!("m/{round}/a"), format!("m/{round}/b"));
        let a = store
            .put(put(&pa, 1, Precondition::None))
            .await
            .unwrap()
            .meta;
        let b = other
            .put(put(&pb, 2, Precondition::None))
            .await
            .unwrap()
            .meta;
        let (r1, r2) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                store.rename(&a.id, &pa, &pb, true),
                other.rename(&b.id, &pb, &pa, true)
            )
        })
        .await
        .expect("opposite moves finished");
        let ok =
            |r: &Result<_, MetadataError>| r.is_ok() || matches!(r, Err(MetadataError::NotFound));
        assert!(ok(&r1) && ok(&r2), "round {round}: {r1:?} {r2:?}");
        assert!(r1.is_ok() || r2.is_ok(), "round {round}: one move wins");
    }
    assert!(other.audit().await.unwrap().problems.is_empty());
    store.close().await;
    other.close().await;
}

/// Blob fences exclude across replicas: a commit's shared fence keeps another replica's
/// collection (exclusive) out until it drops; shared fences coexist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blob_fences_exclude_across_replicas() {
    use vaultfs::services::metadata_postgres::PostgresMetadata;
    let Some((first, url)) = postgres("postgres_blob_fences_exclude_across_replicas").await else {
        return;
    };
    first.close().await;
    let open = || PostgresMetadata::open(&url, Duration::from_millis(500), 4);
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let x = sha(42);
    let upload_a = a.fence_blob(&x, false).await.unwrap();
    let upload_b = b.fence_blob(&x, false).await.unwrap();
    // Collection elsewhere waits out its deadline while a commit holds the blob.
    let t0 = std::time::Instant::now();
    assert!(matches!(
        b.fence_blob(&x, true).await,
        Err(MetadataError::Busy)
    ));
    assert!(t0.elapsed() >= Duration::from_millis(450));
    // Other blobs are not affected.
    drop(b.fence_blob(&sha(43), true).await.unwrap());
    drop(upload_b);
    assert!(
        matches!(b.fence_blob(&x, true).await, Err(MetadataError::Busy)),
        "A still holds it"
    );
    drop(upload_a);
    let collect = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match b.fence_blob(&x, true).await {
                Ok(f) => return f,
                Err(MetadataError::Busy) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("collection proceeds once the commits are done");
    // And while it collects, a new commit of the same content waits.
    assert!(matches!(
        a.fence_blob(&x, false).await,
        Err(MetadataError::Busy)
    ));
    drop(collect);
    // Callers cancelled while their fence is being taken (a client gone mid-commit) leave
    // nothing held behind.
    let y = sha(44);
    for _ in 0..30 {
        let _ = tokio::time::timeout(Duration::from_micros(300), a.fence_blob(&y, false)).await;
    }
    let free = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if b.fence_blob(&y, true).await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(free.is_ok(), "a cancelled fence was released");
    a.close().await;
    b.close().await;
}
