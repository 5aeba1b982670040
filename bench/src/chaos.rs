//! `pocket chaos --dir DIR`: faults against a running `pocket up --dir DIR`
//! while a PUT/GET load runs (issue 19). Kinds of fault, picked at random:
//!
//! - `osd_restart`: SIGKILL an OSD (`pocket up` restarts it);
//! - `osd_down`: SIGKILL an OSD and hold it down for good (`DIR/hold/osd-N`);
//! - `disk_wipe`: hold an OSD down, remove its first disk, let it restart
//!   on an empty disk;
//! - `disk_fail`: remove one disk directory of a live OSD that has another;
//! - `leader_kill`: SIGKILL the leading coordinator;
//! - `osd_return`: let an OSD held down come back with its data, once the
//!   cell is whole again (its copies were repaired: duplicates).
//!
//! A fault that loses copies (an OSD held down, a disk wiped or failed) is
//! injected only while the cell is at full redundancy, and their number is
//! bounded so that the cell can still repair everything (`--max-down`, by
//! default the OSDs beyond k + m). At
//! the end the load stops, the command waits for full redundancy, and every
//! acknowledged PUT is read back and checked against its key (a blob's key
//! is its BLAKE3, so a match is a byte-identical blob).
//!
//! Then convergence: the OSDs held down come back with their data, and the
//! command waits until every OSD is up, no volume is in a transitional state
//! (creating, closing, encoding, building, retiring), reconciliation has
//! deleted every copy nothing names, and storage is within 5% of what the
//! volumes' kinds imply — in the cell database, and on disk (the extent and
//! parity files of every OSD, less the open extents; deleted extents wait in
//! each disk's `trash/` for the trash delay and are reported apart). One
//! summary line.

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
    /// OSDs held down at once at most; None: OSDs beyond k + m.
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
    /// The same, read again after convergence (reconciliation deleted copies).
    pub acked_lost_after_convergence: u64,
    /// From the last fault to full redundancy; None if not reached.
    pub seconds_to_full_redundancy: Option<f64>,
    /// When full redundancy was not reached: what the cell looked like last
    /// (volumes by state, extents by copies missing, the repair queue).
    pub last_state: Option<String>,
    /// After the held OSDs came back: how the cell converged.
    pub convergence: Option<Convergence>,
}

/// Storage once the cell has converged (or when the wait ended).
#[derive(Debug, Default, Serialize)]
pub struct Convergence {
    /// From releasing the held OSDs to convergence; None if not reached.
    pub seconds: Option<f64>,
    /// Stored ÷ logical bytes of sealed data in the cell database.
    pub db_overhead: f64,
    /// Extent and parity files on the OSDs' disks, less open extents, ÷ logical.
    pub disk_overhead: f64,
    /// What the volumes' kinds imply ÷ logical.
    pub implied_overhead: f64,
    /// Copies nothing names left on OSDs, and volumes in a transitional state.
    pub unnamed_copies: u64,
    pub transitional_volumes: u64,
    /// Files left in the OSDs' trash.
    pub trash_bytes: u64,
    /// Copies reconciliation moved to trash (by the last leader).
    pub reconciled_copies: u64,
}

/// States a converged cell has no volume in.
const TRANSITIONAL: [&str; 5] = ["creating", "closing", "encoding", "building", "retiring"];

fn transitional_volumes(status: &pocket_rpc_client::CellStatus) -> u64 {
    status
        .volumes_by_state
        .iter()
        .filter(|(key, _)| key.split_once('/').is_some_and(|(_, state)| TRANSITIONAL.contains(&state)))
        .map(|(_, count)| *count)
        .sum()
}

/// Bytes of the files directly under `dir` (none if it is missing).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// (extent and parity files, trash files) over every disk of every OSD.
fn disk_bytes(dir: &Path) -> (u64, u64) {
    let mut stored = 0;
    let mut trash = 0;
    for (_, disks) in osds(dir) {
        for disk in disks {
            stored += dir_bytes(&disk.join("extents")) + dir_bytes(&disk.join("parity"));
            trash += dir_bytes(&disk.join("trash"));
        }
    }
    (stored, trash)
}

/// Within 5% of what the volumes' kinds imply.
const CONVERGED_TOLERANCE: f64 = 1.05;

