//! `pocket background-bench --dir DIR`: what background work costs live
//! traffic (issue 19). Over a running `pocket up --dir DIR` with at least
//! k + m OSDs:
//!
//! - **erasure coding**: the coordinator's background rate is set to its
//!   floor (1 MiB/s, so that erasure coding all but waits), blobs are PUT
//!   until k replicated volumes are closed, and a GET phase is measured
//!   (`get-idle`). Then, under an unmeasured GET load, the rate goes to
//!   `--rate` (default: automatic) and, from the moment a volume is being
//!   built, the same GET phase is measured again (`get-during-ec`) until
//!   `--seconds` pass or encoding ends. The
//!   encoding's own figures: bytes encoded and how long it took.
//! - **repair** (`--repair`): a PUT phase (`put-idle`); then the last OSD is
//!   killed and held down, and once repairs are in flight (the pocket must
//!   run with a short `--osd-out-after`) the same PUT phase is measured
//!   (`put-during-repair`); the OSD comes back at the end.
//!
//! The operator's rate (under live traffic) before the run is restored at
//! its end. Background work runs unpaced while the cell has no live
//! traffic, so the repair's time to full redundancy after the PUT phase is
//! the idle cell's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pocket_daemon::operator::OperatorConfig;
use pocket_proto::Key;
use serde::Serialize;

use crate::bench::{timed_phase, BenchOptions, Mode, PhaseReport};

pub struct BackgroundBenchOptions {
    pub dir: PathBuf,
    /// Longest measured phase.
    pub seconds: u64,
    pub concurrency: usize,
    pub blob_bytes: usize,
    /// The coordinator's background rate while encoding and repairing (0:
    /// no limit); None: automatic (the configured rate under live traffic,
    /// none while idle).
    pub rate_bytes_per_sec: Option<u64>,
    /// Measure PUTs during a repair too.
    pub repair: bool,
}

#[derive(Debug, Serialize)]
pub struct BackgroundBenchReport {
    /// None: automatic.
    pub rate_bytes_per_sec: Option<u64>,
    pub phases: Vec<PhaseReport>,
    /// get-during-ec ÷ get-idle: throughput and p99.
    pub ec_throughput_ratio: f64,
    pub ec_p99_ratio: f64,
    /// Erasure-coded volumes built, and the time from the rate's change to
    /// the end of the encoding.
    pub ec_volumes: u64,
    pub ec_seconds: f64,
    /// put-during-repair ÷ put-idle p99 (with `--repair`).
    pub repair_p99_ratio: Option<f64>,
    pub repaired_bytes: Option<u64>,
    /// From the OSD's kill to full redundancy again, and the bytes repaired
    /// over the time repairs ran (first in flight to full redundancy).
    pub seconds_to_full_redundancy: Option<f64>,
    pub repair_mib_per_sec: Option<f64>,
    /// A second OSD killed once the first is repaired, in an idle cell (no
    /// live traffic: no pacing): from its kill to full redundancy, bytes
    /// repaired, and their rate from the first repair to full redundancy.
    pub idle_seconds_to_full_redundancy: Option<f64>,
    pub idle_repaired_bytes: Option<u64>,
    pub idle_repair_mib_per_sec: Option<f64>,
    /// The disk's write bound measured in the same run (a whole extent's
    /// write pattern, 1 GiB), and the idle repair rate as a share of it.
    pub write_bound_mib_per_sec: Option<f64>,
    pub repair_share_of_write_bound: Option<f64>,
}

/// The coordinator's floor for the background rate (SetBackgroundRate).
const FLOOR_BYTES_PER_SEC: u64 = 1024 * 1024;
/// GETs before the rate changes: more than the three heartbeats in which
/// the leader sees the cell's live traffic.
const WARM_UP: Duration = Duration::from_secs(4);
/// Longest wait for a state of the cell (volumes closing, a repair starting).
const WAIT: Duration = Duration::from_secs(600);

fn count(status: &pocket_rpc_client::CellStatus, key: &str) -> u64 {
    status.volumes_by_state.get(key).copied().unwrap_or(0)
}

fn building(status: &pocket_rpc_client::CellStatus) -> bool {
    count(status, "ec/building") > 0 || count(status, "replicated/encoding") > 0
}

