//! Whole-extent operations of the OSD store (erasure coding): a sealed extent
//! copied byte for byte to another store, parity shards, verification, range
//! reads, deletion, and what survives a restart.

mod common;

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use pocket_osd::{Store, StoreError, WholeKind, PARITY_DIR, TRASH_DIR};
use common::{blob, opts, MIB};
use pocket_proto::{ExtentId, Key};




fn open(dir: &std::path::Path) -> Result<Store> {
    Ok(Store::open(&[dir.to_path_buf()], opts())?)
}

/// A sealed extent `id` with `count` records in `store`; returns its records.
async fn sealed(store: &Store, id: ExtentId, count: u64) -> Result<Vec<(Key, Bytes)>> {
    store.create_extent(id, 8 * MIB)?;
    let mut records = Vec::new();
    for seed in 0..count {
        let (key, data) = blob(id * 1000 + seed, 1000 + (seed as usize * 7919) % 60_000);
        store.append(id, key, data.clone()).await?;
        records.push((key, data));
    }
    store.seal(id).await?;
    Ok(records)
}

fn whole_bytes(store: &Store, id: ExtentId) -> Result<Bytes> {
    let source = store.range_source(id)?;
    Ok(source.read(0, source.size_bytes() as usize)?)
}

fn write_whole(store: &Store, id: ExtentId, kind: WholeKind, bytes: &[u8], hash: [u8; 32]) -> Result<bool, StoreError> {
    let mut write = store.begin_whole_write(id, kind, bytes.len() as u64)?;
    for chunk in bytes.chunks(100_000) {
        write.write(chunk)?;
    }
    store.finish_whole_write(write, hash)
}

#[tokio::test]
async fn a_sealed_extent_copied_whole_serves_every_record_and_survives_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b): (PathBuf, PathBuf) = (tmp.path().join("a"), tmp.path().join("b"));
    let source = open(&a)?;
    let records = sealed(&source, 7, 40).await?;
    let info = source.verify_whole(7)?;
    ensure!(info.kind == WholeKind::Data && info.record_count == 40);
    let bytes = whole_bytes(&source, 7)?;
    ensure!(*blake3::hash(&bytes).as_bytes() == info.blake3, "verify hashes the file");

    let target = open(&b)?;
    // Wrong hash: refused, nothing kept.
    let err = write_whole(&target, 7, WholeKind::Data, &bytes, [0; 32]).expect_err("wrong hash");
    ensure!(matches!(err, StoreError::WholeHashMismatch(7)), "{err}");
    ensure!(target.range_source(7).is_err(), "a refused write leaves no extent");
    // Short: refused.
    let err = write_whole(&target, 7, WholeKind::Data, &bytes[..bytes.len() - 1], info.blake3).expect_err("short");
    ensure!(matches!(err, StoreError::WholeHashMismatch(7) | StoreError::WholeLength { .. }), "{err}");
    // Right: stored, sealed, every record readable, and the same bytes again are "already present".
    ensure!(!write_whole(&target, 7, WholeKind::Data, &bytes, info.blake3)?);
    ensure!(write_whole(&target, 7, WholeKind::Data, &bytes, info.blake3)?, "idempotent");
    for (key, data) in &records {
        ensure!(target.read(7, key).await? == *data);
    }
    ensure!(target.verify_whole(7)? == info, "the copy verifies like its source");
    // Other bytes under the same id are a conflict.
    let mut other = bytes.to_vec();
    other[100] ^= 1;
    let err = write_whole(&target, 7, WholeKind::Data, &other, *blake3::hash(&other).as_bytes()).expect_err("conflict");
    ensure!(matches!(err, StoreError::ContentConflict(7)), "{err}");
    drop(target);
    let target = open(&b)?;
    for (key, data) in &records {
        ensure!(target.read(7, key).await? == *data, "after restart");
    }
    Ok(())
}

#[tokio::test]
async fn a_copy_whose_header_names_another_extent_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let source = open(&tmp.path().join("a"))?;
    sealed(&source, 7, 3).await?;
    let bytes = whole_bytes(&source, 7)?;
    let target = open(&tmp.path().join("b"))?;
    let err = write_whole(&target, 8, WholeKind::Data, &bytes, *blake3::hash(&bytes).as_bytes()).expect_err("id");
    ensure!(matches!(err, StoreError::InvalidWhole { extent: 8, .. }), "{err}");
    ensure!(target.range_source(8).is_err());
    Ok(())
}

