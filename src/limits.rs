//! `pocket limits`: the machine's own ceilings that bound pocket, measured in
//! the same run and on the same disk — sequential write with fdatasync at a
//! group-commit granularity, sequential read (cold and warm), BLAKE3 per
//! core, and the RPC layer (TLS + HTTP/2 + the PUT chunking) for 4 MiB
//! payloads on loopback — and, given a running pocket, its PUT and GET
//! figures as ratios to the bound that applies.

use std::io::Read;
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
/// Payload of each RPC in the small-blob loopback measurement.
pub const SMALL_RPC_PAYLOAD_BYTES: usize = 64 * 1024;
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
    /// Bytes sent through the loopback RPC measurement (4 MiB RPCs).
    pub rpc_bytes: u64,
    /// 64 KiB RPCs sent through the loopback RPC measurement.
    pub small_rpcs: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteFigure {
    pub sync_every_bytes: u64,
    pub mib_per_sec: f64,
    /// CPU time of the writing thread (user + system) per MiB written.
    pub cpu_ms_per_mib: f64,
    /// Written with `O_DIRECT`, as the OSDs write (ADR 11); false where the
    /// filesystem refused it and the writes went through the page cache.
    pub direct: bool,
}

/// Writes a new file sequentially the way an OSD appends to an extent:
/// with `O_DIRECT` (ADR 11) where the filesystem allows it, else through
/// the page cache keeping only the OSDs' window cached (ADR 8).
struct OsdLikeWriter {
    file: std::fs::File,
    direct: Option<pocket_osd::store::DirectAppender>,
    written: u64,
    uncached: u64,
}

