//! What every table of the cell database shares: the error type, opening the
//! pool and running the migrations, binding ids and decoding columns. The
//! dialect of a URL (and `mariadb:` spelled `mysql:` for sqlx) is
//! `pocket-sql`'s, as for the index.
//!
//! Invariants: the dialects differ only in their migration files, so every
//! query is written once, with `?` placeholders, and runs on both. A value
//! read back is checked, never trusted: a negative id or size, a count that
//! does not fit its type or an unknown state name is a
//! [`DbError::CorruptRow`] naming its table and column, never a panic or a
//! silently wrapped number.

use std::time::Duration;

use pocket_sql::Dialect;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

/// How long a caller waits for a pooled connection before the call fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Names the URL's scheme only: the rest may carry a password.
    #[error("unsupported cell database URL: {0}")]
    UnknownScheme(#[from] pocket_sql::UnknownScheme),
    #[error("cell database: {context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A column could not be read as the type the schema gives it.
    #[error("cell database: decode {table}.{column}: {source}")]
    Decode {
        table: &'static str,
        column: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cell database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A column was read but its value breaks the schema's rules.
    #[error("cell database holds an invalid row: {table}.{column}: {problem}")]
    CorruptRow { table: &'static str, column: &'static str, problem: RowProblem },
}

/// Why a stored value was refused ([`DbError::CorruptRow`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    /// Ids, sizes and counts are stored as signed `BIGINT` but never negative.
    #[error("negative value {value}")]
    Negative { value: i64 },
    /// Positions and shard counts are 32-bit in memory.
    #[error("{value} does not fit in 32 bits")]
    TooLarge { value: u64 },
    /// A name (volume state or kind) this version does not know.
    #[error("unknown value {value:?}")]
    Unknown { value: String },
}

pub(super) trait SqlContext<T> {
    fn ctx(self, context: &'static str) -> Result<T, DbError>;
}

impl<T> SqlContext<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError::Sql { context, source })
    }
}

/// Connects a pool of at most `max_connections` to `url` and brings the
/// schema up to date.
pub(super) async fn connect(url: &str, max_connections: u32) -> Result<AnyPool, DbError> {
    let (dialect, url) = Dialect::from_url(url)?;
    pocket_sql::install_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if dialect == Dialect::Sqlite {
                    // WAL with synchronous=FULL: a committed transaction survives power loss.
                    for pragma in ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=5000"] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .ctx("connect")?;
    match dialect {
        Dialect::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
        Dialect::Mysql => sqlx::migrate!("migrations/mysql").run(&pool).await?,
    }
    Ok(pool)
}

/// An id, size or count as bound to a `BIGINT` (saturating: no value this
/// large is ever allocated).
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Reads the columns of one row of `table`, checking each value; every
/// error names the table and the column.
pub(super) struct Columns<'r> {
    row: &'r AnyRow,
    table: &'static str,
}

impl<'r> Columns<'r> {
    pub(super) fn of(row: &'r AnyRow, table: &'static str) -> Columns<'r> {
        Columns { row, table }
    }

    fn decode_error(&self, column: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
        let table = self.table;
        move |source| DbError::Decode { table, column, source }
    }

    pub(super) fn corrupt(&self, column: &'static str, problem: RowProblem) -> DbError {
        DbError::CorruptRow { table: self.table, column, problem }
    }

    pub(super) fn i64(&self, column: &'static str) -> Result<i64, DbError> {
        self.row.try_get(column).map_err(self.decode_error(column))
    }

    pub(super) fn string(&self, column: &'static str) -> Result<String, DbError> {
        self.row.try_get(column).map_err(self.decode_error(column))
    }

    pub(super) fn opt_string(&self, column: &'static str) -> Result<Option<String>, DbError> {
        self.row.try_get(column).map_err(self.decode_error(column))
    }

    /// A nullable BLAKE3 hash stored as 64 hex characters.
    pub(super) fn opt_blake3(&self, column: &'static str) -> Result<Option<[u8; 32]>, DbError> {
        let Some(text) = self.opt_string(column)? else { return Ok(None) };
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&text, &mut hash)
            .map_err(|_| self.corrupt(column, RowProblem::Unknown { value: text.chars().take(80).collect() }))?;
        Ok(Some(hash))
    }

    /// A `BIGINT` that is never negative.
    pub(super) fn u64(&self, column: &'static str) -> Result<u64, DbError> {
        let value = self.i64(column)?;
        u64::try_from(value).map_err(|_| self.corrupt(column, RowProblem::Negative { value }))
    }

    /// A nullable `BIGINT` that is never negative.
    pub(super) fn opt_u64(&self, column: &'static str) -> Result<Option<u64>, DbError> {
        let value: Option<i64> = self.row.try_get(column).map_err(self.decode_error(column))?;
        value
            .map(|value| u64::try_from(value).map_err(|_| self.corrupt(column, RowProblem::Negative { value })))
            .transpose()
    }

    /// A position or shard count: never negative, at most `u32::MAX`.
    pub(super) fn u32(&self, column: &'static str) -> Result<u32, DbError> {
        let value = self.u64(column)?;
        u32::try_from(value).map_err(|_| self.corrupt(column, RowProblem::TooLarge { value }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_names_no_credentials() {
        let err = connect("postgres://user:secret@h/db", 1).await.expect_err("postgres is refused");
        assert!(matches!(&err, DbError::UnknownScheme(e) if e.scheme == "postgres"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn corrupt_row_names_table_column_and_problem() {
        let err = DbError::CorruptRow { table: "extents", column: "position", problem: RowProblem::TooLarge { value: 1 << 40 } };
        assert_eq!(
            err.to_string(),
            "cell database holds an invalid row: extents.position: 1099511627776 does not fit in 32 bits"
        );
    }
}
