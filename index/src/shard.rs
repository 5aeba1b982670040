//! One physical database: its connection pool, its dialect, and the
//! row-level helpers every query shares.

use std::time::Duration;

use pocket_types::Key;
use pocket_sql::Dialect;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

use crate::config::IndexConfig;
use crate::dialect;
use crate::entry::{vshard_of_key, IndexEntry};
use crate::error::IndexError;

/// How long a SQLite connection waits for another writer's lock before
/// failing with SQLITE_BUSY. Inserts hold the lock for one fsync, so 5 s only
/// runs out when the disk has stalled.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// `sqlx::Any` backend name of SQLite connections (`<Sqlite as Database>::NAME`).
const SQLITE_BACKEND_NAME: &str = "SQLite";

/// The columns of an [`IndexEntry`], in the order `decode_entry` reads them.
/// The key is read back as hex: `sqlx::Any` maps MySQL's `BINARY(32)` to text
/// and would reject bytes that are not UTF-8; `HEX()` exists in both dialects.
pub(crate) const ENTRY_COLUMNS: &str =
    "HEX(blob_key) AS key_hex, vshard, cell_id, bucket_id, length_bytes, created_unix_ms";

#[derive(Debug, Clone)]
pub(crate) struct Shard {
    pub(crate) name: String,
    pub(crate) dialect: Dialect,
    pub(crate) pool: AnyPool,
    /// SQLite only: writers of this process take turns here before `BEGIN
    /// IMMEDIATE`. SQLite admits one writer at a time and makes the others
    /// wait in its busy handler, which polls with sleeps of 1 ms growing to
    /// 100 ms; queued here, the next writer starts the moment the last
    /// commits. (Writers in other processes still meet the busy handler.)
    write_turn: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

/// A write transaction of one shard (see [`Shard::begin_write`]); holds the
/// shard's write turn, if it has one, until [`Shard::finish`]. `'c` is
/// `'static` for a transaction on a pooled connection, else the borrow of
/// the connection it runs on ([`Shard::begin_write_on`]).
pub(crate) struct WriteTx<'c> {
    tx: sqlx::Transaction<'c, sqlx::Any>,
    _turn: Option<WriteTurn>,
}

/// This process's turn to write to a SQLite shard (see `Shard::write_turn`).
pub(crate) type WriteTurn = tokio::sync::OwnedMutexGuard<()>;

impl<'c> std::ops::Deref for WriteTx<'c> {
    type Target = sqlx::Transaction<'c, sqlx::Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Shard {
    /// Connects to `url` (already normalised by `dialect::parse_url`) and
    /// brings its schema up to date.
    pub(crate) async fn connect(
        cfg: &IndexConfig,
        name: &str,
        dialect: Dialect,
        url: &str,
    ) -> Result<Shard, IndexError> {
        let max_connections = cfg
            .max_connections_per_shard
            .unwrap_or_else(|| dialect::default_max_connections(dialect));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            // sqlx pings a connection before lending it by default: for a
            // server that may have dropped it, worth a round trip; for an
            // embedded SQLite file, one more hop to the connection's worker
            // thread (and back) before every query, for nothing.
            .test_before_acquire(dialect != Dialect::Sqlite)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn
                        .backend_name()
                        .eq_ignore_ascii_case(SQLITE_BACKEND_NAME)
                    {
                        // WAL: readers never block the writer. synchronous=FULL:
                        // a committed (acked) index row survives power loss.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        let busy = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}");
                        conn.execute(busy.as_str()).await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|source| IndexError::Database {
                shard: name.to_owned(),
                op: "connect",
                source,
            })?;
        if let Err(source) = dialect::migrator(dialect).run(&pool).await {
            pool.close().await;
            return Err(IndexError::Migrate {
                shard: name.to_owned(),
                source,
            });
        }
        let write_turn = (dialect == Dialect::Sqlite).then(|| std::sync::Arc::new(tokio::sync::Mutex::new(())));
        Ok(Shard {
            name: name.to_owned(),
            dialect,
            pool,
            write_turn,
        })
    }

