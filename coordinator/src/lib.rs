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
//! maintenance loop), [`health`] (up, down, out), [`ec`] (erasure coding),
//! [`repair`] (lost copies rebuilt), [`reconcile`] (copies nothing names
//! deleted), [`grpc`] (the wire edge).

pub mod audit;
pub mod cell;
pub mod config;
pub mod db;
pub mod ec;
pub mod grpc;
pub mod health;
pub mod leadership;
pub mod reconcile;
pub mod repair;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, CoordinatorConfig};

/// Requests one connection may have in flight: a frontend's placement and
/// location lookups, an OSD's heartbeat. Calls are short; this is a fence.
const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 64;
/// Longest a handler may take: database round trips and, for operator
/// calls, a status summary; the cell database's own timeouts are shorter.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a response may wait for its reader (responses here are small).
const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`run`] stopped with an error. Each variant's message is the step
/// that failed; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("open cell database")]
    OpenDb(#[source] db::DbError),
    #[error("read the cell's stored settings")]
    LoadSettings(#[source] cell::CellError),
    #[error("load coordinator TLS material")]
    LoadTls(#[source] pocket_transport::TlsError),
    #[error("open audit log")]
    OpenAuditLog(#[source] std::io::Error),
    #[error("read coordinator address")]
    ListenAddr(#[source] std::io::Error),
    #[error("serve coordinator gRPC")]
    Serve(#[source] pocket_transport::TlsError),
}

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let db = db::CellDb::open(&config.database_url, config.max_db_connections)
        .await
        .map_err(RunError::OpenDb)?;
    let tls = pocket_transport::Tls::load(&config.tls).map_err(RunError::LoadTls)?;
    let audit = audit::AuditLog::open(&config.audit_log).map_err(RunError::OpenAuditLog)?;
    let local_addr = listener.local_addr().map_err(RunError::ListenAddr)?;
    let holder = config.holder_name();
    let leadership = leadership::Leadership::new(holder.clone(), local_addr.to_string());
    let cell = cell::Cell::new(db.clone(), config.clone(), tls.clone(), leadership.clone());
    cell.load_background_rate().await.map_err(RunError::LoadSettings)?;
    // Background jobs (ADR 16); stopped in reverse order after serving ends.
    pocket_worker::Registry::global().set_budget(cell.budget().clone());
    let mut workers = pocket_worker::Runner::new(pocket_worker::Registry::global().clone());
    // Every coordinator keeps its lease job; only the leader runs the others.
    workers.start(leadership::LeadershipJob::new(db.clone(), leadership.clone(), config.leadership.clone()));
    workers.start(leadership::Led::new(cell::MaintenanceJob::new(cell.clone()), leadership.clone()));
    workers.start(leadership::Led::new(ec::ErasureJob::new(cell.clone()), leadership.clone()));
    workers.start(leadership::Led::new(repair::RepairJob::new(cell.clone()), leadership.clone()));
    workers.start(leadership::Led::new(reconcile::ReconcileJob::new(cell.clone()), leadership.clone()));
    let settings = pocket_transport::ServerSettings {
        caps: pocket_transport::ConnectionCaps::default(),
        max_concurrent_streams: MAX_CONCURRENT_REQUESTS_PER_CONNECTION as u32,
        request_timeout: REQUEST_TIMEOUT,
        send_stall_timeout: SEND_STALL_TIMEOUT,
    };
    let routes = tonic::service::Routes::new(grpc::CoordinatorService::new(cell, audit).into_server());
    let server = pocket_transport::serve(listener, &tls, settings, routes, shutdown);
    ready.send_replace(true);
    tracing::info!(cell_id = config.cell_id, %local_addr, holder, "coordinator serving");
    let result = server.await.map_err(RunError::Serve);
    ready.send_replace(false);
    workers.stop().await;
    leadership.release(&db).await;
    db.close().await;
    tracing::info!("coordinator stopped");
    result
}
