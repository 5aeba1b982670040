//! The one error type of this crate.

/// Why an index operation failed. Shard names, never URLs, appear in
/// messages: a URL may carry a password.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index config lists no shards; at least one database is needed")]
    NoShards,

    #[error("shard name {name:?} is listed more than once in the index config")]
    DuplicateShard { name: String },

    #[error("shard name {name:?} must be 1..={max_bytes} bytes")]
    BadShardName { name: String, max_bytes: usize },

    #[error("vshard_count {configured} must be in 1..={max}")]
    BadVshardCount { configured: u32, max: u32 },

    #[error("max_connections_per_shard must be at least 1")]
    ZeroPoolSize,

    #[error("{op} was cancelled: the runtime is shutting down")]
    Cancelled { op: &'static str },

    #[error(
        "shard {shard}: url scheme {scheme:?} is not supported; use sqlite:, mysql: or mariadb:"
    )]
    UnknownScheme { shard: String, scheme: String },

    #[error(
        "index was created with vshard_count {stored} but the config says {configured}; \
         vshard_count is fixed at creation, set it back to {stored}"
    )]
    VshardCountMismatch { stored: u32, configured: u32 },

    #[error(
        "the shard map maps vshard {vshard} to database {name:?}, which is not in the index config"
    )]
    UnknownShard { vshard: u32, name: String },

    #[error(
        "database configured as shard {configured:?} records {field} = {stored:?}, expected \
         {expected:?}; the shard list was reordered or a URL points at the wrong database"
    )]
    ShardIdentityMismatch {
        configured: String,
        field: &'static str,
        stored: String,
        expected: String,
    },

    #[error("zone name {zone:?} must be 1..={max_bytes} bytes")]
    BadZoneName { zone: String, max_bytes: usize },

    #[error("{field} = {value} does not fit the index's signed 64-bit column")]
    ValueOutOfRange { field: &'static str, value: u64 },

    #[error("shard {shard}: {op}: {source}")]
    Database {
        shard: String,
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },

    #[error("shard {shard}: run migrations: {source}")]
    Migrate {
        shard: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    #[error("shard {shard}: corrupt row: {detail}")]
    CorruptRow { shard: String, detail: String },
}