    /// Maps a sqlx error of operation `op` (a verb phrase) on this shard.
    pub(crate) fn db_err(&self, op: &'static str) -> impl FnOnce(sqlx::Error) -> IndexError + '_ {
        move |source| IndexError::Database {
            shard: self.name.clone(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(&self, detail: String) -> IndexError {
        IndexError::CorruptRow {
            shard: self.name.clone(),
            detail,
        }
    }

    /// Waits for this process's turn to write to the shard (SQLite only;
    /// `None` for MySQL, which needs none).
    pub(crate) async fn write_turn(&self) -> Option<WriteTurn> {
        match &self.write_turn {
            Some(turn) => Some(turn.clone().lock_owned().await),
            None => None,
        }
    }

    /// Opens a transaction that will write (see [`Dialect::begin_write`]).
    pub(crate) async fn begin_write(&self) -> Result<WriteTx<'static>, IndexError> {
        let turn = self.write_turn().await;
        let tx = self
            .pool
            .begin_with(self.dialect.begin_write())
            .await
            .map_err(self.db_err("begin transaction"))?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Like [`Shard::begin_write`], on a connection of the caller's own.
    pub(crate) async fn begin_write_on<'c>(
        &self,
        conn: &'c mut AnyConnection,
    ) -> Result<WriteTx<'c>, IndexError> {
        let turn = self.write_turn().await;
        let tx = conn
            .begin_with(self.dialect.begin_write())
            .await
            .map_err(self.db_err("begin transaction"))?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Ends a transaction opened by [`Shard::begin_write`]: commits if `result`
    /// is `Ok`, rolls back if not. Always call it rather than dropping `tx`: a
    /// dropped transaction is rolled back only when the pool next touches the
    /// connection, and until then it holds its locks.
    pub(crate) async fn finish<T>(
        &self,
        tx: WriteTx<'_>,
        result: Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let tx = tx.tx;
        match result {
            Ok(value) => {
                tx.commit().await.map_err(self.db_err("commit"))?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(shard = %self.name, error = %rollback, "roll back after a failed operation");
                }
                Err(e)
            }
        }
    }

    /// Reads column `name` of `row`; a NULL or mistyped value is corruption.
    pub(crate) fn column<'r, T>(&self, row: &'r AnyRow, name: &str) -> Result<T, IndexError>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        row.try_get(name)
            .map_err(|e| self.corrupt(format!("column {name}: {e}")))
    }

    /// Reads a column that must hold a non-negative value.
    pub(crate) fn unsigned_column<T>(&self, row: &AnyRow, name: &str) -> Result<T, IndexError>
    where
        T: TryFrom<i64>,
    {
        let value: i64 = self.column(row, name)?;
        T::try_from(value).map_err(|_| {
            self.corrupt(format!(
                "column {name} = {value} is out of range for {}",
                std::any::type_name::<T>()
            ))
        })
    }

    /// Decodes a row selected with [`ENTRY_COLUMNS`], checking that the key is
    /// 32 bytes and that it is stored under the vshard it hashes to.
    pub(crate) fn decode_entry(
        &self,
        row: &AnyRow,
        vshard_count: u32,
    ) -> Result<IndexEntry, IndexError> {
        let key_hex: String = self.column(row, "key_hex")?;
        let key_bytes = hex::decode(&key_hex)
            .map_err(|e| self.corrupt(format!("blob_key {key_hex:?} is not hex: {e}")))?;
        let key = Key::from_slice(&key_bytes)
            .map_err(|e| self.corrupt(format!("blob_key {key_hex}: {e}")))?;
        let stored_vshard: u32 = self.unsigned_column(row, "vshard")?;
        let expected_vshard = vshard_of_key(&key, vshard_count);
        if stored_vshard != expected_vshard {
            return Err(self.corrupt(format!(
                "key {key} is stored with vshard {stored_vshard}, but hashes to vshard {expected_vshard}"
            )));
        }
        Ok(IndexEntry {
            key,
            cell_id: self.unsigned_column(row, "cell_id")?,
            bucket_id: self.unsigned_column(row, "bucket_id")?,
            length_bytes: self.unsigned_column(row, "length_bytes")?,
            created_unix_ms: self.column(row, "created_unix_ms")?,
        })
    }

    /// `SELECT COUNT(*)` of `table` (a constant, never user input).
    pub(crate) async fn count_rows(&self, table: &'static str) -> Result<u64, IndexError> {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let row = sqlx::query(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(self.db_err("count rows"))?;
        self.unsigned_column(&row, "n")
    }

    /// Records `name = value` in this database's `index_meta` unless a value
    /// is already there, and returns the stored value. Used for facts fixed
    /// at creation; concurrent first opens all see the first writer's value.
    pub(crate) async fn claim_meta(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        name: &str,
        value: &str,
    ) -> Result<(String, bool), IndexError> {
        let insert = self
            .dialect
            .insert_if_absent("index_meta", &["name", "value"], "name", 1);
        let inserted = sqlx::query(&insert)
            .bind(name)
            .bind(value)
            .execute(&mut **tx)
            .await
            .map_err(self.db_err("write index_meta"))?
            .rows_affected()
            == 1;
        let row = sqlx::query("SELECT value FROM index_meta WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await
            .map_err(self.db_err("read index_meta"))?
            .ok_or_else(|| self.corrupt(format!("index_meta {name:?} is missing after insert")))?;
        let stored: String = self.column(&row, "value")?;
        Ok((stored, inserted))
    }
}
