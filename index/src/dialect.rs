//! The few places where SQLite and MySQL/MariaDB SQL differ. Everything else
//! in the crate is one implementation over `sqlx::Any` with `?` placeholders.

use sqlx::migrate::Migrator;

use crate::error::IndexError;

/// SQLite keeps one writer at a time; connections beyond a few only queue on
/// its write lock.
const DEFAULT_MAX_CONNECTIONS_SQLITE: u32 = 4;

/// Per shard and per process. Eight is enough to keep a shard busy with
/// lookups while staying far below MySQL's default `max_connections` (151)
/// when a dozen frontends share a server.
const DEFAULT_MAX_CONNECTIONS_MYSQL: u32 = 8;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static MYSQL_MIGRATOR: Migrator = sqlx::migrate!("migrations/mysql");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Mysql,
}

impl Dialect {
    /// The dialect of `url` and the URL sqlx should connect to
    /// (`mariadb:` is spelled `mysql:` for sqlx).
    pub(crate) fn from_url(shard: &str, url: &str) -> Result<(Dialect, String), IndexError> {
        let (scheme, rest) = url.split_once(':').unwrap_or(("", url));
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok((Dialect::Sqlite, url.to_owned())),
            "mysql" => Ok((Dialect::Mysql, url.to_owned())),
            "mariadb" => Ok((Dialect::Mysql, format!("mysql:{rest}"))),
            _ => Err(IndexError::UnknownScheme {
                shard: shard.to_owned(),
                scheme: scheme.to_owned(),
            }),
        }
    }

    pub(crate) fn default_max_connections(self) -> u32 {
        match self {
            Dialect::Sqlite => DEFAULT_MAX_CONNECTIONS_SQLITE,
            Dialect::Mysql => DEFAULT_MAX_CONNECTIONS_MYSQL,
        }
    }

    pub(crate) fn migrator(self) -> &'static Migrator {
        match self {
            Dialect::Sqlite => &SQLITE_MIGRATOR,
            Dialect::Mysql => &MYSQL_MIGRATOR,
        }
    }

    /// Statement that opens a write transaction. SQLite takes the write lock
    /// up front (`IMMEDIATE`) so concurrent writers queue on `busy_timeout`
    /// instead of failing when they upgrade from a read snapshot.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Mysql => "BEGIN",
        }
    }

    /// `INSERT` of `row_count` rows of `columns` into `table` that silently
    /// skips rows whose `conflict_column` value already exists; the caller
    /// tells inserted from skipped by `rows_affected`.
    ///
    /// MySQL's `INSERT IGNORE` also downgrades other errors (out-of-range,
    /// too long) to warnings, so callers validate every value before binding
    /// and the schema is wide enough for every value the types allow.
    pub(crate) fn insert_if_absent(
        self,
        table: &str,
        columns: &[&str],
        conflict_column: &str,
        row_count: usize,
    ) -> String {
        let placeholders = vec!["?"; columns.len()].join(", ");
        let rows = vec![format!("({placeholders})"); row_count].join(", ");
        let columns = columns.join(", ");
        match self {
            Dialect::Sqlite => format!(
                "INSERT INTO {table} ({columns}) VALUES {rows} ON CONFLICT ({conflict_column}) DO NOTHING"
            ),
            Dialect::Mysql => format!("INSERT IGNORE INTO {table} ({columns}) VALUES {rows}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_selects_dialect() {
        let (dialect, url) = Dialect::from_url("a", "sqlite:///tmp/x.db?mode=rwc").expect("sqlite");
        assert_eq!(dialect, Dialect::Sqlite);
        assert_eq!(url, "sqlite:///tmp/x.db?mode=rwc");
        let (dialect, url) = Dialect::from_url("a", "mysql://root@h/db").expect("mysql");
        assert_eq!(dialect, Dialect::Mysql);
        assert_eq!(url, "mysql://root@h/db");
        let (dialect, url) = Dialect::from_url("a", "mariadb://root@h/db").expect("mariadb");
        assert_eq!(dialect, Dialect::Mysql);
        assert_eq!(url, "mysql://root@h/db");
    }

    #[test]
    fn unknown_scheme_names_the_scheme_not_the_url() {
        let err = Dialect::from_url("s0", "postgres://user:secret@h/db").expect_err("postgres");
        assert!(matches!(&err, IndexError::UnknownScheme { scheme, .. } if scheme == "postgres"));
        assert!(!err.to_string().contains("secret"));
        assert!(Dialect::from_url("s0", "no-scheme-at-all").is_err());
    }

    #[test]
    fn insert_if_absent_has_one_placeholder_per_value() {
        let sql = Dialect::Sqlite.insert_if_absent("t", &["a", "b"], "a", 3);
        assert_eq!(sql.matches('?').count(), 6);
        assert!(sql.ends_with("ON CONFLICT (a) DO NOTHING"));
        let sql = Dialect::Mysql.insert_if_absent("t", &["a", "b"], "a", 1);
        assert_eq!(sql, "INSERT IGNORE INTO t (a, b) VALUES (?, ?)");
    }
}