impl OsdLikeWriter {
    fn create(path: &Path) -> anyhow::Result<OsdLikeWriter> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .context("create measurement file")?;
        let direct = pocket_osd::store::DirectAppender::open(path, &file, 0).context("open for direct writes")?;
        Ok(OsdLikeWriter { file, direct, written: 0, uncached: 0 })
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match &mut self.direct {
            Some(direct) => direct.append(&[data], self.written).context("direct write")?,
            None => std::os::unix::fs::FileExt::write_all_at(&self.file, data, self.written).context("write")?,
        }
        self.written += data.len() as u64;
        Ok(())
    }

    fn sync(&mut self) -> anyhow::Result<()> {
        self.file.sync_data().context("fdatasync")?;
        if self.direct.is_none() {
            let window = pocket_osd::store::DEFAULT_PAGE_CACHE_WINDOW_BYTES;
            self.uncached = pocket_osd::store::drop_behind(&self.file, self.uncached, self.written, window);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub write_with_fdatasync: Vec<WriteFigure>,
    pub read_cold_mib_per_sec: f64,
    /// CPU time of the reading thread per MiB read from the disk.
    pub read_cold_cpu_ms_per_mib: f64,
    pub read_warm_mib_per_sec: f64,
    /// CPU time of the reading thread per MiB read from the page cache.
    pub read_warm_cpu_ms_per_mib: f64,
    pub blake3_mib_per_sec_per_core: f64,
    pub cores: usize,
    pub rpc_4mib_mib_per_sec: f64,
    /// CPU time of the loopback RPC (client and server, user + system) per
    /// MiB of 4 MiB payloads.
    pub rpc_4mib_cpu_ms_per_mib: f64,
    /// RPCs per second with 64 KiB payloads, RPC_CONCURRENCY in flight.
    pub rpc_64kib_ops_per_sec: f64,
    /// CPU time of the loopback RPC per MiB of 64 KiB payloads.
    pub rpc_64kib_cpu_ms_per_mib: f64,
}

/// A rate and what it cost in CPU time.
#[derive(Debug, Clone, Copy)]
struct Measured {
    per_sec: f64,
    cpu_ms_per_mib: f64,
}

/// User + system CPU time so far, in milliseconds, of this process
/// (`RUSAGE_SELF`) or of the calling thread (`RUSAGE_THREAD`).
fn cpu_ms(who: libc::c_int) -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: getrusage(2) fills the struct we own; both `who` values are valid.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    #[allow(unsafe_code)]
    // SAFETY: getrusage returned 0, so it initialised the struct.
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

fn cpu_ms_per_mib(cpu_ms: f64, bytes: u64) -> f64 {
    cpu_ms / (bytes as f64 / (1024.0 * 1024.0)).max(1e-9)
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
    let (rpc, rpc_small) = measure_rpc(&options.dir, options.rpc_bytes, options.small_rpcs).await?;
    Ok(Limits {
        write_with_fdatasync: writes,
        read_cold_mib_per_sec: read_cold.per_sec,
        read_cold_cpu_ms_per_mib: read_cold.cpu_ms_per_mib,
        read_warm_mib_per_sec: read_warm.per_sec,
        read_warm_cpu_ms_per_mib: read_warm.cpu_ms_per_mib,
        blake3_mib_per_sec_per_core: blake3,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        rpc_4mib_mib_per_sec: rpc.per_sec,
        rpc_4mib_cpu_ms_per_mib: rpc.cpu_ms_per_mib,
        rpc_64kib_ops_per_sec: rpc_small.per_sec,
        rpc_64kib_cpu_ms_per_mib: rpc_small.cpu_ms_per_mib,
    })
}

fn measure_disk(options: &LimitsOptions) -> anyhow::Result<(Vec<WriteFigure>, Measured, Measured)> {
    std::fs::create_dir_all(&options.dir).with_context(|| format!("create {}", options.dir.display()))?;
    let path = options.dir.join(format!("pocket-limits-{}.tmp", std::process::id()));
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    rand::rng().fill_bytes(&mut buffer);
    let mut writes = Vec::new();
    let result = (|| -> anyhow::Result<(Measured, Measured)> {
        for &sync_every in &options.sync_every_bytes {
            let mut file = OsdLikeWriter::create(&path)?;
            let (started, cpu_started) = (Instant::now(), cpu_ms(libc::RUSAGE_THREAD));
            let (mut written, mut unsynced) = (0u64, 0u64);
            while written < options.disk_bytes {
                file.write(&buffer)?;
                written += buffer.len() as u64;
                unsynced += buffer.len() as u64;
                if unsynced >= sync_every {
                    file.sync()?;
                    unsynced = 0;
                }
            }
            file.sync()?;
            writes.push(WriteFigure {
                sync_every_bytes: sync_every,
                mib_per_sec: mib_per_sec(written, started.elapsed()),
                cpu_ms_per_mib: cpu_ms_per_mib(cpu_ms(libc::RUSAGE_THREAD) - cpu_started, written),
                direct: file.direct.is_some(),
            });
        }
        // The writes bypassed the page cache. On a VM the first pages a
        // process takes from the kernel cost several times more CPU than
        // pages it freed just before (docs/benchmarks.md, session 5): read
        // the file once to take them, drop them, and measure the read from
        // the disk into those recycled pages, as a busy OSD's reads are.
        read_all(&path, &mut buffer)?;
        drop_cache(&path)?;
        let cold = read_all(&path, &mut buffer)?;
        let warm = read_all(&path, &mut buffer)?;
        Ok((cold, warm))
    })();
    let _ = std::fs::remove_file(&path);
    let (cold, warm) = result?;
    Ok((writes, cold, warm))
}

/// Reads the whole file: MiB/s and the thread's CPU time per MiB.
fn read_all(path: &Path, buffer: &mut [u8]) -> anyhow::Result<Measured> {
    let mut file = std::fs::File::open(path).context("open measurement file")?;
    let (started, cpu_started) = (Instant::now(), cpu_ms(libc::RUSAGE_THREAD));
    let mut total = 0u64;
    loop {
        let n = file.read(buffer).context("read")?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok(Measured {
        per_sec: mib_per_sec(total, started.elapsed()),
        cpu_ms_per_mib: cpu_ms_per_mib(cpu_ms(libc::RUSAGE_THREAD) - cpu_started, total),
    })
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

/// One core's BLAKE3 speed, MiB per second of the thread's CPU time: a
/// wall-clock figure would count what the hypervisor took (steal) as
/// hashing time.
fn measure_blake3(bytes: u64) -> f64 {
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    rand::rng().fill_bytes(&mut buffer);
    let cpu_started = cpu_ms(libc::RUSAGE_THREAD);
    let mut hashed = 0u64;
    let mut sink = 0u8;
    while hashed < bytes {
        // One thread: the per-core figure (blake3's own SIMD, no rayon).
        sink ^= blake3::hash(&buffer).as_bytes()[0];
        hashed += buffer.len() as u64;
    }
    std::hint::black_box(sink);
    let cpu_ms = (cpu_ms(libc::RUSAGE_THREAD) - cpu_started).max(1e-3);
    hashed as f64 / (1024.0 * 1024.0) / (cpu_ms / 1e3)
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
/// same transport as pocket (mutual TLS, 1 MiB chunks), 4 MiB per RPC; then
/// `small_rpcs` RPCs of 64 KiB. Returns MiB/s at 4 MiB and RPCs/s at 64 KiB,
/// each with the process's CPU time per MiB (nothing else runs in it then).
async fn measure_rpc(dir: &Path, bytes: u64, small_rpcs: u64) -> anyhow::Result<(Measured, Measured)> {
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
        pb::loopback_server::LoopbackServer::new(Sink).max_decoding_message_size(pocket_proto::MAX_MESSAGE_SIZE_BYTES),
    );
    let server = async move {
        pocket_transport::serve(listener, &server_tls, settings, routes, async {
            let _ = stopped.await;
        })
        .await
    };
    let server = tokio::spawn(server);

    let channel = client_tls.channel(&addr, &server_id.dns_name())?;
    let client = pb::loopback_client::LoopbackClient::new(channel)
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
    client: &pb::loopback_client::LoopbackClient<tonic::transport::Channel>,
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
            let chunks = pocket_proto::chunks(&payload).map(|chunk| pb::LoopbackChunk { chunk });
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

/// What the OSDs of a local pocket wrote during a bench: how many took
/// appends, and how many bytes one group commit (one fdatasync) held on
/// average — read from their `pocket_osd_group_commit*` counters.
#[derive(Debug, Clone, Serialize)]
pub struct CommitPattern {
    pub osds: usize,
    pub commits: u64,
    pub appends: u64,
    pub bytes: u64,
    pub mean_commit_bytes: u64,
}

/// The disk measured in the OSDs' own pattern: `writers` files written at
/// once, each fdatasync'd every `sync_every_bytes`.
#[derive(Debug, Clone, Serialize)]
pub struct PatternFigure {
    pub pattern: CommitPattern,
    pub mib_per_sec: f64,
    /// CPU time of the writing threads (user + system) per MiB written.
    pub cpu_ms_per_mib: f64,
}

/// Per-OSD (commits, appends, bytes) counters of a pocket started by
/// `pocket up --dir cell_dir`, scraped with its operator identity. None if
/// `cell_dir` is not such a directory.
pub async fn scrape_group_commits(cell_dir: &Path) -> anyhow::Result<Option<Vec<[u64; 3]>>> {
    let operator = cell_dir.join("operator.toml");
    let Ok(text) = std::fs::read_to_string(&operator) else { return Ok(None) };
    let config: crate::cell_status::OperatorConfig =
        toml::from_str(&text).with_context(|| format!("parse {}", operator.display()))?;
    let tls = Tls::load(&config.tls)?;
    let mut runs: Vec<PathBuf> = std::fs::read_dir(cell_dir.join("run"))
        .with_context(|| format!("list {}", cell_dir.join("run").display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("osd-") && name.ends_with(".run")
        })
        .collect();
    runs.sort();
    let mut counters = Vec::new();
    for run in runs {
        let info = crate::runinfo::RunInfo::read(&run)?;
        let text = crate::ops::https_get(&tls, &info.http, "/metrics").await?;
        let value = |name: &str| crate::ops::metric_value(&text, name).unwrap_or(0.0) as u64;
        counters.push([
            value("pocket_osd_group_commits_total"),
            value("pocket_osd_group_commit_appends_total"),
            value("pocket_osd_group_commit_bytes_total"),
        ]);
    }
    Ok(Some(counters))
}

/// The group commits made between two scrapes of the same OSDs.
pub fn commit_pattern(before: &[[u64; 3]], after: &[[u64; 3]]) -> Option<CommitPattern> {
    if before.len() != after.len() {
        return None;
    }
    let deltas: Vec<[u64; 3]> = before
        .iter()
        .zip(after)
        .map(|(b, a)| [a[0].saturating_sub(b[0]), a[1].saturating_sub(b[1]), a[2].saturating_sub(b[2])])
        .filter(|d| d[0] > 0)
        .collect();
    let commits: u64 = deltas.iter().map(|d| d[0]).sum();
    if commits == 0 {
        return None;
    }
    let bytes: u64 = deltas.iter().map(|d| d[2]).sum();
    Some(CommitPattern {
        osds: deltas.len(),
        commits,
        appends: deltas.iter().map(|d| d[1]).sum(),
        bytes,
        mean_commit_bytes: (bytes / commits).max(4096),
    })
}

/// Writes `total_bytes` in `pattern.osds` files at once (one thread each),
/// each fdatasync'd every `pattern.mean_commit_bytes`, written as the OSDs
/// write ([`OsdLikeWriter`]): the disk's ceiling
/// for the write pattern the OSDs produced (MiB/s), and the writing threads'
/// CPU time per MiB.
fn measure_pattern(dir: &Path, pattern: &CommitPattern, total_bytes: u64) -> anyhow::Result<Measured> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let writers = pattern.osds.max(1);
    let per_writer = (total_bytes / writers as u64).max(pattern.mean_commit_bytes);
    let commit = pattern.mean_commit_bytes as usize;
    let mut buffer = vec![0u8; commit.min(IO_BUFFER_BYTES)];
    rand::rng().fill_bytes(&mut buffer);
    let paths: Vec<PathBuf> =
        (0..writers).map(|i| dir.join(format!("pocket-limits-{}-{i}.tmp", std::process::id()))).collect();
    let barrier = std::sync::Barrier::new(writers + 1);
    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                let (buffer, barrier) = (&buffer, &barrier);
                scope.spawn(move || -> anyhow::Result<(u64, f64)> {
                    let file = OsdLikeWriter::create(path);
                    barrier.wait();
                    let mut file = file?;
                    let cpu_started = cpu_ms(libc::RUSAGE_THREAD);
                    let mut written = 0u64;
                    while written < per_writer {
                        let mut in_commit = 0usize;
                        while in_commit < commit {
                            let n = buffer.len().min(commit - in_commit);
                            file.write(&buffer[..n])?;
                            in_commit += n;
                        }
                        file.sync()?;
                        written += in_commit as u64;
                    }
                    Ok((written, cpu_ms(libc::RUSAGE_THREAD) - cpu_started))
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let (mut written, mut cpu) = (0u64, 0.0);
        let mut failure = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok((n, ms))) => {
                    written += n;
                    cpu += ms;
                }
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(anyhow::anyhow!("a measurement thread panicked")),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Measured { per_sec: mib_per_sec(written, started.elapsed()), cpu_ms_per_mib: cpu_ms_per_mib(cpu, written) }),
        }
    });
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    result
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

/// What `pocket limits` measured of a running pocket: the bench phases and
/// the OSDs' write pattern during each PUT phase.
#[derive(Debug, Clone, Serialize)]
pub struct PocketFigures {
    pub bench: Vec<crate::bench::PhaseReport>,
    /// During the 4 MiB PUTs.
    pub osd_pattern: Option<PatternFigure>,
    /// During the 64 KiB PUTs.
    pub osd_pattern_small: Option<PatternFigure>,
}

impl PocketFigures {
    fn report(&self, phase: &str) -> Option<&crate::bench::PhaseReport> {
        self.bench.iter().find(|r| r.phase == phase)
    }

    fn mib_per_sec(&self, phase: &str) -> f64 {
        self.report(phase).map(|r| r.mib_per_sec).unwrap_or(0.0)
    }

    /// The share of the machine's cores the hypervisor left it during
    /// `phase` (1 where steal was not measured).
    fn cores_given(&self, phase: &str) -> f64 {
        self.report(phase).and_then(|r| r.machine_cpu).map(|c| c.given()).unwrap_or(1.0)
    }
}

/// Phase name of the 64 KiB PUTs in [`PocketFigures::bench`].
pub const SMALL_PUT_PHASE: &str = "put64k";

/// Benches the pocket behind `client` as `pocket limits` does: 4 MiB PUTs,
/// then GETs of them (`count` each) twice — the first pass reads from the
/// OSDs' disks what they no longer cache (ADR 8), the second (`get-warm`)
/// from their page cache — then `small_count` 64 KiB PUTs, all at C = 8.
/// If `cell_dir` is a `pocket up` directory, the OSDs' group commits during
/// each PUT phase are read from their /metrics and the disk is measured in
/// that pattern (at most `disk_bytes` written).
pub async fn bench_pocket(
    client: pocket_client::Client,
    cell_dir: &Path,
    count: usize,
    small_count: usize,
    disk_bytes: u64,
) -> anyhow::Result<PocketFigures> {
    let options = |mode, count, size_bytes| crate::bench::BenchOptions {
        mode,
        count,
        size_bytes,
        concurrency: RPC_CONCURRENCY,
        duration: None,
        progress: false,
        seed: rand::random(),
    };
    let (mut bench, osd_pattern) =
        bench_with_pattern(&client, cell_dir, options(crate::bench::Mode::Reread, count, 4 << 20), disk_bytes).await?;
    let (small, osd_pattern_small) = bench_with_pattern(
        &client,
        cell_dir,
        options(crate::bench::Mode::Put, small_count, SMALL_RPC_PAYLOAD_BYTES),
        disk_bytes,
    )
    .await?;
    bench.extend(small.into_iter().map(|mut r| {
        r.phase = SMALL_PUT_PHASE.into();
        r
    }));
    Ok(PocketFigures { bench, osd_pattern, osd_pattern_small })
}

/// Runs one bench; around it, scrapes the OSDs' group-commit counters (only
/// PUTs append) and measures the disk in the pattern they show.
async fn bench_with_pattern(
    client: &pocket_client::Client,
    cell_dir: &Path,
    options: crate::bench::BenchOptions,
    disk_bytes: u64,
) -> anyhow::Result<(Vec<crate::bench::PhaseReport>, Option<PatternFigure>)> {
    // A daemon that is down or a stale run file costs the pattern figure
    // (said on stderr), not the whole measurement.
    let scrape = || async {
        scrape_group_commits(cell_dir).await.unwrap_or_else(|e| {
            eprintln!("pocket limits: could not read the OSDs' group-commit counters ({e:#}); no OSD-pattern figure");
            None
        })
    };
    let before = scrape().await;
    let reports = crate::bench::run(client.clone(), options).await?;
    let Some(before) = before else { return Ok((reports, None)) };
    let Some(after) = scrape().await else { return Ok((reports, None)) };
    let Some(pattern) = commit_pattern(&before, &after) else { return Ok((reports, None)) };
    // Enough commits to be steady, at most `disk_bytes`.
    let bytes = disk_bytes.min(pattern.mean_commit_bytes.saturating_mul(4096));
    let dir = cell_dir.to_path_buf();
    let figure = tokio::task::spawn_blocking(move || {
        measure_pattern(&dir, &pattern, bytes)
            .map(|m| PatternFigure { pattern, mib_per_sec: m.per_sec, cpu_ms_per_mib: m.cpu_ms_per_mib })
    })
    .await??;
    Ok((reports, Some(figure)))
}

/// Bounds on one machine, where every hop shares the same cores.
///
/// The CPU bound adds up the CPU time of the work a request cannot avoid,
/// each part at the CPU cost measured for it in this run, and divides the
/// cores among it: its mTLS hops (the loopback RPC's CPU time per MiB, client
/// and server together), its BLAKE3 passes (one core's speed), and for a PUT
/// the R buffered writes with fdatasync (the writing threads' CPU time per
/// MiB). All of it runs on the same cores, so the times add up; a `min` of
/// the separate rates would assume they overlap, which they cannot. Only the
/// share of the cores the hypervisor left the machine during the phase
/// counts (1 − steal, from `/proc/stat`): CPU times exclude steal, so the
/// costs above are the same whatever the neighbours do, but the cores are
/// not. The disk bound is separate: R copies at the measured write bandwidth.
/// - PUT at R replicas: 1 + R hops (client → frontend → R OSDs), 2 + R
///   hashes (the client computes the key, the frontend and every OSD check
///   it), R writes. The disk figure that applies is the one measured in the
///   OSDs' own write pattern during the bench (as many files at once as OSDs
///   took appends, fdatasync'd as often as their group commits were). A
///   second row, `put*`, puts the PUT beside the disk's best figure (the
///   coarsest single-file granularity measured), which needs group commits
///   far larger than the bench's concurrency produces;
/// - GET: 2 hops (OSD → frontend → client), 2 hashes (the frontend and the
///   client check the key) and one read: for the first pass after the PUTs
///   (`get`) at the cold read's bandwidth and CPU cost, since the OSDs keep
///   only a 32 MiB tail of each open extent cached (ADR 8); for the second
///   pass (`get-warm`) at the warm read's;
/// - 64 KiB PUT: as the 4 MiB PUT, the client's hop at the RPC cost for
///   64 KiB payloads; the R appends share `AppendBatch` calls of up to
///   4 MiB (ADR 12), so at best they cost what 4 MiB payloads cost, and the
///   bound counts them at that.
pub fn ratios(limits: &Limits, figures: &PocketFigures, replicas: u32) -> Vec<Ratio> {
    let r = f64::from(replicas.max(1));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let ratio = |what: &str, pocket: f64, bound: f64, text: String| Ratio {
        what: what.into(),
        pocket_mib_per_sec: pocket,
        bound: text,
        bound_mib_per_sec: bound,
        ratio: pocket / bound.max(1e-9),
    };
    let put = figures.mib_per_sec("put");
    let put_work = |phase: &str, rpc_cpu_ms_per_mib: f64, write_cpu_ms_per_mib: f64| Work {
        hops: 1 + replicas,
        rpc_cpu_ms_per_mib,
        hashes: 2 + replicas,
        io: replicas,
        io_cpu_ms_per_mib: write_cpu_ms_per_mib,
        io_name: "writes",
        cores_given: figures.cores_given(phase),
    };
    let mut rows = Vec::new();
    if let Some(p) = &figures.osd_pattern {
        let work = put_work("put", limits.rpc_4mib_cpu_ms_per_mib, p.cpu_ms_per_mib);
        let text = format!(
            "min(write, {} files, fdatasync every {:.2} MiB / {replicas}, {work})",
            p.pattern.osds,
            mib(p.pattern.mean_commit_bytes)
        );
        rows.push(ratio("put", put, (p.mib_per_sec / r).min(work.cpu_bound(limits)), text));
    }
    let coarsest = limits.write_with_fdatasync.iter().max_by_key(|w| w.sync_every_bytes);
    let write = coarsest.map(|w| w.mib_per_sec).unwrap_or(0.0);
    let granularity = coarsest.map(|w| w.sync_every_bytes >> 20).unwrap_or(0);
    let work = put_work("put", limits.rpc_4mib_cpu_ms_per_mib, coarsest.map(|w| w.cpu_ms_per_mib).unwrap_or(0.0));
    let text = format!("min(write, 1 file, fdatasync every {granularity} MiB / {replicas}, {work})");
    let what = if figures.osd_pattern.is_some() { "put*" } else { "put" };
    rows.push(ratio(what, put, (write / r).min(work.cpu_bound(limits)), text));
    let get_work = |phase: &str, read_cpu_ms_per_mib: f64| Work {
        hops: 2,
        rpc_cpu_ms_per_mib: limits.rpc_4mib_cpu_ms_per_mib,
        hashes: 2,
        io: 1,
        io_cpu_ms_per_mib: read_cpu_ms_per_mib,
        io_name: "read",
        cores_given: figures.cores_given(phase),
    };
    // The first GET pass reads from the disk what the OSDs dropped from
    // their page cache; the second finds it cached.
    let cold = get_work("get", limits.read_cold_cpu_ms_per_mib);
    let get_bound = limits.read_cold_mib_per_sec.min(cold.cpu_bound(limits));
    rows.push(ratio("get", figures.mib_per_sec("get"), get_bound, format!("min(cold read, {cold})")));
    if figures.report(crate::bench::WARM_GET_PHASE).is_some() {
        let warm = get_work(crate::bench::WARM_GET_PHASE, limits.read_warm_cpu_ms_per_mib);
        let bound = limits.read_warm_mib_per_sec.min(warm.cpu_bound(limits));
        let pocket = figures.mib_per_sec(crate::bench::WARM_GET_PHASE);
        rows.push(ratio(crate::bench::WARM_GET_PHASE, pocket, bound, format!("min(warm read, {warm})")));
    }
    // Every hop at the mean cost of one 64 KiB call and R batched ones.
    let small_rpc_cpu_ms_per_mib = (limits.rpc_64kib_cpu_ms_per_mib + r * limits.rpc_4mib_cpu_ms_per_mib) / (1.0 + r);
    let (small_bound, text) = match &figures.osd_pattern_small {
        Some(p) => {
            let work = put_work(SMALL_PUT_PHASE, small_rpc_cpu_ms_per_mib, p.cpu_ms_per_mib);
            (
                (p.mib_per_sec / r).min(work.cpu_bound(limits)),
                format!(
                    "min(write, {} files, fdatasync every {:.0} KiB / {replicas}, {work}, at 64 KiB)",
                    p.pattern.osds,
                    p.pattern.mean_commit_bytes as f64 / 1024.0
                ),
            )
        }
        None => {
            let work = put_work(SMALL_PUT_PHASE, small_rpc_cpu_ms_per_mib, 0.0);
            (work.cpu_bound(limits), format!("{work}, at 64 KiB (no write figure)"))
        }
    };
    rows.push(ratio(SMALL_PUT_PHASE, figures.mib_per_sec(SMALL_PUT_PHASE), small_bound, text));
    rows
}

/// The CPU work a request cannot avoid, per MiB of blob, at measured costs:
/// mTLS hops, BLAKE3 passes, and disk I/O through the page cache (R writes
/// for a PUT, one read for a GET).
#[derive(Debug, Clone, Copy)]
struct Work {
    hops: u32,
    rpc_cpu_ms_per_mib: f64,
    hashes: u32,
    io: u32,
    io_cpu_ms_per_mib: f64,
    io_name: &'static str,
    /// The share of the cores the machine had during the phase: what the
    /// hypervisor took (steal) carried nothing.
    cores_given: f64,
}

impl Work {
    /// CPU milliseconds per MiB of blob, all parts added.
    fn cpu_ms_per_mib(&self, limits: &Limits) -> f64 {
        f64::from(self.hops) * self.rpc_cpu_ms_per_mib
            + f64::from(self.hashes) * 1e3 / limits.blake3_mib_per_sec_per_core.max(1e-9)
            + f64::from(self.io) * self.io_cpu_ms_per_mib
    }

    /// MiB/s of blob the machine's cores carry if they do nothing but this
    /// work, counting only the share of them the hypervisor left it.
    fn cpu_bound(&self, limits: &Limits) -> f64 {
        limits.cores.max(1) as f64 * self.cores_given * 1e3 / self.cpu_ms_per_mib(limits).max(1e-9)
    }
}

impl std::fmt::Display for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu")?;
        if self.cores_given <= 0.995 {
            write!(f, " ({:.0}% stolen)", (1.0 - self.cores_given) * 100.0)?;
        }
        write!(f, ": {} hops x {:.2} ms + {} blake3", self.hops, self.rpc_cpu_ms_per_mib, self.hashes)?;
        if self.io > 0 {
            write!(f, " + {} {} x {:.2} ms", self.io, self.io_name, self.io_cpu_ms_per_mib)?;
        }
        write!(f, " per MiB")
    }
}

