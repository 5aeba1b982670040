//! The index against real databases. Every test runs twice: on SQLite files in
//! a temp dir, and on MariaDB/MySQL (`POCKET_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`) in databases created for the test and
//! dropped after it. Without a reachable server the MariaDB half is skipped
//! with a message on stderr, except under `CI=true`, where it fails.
//! Concurrent callers, corrupt rows and closing are in `index_concurrency.rs`.

mod common;

use std::collections::HashMap;

use anyhow::{bail, Result};
use pocket_index::{
    Index, IndexConfig, IndexEntry, IndexError, InsertOutcome, ShardConfig, LOOKUP_BATCH_MAX_KEYS,
};
use pocket_types::Key;
use common::{backends, entry, random_key, shard_map_of, zones};

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
