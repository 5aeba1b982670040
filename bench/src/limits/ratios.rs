//! A running pocket benched as `pocket limits` does, and its figures as
//! ratios to the bound of the machine that applies to each.

use std::path::Path;

use serde::Serialize;

use super::pattern::{commit_pattern, measure_pattern, scrape_group_commits, PatternFigure};
use super::{Limits, RPC_CONCURRENCY, SMALL_RPC_PAYLOAD_BYTES};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Latency, PhaseReport};
    use crate::limits::WriteFigure;
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
