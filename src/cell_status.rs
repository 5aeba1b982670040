//! `pocket cell status --config F [--json]`: what an operator asks a cell's
//! coordinator — its volumes by kind and state, the storage overhead of its
//! sealed data, and its OSDs.

use std::path::Path;

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
    pub osds_registered: usize,
    pub osds_alive: usize,
    pub osd_used_bytes: u64,
}

pub async fn fetch(config: &OperatorConfig) -> anyhow::Result<CellReport> {
    let tls = Tls::load(&config.tls).context("load operator TLS material")?;
    let client = pocket_rpc_client::CoordinatorClient::connect(&tls, &config.coordinator)?;
    let status = client.rpc_status().await.context("CellStatus")?;
    let overhead = if status.sealed_logical_bytes == 0 {
        0.0
    } else {
        status.sealed_stored_bytes as f64 / status.sealed_logical_bytes as f64
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
        osds_registered: status.osds.len(),
        osds_alive: status.osds.iter().filter(|o| o.alive).count(),
        osd_used_bytes: status.osds.iter().map(|o| o.used_bytes).sum(),
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The table for people.
pub fn render(report: &CellReport) -> String {
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
        "\nsealed data   {:>12.1} MiB logical  {:>12.1} MiB stored  overhead {:.3}x\n",
        mib(report.sealed_logical_bytes),
        mib(report.sealed_stored_bytes),
        report.overhead
    ));
    out.push_str(&format!(
        "OSDs          {} alive of {}, {:.1} MiB used (open volumes included)\n",
        report.osds_alive,
        report.osds_registered,
        mib(report.osd_used_bytes)
    ));
    out
}

pub async fn run(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path).with_context(|| format!("read {}", config_path.display()))?;
    let config: OperatorConfig = toml::from_str(&text).with_context(|| format!("parse {}", config_path.display()))?;
    let report = fetch(&config).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}
