//! Throwaway databases for the suites that run the same assertions on SQLite
//! and on MariaDB (the index's and the cell database's).
//!
//! MariaDB: the server at `POCKET_TEST_MYSQL_URL` (default
//! [`DEFAULT_MYSQL_URL`]); each test creates databases of its own there and
//! they are dropped when the [`MysqlDatabases`] holding them is, even if the
//! test panicked. A server that cannot be reached skips the MariaDB half with
//! a line on stderr — except under `CI=true`, where it fails the test
//! ([`mysql_databases_or_skip`]).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sqlx::Connection;

use crate::{Dialect, UnknownScheme};

/// The test server when `POCKET_TEST_MYSQL_URL` is not set.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// The variable naming the test server.
pub const MYSQL_URL_VAR: &str = "POCKET_TEST_MYSQL_URL";

/// How long to wait for the test MariaDB before calling it unreachable.
const MYSQL_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Dropping test databases never waits longer than this (seconds) on a lock
/// that a stuck test connection holds.
const DROP_LOCK_WAIT_TIMEOUT_SECS: u32 = 10;

/// Why the test databases could not be set up. URLs appear without their
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{MYSQL_URL_VAR}: {0}")]
    Scheme(#[from] UnknownScheme),
    #[error("{MYSQL_URL_VAR} = {url}: a sqlite: URL, expected mysql: or mariadb:")]
    NotMysql { url: String },
    #[error("{MYSQL_URL_VAR} = {url}: no \"://\"")]
    Malformed { url: String },
    #[error("connect to {url}: timed out after {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("create database {name}: {source}")]
    CreateDatabase {
        name: String,
        #[source]
        source: sqlx::Error,
    },
}

/// The sqlx URL of a SQLite file at `path`, created on first open.
pub fn sqlite_file_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The test server's URL (`POCKET_TEST_MYSQL_URL` or [`DEFAULT_MYSQL_URL`]).
pub fn mysql_base_url() -> String {
    std::env::var(MYSQL_URL_VAR).unwrap_or_else(|_| DEFAULT_MYSQL_URL.to_owned())
}

/// The MariaDB half of a test: `count` fresh databases named
/// `{prefix}_{random hex}`, or `None` when the server cannot be reached or
/// they cannot be created — after a `SKIPPING` line on stderr, or, under
/// `CI=true`, a panic naming `suite`.
pub async fn mysql_databases_or_skip(suite: &str, prefix: &str, count: usize) -> Option<MysqlDatabases> {
    match MysqlDatabases::create(prefix, count).await {
        Ok(databases) => Some(databases),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("MariaDB half of {suite} cannot run under CI=true: {e}")
        }
        Err(e) => {
            // Straight to the stderr handle: libtest captures `eprintln!` of
            // passing tests, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "SKIPPING MariaDB half of {suite}: {e}");
            None
        }
    }
}

/// Databases created for one test on the test server; dropped (best effort)
/// when this is.
#[derive(Debug)]
pub struct MysqlDatabases {
    /// The server's URL as sqlx takes it (`mysql:`), credentials included.
    base_url: String,
    names: Vec<String>,
    urls: Vec<String>,
}

impl MysqlDatabases {
    /// Creates `count` empty databases named `{prefix}_{random hex}` on the
    /// test server ([`mysql_base_url`]).
    pub async fn create(prefix: &str, count: usize) -> Result<MysqlDatabases, SetupError> {
        let given = mysql_base_url();
        let (dialect, base_url) = Dialect::from_url(&given)?;
        if dialect != Dialect::Mysql {
            return Err(SetupError::NotMysql { url: without_credentials(&given) });
        }
        let shown = without_credentials(&base_url);
        let mut conn = tokio::time::timeout(MYSQL_PROBE_TIMEOUT, sqlx::MySqlConnection::connect(&base_url))
            .await
            .map_err(|_| SetupError::ConnectTimeout { url: shown.clone(), timeout: MYSQL_PROBE_TIMEOUT })?
            .map_err(|source| SetupError::Connect { url: shown.clone(), source })?;
        // Built before the first database is, so that a failure from here on
        // drops what was created.
        let mut databases = MysqlDatabases { base_url, names: Vec::with_capacity(count), urls: Vec::with_capacity(count) };
        for _ in 0..count {
            let name = format!("{prefix}_{}", hex::encode(rand::random::<[u8; 8]>()));
            let url = mysql_url_with_database(&databases.base_url, &name)
                .ok_or_else(|| SetupError::Malformed { url: shown.clone() })?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .map_err(|source| SetupError::CreateDatabase { name: name.clone(), source })?;
            databases.names.push(name);
            databases.urls.push(url);
        }
        // Only the setup connection: a failure to close it cleanly harms nothing.
        let _ = conn.close().await;
        Ok(databases)
    }

