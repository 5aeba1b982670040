//! Helpers shared by the index's integration tests: the backends every test
//! runs on (SQLite files in a temp dir, and MariaDB when reachable) and
//! small builders.
#![allow(dead_code)]

use anyhow::{ensure, Context, Result};
use pocket_index::{Index, IndexConfig, IndexEntry, ShardConfig};
use pocket_types::Key;
use pocket_sql::testing::{mysql_databases_or_skip, sqlite_file_url, MysqlDatabases};
use sqlx::Connection;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Empty physical databases for one test, named `s0`, `s1`, ... Dropping it
/// removes them.
pub struct Backend {
    pub label: &'static str,
    pub shards: Vec<ShardConfig>,
    pub _cleanup: Cleanup,
}

/// Held only to be dropped at the end of the test.
#[allow(dead_code)]
pub enum Cleanup {
    Sqlite(tempfile::TempDir),
    Mysql(MysqlDatabases),
}

impl Backend {
    /// Config over the first `count` databases, everything else default.
    pub fn config(&self, count: usize) -> IndexConfig {
        IndexConfig::new(self.shards[..count].to_vec())
    }

    pub fn url_of(&self, shard_name: &str) -> Result<&str> {
        self.shards
            .iter()
            .find(|s| s.name == shard_name)
            .map(|s| s.url.as_str())
            .with_context(|| format!("no shard named {shard_name}"))
    }
}

/// SQLite always; MariaDB when reachable (see the module doc).
pub async fn backends(database_count: usize) -> Result<Vec<Backend>> {
    let mut backends = vec![sqlite_backend(database_count)?];
    if let Some(databases) =
        mysql_databases_or_skip("the index suite", "pocket_idx", database_count).await
    {
        backends.push(mysql_backend(databases));
    }
    Ok(backends)
}

pub fn sqlite_backend(database_count: usize) -> Result<Backend> {
    let dir = tempfile::tempdir().context("create temp dir")?;
    let shards = (0..database_count)
        .map(|i| ShardConfig {
            name: format!("s{i}"),
            url: sqlite_file_url(&dir.path().join(format!("index-{i}.db"))),
        })
        .collect();
    Ok(Backend {
        label: "sqlite",
        shards,
        _cleanup: Cleanup::Sqlite(dir),
    })
}

pub fn mysql_backend(databases: MysqlDatabases) -> Backend {
    let shards = databases
        .urls()
        .iter()
        .enumerate()
        .map(|(i, url)| ShardConfig {
            name: format!("s{i}"),
            url: url.clone(),
        })
        .collect();
    Backend {
        label: "mariadb",
        shards,
        _cleanup: Cleanup::Mysql(databases),
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

pub fn random_key() -> Key {
    Key(rand::random())
}

pub fn entry(key: Key, cell_id: u32, bucket_id: u64) -> IndexEntry {
    IndexEntry {
        key,
        cell_id,
        bucket_id,
        length_bytes: 4 * 1024 * 1024 + u64::from(cell_id),
        created_unix_ms: 1_700_000_000_000 + i64::from(cell_id),
    }
}

pub fn zones(names: &[&str]) -> Vec<String> {
    names.iter().map(|z| z.to_string()).collect()
}

/// Corrupts the row of `key` behind the index's back: moves it to a vshard
/// its key does not hash to.
pub async fn store_under_wrong_vshard(backend: &Backend, index: &Index, key: &Key) -> Result<()> {
    let wrong_vshard = (index.vshard_of(key) + 2) % index.vshard_count();
    let (_, url) = pocket_sql::Dialect::from_url(backend.url_of(index.shard_name_of(key))?)?;
    pocket_sql::install_drivers();
    let mut raw = sqlx::AnyConnection::connect(&url)
        .await
        .context("raw connect")?;
    let updated = sqlx::query("UPDATE blobs SET vshard = ? WHERE blob_key = ?")
        .bind(i64::from(wrong_vshard))
        .bind(key.as_bytes().as_slice())
        .execute(&mut raw)
        .await?
        .rows_affected();
    raw.close().await?;
    ensure!(
        updated == 1,
        "{}: corrupting update hit {updated} rows",
        backend.label
    );
    Ok(())
}

pub fn shard_map_of(index: &Index) -> Vec<Option<String>> {
    (0..index.vshard_count())
        .map(|v| index.shard_name_of_vshard(v).map(str::to_owned))
        .collect()
}
