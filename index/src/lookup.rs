//! The lookup batcher of a SQLite shard: single-key lookups that wait at
//! the same time share one `SELECT ... WHERE blob_key IN (...)`, on a
//! connection the batcher keeps for itself (see `own`).
//!
//! A lookup through the pool costs two round trips to a SQLite connection's
//! worker thread (the query, and sqlx's ping when the connection goes back
//! to the pool); here a batch of lookups costs one. While one batch runs,
//! the next gathers: no timer, so a lone lookup waits for nothing. If a batch
//! fails, each of its keys is looked up alone, so a corrupt row fails only
//! the callers of its key.

use std::collections::{HashMap, HashSet};

use pocket_proto::Key;
use sqlx::any::AnyRow;
use tokio::sync::{mpsc, oneshot};

use crate::entry::IndexEntry;
use crate::error::IndexError;
use crate::own::{BatcherTask, OwnConnection};
use crate::shard::{Shard, ENTRY_COLUMNS};

/// Keys per `IN (...)` query: under SQLite's historical 999-placeholder
/// limit, and small enough that one batch is a short statement on MySQL.
pub const LOOKUP_BATCH_MAX_KEYS: usize = 500;

/// Batches of up to this many keys are prepared once per connection and
/// kept (sqlx's statement cache); larger ones are prepared per query.
const PREPARED_BATCH_MAX_KEYS: usize = 16;

/// Lookups that may wait for a shard's batcher; more callers wait to enqueue.
const LOOKUP_QUEUE_CAPACITY: usize = 1024;

type Answer = oneshot::Sender<Result<Option<IndexEntry>, IndexError>>;

struct Pending {
    key: Key,
    resp: Answer,
}

/// The queue of one SQLite shard's lookup batcher.
#[derive(Debug)]
pub(crate) struct LookupBatcher {
    queue: mpsc::Sender<Pending>,
    task: BatcherTask,
}

impl LookupBatcher {
    /// Starts the batcher task of `shard` on the current runtime.
    pub(crate) fn start(shard: Shard, vshard_count: u32) -> LookupBatcher {
        let (queue, rx) = mpsc::channel(LOOKUP_QUEUE_CAPACITY);
        let task = BatcherTask::spawn(move |stop| run(shard, vshard_count, rx, stop));
        LookupBatcher { queue, task }
    }

    /// The row of `key`, if indexed, read in the next batch.
    pub(crate) async fn lookup(&self, key: Key) -> Result<Option<IndexEntry>, IndexError> {
        let (resp, answer) = oneshot::channel();
        let cancelled = || IndexError::Cancelled { op: "lookup" };
        self.queue
            .send(Pending { key, resp })
            .await
            .map_err(|_| cancelled())?;
        answer.await.map_err(|_| cancelled())?
    }

    /// Ends the task: queued lookups are cancelled, its connection closed.
    pub(crate) async fn stop(&self) {
        self.task.stop().await;
    }
}

async fn run(
    shard: Shard,
    vshard_count: u32,
    mut rx: mpsc::Receiver<Pending>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conn = OwnConnection::new(shard.clone());
    let mut batch = Vec::with_capacity(LOOKUP_BATCH_MAX_KEYS);
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut stop => 0,
            received = rx.recv_many(&mut batch, LOOKUP_BATCH_MAX_KEYS) => received,
        };
        if received == 0 {
            break;
        }
        metrics::counter!("pocket_index_lookup_batches_total").increment(1);
        metrics::counter!("pocket_index_lookup_batch_keys_total").increment(batch.len() as u64);
        answer_batch(&shard, vshard_count, &mut conn, std::mem::take(&mut batch)).await;
    }
    conn.reset().await;
}

async fn answer_batch(shard: &Shard, vshard_count: u32, conn: &mut OwnConnection, batch: Vec<Pending>) {
    let mut keys: Vec<Key> = batch.iter().map(|pending| pending.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let found = match conn.get().await {
        Ok(connection) => select_entries(shard, vshard_count, connection, &keys).await,
        Err(e) => Err(e),
    };
    let failure = match found {
        Ok(entries) => {
            let by_key: HashMap<Key, IndexEntry> =
                entries.into_iter().map(|entry| (entry.key, entry)).collect();
            for pending in batch {
                let _ = pending.resp.send(Ok(by_key.get(&pending.key).cloned()));
            }
            return;
        }
        Err(e) => e,
    };
    if let IndexError::Database { .. } = failure {
        conn.reset().await;
    }
    if batch.len() == 1 {
        let pending = batch.into_iter().next().expect("one lookup");
        let _ = pending.resp.send(Err(failure));
        return;
    }
    for pending in batch {
        let result = match conn.get().await {
            Ok(connection) => select_entries(shard, vshard_count, connection, &[pending.key])
                .await
                .map(|entries| entries.into_iter().next()),
            Err(e) => Err(e),
        };
        if let Err(IndexError::Database { .. }) = &result {
            conn.reset().await;
        }
        let _ = pending.resp.send(result);
    }
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