pub async fn run(options: BackgroundBenchOptions) -> anyhow::Result<BackgroundBenchReport> {
    let dir = &options.dir;
    let text = std::fs::read_to_string(dir.join("operator.toml")).context("read DIR/operator.toml (is `pocket up --dir DIR` running?)")?;
    let operator: OperatorConfig = toml::from_str(&text).context("parse operator.toml")?;
    let tls = pocket_transport::Tls::load(&operator.tls).context("load operator TLS material")?;
    let coordinator = pocket_rpc_client::CoordinatorClient::connect_any(&tls, &operator.coordinator_addrs())?;
    let client = pocket_client::Client::connect(&pocket_client::ClientConfig::load(&dir.join("client.toml"))?)?;
    let status = coordinator.rpc_leader_status().await.context("CellStatus")?;
    let k = u64::from(status.data_shards);
    if (status.osds.len() as u64) < k + u64::from(status.parity_shards) {
        bail!("erasure coding needs k + m = {} OSDs; this cell has {}", k + u64::from(status.parity_shards), status.osds.len());
    }
    let rate_before = (!status.repair.background_automatic).then_some(status.repair.background_bytes_per_sec);
    let bench = BenchOptions {
        mode: Mode::Get,
        count: 1,
        size_bytes: options.blob_bytes,
        concurrency: options.concurrency,
        duration: Some(Duration::from_secs(options.seconds)),
        progress: false,
        seed: 1,
    };
    let keys: Arc<Mutex<Vec<Key>>> = Arc::default();
    let mut phases = Vec::new();

    // Erasure coding all but paused while data is loaded and the idle GETs run.
    coordinator.rpc_set_background_rate(FLOOR_BYTES_PER_SEC).await.context("SetBackgroundRate")?;
    let result = async {
        let wait_until = |what: &'static str, done: fn(&pocket_rpc_client::CellStatus) -> bool| {
            let coordinator = coordinator.clone();
            async move {
                let started = Instant::now();
                loop {
                    if let Ok(status) = coordinator.rpc_leader_status().await {
                        if done(&status) {
                            return Ok(status);
                        }
                    }
                    if started.elapsed() > WAIT {
                        bail!("{what} did not happen within {WAIT:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // Wait for any encoding under way to end (at the floor it crawls: lift it meanwhile).
        if building(&coordinator.rpc_leader_status().await?) {
            coordinator.rpc_set_background_rate(0).await?;
            wait_until("the encoding under way to end", |s| !building(s)).await?;
            coordinator.rpc_set_background_rate(FLOOR_BYTES_PER_SEC).await?;
        }
        let closed_before = count(&coordinator.rpc_leader_status().await?, "replicated/closed");
        eprintln!("loading blobs of {} bytes until {k} more volumes close", options.blob_bytes);
        let load = BenchOptions { concurrency: options.concurrency, ..bench.clone() };
        let loading = Instant::now();
        loop {
            let status = coordinator.rpc_leader_status().await?;
            if count(&status, "replicated/closed") >= closed_before + k {
                break;
            }
            if loading.elapsed() > WAIT {
                bail!("{k} volumes did not close within {WAIT:?} of PUTs");
            }
            timed_phase(&client, &keys, &BenchOptions { duration: Some(Duration::from_secs(5)), ..load.clone() }, "load", true, None).await?;
        }
        let ec_before = coordinator.rpc_leader_status().await?;
        eprintln!("{} blobs stored; measuring GETs with no background work", keys.lock().expect("keys").len());
        phases.push(timed_phase(&client, &keys, &bench, "get-idle", false, None).await?);

        // The rate goes up: erasure coding starts; GETs measured while it
        // builds. An unmeasured GET load runs from a few seconds before, so
        // that the cell is seen busy as it would be under steady traffic.
        let warm_stop = Arc::new(AtomicBool::new(false));
        let warm = tokio::spawn({
            let (client, keys, stop) = (client.clone(), keys.clone(), warm_stop.clone());
            let warm = BenchOptions { duration: Some(WAIT), ..bench.clone() };
            async move { timed_phase(&client, &keys, &warm, "warm", false, Some(stop)).await }
        });
        tokio::time::sleep(WARM_UP).await;
        let changed = Instant::now();
        set_rate(&coordinator, options.rate_bytes_per_sec).await?;
        let started = wait_until("erasure coding to start", building).await;
        warm_stop.store(true, Ordering::Relaxed);
        let _ = warm.await;
        started?;
        let ended = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn({
            let (coordinator, ended) = (coordinator.clone(), ended.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if coordinator.rpc_leader_status().await.is_ok_and(|status| !building(&status)) {
                        ended.store(true, Ordering::Relaxed);
                        return changed.elapsed();
                    }
                }
            }
        });
        phases.push(timed_phase(&client, &keys, &bench, "get-during-ec", false, Some(ended.clone())).await?);
        let abort = watcher.abort_handle();
        let ec_seconds = match tokio::time::timeout(WAIT, watcher).await {
            Ok(joined) => joined?.as_secs_f64(),
            Err(_) => {
                abort.abort();
                bail!("encoding did not end within {WAIT:?}");
            }
        };
        let ec_after = coordinator.rpc_leader_status().await?;
        let encoded = count(&ec_after, "ec/ec").saturating_sub(count(&ec_before, "ec/ec"));
        eprintln!("{encoded} erasure-coded volumes built in {ec_seconds:.1} s");

        let (mut repair_p99_ratio, mut repaired_bytes) = (None, None);
        let (mut seconds_to_full_redundancy, mut repair_mib_per_sec, mut write_bound_mib_per_sec) = (None, None, None);
        let (mut idle_seconds_to_full_redundancy, mut idle_repair_mib_per_sec, mut idle_repaired_bytes) = (None, None, None);
        if options.repair {
            let bound_dir = dir.clone();
            write_bound_mib_per_sec = Some(
                tokio::task::spawn_blocking(move || crate::limits::write_bound_mib_per_sec(&bound_dir, 1 << 30)).await??,
            );
            set_rate(&coordinator, options.rate_bytes_per_sec).await?;
            let put = BenchOptions { mode: Mode::Put, ..bench.clone() };
            phases.push(timed_phase(&client, &keys, &put, "put-idle", true, None).await?);
            let victim = ec_after.osds.iter().map(|osd| osd.osd_id).max().context("no OSD")?;
            let name = format!("osd-{victim}");
            std::fs::create_dir_all(dir.join("hold"))?;
            std::fs::write(dir.join("hold").join(&name), b"")?;
            let info = pocket_daemon::runinfo::RunInfo::read(&dir.join("run").join(format!("{name}.run")))?;
            #[allow(unsafe_code)]
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(info.pid as libc::pid_t, libc::SIGKILL);
            }
            let killed = Instant::now();
            eprintln!("{name} killed; waiting for repairs to start (the pocket's --osd-out-after)");
            // The OSD comes back whatever happens below.
            struct Release(PathBuf);
            impl Drop for Release {
                fn drop(&mut self) {
                    let _ = std::fs::remove_file(&self.0);
                }
            }
            let _release = Release(dir.join("hold").join(&name));
            let before = wait_until("repairs to start", |s| s.repair.in_flight > 0).await?.repair.repaired_bytes_total;
            let repairing = Instant::now();
            let during = timed_phase(&client, &keys, &put, "put-during-repair", true, None).await?;
            let after = coordinator.rpc_leader_status().await?.repair.repaired_bytes_total;
            let full = wait_until("full redundancy", |s| {
                s.repair.queue_extents == 0 && s.repair.in_flight == 0 && s.repair.levels.iter().all(|(missing, (n, _))| *missing == 0 || *n == 0)
            })
            .await?;
            seconds_to_full_redundancy = Some(killed.elapsed().as_secs_f64());
            let repaired_total = full.repair.repaired_bytes_total.saturating_sub(before);
            repair_mib_per_sec = Some(repaired_total as f64 / 1048576.0 / repairing.elapsed().as_secs_f64().max(1e-9));

            // The same with no live traffic: the next OSD, killed in an idle cell.
            let victim = victim - 1;
            let name = format!("osd-{victim}");
            std::fs::write(dir.join("hold").join(&name), b"")?;
            let _release_too = Release(dir.join("hold").join(&name));
            let info = pocket_daemon::runinfo::RunInfo::read(&dir.join("run").join(format!("{name}.run")))?;
            #[allow(unsafe_code)]
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(info.pid as libc::pid_t, libc::SIGKILL);
            }
            let killed = Instant::now();
            eprintln!("{name} killed in an idle cell; waiting for its repair");
            let before = wait_until("repairs to start", |s| s.repair.in_flight > 0).await?.repair.repaired_bytes_total;
            let repairing = Instant::now();
            let full = wait_until("full redundancy", |s| {
                s.repair.queue_extents == 0 && s.repair.in_flight == 0 && s.repair.levels.iter().all(|(missing, (n, _))| *missing == 0 || *n == 0)
            })
            .await?;
            idle_seconds_to_full_redundancy = Some(killed.elapsed().as_secs_f64());
            let repaired = full.repair.repaired_bytes_total.saturating_sub(before);
            idle_repaired_bytes = Some(repaired);
            idle_repair_mib_per_sec = Some(repaired as f64 / 1048576.0 / repairing.elapsed().as_secs_f64().max(1e-9));
            let idle = phases.last().expect("put-idle");
            repair_p99_ratio = Some(during.latency.p99_ms / idle.latency.p99_ms.max(1e-9));
            repaired_bytes = Some(after.saturating_sub(before));
            phases.push(during);
        }
        let idle = &phases[0];
        let during = &phases[1];
        Ok::<_, anyhow::Error>(BackgroundBenchReport {
            rate_bytes_per_sec: options.rate_bytes_per_sec,
            ec_throughput_ratio: during.mib_per_sec / idle.mib_per_sec.max(1e-9),
            ec_p99_ratio: during.latency.p99_ms / idle.latency.p99_ms.max(1e-9),
            ec_volumes: encoded,
            ec_seconds,
            repair_p99_ratio,
            repaired_bytes,
            seconds_to_full_redundancy,
            repair_mib_per_sec,
            write_bound_mib_per_sec,
            idle_seconds_to_full_redundancy,
            idle_repaired_bytes,
            idle_repair_mib_per_sec,
            repair_share_of_write_bound: idle_repair_mib_per_sec.zip(write_bound_mib_per_sec).map(|(rate, bound)| rate / bound.max(1e-9)),
            phases: phases.clone(),
        })
    }
    .await;
    // The operator's rate (or the automatic one) comes back whatever happened.
    let _ = set_rate(&coordinator, rate_before).await;
    result
}

/// An operator's rate, or (None) the automatic one.
async fn set_rate(coordinator: &pocket_rpc_client::CoordinatorClient, rate: Option<u64>) -> anyhow::Result<()> {
    match rate {
        Some(rate) => coordinator.rpc_set_background_rate(rate).await?,
        None => coordinator.rpc_set_background_automatic().await?,
    };
    Ok(())
}

pub async fn command(options: BackgroundBenchOptions, json: bool) -> anyhow::Result<()> {
    let report = run(options).await?;
    crate::print_report(&report, json, render)
}

pub fn render(r: &BackgroundBenchReport) -> String {
    let mut out = crate::bench::table(&r.phases);
    let rate = match r.rate_bytes_per_sec {
        None => "automatic".to_string(),
        Some(0) => "no limit".to_string(),
        Some(rate) => format!("{} MiB/s", rate >> 20),
    };
    out.push_str(&format!(
        "background rate {rate}: GETs during erasure coding at {:.2}x the throughput and {:.2}x the p99 of idle; {} volumes encoded in {:.1} s\n",
        r.ec_throughput_ratio, r.ec_p99_ratio, r.ec_volumes, r.ec_seconds
    ));
    if let (Some(ratio), Some(bytes)) = (r.repair_p99_ratio, r.repaired_bytes) {
        out.push_str(&format!("PUT p99 during repair at {ratio:.2}x idle; {:.1} MiB repaired during the phase\n", bytes as f64 / 1048576.0));
    }
    if let (Some(seconds), Some(rate)) = (r.seconds_to_full_redundancy, r.repair_mib_per_sec) {
        out.push_str(&format!("under PUTs: full redundancy {seconds:.1} s after the kill; repair {rate:.1} MiB/s\n"));
    }
    if let (Some(seconds), Some(bytes), Some(rate), Some(bound)) =
        (r.idle_seconds_to_full_redundancy, r.idle_repaired_bytes, r.idle_repair_mib_per_sec, r.write_bound_mib_per_sec)
    {
        out.push_str(&format!(
            "idle: full redundancy {seconds:.1} s after the kill ({:.1} MiB repaired); repair {rate:.1} MiB/s against a write bound of {bound:.1} MiB/s ({:.0}%)\n",
            bytes as f64 / 1048576.0,
            100.0 * rate / bound.max(1e-9)
        ));
    }
    out
}
