//! Wiring: state, router, and [`run`], which serves on a given listener until `shutdown`
//! resolves. Tests call `run` on `127.0.0.1:0`; the binary calls it with the configured address.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::AppError;
use crate::handlers::{self, admin, files, health, list, sync, upload};
use crate::services::files::FileService;
use crate::services::lock_manager::LockManager;
use crate::services::metadata::{MetadataError, MetadataStore};
use crate::services::metadata_sqlite::SqliteMetadata;
use crate::services::notification::{Notifier, Retention};
use crate::services::storage::{BlobStore, StorageError};
use crate::services::ServiceError;
use crate::watchdog::StallMonitor;

/// How often the watchdog probes the runtime, and the delay it reports as a stall.
const STALL_PROBE_INTERVAL: Duration = Duration::from_millis(20);
const STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// Largest JSON request body (move/copy requests).
const MAX_JSON_BODY: usize = 64 * 1024;
/// Read-only SQLite connections.
const METADATA_READERS: u32 = 4;

/// Shared by every handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub files: FileService,
    pub config: Arc<Config>,
    /// Turns true when the server begins shutting down (sync streams close with 1001).
    pub shutdown: watch::Receiver<bool>,
    shutdown_trigger: Arc<watch::Sender<bool>>,
    /// Scheduling-delay probe of the runtime serving this state.
    pub stall: StallMonitor,
    /// Holds the data directory's exclusive lock for the life of the server.
    _data_dir_lock: Arc<std::fs::File>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl AppState {
    /// Opens the data directory: lock file, blob store (sweeping temp files), metadata
    /// (running migrations), then collects blobs left unreferenced by a crash.
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        let dir = &config.data_dir;
        let data_dir_error = |reason: String| ServerError::DataDir {
            path: dir.display().to_string(),
            reason,
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| data_dir_error(format!("cannot create: {e}")))?;
        let lock_file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .await
            .map_err(|e| data_dir_error(format!("cannot open LOCK: {e}")))?
            .into_std()
            .await;
        lock_file.try_lock().map_err(|_| {
            data_dir_error("in use by another VaultFS process (LOCK is held)".to_string())
        })?;

        let storage = BlobStore::open(dir).await?;
        let metadata: Arc<dyn MetadataStore> =
            Arc::new(SqliteMetadata::open(dir, config.metadata_timeout, METADATA_READERS).await?);
        let locks = LockManager::new(config.lock_timeout);
        let (shutdown_trigger, shutdown) = watch::channel(false);
        let retention = Retention {
            max_age: config.events_retention,
            max_events: config.events_max,
            prune_every: config.events_prune_interval,
        };
        let notifier = Notifier::start(Arc::clone(&metadata), retention, shutdown.clone()).await?;
        let gate = crate::services::files::UploadGate::new(
            config.max_concurrent_uploads,
            config.max_queued_uploads,
            config.upload_queue_timeout,
        );
        let files = FileService::new(
            storage,
            metadata,
            locks,
            notifier,
            config.max_upload_size,
            gate,
        );
        let collected = files.collect_unreferenced().await?;
        if collected > 0 {
            tracing::info!(collected, "collected unreferenced blobs");
        }
        let stall = StallMonitor::start(
            tokio::runtime::Handle::current(),
            STALL_PROBE_INTERVAL,
            STALL_THRESHOLD,
        )?;
        Ok(AppState {
            files,
            config: Arc::new(config),
            stall,
            shutdown,
            shutdown_trigger: Arc::new(shutdown_trigger),
            _data_dir_lock: Arc::new(lock_file),
        })
    }

    /// Starts shutting down: sync streams close with 1001, long-polls answer, the event hub
    /// and pruner stop.
    pub fn begin_shutdown(&self) {
        self.shutdown_trigger.send_replace(true);
    }

    pub async fn close(&self) {
        self.begin_shutdown();
        self.files.metadata().close().await;
    }
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route(
            "/api/v1/files/upload",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/files/{id}",
            get(files::get_content).delete(files::delete),
        )
        .route("/api/v1/files/{id}/meta", get(files::get_meta))
        .route("/api/v1/files/{id}/move", post(files::move_file))
        .route("/api/v1/files/{id}/copy", post(files::copy_file))
        .route("/api/v1/fs/{*path}", get(files::get_by_path))
        .route("/api/v1/list", get(list::list))
        .route("/api/v1/sync", get(sync::sync))
        .route("/api/v1/events", get(sync::events))
        .route("/api/v1/admin/locks", get(admin::locks))
        .route("/api/v1/admin/runtime", get(admin::runtime))
        .fallback(|| async {
            AppError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such route",
            )
        })
        .method_not_allowed_fallback(|| async {
            AppError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(handlers::request_id))
        .with_state(state)
}

/// Serves VaultFS on `listener` until `shutdown` resolves, then closes the stores.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = AppState::open(config).await?;
    let app = router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %state.config.data_dir.display(), "VaultFS listening");
    // Nagle + delayed ACK would cost ~40 ms per small response on a reused connection.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let draining = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.begin_shutdown();
        })
        .await?;
    state.close().await;
    tracing::info!("VaultFS stopped");
    Ok(())
}
