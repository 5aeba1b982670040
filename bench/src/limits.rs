//! `pocket limits`: the machine's own ceilings that bound pocket, measured in
//! the same run and on the same disk — sequential write with fdatasync at a
//! group-commit granularity, sequential read (cold and warm), BLAKE3 per
//! core, and the RPC layer (TLS + HTTP/2 + the PUT chunking) for 4 MiB
//! payloads on loopback — and, given a running pocket, its PUT and GET
//! figures as ratios to the bound that applies.
//!
//! Here: the disk and BLAKE3 measurements and the table. `rpc`: the RPC
//! layer. `pattern`: the OSDs' group-commit pattern and the disk measured
//! in it. `ratios`: the bench of a running pocket and its ratios.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngCore;
use serde::Serialize;

mod pattern;
mod ratios;
mod rpc;

pub use pattern::{commit_pattern, pattern_table, scrape_group_commits, CommitPattern, PatternFigure};
pub use ratios::{bench_pocket, ratios, PocketFigures, Ratio, SMALL_PUT_PHASE};

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

impl LimitsOptions {
    /// What `pocket limits` measures: `disk_bytes` written and read back in
    /// `dir`, fdatasync every 4 MiB and every 64 MiB, 1 GiB hashed, 1 GiB of
    /// 4 MiB RPCs and 8,192 RPCs of 64 KiB.
    pub fn new(dir: PathBuf, disk_bytes: u64) -> LimitsOptions {
        LimitsOptions {
            dir,
            disk_bytes,
            sync_every_bytes: vec![4 << 20, 64 << 20],
            hash_bytes: 1 << 30,
            rpc_bytes: 1 << 30,
            small_rpcs: 8192,
        }
    }
}

/// A running pocket for `pocket limits` to bench (`--config` and the flags
/// that go with it).
#[derive(Debug, Clone)]
pub struct PocketBench {
    /// Its client config.
    pub config: PathBuf,
    /// Blobs per phase of the 4 MiB bench.
    pub count: usize,
    /// 64 KiB PUTs.
    pub small_count: usize,
    /// Its replication factor (PUT is bounded by write bandwidth / R).
    pub replicas: u32,
}

/// `pocket limits`: measures the machine, then benches `pocket` if given,
/// and prints the limits, the pocket's figures and their ratios, as tables
/// or (`json`) one JSON document.
pub async fn command(options: &LimitsOptions, pocket: Option<PocketBench>, json: bool) -> anyhow::Result<()> {
    let limits = measure(options).await?;
    let (figures, replicas) = match pocket {
        Some(pocket) => {
            let config = pocket_client::ClientConfig::load(&pocket.config)?;
            let client = pocket_client::Client::connect(&config)?;
            let figures = bench_pocket(client, &options.dir, pocket.count, pocket.small_count, options.disk_bytes).await?;
            (Some(figures), pocket.replicas)
        }
        None => (None, 0),
    };
    let ratios = figures.as_ref().map(|f| ratios(&limits, f, replicas)).unwrap_or_default();
    if json {
        let all = serde_json::json!({ "limits": limits, "pocket": figures, "ratios": ratios });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    print!("{}", table(&limits));
    if let Some(figures) = &figures {
        print!("{}", pattern_table(figures));
        print!("\n{}", crate::bench::table(&figures.bench));
        println!("\nphase   pocket MiB/s  bound MiB/s  ratio  bound");
        for r in &ratios {
            println!("{:<7} {:>12.1} {:>12.1} {:>6.2}  {}", r.what, r.pocket_mib_per_sec, r.bound_mib_per_sec, r.ratio, r.bound);
        }
        if figures.osd_pattern.is_some() {
            println!("(put*: the same PUTs against the disk's best single-file figure, not the OSDs' pattern)");
        }
    }
    Ok(())
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
    direct: Option<pocket_osd::io::DirectAppender>,
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
        let direct = pocket_osd::io::DirectAppender::open(path, &file, 0).context("open for direct writes")?;
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
            let window = pocket_osd::io::DEFAULT_PAGE_CACHE_WINDOW_BYTES;
            self.uncached = pocket_osd::io::drop_behind(&self.file, self.uncached, self.written, window);
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

/// The disk's write bound in MiB/s as another command measures it beside
/// its own figures: `bytes` written sequentially to a file in `dir` the way
/// an OSD writes, synced every 64 MiB (a whole extent's write). Blocking.
pub fn write_bound_mib_per_sec(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let path = dir.join(format!("pocket-write-bound-{}.tmp", std::process::id()));
    let mut buffer = vec![0u8; IO_BUFFER_BYTES];
    rand::rng().fill_bytes(&mut buffer);
    let result = (|| -> anyhow::Result<f64> {
        let mut file = OsdLikeWriter::create(&path)?;
        let started = Instant::now();
        let (mut written, mut unsynced) = (0u64, 0u64);
        while written < bytes {
            file.write(&buffer)?;
            written += buffer.len() as u64;
            unsynced += buffer.len() as u64;
            if unsynced >= 64 * 1024 * 1024 {
                file.sync()?;
                unsynced = 0;
            }
        }
        file.sync()?;
        Ok(mib_per_sec(written, started.elapsed()))
    })();
    let _ = std::fs::remove_file(&path);
    result
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
    let (rpc, rpc_small) = rpc::measure_rpc(&options.dir, options.rpc_bytes, options.small_rpcs).await?;
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
