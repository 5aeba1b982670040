//! The index against real databases. Every test runs twice: on SQLite files in
//! a temp dir, and on MariaDB/MySQL (`POCKET_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`) in databases created for the test and
//! dropped after it. Without a reachable server the MariaDB half is skipped
//! with a message on stderr, except under `CI=true`, where it fails.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use pocket_index::{
    Index, IndexConfig, IndexEntry, IndexError, InsertOutcome, ShardConfig, LOOKUP_BATCH_MAX_KEYS,
};
use pocket_types::Key;
use pocket_sql::testing::{mysql_databases_or_skip, sqlite_file_url, MysqlDatabases};
use sqlx::Connection;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Empty physical databases for one test, named `s0`, `s1`, ... Dropping it
/// removes them.
struct Backend {
    label: &'static str,
    shards: Vec<ShardConfig>,
    _cleanup: Cleanup,
}

/// Held only to be dropped at the end of the test.
#[allow(dead_code)]
enum Cleanup {
    Sqlite(tempfile::TempDir),
    Mysql(MysqlDatabases),
}

impl Backend {
    /// Config over the first `count` databases, everything else default.
    fn config(&self, count: usize) -> IndexConfig {
        IndexConfig::new(self.shards[..count].to_vec())
    }

    fn url_of(&self, shard_name: &str) -> Result<&str> {
        self.shards
            .iter()
            .find(|s| s.name == shard_name)
            .map(|s| s.url.as_str())
            .with_context(|| format!("no shard named {shard_name}"))
    }
}

/// SQLite always; MariaDB when reachable (see the module doc).
async fn backends(database_count: usize) -> Result<Vec<Backend>> {
    let mut backends = vec![sqlite_backend(database_count)?];
    if let Some(databases) =
        mysql_databases_or_skip("the index suite", "pocket_idx", database_count).await
    {
        backends.push(mysql_backend(databases));
    }
    Ok(backends)
}

