//! Background work of every pocket daemon (ADR 16): one abstraction for the
//! jobs a daemon runs besides serving requests (today the coordinator's
//! maintenance and erasure coding, the OSD's heartbeat; later repair,
//! scrubbing, verification, replication, migration).
//!
//! Invariants:
//! - Every background job runs under a [`Runner`]: it has a name, a state
//!   (busy, idle, throttled, error with the last error), backoff after
//!   errors, metrics (`pocket_worker_*`) and an ordered stop.
//! - Background bytes and operations go through the daemon's one
//!   [`Budget`], shared by class and weight; no job bypasses it.
//! - `/workers` on every daemon's ops endpoint lists [`Registry::global`].
//!
//! Layout: [`job`] (the `Job` trait, the runner, the registry), [`budget`]
//! (the weighted-fair budget of operations and bytes).

pub mod budget;
pub mod job;

pub use budget::{Budget, BudgetConfig, BudgetStatus, Class, OpPermit};
pub use job::{Backoff, Job, JobError, Registry, Runner, State, Step, WorkerInfo, WorkersReport};
