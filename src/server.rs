//! The accept loop, and [`run`], which serves on a given listener until `shutdown` resolves.
//! Tests call `run` on `127.0.0.1:0`; the binary calls it with the configured address.
//!
//! With `probe_listen` set, a second, small listener serves only `/healthz` and `/readyz`, with
//! its own connection cap: however many clients hold the API listener's connections, the
//! orchestrator's probes still get an answer (the probes stay on the API listener too).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{AppState, ServerError};
use crate::config::Config;
use crate::handlers::routes::{probe_router, router};

/// Largest read buffer per HTTP/1 connection. hyper's default (~400 KiB) grows while a body
/// streams and stays at that size on the kept-alive connection: with 1,000 client connections
/// that alone was ~400 MiB. 64 KiB reads keep upload throughput.
const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Open connections at most on the probe listener: an orchestrator probes a few times a
/// second at most, each probe on a connection of its own.
const PROBE_MAX_CONNECTIONS: usize = 32;

/// Answer to a connection past the cap, written before closing it.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 79\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections; retry shortly\"}}";

/// One listener's connection cap and the metrics that count it.
#[derive(Clone)]
struct Cap {
    open: Arc<AtomicUsize>,
    max: usize,
    /// Gauge of open connections, counter of refused ones.
    open_gauge: &'static str,
    rejected_counter: &'static str,
}

impl Cap {
    fn api(max: usize) -> Self {
        Cap {
            open: Arc::default(),
            max,
            open_gauge: "vaultfs_connections_open",
            rejected_counter: "vaultfs_connections_rejected_total",
        }
    }

    fn probe() -> Self {
        Cap {
            open: Arc::default(),
            max: PROBE_MAX_CONNECTIONS,
            open_gauge: "vaultfs_probe_connections_open",
            rejected_counter: "vaultfs_probe_connections_rejected_total",
        }
    }

    /// A slot for one more connection, or `None` at the cap.
    fn take(&self) -> Option<ConnectionSlot> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!(self.rejected_counter).increment(1);
            return None;
        }
        metrics::gauge!(self.open_gauge).increment(1.0);
        Some(ConnectionSlot(self.clone()))
    }
}

/// Counts one open connection while alive.
struct ConnectionSlot(Cap);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(self.0.open_gauge).decrement(1.0);
    }
}

/// What every connection of one server shares: the HTTP/1 settings, the tracker that the
/// shutdown waits on, and the token that cuts off what outlives the grace period.
struct Connections {
    builder: hyper::server::conn::http1::Builder,
    tracker: TaskTracker,
    cut_off: CancellationToken,
    write_idle_timeout: Duration,
}

impl Connections {
    fn new(config: &Config) -> Self {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(MAX_CONNECTION_BUFFER)
            // Body chunks reach the connection as the handler made them (queued, not copied
            // into hyper's buffer): what zero-copy responses rely on (crate::zero_copy).
            .writev(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        Connections {
            builder,
            tracker: TaskTracker::new(),
            // Cancelled when the grace period ends: what is still in flight is cut off, also
            // when the runtime lives on (tests, embedding).
            cut_off: CancellationToken::new(),
            write_idle_timeout: config.write_idle_timeout,
        }
    }

    /// Serves one accepted socket: TCP_NODELAY, the cap (past it: 503 and close), HTTP/1.1
    /// with upgrades (WebSocket), graceful shutdown when the server begins shutting down.
    fn serve(
        &self,
        stream: tokio::net::TcpStream,
        app: &Router,
        cap: &Cap,
        state: &AppState,
        tls: Option<&crate::tls::Tls>,
    ) {
        // Nagle + delayed ACK would cost ~40 ms per small response on a reused connection.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let mut io = crate::conn::ServerIo::new(stream, self.write_idle_timeout);
        let Some(slot) = cap.take() else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    io.write_all(TOO_MANY_CONNECTIONS),
                )
                .await;
                // Dropping `io` lingers, then closes.
            });
            return;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, tls) = (self.builder.clone(), tls.cloned());
        let mut stop = state.shutdown.clone();
        let cut = self.cut_off.clone();
        // Zero-copy file responses: only where the socket gets the bytes as written.
        let zero_copy = if tls.is_none() { io.zero_copy() } else { None };
        self.tracker.spawn(async move {
            let _slot = slot;
            // TLS (when configured): the handshake runs here, within its own deadline.
            let io = match crate::tls::MaybeTls::wrap(io, tls.as_ref()).await {
                Ok(io) => io,
                Err(e) => return tracing::debug!(error = %e, "TLS handshake failed"),
            };
            let conn = builder
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            let served = async move {
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = crate::services::notification::until_true(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn => r,
                            () = cut.cancelled() => return,
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            };
            match zero_copy {
                Some(handle) => crate::zero_copy::scope(handle, served).await,
                None => served.await,
            }
        });
    }
}

/// Accepts the next connection; a failed accept (out of descriptors or similar) backs off
/// instead of spinning.
async fn accept(listener: &TcpListener) -> Option<tokio::net::TcpStream> {
    match listener.accept().await {
        Ok((stream, _peer)) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Serves the probe listener on a thread with a single-threaded runtime of its own, so that
/// `/healthz` and `/readyz` never queue behind upload work on the main runtime's workers
/// (hashing, copying bodies, thousands of tasks): a probe waits only for the OS to schedule
/// this thread. Its connections join the server's tracker and shutdown like any other: the
/// thread serves until `stop`, then until every tracked connection is done or cut off.
fn spawn_probe_runtime(
    listener: TcpListener,
    app: Router,
    connections: Arc<Connections>,
    stop: CancellationToken,
    state: AppState,
) -> std::io::Result<()> {
    // Deregistered from this runtime's reactor; registered again with the probe runtime's.
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("vaultfs-probes".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "probe listener failed"),
                };
                let cap = Cap::probe();
                loop {
                    tokio::select! {
                        accepted = accept(&listener) => if let Some(stream) = accepted {
                            connections.serve(stream, &app, &cap, &state, None);
                        },
                        () = stop.cancelled() => break,
                    }
                }
                drop(listener);
                // Drive the probe connections through the graceful shutdown.
                tokio::select! {
                    () = connections.tracker.wait() => {}
                    () = connections.cut_off.cancelled() => {}
                }
            });
        })?;
    Ok(())
}

