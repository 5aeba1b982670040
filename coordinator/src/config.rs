//! The coordinator's configuration (TOML).

use anyhow::bail;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This cell's id inside its zone; written into every index row.
    pub cell_id: u32,
    /// The cell database: `sqlite:///path/cell.db?mode=rwc` or `mysql://user@host/db`.
    pub database_url: String,
    /// This coordinator's certificate (CN `coordinator:NAME`), key and the pocket's CA.
    pub tls: pocket_transport::TlsConfig,
    /// Where operator calls are recorded (JSON lines: who, what, when, outcome).
    pub audit_log: std::path::PathBuf,
    /// Address to listen on for gRPC; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address to listen on for `/metrics` and `/healthz`.
    #[serde(default = "default_listen")]
    pub http_listen: String,
    /// Replicas of each open volume (R), each on a distinct failure domain.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u32,
    /// Size at which an extent is full and its volume closes (1 GiB in prod, MiBs in tests).
    #[serde(default = "default_extent_size_bytes")]
    pub extent_size_bytes: u64,
    /// Open buckets kept ready for writes; 0 means one per R alive OSDs (at least 2).
    #[serde(default)]
    pub open_buckets_target: u32,
    /// How often OSDs heartbeat.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// An OSD silent for this long is dead: its open volumes close.
    #[serde(default = "default_osd_dead_after_ms")]
    pub osd_dead_after_ms: u64,
    /// Period of the maintenance loop (resume, close, top up the pool).
    #[serde(default = "default_tick_interval_ms")]
    pub tick_interval_ms: u64,
    /// Seed of the placement RNG; a fixed seed reproduces placement decisions.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Connections to the cell database.
    #[serde(default = "default_max_db_connections")]
    pub max_db_connections: u32,
}

fn default_listen() -> String {
    "127.0.0.1:0".to_string()
}
fn default_replication_factor() -> u32 {
    3
}
fn default_extent_size_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_heartbeat_interval_ms() -> u64 {
    1_000
}
fn default_osd_dead_after_ms() -> u64 {
    10_000
}
fn default_tick_interval_ms() -> u64 {
    500
}
fn default_max_db_connections() -> u32 {
    4
}

impl CoordinatorConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=16).contains(&self.replication_factor) {
            bail!("coordinator config: replication_factor must be between 1 and 16");
        }
        if self.extent_size_bytes < 1024 * 1024 {
            bail!("coordinator config: extent_size_bytes must be at least 1 MiB");
        }
        if self.osd_dead_after_ms < 2 * self.heartbeat_interval_ms {
            bail!("coordinator config: osd_dead_after_ms must be at least two heartbeat intervals");
        }
        Ok(())
    }
}
