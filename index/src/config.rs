//! Configuration of the index: which physical databases exist and how keys
//! are spread over them.

use serde::{Deserialize, Serialize};

/// Virtual shards per index when the config does not say. 256 lets the index
/// grow to 256 physical databases by moving whole vshards, while the shard map
/// stays small enough to load in one query at start-up.
pub const DEFAULT_VSHARD_COUNT: u32 = 256;

/// Upper bound on `vshard_count`: a key's vshard comes from its first two bytes,
/// so more than 2^16 vshards would leave some forever empty.
pub const MAX_VSHARD_COUNT: u32 = 1 << 16;

/// Connection-establishment and pool-acquire timeout when the config does not
/// say: long enough for a loaded MySQL server, short enough that a dead shard
/// fails a request rather than hanging it.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Index configuration: one per zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Physical databases. The FIRST one is the directory: it holds the shard
    /// map and the vshard count, and must stay first for the life of the index.
    pub shards: Vec<ShardConfig>,
    /// Number of virtual shards, fixed when the index is first created;
    /// opening with a different value is refused.
    #[serde(default = "default_vshard_count")]
    pub vshard_count: u32,
    /// Connection pool size per physical database; `None` picks a default for
    /// the backend (see `dialect::default_max_connections`).
    #[serde(default = "default_max_connections_per_shard")]
    pub max_connections_per_shard: Option<u32>,
    /// Timeout for establishing or acquiring a database connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

/// One physical database of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Stable name of this database in the shard map (at most 64 bytes).
    /// Renaming it orphans the vshards mapped to it.
    pub name: String,
    /// sqlx URL: `sqlite:///abs/path/index-0.db?mode=rwc`,
    /// `mysql://user:pass@host:3306/db` or `mariadb://...` (same as mysql).
    pub url: String,
}

impl IndexConfig {
    /// A config over `shards` with every other field at its default.
    pub fn new(shards: Vec<ShardConfig>) -> IndexConfig {
        IndexConfig {
            shards,
            vshard_count: default_vshard_count(),
            max_connections_per_shard: default_max_connections_per_shard(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }
}

fn default_vshard_count() -> u32 {
    DEFAULT_VSHARD_COUNT
}

fn default_max_connections_per_shard() -> Option<u32> {
    None
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
