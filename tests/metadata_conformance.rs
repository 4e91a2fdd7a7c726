//! One conformance suite for every `MetadataStore` implementation: the behaviour the services
//! rely on (versions, preconditions, reference counts, the gapless event log, tokens), checked
//! against the trait only. Each behaviour is one function, run on a fresh store of every
//! backend by `conformance!` as `sqlite::NAME` and `postgres::NAME` (PostgreSQL when
//! `VAULTFS_TEST_POSTGRES_URL` is set, else one SKIPPED line), so a failure names the rule
//! it broke.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use vaultfs::services::metadata::postgres::PostgresMetadata;
use vaultfs::services::metadata::sqlite::SqliteMetadata;
use vaultfs::services::metadata::{
    now_ms, EtagMatch, EventKind, FileMeta, LevelQuery, ListSort, MetadataError, MetadataStore,
    Precondition, PutOutcome, PutRequest, RetentionPolicy, RetentionRule, TokenRecord,
    VersionsKeep,
};
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
        s3: None,
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

fn pf<T>(r: Result<T, MetadataError>) -> bool {
    matches!(r, Err(MetadataError::PreconditionFailed))
}

fn names(v: Vec<FileMeta>) -> Vec<String> {
    v.into_iter().map(|f| f.path).collect()
}

/// `d/a` written three times (blobs 1, 2, 3): its three outcomes.
async fn a_written_three_times(s: &dyn MetadataStore) -> [PutOutcome; 3] {
    let a1 = s.put(put("d/a", 1, Precondition::None)).await.unwrap();
    let a2 = s.put(put("d/a", 2, Precondition::None)).await.unwrap();
    let a3 = s.put(put("d/a", 3, Precondition::None)).await.unwrap();
    [a1, a2, a3]
}

/// Every kind of write, failed ones included (the history the log and audit rules see).
async fn every_kind_of_write(s: &dyn MetadataStore) {
    let [a1, ..] = a_written_three_times(s).await;
    assert!(pf(s.put(put("d/a", 3, Precondition::MustNotExist)).await));
    let b = s
        .put(put("d/b", 3, Precondition::MustNotExist))
        .await
        .unwrap();
    s.delete(&b.meta.id, "d/b", &Precondition::None)
        .await
        .unwrap();
    s.copy(&a1.meta.id, "d/a", "d/c", false).await.unwrap();
    let e = s.put(put("d/e", 5, Precondition::None)).await.unwrap();
    s.rename(&e.meta.id, "d/e", "d/c", true).await.unwrap();
    s.put_many(vec![
        put("m/1", 6, Precondition::None),
        put("m/1", 7, Precondition::None),
    ])
    .await
    .unwrap();
    let failed = s
        .put_many(vec![
            put("m/2", 8, Precondition::None),
            put("m/1", 8, Precondition::MustNotExist),
        ])
        .await;
    assert!(pf(failed));
}

// ---------------------------------------------------------------------------------------
// The behaviours.

async fn empty_store_has_an_empty_log(s: &dyn MetadataStore) {
    assert_eq!(s.latest_seq().await.unwrap(), 0);
    assert_eq!(s.oldest_seq().await.unwrap(), None);
}

/// Create, then replace: same id, next version, the old blob released.
async fn put_creates_then_replaces(s: &dyn MetadataStore) {
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
}

/// `If-None-Match: *` and `If-Match` on puts.
async fn put_preconditions(s: &dyn MetadataStore) {
    s.put(put("d/a", 1, Precondition::None)).await.unwrap();
    s.put(put("d/a", 2, Precondition::None)).await.unwrap();
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
    assert_eq!(
        s.latest_seq().await.unwrap(),
        3,
        "a refused put logs nothing"
    );
}

/// Shared blobs: counted per file, released with the last; deletes find the file by id at
/// its locked path.
async fn shared_blobs_and_deletes(s: &dyn MetadataStore) {
    let [a1, ..] = a_written_three_times(s).await;
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
    let only = Precondition::MustMatch(EtagMatch::OneOf(vec![sha(1)]));
    assert!(pf(s.delete(&a1.meta.id, "d/a", &only).await));
    let last = s
        .delete(&a1.meta.id, "d/a", &Precondition::None)
        .await
        .unwrap();
    assert_eq!(last.released, [sha(3)], "the last user releases the blob");
}

/// Copy: a new file sharing the blob; onto itself or an existing file without overwrite:
/// refused.
async fn copy_shares_the_blob(s: &dyn MetadataStore) {
    let [a1, ..] = a_written_three_times(s).await;
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
}

/// Move: onto an existing file only with overwrite (which deletes it first, its own event);
/// a move onto its own path logs nothing.
async fn rename_overwrites_only_when_asked(s: &dyn MetadataStore) {
    let [a1, ..] = a_written_three_times(s).await;
    s.copy(&a1.meta.id, "d/a", "d/c", false).await.unwrap();
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
}

/// Scan: path order, inclusive or not, limited.
async fn scan_in_path_order(s: &dyn MetadataStore) {
    for p in ["s/1", "s/2", "s/3", "t/1"] {
        s.put(put(p, 9, Precondition::None)).await.unwrap();
    }
    assert_eq!(names(s.scan("s/", true, 2).await.unwrap()), ["s/1", "s/2"]);
    assert_eq!(
        names(s.scan("s/2", false, 10).await.unwrap()),
        ["s/3", "t/1"]
    );
    assert_eq!(names(s.scan("s/2", true, 1).await.unwrap()), ["s/2"]);
}

