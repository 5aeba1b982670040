//! What pocket's SQL databases — the index shards and the cell database —
//! share: which dialect a URL names, the URL sqlx is given, the sqlx `Any`
//! drivers, and the few statements whose SQL differs between SQLite and
//! MySQL/MariaDB. Everything else in both crates is one implementation over
//! `sqlx::Any` with `?` placeholders.
//!
//! Invariant: an error about a URL names its scheme, never the URL, which may
//! carry a password.
//!
//! # Layout
//! - [`Dialect`] — parsing a URL, the dialect's statements.
//! - [`install_drivers`] — the sqlx `Any` drivers, once per process.
//! - `testing` (feature `testing`) — throwaway SQLite and MariaDB databases
//!   for the database test suites.

#[cfg(feature = "testing")]
pub mod testing;

/// The SQL dialects pocket's databases run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    /// MySQL and MariaDB (`mysql:` and `mariadb:` URLs).
    Mysql,
}

/// A database URL whose scheme is none of `sqlite:`, `mysql:`, `mariadb:`.
/// Carries the scheme only: the rest of the URL may hold credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("url scheme {scheme:?} is not supported; use sqlite:, mysql: or mariadb:")]
pub struct UnknownScheme {
    pub scheme: String,
}

impl Dialect {
    /// The dialect of `url` and the URL to hand to sqlx: `url` itself, except
    /// that `mariadb:` is spelled `mysql:`, so sqlx sees one spelling from
    /// every caller. The scheme is matched without regard to case.
    pub fn from_url(url: &str) -> Result<(Dialect, String), UnknownScheme> {
        let (scheme, rest) = url.split_once(':').unwrap_or(("", url));
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok((Dialect::Sqlite, url.to_owned())),
            "mysql" => Ok((Dialect::Mysql, url.to_owned())),
            "mariadb" => Ok((Dialect::Mysql, format!("mysql:{rest}"))),
            _ => Err(UnknownScheme { scheme: scheme.to_owned() }),
        }
    }

    /// Statement that opens a write transaction. SQLite takes the write lock
    /// up front (`IMMEDIATE`) so concurrent writers queue on `busy_timeout`
    /// instead of failing when they upgrade from a read snapshot.
    pub fn begin_write(self) -> &'static str {
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
    pub fn insert_if_absent(
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

/// Installs sqlx's `Any` drivers (SQLite and MySQL). Call before opening an
/// `AnyPool` or `AnyConnection`; idempotent (sqlx guards it with a `Once`).
pub fn install_drivers() {
    sqlx::any::install_default_drivers();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_selects_dialect_and_mariadb_is_spelled_mysql() {
        let (dialect, url) = Dialect::from_url("sqlite:///tmp/x.db?mode=rwc").expect("sqlite");
        assert_eq!(dialect, Dialect::Sqlite);
        assert_eq!(url, "sqlite:///tmp/x.db?mode=rwc");
        let (dialect, url) = Dialect::from_url("mysql://root@h/db").expect("mysql");
        assert_eq!(dialect, Dialect::Mysql);
        assert_eq!(url, "mysql://root@h/db");
        let (dialect, url) = Dialect::from_url("mariadb://root@h/db").expect("mariadb");
        assert_eq!(dialect, Dialect::Mysql);
        assert_eq!(url, "mysql://root@h/db");
        let (dialect, url) = Dialect::from_url("MariaDB://root@h/db").expect("any case");
        assert_eq!(dialect, Dialect::Mysql);
        assert_eq!(url, "mysql://root@h/db");
    }

    #[test]
    fn unknown_scheme_names_the_scheme_not_the_url() {
        let err = Dialect::from_url("postgres://user:secret@h/db?password=hidden").expect_err("postgres");
        assert_eq!(err.scheme, "postgres");
        let message = err.to_string();
        assert!(!message.contains("secret"), "{message}");
        assert!(!message.contains("hidden"), "{message}");
        assert!(!message.contains("h/db"), "{message}");
        assert!(Dialect::from_url("no-scheme-at-all").is_err());
    }

    #[test]
    fn insert_if_absent_has_one_placeholder_per_value() {
        let sql = Dialect::Sqlite.insert_if_absent("t", &["a", "b"], "a", 3);
        assert_eq!(sql.matches('?').count(), 6);
        assert!(sql.ends_with("ON CONFLICT (a) DO NOTHING"));
        let sql = Dialect::Mysql.insert_if_absent("t", &["a", "b"], "a", 1);
        assert_eq!(sql, "INSERT IGNORE INTO t (a, b) VALUES (?, ?)");
    }

    #[test]
    fn write_transactions_take_sqlites_lock_up_front() {
        assert_eq!(Dialect::Sqlite.begin_write(), "BEGIN IMMEDIATE");
        assert_eq!(Dialect::Mysql.begin_write(), "BEGIN");
    }
}
