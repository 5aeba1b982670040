//! [`Index`]: open the shards, route each key to its database, read and write
//! index rows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pocket_types::Key;
use pocket_sql::Dialect;
use tokio::task::JoinSet;

use crate::config::{IndexConfig, MAX_VSHARD_COUNT};
use crate::dialect;
use crate::entry::{vshard_of_key, IndexEntry, InsertOutcome};
use crate::error::IndexError;
use crate::insert::{insert_alone, Batcher, InsertRow};
use crate::lookup::{select_entries, LookupBatcher, LOOKUP_BATCH_MAX_KEYS};
use crate::shard::Shard;
use crate::shard_map;

/// Longest shard name: the `shard_map.shard_name` column is VARCHAR(64).
pub const SHARD_NAME_MAX_BYTES: usize = 64;

/// Longest zone name: the `replication_outbox.zone` column is VARCHAR(64).
pub const ZONE_NAME_MAX_BYTES: usize = 64;

/// `index_meta` names that tie a database to its place in the config.
const META_SHARD_NAME: &str = "shard_name";
const META_DIRECTORY_SHARD: &str = "directory_shard";

/// Handle on the sharded index. Cheap to clone: clones share the pools.
#[derive(Debug, Clone)]
pub struct Index {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// In config order; `shards[0]` is the directory.
    shards: Vec<Shard>,
    /// Per shard, in the order of `shards`: its insert batcher (SQLite), or
    /// `None` where each insert commits on its own (MySQL).
    batchers: Vec<Option<Batcher>>,
    /// Per shard: its lookup batcher (SQLite), or `None` where each lookup
    /// takes a pooled connection (MySQL).
    lookups: Vec<Option<LookupBatcher>>,
    /// vshard -> position in `shards`. Loaded at open; fixed until reopened.
    vshard_to_shard: Vec<usize>,
    vshard_count: u32,
}

impl Index {
    /// Connects every shard, runs its migrations, checks that each database
    /// is the one the config names, and loads the shard map from the
    /// directory (creating it on the index's first open).
    pub async fn open(cfg: &IndexConfig) -> Result<Index, IndexError> {
        let targets = validate(cfg)?;
        pocket_sql::install_drivers();

        let mut shards = Vec::with_capacity(targets.len());
        for (name, dialect, url) in &targets {
            match Shard::connect(cfg, name, *dialect, url).await {
                Ok(shard) => shards.push(shard),
                Err(e) => {
                    close_all(&shards).await;
                    return Err(e);
                }
            }
        }
        let directory_name = &cfg.shards[0].name;
        let vshard_to_shard = match prepare(&shards, cfg).await {
            Ok(map) => map,
            Err(e) => {
                close_all(&shards).await;
                return Err(e);
            }
        };
        tracing::info!(
            directory = %directory_name,
            shards = shards.len(),
            vshard_count = cfg.vshard_count,
            "index open"
        );
        let sqlite = |shard: &Shard| shard.dialect == Dialect::Sqlite;
        let batchers = shards
            .iter()
            .map(|shard| sqlite(shard).then(|| Batcher::start_inserts(shard.clone(), cfg.vshard_count)))
            .collect();
        let lookups = shards
            .iter()
            .map(|shard| sqlite(shard).then(|| LookupBatcher::start_lookups(shard.clone(), cfg.vshard_count)))
            .collect();
        Ok(Index {
            inner: Arc::new(Inner {
                shards,
                batchers,
                lookups,
                vshard_to_shard,
                vshard_count: cfg.vshard_count,
            }),
        })
    }

    /// The virtual shard `key` belongs to.
    pub fn vshard_of(&self, key: &Key) -> u32 {
        vshard_of_key(key, self.inner.vshard_count)
    }

    pub fn vshard_count(&self) -> u32 {
        self.inner.vshard_count
    }

    /// Name of the database holding `vshard`, or `None` if it is out of range.
    pub fn shard_name_of_vshard(&self, vshard: u32) -> Option<&str> {
        let position = *self.inner.vshard_to_shard.get(vshard as usize)?;
        Some(self.inner.shards[position].name.as_str())
    }

