//! The shard map: which physical database holds each virtual shard. Stored in
//! the directory (the first configured database) as `shard_map` rows, next to
//! `index_meta.vshard_count`, both written once in one transaction.

use sqlx::any::AnyRow;

use crate::error::IndexError;
use crate::shard::Shard;

/// `index_meta` name of the vshard count.
const META_VSHARD_COUNT: &str = "vshard_count";

/// Rows per `INSERT` when the map is first written: 1000 bound values, far
/// under SQLite's (32766) and MySQL's (65535) placeholder limits, and 2^16
/// vshards still take only 132 statements.
const SHARD_MAP_INSERT_BATCH_ROWS: usize = 500;

/// Reads the shard map from `directory`, creating it first if this is the
/// index's first open: vshard `i` goes to `shard_names[i % n]`. Returns, for
/// each vshard, the position of its database in `shard_names`.
pub(crate) async fn load_or_init(
    directory: &Shard,
    vshard_count: u32,
    shard_names: &[String],
) -> Result<Vec<usize>, IndexError> {
    let mut tx = directory.begin_write().await?;
    let result = read_or_create(directory, &mut tx, vshard_count, shard_names).await;
    let rows = directory.finish(tx, result).await?;

    let mut map: Vec<Option<usize>> = vec![None; vshard_count as usize];
    for row in &rows {
        let vshard: u32 = directory.unsigned_column(row, "vshard")?;
        let name: String = directory.column(row, "shard_name")?;
        let slot = map.get_mut(vshard as usize).ok_or_else(|| {
            directory.corrupt(format!(
                "shard_map has vshard {vshard}, but vshard_count is {vshard_count}"
            ))
        })?;
        let position = shard_names
            .iter()
            .position(|configured| *configured == name)
            .ok_or(IndexError::UnknownShard { vshard, name })?;
        *slot = Some(position);
    }
    map.into_iter()
        .enumerate()
        .map(|(vshard, position)| {
            position.ok_or_else(|| {
                directory.corrupt(format!("vshard {vshard} is missing from shard_map"))
            })
        })
        .collect()
}

/// In `tx`: creates the map if the vshard count was not yet recorded, checks
/// the count, and returns the raw `shard_map` rows.
async fn read_or_create(
    directory: &Shard,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vshard_count: u32,
    shard_names: &[String],
) -> Result<Vec<AnyRow>, IndexError> {
    let (stored, created) = directory
        .claim_meta(tx, META_VSHARD_COUNT, &vshard_count.to_string())
        .await?;
    let stored: u32 = stored.parse().map_err(|_| {
        directory.corrupt(format!("index_meta vshard_count = {stored:?} is not a u32"))
    })?;
    if stored != vshard_count {
        return Err(IndexError::VshardCountMismatch {
            stored,
            configured: vshard_count,
        });
    }
    if created {
        write_round_robin(directory, tx, vshard_count, shard_names).await?;
        tracing::info!(
            directory = %directory.name,
            vshard_count,
            shards = shard_names.len(),
            "index created: shard map initialised round-robin"
        );
    }
    sqlx::query("SELECT vshard, shard_name FROM shard_map")
        .fetch_all(&mut **tx)
        .await
        .map_err(directory.db_err("read shard map"))
}

async fn write_round_robin(
    directory: &Shard,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    vshard_count: u32,
    shard_names: &[String],
) -> Result<(), IndexError> {
    assert!(
        !shard_names.is_empty(),
        "config validation requires a shard"
    );
    let vshards: Vec<u32> = (0..vshard_count).collect();
    for batch in vshards.chunks(SHARD_MAP_INSERT_BATCH_ROWS) {
        let sql = directory.dialect.insert_if_absent(
            "shard_map",
            &["vshard", "shard_name"],
            "vshard",
            batch.len(),
        );
        let mut query = sqlx::query(&sql);
        for &vshard in batch {
            let name = &shard_names[vshard as usize % shard_names.len()];
            query = query.bind(i64::from(vshard)).bind(name.as_str());
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(directory.db_err("write shard map"))?;
    }
    Ok(())
}
