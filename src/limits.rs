//! `pocket limits`: the machine's own ceilings that bound pocket, measured in
//! the same run and on the same disk — sequential write with fdatasync at a
//! group-commit granularity, sequential read (cold and warm), BLAKE3 per
//! core, and the RPC layer (TLS + HTTP/2 + the PUT chunking) for 4 MiB
//! payloads on loopback — and, given a running pocket, its PUT and GET
//! figures as ratios to the bound that applies.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use pocket_proto::pb;
use pocket_transport::{pki, Identity, Role, Tls};
use rand::RngCore;
use serde::Serialize;

/// Size of each write and read call: one typical blob.
const IO_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Payload of each RPC in the loopback measurement: one typical blob.
const RPC_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// RPCs in flight at once in the loopback measurement (as `pocket bench`).
const RPC_CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
pub struct LimitsOptions {
    /// Directory on the disk to measure (a file is written and removed there).
    pub dir: PathBuf,
    /// Bytes written (and read back) by the disk measurements.
    pub disk_bytes: u64,
    /// fdatasync granularities to measure, e.g. 4 MiB and 64 MiB.
    pub sync_every_bytes: Vec<u64>,
    /// Bytes hashed by the BLAKE3 measurement.
    pub hash_bytes: u64,
    /// Bytes sent through the loopback RPC measurement.
    pub rpc_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteFigure {
    pub sync_every_bytes: u64,
    pub mib_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub write_with_fdatasync: Vec<WriteFigure>,
    pub read_cold_mib_per_sec: f64,
    pub read_warm_mib_per_sec: f64,
    pub blake3_mib_per_sec_per_core: f64,
    pub cores: usize,
    pub rpc_4mib_mib_per_sec: f64,
}

fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64().max(1e-9)
}

/// Runs every measurement; the disk ones block, so they run off the runtime.
pub async fn measure(options: &LimitsOptions) -> anyhow::Result<Limits> {
    let disk = options.clone();
    let (writes, read_cold, read_warm) = tokio::task::spawn_blocking(move || measure_disk(&disk)).await??;
    let hash_bytes = options.hash_bytes;
    let blake3 = tokio::task::spawn_blocking(move || measure_blake3(hash_bytes)).await?;
    let rpc = measure_rpc(&options.dir, options.rpc_bytes).await?;
    Ok(Limits {
        write_with_fdatasync: writes,
        read_cold_mib_per_sec: read_cold,
        read_warm_mib_per_sec: read_warm,
        blake3_mib_per_sec_per_core: blake3,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        rpc_4mib_mib_per_sec: rpc,
    })
}

fn measure_disk(options: &LimitsOptions) -> anyhow::Result<(Vec<WriteFigure>, f64, f64)> {
    std::fs::create_dir_all(&options.dir).with_context(|| format!("create {}", options.dir.display()))?;
    let path = options.dir.join(format!("pocket-limits-{}.tmp", std::process::id()));
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    rand::rng().fill_bytes(&mut buffer);
    let mut writes = Vec::new();
    let result = (|| -> anyhow::Result<(f64, f64)> {
        for &sync_every in &options.sync_every_bytes {
            let mut file = std::fs::File::create(&path).context("create measurement file")?;
            let started = Instant::now();
            let (mut written, mut unsynced) = (0u64, 0u64);
            while written < options.disk_bytes {
                file.write_all(&buffer).context("write")?;
                written += buffer.len() as u64;
                unsynced += buffer.len() as u64;
                if unsynced >= sync_every {
                    file.sync_data().context("fdatasync")?;
                    unsynced = 0;
                }
            }
            file.sync_data().context("fdatasync")?;
            writes.push(WriteFigure { sync_every_bytes: sync_every, mib_per_sec: mib_per_sec(written, started.elapsed()) });
        }
        drop_cache(&path)?;
        let cold = read_all(&path, &mut buffer)?;
        let warm = read_all(&path, &mut buffer)?;
        Ok((cold, warm))
    })();
    let _ = std::fs::remove_file(&path);
    let (cold, warm) = result?;
    Ok((writes, cold, warm))
}

fn read_all(path: &Path, buffer: &mut [u8]) -> anyhow::Result<f64> {
    let mut file = std::fs::File::open(path).context("open measurement file")?;
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = file.read(buffer).context("read")?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(mib_per_sec(total, started.elapsed()))
}

/// Asks the kernel to drop the file's cached pages, so the next read comes
/// from the disk (the data was synced, so every page is clean).
fn drop_cache(path: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).context("open measurement file")?;
    #[allow(unsafe_code)]
    // SAFETY: posix_fadvise(2) on a file descriptor we own; advisory only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        anyhow::bail!("posix_fadvise failed with {rc}");
    }
    Ok(())
}

fn measure_blake3(bytes: u64) -> f64 {
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    rand::rng().fill_bytes(&mut buffer);
    let started = Instant::now();
    let mut hashed = 0u64;
    let mut sink = 0u8;
    while hashed < bytes {
        // One thread: the per-core figure (blake3's own SIMD, no rayon).
        sink ^= blake3::hash(&buffer).as_bytes()[0];
        hashed += buffer.len() as u64;
    }
    std::hint::black_box(sink);
    mib_per_sec(hashed, started.elapsed())
}

struct Sink;

