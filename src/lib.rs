//! VaultFS: self-hosted file storage and real-time sync.
//!
//! Module map, top to bottom; a module imports only modules below it (`.ci/layering.sh`
//! checks it; the README's "Concepts to files" table is the long form):
//! - [`cli`]: the client commands (upload, download, ls, stat, rm, mv, cp, watch, fsck,
//!   token, share, loadtest); `main.rs` parses flags and dispatches to them.
//! - [`client`]: the HTTP/WebSocket client the CLI and the load tool use.
//! - [`server`]: `run(listener, config, shutdown)`: the accept loop (and the probe listener).
//! - [`conn`]: one server connection: write-idle timeout, lingering close.
//! - [`tls`]: native TLS for the main and S3 listeners, the certificate reloaded on change.
//! - [`handlers`]: HTTP endpoints, the route table and router ([`handlers::routes`]).
//! - [`error`]: the one `AppError`, mapping service errors to HTTP.
//! - [`api`]: the wire types shared by the client and the server, `encode_path`.
//! - [`app`]: `AppState` and opening it (data-directory lock, stores, background tasks).
//! - [`services`]: lock manager, blob storage, metadata, file operations, auth, fsck.
//! - leaves: [`metrics`] (recorder, request metrics, `timed`, `InFlight`), [`config`],
//!   [`retention`] (version and trash retention settings), [`paths`] (validation and normalization of
//!   user paths), [`blocking`] (the one `spawn_blocking` wrapper), [`watchdog`] (the
//!   runtime stall watchdog), [`faults`] (fault-injection points, armed only with `test-hooks`),
//!   `zero_copy` (file bodies spliced to the socket on plain HTTP/1.1).

#![warn(unreachable_pub, missing_docs)]

pub mod api;
pub mod app;
pub(crate) mod blocking;
pub mod cli;
pub(crate) mod client;
pub mod config;
pub(crate) mod conn;
pub(crate) mod error;
pub mod faults;
pub mod handlers;
pub(crate) mod metrics;
pub mod paths;
pub(crate) mod retention;
pub mod server;
pub mod services;
pub(crate) mod tls;
pub(crate) mod watchdog;
pub(crate) mod zero_copy;