/// Every page of a level listing of `prefix` (recursive when it ends in `*`), `limit` items
/// at a time: (folders, files).
async fn level_pages(
    s: &dyn MetadataStore,
    prefix: &str,
    sort: ListSort,
    desc: bool,
    filter: Option<&str>,
    limit: usize,
) -> (Vec<String>, Vec<FileMeta>) {
    let (mut folders, mut files, mut after) = (Vec::new(), Vec::new(), None);
    for _ in 0..10_000 {
        let q = LevelQuery {
            prefix: prefix.trim_end_matches('*'),
            recursive: prefix.ends_with('*'),
            sort,
            desc,
            filter,
            after: after.take(),
            limit,
        };
        let page = s.list_level(&q).await.unwrap();
        assert!(page.prefixes.len() + page.entries.len() <= limit);
        folders.extend(page.prefixes);
        files.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => return (folders, files),
        }
    }
    panic!("the listing never ended");
}

/// A level listing (issue 22): folders first, then every file directly in the folder
/// exactly once, in each sort and order, across pages that end among the folders and among
/// the files; ties are broken by path.
async fn level_listing_pages_every_sort(s: &dyn MetadataStore) {
    let mut reqs = Vec::new();
    for i in 0..1000u64 {
        reqs.push(PutRequest {
            path: format!("L/f{i:04}"),
            blob: BlobRef {
                sha256: format!("{i:064x}"),
                // Sizes with duplicates, so the path tiebreak matters.
                size: (i * 7919) % 301,
            },
            content_type: "application/octet-stream".to_string(),
            precondition: Precondition::None,
            s3: None,
        });
    }
    for chunk in reqs.chunks(100) {
        s.put_many(chunk.to_vec()).await.unwrap();
    }
    // Versions 1 to 3, and modified times spread over many writes.
    let again: Vec<PutRequest> = reqs.iter().step_by(7).cloned().collect();
    s.put_many(again.clone()).await.unwrap();
    s.put_many(again.into_iter().step_by(3).collect())
        .await
        .unwrap();
    for p in [
        "L/sub1/x",
        "L/sub2/y/z",
        "L/sub3/a",
        "L/sub3/b",
        "L0",
        "K/f",
        "Lz/f",
        "L",
    ] {
        s.put(put(p, 9, Precondition::None)).await.unwrap();
    }
    let direct: Vec<FileMeta> = s
        .scan("L/", true, 5000)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.path.starts_with("L/") && !f.path[2..].contains('/'))
        .collect();
    assert_eq!(direct.len(), 1000);
    let sub = ["L/sub1/", "L/sub2/", "L/sub3/"];
    for sort in [
        ListSort::Name,
        ListSort::Size,
        ListSort::Modified,
        ListSort::Version,
    ] {
        for desc in [false, true] {
            let mut want = direct.clone();
            want.sort_by(|a, b| {
                let o = (sort.key(a), &a.path).cmp(&(sort.key(b), &b.path));
                if desc {
                    o.reverse()
                } else {
                    o
                }
            });
            let want: Vec<String> = want.into_iter().map(|f| f.path).collect();
            let mut folders: Vec<String> = sub.iter().map(|f| f.to_string()).collect();
            if desc && sort == ListSort::Name {
                folders.reverse();
            }
            for limit in [7, 1000] {
                let (got_folders, got) = level_pages(s, "L/", sort, desc, None, limit).await;
                assert_eq!(got_folders, folders, "{sort:?} desc={desc} limit={limit}");
                assert_eq!(names(got), want, "{sort:?} desc={desc} limit={limit}");
            }
        }
    }
    // Recursive: every file below the prefix, no folders, across pages.
    let mut below: Vec<FileMeta> = s
        .scan("L/", true, 5000)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.path.starts_with("L/"))
        .collect();
    below.sort_by(|a, b| (b.size, &b.path).cmp(&(a.size, &a.path)));
    let (folders, files) = level_pages(s, "L/*", ListSort::Size, true, None, 7).await;
    assert_eq!(folders.len(), 0);
    assert_eq!(names(files), names(below));
    let (_, files) = level_pages(s, "L/*", ListSort::Name, false, Some("SUB3"), 1).await;
    assert_eq!(names(files), ["L/sub3/a", "L/sub3/b"]);
    // A prefix that ends inside a name: the entries of its folder whose names start so.
    let (folders, files) = level_pages(s, "L/su", ListSort::Size, false, None, 2).await;
    assert_eq!((folders, files.len()), (sub.map(String::from).to_vec(), 0));
    let mut f00: Vec<FileMeta> = direct
        .iter()
        .filter(|f| f.path.starts_with("L/f00"))
        .cloned()
        .collect();
    f00.sort_by(|a, b| (a.size, &a.path).cmp(&(b.size, &b.path)));
    let (folders, files) = level_pages(s, "L/f00", ListSort::Size, false, None, 9).await;
    assert_eq!((folders.len(), names(files)), (0, names(f00)));
    let (folders, _) = level_pages(s, "L/s", ListSort::Name, true, Some("UB2"), 1).await;
    assert_eq!(folders, ["L/sub2/"]);
    // The root level and a folder's own level.
    let (folders, files) = level_pages(s, "", ListSort::Size, true, None, 2).await;
    assert_eq!(
        (folders, names(files)),
        (
            vec!["K/".into(), "L/".into(), "Lz/".into()],
            vec!["L0".into(), "L".into()]
        )
    );
    let (folders, files) = level_pages(s, "L/sub3/", ListSort::Name, true, None, 1).await;
    assert_eq!(
        (folders.len(), names(files)),
        (0, vec!["L/sub3/b".into(), "L/sub3/a".into()])
    );
}

