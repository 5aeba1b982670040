//! `pocket cell status --config F [--json] [--watch]`: what an operator asks
//! a cell's coordinator — its volumes by kind and state, the storage overhead
//! of its sealed data, its OSDs and their health, the redundancy left and
//! the repair queue. `pocket cell background-rate`: the byte rate repair and
//! erasure coding share.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use pocket_daemon::operator::OperatorConfig;
use pocket_transport::Tls;
use serde::{Deserialize, Serialize};

/// The cell's state as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellReport {
    pub cell_id: u32,
    pub data_shards: u32,
    pub parity_shards: u32,
    /// "KIND/STATE" → number of volumes.
    pub volumes: std::collections::BTreeMap<String, u64>,
    pub sealed_logical_bytes: u64,
    pub sealed_stored_bytes: u64,
    /// stored ÷ logical for sealed data; 0 when there is none yet.
    pub overhead: f64,
    /// (k + m) ÷ k: the overhead once every sealed volume is erasure-coded.
    pub erasure_overhead: f64,
    /// implied ÷ logical: the overhead the sealed volumes' kinds imply (R for
    /// closed replicated volumes, their shards for erasure-coded ones).
    /// Storage above it is extra copies; 0 when there is no sealed data.
    #[serde(default)]
    pub implied_overhead: f64,
    /// Copies on OSDs that nothing names, not deleted yet (the leader's last
    /// reconciliation pass), and their bytes.
    #[serde(default)]
    pub unnamed_copies: u64,
    #[serde(default)]
    pub unnamed_bytes: u64,
    /// Copies reconciliation moved to trash since the leader started.
    #[serde(default)]
    pub reconciled_copies: u64,
    pub osds_registered: usize,
    pub osds_alive: usize,
    pub osd_used_bytes: u64,
    /// Each OSD: id, health (`up`, `down`, `out`) and used bytes.
    pub osds: Vec<OsdReport>,
    pub redundancy: Redundancy,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OsdReport {
    pub osd_id: u64,
    pub health: String,
    pub used_bytes: u64,
    /// Its disks that failed or were lost.
    pub failed_disks: u32,
}

/// Redundancy left and the repair queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Redundancy {
    /// Copies or shards missing ("0" = full) → logical extents at that level
    /// (an erasure-coded volume counts its k data extents).
    pub extents_by_missing: std::collections::BTreeMap<u32, u64>,
    pub bytes_by_missing: std::collections::BTreeMap<u32, u64>,
    pub repair_queue_extents: u64,
    pub repair_queue_bytes: u64,
    pub repairs_in_flight: u64,
    pub oldest_repair_wait_seconds: f64,
    pub repair_bytes_per_sec: u64,
    pub repaired_bytes_total: u64,
    pub repaired_total: u64,
    /// Queue bytes ÷ repair rate; none while nothing is being repaired.
    pub eta_seconds: Option<f64>,
    /// The background byte rate in force; 0 = no limit.
    pub background_bytes_per_sec: u64,
    /// The rate in force now (0: no limit; the idle rate when the cell has
    /// no live traffic) and the cell's live traffic, bytes/s.
    #[serde(default)]
    pub background_rate_in_force: u64,
    #[serde(default)]
    pub live_bytes_per_sec: u64,
    /// No operator's rate: the configured ones apply, by live traffic.
    #[serde(default)]
    pub background_automatic: bool,
}

impl Redundancy {
    /// Every logical extent is at full redundancy and nothing waits.
    pub fn full(&self) -> bool {
        self.extents_by_missing.iter().all(|(missing, extents)| *missing == 0 || *extents == 0) && self.repair_queue_extents == 0
    }
}

fn client(config: &OperatorConfig) -> anyhow::Result<pocket_rpc_client::CoordinatorClient> {
    let tls = Tls::load(&config.tls).context("load operator TLS material")?;
    Ok(pocket_rpc_client::CoordinatorClient::connect_any(&tls, &config.coordinator_addrs())?)
}

