//! Integration tests of the OSD storage engine on temporary disk directories:
//! the append/read/seal API, group commit, the page cache and shutdown.
//! Crash recovery is in `recovery.rs`.

mod common;

use std::fs;
use std::path::Path;

use anyhow::{ensure, Result};
use bytes::Bytes;
use pocket_format::{self as extent, EXTENT_HEADER_LEN, RECORD_HEADER_LEN, TRAILER_LEN};
use pocket_osd::{AppendOutcome, ExtentInfo, Store, StoreError, StoreOptions};
use common::{assert_open_file_ends_at, assert_readable, blob, disks, file_len, fill, info, opts, MIB};
use pocket_proto::{ExtentId, Key};


#[tokio::test]
async fn append_and_read_across_extents_and_disks() -> Result<()> {
    let d = disks(2)?;
    let store = d.open()?;
    for id in 1..=4 {
        store.create_extent(id, 4 * MIB)?;
    }
    // Placement: fewest extents first, so two per disk.
    let per_disk: Vec<u64> = store.disks().iter().map(|x| x.extent_count).collect();
    assert_eq!(per_disk, vec![2, 2]);
    assert_ne!(store.disks()[0].uuid, store.disks()[1].uuid);

    let mut all = Vec::new();
    for id in 1..=4 {
        let records = fill(&store, id, id * 100, 5, 1000 + id as usize).await?;
        // Records are laid out back to back after the header.
        let mut expected = EXTENT_HEADER_LEN as u64;
        for (_, data, offset) in &records {
            assert_eq!(*offset, expected);
            expected += (RECORD_HEADER_LEN + data.len()) as u64;
        }
        let i = info(&store, id)?;
        assert_eq!(i, ExtentInfo { id, sealed: false, size_bytes: expected, record_count: 5, max_size_bytes: 4 * MIB });
        assert_open_file_ends_at(&d.extent_path(id)?, expected)?;
        all.push((id, records));
    }
    for (id, records) in &all {
        assert_readable(&store, *id, records).await?;
    }
    // A key of another extent is not in this one.
    let other = all[1].1[0].0;
    assert!(!store.has(1, &other)?);
    assert!(matches!(store.read(1, &other).await, Err(StoreError::NotFound { extent: 1, .. })));
    assert!(matches!(store.read(99, &other).await, Err(StoreError::UnknownExtent(99))));
    assert!(matches!(store.append(99, other, Bytes::from_static(b"x")).await, Err(StoreError::UnknownExtent(99))));

    let listed: Vec<ExtentId> = store.list_extents().iter().map(|e| e.id).collect();
    assert_eq!(listed, vec![1, 2, 3, 4]);
    let used: u64 = store.list_extents().iter().map(|e| e.size_bytes).sum();
    assert_eq!(store.used_bytes(), used);
    assert!(store.capacity_bytes() > 0);
    // Both disks share one filesystem here: capacity counts it once.
    assert_eq!(store.capacity_bytes(), store.disks()[0].capacity_bytes);
    // The disk identity exists and survives a restart.
    let uuids: Vec<u128> = store.disks().iter().map(|x| x.uuid).collect();
    drop(store);
    let identity = fs::read_to_string(d.dirs[0].join("POCKET_DISK"))?;
    assert!(identity.starts_with("pocket-disk\nformat_version=1\nuuid="));
    let store = d.open()?;
    assert_eq!(store.disks().iter().map(|x| x.uuid).collect::<Vec<_>>(), uuids);
    Ok(())
}

/// A record that arrives in uneven chunks is stored as one record (one
/// vectored write of the chunks): read back whole, with the same bytes as
/// the contiguous blob, before and after a restart that must parse the
/// file, and at the offsets its neighbour expects.
#[tokio::test]
async fn a_chunked_record_is_written_as_one_record() -> Result<()> {
    let d = disks(1)?;
    let (key, data) = blob(7, 1024 * 1024 - 1000); // the tests' largest record: 1 MiB
    let mut collector = pocket_proto::BodyCollector::new(data.len() as u64);
    let mut at = 0;
    for size in [1usize, 100, 70_000, 1000, 200_000, 65_536].iter().cycle() {
        let end = (at + size).min(data.len());
        collector.push(data.slice(at..end)).map_err(|e| anyhow::anyhow!("{e}"))?;
        at = end;
        if at == data.len() {
            break;
        }
    }
    let body = collector.finish().map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(body.chunks().len() > 4, "the test needs a body of many chunks");
    let (after_key, after) = blob(8, 1000);
    {
        let store = d.open()?;
        store.create_extent(1, 8 * MIB)?;
        let offset = match store.append(1, key, body).await? {
            AppendOutcome::Appended { offset } => offset,
            other => anyhow::bail!("unexpected {other:?}"),
        };
        ensure!(offset == EXTENT_HEADER_LEN as u64);
        let next = match store.append(1, after_key, after.clone()).await? {
            AppendOutcome::Appended { offset } => offset,
            other => anyhow::bail!("unexpected {other:?}"),
        };
        ensure!(next == offset + (RECORD_HEADER_LEN + data.len()) as u64, "the next record follows at {next}");
        ensure!(store.read(1, &key).await? == data);
        store.shutdown();
    }
    // Recovery scans the file past the metadata: the record parses there too.
    d.delete_meta()?;
    let store = d.open()?;
    ensure!(store.read(1, &key).await? == data);
    ensure!(store.read(1, &after_key).await? == after);
    store.shutdown();
    Ok(())
}