/// The level listing's filter: names containing the text, ASCII case-insensitively, LIKE's
/// wildcards and escape character taken literally, folders included, across pages.
async fn level_listing_filters_names(s: &dyn MetadataStore) {
    for p in [
        "F/report-2024.txt",
        "F/REPORT-2025.log",
        "F/notes.txt",
        "F/a%b",
        "F/a_b",
        "F/axb",
        "F/a\\b",
        "F/Reports/q1.txt",
        "F/other/report.txt",
        "F/x/report",
        "Freport",
    ] {
        s.put(put(p, 9, Precondition::None)).await.unwrap();
    }
    let filtered = |text: &'static str, sort: ListSort, desc: bool| async move {
        let (folders, files) = level_pages(s, "F/", sort, desc, Some(text), 1).await;
        (folders, names(files))
    };
    assert_eq!(
        filtered("rEpOrT", ListSort::Name, false).await,
        (
            vec!["F/Reports/".to_string()],
            vec![
                "F/REPORT-2025.log".to_string(),
                "F/report-2024.txt".to_string()
            ]
        )
    );
    assert_eq!(
        filtered("report", ListSort::Name, true).await.1,
        ["F/report-2024.txt", "F/REPORT-2025.log"]
    );
    assert_eq!(filtered("%", ListSort::Name, false).await.1, ["F/a%b"]);
    assert_eq!(filtered("_", ListSort::Size, false).await.1, ["F/a_b"]);
    assert_eq!(filtered("\\", ListSort::Name, false).await.1, ["F/a\\b"]);
    assert_eq!(filtered("a_", ListSort::Modified, true).await.1, ["F/a_b"]);
    assert_eq!(
        filtered("F/", ListSort::Name, false).await,
        (vec![], vec![])
    );
    assert_eq!(
        filtered("zzz", ListSort::Version, false).await,
        (vec![], vec![])
    );
}

/// The event log: gapless from 1, in commit order, one event per change.
async fn event_log_is_gapless_and_ordered(s: &dyn MetadataStore) {
    every_kind_of_write(s).await;
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
}

/// `events_matching`: a seq window, filtered by path or source path prefix in byte order.
async fn events_matching_filters_a_window_by_prefix(s: &dyn MetadataStore) {
    every_kind_of_write(s).await;
    s.put(put("d0", 9, Precondition::None)).await.unwrap();
    s.put(put("d/ü", 9, Precondition::None)).await.unwrap();
    let latest = s.latest_seq().await.unwrap();
    let all = s.events_after(0, 10_000).await.unwrap();
    let under = |p: &str| -> Vec<i64> {
        all.iter()
            .filter(|e| {
                e.path.starts_with(p) || e.from_path.as_deref().is_some_and(|f| f.starts_with(p))
            })
            .map(|e| e.seq)
            .collect()
    };
    let seqs = |v: Vec<vaultfs::services::metadata::Event>| -> Vec<i64> {
        v.iter().map(|e| e.seq).collect()
    };
    for prefix in ["", "d/", "m/", "d/c", "zzz/"] {
        let got = s.events_matching(0, latest, prefix, 1000).await.unwrap();
        assert_eq!(seqs(got), under(prefix), "prefix {prefix:?}");
    }
    assert!(!under("d/").contains(&(latest - 1)), "d0 is not under d/");
    // The window bounds it on both sides, and the limit cuts it.
    let window = s.events_matching(2, 4, "", 1000).await.unwrap();
    assert_eq!(seqs(window), [3, 4]);
    let first = s.events_matching(0, latest, "d/", 2).await.unwrap();
    assert_eq!(seqs(first), under("d/")[..2]);
    // A move out of a prefix is under it by its source path.
    let moved = all.iter().find(|e| e.kind == EventKind::Moved).unwrap();
    let from = moved.from_path.clone().unwrap();
    let got = s
        .events_matching(moved.seq - 1, moved.seq, &from, 10)
        .await
        .unwrap();
    assert_eq!(seqs(got), [moved.seq]);
}

/// Pruning keeps the newest and never moves the latest seq; seqs are never reused.
async fn prune_keeps_the_newest(s: &dyn MetadataStore) {
    every_kind_of_write(s).await;
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
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.problems, vec![], "{audit:?}");
}

/// Blobs left without references are listed and forgotten only while unreferenced.
async fn unreferenced_blobs_are_listed_and_forgotten(s: &dyn MetadataStore) {
    let [a1, ..] = a_written_three_times(s).await;
    s.copy(&a1.meta.id, "d/a", "d/c", false).await.unwrap();
    let unref = s.unreferenced_blobs(100).await.unwrap();
    assert!(
        unref.contains(&sha(1)) && unref.contains(&sha(2)),
        "{unref:?}"
    );
    assert!(!unref.contains(&sha(3)));
    assert!(s.forget_blob(&sha(1)).await.unwrap());
    assert!(!s.forget_blob(&sha(3)).await.unwrap(), "still referenced");
    assert!(!s.unreferenced_blobs(100).await.unwrap().contains(&sha(1)));
}

