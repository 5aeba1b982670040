//! The frontend's configuration (TOML).

use pocket_index::IndexConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendConfig {
    /// The cell coordinator's gRPC address (`host:port`). One cell per frontend for now.
    pub coordinator: String,
    /// The cell's other coordinators: every one answers; calls move on to
    /// the next while one is unreachable (ADR 19).
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// The zone's hash index.
    pub index: IndexConfig,
    /// This frontend's certificate (CN `frontend:NAME`), key and the pocket's CA.
    pub tls: pocket_transport::TlsConfig,
    /// The clients allowed to call, by the name in their certificate
    /// (`client:NAME`), and what each may do. A client not listed may do nothing.
    #[serde(default)]
    pub clients: Vec<ClientGrant>,
    /// Requests per second each client may make (token bucket refill rate).
    #[serde(default = "default_rate_limit_per_sec")]
    pub rate_limit_per_sec: u32,
    /// Requests a client may make in a burst above its rate.
    #[serde(default = "default_rate_limit_burst")]
    pub rate_limit_burst: u32,
    /// Blob bytes one client may have buffered at once (its share of
    /// `max_inflight_bytes`); default 128 MiB, a quarter of the default total.
    #[serde(default = "default_max_inflight_bytes_per_client")]
    pub max_inflight_bytes_per_client: u64,
    /// Requests one client may have in flight at once, over all its connections.
    #[serde(default = "default_max_concurrent_requests_per_client")]
    pub max_concurrent_requests_per_client: usize,
    /// Address to listen on for the public gRPC service; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address to listen on for `/metrics` and `/healthz`.
    #[serde(default = "default_listen")]
    pub http_listen: String,
    /// Largest blob accepted (DESIGN.md: 32 MiB by default).
    #[serde(default = "default_max_blob_size_bytes")]
    pub max_blob_size_bytes: u64,
    /// Blob bytes buffered in PUTs and GETs at once; beyond it calls wait, then
    /// get RESOURCE_EXHAUSTED. 512 MiB: sixteen maximum-size blobs.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Replica failures a PUT tolerates before it fails (each closes that
    /// bucket's volume); full buckets do not count, and the search for a
    /// bucket is bounded to 10 s.
    #[serde(default = "default_put_attempts")]
    pub put_attempts: u32,
    /// Remote zones that receive a replication-outbox row per PUT.
    #[serde(default)]
    pub remote_zones: Vec<String>,
    /// Most keys in one Exists call.
    #[serde(default = "default_max_exists_batch")]
    pub max_exists_batch: usize,
    /// Longest pause between two messages of a PUT stream, and longest a
    /// response (a GET) waits for its reader to take its next 64 KiB piece,
    /// before the stream is cut (a PUT: DEADLINE_EXCEEDED; a response: reset,
    /// CANCELLED) and what it holds is freed (ADR 15).
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// Upper bound for one request, including the whole upload of a PUT.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Concurrent requests (HTTP/2 streams) per client connection; a
    /// response stream counts until its last byte has left.
    #[serde(default = "default_max_concurrent_requests_per_connection")]
    pub max_concurrent_requests_per_connection: usize,
    /// Client connections open at once, counted from the TCP accept (before
    /// TLS); at the cap, new connections wait until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Of those, connections one source IP address may hold; one more is
    /// closed at once, before TLS. Default: a quarter of the transport's
    /// listener cap (256), at most `max_connections`.
    #[serde(default)]
    pub max_connections_per_source: Option<usize>,
    /// Appends of records at most this large that go to the same replica at
    /// once share one `Osd.AppendBatch` call (ADR 12); larger records go
    /// alone. 0 turns batching off. Default 256 KiB; at most 4 MiB.
    #[serde(default = "default_batch_record_max_bytes")]
    pub batch_record_max_bytes: u64,
}

/// What one client may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientGrant {
    /// The NAME in the client's certificate common name `client:NAME`.
    pub name: String,
    pub permissions: Vec<Permission>,
}

/// One right on the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// PUT blobs.
    Put,
    /// GET and Stat blobs, ask Exists.
    Get,
    /// Delete blobs (tombstones; not served yet).
    Delete,
    /// List keys (not served yet).
    List,
    /// Administrative calls on the frontend (none yet).
    Admin,
}

fn default_rate_limit_per_sec() -> u32 {
    2_000
}
fn default_rate_limit_burst() -> u32 {
    4_000
}
fn default_max_inflight_bytes_per_client() -> u64 {
    128 * 1024 * 1024
}
fn default_max_concurrent_requests_per_client() -> usize {
    256
}

