//! What the index decides per dialect: pool sizes and migrations. The
//! dialect itself, its URLs and the statements whose SQL differs are
//! `pocket-sql`'s; everything else in the crate is one implementation over
//! `sqlx::Any` with `?` placeholders.

use pocket_sql::Dialect;
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

/// How many pooled connections a shard of `dialect` gets when the config
/// does not say.
pub(crate) fn default_max_connections(dialect: Dialect) -> u32 {
    match dialect {
        Dialect::Sqlite => DEFAULT_MAX_CONNECTIONS_SQLITE,
        Dialect::Mysql => DEFAULT_MAX_CONNECTIONS_MYSQL,
    }
}

/// The index schema's migrations in `dialect`.
pub(crate) fn migrator(dialect: Dialect) -> &'static Migrator {
    match dialect {
        Dialect::Sqlite => &SQLITE_MIGRATOR,
        Dialect::Mysql => &MYSQL_MIGRATOR,
    }
}

/// The dialect of `shard`'s `url` and the URL sqlx should connect to
/// (`mariadb:` is spelled `mysql:` for sqlx; see [`Dialect::from_url`]).
pub(crate) fn parse_url(shard: &str, url: &str) -> Result<(Dialect, String), IndexError> {
    Dialect::from_url(url).map_err(|e| IndexError::UnknownScheme {
        shard: shard.to_owned(),
        scheme: e.scheme,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_scheme_names_the_shard_and_the_scheme_not_the_url() {
        let err = parse_url("s0", "postgres://user:secret@h/db").expect_err("postgres");
        assert!(matches!(&err, IndexError::UnknownScheme { shard, scheme } if shard == "s0" && scheme == "postgres"));
        assert!(!err.to_string().contains("secret"));
        assert!(parse_url("s0", "no-scheme-at-all").is_err());
        let (dialect, url) = parse_url("s0", "mariadb://root@h/db").expect("mariadb");
        assert_eq!(dialect, Dialect::Mysql);
        assert_eq!(url, "mysql://root@h/db");
    }
}