/// Tokens and server secrets.
async fn tokens_and_server_secrets(s: &dyn MetadataStore) {
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
}

/// Consistent by its own audit after every kind of write (failed ones included).
async fn audit_is_clean_after_every_kind_of_write(s: &dyn MetadataStore) {
    every_kind_of_write(s).await;
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.problems, vec![], "{audit:?}");
    assert_eq!(audit.latest_seq, s.latest_seq().await.unwrap());
    assert_eq!(audit.oldest_seq, Some(1));
    assert_eq!(audit.files, 3, "d/a, d/c, m/1");
    s.ping().await.unwrap();
}

/// `put_many`: every put in one transaction, in order (a later put sees an earlier one),
/// events on consecutive seqs.
async fn put_many_commits_all_on_consecutive_seqs(s: &dyn MetadataStore) {
    s.put(put("x/old", 1, Precondition::None)).await.unwrap();
    let before = s.latest_seq().await.unwrap();
    let out = s
        .put_many(vec![
            put("x/a", 2, Precondition::MustNotExist),
            put("x/old", 3, Precondition::MustMatch(EtagMatch::Any)),
            put("x/a", 4, Precondition::None),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    assert!(out[0].created && !out[1].created && !out[2].created);
    assert_eq!((out[0].meta.version, out[2].meta.version), (1, 2));
    assert_eq!(out[0].meta.id, out[2].meta.id);
    assert_eq!(out[1].released.as_deref(), Some(sha(1).as_str()));
    assert_eq!(out[2].released.as_deref(), Some(sha(2).as_str()));
    assert_eq!(
        kinds_after(s, before).await,
        [
            (before + 1, EventKind::Created, "x/a".to_string()),
            (before + 2, EventKind::Updated, "x/old".to_string()),
            (before + 3, EventKind::Updated, "x/a".to_string()),
        ]
    );
    assert_eq!(s.blob_refcount(&sha(4)).await.unwrap(), 1);
    assert_eq!(s.get_by_path("x/a").await.unwrap().unwrap(), out[2].meta);
    assert!(s.put_many(Vec::new()).await.unwrap().is_empty());
    assert_eq!(
        s.latest_seq().await.unwrap(),
        before + 3,
        "an empty batch logs nothing"
    );
    assert_eq!(s.audit().await.unwrap().problems, vec![]);
}

/// `put_many` is all or nothing: a failing precondition in the 2nd put leaves no row, event
/// or reference count of the 1st.
async fn put_many_rolls_back_whole(s: &dyn MetadataStore) {
    let x = s.put(put("y/x", 1, Precondition::None)).await.unwrap();
    let before = s.latest_seq().await.unwrap();
    let failed = s
        .put_many(vec![
            put("y/new", 2, Precondition::None),
            put("y/x", 3, Precondition::MustNotExist),
            put("y/other", 4, Precondition::None),
        ])
        .await;
    assert!(pf(failed));
    assert_eq!(s.latest_seq().await.unwrap(), before, "no event");
    assert_eq!(s.events_after(before, 10).await.unwrap(), vec![]);
    assert_eq!(s.get_by_path("y/new").await.unwrap(), None, "no row");
    assert_eq!(s.get_by_path("y/other").await.unwrap(), None);
    assert_eq!(s.get_by_path("y/x").await.unwrap().unwrap(), x.meta);
    for blob in [2, 3, 4] {
        assert_eq!(s.blob_refcount(&sha(blob)).await.unwrap(), 0, "blob {blob}");
    }
    assert!(
        s.unreferenced_blobs(100).await.unwrap().is_empty(),
        "no blob row is left behind"
    );
    assert_eq!(s.blob_refcount(&sha(1)).await.unwrap(), 1);
    // A replacement of the same path later in the batch failing rolls back the earlier one.
    let failed = s
        .put_many(vec![
            put("y/x", 5, Precondition::None),
            put(
                "y/x",
                6,
                Precondition::MustMatch(EtagMatch::OneOf(vec![sha(1)])),
            ),
        ])
        .await;
    assert!(pf(failed));
    assert_eq!(s.get_by_path("y/x").await.unwrap().unwrap(), x.meta);
    assert_eq!(s.latest_seq().await.unwrap(), before);
    assert_eq!(s.audit().await.unwrap().problems, vec![]);
    // The store goes on working.
    let ok = s.put(put("y/new", 2, Precondition::None)).await.unwrap();
    assert_eq!(kinds_after(s, before).await[0].0, before + 1);
    assert!(ok.created);
}

/// Concurrent writers to one path: every write gets its own version, none is lost.
async fn concurrent_same_path_writers(store: Arc<dyn MetadataStore>) {
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

/// A failing `put_many` committed in the same group as other writers' puts fails alone.
async fn failing_put_many_among_concurrent_writers(store: Arc<dyn MetadataStore>) {
    store
        .put(put("g/taken", 1, Precondition::None))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let path = format!("g/{i}");
            if i % 2 == 0 {
                store
                    .put(put(&path, 10 + i, Precondition::None))
                    .await
                    .is_ok()
            } else {
                let batch = vec![
                    put(&path, 10 + i, Precondition::None),
                    put("g/taken", 10 + i, Precondition::MustNotExist),
                ];
                pf(store.put_many(batch).await)
            }
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    for i in 0..10u8 {
        let got = store.get_by_path(&format!("g/{i}")).await.unwrap();
        assert_eq!(got.is_some(), i % 2 == 0, "g/{i}");
    }
    let all = store.events_after(0, 1000).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "1 + 5 puts, gapless");
    assert_eq!(store.audit().await.unwrap().problems, vec![]);
}

// ---------------------------------------------------------------------------------------
// Versions and the trash.

/// Keep `keep` versions, trash for an hour.
fn keeping(s: &dyn MetadataStore, keep: VersionsKeep) {
    s.set_retention(RetentionPolicy {
        versions_keep: keep,
        trash_retention_ms: Some(3_600_000),
        rules: Vec::new(),
    });
}

async fn assert_audit_clean(s: &dyn MetadataStore) -> vaultfs::services::metadata::MetadataAudit {
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.problems, vec![], "{audit:?}");
    audit
}

/// Twenty replacements with a window of 5 leave versions 16..20 (4 old rows + current);
/// the versions pushed out are released; restoring 17 makes 21 by reference.
async fn versions_window_and_restore(s: &dyn MetadataStore) {
    keeping(s, VersionsKeep::Newest(5));
    let mut released = Vec::new();
    let mut id = String::new();
    for n in 1..=20u8 {
        let o = s.put(put("v/a", n, Precondition::None)).await.unwrap();
        id = o.meta.id.clone();
        released.extend(o.released.into_iter().chain(o.released_more));
    }
    let expected: Vec<String> = (1..=15).map(sha).collect();
    assert_eq!(
        released, expected,
        "each put pushes one version out, in order"
    );
    let old: Vec<i64> = s
        .versions(&id, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(old, [19, 18, 17, 16]);
    let page: Vec<i64> = s
        .versions(&id, Some(18), 1)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(page, [17], "paged below a cursor");
    for n in 16..=20u8 {
        assert_eq!(s.blob_refcount(&sha(n)).await.unwrap(), 1, "blob {n}");
    }
    assert_eq!(s.blob_refcount(&sha(15)).await.unwrap(), 0);

    let stale = Precondition::MustMatch(EtagMatch::OneOf(vec![sha(19)]));
    assert!(pf(s.restore_version(&id, "v/a", 17, &stale).await));
    assert!(matches!(
        s.restore_version(&id, "v/a", 3, &Precondition::None).await,
        Err(MetadataError::NotFound)
    ));
    let before = s.latest_seq().await.unwrap();
    let fresh = Precondition::MustMatch(EtagMatch::OneOf(vec![sha(20)]));
    let r = s.restore_version(&id, "v/a", 17, &fresh).await.unwrap();
    assert_eq!(
        (r.meta.version, r.meta.sha256.as_str()),
        (21, sha(17).as_str())
    );
    assert_eq!(r.meta.id, id);
    assert_eq!(r.released, [sha(16)], "version 16 left the window");
    assert_eq!(
        s.blob_refcount(&sha(17)).await.unwrap(),
        2,
        "shared by 17 and 21"
    );
    let events = s.events_after(before, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].version, events[0].restored_from),
        (EventKind::Restored, 21, Some(17))
    );
    let audit = assert_audit_clean(s).await;
    assert_eq!((audit.files, audit.versions), (1, 4));
}

