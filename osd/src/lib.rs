//! The OSD: a storage daemon that owns one or more disk directories and keeps
//! blobs in append-only extent files on them.
//!
//! Invariants:
//! - The extent files are the truth; the RocksDB on each disk is an index over
//!   them that recovery can always rebuild (`store`).
//! - An append is acknowledged only after its record is durable (fdatasync),
//!   and extent files are only ever appended to, never rewritten in place.
//! - The OSD knows nothing about the index or about other OSDs: it serves the
//!   coordinator (extent lifecycle, and whole-extent writes, verification and
//!   deletion for erasure coding) and frontends (append, read, raw range
//!   reads for degraded reads).
//!
//! # Layout
//! - [`meta`] — the RocksDB schema of a disk's metadata (public for tests
//!   and tools that inspect or damage a disk).
//! - [`io`] — how the OSD writes to a disk, for tools that measure a disk
//!   the way the OSD uses it.
//! - `store` — [`Store`]: the disks, group commit, recovery, whole extents.
//! - `grpc` — the wire edge.
//! - `heartbeat` — registration and heartbeats, a background job.
//! - `config` — [`OsdConfig`].
//! - [`run`] ties them together with registration and heartbeats.
//!
//! The extent file format is the `pocket-format` crate.

pub mod io;
pub mod meta;

mod config;
mod fence;
mod grpc;
mod heartbeat;
mod live;
mod purge;
mod store;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, OsdConfig};
pub use store::{
    AppendOutcome, ClaimDiskError, DiskInfo, ExtentInfo, LocatedRecord, RangeSource, SealInfo, Store, StoreError, StoreOptions,
    WholeInfo, WholeKind, WholeWrite, EXTENTS_DIR, META_DIR, PARITY_DIR, TRASH_DIR, TrashReport, ListedExtent,
};

/// Why [`run`] stopped with an error. Each variant's message is the step
/// that failed; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("read OSD listen address")]
    ListenAddr(#[source] std::io::Error),
    #[error(transparent)]
    ClaimDisk(#[from] ClaimDiskError),
    #[error("join store open")]
    JoinStoreOpen(#[source] tokio::task::JoinError),
    #[error("open OSD store")]
    OpenStore(#[source] StoreError),
    #[error("load OSD TLS material")]
    LoadTls(#[source] pocket_transport::TlsError),
    #[error("coordinator address")]
    CoordinatorAddress(#[source] pocket_rpc_client::CoordinatorError),
    #[error("serve OSD gRPC")]
    Serve(#[source] pocket_transport::TlsError),
}

/// Starts the OSD: opens (and recovers) its disks, serves gRPC on `listener`,
/// registers with the coordinator and heartbeats until `shutdown` resolves.
/// `ready` turns true once the disks are open and the server accepts calls.
pub async fn run(
    listener: TcpListener,
    config: OsdConfig,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let local_addr = listener.local_addr().map_err(RunError::ListenAddr)?;
    let disks = config.disks.clone();
    let options = config.store_options();
    let osd_id = config.osd_id;
    for disk in &disks {
        store::claim_disk(disk, osd_id)?;
    }
    let store = tokio::task::spawn_blocking(move || Store::open(&disks, options))
        .await
        .map_err(RunError::JoinStoreOpen)?
        .map_err(RunError::OpenStore)?;
    tracing::info!(osd_id, extents = store.list_extents().len(), "store open");

    let advertise = config.advertise_addr.clone().unwrap_or_else(|| local_addr.to_string());
    let tls = pocket_transport::Tls::load(&config.tls).map_err(RunError::LoadTls)?;
    let fence = fence::Fence::open(&config.disks);
    tracing::info!(osd_id, generation = fence.highest(), "coordinator generation obeyed");
    // The OSD's background budget: a coordinator's erasure coding, repair
    // and verification bytes through this OSD are paced by it.
    let background = pocket_worker::Budget::new(pocket_worker::BudgetConfig {
        bytes_per_sec: config.background_bytes_per_sec.filter(|rate| *rate > 0),
        ..pocket_worker::BudgetConfig::default()
    });
    let live = live::LiveTraffic::default();
    let service = grpc::OsdService::new(store.clone(), fence.clone(), &config, background.clone(), live.clone());
    let coordinator = pocket_rpc_client::CoordinatorClient::connect_any(&tls, &config.coordinator_addrs()).map_err(RunError::CoordinatorAddress)?;
    // Background jobs (ADR 16).
    pocket_worker::Registry::global().set_budget(background);
    let mut workers = pocket_worker::Runner::new(pocket_worker::Registry::global().clone());
    workers.start(heartbeat::HeartbeatJob::new(config.clone(), coordinator, advertise, store.clone(), fence, live));
    workers.start(purge::PurgeJob::new(store.clone(), Duration::from_secs(config.trash_delay_secs)));

    let settings = pocket_transport::ServerSettings {
        caps: pocket_transport::ConnectionCaps::default(),
        max_concurrent_streams: u32::try_from(config.max_concurrent_requests_per_connection).unwrap_or(u32::MAX),
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        send_stall_timeout: Duration::from_millis(config.stream_idle_timeout_ms),
    };
    let routes = tonic::service::Routes::new(service.into_server());
    let server = pocket_transport::serve(listener, &tls, settings, routes, shutdown);
    ready.send_replace(true);
    tracing::info!(osd_id, %local_addr, "OSD serving");
    let result = server.await.map_err(RunError::Serve);
    // Shutdown order: stop accepting (done), stop heartbeats, then let the
    // store's writers drain and sync before the process exits.
    ready.send_replace(false);
    workers.stop().await;
    store.shutdown();
    tracing::info!(osd_id, "OSD stopped");
    result
}
