//! Crash recovery of the OSD storage engine on temporary disk directories:
//! torn tails, flipped bits, lost or damaged metadata and headers, and what
//! start-up cleans.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Result;
use bytes::Bytes;
use pocket_format::{self as extent, RECORD_HEADER_LEN};
use pocket_osd::meta::{self, ExtentMeta, ExtentState};
use pocket_osd::{AppendOutcome, Store, StoreError};
use common::{assert_readable, blob, disks, file_len, fill, info, opts, MIB};
use pocket_proto::Key;


/// Writes the start of a record that never completed after the last record:
/// a valid header announcing `data_len` bytes, then only `written` of them.
fn write_partial_record(path: &Path, data_len: usize, written: usize) -> Result<u64> {
    let (key, data) = blob(999_999, data_len);
    let f = OpenOptions::new().write(true).open(path)?;
    let at = f.metadata()?.len();
    f.write_all_at(&extent::RecordHeader::for_blob(key, &data).encode(), at)?;
    f.write_all_at(&data[..written], at + RECORD_HEADER_LEN as u64)?;
    Ok(at)
}

#[tokio::test]
async fn torn_tail_is_cut_and_appends_resume() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    for id in 1..=3 {
        store.create_extent(id, 4 * MIB)?;
    }
    let r1 = fill(&store, 1, 0, 3, 2000).await?;
    let r2 = fill(&store, 2, 10, 3, 2000).await?;
    let r3 = fill(&store, 3, 20, 3, 2000).await?;
    let end = info(&store, 1)?.size_bytes;
    drop(store);

    // 1: a record cut mid-data. 2: garbage after the last record.
    // 3: a record header cut in the middle.
    let p1 = d.extent_path(1)?;
    write_partial_record(&p1, 3000, 1000)?;
    let p2 = d.extent_path(2)?;
    let f = OpenOptions::new().write(true).open(&p2)?;
    f.write_all_at(&[0x5Au8; 777], end)?;
    let p3 = d.extent_path(3)?;
    let at = write_partial_record(&p3, 3000, 0)?;
    OpenOptions::new().write(true).open(&p3)?.set_len(at + 20)?;

    let store = d.open()?;
    for (id, path, records) in [(1, &p1, &r1), (2, &p2, &r2), (3, &p3, &r3)] {
        assert_eq!(file_len(path)?, end, "extent {id}: tail cut at the last valid record");
        assert_eq!(info(&store, id)?.size_bytes, end);
        assert_eq!(info(&store, id)?.record_count, 3);
        assert_readable(&store, id, records).await?;
        let more = fill(&store, id, 500 + id, 1, 100).await?;
        assert_eq!(more[0].2, end, "extent {id}: appends resume where the tail was cut");
        assert_readable(&store, id, &more).await?;
    }
    Ok(())
}

#[tokio::test]
async fn torn_tail_after_lost_index_batch_is_cut() -> Result<()> {
    // The crash case: the last group's records were written but neither
    // synced nor indexed, and one is torn.
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let records = fill(&store, 1, 0, 3, 4000).await?;
    drop(store);
    let disk = d.disk_of(1)?;
    {
        let db = meta::open_db(&disk.join("meta"))?;
        db.delete(meta::record_key(1, &records[2].0))?;
        let m = ExtentMeta {
            state: ExtentState::Open,
            max_size_bytes: 4 * MIB,
            indexed_up_to: records[2].2,
            record_count: 2,
        };
        db.put(meta::extent_key(1), m.encode())?;
    }
    let path = d.extent_path(1)?;
    OpenOptions::new().write(true).open(&path)?.set_len(records[2].2 + RECORD_HEADER_LEN as u64 + 100)?;

    let store = d.open()?;
    assert_eq!(file_len(&path)?, records[2].2);
    assert_readable(&store, 1, &records[..2]).await?;
    assert!(matches!(store.read(1, &records[2].0).await, Err(StoreError::NotFound { .. })));
    assert!(!store.has(1, &records[2].0)?);
    assert_eq!(info(&store, 1)?.record_count, 2);
    // The lost record can be appended again, at the cut.
    let again = store.append(1, records[2].0, records[2].1.clone()).await?;
    assert_eq!(again, AppendOutcome::Appended { offset: records[2].2 });
    assert_readable(&store, 1, &records).await?;
    Ok(())
}