/// `versions_keep` 0 and 1 keep only the current version; `all` keeps every one; a
/// per-prefix rule wins over the global setting, the longest prefix over a shorter one.
async fn versions_keep_settings_and_prefix_rules(s: &dyn MetadataStore) {
    s.set_retention(RetentionPolicy {
        versions_keep: VersionsKeep::All,
        trash_retention_ms: Some(3_600_000),
        rules: vec![
            RetentionRule {
                prefix: "ci/".into(),
                versions_keep: Some(VersionsKeep::Newest(0)),
                trash_retention_ms: Some(None),
            },
            RetentionRule {
                prefix: "ci/keep/".into(),
                versions_keep: Some(VersionsKeep::Newest(2)),
                trash_retention_ms: None,
            },
        ],
    });
    let mut ids = Vec::new();
    for path in ["all/a", "ci/a", "ci/keep/a"] {
        let mut id = String::new();
        for n in 1..=4u8 {
            id = s
                .put(put(path, n, Precondition::None))
                .await
                .unwrap()
                .meta
                .id;
        }
        ids.push(id);
    }
    let counts: Vec<usize> = futures_util::future::join_all(
        ids.iter()
            .map(|id| async { s.versions(id, None, 100).await.unwrap().len() }),
    )
    .await;
    assert_eq!(counts, [3, 0, 1]);
    // ci/ has no trash: its delete is final; ci/keep/ falls back to the global trash.
    let gone = s
        .delete(&ids[1], "ci/a", &Precondition::None)
        .await
        .unwrap();
    assert!(
        gone.released.is_empty(),
        "blob 4 is still used by the others"
    );
    let kept = s
        .delete(&ids[2], "ci/keep/a", &Precondition::None)
        .await
        .unwrap();
    assert!(kept.released.is_empty());
    let trash = s.trash_entries("", None, 100, now_ms()).await.unwrap();
    let paths: Vec<&str> = trash.iter().map(|e| e.file.path.as_str()).collect();
    assert_eq!(paths, ["ci/keep/a"]);
    assert_audit_clean(s).await;
}

