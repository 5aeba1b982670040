//! The coordinator's configuration (TOML).

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
    /// An OSD silent for this long is *down*: its open volumes close, and
    /// nothing new is placed on it. (Formerly `osd_dead_after_ms`.)
    #[serde(default = "default_osd_down_after_ms", alias = "osd_dead_after_ms")]
    pub osd_down_after_ms: u64,
    /// An OSD silent for this long is *out*: its copies count as lost and
    /// are repaired elsewhere (minutes in production, seconds in tests).
    #[serde(default = "default_osd_out_after_ms")]
    pub osd_out_after_ms: u64,
    /// Period of the maintenance loop (resume, close, top up the pool).
    #[serde(default = "default_tick_interval_ms")]
    pub tick_interval_ms: u64,
    /// Seed of the placement RNG; a fixed seed reproduces placement decisions.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Connections to the cell database.
    #[serde(default = "default_max_db_connections")]
    pub max_db_connections: u32,
    /// Erasure coding of closed volumes.
    #[serde(default)]
    pub erasure: ErasureConfig,
    /// Repair of lost copies (`[repair]`).
    #[serde(default)]
    pub repair: RepairConfig,
    /// The background budget shared by repair and erasure coding (ADR 16).
    #[serde(default)]
    pub background: BackgroundConfig,
    /// This coordinator's name among the cell's coordinators (the lease
    /// holder's name); by default `coordinator-PID`.
    #[serde(default)]
    pub name: Option<String>,
    /// Leadership among the cell's coordinators (`[leadership]`, ADR 19).
    #[serde(default)]
    pub leadership: LeadershipConfig,
    /// Reconciliation of copies nothing names (`[reconcile]`).
    #[serde(default)]
    pub reconcile: ReconcileConfig,
}

/// Reconciliation (`[reconcile]`): the leader lists every up OSD's extents
/// and deletes, to the OSD's trash, the copies the cell database does not
/// name (copies repaired elsewhere while their OSD was out, extents of
/// volumes never opened, leftovers of failed attempts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Reconcile at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Period of the pass over the OSDs.
    #[serde(default = "default_reconcile_interval_ms")]
    pub interval_ms: u64,
    /// How long a copy must have been seen unnamed, by passes of this
    /// leader, before it is deleted.
    #[serde(default = "default_reconcile_grace_ms")]
    pub grace_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig { enabled: true, interval_ms: default_reconcile_interval_ms(), grace_ms: default_reconcile_grace_ms() }
    }
}

fn default_reconcile_interval_ms() -> u64 {
    15_000
}
fn default_reconcile_grace_ms() -> u64 {
    30_000
}

/// The leader's lease (`[leadership]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadershipConfig {
    /// How long a lease lasts unless renewed: a dead leader's standby takes
    /// over after at most this long (plus a renew interval).
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How often the leader renews and a standby tries to take over.
    #[serde(default = "default_renew_interval_ms")]
    pub renew_interval_ms: u64,
    /// A leader that could not renew for this long steps down, before its
    /// lease can expire (below `lease_ttl_ms`).
    #[serde(default = "default_renew_deadline_ms")]
    pub renew_deadline_ms: u64,
    /// A takeover is not followed by another within this long (anti-flap),
    /// unless the leader gave the lease up.
    #[serde(default = "default_min_term_ms")]
    pub min_term_ms: u64,
}

impl Default for LeadershipConfig {
    fn default() -> Self {
        LeadershipConfig {
            lease_ttl_ms: default_lease_ttl_ms(),
            renew_interval_ms: default_renew_interval_ms(),
            renew_deadline_ms: default_renew_deadline_ms(),
            min_term_ms: default_min_term_ms(),
        }
    }
}

fn default_lease_ttl_ms() -> u64 {
    4_000
}
fn default_renew_interval_ms() -> u64 {
    500
}
fn default_renew_deadline_ms() -> u64 {
    2_500
}
fn default_min_term_ms() -> u64 {
    10_000
}