/// Pages of `path` in `[from, to)` that are in the page cache (mincore(2)).
fn resident_pages(path: &Path, from: u64, to: u64) -> Result<usize> {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path)?;
    let len = file_len(path)? as usize;
    #[allow(unsafe_code)]
    // SAFETY: a read-only mapping of a file we opened; unmapped below.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    ensure!(map != libc::MAP_FAILED, "mmap failed");
    let mut vec = vec![0u8; len.div_ceil(4096)];
    #[allow(unsafe_code)]
    // SAFETY: `vec` has one byte per page of the mapping, as mincore(2) needs.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    #[allow(unsafe_code)]
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(map, len) };
    ensure!(rc == 0, "mincore failed");
    Ok(vec[(from / 4096) as usize..(to / 4096) as usize].iter().filter(|b| *b & 1 == 1).count())
}

#[tokio::test]
async fn written_pages_behind_the_window_leave_the_page_cache_and_read_back() -> Result<()> {
    let d = disks(1)?;
    let window = 4 * MIB;
    let store = Store::open(&d.dirs, StoreOptions { page_cache_window_bytes: Some(window), direct_io: false, ..opts() })?;
    store.create_extent(1, 64 * MIB)?;
    // 16 one-MiB records, one group commit each: the file ends near 16 MiB.
    let records = fill(&store, 1, 0, 16, MIB as usize).await?;
    let path = d.extent_path(1)?;
    let end = file_len(&path)?;
    // Everything more than the window (plus one drop step) behind the end
    // was dropped; the tail the window keeps is still cached.
    let dropped_up_to = end - window - 4 * MIB;
    assert_eq!(resident_pages(&path, 0, dropped_up_to)?, 0, "pages behind the window are cached");
    let tail = resident_pages(&path, end - window, end & !4095)?;
    assert!(tail as u64 >= (window - MIB) / 4096, "only {tail} pages of the window are cached");
    // Dropping pages loses nothing: every record reads back, checked.
    assert_readable(&store, 1, &records).await?;
    Ok(())
}