/// A delete moves the file and its versions to the trash (references kept, `deleted` with
/// `trash_id`); a restore brings back the same id and versions without a new version, at
/// its path or elsewhere; onto a taken path only with overwrite (the occupant is trashed).
async fn trash_delete_and_restore(s: &dyn MetadataStore) {
    keeping(s, VersionsKeep::All);
    let [_, _, a3] = a_written_three_times(s).await;
    let id = a3.meta.id.clone();
    let before = s.latest_seq().await.unwrap();
    s.delete(&id, "d/a", &Precondition::None).await.unwrap();
    assert!(s.get_by_id(&id).await.unwrap().is_none());
    assert!(
        s.scan("", true, 10).await.unwrap().is_empty(),
        "listings show live files"
    );
    let deleted = s.events_after(before, 10).await.unwrap();
    let trash = s.trash_entries("d/", None, 10, now_ms()).await.unwrap();
    assert_eq!(trash.len(), 1);
    let entry = &trash[0];
    assert_eq!(
        deleted[0].trash_id.as_deref(),
        Some(entry.trash_id.as_str())
    );
    assert_eq!(
        (entry.file.id.as_str(), entry.file.version),
        (id.as_str(), 3)
    );
    assert_eq!(entry.batch_id, None);
    assert!(entry.expires_at_ms > entry.deleted_at_ms);
    assert!(s
        .trash_entries("x/", None, 10, now_ms())
        .await
        .unwrap()
        .is_empty());
    for n in 1..=3 {
        assert_eq!(s.blob_refcount(&sha(n)).await.unwrap(), 1, "blob {n} kept");
    }
    assert_audit_clean(s).await;

    let occupant = s.put(put("d/a", 9, Precondition::None)).await.unwrap();
    assert!(matches!(
        s.restore_trash(&entry.trash_id, None, false).await,
        Err(MetadataError::AlreadyExists)
    ));
    let back = s.restore_trash(&entry.trash_id, None, true).await.unwrap();
    assert_eq!((back.meta.id.as_str(), back.meta.version), (id.as_str(), 3));
    assert_eq!(
        back.meta.created_at, a3.meta.created_at,
        "the row as it was"
    );
    assert_eq!(
        s.versions(&id, None, 10).await.unwrap().len(),
        2,
        "its versions"
    );
    let kinds: Vec<EventKind> = s
        .events_after(before + 2, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [EventKind::Deleted, EventKind::Restored],
        "occupant, then ours"
    );
    let trash = s.trash_entries("", None, 10, now_ms()).await.unwrap();
    assert_eq!(trash.len(), 1);
    assert_eq!(trash[0].file.id, occupant.meta.id);
    assert!(matches!(
        s.restore_trash(&entry.trash_id, None, false).await,
        Err(MetadataError::NotFound)
    ));
    let elsewhere = s
        .restore_trash(&trash[0].trash_id, Some("d/b"), false)
        .await
        .unwrap();
    assert_eq!(elsewhere.meta.path, "d/b");
    // A move that overwrites trashes the target too.
    s.rename(&occupant.meta.id, "d/b", "d/a", true)
        .await
        .unwrap();
    let trash = s.trash_entries("", None, 10, now_ms()).await.unwrap();
    assert_eq!(trash.len(), 1);
    assert_eq!(trash[0].file.id, id);
    assert_audit_clean(s).await;
}

/// A recursive delete trashes a tree in one transaction with one batch id (consecutive
/// `deleted`); a batch restore brings it back in one (consecutive `restored`).
async fn delete_tree_and_batch_restore(s: &dyn MetadataStore) {
    keeping(s, VersionsKeep::All);
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let path = format!("t/{i}");
        s.put(put(&path, i + 1, Precondition::None)).await.unwrap();
        ids.push(
            s.put(put(&path, i + 2, Precondition::None))
                .await
                .unwrap()
                .meta
                .id,
        );
    }
    s.put(put("tx", 1, Precondition::None)).await.unwrap();
    assert!(matches!(
        s.delete_tree("t/", &ids[1..], "b1", false).await,
        Err(MetadataError::PathChanged)
    ));
    let before = s.latest_seq().await.unwrap();
    let batch = "0123456789abcdef0123456789abcdef";
    let done = s.delete_tree("t/", &ids, batch, false).await.unwrap();
    assert_eq!(done.files.len(), 10);
    assert!(done.released.is_empty());
    let deleted = s.events_after(before, 100).await.unwrap();
    assert_eq!(deleted.len(), 10);
    assert!(deleted
        .iter()
        .all(|e| e.kind == EventKind::Deleted && e.trash_id.is_some()));
    assert_eq!(s.trash_batch(batch).await.unwrap().len(), 10);
    assert_eq!(names(s.scan("", true, 100).await.unwrap()), ["tx"]);
    assert!(matches!(
        s.restore_batch("ffffffffffffffffffffffffffffffff").await,
        Err(MetadataError::NotFound)
    ));
    let mid = s.latest_seq().await.unwrap();
    let back = s.restore_batch(batch).await.unwrap();
    assert_eq!(back.files.len(), 10);
    let restored = s.events_after(mid, 100).await.unwrap();
    let seqs: Vec<i64> = restored.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, ((mid + 1)..=(mid + 10)).collect::<Vec<_>>());
    assert!(restored.iter().all(|e| e.kind == EventKind::Restored));
    for id in &ids {
        let f = s.get_by_id(id).await.unwrap().unwrap();
        assert_eq!(f.version, 2);
        assert_eq!(s.versions(id, None, 10).await.unwrap().len(), 1);
    }
    assert!(s.trash_batch(batch).await.unwrap().is_empty());
    assert_audit_clean(s).await;
}