/// Repair of copies lost with an OSD that is out (`[repair]`, ADR 18).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairConfig {
    /// Repair at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Repairs at once that read from or write to one OSD.
    #[serde(default = "default_repairs_per_osd")]
    pub max_per_osd: u32,
    /// Repairs at once in the whole cell.
    #[serde(default = "default_repairs_in_flight")]
    pub max_in_flight: u32,
    /// Failed attempts onto one target after which another target is chosen.
    #[serde(default = "default_max_attempts")]
    pub max_attempts_per_target: u32,
    /// Bytes each repair streams per budget request.
    #[serde(default = "default_stripe_bytes")]
    pub chunk_bytes: u64,
    /// Period of the repair loop when there is nothing to repair.
    #[serde(default = "default_ec_tick_interval_ms")]
    pub tick_interval_ms: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            enabled: true,
            max_per_osd: default_repairs_per_osd(),
            max_in_flight: default_repairs_in_flight(),
            max_attempts_per_target: default_max_attempts(),
            chunk_bytes: default_stripe_bytes(),
            tick_interval_ms: default_ec_tick_interval_ms(),
        }
    }
}

/// The coordinator's background budget (`[background]`): what erasure
/// coding and repair may take together. An operator can change the byte
/// rate at runtime (`pocket cell background-rate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackgroundConfig {
    /// Bytes per second the coordinator's background work may move while
    /// the cell has live traffic; 0 means no byte limit. 32 MiB/s by
    /// default (docs/benchmarks.md: what it costs 4 MiB GETs).
    #[serde(default = "default_background_bytes_per_sec")]
    pub bytes_per_sec: Option<u64>,
    /// The same while the cell has no live traffic; none (or 0): no limit,
    /// so that repair runs at the disks' speed when nothing competes.
    #[serde(default)]
    pub idle_bytes_per_sec: Option<u64>,
    /// Live traffic over the cell (frontends' appends and reads, from the
    /// OSDs' heartbeats) below which the cell counts as idle.
    #[serde(default = "default_live_threshold_bytes_per_sec")]
    pub live_threshold_bytes_per_sec: u64,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            bytes_per_sec: default_background_bytes_per_sec(),
            idle_bytes_per_sec: None,
            live_threshold_bytes_per_sec: default_live_threshold_bytes_per_sec(),
        }
    }
}

fn default_background_bytes_per_sec() -> Option<u64> {
    Some(32 * 1024 * 1024)
}
fn default_live_threshold_bytes_per_sec() -> u64 {
    1024 * 1024
}

fn default_repairs_per_osd() -> u32 {
    2
}
fn default_repairs_in_flight() -> u32 {
    8
}

