//! pocket's typed internal clients: every outbound call one pocket daemon
//! makes to another, on domain types. [`OsdClients`] hands out an
//! [`OsdClient`] per OSD (appends, reads, the extent lifecycle and the
//! whole-extent calls of erasure coding); [`CoordinatorClient`] holds the
//! calls of the frontend, the OSDs and the CLI to the coordinator.
//!
//! Invariants:
//! - Outside this crate and each service's `grpc` edge, no daemon touches a
//!   prost type (`tests/prost_edges.rs` checks it).
//! - Blob bytes of `Osd.Append` and `Osd.AppendBatch` go hand-framed, never
//!   through tonic's encoder (ADR 10).
//! - A stream read from an OSD is exactly as long as it was asked to be; one
//!   that ends short, or carries more, is an error ([`OsdError::WrongLength`]).
//! - Every deadline of an outbound call is one of the constants below.
//! - Outbound calls are named `rpc_*`; inbound handlers never are.
//!
//! Layout: `error` ([`OsdError`], [`CoordinatorError`]), `channels` (the
//! one channel cache of a process's OSD connections), `osd`, `coordinator`.

mod channels;
mod coordinator;
mod error;
mod osd;

use std::time::Duration;

pub use coordinator::{
    Bucket, BucketProblem, CellStatus, CoordinatorClient, DiskState, EcShape, OsdStatus, Registered, Registration, RepairStatus, Replica, StorageStatus,
};
pub use error::{CoordinatorError, OsdError};
pub use osd::{ExtentKind, ExtentReader, ExtentStatus, ExtentWriter, ListedExtent, OsdClient, Purpose, OsdClients, VerifiedExtent};

/// Most cached OSD channels (one per OSD and address ever seen) before the
/// cache is cleared: far above a cell's OSD count, so only restarts on new
/// ports fill it.
pub const MAX_CACHED_CHANNELS: usize = 4_096;

/// Deadline of a call to the coordinator on the request path (writable
/// buckets, locate): a PUT or GET must not wait for a stalled coordinator.
pub const COORDINATOR_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of an OSD's heartbeat: well inside the down threshold, so that
/// a coordinator that hangs is passed over for another in time.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of `Coordinator.CellStatus` (it sums the whole cell database).
pub const CELL_STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one lifecycle call (CreateExtent, Seal) to an OSD: a stalled
/// OSD must not hold up the maintenance of the rest of the cell.
pub const OSD_LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one raw range read of at most a few MiB (degraded reads).
pub const RANGE_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a whole-extent verification (the OSD reads and hashes the
/// whole extent).
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);
/// Deadline of an extent deletion.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
