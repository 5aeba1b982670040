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
//! Layout: [`extent`] is the on-disk format, [`store`] the disks, group commit
//! and recovery, [`grpc`] the wire edge, [`config`] the daemon's settings and
//! [`run`] ties them together with registration and heartbeats.

pub mod config;
pub mod extent;
pub mod grpc;
pub mod meta;
pub mod store;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use pocket_proto::pb;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::OsdConfig;

/// Starts the OSD: opens (and recovers) its disks, serves gRPC on `listener`,
/// registers with the coordinator and heartbeats until `shutdown` resolves.
/// `ready` turns true once the disks are open and the server accepts calls.
pub async fn run(
    listener: TcpListener,
    config: OsdConfig,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let local_addr = listener.local_addr().context("read OSD listen address")?;
    let disks = config.disks.clone();
    let options = config.store_options();
    let osd_id = config.osd_id;
    for disk in &disks {
        config::claim_disk(disk, osd_id)?;
    }
    let store = tokio::task::spawn_blocking(move || store::Store::open(&disks, options))
        .await
        .context("join store open")?
        .context("open OSD store")?;
    tracing::info!(osd_id, extents = store.list_extents().len(), "store open");

    let advertise = config.advertise_addr.clone().unwrap_or_else(|| local_addr.to_string());
    let tls = pocket_transport::Tls::load(&config.tls).context("load OSD TLS material")?;
    let service = grpc::OsdService::new(store.clone(), &config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let heartbeats = tokio::spawn(heartbeat_loop(config.clone(), tls.clone(), advertise, store.clone(), stop_rx));

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
    let result = server.await.context("serve OSD gRPC");
    // Shutdown order: stop accepting (done), stop heartbeats, then let the
    // store's writers drain and sync before the process exits.
    ready.send_replace(false);
    stop_tx.send_replace(true);
    let _ = heartbeats.await;
    store.shutdown();
    tracing::info!(osd_id, "OSD stopped");
    result
}

/// Registers with the coordinator (retrying with capped backoff) and then
/// heartbeats every interval it asks for; registers again when forgotten.
async fn heartbeat_loop(
    config: OsdConfig,
    tls: pocket_transport::Tls,
    advertise: String,
    store: store::Store,
    mut stop: watch::Receiver<bool>,
) {
    /// Cap on the delay between registration attempts while the coordinator is away.
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let channel = match tls.channel(&config.coordinator, &pocket_transport::role_dns_name(pocket_transport::Role::Coordinator)) {
        Ok(channel) => channel,
        Err(e) => {
            tracing::error!(error = %e, "coordinator address is invalid; not registering");
            return;
        }
    };
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    let mut backoff = Duration::from_millis(100);
    let mut registered: Option<Duration> = None;
    loop {
        let wait = match registered {
            None => {
                let request = pb::RegisterOsdRequest {
                    osd_id: config.osd_id,
                    grpc_addr: advertise.clone(),
                    failure_domain: config.failure_domain(),
                    capacity_bytes: store.capacity_bytes(),
                    used_bytes: store.used_bytes(),
                };
                match client.register_osd(request).await {
                    Ok(response) => {
                        let interval = Duration::from_millis(response.get_ref().heartbeat_interval_ms.clamp(100, 60_000));
                        tracing::info!(osd_id = config.osd_id, cell_id = response.get_ref().cell_id, "registered with coordinator");
                        registered = Some(interval);
                        backoff = Duration::from_millis(100);
                        interval
                    }
                    Err(status) => {
                        tracing::warn!(osd_id = config.osd_id, %status, "registration failed; retrying");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        backoff
                    }
                }
            }
            Some(interval) => {
                let request = pb::HeartbeatRequest {
                    osd_id: config.osd_id,
                    used_bytes: store.used_bytes(),
                    capacity_bytes: store.capacity_bytes(),
                };
                match client.heartbeat(request).await {
                    Ok(response) if response.get_ref().known => interval,
                    Ok(_) => {
                        registered = None;
                        Duration::ZERO
                    }
                    Err(status) => {
                        tracing::warn!(osd_id = config.osd_id, %status, "heartbeat failed");
                        interval
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}
