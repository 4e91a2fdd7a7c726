//! VaultFS: self-hosted file storage and real-time sync.
//!
//! Module map (the README's "Concepts to files" table is the long form):
//! - [`server`]: `run(listener, config, shutdown)`, the router and shared state.
//! - [`conn`]: one server connection: write-idle timeout, lingering close.
//! - [`config`]: defaults < TOML file < `VAULTFS_*` env < flags.
//! - [`handlers`]: HTTP endpoints; parse, call services, map errors.
//! - [`services`]: lock manager, blob storage, metadata, file operations.
//! - [`metrics`]: Prometheus metrics and the store instrumentation.
//! - [`loadtest`]: `vaultfs loadtest`, the escalation's load, verified.
//! - [`paths`]: validation and normalization of user paths.
//! - [`fsck`]: `vaultfs fsck`, the offline data-directory check.
//! - [`error`]: the one `AppError`, mapped to HTTP.
//! - [`client`]: the HTTP/WebSocket client the CLI and load tool use.
//! - [`cli`]: the client commands (upload, download, ls, stat, rm, mv, cp).
//! - [`blocking`]: the one `spawn_blocking` wrapper.
//! - [`watchdog`]: the runtime stall watchdog.

pub mod blocking;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod error;
pub mod faults;
pub mod fsck;
pub mod handlers;
pub mod loadtest;
pub mod metrics;
pub mod paths;
pub mod server;
pub mod services;
pub mod tls;
pub mod watchdog;
