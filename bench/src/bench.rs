//! `pocket bench`: PUT, GET and mixed load against a running pocket through
//! the public API, with every GET verified against its key. Per phase it
//! reports throughput, operations per second, latency percentiles from an
//! HDR histogram, and errors — as a table for people or JSON for machines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use pocket_client::Client;
use pocket_proto::Key;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::machine::{CpuTicks, MachineCpu};

/// Size of the random pool blobs are cut from: generating fresh random bytes
/// per operation would measure the RNG, not pocket.
const POOL_BYTES: usize = 64 * 1024 * 1024;
/// Bytes at the start of each blob made unique per operation, so every PUT
/// is a new key (no dedup) while the rest comes from the pool.
const UNIQUE_PREFIX_BYTES: usize = 16;
/// Highest latency the histogram tracks (longer ones are clamped), in µs.
const MAX_LATENCY_US: u64 = 600_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// PUT `count` blobs, then GET them all back.
    All,
    Put,
    /// GET needs keys: PUTs `count` blobs first (not reported), then GETs them.
    Get,
    /// Half PUTs of new blobs, half GETs of stored ones.
    Mixed,
    /// As `all`, then GET them all again (`get-warm`): the first pass read
    /// what the OSDs no longer cache from their disks and left it cached.
    Reread,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub mode: Mode,
    pub count: usize,
    pub size_bytes: usize,
    pub concurrency: usize,
    /// Run each measured phase for this long instead of `count` operations.
    pub duration: Option<Duration>,
    pub progress: bool,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub ops: u64,
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub mib_per_sec: f64,
    pub ops_per_sec: f64,
    pub latency: Latency,
    pub blob_size_bytes: usize,
    pub concurrency: usize,
    /// The whole machine's CPU during the phase (None where `/proc/stat`
    /// is not readable): a phase on a machine whose hypervisor took a third
    /// of its cores (steal) is not comparable with one that had them all.
    pub machine_cpu: Option<MachineCpu>,
}

struct Pool {
    bytes: Bytes,
    nonce: u64,
    next: AtomicU64,
    size: usize,
}

impl Pool {
    fn new(size: usize, seed: u64) -> Pool {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut bytes = vec![0u8; POOL_BYTES.max(size * 2)];
        rng.fill_bytes(&mut bytes);
        Pool { bytes: Bytes::from(bytes), nonce: rng.random(), next: AtomicU64::new(0), size }
    }

    /// A blob no earlier call returned: a unique prefix, then pool bytes.
    fn blob(&self) -> Bytes {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let offset = (n.wrapping_mul(4099) as usize) % (self.bytes.len() - self.size);
        let mut blob = Vec::with_capacity(self.size);
        let mut prefix = [0u8; UNIQUE_PREFIX_BYTES];
        prefix[..8].copy_from_slice(&n.to_le_bytes());
        prefix[8..].copy_from_slice(&self.nonce.to_le_bytes());
        let head = self.size.min(UNIQUE_PREFIX_BYTES);
        blob.extend_from_slice(&prefix[..head]);
        blob.extend_from_slice(&self.bytes[offset..offset + (self.size - head)]);
        Bytes::from(blob)
    }
}

