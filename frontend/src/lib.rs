//! The frontend: the public, stateless BlobStore gRPC service.
//!
//! Invariants:
//! - A PUT is acknowledged only after every replica made the record durable
//!   and then the index row committed (data first, index second): an index
//!   row always points at durable data.
//! - No byte leaves a GET before the whole blob was checked against its key.
//! - Bad input is refused at the edge ([`grpc`]) before anything is written.
//!
//! Layout: [`config`], [`cell`] (coordinator cache; appends and reads of
//! replicas through `pocket-rpc-client`),
//! [`batch`] (small appends to one replica share a call),
//! [`blobs`] (PUT/GET logic), [`grpc`] (the public edge).

pub mod access;
pub mod batch;
pub mod blobs;
pub mod cell;
pub mod config;
pub mod grpc;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, FrontendConfig};

/// Why [`run`] stopped with an error. Each variant's message is the step
/// that failed; the cause is its source.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("open index")]
    OpenIndex(#[source] pocket_index::IndexError),
    #[error("load frontend TLS material")]
    LoadTls(#[source] pocket_transport::TlsError),
    #[error("coordinator address")]
    CoordinatorAddress(#[source] pocket_rpc_client::CoordinatorError),
    #[error("read frontend address")]
    ListenAddr(#[source] std::io::Error),
    #[error("serve frontend gRPC")]
    Serve(#[source] pocket_transport::TlsError),
}

/// Runs the frontend until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: FrontendConfig,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let index = pocket_index::Index::open(&config.index).await.map_err(RunError::OpenIndex)?;
    let tls = pocket_transport::Tls::load(&config.tls).map_err(RunError::LoadTls)?;
    let cell = cell::CellView::new(&config.coordinator_addrs(), tls.clone(), config.batch_record_max_bytes).map_err(RunError::CoordinatorAddress)?;
    let blobs = blobs::Blobs::new(index.clone(), cell, config.clone());
    let service = grpc::BlobService::new(blobs, &config);
    let local_addr = listener.local_addr().map_err(RunError::ListenAddr)?;
    let settings = pocket_transport::ServerSettings {
        caps: config.connection_caps(),
        max_concurrent_streams: u32::try_from(config.max_concurrent_requests_per_connection).unwrap_or(u32::MAX),
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        send_stall_timeout: Duration::from_millis(config.stream_idle_timeout_ms),
    };
    let routes = tonic::service::Routes::new(service.into_server());
    let server = pocket_transport::serve(listener, &tls, settings, routes, shutdown);
    ready.send_replace(true);
    tracing::info!(%local_addr, "frontend serving");
    let result = server.await.map_err(RunError::Serve);
    ready.send_replace(false);
    index.close().await;
    tracing::info!("frontend stopped");
    result
}