fn flip_bit(path: &Path, offset: u64) -> Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0x10;
    f.write_all_at(&b, offset)?;
    Ok(())
}

#[tokio::test]
async fn flipped_bit_is_reported_corrupt_and_nothing_is_cut() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let records = fill(&store, 1, 0, 3, 3000).await?;
    let size = info(&store, 1)?.size_bytes;
    drop(store);
    let path = d.extent_path(1)?;
    let middle = records[1].2;
    flip_bit(&path, middle + RECORD_HEADER_LEN as u64 + 1234)?;

    let store = d.open()?;
    assert_eq!(file_len(&path)?, size);
    match store.read(1, &records[1].0).await {
        Err(StoreError::Corrupt { extent: 1, offset, detail: extent::FormatError::BadChecksum { .. } }) => {
            assert_eq!(offset, middle)
        }
        other => anyhow::bail!("expected Corrupt, got {other:?}"),
    }
    assert_readable(&store, 1, &[records[0].clone(), records[2].clone()]).await?;
    drop(store);

    // Without metadata, recovery scans the extent, skips the bad record and
    // keeps the one after it; it cuts nothing.
    d.delete_meta()?;
    let store = d.open()?;
    assert_eq!(file_len(&path)?, size);
    assert_eq!(info(&store, 1)?.size_bytes, size);
    assert_readable(&store, 1, &[records[0].clone(), records[2].clone()]).await?;
    assert!(matches!(store.read(1, &records[1].0).await, Err(StoreError::NotFound { .. })));
    assert_eq!(info(&store, 1)?.record_count, 2);
    let more = fill(&store, 1, 77, 1, 10).await?;
    assert_eq!(more[0].2, size);
    Ok(())
}

#[tokio::test]
async fn flipped_bit_in_a_record_header_is_reported_corrupt() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let records = fill(&store, 1, 0, 3, 300).await?;
    drop(store);
    let path = d.extent_path(1)?;
    flip_bit(&path, records[1].2 + 20)?; // inside the key
    let store = d.open()?;
    assert!(matches!(
        store.read(1, &records[1].0).await,
        Err(StoreError::Corrupt { extent: 1, detail: extent::FormatError::BadChecksum { .. }, .. })
    ));
    assert_readable(&store, 1, &[records[0].clone(), records[2].clone()]).await?;
    Ok(())
}

#[tokio::test]
async fn lost_metadata_is_rebuilt_for_open_and_sealed_extents() -> Result<()> {
    let d = disks(2)?;
    let store = d.open()?;
    for id in 1..=4 {
        store.create_extent(id, 4 * MIB)?;
    }
    let mut all = Vec::new();
    for id in 1..=4 {
        all.push((id, fill(&store, id, id * 1000, 5, 1500).await?));
    }
    store.seal(2).await?;
    store.seal(3).await?;
    let before = store.list_extents();
    drop(store);

    d.delete_meta()?;
    let store = d.open()?;
    assert_eq!(store.list_extents(), before);
    for (id, records) in &all {
        assert_readable(&store, *id, records).await?;
    }
    // Open extents still take appends; sealed ones don't.
    fill(&store, 1, 9000, 1, 10).await?;
    let (key, data) = blob(9001, 10);
    assert!(matches!(store.append(2, key, data).await, Err(StoreError::Sealed(2))));
    drop(store);

    // The rebuilt metadata is complete: the next restart trusts it.
    let store = d.open()?;
    assert_eq!(info(&store, 2)?, before[1]);
    for (id, records) in &all {
        assert_readable(&store, *id, records).await?;
    }
    Ok(())
}