/// The listeners served beside the API's, and the TLS settings.
struct Others {
    /// `probe_listen`: `/healthz` and `/readyz` only.
    probes: Option<TcpListener>,
    /// `s3_listen`: the S3-compatible API.
    s3: Option<(TcpListener, Router)>,
    /// `tls_cert` + `tls_key`: HTTPS on the API and S3 listeners.
    tls: Option<crate::tls::Tls>,
}

/// The API accept loop, with a header-read deadline, at most `max_connections` open, and
/// graceful shutdown: readiness turns 503 at once, the listener keeps accepting for
/// `shutdown_drain_delay`, then closes; in-flight requests get `shutdown_grace` to finish.
/// The probe listener, if any, serves until the API listener closes.
async fn serve(
    listener: TcpListener,
    others: Others,
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let config = Arc::clone(&state.config);
    let connections = Arc::new(Connections::new(&config));
    let others_stop = CancellationToken::new();
    // Also when this future is dropped unfinished: the probe thread must not outlive it.
    let _stop_others_on_drop = others_stop.clone().drop_guard();
    let cap = Cap::api(config.max_connections);
    // The probes: plain HTTP on their own small cap, on a runtime of their own.
    if let Some(probes) = others.probes {
        let app = probe_router(state.clone());
        let (conns, stop) = (Arc::clone(&connections), others_stop.clone());
        if let Err(e) = spawn_probe_runtime(probes, app, conns, stop, state.clone()) {
            tracing::error!(error = %e, "cannot start the probe listener's thread");
        }
    }
    // The S3 API: the API's cap and TLS.
    let extra = [others
        .s3
        .map(|(l, app)| (l, app, cap.clone(), others.tls.clone()))];
    for (extra_listener, app, extra_cap, tls) in extra.into_iter().flatten() {
        let connections = Arc::clone(&connections);
        let stop = others_stop.clone();
        let state = state.clone();
        connections.tracker.clone().spawn(async move {
            loop {
                tokio::select! {
                    accepted = accept(&extra_listener) => if let Some(stream) = accepted {
                        connections.serve(stream, &app, &extra_cap, &state, tls.as_ref());
                    },
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    let app = router(state.clone());
    let tls = others.tls;
    tokio::pin!(shutdown);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let drain_end = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = accept(&listener) => if let Some(stream) = accepted {
                connections.serve(stream, &app, &cap, state, tls.as_ref());
            },
            () = &mut shutdown, if drain_until.is_none() => {
                state.start_draining();
                tracing::info!(drain = ?config.shutdown_drain_delay, grace = ?config.shutdown_grace,
                    "shutting down: readiness is 503; draining");
                if config.shutdown_drain_delay.is_zero() {
                    break;
                }
                drain_until = Some(tokio::time::Instant::now() + config.shutdown_drain_delay);
            }
            () = drain_end => break,
        }
    }
    drop(listener);
    others_stop.cancel();
    state.begin_shutdown();
    connections.tracker.close();
    if tokio::time::timeout(config.shutdown_grace, connections.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight requests did not finish within the grace period; cutting them off"
        );
        connections.cut_off.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), connections.tracker.wait()).await;
    }
}

/// Serves VaultFS on `listener` until `shutdown` resolves, then closes the stores. With
/// `probe_listen` configured, also binds the probe listener.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let probes = match config.probe_listen {
        None => None,
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (probe_listen): {e}"),
            )
        })?),
    };
    run_with_probes(listener, probes, config, shutdown).await
}

/// [`run`] with the probe listener given (bound by the caller, e.g. on port 0 in tests);
/// `config.probe_listen` is not bound again.
pub async fn run_with_probes(
    listener: TcpListener,
    probes: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    let probe_addr = probes.as_ref().map(TcpListener::local_addr).transpose()?;
    let state = AppState::open(config).await?;
    // The configured address counts too: it is what the operator asked to expose.
    let exposed = !addr.ip().is_loopback()
        || !state.config.listen.ip().is_loopback()
        // The S3 listener serves an open server's files as freely.
        || state.config.s3_listen.is_some_and(|a| !a.ip().is_loopback());
    crate::handlers::authz::warn_if_insecure(&state.config, exposed, state.auth.required());
    if !state.auth.required() && exposed {
        if !state.config.insecure_no_auth {
            state.close().await;
            let addr = if addr.ip().is_loopback() {
                state.config.listen
            } else {
                addr
            };
            return Err(ServerError::Insecure { addr });
        }
        tracing::warn!(%addr, "AUTHENTICATION IS DISABLED (--insecure-no-auth): anyone who can \
            reach this address can read, write and delete every file");
    }
    let tls = crate::tls::Tls::from_config(&state.config, state.shutdown.clone()).await?;
    // The S3-compatible API, on its own address (`--s3-listen`), served by the same loop.
    let s3 = crate::handlers::s3::listener(&state).await?;
    tracing::info!(%addr, probes = ?probe_addr, data_dir = %state.config.data_dir.display(),
        "VaultFS listening");
    let others = Others { probes, s3, tls };
    serve(listener, others, &state, shutdown).await;
    state.close().await;
    tracing::info!("VaultFS stopped");
    Ok(())
}