/// The limits as a table for people.
pub fn table(limits: &Limits) -> String {
    let mut out = String::from("limit                                   MiB/s  CPU ms/MiB\n");
    for write in &limits.write_with_fdatasync {
        out.push_str(&format!(
            "write, fdatasync every {:>4} MiB        {:>9.1}  {:>10.2}{}\n",
            write.sync_every_bytes >> 20,
            write.mib_per_sec,
            write.cpu_ms_per_mib,
            if write.direct { "  (O_DIRECT, as the OSDs)" } else { "  (page cache: no O_DIRECT here)" }
        ));
    }
    out.push_str(&format!(
        "read, cold                              {:>9.1}  {:>10.2}\n",
        limits.read_cold_mib_per_sec, limits.read_cold_cpu_ms_per_mib
    ));
    out.push_str(&format!(
        "read, warm                              {:>9.1}  {:>10.2}\n",
        limits.read_warm_mib_per_sec, limits.read_warm_cpu_ms_per_mib
    ));
    out.push_str(&format!("blake3, one core ({} cores)              {:>9.1}\n", limits.cores, limits.blake3_mib_per_sec_per_core));
    out.push_str(&format!(
        "rpc (mTLS, 4 MiB payloads, {RPC_CONCURRENCY} in flight)  {:>9.1}  {:>10.2}\n",
        limits.rpc_4mib_mib_per_sec, limits.rpc_4mib_cpu_ms_per_mib
    ));
    out.push_str(&format!(
        "rpc (mTLS, 64 KiB payloads, {RPC_CONCURRENCY} in flight) {:>9.1}  {:>10.2}  ({:.0} RPCs/s)\n",
        limits.rpc_64kib_ops_per_sec * SMALL_RPC_PAYLOAD_BYTES as f64 / (1024.0 * 1024.0),
        limits.rpc_64kib_cpu_ms_per_mib,
        limits.rpc_64kib_ops_per_sec
    ));
    out
}

