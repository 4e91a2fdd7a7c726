//! The integration tests, as one binary (`cargo test --test integration`): each file under
//! `tests/` is a module here, `common` is the shared harness.
//!
//! Tests share one process, so the few that touch process-wide state (an armed fault, the
//! metrics recorder's exact values, a panic hook) run in a process of their own through
//! [`common::isolated`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod api;
mod blob_conformance;
mod cli;
mod cli_watch;
mod commits;
mod crash;
mod deploy;
mod durability;
mod escalation;
mod faults;
mod fsck;
mod hardening;
mod hostile;
mod loadtest;
mod metadata_conformance;
mod openapi;
mod operations;
mod overload;
mod router;
mod runtime;
mod s3;
mod scaleout;
mod security;
mod sync;
mod tus;
mod uploads;
mod versions;
mod webui;
mod zero_copy;