fn sqlite_backend(database_count: usize) -> Result<Backend> {
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

fn mysql_backend(databases: MysqlDatabases) -> Backend {
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

fn random_key() -> Key {
    Key(rand::random())
}

fn entry(key: Key, cell_id: u32, bucket_id: u64) -> IndexEntry {
    IndexEntry {
        key,
        cell_id,
        bucket_id,
        length_bytes: 4 * 1024 * 1024 + u64::from(cell_id),
        created_unix_ms: 1_700_000_000_000 + i64::from(cell_id),
    }
}

fn zones(names: &[&str]) -> Vec<String> {
    names.iter().map(|z| z.to_string()).collect()
}

/// Corrupts the row of `key` behind the index's back: moves it to a vshard
/// its key does not hash to.
async fn store_under_wrong_vshard(backend: &Backend, index: &Index, key: &Key) -> Result<()> {
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

fn shard_map_of(index: &Index) -> Vec<Option<String>> {
    (0..index.vshard_count())
        .map(|v| index.shard_name_of_vshard(v).map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn insert_then_lookup_returns_the_row() -> Result<()> {
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        let e = entry(random_key(), 7, 42);
        assert_eq!(
            index.insert(&e, &[]).await?,
            InsertOutcome::Inserted,
            "{}",
            backend.label
        );
        assert_eq!(
            index.lookup(&e.key).await?,
            Some(e.clone()),
            "{}",
            backend.label
        );
        assert_eq!(index.count().await?, 1, "{}", backend.label);

        // Extremes of every field survive the round trip.
        let wide = IndexEntry {
            key: Key([0xFF; 32]),
            cell_id: u32::MAX,
            bucket_id: i64::MAX as u64,
            length_bytes: i64::MAX as u64,
            created_unix_ms: i64::MIN,
        };
        assert_eq!(
            index.insert(&wide, &[]).await?,
            InsertOutcome::Inserted,
            "{}",
            backend.label
        );
        assert_eq!(
            index.lookup(&wide.key).await?,
            Some(wide),
            "{}",
            backend.label
        );
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn second_insert_is_already_present_and_changes_nothing() -> Result<()> {
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        let first = entry(random_key(), 1, 10);
        let second = IndexEntry {
            cell_id: 2,
            bucket_id: 20,
            length_bytes: 1,
            created_unix_ms: 5,
            ..first.clone()
        };
        assert_eq!(
            index.insert(&first, &zones(&["east"])).await?,
            InsertOutcome::Inserted
        );
        assert_eq!(
            index.insert(&second, &zones(&["east"])).await?,
            InsertOutcome::AlreadyPresent(first.clone()),
            "{}",
            backend.label
        );
        assert_eq!(
            index.lookup(&first.key).await?,
            Some(first),
            "{}",
            backend.label
        );
        assert_eq!(index.count().await?, 1, "{}", backend.label);
        assert_eq!(
            index.outbox_len().await?,
            1,
            "{}: no outbox row for a duplicate",
            backend.label
        );
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn lookup_of_absent_key_is_none() -> Result<()> {
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        index.insert(&entry(random_key(), 1, 1), &[]).await?;
        assert_eq!(
            index.lookup(&random_key()).await?,
            None,
            "{}",
            backend.label
        );
        assert_eq!(
            index.lookup_many(&[random_key()]).await?,
            vec![None],
            "{}",
            backend.label
        );
        assert_eq!(index.lookup_many(&[]).await?, vec![], "{}", backend.label);
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn lookup_many_preserves_order_across_shards_and_batches() -> Result<()> {
    // ~650 keys per shard: every shard needs more than one IN (...) batch.
    const KEY_COUNT: usize = 1300;
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        let keys: Vec<Key> = (0..KEY_COUNT).map(|_| random_key()).collect();
        let mut per_shard: HashMap<&str, usize> = HashMap::new();
        for key in &keys {
            *per_shard.entry(index.shard_name_of(key)).or_default() += 1;
        }
        assert_eq!(
            per_shard.len(),
            2,
            "{}: keys must span both shards",
            backend.label
        );
        assert!(
            per_shard.values().all(|&n| n > LOOKUP_BATCH_MAX_KEYS),
            "{}: every shard must need two batches: {per_shard:?}",
            backend.label
        );

        let mut expected = Vec::with_capacity(KEY_COUNT + 2);
        for (i, key) in keys.iter().enumerate() {
            if i % 3 == 0 {
                let e = entry(*key, i as u32, i as u64);
                index.insert(&e, &[]).await?;
                expected.push(Some(e));
            } else {
                expected.push(None);
            }
        }
        // Repeated keys are answered at every position they appear.
        let mut query = keys.clone();
        query.push(keys[0]);
        query.push(keys[1]);
        expected.push(expected[0].clone());
        expected.push(None);

        let found = index.lookup_many(&query).await?;
        assert_eq!(found.len(), query.len(), "{}", backend.label);
        assert_eq!(found, expected, "{}", backend.label);
        assert_eq!(
            index.count().await?,
            KEY_COUNT.div_ceil(3) as u64,
            "{}",
            backend.label
        );
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn outbox_rows_are_written_per_zone_only_on_insert() -> Result<()> {
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        let remote = zones(&["central", "east"]);
        let e = entry(random_key(), 1, 1);
        assert_eq!(index.insert(&e, &remote).await?, InsertOutcome::Inserted);
        assert_eq!(
            index.outbox_len().await?,
            2,
            "{}: one row per zone",
            backend.label
        );

        assert!(matches!(
            index.insert(&e, &remote).await?,
            InsertOutcome::AlreadyPresent(_)
        ));
        assert_eq!(
            index.outbox_len().await?,
            2,
            "{}: none for a duplicate",
            backend.label
        );

        index.insert(&entry(random_key(), 2, 2), &[]).await?;
        assert_eq!(
            index.outbox_len().await?,
            2,
            "{}: none without zones",
            backend.label
        );

        index
            .insert(&entry(random_key(), 3, 3), &zones(&["west"]))
            .await?;
        assert_eq!(index.outbox_len().await?, 3, "{}", backend.label);

        // A bad zone name fails the insert before anything is written.
        let rejected = entry(random_key(), 4, 4);
        let too_long = "z".repeat(65);
        let err = index
            .insert(&rejected, &zones(&["east", &too_long]))
            .await
            .expect_err("65-byte zone");
        assert!(
            matches!(err, IndexError::BadZoneName { .. }),
            "{}: {err}",
            backend.label
        );
        assert_eq!(
            index.lookup(&rejected.key).await?,
            None,
            "{}",
            backend.label
        );
        assert_eq!(index.outbox_len().await?, 3, "{}", backend.label);
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn out_of_range_values_are_refused_not_clamped() -> Result<()> {
    for backend in backends(1).await? {
        let index = Index::open(&backend.config(1)).await?;
        let huge = IndexEntry {
            bucket_id: u64::MAX,
            ..entry(random_key(), 1, 1)
        };
        let err = index
            .insert(&huge, &[])
            .await
            .expect_err("bucket_id > i64::MAX");
        assert!(
            matches!(
                err,
                IndexError::ValueOutOfRange {
                    field: "bucket_id",
                    ..
                }
            ),
            "{}: {err}",
            backend.label
        );
        assert_eq!(index.count().await?, 0, "{}", backend.label);
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn reopen_sees_the_data_and_the_same_shard_map() -> Result<()> {
    for backend in backends(3).await? {
        let two = backend.config(2);
        let index = Index::open(&two).await?;
        let map = shard_map_of(&index);
        assert_eq!(map.len(), 256, "{}", backend.label);
        for (vshard, name) in map.iter().enumerate() {
            let expected = format!("s{}", vshard % 2);
            assert_eq!(
                name.as_deref(),
                Some(expected.as_str()),
                "{}: round-robin",
                backend.label
            );
        }
        let entries: Vec<IndexEntry> = (0..20)
            .map(|i| entry(random_key(), i, u64::from(i)))
            .collect();
        for e in &entries {
            index.insert(e, &zones(&["east"])).await?;
        }
        index.close().await;

        let reopened = Index::open(&two).await?;
        assert_eq!(shard_map_of(&reopened), map, "{}", backend.label);
        for e in &entries {
            assert_eq!(
                reopened.lookup(&e.key).await?,
                Some(e.clone()),
                "{}",
                backend.label
            );
        }
        assert_eq!(reopened.outbox_len().await?, 20, "{}", backend.label);
        reopened.close().await;

        // A database added to the config later gets no vshards until an
        // operator moves some: the stored map wins over round-robin.
        let three = backend.config(3);
        let grown = Index::open(&three).await?;
        assert_eq!(shard_map_of(&grown), map, "{}", backend.label);
        assert_eq!(grown.count().await?, 20, "{}", backend.label);
        grown.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn mariadb_scheme_is_mysql() -> Result<()> {
    for backend in backends(1).await? {
        if backend.label != "mariadb" {
            continue;
        }
        let mut cfg = backend.config(1);
        cfg.shards[0].url = cfg.shards[0].url.replacen("mysql:", "mariadb:", 1);
        let index = Index::open(&cfg).await?;
        let e = entry(random_key(), 1, 1);
        assert_eq!(index.insert(&e, &[]).await?, InsertOutcome::Inserted);
        assert_eq!(index.lookup(&e.key).await?, Some(e));
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn reopen_with_other_vshard_count_is_refused() -> Result<()> {
    for backend in backends(2).await? {
        let cfg = backend.config(2);
        Index::open(&cfg).await?.close().await;
        let other = IndexConfig {
            vshard_count: 128,
            ..cfg.clone()
        };
        let err = Index::open(&other).await.expect_err("vshard_count changed");
        assert!(
            matches!(
                err,
                IndexError::VshardCountMismatch {
                    stored: 256,
                    configured: 128
                }
            ),
            "{}: {err}",
            backend.label
        );
        assert!(err.to_string().contains("256"), "{}: {err}", backend.label);
        // The refused open changed nothing.
        Index::open(&cfg).await?.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn miswired_configs_are_refused() -> Result<()> {
    for backend in backends(2).await? {
        let cfg = backend.config(2);
        Index::open(&cfg).await?.close().await;

        // The map names s1, which this config lacks.
        let only_first = backend.config(1);
        let err = Index::open(&only_first).await.expect_err("s1 missing");
        assert!(
            matches!(&err, IndexError::UnknownShard { name, .. } if name == "s1"),
            "{}: {err}",
            backend.label
        );

        // Reordered: s1 would become the directory.
        let reordered = IndexConfig::new(vec![cfg.shards[1].clone(), cfg.shards[0].clone()]);
        let err = Index::open(&reordered).await.expect_err("reordered");
        assert!(
            matches!(
                err,
                IndexError::ShardIdentityMismatch {
                    field: "directory_shard",
                    ..
                }
            ),
            "{}: {err}",
            backend.label
        );

        // Swapped URLs: the database created as s0 is now called s1.
        let swapped = IndexConfig::new(vec![
            ShardConfig {
                name: "s0".into(),
                url: cfg.shards[1].url.clone(),
            },
            ShardConfig {
                name: "s1".into(),
                url: cfg.shards[0].url.clone(),
            },
        ]);
        let err = Index::open(&swapped).await.expect_err("swapped");
        assert!(
            matches!(
                err,
                IndexError::ShardIdentityMismatch {
                    field: "shard_name",
                    ..
                }
            ),
            "{}: {err}",
            backend.label
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_of_one_key_have_one_winner() -> Result<()> {
    const WRITERS: u32 = 16;
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        let key = random_key();
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let index = index.clone();
            tasks.spawn(async move {
                let mine = entry(key, writer, u64::from(writer));
                let outcome = index.insert(&mine, &zones(&["east"])).await;
                (mine, outcome)
            });
        }
        let mut winners = Vec::new();
        let mut seen_by_losers = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (mine, outcome) = joined.context("insert task panicked")?;
            match outcome? {
                InsertOutcome::Inserted => winners.push(mine),
                InsertOutcome::AlreadyPresent(stored) => seen_by_losers.push(stored),
            }
        }
        assert_eq!(winners.len(), 1, "{}: exactly one Inserted", backend.label);
        assert_eq!(
            seen_by_losers.len(),
            WRITERS as usize - 1,
            "{}",
            backend.label
        );
        let winner = &winners[0];
        assert!(
            seen_by_losers.iter().all(|s| s == winner),
            "{}: losers see the winner",
            backend.label
        );
        assert_eq!(
            index.lookup(&key).await?.as_ref(),
            Some(winner),
            "{}",
            backend.label
        );
        assert_eq!(index.outbox_len().await?, 1, "{}", backend.label);
        index.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_row_under_the_wrong_vshard_is_reported_corrupt() -> Result<()> {
    for backend in backends(2).await? {
        let index = Index::open(&backend.config(2)).await?;
        let e = entry(random_key(), 1, 1);
        index.insert(&e, &[]).await?;
        store_under_wrong_vshard(&backend, &index, &e.key).await?;

        let err = index.lookup(&e.key).await.expect_err("corrupt row");
        assert!(
            matches!(err, IndexError::CorruptRow { .. }),
            "{}: {err}",
            backend.label
        );
        let err = index.lookup_many(&[e.key]).await.expect_err("corrupt row");
        assert!(
            matches!(err, IndexError::CorruptRow { .. }),
            "{}: {err}",
            backend.label
        );
        index.close().await;
    }
    Ok(())
}

/// SQLite commits concurrent inserts of a shard together: a row that fails
/// (here: the key's existing row is corrupt) must fail only its own caller,
/// and every other row of its batch must still be committed, outbox included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_insert_among_concurrent_ones_fails_alone() -> Result<()> {
    const WRITERS: u32 = 48;
    for backend in backends(1).await? {
        let index = Index::open(&backend.config(1)).await?;
        let bad = entry(random_key(), 1, 1);
        index.insert(&bad, &[]).await?;
        store_under_wrong_vshard(&backend, &index, &bad.key).await?;

        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..WRITERS {
            let index = index.clone();
            // One writer in the middle re-inserts the corrupt key.
            let mine = if writer == WRITERS / 2 {
                bad.clone()
            } else {
                entry(random_key(), writer, u64::from(writer))
            };
            tasks.spawn(async move {
                let outcome = index.insert(&mine, &zones(&["east", "west"])).await;
                (mine, outcome)
            });
        }
        let mut inserted = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (mine, outcome) = joined.context("insert task panicked")?;
            if mine.key == bad.key {
                let err = outcome.expect_err("the corrupt row's insert fails");
                assert!(
                    matches!(err, IndexError::CorruptRow { .. }),
                    "{}: {err}",
                    backend.label
                );
            } else {
                assert_eq!(outcome?, InsertOutcome::Inserted, "{}", backend.label);
                inserted.push(mine);
            }
        }
        assert_eq!(inserted.len(), WRITERS as usize - 1, "{}", backend.label);
        let keys: Vec<Key> = inserted.iter().map(|e| e.key).collect();
        let found = index.lookup_many(&keys).await?;
        for (mine, found) in inserted.iter().zip(found) {
            assert_eq!(found.as_ref(), Some(mine), "{}", backend.label);
        }
        assert_eq!(
            index.outbox_len().await?,
            2 * (WRITERS as u64 - 1),
            "{}: two outbox rows per new row",
            backend.label
        );
        index.close().await;
    }
    Ok(())
}

/// Concurrent lookups of one shard: on SQLite they share queries (the
/// lookup batcher). Every caller gets its own key's row or `None`, callers
/// of one key all get it, and a corrupt row fails only the callers of its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lookups_each_get_their_own_answer() -> Result<()> {
    const PRESENT: u32 = 40;
    for backend in backends(1).await? {
        let index = Index::open(&backend.config(1)).await?;
        let mut present = Vec::new();
        for n in 0..PRESENT {
            let e = entry(random_key(), n, u64::from(n));
            index.insert(&e, &[]).await?;
            present.push(e);
        }
        let bad = present.pop().context("a row to corrupt")?;
        store_under_wrong_vshard(&backend, &index, &bad.key).await?;

        let mut tasks = tokio::task::JoinSet::new();
        // Each present key twice, 20 absent keys, the corrupt key three times.
        let mut asks: Vec<(Key, Option<IndexEntry>)> = Vec::new();
        for e in present.iter().chain(present.iter()) {
            asks.push((e.key, Some(e.clone())));
        }
        asks.extend((0..20).map(|_| (random_key(), None)));
        for _ in 0..3 {
            asks.push((bad.key, None));
        }
        for (key, expected) in asks {
            let index = index.clone();
            tasks.spawn(async move { (key, expected, index.lookup(&key).await) });
        }
        let mut answered = 0;
        while let Some(joined) = tasks.join_next().await {
            let (key, expected, result) = joined.context("lookup task panicked")?;
            if key == bad.key {
                let err = result.expect_err("the corrupt row's lookup fails");
                assert!(matches!(err, IndexError::CorruptRow { .. }), "{}: {err}", backend.label);
            } else {
                assert_eq!(result?, expected, "{}: lookup of {key}", backend.label);
            }
            answered += 1;
        }
        assert_eq!(answered, 2 * (PRESENT as usize - 1) + 20 + 3, "{}", backend.label);
        index.close().await;
    }
    Ok(())
}

/// Inserts without outbox zones (on SQLite: one statement, no explicit
/// transaction): one winner per key among concurrent writers, the others see
/// its row, and rows of other keys in the same batches are inserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_without_zones_have_one_winner_per_key() -> Result<()> {
    const KEYS: usize = 8;
    const WRITERS_PER_KEY: u32 = 6;
    for backend in backends(1).await? {
        let index = Index::open(&backend.config(1)).await?;
        let keys: Vec<Key> = (0..KEYS).map(|_| random_key()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..WRITERS_PER_KEY {
            for key in &keys {
                let index = index.clone();
                let mine = entry(*key, writer, u64::from(writer));
                tasks.spawn(async move {
                    let outcome = index.insert(&mine, &[]).await;
                    (mine, outcome)
                });
            }
        }
        let mut winners: HashMap<Key, IndexEntry> = HashMap::new();
        let mut seen_by_losers: Vec<IndexEntry> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (mine, outcome) = joined.context("insert task panicked")?;
            match outcome? {
                InsertOutcome::Inserted => {
                    let earlier = winners.insert(mine.key, mine);
                    assert!(earlier.is_none(), "{}: two winners for one key", backend.label);
                }
                InsertOutcome::AlreadyPresent(stored) => seen_by_losers.push(stored),
            }
        }
        assert_eq!(winners.len(), KEYS, "{}: one winner per key", backend.label);
        assert_eq!(seen_by_losers.len(), KEYS * (WRITERS_PER_KEY as usize - 1), "{}", backend.label);
        for stored in &seen_by_losers {
            assert_eq!(Some(stored), winners.get(&stored.key), "{}: losers see the winner", backend.label);
        }
        for (key, winner) in &winners {
            assert_eq!(index.lookup(key).await?.as_ref(), Some(winner), "{}", backend.label);
        }
        assert_eq!(index.count().await?, KEYS as u64, "{}", backend.label);
        assert_eq!(index.outbox_len().await?, 0, "{}", backend.label);
        index.close().await;
    }
    Ok(())
}

/// After `close`, reads and writes fail with an error instead of waiting,
/// on clones too, and nothing is written.
#[tokio::test]
async fn a_closed_index_refuses_reads_and_writes() -> Result<()> {
    for backend in backends(1).await? {
        let index = Index::open(&backend.config(1)).await?;
        let kept = entry(random_key(), 1, 1);
        index.insert(&kept, &[]).await?;
        let clone = index.clone();
        index.close().await;
        let late = entry(random_key(), 2, 2);
        let insert = tokio::time::timeout(Duration::from_secs(10), clone.insert(&late, &[])).await;
        assert!(matches!(insert, Ok(Err(_))), "{}: insert after close: {insert:?}", backend.label);
        let lookup = tokio::time::timeout(Duration::from_secs(10), clone.lookup(&kept.key)).await;
        assert!(matches!(lookup, Ok(Err(_))), "{}: lookup after close: {lookup:?}", backend.label);

        let reopened = Index::open(&backend.config(1)).await?;
        assert_eq!(reopened.lookup(&kept.key).await?, Some(kept.clone()), "{}", backend.label);
        assert_eq!(reopened.lookup(&late.key).await?, None, "{}: nothing written after close", backend.label);
        reopened.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn vshard_of_agrees_with_the_documented_formula() -> Result<()> {
    for backend in backends(1).await? {
        let cfg = IndexConfig {
            vshard_count: 1000,
            ..backend.config(1)
        };
        let index = Index::open(&cfg).await?;
        for _ in 0..1000 {
            let key = random_key();
            let expected = u32::from(u16::from_be_bytes([key.0[0], key.0[1]])) % 1000;
            assert_eq!(index.vshard_of(&key), expected, "{}", backend.label);
            assert_eq!(pocket_index::vshard_of_key(&key, 1000), expected);
        }
        index.close().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Config errors: refused before any database is touched.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unknown_url_scheme_is_refused() -> Result<()> {
    let cfg = IndexConfig::new(vec![ShardConfig {
        name: "s0".into(),
        url: "postgres://user:secret@127.0.0.1/pocket".into(),
    }]);
    match Index::open(&cfg).await {
        Err(IndexError::UnknownScheme { shard, scheme }) => {
            assert_eq!(shard, "s0");
            assert_eq!(scheme, "postgres");
        }
        Err(other) => bail!("expected UnknownScheme, got {other}"),
        Ok(_) => bail!("a postgres URL opened"),
    }
    Ok(())
}

#[tokio::test]
async fn invalid_configs_are_refused() -> Result<()> {
    let shard = |name: &str| ShardConfig {
        name: name.into(),
        url: "sqlite::memory:".into(),
    };
    let err = Index::open(&IndexConfig::new(vec![]))
        .await
        .expect_err("no shards");
    assert!(matches!(err, IndexError::NoShards), "{err}");

    let err = Index::open(&IndexConfig::new(vec![shard("a"), shard("a")]))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, IndexError::DuplicateShard { .. }), "{err}");

    let err = Index::open(&IndexConfig::new(vec![shard(&"n".repeat(65))]))
        .await
        .expect_err("long name");
    assert!(matches!(err, IndexError::BadShardName { .. }), "{err}");

    for vshard_count in [0, (1 << 16) + 1] {
        let cfg = IndexConfig {
            vshard_count,
            ..IndexConfig::new(vec![shard("a")])
        };
        let err = Index::open(&cfg).await.expect_err("bad vshard_count");
        assert!(matches!(err, IndexError::BadVshardCount { .. }), "{err}");
    }

    let cfg = IndexConfig {
        max_connections_per_shard: Some(0),
        ..IndexConfig::new(vec![shard("a")])
    };
    let err = Index::open(&cfg).await.expect_err("zero pool");
    assert!(matches!(err, IndexError::ZeroPoolSize), "{err}");
    Ok(())
}

#[test]
fn config_defaults_fill_missing_fields() -> Result<()> {
    let cfg: IndexConfig = toml::from_str(
        r#"
        [[shards]]
        name = "s0"
        url = "sqlite:///var/lib/pocket/index-0.db?mode=rwc"
        "#,
    )?;
    assert_eq!(cfg, IndexConfig::new(cfg.shards.clone()));
    assert_eq!(cfg.vshard_count, pocket_index::DEFAULT_VSHARD_COUNT);
    assert_eq!(cfg.max_connections_per_shard, None);
    assert_eq!(cfg.connect_timeout_ms, 5_000);

    let typo = toml::from_str::<IndexConfig>("vshard_cuont = 3\nshards = []");
    assert!(typo.is_err(), "unknown fields are refused");
    Ok(())
}