    /// Name of the database holding `key`.
    pub fn shard_name_of(&self, key: &Key) -> &str {
        &self.shard_of(key).name
    }

    fn shard_position(&self, key: &Key) -> usize {
        self.inner.vshard_to_shard[self.vshard_of(key) as usize]
    }

    fn shard_of(&self, key: &Key) -> &Shard {
        &self.inner.shards[self.shard_position(key)]
    }

    /// The row of `key`, if indexed. On SQLite, concurrent lookups of one
    /// shard share a query (see the `lookup` module).
    pub async fn lookup(&self, key: &Key) -> Result<Option<IndexEntry>, IndexError> {
        let position = self.shard_position(key);
        if let Some(batcher) = &self.inner.lookups[position] {
            return batcher.lookup(*key).await;
        }
        let shard = &self.inner.shards[position];
        let entries = select_entries(shard, self.inner.vshard_count, &shard.pool, &[*key]).await?;
        Ok(entries.into_iter().next())
    }

    /// The rows of `keys`, in the order of `keys` (`None` where absent).
    /// One query per physical shard and batch of [`LOOKUP_BATCH_MAX_KEYS`];
    /// shards are queried concurrently.
    pub async fn lookup_many(&self, keys: &[Key]) -> Result<Vec<Option<IndexEntry>>, IndexError> {
        let mut per_shard: Vec<Vec<Key>> = vec![Vec::new(); self.inner.shards.len()];
        let mut seen = HashSet::with_capacity(keys.len());
        for key in keys {
            if seen.insert(*key) {
                per_shard[self.shard_position(key)].push(*key);
            }
        }
        let mut tasks = JoinSet::new();
        for (position, shard_keys) in per_shard.into_iter().enumerate() {
            if shard_keys.is_empty() {
                continue;
            }
            let index = self.clone();
            tasks.spawn(async move { index.lookup_on_shard(position, &shard_keys).await });
        }
        let mut found: HashMap<Key, IndexEntry> = HashMap::with_capacity(seen.len());
        while let Some(joined) = tasks.join_next().await {
            let entries = match joined {
                Ok(result) => result?,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(_) => return Err(IndexError::Cancelled { op: "lookup_many" }),
                },
            };
            found.extend(entries.into_iter().map(|entry| (entry.key, entry)));
        }
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    async fn lookup_on_shard(
        &self,
        position: usize,
        keys: &[Key],
    ) -> Result<Vec<IndexEntry>, IndexError> {
        let shard = &self.inner.shards[position];
        let mut entries = Vec::with_capacity(keys.len());
        for batch in keys.chunks(LOOKUP_BATCH_MAX_KEYS) {
            entries.extend(select_entries(shard, self.inner.vshard_count, &shard.pool, batch).await?);
        }
        Ok(entries)
    }

    /// Indexes `entry` unless its key is already indexed. In one transaction
    /// on the key's shard: the `blobs` row and, only if it was new, one
    /// `replication_outbox` row per entry of `outbox_zones`. An existing row
    /// is never changed; it is returned as [`InsertOutcome::AlreadyPresent`].
    /// On SQLite the transaction may also hold concurrent inserts of other
    /// callers (see the `insert` module); it returns after the commit.
    pub async fn insert(
        &self,
        entry: &IndexEntry,
        outbox_zones: &[String],
    ) -> Result<InsertOutcome, IndexError> {
        // Validate every value before binding: MySQL's INSERT IGNORE would
        // turn an out-of-range value into a warning and a clamped row.
        for zone in outbox_zones {
            if zone.is_empty() || zone.len() > ZONE_NAME_MAX_BYTES {
                return Err(IndexError::BadZoneName {
                    zone: zone.clone(),
                    max_bytes: ZONE_NAME_MAX_BYTES,
                });
            }
        }
        let row = InsertRow {
            entry: entry.clone(),
            outbox_zones: outbox_zones.to_vec(),
            bucket_id: to_i64("bucket_id", entry.bucket_id)?,
            length_bytes: to_i64("length_bytes", entry.length_bytes)?,
        };
        let position = self.shard_position(&entry.key);
        match &self.inner.batchers[position] {
            Some(batcher) => batcher.insert(row).await,
            None => insert_alone(&self.inner.shards[position], self.inner.vshard_count, &row).await,
        }
    }