#[tonic::async_trait]
impl pb::loopback_server::Loopback for Sink {
    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<pb::LoopbackChunk>>,
    ) -> Result<tonic::Response<pb::LoopbackSummary>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut received = 0u64;
        while let Some(message) = stream.message().await? {
            received += message.chunk.len() as u64;
        }
        Ok(tonic::Response::new(pb::LoopbackSummary { received_bytes: received }))
    }
}

/// Streams `bytes` through an in-process gRPC server on loopback with the
/// same transport as pocket (mutual TLS, 1 MiB chunks), 4 MiB per RPC.
async fn measure_rpc(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
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
    let server = tonic::transport::Server::builder()
        .tls_config(server_tls.server_tls())?
        .add_service(
            pb::loopback_server::LoopbackServer::new(Sink)
                .max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES),
        )
        .serve_with_incoming_shutdown(pocket_transport::incoming(listener), async {
            let _ = stopped.await;
        });
    let server = tokio::spawn(server);

    let channel = client_tls.channel(&addr, &server_id.dns_name())?;
    let client = pb::loopback_client::LoopbackClient::new(channel)
        .max_encoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES);
    let mut payload = vec![0u8; RPC_PAYLOAD_BYTES];
    rand::rng().fill_bytes(&mut payload);
    let payload = Bytes::from(payload);
    let rpcs = bytes.div_ceil(RPC_PAYLOAD_BYTES as u64).max(1);
    let limit = Arc::new(tokio::sync::Semaphore::new(RPC_CONCURRENCY));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..rpcs {
        let permit = limit.clone().acquire_owned().await?;
        let (mut client, payload) = (client.clone(), payload.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let chunks = pocket_proto::chunks(&payload).map(|chunk| pb::LoopbackChunk { chunk });
            client.upload(futures::stream::iter(chunks)).await.map(|r| r.into_inner().received_bytes)
        });
    }
    let mut received = 0u64;
    while let Some(joined) = tasks.join_next().await {
        received += joined??;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let _ = server.await;
    Ok(mib_per_sec(received, elapsed))
}

/// pocket's figures beside the bounds that apply to them.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub what: String,
    pub pocket_mib_per_sec: f64,
    pub bound: String,
    pub bound_mib_per_sec: f64,
    pub ratio: f64,
}

/// Bounds on one machine, where every hop shares the same cores:
/// - PUT at R replicas: the disk takes R copies, at the coarsest fdatasync
///   granularity measured (the OSD's group commit never syncs less than
///   that would), and the bytes cross 1 + R mTLS hops (client → frontend →
///   R OSDs), each costing what the measured RPC figure costs;
/// - warm GET: read bandwidth, 2 mTLS hops (OSD → frontend → client), and 2
///   BLAKE3 passes (frontend and client check the key) on all cores.
pub fn ratios(limits: &Limits, replicas: u32, put_mib_per_sec: f64, get_mib_per_sec: f64) -> Vec<Ratio> {
    let r = f64::from(replicas.max(1));
    let coarsest = limits.write_with_fdatasync.iter().max_by_key(|w| w.sync_every_bytes);
    let write = coarsest.map(|w| w.mib_per_sec).unwrap_or(0.0);
    let granularity = coarsest.map(|w| w.sync_every_bytes >> 20).unwrap_or(0);
    let put_bound = (write / r).min(limits.rpc_4mib_mib_per_sec / (1.0 + r));
    let hash_all_cores = limits.blake3_mib_per_sec_per_core * limits.cores as f64;
    let get_bound = limits.read_warm_mib_per_sec.min(limits.rpc_4mib_mib_per_sec / 2.0).min(hash_all_cores / 2.0);
    vec![
        Ratio {
            what: "put".into(),
            pocket_mib_per_sec: put_mib_per_sec,
            bound: format!("min(write, fdatasync every {granularity} MiB / {replicas}, rpc / {})", 1 + replicas),
            bound_mib_per_sec: put_bound,
            ratio: put_mib_per_sec / put_bound.max(1e-9),
        },
        Ratio {
            what: "get".into(),
            pocket_mib_per_sec: get_mib_per_sec,
            bound: "min(warm read, rpc / 2, blake3 x cores / 2)".into(),
            bound_mib_per_sec: get_bound,
            ratio: get_mib_per_sec / get_bound.max(1e-9),
        },
    ]
}

/// The limits as a table for people.
pub fn table(limits: &Limits) -> String {
    let mut out = String::from("limit                                   MiB/s\n");
    for write in &limits.write_with_fdatasync {
        out.push_str(&format!(
            "write, fdatasync every {:>4} MiB        {:>9.1}\n",
            write.sync_every_bytes >> 20,
            write.mib_per_sec
        ));
    }
    out.push_str(&format!("read, cold                              {:>9.1}\n", limits.read_cold_mib_per_sec));
    out.push_str(&format!("read, warm                              {:>9.1}\n", limits.read_warm_mib_per_sec));
    out.push_str(&format!("blake3, one core ({} cores)              {:>9.1}\n", limits.cores, limits.blake3_mib_per_sec_per_core));
    out.push_str(&format!("rpc (mTLS, 4 MiB payloads, {RPC_CONCURRENCY} in flight)  {:>9.1}\n", limits.rpc_4mib_mib_per_sec));
    out
}
