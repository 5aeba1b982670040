//! The cell coordinator: the registry of the cell's OSDs, placement of
//! volumes on them, the pool of open buckets frontends write to, and the
//! lifecycle of each volume (creating → open → closing → closed, or
//! creating → abandoned when creation fails), and the erasure coding of
//! closed volumes ([`ec`]).
//!
//! Invariants:
//! - The cell database ([`db`]) is the only state; the process can be killed
//!   at any instant and a restart resumes every half-done step from it.
//! - A volume is writable only once every replica's extent exists; it is
//!   never reopened once closing.
//! - The coordinator knows nothing of the index. It sees extent bytes only
//!   while erasure coding (streams them from source OSDs to targets, never
//!   interpreting records); blobs are never its business.
//!
//! Layout: [`config`], [`db`] (cell database), [`cell`] (decisions and the
//! maintenance loop), [`grpc`] (the wire edge).

pub mod audit;
pub mod cell;
pub mod config;
pub mod db;
pub mod ec;
pub mod grpc;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::CoordinatorConfig;

/// Requests one connection may have in flight: a frontend's placement and
/// location lookups, an OSD's heartbeat. Calls are short; this is a fence.
const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 64;
/// Longest a handler may take: database round trips and, for operator
/// calls, a status summary; the cell database's own timeouts are shorter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a response may wait for its reader (responses here are small).
const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let db = db::CellDb::open(&config.database_url, config.max_db_connections)
        .await
        .context("open cell database")?;
    let tls = pocket_transport::Tls::load(&config.tls).context("load coordinator TLS material")?;
    let audit = audit::AuditLog::open(&config.audit_log).context("open audit log")?;
    let cell = cell::Cell::new(db.clone(), config.clone(), tls.clone());
    // Background jobs (ADR 16); stopped in reverse order after serving ends.
    pocket_worker::Registry::global().set_budget(cell.budget().clone());
    let mut workers = pocket_worker::Runner::new(pocket_worker::Registry::global().clone());
    workers.start(cell::MaintenanceJob::new(cell.clone()));
    workers.start(ec::ErasureJob::new(cell.clone()));
    let local_addr = listener.local_addr().context("read coordinator address")?;
    let settings = pocket_transport::ServerSettings {
        caps: pocket_transport::ConnectionCaps::default(),
        max_concurrent_streams: MAX_CONCURRENT_REQUESTS_PER_CONNECTION as u32,
        request_timeout: REQUEST_TIMEOUT,
        send_stall_timeout: SEND_STALL_TIMEOUT,
    };
    let routes = tonic::service::Routes::new(grpc::CoordinatorService::new(cell, audit).into_server());
    let server = pocket_transport::serve(listener, &tls, settings, routes, shutdown);
    ready.send_replace(true);
    tracing::info!(cell_id = config.cell_id, %local_addr, "coordinator serving");
    let result = server.await.context("serve coordinator gRPC");
    ready.send_replace(false);
    workers.stop().await;
    db.close().await;
    tracing::info!("coordinator stopped");
    result
}