struct Recorder {
    histogram: Mutex<hdrhistogram::Histogram<u64>>,
    ops: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Recorder {
    fn new() -> anyhow::Result<Recorder> {
        Ok(Recorder {
            histogram: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    fn ok(&self, started: Instant, bytes: usize) {
        let micros = (started.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.histogram.lock().expect("histogram lock").saturating_record(micros);
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn error(&self, error: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().expect("error lock").get_or_insert_with(|| error.to_string());
    }

    fn report(&self, phase: &str, seconds: f64, options: &BenchOptions, machine_cpu: Option<MachineCpu>) -> PhaseReport {
        let histogram = self.histogram.lock().expect("histogram lock");
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let ops = self.ops.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        PhaseReport {
            phase: phase.to_string(),
            ops,
            errors: self.errors.load(Ordering::Relaxed),
            bytes,
            seconds,
            mib_per_sec: bytes as f64 / (1024.0 * 1024.0) / seconds.max(1e-9),
            ops_per_sec: ops as f64 / seconds.max(1e-9),
            latency: Latency { p50_ms: ms(0.5), p90_ms: ms(0.9), p99_ms: ms(0.99), max_ms: histogram.max() as f64 / 1000.0 },
            blob_size_bytes: options.size_bytes,
            concurrency: options.concurrency,
            machine_cpu,
        }
    }
}

/// What a worker does for one operation.
#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    Mixed,
}

/// Phase name of the second GET pass of [`Mode::Reread`].
pub const WARM_GET_PHASE: &str = "get-warm";

/// `pocket bench`: runs the phases and prints their reports, as a table or
/// (`json`) JSON; fails if any operation failed.
pub async fn command(client: Client, options: BenchOptions, json: bool) -> anyhow::Result<()> {
    let reports = run(client, options).await?;
    crate::print_report(&reports[..], json, table)?;
    if reports.iter().any(|r| r.errors > 0) {
        bail!("some operations failed; see the errors column");
    }
    Ok(())
}

/// Runs the phases of `options.mode` and returns one report per measured phase.
pub async fn run(client: Client, options: BenchOptions) -> anyhow::Result<Vec<PhaseReport>> {
    if options.concurrency == 0 || options.count == 0 || options.size_bytes == 0 {
        bail!("count, size and concurrency must be positive");
    }
    let pool = Arc::new(Pool::new(options.size_bytes, options.seed));
    let keys: Arc<Mutex<Vec<Key>>> = Arc::default();
    let mut reports = Vec::new();
    let plan: &[(&str, Op, bool)] = match options.mode {
        Mode::All => &[("put", Op::Put, true), ("get", Op::Get, true)],
        Mode::Put => &[("put", Op::Put, true)],
        Mode::Get => &[("load", Op::Put, false), ("get", Op::Get, true)],
        Mode::Mixed => &[("load", Op::Put, false), ("mixed", Op::Mixed, true)],
        Mode::Reread => &[("put", Op::Put, true), ("get", Op::Get, true), (WARM_GET_PHASE, Op::Get, true)],
    };
    for (phase, op, measured) in plan {
        // The unmeasured load phase stores `count` blobs, even in --duration mode.
        let load_options = BenchOptions { duration: None, ..options.clone() };
        let phase_options = if *measured { &options } else { &load_options };
        let (report, first_error) = phase_run(&client, &pool, &keys, phase_options, phase, *op, None).await?;
        if let Some(error) = first_error {
            tracing::warn!(phase, errors = report.errors, first = %error, "operations failed");
        }
        if *measured {
            reports.push(report);
        }
    }
    Ok(reports)
}

/// One timed phase of PUTs (of fresh `options.size_bytes` blobs, their keys
/// added to `keys`) or of GETs (of `keys`, each checked against its key),
/// for `options.duration`, or until `stop` turns true if sooner. For other
/// commands that measure live traffic beside something else.
pub async fn timed_phase(
    client: &Client,
    keys: &Arc<Mutex<Vec<Key>>>,
    options: &BenchOptions,
    phase: &str,
    put: bool,
    stop: Option<Arc<AtomicBool>>,
) -> anyhow::Result<PhaseReport> {
    let pool = Arc::new(Pool::new(options.size_bytes, options.seed ^ keys.lock().expect("keys lock").len() as u64));
    let op = if put { Op::Put } else { Op::Get };
    let options = BenchOptions { duration: Some(options.duration.unwrap_or(Duration::from_secs(10))), progress: false, ..options.clone() };
    Ok(phase_run(client, &pool, keys, &options, phase, op, stop).await?.0)
}

async fn phase_run(
    client: &Client,
    pool: &Arc<Pool>,
    keys: &Arc<Mutex<Vec<Key>>>,
    options: &BenchOptions,
    phase: &str,
    op: Op,
    end_early: Option<Arc<AtomicBool>>,
) -> anyhow::Result<(PhaseReport, Option<String>)> {
    let recorder = Arc::new(Recorder::new()?);
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let total = match (op, options.duration) {
        (Op::Get, None) => keys.lock().expect("keys lock").len() as u64,
        (_, None) => options.count as u64,
        (_, Some(_)) => u64::MAX,
    };
    let progress = if options.progress {
        let bar = match options.duration {
            Some(duration) => indicatif::ProgressBar::new(duration.as_secs()),
            None => indicatif::ProgressBar::new(total),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>6} [{bar:40}] {pos}/{len} {elapsed_precise} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(phase.to_string());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (started, ticks_started) = (Instant::now(), CpuTicks::now());
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..options.concurrency {
        let (client, pool, keys, recorder, issued, stop, progress) = (
            client.clone(),
            pool.clone(),
            keys.clone(),
            recorder.clone(),
            issued.clone(),
            stop.clone(),
            progress.clone(),
        );
        let timed = options.duration.is_some();
        workers.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return;
                }
                let do_put = match op {
                    Op::Put => true,
                    Op::Get => false,
                    Op::Mixed => rng.random_bool(0.5),
                };
                if do_put {
                    let data = pool.blob();
                    let length = data.len();
                    let at = Instant::now();
                    match client.put(data).await {
                        Ok((key, _)) => {
                            recorder.ok(at, length);
                            keys.lock().expect("keys lock").push(key);
                        }
                        Err(e) => recorder.error(e),
                    }
                } else {
                    let key = {
                        let keys = keys.lock().expect("keys lock");
                        if keys.is_empty() {
                            return;
                        }
                        if timed || matches!(op, Op::Mixed) {
                            keys[rng.random_range(0..keys.len())]
                        } else {
                            keys[n as usize % keys.len()]
                        }
                    };
                    let at = Instant::now();
                    // `Client::get` checks the bytes against the key.
                    match client.get(&key).await {
                        Ok(data) => recorder.ok(at, data.len()),
                        Err(e) => recorder.error(e),
                    }
                }
                if !timed {
                    progress.inc(1);
                }
            }
        });
    }
    if let Some(duration) = options.duration {
        let deadline = started + duration;
        while Instant::now() < deadline && !end_early.as_ref().is_some_and(|end| end.load(Ordering::Relaxed)) {
            tokio::time::sleep(Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now()))).await;
            progress.set_position(started.elapsed().as_secs());
        }
        stop.store(true, Ordering::Relaxed);
    }
    while let Some(joined) = workers.join_next().await {
        joined?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let machine_cpu = ticks_started.zip(CpuTicks::now()).and_then(|(a, b)| a.until(&b));
    progress.finish_and_clear();
    let report = recorder.report(phase, seconds, options, machine_cpu);
    let first_error = recorder.first_error.lock().expect("error lock").clone();
    Ok((report, first_error))
}

/// The reports as a table for people.
pub fn table(reports: &[PhaseReport]) -> String {
    let mut out = format!(
        "{:<8} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}\n",
        "phase", "ops", "errors", "MiB/s", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "busy", "steal"
    );
    let percent = |share: Option<f64>| share.map(|s| format!("{:.0}%", s * 100.0)).unwrap_or_else(|| "-".into());
    for r in reports {
        out.push_str(&format!(
            "{:<8} {:>8} {:>7} {:>10.1} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6} {:>6}\n",
            r.phase,
            r.ops,
            r.errors,
            r.mib_per_sec,
            r.ops_per_sec,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            percent(r.machine_cpu.map(|c| c.busy)),
            percent(r.machine_cpu.map(|c| c.steal)),
        ));
    }
    out.push_str("(busy, steal: the whole machine's cores during the phase; steal is what the hypervisor took)\n");
    out
}