/// Erasure coding of closed volumes (`[erasure]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureConfig {
    /// Encode closed volumes at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// k: data extents (closed buckets) per erasure-coded volume.
    #[serde(default = "default_data_shards")]
    pub data_shards: u32,
    /// m: parity extents per erasure-coded volume; any m of the k + m may be lost.
    #[serde(default = "default_parity_shards")]
    pub parity_shards: u32,
    /// Bytes of each shard encoded per step: the encoding holds about
    /// (k + m) × this (plus stream buffers) in memory.
    #[serde(default = "default_stripe_bytes")]
    pub stripe_bytes: u64,
    /// Failed attempts after which a volume being built is abandoned (its
    /// sources stay replicated and are planned again later).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Period of the erasure-coding loop.
    #[serde(default = "default_ec_tick_interval_ms")]
    pub tick_interval_ms: u64,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            enabled: true,
            data_shards: default_data_shards(),
            parity_shards: default_parity_shards(),
            stripe_bytes: default_stripe_bytes(),
            max_attempts: default_max_attempts(),
            tick_interval_ms: default_ec_tick_interval_ms(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_data_shards() -> u32 {
    6
}
fn default_parity_shards() -> u32 {
    3
}
fn default_stripe_bytes() -> u64 {
    1024 * 1024
}
fn default_max_attempts() -> u32 {
    5
}
fn default_ec_tick_interval_ms() -> u64 {
    1_000
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
fn default_osd_down_after_ms() -> u64 {
    10_000
}
fn default_osd_out_after_ms() -> u64 {
    600_000
}
fn default_tick_interval_ms() -> u64 {
    500
}
fn default_max_db_connections() -> u32 {
    4
}

/// A rule of [`CoordinatorConfig::validate`] the configuration breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("coordinator config: replication_factor must be between 1 and 16")]
    ReplicationFactor,
    #[error("coordinator config: extent_size_bytes must be at least 1 MiB")]
    ExtentSize,
    #[error(
        "coordinator config: erasure data_shards and parity_shards must be at least 1 and together at most {}",
        pocket_erasure::MAX_SHARDS
    )]
    ErasureShards,
    #[error("coordinator config: erasure stripe_bytes must be between 4 KiB and 64 MiB")]
    ErasureStripeBytes,
    #[error("coordinator config: erasure max_attempts must be at least 1")]
    ErasureMaxAttempts,
    #[error("coordinator config: osd_down_after_ms must be at least two heartbeat intervals")]
    OsdDownAfter,
    #[error("coordinator config: leadership needs renew_interval_ms < renew_deadline_ms < lease_ttl_ms, each at least 100 ms")]
    Leadership,
    #[error("coordinator config: reconcile interval_ms must be at least 100 and grace_ms at least interval_ms")]
    Reconcile,
    #[error("coordinator config: name must be 1 to 64 characters of [A-Za-z0-9._-]")]
    Name,
    #[error("coordinator config: osd_out_after_ms must be at least osd_down_after_ms")]
    OsdOutAfter,
    #[error("coordinator config: repair max_per_osd, max_in_flight and max_attempts_per_target must be at least 1, chunk_bytes between 4 KiB and 64 MiB")]
    Repair,
}

impl CoordinatorConfig {
    /// This coordinator's name: configured, or `coordinator-PID`.
    pub fn holder_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("coordinator-{}", std::process::id()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=16).contains(&self.replication_factor) {
            return Err(ConfigError::ReplicationFactor);
        }
        if self.extent_size_bytes < 1024 * 1024 {
            return Err(ConfigError::ExtentSize);
        }
        let ec = &self.erasure;
        if ec.data_shards == 0 || ec.parity_shards == 0 || (ec.data_shards + ec.parity_shards) as usize > pocket_erasure::MAX_SHARDS {
            return Err(ConfigError::ErasureShards);
        }
        if !(4096..=64 * 1024 * 1024).contains(&ec.stripe_bytes) {
            return Err(ConfigError::ErasureStripeBytes);
        }
        if ec.max_attempts == 0 {
            return Err(ConfigError::ErasureMaxAttempts);
        }
        if self.osd_down_after_ms < 2 * self.heartbeat_interval_ms {
            return Err(ConfigError::OsdDownAfter);
        }
        if self.osd_out_after_ms < self.osd_down_after_ms {
            return Err(ConfigError::OsdOutAfter);
        }
        if self.reconcile.interval_ms < 100 || self.reconcile.grace_ms < self.reconcile.interval_ms {
            return Err(ConfigError::Reconcile);
        }
        let lease = &self.leadership;
        if lease.renew_interval_ms < 100
            || lease.renew_interval_ms >= lease.renew_deadline_ms
            || lease.renew_deadline_ms >= lease.lease_ttl_ms
        {
            return Err(ConfigError::Leadership);
        }
        if let Some(name) = &self.name {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(ConfigError::Name);
            }
        }
        let repair = &self.repair;
        if repair.max_per_osd == 0
            || repair.max_in_flight == 0
            || repair.max_attempts_per_target == 0
            || !(4096..=64 * 1024 * 1024).contains(&repair.chunk_bytes)
        {
            return Err(ConfigError::Repair);
        }
        Ok(())
    }
}
