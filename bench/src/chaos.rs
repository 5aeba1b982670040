//! `pocket chaos --dir DIR`: faults against a running `pocket up --dir DIR`
//! while a PUT/GET load runs (issue 19). Kinds of fault, picked at random:
//!
//! - `osd_restart`: SIGKILL an OSD (`pocket up` restarts it);
//! - `osd_down`: SIGKILL an OSD and hold it down for good (`DIR/hold/osd-N`);
//! - `disk_wipe`: hold an OSD down, remove its first disk, let it restart
//!   on an empty disk;
//! - `disk_fail`: remove one disk directory of a live OSD that has another;
//! - `leader_kill`: SIGKILL the leading coordinator.
//!
//! A fault that loses copies (an OSD held down, a disk wiped or failed) is
//! injected only while the cell is at full redundancy, and their number is
//! bounded so that the cell can still repair everything (`--max-down`, by
//! default the OSDs beyond k + m). At
//! the end the load stops, the command waits for full redundancy, and every
//! acknowledged PUT is read back and checked against its key (a blob's key
//! is its BLAKE3, so a match is a byte-identical blob). One summary line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use pocket_daemon::operator::OperatorConfig;
use pocket_daemon::runinfo::RunInfo;
use pocket_proto::Key;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

pub struct ChaosOptions {
    pub dir: PathBuf,
    /// Faults to inject.
    pub faults: u32,
    /// Seconds the faults are spread over.
    pub seconds: u64,
    /// OSDs held down (or disks failed) at most; None: OSDs beyond k + m.
    pub max_down: Option<u32>,
    /// Size of each PUT of the load.
    pub blob_bytes: usize,
    /// PUTs (and GETs) in flight.
    pub concurrency: usize,
    /// How long to wait for full redundancy after the last fault.
    pub heal_timeout: Duration,
    pub seed: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct ChaosReport {
    pub faults: BTreeMap<String, u64>,
    pub puts_acked: u64,
    pub puts_failed: u64,
    pub gets_ok: u64,
    pub get_errors: u64,
    /// Acknowledged PUTs that did not read back intact at the end (must be 0).
    pub acked_lost: u64,
    /// From the last fault to full redundancy; None if not reached.
    pub seconds_to_full_redundancy: Option<f64>,
    /// When full redundancy was not reached: what the cell looked like last
    /// (volumes by state, extents by copies missing, the repair queue).
    pub last_state: Option<String>,
}

fn signal(pid: u32, signal: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

fn run_info(dir: &Path, daemon: &str) -> anyhow::Result<RunInfo> {
    RunInfo::read(&dir.join("run").join(format!("{daemon}.run")))
}

/// The OSDs of the pocket (by their run files) with their disk directories.
fn osds(dir: &Path) -> Vec<(u64, Vec<PathBuf>)> {
    let mut out = Vec::new();
    for n in 1.. {
        let osd_dir = dir.join(format!("osd-{n}"));
        if !osd_dir.exists() {
            break;
        }
        let mut disks: Vec<PathBuf> = std::fs::read_dir(&osd_dir)
            .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        disks.sort();
        out.push((n, disks));
    }
    out
}

pub async fn run(options: ChaosOptions) -> anyhow::Result<ChaosReport> {
    let dir = options.dir.clone();
    let text = std::fs::read_to_string(dir.join("operator.toml")).context("read DIR/operator.toml (is `pocket up --dir DIR` running?)")?;
    let operator: OperatorConfig = toml::from_str(&text).context("parse operator.toml")?;
    let tls = pocket_transport::Tls::load(&operator.tls).context("load operator TLS material")?;
    let coordinator = pocket_rpc_client::CoordinatorClient::connect_any(&tls, &operator.coordinator_addrs())?;
    let status = coordinator.rpc_status().await.context("CellStatus")?;
    let all_osds = osds(&dir);
    if all_osds.is_empty() {
        bail!("no OSD directories under {}", dir.display());
    }
    let spare = (all_osds.len() as u32).saturating_sub(status.data_shards + status.parity_shards);
    let max_down = options.max_down.unwrap_or(spare);
    let client = pocket_client::Client::connect(&pocket_client::ClientConfig::load(&dir.join("client.toml"))?)?;
    let mut rng = match options.seed {
        Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
        None => rand::rngs::StdRng::from_os_rng(),
    };

    // The load: PUTs of fresh blobs and GETs of acknowledged ones.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Key>>> = Arc::new(Mutex::new(Vec::new()));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // puts ok, puts failed, gets ok, get errors
    let mut load = Vec::new();
    for worker in 0..options.concurrency.max(1) {
        let (stop, acked, counts, client, size) = (stop.clone(), acked.clone(), counts.clone(), client.clone(), options.blob_bytes);
        load.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
            while !stop.load(Ordering::Relaxed) {
                if rng.random_bool(0.5) {
                    let mut data = vec![0u8; size];
                    rng.fill_bytes(&mut data);
                    match client.put(Bytes::from(data)).await {
                        Ok((key, _)) => {
                            acked.lock().expect("acked lock").push(key);
                            counts[0].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            counts[1].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    let key = {
                        let acked = acked.lock().expect("acked lock");
                        if acked.is_empty() {
                            None
                        } else {
                            Some(acked[rng.random_range(0..acked.len())])
                        }
                    };
                    let Some(key) = key else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    match client.get(&key).await {
                        Ok(data) if Key::of(&data) == key => counts[2].fetch_add(1, Ordering::Relaxed),
                        _ => counts[3].fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }

    // The faults.
    let mut report = ChaosReport::default();
    let hold = dir.join("hold");
    std::fs::create_dir_all(&hold).context("create DIR/hold")?;
    let mut down: Vec<u64> = Vec::new();
    let mut failed_disks: Vec<PathBuf> = Vec::new();
    let pause = Duration::from_secs_f64(options.seconds as f64 / f64::from(options.faults.max(1)));
    let progress = indicatif::ProgressBar::new(u64::from(options.faults));
    for _ in 0..options.faults {
        tokio::time::sleep(pause).await;
        let live: Vec<&(u64, Vec<PathBuf>)> = all_osds.iter().filter(|(n, _)| !down.contains(n)).collect();
        // A fault that loses copies only when the cell is whole again: two
        // such faults before the first is repaired could exceed what the
        // code tolerates (m, or R − 1), and that is not the test.
        let whole = match coordinator.rpc_status().await {
            Ok(status) => no_copy_missing(&status),
            Err(_) => false,
        };
        let budget_left = whole && (down.len() + failed_disks.len()) < max_down as usize;
        let mut kinds = vec!["osd_restart", "leader_kill"];
        if budget_left {
            kinds.extend(["osd_down", "disk_wipe"]);
            if live.iter().any(|(_, disks)| disks.iter().filter(|d| d.exists()).count() >= 2) {
                kinds.push("disk_fail");
            }
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        let &(n, ref disks) = live[rng.random_range(0..live.len())];
        let name = format!("osd-{n}");
        let done = match kind {
            "osd_restart" => run_info(&dir, &name).map(|info| signal(info.pid, libc::SIGKILL)).is_ok(),
            "osd_down" => {
                std::fs::write(hold.join(&name), b"")?;
                down.push(n);
                run_info(&dir, &name).map(|info| signal(info.pid, libc::SIGKILL)).is_ok()
            }
            "disk_wipe" => {
                std::fs::write(hold.join(&name), b"")?;
                if let Ok(info) = run_info(&dir, &name) {
                    signal(info.pid, libc::SIGKILL);
                }
                // Let it die before its disk goes.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let wiped = disks.first().is_some_and(|disk| std::fs::remove_dir_all(disk).is_ok());
                std::fs::remove_file(hold.join(&name))?;
                // A wiped disk loses its copies once: counted against the budget.
                if wiped {
                    failed_disks.push(disks[0].clone());
                }
                wiped
            }
            "disk_fail" => {
                let target = live
                    .iter()
                    .filter(|(_, disks)| disks.iter().filter(|d| d.exists()).count() >= 2)
                    .flat_map(|(_, disks)| disks.iter().filter(|d| d.exists()).last())
                    .next()
                    .cloned();
                match target {
                    Some(disk) => {
                        let removed = std::fs::remove_dir_all(&disk).is_ok();
                        failed_disks.push(disk);
                        removed
                    }
                    None => false,
                }
            }
            _ => match coordinator.rpc_status().await {
                Ok(status) if !status.leader.is_empty() => {
                    run_info(&dir, &status.leader).map(|info| signal(info.pid, libc::SIGKILL)).is_ok()
                }
                _ => false,
            },
        };
        if done {
            *report.faults.entry(kind.to_string()).or_default() += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let last_fault = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }

    // Full redundancy, then every acknowledged PUT read back.
    let deadline = last_fault + options.heal_timeout;
    while Instant::now() < deadline {
        if let Ok(status) = coordinator.rpc_status().await {
            if full_redundancy(&status) {
                report.seconds_to_full_redundancy = Some(last_fault.elapsed().as_secs_f64());
                report.last_state = None;
                break;
            }
            report.last_state = Some(format!(
                "volumes {:?}; extents by copies missing {:?}; repair queue {} copies, {} in flight; OSDs {:?}",
                status.volumes_by_state,
                status.repair.levels,
                status.repair.queue_extents,
                status.repair.in_flight,
                status.osds.iter().map(|o| (o.osd_id, o.health.clone(), o.failed_disks)).collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let keys = acked.lock().expect("acked lock").clone();
    for key in &keys {
        let mut intact = false;
        for _ in 0..3 {
            match client.get(key).await {
                Ok(data) if Key::of(&data) == *key => {
                    intact = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if !intact {
            report.acked_lost += 1;
        }
    }
    report.puts_acked = counts[0].load(Ordering::Relaxed);
    report.puts_failed = counts[1].load(Ordering::Relaxed);
    report.gets_ok = counts[2].load(Ordering::Relaxed);
    report.get_errors = counts[3].load(Ordering::Relaxed);
    Ok(report)
}

/// Every logical extent at full redundancy and nothing queued for repair.
fn no_copy_missing(status: &pocket_rpc_client::CellStatus) -> bool {
    status.repair.levels.iter().all(|(missing, (extents, _))| *missing == 0 || *extents == 0) && status.repair.queue_extents == 0
}

/// [`no_copy_missing`], and no volume closing or being created.
fn full_redundancy(status: &pocket_rpc_client::CellStatus) -> bool {
    no_copy_missing(status)
        && status
            .volumes_by_state
            .iter()
            .all(|(state, count)| *count == 0 || !["replicated/closing", "replicated/creating"].contains(&state.as_str()))
}

pub fn render(r: &ChaosReport) -> String {
    let faults: Vec<String> = r.faults.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    let total: u64 = r.faults.values().sum();
    format!(
        "chaos: {total} faults ({}); PUTs {} acked, {} failed; acked PUTs lost {}; GETs {} ok, {} errors during chaos; full redundancy {}\n",
        faults.join(", "),
        r.puts_acked,
        r.puts_failed,
        r.acked_lost,
        r.gets_ok,
        r.get_errors,
        r.seconds_to_full_redundancy.map_or("NOT reached".to_string(), |s| format!("{s:.1} s after the last fault"))
    ) + &r.last_state.as_ref().map(|state| format!("last state: {state}\n")).unwrap_or_default()
}

pub async fn command(options: ChaosOptions, json: bool) -> anyhow::Result<()> {
    let report = run(options).await?;
    crate::print_report(&report, json, render)?;
    if report.acked_lost > 0 || report.seconds_to_full_redundancy.is_none() {
        bail!("chaos run failed: {} acknowledged PUTs lost; full redundancy {}", report.acked_lost, if report.seconds_to_full_redundancy.is_some() { "reached" } else { "not reached" });
    }
    Ok(())
}