#[tokio::test]
async fn parity_is_stored_verified_read_by_range_and_rehashed_after_lost_metadata() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("a");
    let store = open(&dir)?;
    let parity: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let hash = *blake3::hash(&parity).as_bytes();
    ensure!(!write_whole(&store, 99, WholeKind::Parity, &parity, hash)?);
    let info = store.verify_whole(99)?;
    ensure!(info.kind == WholeKind::Parity && info.size_bytes == parity.len() as u64 && info.blake3 == hash);
    let source = store.range_source(99)?;
    ensure!(source.read(1000, 5000)? == parity[1000..6000]);
    ensure!(source.read(299_999, 2).is_err(), "ranges past the end are refused");
    ensure!(store.create_extent(99, MIB).is_err(), "a parity id is not reused for an extent");
    drop(source);
    drop(store);
    // Lose the metadata: the parity file is rehashed at open.
    std::fs::remove_dir_all(dir.join("meta"))?;
    let store = open(&dir)?;
    ensure!(store.verify_whole(99)?.blake3 == hash);
    // A flipped byte is found by verification.
    let path = dir.join(PARITY_DIR).join("0000000000000063.par");
    let mut bytes = std::fs::read(&path).context("read parity")?;
    bytes[5] ^= 0xff;
    std::fs::write(&path, &bytes)?;
    drop(store);
    let store = open(&dir)?;
    ensure!(matches!(store.verify_whole(99), Err(StoreError::WholeHashMismatch(99))));
    Ok(())
}

#[tokio::test]
async fn delete_removes_sealed_and_parity_extents_for_good_and_refuses_open_ones() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("a");
    let store = open(&dir)?;
    sealed(&store, 5, 4).await?;
    store.create_extent(6, MIB)?;
    let parity = vec![7u8; 1000];
    write_whole(&store, 50, WholeKind::Parity, &parity, *blake3::hash(&parity).as_bytes())?;
    ensure!(matches!(store.delete_whole(6), Err(StoreError::NotSealed(6))), "open extents are not deleted");
    ensure!(store.delete_whole(5)?);
    ensure!(store.delete_whole(50)?);
    ensure!(!store.delete_whole(5)?, "idempotent");
    ensure!(store.range_source(5).is_err() && store.range_source(50).is_err());
    drop(store);
    let store = open(&dir)?;
    ensure!(store.extent_info(5)?.is_none(), "deleted extents stay deleted");
    ensure!(store.range_source(50).is_err());
    ensure!(store.extent_info(6)?.is_some());
    Ok(())
}

#[tokio::test]
async fn deleted_extents_wait_in_the_trash_for_the_delay_then_are_purged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("a");
    let store = open(&dir)?;
    sealed(&store, 5, 4).await?;
    let parity = vec![7u8; 1000];
    write_whole(&store, 50, WholeKind::Parity, &parity, *blake3::hash(&parity).as_bytes())?;
    let extent_bytes = store.extent_info(5)?.context("extent 5")?.size_bytes;
    ensure!(store.delete_whole(5)? && store.delete_whole(50)?);
    let trash = dir.join(TRASH_DIR);
    let files: Vec<String> = std::fs::read_dir(&trash)?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    ensure!(files.len() == 2, "both deleted files are in the trash: {files:?}");
    ensure!(files.iter().any(|f| f.starts_with(&pocket_format::extent_file_name(5))), "{files:?}");
    ensure!(std::fs::read_dir(dir.join("extents"))?.count() == 0, "nothing left among the extents");
    // Listing shows neither; the trash is not served.
    let (listed, more) = store.list_page(0, 10);
    ensure!(listed.is_empty() && !more, "{listed:?}");
    // Within the delay: kept.
    let now = pocket_proto::now_unix_ms();
    let kept = store.purge_trash(std::time::Duration::from_secs(3600), now);
    ensure!(kept.purged_files == 0 && kept.kept_files == 2 && kept.kept_bytes == extent_bytes + 1000, "{kept:?}");
    // Past it: purged.
    let purged = store.purge_trash(std::time::Duration::from_secs(3600), now + 3_600_001);
    ensure!(purged.purged_files == 2 && purged.purged_bytes == extent_bytes + 1000 && purged.kept_files == 0, "{purged:?}");
    ensure!(std::fs::read_dir(&trash)?.count() == 0);
    // A store reopened over a trash directory is not confused by it.
    store.create_extent(6, MIB)?;
    ensure!(store.delete_whole(6).is_err(), "an open extent is refused");
    drop(store);
    let store = open(&dir)?;
    ensure!(store.extent_info(6)?.is_some_and(|info| !info.sealed));
    Ok(())
}

#[tokio::test]
async fn extents_are_listed_in_pages_in_id_order() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = open(&tmp.path().join("a"))?;
    for id in [3, 9, 4] {
        store.create_extent(id, MIB)?;
    }
    sealed(&store, 7, 2).await?;
    let parity = vec![1u8; 100];
    write_whole(&store, 5, WholeKind::Parity, &parity, *blake3::hash(&parity).as_bytes())?;
    let (first, more) = store.list_page(0, 3);
    ensure!(first.iter().map(|e| e.id).collect::<Vec<_>>() == vec![3, 4, 5] && more, "{first:?}");
    ensure!(first[2].parity && first[2].sealed && first[2].size_bytes == 100 && !first[0].sealed);
    let (rest, more) = store.list_page(5, 3);
    ensure!(rest.iter().map(|e| e.id).collect::<Vec<_>>() == vec![7, 9] && !more, "{rest:?}");
    ensure!(rest[0].sealed && !rest[0].parity);
    Ok(())
}