pub async fn fetch(config: &OperatorConfig) -> anyhow::Result<CellReport> {
    let mut status = client(config)?.rpc_status().await.context("CellStatus")?;
    // A standby answers with the cell's state but not the leader's repair
    // figures: ask the leader for those.
    if !status.leader_addr.is_empty() && status.answered_by != status.leader {
        let tls = Tls::load(&config.tls).context("load operator TLS material")?;
        let leader = pocket_rpc_client::CoordinatorClient::connect(&tls, &status.leader_addr)?;
        if let Ok(from_leader) = leader.rpc_status().await {
            status = from_leader;
        }
    }
    let overhead = if status.sealed_logical_bytes == 0 {
        0.0
    } else {
        status.sealed_stored_bytes as f64 / status.sealed_logical_bytes as f64
    };
    let repair = &status.repair;
    let redundancy = Redundancy {
        extents_by_missing: repair.levels.iter().map(|(missing, (extents, _))| (*missing, *extents)).collect(),
        bytes_by_missing: repair.levels.iter().map(|(missing, (_, bytes))| (*missing, *bytes)).collect(),
        repair_queue_extents: repair.queue_extents,
        repair_queue_bytes: repair.queue_bytes,
        repairs_in_flight: repair.in_flight,
        oldest_repair_wait_seconds: repair.oldest_wait_ms as f64 / 1000.0,
        repair_bytes_per_sec: repair.bytes_per_sec,
        repaired_bytes_total: repair.repaired_bytes_total,
        repaired_total: repair.repaired_total,
        eta_seconds: (repair.bytes_per_sec > 0).then(|| repair.queue_bytes as f64 / repair.bytes_per_sec as f64),
        background_bytes_per_sec: repair.background_bytes_per_sec,
        background_rate_in_force: repair.background_rate_in_force,
        live_bytes_per_sec: repair.live_bytes_per_sec,
        background_automatic: repair.background_automatic,
    };
    Ok(CellReport {
        cell_id: status.cell_id,
        data_shards: status.data_shards,
        parity_shards: status.parity_shards,
        volumes: status.volumes_by_state,
        sealed_logical_bytes: status.sealed_logical_bytes,
        sealed_stored_bytes: status.sealed_stored_bytes,
        overhead,
        erasure_overhead: f64::from(status.data_shards + status.parity_shards) / f64::from(status.data_shards.max(1)),
        implied_overhead: if status.sealed_logical_bytes == 0 {
            0.0
        } else {
            status.storage.implied_bytes as f64 / status.sealed_logical_bytes as f64
        },
        unnamed_copies: status.storage.unnamed_copies,
        unnamed_bytes: status.storage.unnamed_bytes,
        reconciled_copies: status.storage.reconciled_copies,
        osds_registered: status.osds.len(),
        osds_alive: status.osds.iter().filter(|o| o.alive).count(),
        osd_used_bytes: status.osds.iter().map(|o| o.used_bytes).sum(),
        osds: status
            .osds
            .iter()
            .map(|o| OsdReport { osd_id: o.osd_id, health: o.health.clone(), used_bytes: o.used_bytes, failed_disks: o.failed_disks })
            .collect(),
        redundancy,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A number with thousands separators: 1204 → "1,204".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A text bar of `width` cells, `done` of `total` filled.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 { width } else { ((done as f64 / total as f64) * width as f64).round() as usize };
    let filled = filled.min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The table for people. `progress`: bytes repaired since a watch began,
/// to draw the repair bar against what is left.
pub fn render(report: &CellReport, progress: Option<u64>) -> String {
    let mut out = format!(
        "cell {}  erasure code {}+{} (overhead {:.2}x once encoded)\n\n",
        report.cell_id, report.data_shards, report.parity_shards, report.erasure_overhead
    );
    out.push_str(&format!("{:<12} {:<10} {:>8}\n", "KIND", "STATE", "VOLUMES"));
    for (key, count) in &report.volumes {
        let (kind, state) = key.split_once('/').unwrap_or((key.as_str(), ""));
        out.push_str(&format!("{kind:<12} {state:<10} {count:>8}\n"));
    }
    out.push_str(&format!(
        "\nsealed data   {:>12.1} MiB logical  {:>12.1} MiB stored  overhead {:.3}x (the volumes' kinds imply {:.3}x)\n",
        mib(report.sealed_logical_bytes),
        mib(report.sealed_stored_bytes),
        report.overhead,
        report.implied_overhead
    ));
    if report.unnamed_copies > 0 || report.reconciled_copies > 0 {
        out.push_str(&format!(
            "reconcile     {} copies nothing names ({:.1} MiB) wait for deletion; {} moved to trash\n",
            grouped(report.unnamed_copies),
            mib(report.unnamed_bytes),
            grouped(report.reconciled_copies)
        ));
    }
    let down: Vec<String> = report.osds.iter().filter(|o| o.health == "down").map(|o| o.osd_id.to_string()).collect();
    let out_osds: Vec<String> = report.osds.iter().filter(|o| o.health == "out").map(|o| o.osd_id.to_string()).collect();
    out.push_str(&format!(
        "OSDs          {} up of {}, {:.1} MiB used (open volumes included)",
        report.osds_alive,
        report.osds_registered,
        mib(report.osd_used_bytes)
    ));
    if !down.is_empty() {
        out.push_str(&format!("; down: {}", down.join(", ")));
    }
    if !out_osds.is_empty() {
        out.push_str(&format!("; out: {}", out_osds.join(", ")));
    }
    let failed: Vec<String> =
        report.osds.iter().filter(|o| o.failed_disks > 0).map(|o| format!("{} on OSD {}", o.failed_disks, o.osd_id)).collect();
    if !failed.is_empty() {
        out.push_str(&format!("; failed disks: {}", failed.join(", ")));
    }
    out.push('\n');
    let r = &report.redundancy;
    let levels: Vec<String> = r
        .extents_by_missing
        .iter()
        .map(|(missing, extents)| {
            let level = if *missing == 0 { "full".to_string() } else { format!("-{missing}") };
            format!("{} at {level}", grouped(*extents))
        })
        .collect();
    out.push_str(&format!(
        "redundancy    {} extents {}\n",
        if levels.is_empty() { "no".to_string() } else { String::new() },
        levels.join(", ")
    ));
    let limit = |rate: u64| if rate == 0 { "no limit".to_string() } else { format!("{:.1} MiB/s", mib(rate)) };
    let rate = format!(
        "{} {} ({:.1} MiB/s live now; in force {})",
        limit(r.background_bytes_per_sec),
        if r.background_automatic { "under live traffic" } else { "set by an operator" },
        mib(r.live_bytes_per_sec),
        limit(r.background_rate_in_force)
    );
    out.push_str(&format!(
        "repair        {} lost copies ({:.1} MiB) queued, {} in flight, oldest waiting {:.0} s; {:.1} MiB/s; {} repaired ({:.1} MiB); background rate {rate}\n",
        grouped(r.repair_queue_extents),
        mib(r.repair_queue_bytes),
        r.repairs_in_flight,
        r.oldest_repair_wait_seconds,
        mib(r.repair_bytes_per_sec),
        grouped(r.repaired_total),
        mib(r.repaired_bytes_total),
    ));
    if let Some(done) = progress {
        let total = done + r.repair_queue_bytes;
        let eta = match r.eta_seconds {
            Some(seconds) => format!("ETA {seconds:.0} s"),
            None if r.repair_queue_bytes == 0 => "done".to_string(),
            None => "ETA unknown".to_string(),
        };
        out.push_str(&format!(
            "to full       {} {:.1} of {:.1} MiB  {eta}\n",
            bar(done, total, 30),
            mib(done),
            mib(total)
        ));
    } else if let Some(seconds) = r.eta_seconds {
        out.push_str(&format!("to full       ETA {seconds:.0} s\n"));
    }
    out
}

/// How `pocket cell status` shows the cell.
pub struct StatusOptions {
    pub json: bool,
    /// Refresh every `interval` until interrupted.
    pub watch: bool,
    pub interval: Duration,
    /// With `watch`: stop once the cell is at full redundancy.
    pub until_full: bool,
}

pub async fn run(config_path: &Path, options: StatusOptions) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path).with_context(|| format!("read {}", config_path.display()))?;
    let config: OperatorConfig = toml::from_str(&text).with_context(|| format!("parse {}", config_path.display()))?;
    if !options.watch {
        let report = fetch(&config).await?;
        if options.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render(&report, None));
        }
        return Ok(());
    }
    use std::io::IsTerminal;
    let terminal = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut first_repaired: Option<u64> = None;
    loop {
        let report = fetch(&config).await?;
        let base = *first_repaired.get_or_insert(report.redundancy.repaired_bytes_total);
        let done = report.redundancy.repaired_bytes_total.saturating_sub(base);
        if options.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if terminal {
                // Clear the screen and go home: the table redraws in place.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&report, Some(done)));
            println!("(every {:.0} s, {:.0} s so far; Ctrl-C stops)", options.interval.as_secs_f64(), started.elapsed().as_secs_f64());
        }
        if options.until_full && report.redundancy.full() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(options.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `pocket cell background-rate`: sets the operator's byte rate (0 = no
/// limit) or, with None, returns to the configured ones; prints the rate
/// under live traffic.
pub async fn set_background_rate(config_path: &Path, bytes_per_sec: Option<u64>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path).with_context(|| format!("read {}", config_path.display()))?;
    let config: OperatorConfig = toml::from_str(&text).with_context(|| format!("parse {}", config_path.display()))?;
    let client = client(&config)?;
    let set = match bytes_per_sec {
        Some(rate) => client.rpc_set_background_rate(rate).await,
        None => client.rpc_set_background_automatic().await,
    }
    .context("SetBackgroundRate")?;
    let how = if bytes_per_sec.is_none() { "automatic: under live traffic" } else { "whatever the traffic" };
    if set == 0 {
        println!("background rate ({how}): no limit");
    } else {
        println!("background rate ({how}): {set} bytes/s ({:.1} MiB/s)", mib(set));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_and_bars_fill_in_proportion() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1204), "1,204");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(bar(0, 10, 10), "[----------]");
        assert_eq!(bar(5, 10, 10), "[#####-----]");
        assert_eq!(bar(0, 0, 4), "[####]");
    }

    #[test]
    fn full_means_no_extent_short_and_nothing_queued() {
        let mut r = Redundancy::default();
        r.extents_by_missing.insert(0, 10);
        assert!(r.full());
        r.extents_by_missing.insert(1, 0);
        assert!(r.full());
        r.extents_by_missing.insert(1, 3);
        assert!(!r.full());
    }
}
