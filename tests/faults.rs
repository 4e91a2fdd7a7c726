//! One injected I/O failure per point of the upload path: the request fails with a 5xx and is
//! never acknowledged; a failure before the metadata commit leaves nothing visible and no temp
//! file or stray blob; one after it leaves the file complete; the next upload succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::{data, eventually, sha256_hex, TestServer};
use vaultfs::faults::{arm, Point};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_point_fails_cleanly_and_the_next_upload_succeeds() {
    // Own process: an armed fault point fails every upload in the process.
    if !common::isolated(
        module_path!(),
        "every_fault_point_fails_cleanly_and_the_next_upload_succeeds",
    )
    .await
    {
        return;
    }
    let (_d, s) = TestServer::start().await;
    let points = [
        (Point::BeforeTempWrite, false),
        (Point::AfterTempWrite, false),
        (Point::BeforeFsync, false),
        (Point::AfterFsync, false),
        (Point::BeforeRename, false),
        (Point::AfterRename, false),
        (Point::BeforeMetadataCommit, false),
        (Point::AfterMetadataCommit, true),
        (Point::BeforeEventPublish, true),
    ];
    let mut committed = 0;
    for (i, (point, commits)) in points.into_iter().enumerate() {
        let blobs_before = s.blob_count().await;
        let body = data(300_000, 100 + i as u64);
        let path = format!("fault/{point:?}");
        arm(Some(point));
        let r = s.upload(&path, body.clone()).await;
        arm(None);
        assert!(r.status().is_server_error(), "{point:?}: {}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "internal", "{point:?}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap().contains("injected"),
            "details are not leaked"
        );

        let (status, got) = s.get_bytes(&format!("/api/v1/fs/{path}")).await;
        if commits {
            // Committed before the failure: complete, never partial.
            assert_eq!(
                (status, sha256_hex(&got)),
                (200, sha256_hex(&body)),
                "{point:?}"
            );
            committed += 1;
        } else {
            assert_eq!(status, 404, "{point:?}: nothing visible");
            assert!(
                eventually(Duration::from_secs(5), || async {
                    s.blob_count().await == blobs_before
                })
                .await,
                "{point:?}: no stray blob"
            );
        }
        assert!(
            eventually(Duration::from_secs(5), || async {
                s.temp_count().await == 0
            })
            .await,
            "{point:?}: no temp file"
        );
        // The next request succeeds.
        let next = s
            .upload(&format!("{path}-next"), data(1000, 900 + i as u64))
            .await;
        assert_eq!(next.status(), 201, "{point:?}");
        committed += 1;
    }
    // The event log holds exactly the committed uploads, gapless.
    let (_, events) = s.get_json("/api/v1/events?since=0&limit=1000").await;
    let seqs: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=committed).collect::<Vec<i64>>());
    s.stop().await;
}
