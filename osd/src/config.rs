//! The OSD's configuration (TOML).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::store::StoreOptions;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsdConfig {
    /// This OSD's id, unique in its cell. Written into each disk on first use;
    /// a disk that belongs to another OSD is refused.
    pub osd_id: u64,
    /// Disk directories this OSD owns (one extent store each).
    pub disks: Vec<PathBuf>,
    /// The cell coordinator's gRPC address (`host:port`).
    pub coordinator: String,
    /// The cell's other coordinators: every one answers; calls move on to
    /// the next while one is unreachable (ADR 19).
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// This OSD's certificate (CN `osd:osd-<osd_id>`), key and the pocket's CA.
    pub tls: pocket_transport::TlsConfig,
    /// Address to listen on for gRPC; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address to listen on for `/metrics` and `/healthz`; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub http_listen: String,
    /// Address other daemons use to reach this OSD; defaults to the bound gRPC address.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Test-only fault hook: a file `DISK.inject-eio` beside a disk makes
    /// its reads and appends fail with EIO. Never on in production.
    #[serde(default)]
    pub fault_injection: bool,
    /// Failure domain (host, rack) used by placement; defaults to `osd-<id>`.
    #[serde(default)]
    pub failure_domain: Option<String>,
    /// Largest record this OSD accepts: the cell's maximum blob size.
    #[serde(default = "default_max_blob_size_bytes")]
    pub max_blob_size_bytes: u64,
    /// Blob bytes buffered in appends and reads at once; beyond it calls wait.
    /// 256 MiB: eight maximum-size blobs, well inside a small machine's memory.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Concurrent requests per connection (HTTP/2 streams served at once).
    #[serde(default = "default_max_concurrent_requests_per_connection")]
    pub max_concurrent_requests_per_connection: usize,
    /// Upper bound for any single request, including a whole append stream.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Longest pause between two messages of an append stream before the
    /// OSD gives up on it and frees what it holds.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Most bytes of appends gathered into one fdatasync (group commit).
    #[serde(default = "default_group_commit_max_bytes")]
    pub group_commit_max_bytes: u64,
    /// How much of each open extent's tail stays in the page cache after a
    /// group commit; older written pages are dropped (ADR 8). A value of at
    /// least the extent size keeps every written page cached.
    #[serde(default = "default_page_cache_window_bytes")]
    pub page_cache_window_bytes: u64,
    /// Appends bypass the page cache with `O_DIRECT` (ADR 11); false writes
    /// through it (then `page_cache_window_bytes` applies).
    #[serde(default = "default_direct_io")]
    pub direct_io: bool,
    /// How long a deleted extent stays in its disk's `trash/` before it is
    /// purged (an operator can restore it until then). One day by default.
    #[serde(default = "default_trash_delay_secs")]
    pub trash_delay_secs: u64,
    /// Bytes per second a coordinator's background work (erasure coding,
    /// repair, verification) may read from or write to this OSD; none: no
    /// limit (as is 0). Live traffic is never counted against it.
    #[serde(default)]
    pub background_bytes_per_sec: Option<u64>,
}

fn default_trash_delay_secs() -> u64 {
    24 * 60 * 60
}

fn default_listen() -> String {
    "127.0.0.1:0".to_string()
}
fn default_max_blob_size_bytes() -> u64 {
    pocket_proto::DEFAULT_MAX_BLOB_SIZE_BYTES
}
fn default_max_inflight_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_concurrent_requests_per_connection() -> usize {
    64
}
fn default_request_timeout_ms() -> u64 {
    60_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    10_000
}
fn default_group_commit_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_direct_io() -> bool {
    true
}
fn default_page_cache_window_bytes() -> u64 {
    crate::store::DEFAULT_PAGE_CACHE_WINDOW_BYTES
}

/// A rule of [`OsdConfig::validate`] the configuration breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("osd config: `disks` must name at least one directory")]
    NoDisks,
    #[error("osd config: max_blob_size_bytes must be between 1 and 1 GiB")]
    MaxBlobSize,
    #[error("osd config: max_inflight_bytes must be at least max_blob_size_bytes")]
    InflightBelowMaxBlob,
}

impl OsdConfig {
    /// Every coordinator address, `coordinator` first.
    pub fn coordinator_addrs(&self) -> Vec<String> {
        let mut addrs = vec![self.coordinator.clone()];
        addrs.extend(self.coordinators.iter().filter(|a| **a != self.coordinator).cloned());
        addrs
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.disks.is_empty() {
            return Err(ConfigError::NoDisks);
        }
        if self.max_blob_size_bytes == 0 || self.max_blob_size_bytes > 1 << 30 {
            return Err(ConfigError::MaxBlobSize);
        }
        if self.max_inflight_bytes < self.max_blob_size_bytes {
            return Err(ConfigError::InflightBelowMaxBlob);
        }
        Ok(())
    }

    pub fn failure_domain(&self) -> String {
        self.failure_domain.clone().unwrap_or_else(|| format!("osd-{}", self.osd_id))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            max_record_bytes: self.max_blob_size_bytes,
            group_commit_max_bytes: self.group_commit_max_bytes,
            page_cache_window_bytes: Some(self.page_cache_window_bytes),
            direct_io: self.direct_io,
            ..StoreOptions::default()
        }
    }
}