/// Direct appends (ADR 11) bypass the page cache: nothing they wrote is
/// cached, every record reads back; after a restart the zero padding is
/// cut and appends go on where the records end; a seal ends the file at
/// its footer.
#[tokio::test]
async fn direct_appends_bypass_the_page_cache_and_survive_a_restart() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 64 * MIB)?;
    let records = fill(&store, 1, 0, 8, MIB as usize - 5).await?;
    let end = info(&store, 1)?.size_bytes;
    let path = d.extent_path(1)?;
    // The first page holds the extent header, written at creation.
    assert_eq!(resident_pages(&path, 4096, end & !4095)?, 0, "direct appends left pages in the page cache");
    assert_open_file_ends_at(&path, end)?;
    assert_readable(&store, 1, &records).await?;
    store.shutdown();
    drop(store);

    let store = d.open()?;
    assert_eq!(file_len(&path)?, end, "recovery cuts the padding after the last record");
    assert_readable(&store, 1, &records).await?;
    let more = fill(&store, 1, 100, 3, 5000).await?;
    assert_eq!(more[0].2, end, "appends go on at the end of the records");
    assert_readable(&store, 1, &more).await?;
    let sealed = store.seal(1).await?;
    assert_eq!(file_len(&path)?, sealed.size_bytes, "a sealed extent ends at its footer");
    store.shutdown();
    drop(store);
    let store = d.open()?;
    assert_readable(&store, 1, &records).await?;
    assert_readable(&store, 1, &more).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_land_and_are_readable() -> Result<()> {
    let d = disks(2)?;
    let store = d.open()?;
    for id in 1..=3 {
        store.create_extent(id, 64 * MIB)?;
    }
    let mut tasks = Vec::new();
    for seed in 0..300u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = 1 + seed % 3;
            let (key, data) = blob(seed, 1 + (seed as usize * 37) % 5000);
            let outcome = store.append(id, key, data.clone()).await?;
            anyhow::Ok((id, key, data, outcome))
        }));
    }
    let mut by_extent: std::collections::HashMap<ExtentId, Vec<(Key, Bytes, u64)>> = Default::default();
    for t in tasks {
        let (id, key, data, outcome) = t.await??;
        let AppendOutcome::Appended { offset } = outcome else { anyhow::bail!("unexpected {outcome:?}") };
        by_extent.entry(id).or_default().push((key, data, offset));
    }
    for (id, mut records) in by_extent {
        assert_eq!(records.len(), 100);
        // Offsets tile the extent: no two records overlap, no gaps.
        records.sort_by_key(|r| r.2);
        let mut expected = EXTENT_HEADER_LEN as u64;
        for (_, data, offset) in &records {
            assert_eq!(*offset, expected);
            expected += (RECORD_HEADER_LEN + data.len()) as u64;
        }
        assert_eq!(info(&store, id)?.record_count, 100);
        assert_eq!(info(&store, id)?.size_bytes, expected);
        assert_readable(&store, id, &records).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_already_in_the_extent_is_not_written_again() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let (key, data) = blob(1, 3000);
    let first = store.append(1, key, data.clone()).await?;
    assert_eq!(first, AppendOutcome::Appended { offset: EXTENT_HEADER_LEN as u64 });
    let size = info(&store, 1)?.size_bytes;
    let again = store.append(1, key, data.clone()).await?;
    assert_eq!(again, AppendOutcome::AlreadyPresent { offset: EXTENT_HEADER_LEN as u64 });
    assert_eq!(info(&store, 1)?.size_bytes, size);

    // Many concurrent appends of one new key: exactly one writes it.
    let (key2, data2) = blob(2, 3000);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let data2 = data2.clone();
            tokio::spawn(async move { store.append(1, key2, data2).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await??);
    }
    let appended: Vec<_> = outcomes.iter().filter(|o| matches!(o, AppendOutcome::Appended { .. })).collect();
    assert_eq!(appended.len(), 1);
    let offset = appended[0].offset();
    assert!(outcomes.iter().all(|o| o.offset() == offset));
    assert_eq!(info(&store, 1)?.record_count, 2);
    assert_eq!(info(&store, 1)?.size_bytes, size + (RECORD_HEADER_LEN + 3000) as u64);
    assert_eq!(store.read(1, &key2).await?, data2);
    Ok(())
}

#[tokio::test]
async fn full_extents_and_oversized_blobs_are_refused() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    let record = (RECORD_HEADER_LEN + 100) as u64;
    let max = EXTENT_HEADER_LEN as u64 + 2 * record;
    store.create_extent(1, max)?;
    fill(&store, 1, 0, 2, 100).await?;
    assert_eq!(info(&store, 1)?.size_bytes, max);
    let (key, data) = blob(9, 100);
    match store.append(1, key, data).await {
        Err(StoreError::ExtentFull { extent: 1, size_bytes, record_bytes, max_size_bytes }) => {
            assert_eq!((size_bytes, record_bytes, max_size_bytes), (max, record, max));
        }
        other => anyhow::bail!("expected ExtentFull, got {other:?}"),
    }
    // Even an empty blob no longer fits.
    let (key, data) = blob(10, 0);
    assert!(matches!(store.append(1, key, data).await, Err(StoreError::ExtentFull { .. })));
    assert_open_file_ends_at(&d.extent_path(1)?, max)?;

    store.create_extent(2, 16 * MIB)?;
    let (key, data) = blob(11, MIB as usize + 1);
    assert!(matches!(
        store.append(2, key, data).await,
        Err(StoreError::TooLarge { len_bytes, max_bytes }) if len_bytes == MIB + 1 && max_bytes == MIB
    ));
    let (key, data) = blob(12, MIB as usize);
    assert!(matches!(store.append(2, key, data).await?, AppendOutcome::Appended { .. }));
    Ok(())
}

#[tokio::test]
async fn create_extent_is_idempotent_and_validates() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(5, MIB)?;
    let records = fill(&store, 5, 0, 1, 10).await?;
    store.create_extent(5, MIB)?;
    assert_eq!(info(&store, 5)?.record_count, 1, "re-creating must not reset the extent");
    assert_readable(&store, 5, &records).await?;
    assert!(matches!(store.create_extent(5, 2 * MIB), Err(StoreError::ExtentConflict { extent: 5, .. })));
    assert!(matches!(store.create_extent(6, 10), Err(StoreError::BadMaxSize { extent: 6, .. })));
    assert_eq!(store.extent_info(6)?, None);
    let header = fs::read(d.extent_path(5)?)?;
    let decoded = extent::ExtentHeader::decode(&header)?;
    assert_eq!((decoded.extent_id, decoded.max_size_bytes), (5, MIB));
    Ok(())
}

