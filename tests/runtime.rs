//! Invariants 2 and 3 at run time: the watchdog reports a blocked runtime; every handler and
//! service future is `Send`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::Duration;

use common::TestServer;

/// On a single-threaded runtime (the server and this test share it), a 200 ms blocking call is
/// exactly the escalation's second root cause. The watchdog must report it within a second.
#[tokio::test(flavor = "current_thread")]
async fn watchdog_reports_a_blocked_runtime_within_a_second() {
    let (_dir, s) = TestServer::start().await;
    // A busy CI machine may already have stalled during start-up: count new stalls only.
    let (_, before) = s.get_json("/api/v1/admin/runtime").await;
    let stalls_before = before["stall"]["stalls_over_threshold"].as_u64().unwrap();

    let injected = std::time::Instant::now();
    tokio::spawn(async {
        // Deliberately blocking: the bug the watchdog exists to catch.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(200));
    });
    tokio::task::yield_now().await;

    let mut reported = None;
    while injected.elapsed() < Duration::from_secs(1) {
        let (_, snap) = s.get_json("/api/v1/admin/runtime").await;
        if snap["stall"]["stalls_over_threshold"].as_u64().unwrap() > stalls_before
            && snap["stall"]["max_delay_ms"].as_f64().unwrap() >= 150.0
        {
            reported = Some(snap);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = reported.expect("the watchdog did not report the stall within a second");
    assert!(
        snap["stall"]["stalls_over_threshold"].as_u64().unwrap() >= 1,
        "{snap}"
    );
    s.stop().await;
}

fn assert_send<T: Send>(_: &T) {}

/// Invariant 3: compile-time proof that handler and service futures are `Send`. The closure
/// is never called; type-checking it is the test (a non-`Send` future fails the build).
#[test]
#[allow(unreachable_code, unused_variables, clippy::diverging_sub_expression)]
fn handler_and_service_futures_are_send() {
    use axum::extract::{Request, State};
    use vaultfs::app::AppState;
    use vaultfs::handlers::{self, ApiJson, ApiPath, ApiQuery};
    use vaultfs::services::files::{FileService, RequestCtx};
    use vaultfs::services::lock_manager::{LockManager, LockOwner, LockRequest};
    use vaultfs::services::metadata::{MetadataStore, Precondition, PutRequest};
    use vaultfs::services::storage::{BlobStore, BlobWriter, StagedBlob};

    let _never_called = || {
        let state: AppState = todo!();
        let ctx: RequestCtx = todo!();
        let req: Request = todo!();
        let path_buf: std::path::PathBuf = todo!();
        let id: ApiPath<String> = todo!();
        // Handlers.
        assert_send(&handlers::health::healthz(State(state.clone())));
        assert_send(&handlers::health::readyz(State(state.clone())));
        assert_send(&vaultfs::handlers::metrics::render(State(state.clone())));
        assert_send(&handlers::upload::upload(
            State(state.clone()),
            ctx.clone(),
            ApiQuery(todo!()),
            todo!(),
        ));
        assert_send(&handlers::files::get_content(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::files::get_by_path(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::files::get_meta(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        // `DELETE /api/v1/files/{id}` (to the trash, or `?permanent=true`) and the other
        // version and trash handlers.
        assert_send(&handlers::versions::delete_file(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::fs::delete(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::versions::list(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::versions::content(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::versions::restore(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::versions::trash_list(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::versions::trash_restore(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::versions::trash_purge(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::versions::batch_restore(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::files::move_file(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            ApiJson(todo!()),
        ));
        assert_send(&handlers::files::copy_file(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            ApiJson(todo!()),
        ));
        assert_send(&handlers::files::stat(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::list::list(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::admin::locks(State(state.clone())));
        assert_send(&handlers::admin::runtime(State(state.clone())));
        assert_send(&handlers::admin::fsck(State(state.clone()), todo!()));
        assert_send(&handlers::sync::sync(
            State(state.clone()),
            ctx.clone(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::sync::events(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::share::create(
            State(state.clone()),
            ctx.clone(),
            todo!(),
        ));
        assert_send(&handlers::share::download(
            State(state.clone()),
            todo!(),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::admin::list_tokens(State(state.clone())));
        assert_send(&handlers::admin::create_token(
            State(state.clone()),
            todo!(),
        ));
        assert_send(&handlers::admin::revoke_token(
            State(state.clone()),
            todo!(),
        ));
        assert_send(&handlers::authz::authorize(
            State(state.clone()),
            todo!(),
            todo!(),
        ));
        assert_send(&handlers::request_id(req, todo!()));
        // Services.
        let files: FileService = todo!();
        let path: vaultfs::paths::VPath = todo!();
        let staged: StagedBlob = todo!();
        assert_send(&files.begin_upload());
        assert_send(&files.precheck(&path, &Precondition::None));
        assert_send(&files.commit_upload(&path, staged, String::new(), Precondition::None, &ctx));
        assert_send(&files.meta_by_id("", &ctx));
        assert_send(&files.meta_by_path(&path, &ctx));
        assert_send(&files.read_content(todo!(), 0, 1));
        assert_send(&files.delete("", &Precondition::None, &ctx));
        assert_send(&files.move_file("", &path, false, &ctx));
        assert_send(&files.copy_file("", &path, false, &ctx));
        assert_send(&files.list("", true, None, 10, &ctx));
        assert_send(&files.is_orphan(""));
        assert_send(&vaultfs::services::fsck::run_online(
            &files, &path_buf, false,
        ));
        assert_send(&files.collect_blob(""));
        assert_send(&files.collect_unreferenced());
        let locks: LockManager = todo!();
        let owner: LockOwner = todo!();
        assert_send(&locks.acquire(LockRequest::new(), owner.clone()));
        assert_send(&locks.acquire_with_timeout(LockRequest::new(), owner, Duration::ZERO));
        let blobs: BlobStore = todo!();
        let mut writer: BlobWriter = todo!();
        assert_send(&blobs.begin(1));
        assert_send(&blobs.commit(todo!()));
        assert_send(&blobs.open_blob(""));
        assert_send(&blobs.delete_blob(""));
        assert_send(&writer.write(todo!()));
        assert_send(&writer.finish(&blobs));
        let meta: &dyn MetadataStore = todo!();
        let put: PutRequest = todo!();
        assert_send(&meta.put(put));
        assert_send(&meta.events_after(0, 1));
        let notifier: vaultfs::services::notification::Notifier = todo!();
        let mut sub: vaultfs::services::notification::Subscription = todo!();
        assert_send(&notifier.subscribe(None, Default::default()));
        assert_send(&notifier.poll(None, &Default::default(), 1, Duration::ZERO));
        assert_send(&sub.next());
        assert_send(&AppState::open(todo!()));
        assert_send(&vaultfs::server::run(todo!(), todo!(), async {}));
    };
}