    /// The sqlx URL (`mysql:`) of each database, in creation order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }
}

impl Drop for MysqlDatabases {
    fn drop(&mut self) {
        let base_url = self.base_url.clone();
        let names = std::mem::take(&mut self.names);
        if names.is_empty() {
            return;
        }
        // Drop cannot await, and may run inside the test's runtime: use a
        // thread with its own.
        let dropper = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return eprintln!("cannot drop test databases {names:?}: {e}"),
            };
            runtime.block_on(async {
                let mut conn = match sqlx::MySqlConnection::connect(&base_url).await {
                    Ok(conn) => conn,
                    Err(e) => return eprintln!("cannot drop test databases {names:?}: {e}"),
                };
                let bound = format!("SET SESSION lock_wait_timeout = {DROP_LOCK_WAIT_TIMEOUT_SECS}");
                if let Err(e) = sqlx::query(&bound).execute(&mut conn).await {
                    eprintln!("cannot bound lock wait for dropping test databases: {e}");
                }
                for name in &names {
                    if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut conn).await {
                        eprintln!("cannot drop test database {name}: {e}");
                    }
                }
                let _ = conn.close().await;
            });
        });
        let _ = dropper.join();
    }
}

/// `base` with its database path replaced by `database`, query kept; `None`
/// when `base` has no `://`.
pub fn mysql_url_with_database(base: &str, database: &str) -> Option<String> {
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (base, None),
    };
    let authority_start = without_query.find("://")? + 3;
    let authority_end = without_query[authority_start..]
        .find('/')
        .map_or(without_query.len(), |i| authority_start + i);
    let mut url = format!("{}/{database}", &without_query[..authority_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Some(url)
}

/// `url` without its user and password and without its query (which may
/// carry options such as a password too), for messages.
fn without_credentials(url: &str) -> String {
    let without_query = url.split_once('?').map_or(url, |(url, _)| url);
    let Some(authority_start) = without_query.find("://").map(|i| i + 3) else {
        return without_query.to_owned();
    };
    let authority_end = without_query[authority_start..]
        .find('/')
        .map_or(without_query.len(), |i| authority_start + i);
    match without_query[authority_start..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &without_query[..authority_start], &without_query[authority_start + at + 1..]),
        None => without_query.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            mysql_url_with_database("mysql://root@127.0.0.1:3306/test", "d1").as_deref(),
            Some("mysql://root@127.0.0.1:3306/d1")
        );
        assert_eq!(mysql_url_with_database("mysql://root@h", "d1").as_deref(), Some("mysql://root@h/d1"));
        assert_eq!(
            mysql_url_with_database("mysql://root@h/test?ssl-mode=disabled", "d1").as_deref(),
            Some("mysql://root@h/d1?ssl-mode=disabled")
        );
        assert_eq!(mysql_url_with_database("nothing", "d1"), None);
    }

    #[test]
    fn messages_show_urls_without_credentials() {
        assert_eq!(without_credentials("mysql://user:secret@h:3306/db?password=x"), "mysql://h:3306/db");
        assert_eq!(without_credentials("mysql://h/db"), "mysql://h/db");
        assert_eq!(without_credentials("nothing"), "nothing");
    }
}
