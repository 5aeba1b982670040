//! Writing index rows: the insert of one row in a transaction (MySQL), and
//! the batcher that lets concurrent inserts into one SQLite shard share one
//! statement and one commit (one WAL fsync).
//!
//! SQLite admits one writer at a time and each commit is an fsync
//! (`synchronous = FULL`), so without batching a shard commits at most one
//! row per fsync however many PUTs wait. The batcher is a task per SQLite
//! shard, on a connection of its own (see `batcher`): it takes every insert
//! waiting on its queue (up to [`INSERT_BATCH_MAX_ROWS`]) and writes them
//! with one `INSERT ... ON CONFLICT DO NOTHING RETURNING blob_key`, which
//! names the rows it inserted; a row it skipped is read back, as the
//! existing row. Rows without outbox zones need nothing else: the statement
//! commits alone (autocommit). Rows with zones get their outbox rows in the
//! same transaction. Each caller is answered only after the commit. If a
//! statement fails, the batch is rolled back and each of its rows is retried
//! alone, so one bad row fails only its own caller. MySQL shards do not
//! batch: InnoDB commits concurrent transactions of many connections together
//! by itself.

use std::collections::HashMap;

use pocket_types::Key;
use sqlx::AnyConnection;

use crate::entry::{vshard_of_key, IndexEntry, InsertOutcome};
use crate::error::IndexError;
use crate::batcher::{self, OwnConnection, Pending, Serve};
use crate::lookup::select_entries;
use crate::shard::Shard;

/// Most rows one batched statement inserts. Bounds how long the write lock
/// is held and how much one failed batch has to retry row by row.
pub const INSERT_BATCH_MAX_ROWS: usize = 64;

/// Inserts that may wait for a shard's batcher; more callers wait to enqueue.
const INSERT_QUEUE_CAPACITY: usize = 1024;

/// Outbox rows per `INSERT` (3 values each): far under SQLite's limit of
/// 32,766 bound values however many zones are configured.
const OUTBOX_INSERT_MAX_ROWS: usize = 1_000;

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

/// The insert batcher of a SQLite shard.
pub(crate) type Batcher = batcher::Batcher<InsertBatches>;

impl Batcher {
    /// Starts the insert batcher of `shard` (SQLite) on the current runtime.
    pub(crate) fn start_inserts(shard: Shard, vshard_count: u32) -> Batcher {
        let server = InsertBatches { shard: shard.clone(), vshard_count };
        Batcher::start(shard, server, INSERT_BATCH_MAX_ROWS, INSERT_QUEUE_CAPACITY)
    }

    /// Inserts `row` in the next batch; returns after that batch committed.
    pub(crate) async fn insert(&self, row: InsertRow) -> Result<InsertOutcome, IndexError> {
        self.call(row).await
    }
}

#[derive(Debug)]
pub(crate) struct InsertBatches {
    shard: Shard,
    vshard_count: u32,
}

impl Serve for InsertBatches {
    type Request = InsertRow;
    type Response = InsertOutcome;
    const OP: &'static str = "insert";
    const BATCHES_METRIC: &'static str = "pocket_index_insert_batches_total";
    const REQUESTS_METRIC: &'static str = "pocket_index_insert_batch_rows_total";

    async fn serve(&self, conn: &mut OwnConnection, batch: Vec<Pending<InsertRow, InsertOutcome>>) {
        commit_batch(&self.shard, self.vshard_count, conn, batch).await;
    }
}