/// Purging and expiry drop the entry and its versions with their references; a blob a
/// live file shares is not released. An expired entry is hidden and cannot be restored.
async fn purge_and_expiry_release_blobs(s: &dyn MetadataStore) {
    keeping(s, VersionsKeep::All);
    let a = s.put(put("p/a", 1, Precondition::None)).await.unwrap();
    s.put(put("p/a", 2, Precondition::None)).await.unwrap();
    s.put(put("p/live", 2, Precondition::None)).await.unwrap();
    let b = s.put(put("p/b", 3, Precondition::None)).await.unwrap();
    s.delete(&a.meta.id, "p/a", &Precondition::None)
        .await
        .unwrap();
    let entry = s
        .trash_entries("p/", None, 10, now_ms())
        .await
        .unwrap()
        .remove(0);
    let released = s.purge_trash(&entry.trash_id).await.unwrap();
    assert_eq!(released, [sha(1)], "blob 2 is still used by p/live");
    assert!(s.trash_entry(&entry.trash_id).await.unwrap().is_none());
    assert!(matches!(
        s.purge_trash(&entry.trash_id).await,
        Err(MetadataError::NotFound)
    ));
    assert_audit_clean(s).await;

    s.set_retention(RetentionPolicy {
        versions_keep: VersionsKeep::All,
        trash_retention_ms: Some(0),
        rules: Vec::new(),
    });
    s.delete(&b.meta.id, "p/b", &Precondition::None)
        .await
        .unwrap();
    let now = now_ms() + 1;
    assert!(
        s.trash_entries("", None, 10, now).await.unwrap().is_empty(),
        "hidden"
    );
    let expired = s.trash_batch("none").await.unwrap();
    assert!(expired.is_empty());
    let stats = s.retention_stats().await.unwrap();
    assert_eq!((stats.trash_entries, stats.trash_bytes), (1, 30));
    let (n, released) = s.expire_trash(now, 10).await.unwrap();
    assert_eq!((n, released), (1, vec![sha(3)]));
    assert_eq!(s.expire_trash(now, 10).await.unwrap().0, 0);
    assert_eq!(s.retention_stats().await.unwrap().trash_entries, 0);
    assert_audit_clean(s).await;
}

/// A permanent delete bypasses the trash and drops the file's versions.
async fn permanent_delete_drops_versions(s: &dyn MetadataStore) {
    keeping(s, VersionsKeep::All);
    let [_, _, a3] = a_written_three_times(s).await;
    let gone = s
        .delete_permanently(&a3.meta.id, "d/a", &Precondition::None)
        .await
        .unwrap();
    let mut released = gone.released;
    released.sort();
    assert_eq!(released, [sha(1), sha(2), sha(3)]);
    assert!(s
        .trash_entries("", None, 10, now_ms())
        .await
        .unwrap()
        .is_empty());
    assert!(s.versions(&a3.meta.id, None, 10).await.unwrap().is_empty());
    let events = s.events_after(0, 10).await.unwrap();
    assert_eq!(
        events.last().map(|e| (e.kind, e.trash_id.clone())),
        Some((EventKind::Deleted, None))
    );
    let audit = assert_audit_clean(s).await;
    assert_eq!((audit.versions, audit.trash), (0, 0));
}

// ---------------------------------------------------------------------------------------
// The backends.

async fn sqlite() -> (tempfile::TempDir, Arc<dyn MetadataStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteMetadata::open(dir.path(), Duration::from_secs(10), 2)
        .await
        .unwrap();
    (dir, Arc::new(store))
}

/// A PostgreSQL store on a fresh database (see `common::test_postgres_url`), and its URL.
async fn postgres(test: &str) -> Option<(Arc<dyn MetadataStore>, String)> {
    let url = common::test_postgres_url(test).await?;
    let store = PostgresMetadata::open(&url, Duration::from_secs(10), 16)
        .await
        .unwrap();
    Some((Arc::new(store), url))
}

/// `sqlite::NAME` and `postgres::NAME` for each behaviour: `ref` ones take
/// `&dyn MetadataStore`, `arc` ones the shared `Arc`.
macro_rules! conformance {
    (ref: [$($r:ident),* $(,)?], arc: [$($a:ident),* $(,)?]) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $r() {
                    let (_dir, store) = super::sqlite().await;
                    super::$r(store.as_ref()).await;
                    store.close().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $a() {
                    let (_dir, store) = super::sqlite().await;
                    super::$a(Arc::clone(&store)).await;
                    store.close().await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $r() {
                    let test = concat!("postgres::", stringify!($r));
                    let Some((store, _)) = super::postgres(test).await else {
                        return;
                    };
                    super::$r(store.as_ref()).await;
                    store.close().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $a() {
                    let test = concat!("postgres::", stringify!($a));
                    let Some((store, _)) = super::postgres(test).await else {
                        return;
                    };
                    super::$a(Arc::clone(&store)).await;
                    store.close().await;
                }
            )*
        }
    };
}

