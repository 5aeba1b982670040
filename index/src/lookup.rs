//! The lookup batcher of a SQLite shard: single-key lookups that wait at
//! the same time share one `SELECT ... WHERE blob_key IN (...)`, on a
//! connection the batcher keeps for itself (see `batcher`).
//!
//! A lookup through the pool costs two round trips to a SQLite connection's
//! worker thread (the query, and sqlx's ping when the connection goes back
//! to the pool); here a batch of lookups costs one. While one batch runs,
//! the next gathers: no timer, so a lone lookup waits for nothing. If a batch
//! fails, each of its keys is looked up alone, so a corrupt row fails only
//! the callers of its key.

use std::collections::{HashMap, HashSet};

use pocket_types::Key;
use sqlx::any::AnyRow;

use crate::entry::IndexEntry;
use crate::error::IndexError;
use crate::batcher::{self, OwnConnection, Pending, Serve};
use crate::shard::{Shard, ENTRY_COLUMNS};

/// Keys per `IN (...)` query: under SQLite's historical 999-placeholder
/// limit, and small enough that one batch is a short statement on MySQL.
pub const LOOKUP_BATCH_MAX_KEYS: usize = 500;

/// Batches of up to this many keys are prepared once per connection and
/// kept (sqlx's statement cache); larger ones are prepared per query.
const PREPARED_BATCH_MAX_KEYS: usize = 16;

/// Lookups that may wait for a shard's batcher; more callers wait to enqueue.
const LOOKUP_QUEUE_CAPACITY: usize = 1024;

/// The lookup batcher of a SQLite shard.
pub(crate) type LookupBatcher = batcher::Batcher<LookupBatches>;

impl LookupBatcher {
    /// Starts the lookup batcher of `shard` (SQLite) on the current runtime.
    pub(crate) fn start_lookups(shard: Shard, vshard_count: u32) -> LookupBatcher {
        let server = LookupBatches { shard: shard.clone(), vshard_count };
        LookupBatcher::start(shard, server, LOOKUP_BATCH_MAX_KEYS, LOOKUP_QUEUE_CAPACITY)
    }

    /// The row of `key`, if indexed, read in the next batch.
    pub(crate) async fn lookup(&self, key: Key) -> Result<Option<IndexEntry>, IndexError> {
        self.call(key).await
    }
}

#[derive(Debug)]
pub(crate) struct LookupBatches {
    shard: Shard,
    vshard_count: u32,
}

impl Serve for LookupBatches {
    type Request = Key;
    type Response = Option<IndexEntry>;
    const OP: &'static str = "lookup";
    const BATCHES_METRIC: &'static str = "pocket_index_lookup_batches_total";
    const REQUESTS_METRIC: &'static str = "pocket_index_lookup_batch_keys_total";

    async fn serve(&self, conn: &mut OwnConnection, batch: Vec<Pending<Key, Option<IndexEntry>>>) {
        answer_batch(&self.shard, self.vshard_count, conn, batch).await;
    }
}

async fn answer_batch(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut OwnConnection,
    batch: Vec<Pending<Key, Option<IndexEntry>>>,
) {
    let mut keys: Vec<Key> = batch.iter().map(|pending| pending.request).collect();
    keys.sort_unstable();
    keys.dedup();
    let failure = match select_on(shard, vshard_count, conn, &keys).await {
        Ok(entries) => {
            let by_key: HashMap<Key, IndexEntry> =
                entries.into_iter().map(|entry| (entry.key, entry)).collect();
            for pending in batch {
                let _ = pending.resp.send(Ok(by_key.get(&pending.request).cloned()));
            }
            return;
        }
        Err(e) => e,
    };
    if batch.len() == 1 {
        let pending = batch.into_iter().next().expect("one lookup");
        let _ = pending.resp.send(Err(failure));
        return;
    }
    for pending in batch {
        let result = select_on(shard, vshard_count, conn, &[pending.request]).await;
        let _ = pending.resp.send(result.map(|entries| entries.into_iter().next()));
    }
}

/// [`select_entries`] on the batcher's connection, which is replaced after
/// a database error.
async fn select_on(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut OwnConnection,
    keys: &[Key],
) -> Result<Vec<IndexEntry>, IndexError> {
    let result = match conn.get().await {
        Ok(connection) => select_entries(shard, vshard_count, connection, keys).await,
        Err(e) => Err(e),
    };
    if let Err(IndexError::Database { .. }) = &result {
        conn.reset().await;
    }
    result
}

/// The rows of `keys` (at most [`LOOKUP_BATCH_MAX_KEYS`], no repeats) that
/// exist, in no particular order. A row whose key was not asked for is
/// corruption.
pub(crate) async fn select_entries<'e, E>(
    shard: &Shard,
    vshard_count: u32,
    executor: E,
    keys: &[Key],
) -> Result<Vec<IndexEntry>, IndexError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    debug_assert!(keys.len() <= LOOKUP_BATCH_MAX_KEYS);
    let rows: Vec<AnyRow> = if let [key] = keys {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM blobs WHERE blob_key = ?");
        sqlx::query(&sql)
            .bind(key.as_bytes().as_slice())
            .fetch_optional(executor)
            .await
            .map_err(shard.db_err("look up key"))?
            .into_iter()
            .collect()
    } else {
        let placeholders = vec!["?"; keys.len()].join(", ");
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM blobs WHERE blob_key IN ({placeholders})");
        let mut query = sqlx::query(&sql).persistent(keys.len() <= PREPARED_BATCH_MAX_KEYS);
        for key in keys {
            query = query.bind(key.as_bytes().as_slice());
        }
        query
            .fetch_all(executor)
            .await
            .map_err(shard.db_err("look up keys"))?
    };
    let asked: HashSet<&Key> = keys.iter().collect();
    let mut entries = Vec::with_capacity(rows.len());
    for row in &rows {
        let entry = shard.decode_entry(row, vshard_count)?;
        if !asked.contains(&entry.key) {
            return Err(shard.corrupt(format!("lookup returned the row of {}, which was not asked for", entry.key)));
        }
        entries.push(entry);
    }
    Ok(entries)
}