fn default_listen() -> String {
    "127.0.0.1:0".to_string()
}
fn default_max_blob_size_bytes() -> u64 {
    pocket_proto::DEFAULT_MAX_BLOB_SIZE_BYTES
}
fn default_max_inflight_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_put_attempts() -> u32 {
    4
}
fn default_max_exists_batch() -> usize {
    10_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    120_000
}
fn default_max_concurrent_requests_per_connection() -> usize {
    64
}
fn default_batch_record_max_bytes() -> u64 {
    256 * 1024
}
fn default_max_connections() -> usize {
    pocket_transport::MAX_CONNECTIONS_PER_LISTENER
}

/// A rule of [`FrontendConfig::validate`] the configuration breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("frontend config: max_blob_size_bytes must be between 1 and 1 GiB")]
    MaxBlobSize,
    #[error("frontend config: max_inflight_bytes must be at least max_blob_size_bytes")]
    InflightBelowMaxBlob,
    #[error("frontend config: stream_idle_timeout_ms must be between 100 ms and 1 h")]
    StreamIdleTimeout,
    #[error("frontend config: request_timeout_ms must be between 1 s and 1 h")]
    RequestTimeout,
    #[error("frontend config: max_exists_batch must be between 1 and 100000")]
    MaxExistsBatch,
    #[error("frontend config: max_concurrent_requests_per_connection must be between 1 and 10000")]
    MaxConcurrentRequestsPerConnection,
    #[error("frontend config: max_connections must be between 1 and 100000")]
    MaxConnections,
    #[error("frontend config: max_connections_per_source must be between 1 and max_connections")]
    MaxConnectionsPerSource,
    #[error("frontend config: max_inflight_bytes_per_client must be between max_blob_size_bytes and max_inflight_bytes")]
    InflightPerClient,
    #[error("frontend config: rate_limit_per_sec and rate_limit_burst must be positive")]
    RateLimit,
    #[error("frontend config: max_concurrent_requests_per_client must be positive")]
    MaxConcurrentRequestsPerClient,
    #[error("frontend config: batch_record_max_bytes must be at most {}", pocket_proto::APPEND_BATCH_MAX_BYTES)]
    BatchRecordMaxBytes,
    #[error("frontend config: put_attempts must be between 1 and 16")]
    PutAttempts,
}

impl FrontendConfig {
    /// Every coordinator address, `coordinator` first.
    pub fn coordinator_addrs(&self) -> Vec<String> {
        let mut addrs = vec![self.coordinator.clone()];
        addrs.extend(self.coordinators.iter().filter(|a| **a != self.coordinator).cloned());
        addrs
    }

    /// The caps of the client listener.
    pub fn connection_caps(&self) -> pocket_transport::ConnectionCaps {
        pocket_transport::ConnectionCaps {
            total: self.max_connections,
            per_source: self
                .max_connections_per_source
                .unwrap_or(pocket_transport::MAX_CONNECTIONS_PER_SOURCE.min(self.max_connections)),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_blob_size_bytes == 0 || self.max_blob_size_bytes > 1 << 30 {
            return Err(ConfigError::MaxBlobSize);
        }
        if self.max_inflight_bytes < self.max_blob_size_bytes {
            return Err(ConfigError::InflightBelowMaxBlob);
        }
        if !(100..=3_600_000).contains(&self.stream_idle_timeout_ms) {
            return Err(ConfigError::StreamIdleTimeout);
        }
        if !(1_000..=3_600_000).contains(&self.request_timeout_ms) {
            return Err(ConfigError::RequestTimeout);
        }
        if !(1..=100_000).contains(&self.max_exists_batch) {
            return Err(ConfigError::MaxExistsBatch);
        }
        if !(1..=10_000).contains(&self.max_concurrent_requests_per_connection) {
            return Err(ConfigError::MaxConcurrentRequestsPerConnection);
        }
        if !(1..=100_000).contains(&self.max_connections) {
            return Err(ConfigError::MaxConnections);
        }
        if !(1..=self.max_connections).contains(&self.connection_caps().per_source) {
            return Err(ConfigError::MaxConnectionsPerSource);
        }
        if self.max_inflight_bytes_per_client < self.max_blob_size_bytes
            || self.max_inflight_bytes_per_client > self.max_inflight_bytes
        {
            return Err(ConfigError::InflightPerClient);
        }
        if self.rate_limit_per_sec == 0 || self.rate_limit_burst == 0 {
            return Err(ConfigError::RateLimit);
        }
        if self.max_concurrent_requests_per_client == 0 {
            return Err(ConfigError::MaxConcurrentRequestsPerClient);
        }
        if self.batch_record_max_bytes > pocket_proto::APPEND_BATCH_MAX_BYTES {
            return Err(ConfigError::BatchRecordMaxBytes);
        }
        if self.put_attempts == 0 || self.put_attempts > 16 {
            return Err(ConfigError::PutAttempts);
        }
        Ok(())
    }
}