/// Releases the held OSDs and waits until the cell converges (module docs).
async fn converge(
    dir: &Path,
    coordinator: &pocket_rpc_client::CoordinatorClient,
    timeout: Duration,
) -> Convergence {
    let released = Instant::now();
    if let Ok(entries) = std::fs::read_dir(dir.join("hold")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("osd-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let mut convergence = Convergence::default();
    // When every OSD was first seen up, and the first reconciliation pass
    // that ended after that: a later pass began after every OSD was up.
    let mut all_up_since: Option<i64> = None;
    let mut first_pass_after_up: Option<i64> = None;
    while released.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(status) = coordinator.rpc_leader_status().await else { continue };
        let all_up = !status.osds.is_empty() && status.osds.iter().all(|osd| osd.health == "up");
        let logical = status.sealed_logical_bytes.max(1) as f64;
        let (files, trash) = disk_bytes(dir);
        let storage = &status.storage;
        convergence.db_overhead = status.sealed_stored_bytes as f64 / logical;
        convergence.implied_overhead = storage.implied_bytes as f64 / logical;
        convergence.disk_overhead = files.saturating_sub(storage.open_bytes) as f64 / logical;
        convergence.unnamed_copies = storage.unnamed_copies;
        convergence.transitional_volumes = transitional_volumes(&status);
        convergence.trash_bytes = trash;
        convergence.reconciled_copies = storage.reconciled_copies;
        if !all_up {
            all_up_since = None;
            first_pass_after_up = None;
            continue;
        }
        let up_since = *all_up_since.get_or_insert_with(pocket_proto::now_unix_ms);
        let reconciled_since_up = match first_pass_after_up {
            None => {
                if storage.reconciled_unix_ms > up_since {
                    first_pass_after_up = Some(storage.reconciled_unix_ms);
                }
                false
            }
            Some(first) => storage.reconciled_unix_ms > first,
        };
        let bound = storage.implied_bytes as f64 * CONVERGED_TOLERANCE;
        if reconciled_since_up
            && storage.unnamed_copies == 0
            && convergence.transitional_volumes == 0
            && no_copy_missing(&status)
            && status.sealed_stored_bytes as f64 <= bound
            && files.saturating_sub(storage.open_bytes) as f64 <= bound
        {
            convergence.seconds = Some(released.elapsed().as_secs_f64());
            break;
        }
    }
    convergence
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
    let status = coordinator.rpc_leader_status().await.context("CellStatus")?;
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
    let pause = Duration::from_secs_f64(options.seconds as f64 / f64::from(options.faults.max(1)));
    let progress = indicatif::ProgressBar::new(u64::from(options.faults));
    for _ in 0..options.faults {
        tokio::time::sleep(pause).await;
        let live: Vec<&(u64, Vec<PathBuf>)> = all_osds.iter().filter(|(n, _)| !down.contains(n)).collect();
        // A fault that loses copies only when the cell is whole again: two
        // such faults before the first is repaired could exceed what the
        // code tolerates (m, or R − 1), and that is not the test.
        let whole = match coordinator.rpc_leader_status().await {
            Ok(status) => no_copy_missing(&status),
            Err(_) => false,
        };
        // Held OSDs bound the faults that lose copies; a wiped or failed
        // disk's copies are repaired elsewhere once the cell is whole again.
        let budget_left = whole && down.len() < max_down as usize;
        let mut kinds = vec!["osd_restart", "leader_kill"];
        if budget_left {
            kinds.extend(["osd_down", "disk_wipe"]);
            if live.iter().any(|(_, disks)| disks.iter().filter(|d| d.exists()).count() >= 2) {
                kinds.push("disk_fail");
            }
        }
        if whole && !down.is_empty() {
            // An OSD held down comes back with its data, after its copies
            // were repaired: duplicates for reconciliation.
            kinds.push("osd_return");
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        let &(n, ref disks) = live[rng.random_range(0..live.len())];
        let name = format!("osd-{n}");
        let done = match kind {
            "osd_return" => {
                let n = down.remove(rng.random_range(0..down.len()));
                std::fs::remove_file(hold.join(format!("osd-{n}"))).is_ok()
            }
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
                wiped
            }
            "disk_fail" => {
                let target = live
                    .iter()
                    .filter(|(_, disks)| disks.iter().filter(|d| d.exists()).count() >= 2)
                    .flat_map(|(_, disks)| disks.iter().filter(|d| d.exists()).last())
                    .next()
                    .cloned();
                target.is_some_and(|disk| std::fs::remove_dir_all(disk).is_ok())
            }
            _ => match coordinator.rpc_leader_status().await {
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
        if let Ok(status) = coordinator.rpc_leader_status().await {
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
    report.acked_lost = lost(&client, &keys).await;
    report.convergence = Some(converge(&dir, &coordinator, options.heal_timeout).await);
    // Reconciliation deleted copies: every acknowledged PUT must still read back.
    report.acked_lost_after_convergence = lost(&client, &keys).await;
    report.puts_acked = counts[0].load(Ordering::Relaxed);
    report.puts_failed = counts[1].load(Ordering::Relaxed);
    report.gets_ok = counts[2].load(Ordering::Relaxed);
    report.get_errors = counts[3].load(Ordering::Relaxed);
    Ok(report)
}

/// How many of `keys` do not read back intact (three tries each; a blob's
/// key is its BLAKE3, so a match is a byte-identical blob).
async fn lost(client: &pocket_client::Client, keys: &[Key]) -> u64 {
    let mut lost = 0;
    for key in keys {
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
            lost += 1;
        }
    }
    lost
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
        + &r.convergence.as_ref().map(|c| render_convergence(c, r.acked_lost_after_convergence)).unwrap_or_default()
}

fn render_convergence(c: &Convergence, lost_after: u64) -> String {
    format!(
        "convergence: {}; acked PUTs lost after it {lost_after}; overhead {:.3}x in the cell database, {:.3}x on disk, the volumes' kinds imply {:.3}x; {} copies reconciled to trash; left: {} unnamed copies, {} transitional volumes, {} trash bytes\n",
        c.seconds.map_or("NOT reached".to_string(), |s| format!("{s:.1} s after the held OSDs came back")),
        c.db_overhead,
        c.disk_overhead,
        c.implied_overhead,
        c.reconciled_copies,
        c.unnamed_copies,
        c.transitional_volumes,
        c.trash_bytes
    )
}

pub async fn command(options: ChaosOptions, json: bool) -> anyhow::Result<()> {
    let report = run(options).await?;
    crate::print_report(&report, json, render)?;
    let converged = report.convergence.as_ref().is_some_and(|c| c.seconds.is_some());
    let lost = report.acked_lost + report.acked_lost_after_convergence;
    if lost > 0 || report.seconds_to_full_redundancy.is_none() || !converged {
        bail!(
            "chaos run failed: {} acknowledged PUTs lost; full redundancy {}; convergence {}",
            lost,
            if report.seconds_to_full_redundancy.is_some() { "reached" } else { "not reached" },
            if converged { "reached" } else { "not reached" }
        );
    }
    Ok(())
}
