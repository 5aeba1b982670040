//! The process side of every pocket daemon (`pocket osd`, `pocket
//! coordinator`, `pocket frontend`): what runs around a service crate's
//! `run(listener, config, ready, shutdown)`.
//!
//! [`serve`] loads nothing of the service itself: it binds the daemon's
//! listeners, serves the operations endpoint (`ops`: `/metrics`, `/healthz`,
//! and [`ops::https_get`], which scrapes another daemon's), writes the run
//! file (`runinfo`) once the daemon is ready and removes it when it stops,
//! and turns SIGTERM or Ctrl-C into the daemon's shutdown. `memory` sets the
//! process's memory-page policy (ADR 9); `operator` is the operator's config
//! that `pocket up` writes. The measurement tools (`pocket-bench`) and the
//! CLI use the run files and scrapes too.
//!
//! Invariant: the health endpoint is the last thing a daemon stops.

pub mod memory;
pub mod operator;
pub mod ops;
pub mod runinfo;
mod serve;

pub use serve::{load_config, serve, shutdown_signal};