#[tokio::test]
async fn seal_writes_a_footer_and_refuses_appends() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let records = fill(&store, 1, 0, 3, 777).await?;
    let records_end = info(&store, 1)?.size_bytes;
    let sealed = store.seal(1).await?;
    assert_eq!(sealed.record_count, 3);
    assert_eq!(sealed.size_bytes, records_end + 3 * extent::INDEX_ENTRY_LEN as u64 + TRAILER_LEN as u64);
    let path = d.extent_path(1)?;
    assert_eq!(file_len(&path)?, sealed.size_bytes);
    assert_eq!(store.seal(1).await?, sealed, "seal is idempotent");
    let (key, data) = blob(50, 10);
    assert!(matches!(store.append(1, key, data).await, Err(StoreError::Sealed(1))));
    // A key already present is still refused as sealed, not reported present: the extent is closed.
    assert!(matches!(store.append(1, records[0].0, records[0].1.clone()).await, Err(StoreError::Sealed(1))));
    assert_readable(&store, 1, &records).await?;
    let i = info(&store, 1)?;
    assert!(i.sealed);
    assert_eq!(i.size_bytes, sealed.size_bytes);

    // The footer, from the file's last bytes, lists exactly the records.
    let bytes = fs::read(&path)?;
    let trailer = extent::Trailer::decode(&bytes)?;
    assert_eq!(trailer.index_offset, records_end);
    let (_, entries) = extent::decode_footer(&bytes[records_end as usize..])?;
    let expected: Vec<(Key, u64, u64)> = records.iter().map(|(k, d, o)| (*k, *o, d.len() as u64)).collect();
    let got: Vec<(Key, u64, u64)> = entries.iter().map(|e| (e.key, e.offset, e.data_len)).collect();
    assert_eq!(got, expected);

    // An empty extent seals too.
    store.create_extent(2, MIB)?;
    let empty = store.seal(2).await?;
    assert_eq!(empty.record_count, 0);
    assert_eq!(empty.size_bytes, (EXTENT_HEADER_LEN + TRAILER_LEN) as u64);

    // Sealed survives a restart.
    drop(store);
    let store = d.open()?;
    assert_eq!(info(&store, 1)?, i);
    assert!(info(&store, 2)?.sealed);
    assert_readable(&store, 1, &records).await?;
    let (key, data) = blob(51, 10);
    assert!(matches!(store.append(1, key, data).await, Err(StoreError::Sealed(1))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seal_orders_after_queued_appends() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 16 * MIB)?;
    let tasks: Vec<_> = (0..40u64)
        .map(|seed| {
            let store = store.clone();
            tokio::spawn(async move {
                let (key, data) = blob(seed, 20_000);
                (key, store.append(1, key, data).await)
            })
        })
        .collect();
    let sealed = store.seal(1).await?;
    let mut appended = Vec::new();
    for t in tasks {
        let (key, result) = t.await?;
        match result {
            Ok(AppendOutcome::Appended { offset }) => appended.push((key, offset)),
            Err(StoreError::Sealed(1)) => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    // Every acknowledged append is in the footer; nothing else is.
    assert_eq!(sealed.record_count, appended.len() as u64);
    let bytes = fs::read(d.extent_path(1)?)?;
    let trailer = extent::Trailer::decode(&bytes)?;
    let (_, entries) = extent::decode_footer(&bytes[trailer.index_offset as usize..])?;
    appended.sort_by_key(|a| a.1);
    assert_eq!(entries.iter().map(|e| (e.key, e.offset)).collect::<Vec<_>>(), appended);
    Ok(())
}

#[tokio::test]
async fn restart_keeps_everything_and_appends_continue() -> Result<()> {
    let d = disks(2)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    store.create_extent(2, 4 * MIB)?;
    let mut r1 = fill(&store, 1, 0, 4, 5000).await?;
    let r2 = fill(&store, 2, 100, 4, 5000).await?;
    let before = store.list_extents();
    drop(store);

    let store = d.open()?;
    assert_eq!(store.list_extents(), before);
    assert_readable(&store, 1, &r1).await?;
    assert_readable(&store, 2, &r2).await?;
    let more = fill(&store, 1, 200, 2, 5000).await?;
    assert_eq!(more[0].2, before[0].size_bytes, "appends continue at the old end");
    r1.extend(more);
    drop(store);
    let store = d.open()?;
    assert_readable(&store, 1, &r1).await?;
    assert_eq!(info(&store, 1)?.record_count, 6);
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_then_refuses_writes() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, MIB)?;
    let records = fill(&store, 1, 0, 2, 100).await?;
    store.shutdown();
    store.shutdown();
    let (key, data) = blob(9, 10);
    assert!(matches!(store.append(1, key, data).await, Err(StoreError::ShuttingDown)));
    assert!(matches!(store.seal(1).await, Err(StoreError::ShuttingDown)));
    assert_readable(&store, 1, &records).await?;
    Ok(())
}