conformance! {
    ref: [
        empty_store_has_an_empty_log,
        put_creates_then_replaces,
        put_preconditions,
        shared_blobs_and_deletes,
        copy_shares_the_blob,
        rename_overwrites_only_when_asked,
        scan_in_path_order,
        level_listing_pages_every_sort,
        level_listing_filters_names,
        event_log_is_gapless_and_ordered,
        events_matching_filters_a_window_by_prefix,
        prune_keeps_the_newest,
        unreferenced_blobs_are_listed_and_forgotten,
        tokens_and_server_secrets,
        audit_is_clean_after_every_kind_of_write,
        put_many_commits_all_on_consecutive_seqs,
        put_many_rolls_back_whole,
        versions_window_and_restore,
        versions_keep_settings_and_prefix_rules,
        trash_delete_and_restore,
        delete_tree_and_batch_restore,
        purge_and_expiry_release_blobs,
        permanent_delete_drops_versions,
    ],
    arc: [concurrent_same_path_writers, failing_put_many_among_concurrent_writers]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_serializes_same_path_writers_across_replicas() {
    let Some((store, url)) = postgres("postgres_serializes_same_path_writers").await else {
        return;
    };
    // Two stores on one database: two replicas' connection pools.
    let other: Arc<dyn MetadataStore> = Arc::new(
        PostgresMetadata::open(&url, Duration::from_secs(10), 16)
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

/// The rows a database of the previous release holds (its migrations are the same `.sql`
/// files, with the same `schema_migrations` versions): one file, its blob, its event.
const PREVIOUS_RELEASE_ROWS: &[&str] = &[
    "INSERT INTO files (id, path, size, sha256, version, content_type, created_at, modified_at)
     VALUES ('f1', 'old/a', 10, '0101010101010101010101010101010101010101010101010101010101010101',
             1, 'text/plain', 1000, 1000)",
    "INSERT INTO blobs (sha256, size, refcount)
     VALUES ('0101010101010101010101010101010101010101010101010101010101010101', 10, 1)",
    "INSERT INTO events (seq, kind, file_id, path, from_path, version, size, sha256, at)
     VALUES (1, 'created', 'f1', 'old/a', NULL, 1, 10,
             '0101010101010101010101010101010101010101010101010101010101010101', 1000)",
];

/// A store opened on a database of the previous release keeps its data and goes on working.
async fn previous_release_data_still_works(s: &dyn MetadataStore) {
    let old = s.get_by_path("old/a").await.unwrap().unwrap();
    assert_eq!((old.id.as_str(), old.version, old.size), ("f1", 1, 10));
    assert_eq!(s.latest_seq().await.unwrap(), 1);
    let next = s.put(put("old/a", 2, Precondition::None)).await.unwrap();
    assert_eq!((next.meta.id.as_str(), next.meta.version), ("f1", 2));
    assert_eq!(next.released.as_deref(), Some(sha(1).as_str()));
    assert_eq!(
        kinds_after(s, 1).await[0],
        (2, EventKind::Updated, "old/a".into())
    );
    assert_eq!(s.audit().await.unwrap().problems, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_opens_a_database_of_the_previous_release() {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    let dir = tempfile::tempdir().unwrap();
    let mut conn = SqliteConnectOptions::new()
        .filename(dir.path().join("meta.db"))
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    let previous = [
        include_str!("../src/services/metadata/migrations/sqlite/0001_files_blobs_events.sql"),
        include_str!("../src/services/metadata/migrations/sqlite/0002_tokens_secrets.sql"),
    ];
    sqlx::query(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (i, sql) in previous.iter().enumerate() {
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        sqlx::query("INSERT INTO schema_migrations VALUES (?, 0)")
            .bind(i as i64 + 1)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for row in PREVIOUS_RELEASE_ROWS {
        sqlx::query(row).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    let store = SqliteMetadata::open(dir.path(), Duration::from_secs(10), 2)
        .await
        .unwrap();
    previous_release_data_still_works(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrates_a_database_of_the_previous_release_forward() {
    use sqlx::Connection;
    let Some(url) = common::test_postgres_url("postgres_migrates_a_database_forward").await else {
        return;
    };
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let v1 = include_str!("../src/services/metadata/migrations/postgres/0001_initial.sql");
    for statement in v1.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    sqlx::query("INSERT INTO schema_migrations VALUES (1, 0)")
        .execute(&mut conn)
        .await
        .unwrap();
    for row in PREVIOUS_RELEASE_ROWS {
        sqlx::query(row).execute(&mut conn).await.unwrap();
    }
    sqlx::query("UPDATE event_counter SET seq = 1 WHERE id = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let store = PostgresMetadata::open(&url, Duration::from_secs(10), 4)
        .await
        .unwrap();
    previous_release_data_still_works(&store).await;
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // The highest migration this binary has (each file is `NNNN_name.sql`).
    let mut dir = tokio::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/services/metadata/migrations/postgres"),
    )
    .await
    .unwrap();
    let mut highest = 0;
    while let Some(entry) = dir.next_entry().await.unwrap() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.get(..4).and_then(|n| n.parse::<i64>().ok()) {
            highest = highest.max(n);
        }
    }
    assert_eq!(version, highest, "migrated forward");
    let indexes: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_indexes WHERE tablename = 'events'
         AND indexname IN ('events_path_bytes', 'events_from_path_bytes')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(indexes, 2);
    store.close().await;
    conn.close().await.unwrap();
}