/// Writes `batch` together, or, if that fails, each row on its own.
async fn commit_batch(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut OwnConnection,
    batch: Vec<Pending<InsertRow, InsertOutcome>>,
) {
    let rows: Vec<&InsertRow> = batch.iter().map(|pending| &pending.request).collect();
    let failure = match insert_rows(shard, vshard_count, conn, &rows).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                // The caller may have gone (cancelled): its row stays, as
                // an unbatched insert would if cancelled after commit.
                let _ = pending.resp.send(outcome);
            }
            return;
        }
        Err(e) => e,
    };
    if batch.len() == 1 {
        let pending = batch.into_iter().next().expect("one row");
        let _ = pending.resp.send(Err(failure));
        return;
    }
    tracing::warn!(shard = %shard.name, rows = batch.len(), error = %failure,
        "batched index insert failed; retrying its rows one by one");
    for pending in batch {
        let outcome = insert_rows(shard, vshard_count, conn, &[&pending.request])
            .await
            .and_then(|outcomes| outcomes.into_iter().next().expect("one row per row"));
        let _ = pending.resp.send(outcome);
    }
}

/// Inserts `rows` (SQLite) on `conn`: one statement for the `blobs` rows,
/// and, in the same transaction, the outbox rows of those that were new.
/// The outer error is a failed statement (nothing of the batch is written);
/// an inner one fails only its row (its existing row is corrupt).
async fn insert_rows(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut OwnConnection,
    rows: &[&InsertRow],
) -> Result<Vec<Result<InsertOutcome, IndexError>>, IndexError> {
    let connection = conn.get().await?;
    let result = if rows.iter().all(|row| row.outbox_zones.is_empty()) {
        // One statement is its own transaction: nothing else to keep atomic.
        let _turn = shard.write_turn().await;
        insert_blob_rows(shard, vshard_count, connection, rows).await
    } else {
        match shard.begin_write_on(connection).await {
            Ok(mut tx) => {
                let result = insert_with_outbox(shard, vshard_count, &mut tx, rows).await;
                shard.finish(tx, result).await
            }
            Err(e) => Err(e),
        }
    };
    if let Err(IndexError::Database { .. }) = &result {
        // Rolled back or never begun; start the next batch on a fresh connection.
        conn.reset().await;
    }
    result
}

async fn insert_with_outbox(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut AnyConnection,
    rows: &[&InsertRow],
) -> Result<Vec<Result<InsertOutcome, IndexError>>, IndexError> {
    let outcomes = insert_blob_rows(shard, vshard_count, &mut *conn, rows).await?;
    let new_rows: Vec<&InsertRow> = rows
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| matches!(outcome, Ok(InsertOutcome::Inserted)))
        .map(|(row, _)| *row)
        .collect();
    insert_outbox(shard, conn, &new_rows).await?;
    Ok(outcomes)
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the values of `row` in the order of [`BLOB_INSERT_COLUMNS`].
fn bind_blob_row<'q>(query: AnyQuery<'q>, row: &'q InsertRow, vshard_count: u32) -> AnyQuery<'q> {
    let key = &row.entry.key;
    query
        .bind(key.as_bytes().as_slice())
        .bind(i64::from(vshard_of_key(key, vshard_count)))
        .bind(i64::from(row.entry.cell_id))
        .bind(row.bucket_id)
        .bind(row.length_bytes)
        .bind(row.entry.created_unix_ms)
}

