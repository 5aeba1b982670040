//! The index under concurrent callers, with corrupt rows, and closed, on the
//! same backends as `index_suite.rs`: SQLite files in a temp dir, and
//! MariaDB/MySQL (`POCKET_TEST_MYSQL_URL`) when reachable, which `CI=true`
//! requires.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use pocket_index::{Index, IndexConfig, IndexEntry, IndexError, InsertOutcome};
use pocket_types::Key;
use common::{backends, entry, random_key, store_under_wrong_vshard, zones};

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

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
