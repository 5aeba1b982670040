//! The RPC layer's ceiling: blob-sized payloads streamed through an
//! in-process gRPC server of the `Loopback` service (the bench crate's own
//! schema), served by `pocket_transport::serve` as every pocket service is.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pocket_transport::{pki, Identity, Role, Tls};
use rand::RngCore;

use super::{cpu_ms, cpu_ms_per_mib, Measured, RPC_CONCURRENCY, RPC_PAYLOAD_BYTES, SMALL_RPC_PAYLOAD_BYTES};
use crate::loopback::loopback_client::LoopbackClient;
use crate::loopback::loopback_server::{Loopback, LoopbackServer};
use crate::loopback::{LoopbackChunk, LoopbackSummary};

struct Sink;

#[tonic::async_trait]
impl Loopback for Sink {
    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<LoopbackChunk>>,
    ) -> Result<tonic::Response<LoopbackSummary>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut received = 0u64;
        while let Some(message) = stream.message().await? {
            received += message.chunk.len() as u64;
        }
        Ok(tonic::Response::new(LoopbackSummary { received_bytes: received }))
    }
}

/// Streams `bytes` through an in-process gRPC server on loopback with the
/// same transport as pocket (mutual TLS, 1 MiB chunks), 4 MiB per RPC; then
/// `small_rpcs` RPCs of 64 KiB. Returns MiB/s at 4 MiB and RPCs/s at 64 KiB,
/// each with the process's CPU time per MiB (nothing else runs in it then).
pub(super) async fn measure_rpc(dir: &Path, bytes: u64, small_rpcs: u64) -> anyhow::Result<(Measured, Measured)> {
    let pki_dir = dir.join(format!("pocket-limits-pki-{}", std::process::id()));
    let server_id = Identity::new(Role::Frontend, "limits");
    let client_id = Identity::new(Role::Client, "limits");
    pki::ensure_local(&pki_dir, &[server_id.clone(), client_id.clone()])?;
    let server_tls = Tls::load(&pki::tls_config(&pki_dir, &server_id))?;
    let client_tls = Tls::load(&pki::tls_config(&pki_dir, &client_id))?;
    let _ = std::fs::remove_dir_all(&pki_dir);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The servers' own transport (`pocket_transport::serve`), so the
    // ceiling is measured on their configuration.
    let settings = pocket_transport::ServerSettings {
        caps: pocket_transport::ConnectionCaps::default(),
        max_concurrent_streams: 64,
        request_timeout: std::time::Duration::from_secs(120),
        send_stall_timeout: std::time::Duration::from_secs(10),
    };
    let routes = tonic::service::Routes::new(
        LoopbackServer::new(Sink).max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES),
    );
    let server = async move {
        pocket_transport::serve(listener, &server_tls, settings, routes, async {
            let _ = stopped.await;
        })
        .await
    };
    let server = tokio::spawn(server);

    let channel = client_tls.channel(&addr, &server_id.dns_name())?;
    let client = LoopbackClient::new(channel)
        .max_encoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES);
    let large = transfer(&client, RPC_PAYLOAD_BYTES, bytes.div_ceil(RPC_PAYLOAD_BYTES as u64).max(1)).await;
    let small = match large {
        Ok(_) => transfer(&client, SMALL_RPC_PAYLOAD_BYTES, small_rpcs.max(1)).await,
        Err(_) => Ok(Measured { per_sec: 0.0, cpu_ms_per_mib: 0.0 }),
    };
    let _ = stop.send(());
    let _ = server.await;
    let large = large?;
    Ok((Measured { per_sec: large.per_sec * RPC_PAYLOAD_BYTES as f64 / (1024.0 * 1024.0), ..large }, small?))
}

/// Sends `rpcs` RPCs of `payload_bytes`, RPC_CONCURRENCY at once; returns
/// RPCs/s and the process's CPU time per MiB sent.
async fn transfer(
    client: &LoopbackClient<tonic::transport::Channel>,
    payload_bytes: usize,
    rpcs: u64,
) -> anyhow::Result<Measured> {
    let mut payload = vec![0u8; payload_bytes];
    rand::rng().fill_bytes(&mut payload);
    let payload = Bytes::from(payload);
    let limit = Arc::new(tokio::sync::Semaphore::new(RPC_CONCURRENCY));
    let (started, cpu_started) = (Instant::now(), cpu_ms(libc::RUSAGE_SELF));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..rpcs {
        let permit = limit.clone().acquire_owned().await?;
        let (mut client, payload) = (client.clone(), payload.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let chunks = pocket_proto::chunks(&payload).map(|chunk| LoopbackChunk { chunk });
            client.upload(futures::stream::iter(chunks)).await.map(|r| r.into_inner().received_bytes)
        });
    }
    let mut received = 0u64;
    while let Some(joined) = tasks.join_next().await {
        received += joined??;
    }
    let (elapsed, cpu) = (started.elapsed(), cpu_ms(libc::RUSAGE_SELF) - cpu_started);
    Ok(Measured { per_sec: rpcs as f64 / elapsed.as_secs_f64().max(1e-9), cpu_ms_per_mib: cpu_ms_per_mib(cpu, received) })
}