/// One outbox row per zone of each of `rows` (rows that were just inserted).
async fn insert_outbox(shard: &Shard, conn: &mut AnyConnection, rows: &[&InsertRow]) -> Result<(), IndexError> {
    let outbox: Vec<(&Key, &str, i64)> = rows
        .iter()
        .flat_map(|row| {
            row.outbox_zones
                .iter()
                .map(|zone| (&row.entry.key, zone.as_str(), row.entry.created_unix_ms))
        })
        .collect();
    for chunk in outbox.chunks(OUTBOX_INSERT_MAX_ROWS) {
        let values = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO replication_outbox (blob_key, zone, created_unix_ms) VALUES {values}");
        let mut query = sqlx::query(&sql).persistent(false);
        for (key, zone, created) in chunk {
            query = query.bind(key.as_bytes().as_slice()).bind(*zone).bind(*created);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(shard.db_err("insert outbox rows"))?;
    }
    Ok(())
}

/// The `blobs` rows of `rows` in one statement; for each row, `Inserted`, or
/// the row that was already there (also for a key repeated within `rows`:
/// its first row wins).
async fn insert_blob_rows(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut AnyConnection,
    rows: &[&InsertRow],
) -> Result<Vec<Result<InsertOutcome, IndexError>>, IndexError> {
    let sql = format!(
        "{} RETURNING blob_key",
        shard
            .dialect
            .insert_if_absent("blobs", &BLOB_INSERT_COLUMNS, "blob_key", rows.len())
    );
    // Prepared once per batch size on this long-lived connection.
    let mut query = sqlx::query(&sql);
    for row in rows {
        query = bind_blob_row(query, row, vshard_count);
    }
    let returned = query
        .fetch_all(&mut *conn)
        .await
        .map_err(shard.db_err("insert blob rows"))?;
    let mut inserted: HashMap<Key, usize> = HashMap::with_capacity(returned.len());
    for row in &returned {
        let bytes: Vec<u8> = shard.column(row, "blob_key")?;
        let key = Key::from_slice(&bytes)
            .map_err(|e| shard.corrupt(format!("insert returned blob_key {}: {e}", hex::encode(&bytes))))?;
        *inserted.entry(key).or_default() += 1;
    }
    let mut outcomes = Vec::with_capacity(rows.len());
    for row in rows {
        let key = &row.entry.key;
        match inserted.get_mut(key) {
            Some(count) if *count > 0 => {
                *count -= 1;
                outcomes.push(Ok(InsertOutcome::Inserted));
            }
            _ => outcomes.push(read_existing(shard, vshard_count, &mut *conn, key).await?),
        }
    }
    if let Some((key, _)) = inserted.iter().find(|(_, count)| **count > 0) {
        return Err(shard.corrupt(format!("insert returned {key}, which no row of the batch has")));
    }
    Ok(outcomes)
}

/// The existing row of `key`, whose insert was skipped. The outer error is a
/// failed statement; the inner one, a row that is missing or corrupt.
async fn read_existing(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut AnyConnection,
    key: &Key,
) -> Result<Result<InsertOutcome, IndexError>, IndexError> {
    match select_entries(shard, vshard_count, conn, &[*key]).await {
        Ok(entries) => Ok(entries
            .into_iter()
            .next()
            .map(InsertOutcome::AlreadyPresent)
            .ok_or_else(|| shard.corrupt(format!("insert of {key} was skipped but no row exists")))),
        Err(e @ IndexError::Database { .. }) => Err(e),
        Err(corrupt) => Ok(Err(corrupt)),
    }
}

/// Inserts `row` in a transaction of its own (MySQL).
pub(crate) async fn insert_alone(
    shard: &Shard,
    vshard_count: u32,
    row: &InsertRow,
) -> Result<InsertOutcome, IndexError> {
    let mut tx = shard.begin_write().await?;
    let result = insert_in_tx(shard, vshard_count, &mut tx, row).await;
    shard.finish(tx, result).await
}

/// Inserts `row` in `tx` (MySQL): the `blobs` row and, only if it is new,
/// its outbox rows; if the key is already indexed, returns the existing row.
async fn insert_in_tx(
    shard: &Shard,
    vshard_count: u32,
    conn: &mut AnyConnection,
    row: &InsertRow,
) -> Result<InsertOutcome, IndexError> {
    let key = &row.entry.key;
    let insert = shard
        .dialect
        .insert_if_absent("blobs", &BLOB_INSERT_COLUMNS, "blob_key", 1);
    let rows_affected = bind_blob_row(sqlx::query(&insert), row, vshard_count)
        .execute(&mut *conn)
        .await
        .map_err(shard.db_err("insert blob row"))?
        .rows_affected();
    match rows_affected {
        1 => {
            insert_outbox(shard, conn, &[row]).await?;
            Ok(InsertOutcome::Inserted)
        }
        // Skipped: read the winner's row in the same transaction.
        0 => read_existing(shard, vshard_count, conn, key).await?,
        n => Err(shard.corrupt(format!("insert of one row of {key} affected {n} rows"))),
    }
}