#[tokio::test]
async fn missing_record_entries_are_restored() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    for id in 1..=3 {
        store.create_extent(id, 4 * MIB)?;
    }
    let r1 = fill(&store, 1, 0, 6, 500).await?;
    let r2 = fill(&store, 2, 100, 6, 500).await?;
    let r3 = fill(&store, 3, 200, 6, 500).await?;
    store.seal(3).await?;
    let before = store.list_extents();
    drop(store);

    let disk = d.disk_of(1)?;
    {
        let db = meta::open_db(&disk.join("meta"))?;
        // 1: entries deleted behind an intact extent entry.
        db.delete(meta::record_key(1, &r1[0].0))?;
        db.delete(meta::record_key(1, &r1[3].0))?;
        // 2: the extent entry reset, as if the index batches were never written.
        for (key, _, _) in &r2 {
            db.delete(meta::record_key(2, key))?;
        }
        let m = ExtentMeta { state: ExtentState::Open, max_size_bytes: 4 * MIB, indexed_up_to: 64, record_count: 0 };
        db.put(meta::extent_key(2), m.encode())?;
        // 3 (sealed): entries deleted.
        db.delete(meta::record_key(3, &r3[5].0))?;
        db.delete(meta::record_key(3, &r3[2].0))?;
    }

    let store = d.open()?;
    assert_eq!(store.list_extents(), before);
    assert_readable(&store, 1, &r1).await?;
    assert_readable(&store, 2, &r2).await?;
    assert_readable(&store, 3, &r3).await?;
    Ok(())
}

#[tokio::test]
async fn a_seal_not_recorded_in_metadata_is_found_from_the_footer() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let records = fill(&store, 1, 0, 4, 900).await?;
    let records_end = info(&store, 1)?.size_bytes;
    let sealed = store.seal(1).await?;
    drop(store);
    {
        // Crash after the footer was synced, before RocksDB recorded the seal.
        let db = meta::open_db(&d.disk_of(1)?.join("meta"))?;
        let m = ExtentMeta {
            state: ExtentState::Open,
            max_size_bytes: 4 * MIB,
            indexed_up_to: records_end,
            record_count: 4,
        };
        db.put(meta::extent_key(1), m.encode())?;
    }
    let store = d.open()?;
    let i = info(&store, 1)?;
    assert!(i.sealed);
    assert_eq!((i.size_bytes, i.record_count), (sealed.size_bytes, sealed.record_count));
    assert_eq!(file_len(&d.extent_path(1)?)?, sealed.size_bytes);
    assert_readable(&store, 1, &records).await?;
    Ok(())
}

#[tokio::test]
async fn a_sealed_extent_that_lost_its_footer_is_sealed_again() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let records = fill(&store, 1, 0, 4, 900).await?;
    let records_end = info(&store, 1)?.size_bytes;
    let sealed = store.seal(1).await?;
    drop(store);
    let path = d.extent_path(1)?;
    OpenOptions::new().write(true).open(&path)?.set_len(records_end + 10)?;

    let store = d.open()?;
    let i = info(&store, 1)?;
    assert!(i.sealed);
    assert_eq!(i.size_bytes, sealed.size_bytes);
    assert_eq!(file_len(&path)?, sealed.size_bytes);
    let bytes = fs::read(&path)?;
    let (_, entries) = extent::decode_footer(&bytes[records_end as usize..])?;
    assert_eq!(entries.len(), 4);
    assert_readable(&store, 1, &records).await?;
    Ok(())
}