/// The OSD write patterns measured during the bench, as table lines.
pub fn pattern_table(figures: &PocketFigures) -> String {
    let mut out = String::new();
    for (what, pattern) in [("4 MiB PUTs", &figures.osd_pattern), ("64 KiB PUTs", &figures.osd_pattern_small)] {
        if let Some(p) = pattern {
            out.push_str(&format!(
                "write, OSD pattern of the {what}: {} files, fdatasync every {:.0} KiB  {:>9.1}  {:>10.2}\n  ({} group commits of {:.2} appends on average)\n",
                p.pattern.osds,
                p.pattern.mean_commit_bytes as f64 / 1024.0,
                p.mib_per_sec,
                p.cpu_ms_per_mib,
                p.pattern.commits,
                p.pattern.appends as f64 / p.pattern.commits as f64
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Latency, PhaseReport};
    use crate::machine::MachineCpu;

    fn phase(name: &str, mib_per_sec: f64) -> PhaseReport {
        let latency = Latency { p50_ms: 1.0, p90_ms: 1.0, p99_ms: 1.0, max_ms: 1.0 };
        PhaseReport {
            phase: name.into(),
            ops: 1,
            errors: 0,
            bytes: 1,
            seconds: 1.0,
            mib_per_sec,
            ops_per_sec: 1.0,
            latency,
            blob_size_bytes: 1,
            concurrency: 8,
            machine_cpu: None,
        }
    }

    /// Limits with round CPU costs: 2 ms per MiB a hop, 1 ms a hash, 1 ms a
    /// write at the coarsest granularity, on 2 cores.
    fn round_limits() -> Limits {
        Limits {
            write_with_fdatasync: vec![
                WriteFigure { sync_every_bytes: 4 << 20, mib_per_sec: 300.0, cpu_ms_per_mib: 2.0, direct: true },
                WriteFigure { sync_every_bytes: 64 << 20, mib_per_sec: 3000.0, cpu_ms_per_mib: 1.0, direct: true },
            ],
            read_cold_mib_per_sec: 500.0,
            read_cold_cpu_ms_per_mib: 2.0,
            read_warm_mib_per_sec: 8000.0,
            read_warm_cpu_ms_per_mib: 0.5,
            blake3_mib_per_sec_per_core: 1000.0, // 1 ms per MiB
            cores: 2,
            rpc_4mib_mib_per_sec: 1000.0,
            rpc_4mib_cpu_ms_per_mib: 2.0,
            rpc_64kib_ops_per_sec: 16_000.0,
            rpc_64kib_cpu_ms_per_mib: 4.0,
        }
    }

    #[test]
    fn the_cpu_bound_adds_the_cpu_time_of_every_hop_hash_and_write() {
        let limits = round_limits();
        let figures = PocketFigures {
            bench: vec![
                phase("put", 100.0),
                phase("get", 200.0),
                phase(crate::bench::WARM_GET_PHASE, 300.0),
                phase(SMALL_PUT_PHASE, 50.0),
            ],
            osd_pattern: None,
            osd_pattern_small: None,
        };
        let rows = ratios(&limits, &figures, 3);
        let names: Vec<_> = rows.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(names, ["put", "get", crate::bench::WARM_GET_PHASE, SMALL_PUT_PHASE]);
        // PUT, R = 3, against the coarsest write figure: 4 hops x 2 ms + 5
        // hashes x 1 ms + 3 writes x 1 ms = 16 ms per MiB on 2 cores = 125
        // MiB/s, below the disk's 3000 / 3.
        assert!((rows[0].bound_mib_per_sec - 125.0).abs() < 1e-9, "{:?}", rows[0]);
        assert!((rows[0].ratio - 0.8).abs() < 1e-9, "{:?}", rows[0]);
        assert!(rows[0].bound.contains("4 hops x 2.00 ms + 5 blake3 + 3 writes x 1.00 ms"), "{}", rows[0].bound);
        // GET from the disk: 2 x 2 + 2 x 1 + 1 read x 2 = 8 ms per MiB on
        // 2 cores = 250 MiB/s, below the cold read's 500.
        assert!((rows[1].bound_mib_per_sec - 250.0).abs() < 1e-9, "{:?}", rows[1]);
        assert!(rows[1].bound.contains("+ 1 read x 2.00 ms"), "{}", rows[1].bound);
        // Warm: 2 x 2 + 2 x 1 + 0.5 = 6.5 ms per MiB.
        assert!((rows[2].bound_mib_per_sec - 2000.0 / 6.5).abs() < 1e-9, "{:?}", rows[2]);
        // 64 KiB PUT without a write figure: the client's hop at 4 ms, the 3
        // batched appends at the 4 MiB cost of 2 ms, so 4 hops x 2.5 ms + 5
        // hashes x 1 ms = 15 ms per MiB.
        assert!((rows[3].bound_mib_per_sec - 2000.0 / 15.0).abs() < 1e-9, "{:?}", rows[3]);
        assert!(rows[3].bound.contains("4 hops x 2.50 ms + 5 blake3"), "{}", rows[3].bound);
        // A slow disk binds instead of the cores.
        let slow = Limits {
            write_with_fdatasync: vec![WriteFigure { sync_every_bytes: 64 << 20, mib_per_sec: 150.0, cpu_ms_per_mib: 1.0, direct: true }],
            ..limits
        };
        let rows = ratios(&slow, &figures, 3);
        assert!((rows[0].bound_mib_per_sec - 50.0).abs() < 1e-9, "{:?}", rows[0]);
        assert!((rows[0].ratio - 2.0).abs() < 1e-9, "{:?}", rows[0]);
    }

    #[test]
    fn the_cpu_bound_counts_only_the_cores_the_hypervisor_left() {
        let limits = round_limits();
        let stolen = |name: &str, mib_per_sec: f64, steal: f64| PhaseReport {
            machine_cpu: Some(MachineCpu { busy: 1.0 - steal, idle: 0.0, steal }),
            ..phase(name, mib_per_sec)
        };
        let figures = PocketFigures {
            bench: vec![stolen("put", 100.0, 0.25), stolen("get", 200.0, 0.0), phase(SMALL_PUT_PHASE, 50.0)],
            osd_pattern: None,
            osd_pattern_small: None,
        };
        let rows = ratios(&limits, &figures, 3);
        // 16 ms per MiB on the 1.5 cores left of 2: 93.75 MiB/s.
        assert!((rows[0].bound_mib_per_sec - 93.75).abs() < 1e-9, "{:?}", rows[0]);
        assert!(rows[0].bound.contains("cpu (25% stolen): 4 hops"), "{}", rows[0].bound);
        // No steal, and steal not measured: all the cores.
        assert!((rows[1].bound_mib_per_sec - 250.0).abs() < 1e-9, "{:?}", rows[1]);
        assert!(rows[1].bound.contains("cpu: 2 hops"), "{}", rows[1].bound);
        assert!((rows[2].bound_mib_per_sec - 2000.0 / 15.0).abs() < 1e-9, "{:?}", rows[2]);
    }
}
