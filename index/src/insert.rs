//! Writing index rows: the insert of one row in a transaction, and the
//! batcher that lets concurrent inserts into one SQLite shard share a
//! transaction (one commit, one WAL fsync).
//!
//! SQLite admits one writer at a time and each commit is an fsync
//! (`synchronous = FULL`), so without batching a shard commits at most one
//! row per fsync however many PUTs wait. The batcher is a task per SQLite
//! shard: it takes every insert waiting on its queue (up to
//! [`INSERT_BATCH_MAX_ROWS`]) and commits them in one transaction; each
//! caller is answered only after that commit. If any statement of a batch
//! fails, or its commit does, the batch is rolled back and each of its rows
//! is retried alone, so one bad row fails only its own caller. MySQL shards
//! do not batch: InnoDB commits concurrent transactions of many connections
//! together by itself.

use tokio::sync::{mpsc, oneshot};

use crate::entry::{vshard_of_key, IndexEntry, InsertOutcome};
use crate::error::IndexError;
use crate::shard::{Shard, ENTRY_COLUMNS};

/// Most rows one batched transaction commits. Bounds how long the write
/// lock is held and how much one failed batch has to retry row by row.
pub const INSERT_BATCH_MAX_ROWS: usize = 64;

/// Inserts that may wait for a shard's batcher; more callers wait to enqueue.
const INSERT_QUEUE_CAPACITY: usize = 1024;

/// Columns of the `blobs` insert, in bind order.
const BLOB_INSERT_COLUMNS: [&str; 6] = [
    "blob_key",
    "vshard",
    "cell_id",
    "bucket_id",
    "length_bytes",
    "created_unix_ms",
];

/// One index row to insert, every value already validated.
pub(crate) struct InsertRow {
    pub(crate) entry: IndexEntry,
    pub(crate) outbox_zones: Vec<String>,
    pub(crate) bucket_id: i64,
    pub(crate) length_bytes: i64,
}

struct Pending {
    row: InsertRow,
    resp: oneshot::Sender<Result<InsertOutcome, IndexError>>,
}

/// The queue of one shard's insert batcher. Dropping every clone ends the
/// batcher task once its queue is empty.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    queue: mpsc::Sender<Pending>,
}

impl Batcher {
    /// Starts the batcher task of `shard` on the current runtime.
    pub(crate) fn start(shard: Shard, vshard_count: u32) -> Batcher {
        let (queue, rx) = mpsc::channel(INSERT_QUEUE_CAPACITY);
        tokio::spawn(run(shard, vshard_count, rx));
        Batcher { queue }
    }

    /// Inserts `row` in the next batch; returns after that batch committed.
    pub(crate) async fn insert(&self, row: InsertRow) -> Result<InsertOutcome, IndexError> {
        let (resp, answer) = oneshot::channel();
        let cancelled = || IndexError::Cancelled { op: "insert" };
        self.queue
            .send(Pending { row, resp })
            .await
            .map_err(|_| cancelled())?;
        answer.await.map_err(|_| cancelled())?
    }
}

async fn run(shard: Shard, vshard_count: u32, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(INSERT_BATCH_MAX_ROWS);
    while rx.recv_many(&mut batch, INSERT_BATCH_MAX_ROWS).await > 0 {
        metrics::counter!("pocket_index_insert_batches_total").increment(1);
        metrics::counter!("pocket_index_insert_batch_rows_total").increment(batch.len() as u64);
        commit_batch(&shard, vshard_count, std::mem::take(&mut batch)).await;
    }
}

/// Commits `batch` in one transaction, or, if that fails, each row in its own.
async fn commit_batch(shard: &Shard, vshard_count: u32, batch: Vec<Pending>) {
    if batch.len() > 1 {
        match insert_together(shard, vshard_count, &batch).await {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    // The caller may have gone (cancelled): its row stays, as
                    // an unbatched insert would if cancelled after commit.
                    let _ = pending.resp.send(Ok(outcome));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(shard = %shard.name, rows = batch.len(), error = %e,
                    "batched index insert failed; retrying its rows one by one");
            }
        }
    }
    for pending in batch {
        let _ = pending.resp.send(insert_alone(shard, vshard_count, &pending.row).await);
    }
}

async fn insert_together(
    shard: &Shard,
    vshard_count: u32,
    batch: &[Pending],
) -> Result<Vec<InsertOutcome>, IndexError> {
    let mut tx = shard.begin_write().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut result = Ok(());
    for pending in batch {
        match insert_in_tx(shard, vshard_count, &mut tx, &pending.row).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    shard.finish(tx, result).await?;
    Ok(outcomes)
}

/// Inserts `row` in a transaction of its own.
pub(crate) async fn insert_alone(
    shard: &Shard,
    vshard_count: u32,
    row: &InsertRow,
) -> Result<InsertOutcome, IndexError> {
    let mut tx = shard.begin_write().await?;
    let result = insert_in_tx(shard, vshard_count, &mut tx, row).await;
    shard.finish(tx, result).await
}

/// Inserts `row` in `tx`: the `blobs` row and, only if it is new, its outbox
/// rows; if the key is already indexed, returns the existing row.
async fn insert_in_tx(
    shard: &Shard,
    vshard_count: u32,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    row: &InsertRow,
) -> Result<InsertOutcome, IndexError> {
    let entry = &row.entry;
    let key = &entry.key;
    let insert = shard
        .dialect
        .insert_if_absent("blobs", &BLOB_INSERT_COLUMNS, "blob_key", 1);
    let rows_affected = sqlx::query(&insert)
        .bind(key.as_bytes().as_slice())
        .bind(i64::from(vshard_of_key(key, vshard_count)))
        .bind(i64::from(entry.cell_id))
        .bind(row.bucket_id)
        .bind(row.length_bytes)
        .bind(entry.created_unix_ms)
        .execute(&mut **tx)
        .await
        .map_err(shard.db_err("insert blob row"))?
        .rows_affected();
    match rows_affected {
        1 => {
            if !row.outbox_zones.is_empty() {
                let rows = vec!["(?, ?, ?)"; row.outbox_zones.len()].join(", ");
                let sql = format!(
                    "INSERT INTO replication_outbox (blob_key, zone, created_unix_ms) VALUES {rows}"
                );
                let mut query = sqlx::query(&sql).persistent(false);
                for zone in &row.outbox_zones {
                    query = query
                        .bind(key.as_bytes().as_slice())
                        .bind(zone.as_str())
                        .bind(entry.created_unix_ms);
                }
                query
                    .execute(&mut **tx)
                    .await
                    .map_err(shard.db_err("insert outbox rows"))?;
            }
            Ok(InsertOutcome::Inserted)
        }
        0 => {
            // Skipped: read the winner's row in the same transaction.
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM blobs WHERE blob_key = ?");
            let found = sqlx::query(&sql)
                .bind(key.as_bytes().as_slice())
                .fetch_optional(&mut **tx)
                .await
                .map_err(shard.db_err("read existing blob row"))?
                .ok_or_else(|| {
                    shard.corrupt(format!("insert of {key} was skipped but no row exists"))
                })?;
            let existing = shard.decode_entry(&found, vshard_count)?;
            if existing.key != *key {
                return Err(shard.corrupt(format!(
                    "lookup of {key} returned the row of {}",
                    existing.key
                )));
            }
            Ok(InsertOutcome::AlreadyPresent(existing))
        }
        n => Err(shard.corrupt(format!("insert of one row of {key} affected {n} rows"))),
    }
}