#[tokio::test]
async fn start_up_cleans_temporaries_quarantines_bad_headers_and_sets_bad_metadata_aside() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, MIB)?;
    store.create_extent(2, MIB)?;
    let r1 = fill(&store, 1, 0, 2, 100).await?;
    fill(&store, 2, 10, 2, 100).await?;
    drop(store);
    let disk = &d.dirs[0];
    let tmp = disk.join("extents").join("0000000000000003.ext.tmp");
    fs::write(&tmp, b"half-created")?;
    fs::write(disk.join("leftover.tmp"), b"x")?;
    let p2 = d.extent_path(2)?;
    flip_bit(&p2, 17)?; // inside the extent header
                        // Metadata that RocksDB will not open.
    fs::write(disk.join("meta").join("CURRENT"), b"garbage\n")?;

    let store = d.open()?;
    assert!(!tmp.exists());
    assert!(!disk.join("leftover.tmp").exists());
    assert!(!p2.exists());
    assert!(p2.with_extension("ext.corrupt").exists());
    assert_eq!(store.list_extents().iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
    assert!(matches!(store.read(2, &r1[0].0).await, Err(StoreError::UnknownExtent(2))));
    let aside = fs::read_dir(disk)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("meta.corrupt-"));
    assert!(aside, "the unreadable metadata is kept aside, not deleted");
    assert_readable(&store, 1, &r1).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_store_on_the_same_disk_is_refused() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, MIB)?;
    assert!(matches!(Store::open(&d.dirs, opts()), Err(StoreError::Meta(_))));
    // And the first store's metadata was not disturbed.
    let names: Vec<String> = fs::read_dir(&d.dirs[0])?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("meta.corrupt-")));
    fill(&store, 1, 0, 1, 10).await?;
    Ok(())
}

#[tokio::test]
async fn a_blob_that_looks_like_a_footer_does_not_seal_an_open_extent() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(1, 4 * MIB)?;
    let before = fill(&store, 1, 0, 2, 300).await?;
    // The next record's data will start right after its header: plant a
    // nested fake record there, then an index naming it and a valid trailer,
    // so the file ends exactly like a sealed extent's footer.
    let record_at = info(&store, 1)?.size_bytes;
    let fake_at = record_at + RECORD_HEADER_LEN as u64;
    let (fake_key, fake_data) = blob(4242, 100);
    let mut data = extent::RecordHeader::for_blob(fake_key, &fake_data).encode().to_vec();
    data.extend_from_slice(&fake_data);
    let index_offset = fake_at + data.len() as u64;
    let entry = extent::IndexEntry { key: fake_key, offset: fake_at, data_len: fake_data.len() as u64 };
    data.extend_from_slice(&extent::encode_footer(&[entry], index_offset));
    let data = Bytes::from(data);
    let key = Key::of(&data);
    assert_eq!(store.append(1, key, data.clone()).await?, AppendOutcome::Appended { offset: record_at });
    let size = info(&store, 1)?.size_bytes;
    drop(store);
    // Cut the zeros direct appends leave after the records (ADR 11), so the
    // file ends exactly in the planted footer, as a file written through the
    // page cache would.
    OpenOptions::new().write(true).open(d.extent_path(1)?)?.set_len(size)?;
    // The file really does end in a well-formed footer.
    let bytes = fs::read(d.extent_path(1)?)?;
    let (trailer, _) = extent::decode_footer(&bytes[index_offset as usize..])?;
    assert_eq!(trailer.file_len(), Some(size));

    d.delete_meta()?;
    let store = d.open()?;
    let i = info(&store, 1)?;
    assert!(!i.sealed, "a blob's bytes must not seal the extent");
    assert_eq!((i.size_bytes, i.record_count), (size, 3));
    assert_readable(&store, 1, &before).await?;
    assert_eq!(store.read(1, &key).await?, data);
    assert!(!store.has(1, &fake_key)?);
    fill(&store, 1, 77, 1, 10).await?;
    Ok(())
}

#[tokio::test]
async fn a_damaged_header_with_intact_metadata_keeps_the_extent_and_its_records() -> Result<()> {
    let d = disks(1)?;
    let store = d.open()?;
    store.create_extent(4, MIB)?;
    let records = fill(&store, 4, 30, 3, 100).await?;
    drop(store);
    let path = d.extent_path(4)?;
    flip_bit(&path, 17)?; // inside the extent header

    let store = d.open()?;
    assert!(path.exists(), "the extent must not be quarantined while its metadata knows it");
    assert_eq!(store.list_extents().iter().map(|e| e.id).collect::<Vec<_>>(), vec![4]);
    assert_readable(&store, 4, &records).await?;
    Ok(())
}