    /// Rows waiting in the replication outbox, over all shards.
    pub async fn outbox_len(&self) -> Result<u64, IndexError> {
        self.sum_rows("replication_outbox").await
    }

    /// Indexed keys, over all shards.
    pub async fn count(&self) -> Result<u64, IndexError> {
        self.sum_rows("blobs").await
    }

    async fn sum_rows(&self, table: &'static str) -> Result<u64, IndexError> {
        let mut total = 0u64;
        for shard in &self.inner.shards {
            total += shard.count_rows(table).await?;
        }
        Ok(total)
    }

    /// Stops the batchers (closing their connections), then closes every
    /// pool, waiting for checked-out connections to come back. Later calls
    /// on this index (or its clones) fail.
    pub async fn close(&self) {
        for batcher in self.inner.batchers.iter().flatten() {
            batcher.stop().await;
        }
        for batcher in self.inner.lookups.iter().flatten() {
            batcher.stop().await;
        }
        close_all(&self.inner.shards).await;
    }
}

/// Checks the config and returns, per shard, its name, dialect and sqlx URL.
fn validate(cfg: &IndexConfig) -> Result<Vec<(String, Dialect, String)>, IndexError> {
    if cfg.shards.is_empty() {
        return Err(IndexError::NoShards);
    }
    if cfg.vshard_count == 0 || cfg.vshard_count > MAX_VSHARD_COUNT {
        return Err(IndexError::BadVshardCount {
            configured: cfg.vshard_count,
            max: MAX_VSHARD_COUNT,
        });
    }
    if cfg.max_connections_per_shard == Some(0) {
        return Err(IndexError::ZeroPoolSize);
    }
    let mut names = HashSet::new();
    let mut targets = Vec::with_capacity(cfg.shards.len());
    for shard in &cfg.shards {
        if shard.name.is_empty() || shard.name.len() > SHARD_NAME_MAX_BYTES {
            return Err(IndexError::BadShardName {
                name: shard.name.clone(),
                max_bytes: SHARD_NAME_MAX_BYTES,
            });
        }
        if !names.insert(shard.name.as_str()) {
            return Err(IndexError::DuplicateShard {
                name: shard.name.clone(),
            });
        }
        let (dialect, url) = dialect::parse_url(&shard.name, &shard.url)?;
        targets.push((shard.name.clone(), dialect, url));
    }
    Ok(targets)
}

/// Checks every database's identity, then loads (or creates) the shard map.
async fn prepare(shards: &[Shard], cfg: &IndexConfig) -> Result<Vec<usize>, IndexError> {
    let directory_name = &cfg.shards[0].name;
    for shard in shards {
        let mut tx = shard.begin_write().await?;
        let result = check_identity(shard, &mut tx, directory_name).await;
        shard.finish(tx, result).await?;
    }
    let names: Vec<String> = cfg.shards.iter().map(|s| s.name.clone()).collect();
    shard_map::load_or_init(&shards[0], cfg.vshard_count, &names).await
}

/// Refuses a database that was created as another shard, or for an index
/// whose directory was another database: a reordered shard list or a swapped
/// URL would otherwise silently route keys to the wrong database.
async fn check_identity(
    shard: &Shard,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    directory_name: &str,
) -> Result<(), IndexError> {
    for (field, expected) in [
        (META_SHARD_NAME, shard.name.as_str()),
        (META_DIRECTORY_SHARD, directory_name),
    ] {
        let (stored, _created) = shard.claim_meta(tx, field, expected).await?;
        if stored != expected {
            return Err(IndexError::ShardIdentityMismatch {
                configured: shard.name.clone(),
                field,
                stored,
                expected: expected.to_owned(),
            });
        }
    }
    Ok(())
}

async fn close_all(shards: &[Shard]) {
    for shard in shards {
        shard.pool.close().await;
    }
}

fn to_i64(field: &'static str, value: u64) -> Result<i64, IndexError> {
    i64::try_from(value).map_err(|_| IndexError::ValueOutOfRange { field, value })
}
