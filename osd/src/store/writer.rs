//! Each disk's writer thread: group commit of the appends queued to it, and
//! the seal, which runs in the same queue so that it sees every append
//! queued before it.
//!
//! A group commit writes every record of the group (one vectored or one
//! direct write per record or extent), then one fdatasync per touched file,
//! then one RocksDB batch for the whole group, and only then answers the
//! appends. A failed write or sync poisons the extent until restart.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use pocket_format::{self as format, IndexEntry, RecordHeader, EXTENT_HEADER_LEN, RECORD_HEADER_LEN};
use pocket_proto::{Body, ExtentId, Key};
use rocksdb::{WriteBatch, DB};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::error::StoreError;
use super::extent::{Extent, ExtentMut};
use super::lock;
use super::page_cache::drop_behind;
use super::types::{AppendOutcome, SealInfo, StoreOptions};
use crate::meta::{self, ExtentMeta, ExtentState, Lookup, RecordLocation};

/// What a disk's writer thread is asked to do.
pub(super) enum Request {
    Append { extent: Arc<Extent>, key: Key, data: Body, resp: AppendResponder },
    Seal { extent: Arc<Extent>, resp: oneshot::Sender<Result<SealInfo, StoreError>> },
}

/// The body of a disk's writer thread: takes requests until the queue is
/// closed and empty.
pub(super) fn run_writer(db: Arc<DB>, mut rx: mpsc::Receiver<Request>, opts: StoreOptions) {
    while let Some(first) = rx.blocking_recv() {
        let mut appends = Vec::new();
        let mut seal = None;
        let mut group_bytes = 0u64;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Append { extent, key, data, resp } => {
                    group_bytes += data.len_bytes();
                    appends.push(PendingAppend { extent, key, data, resp });
                }
                Request::Seal { extent, resp } => {
                    // A seal ends the group: it must see every append before it.
                    seal = Some((extent, resp));
                    break;
                }
            }
            if group_bytes >= opts.group_commit_max_bytes {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !appends.is_empty() {
            // Average group commit = bytes / commits: what one fdatasync covers.
            metrics::counter!("pocket_osd_group_commits_total").increment(1);
            metrics::counter!("pocket_osd_group_commit_appends_total").increment(appends.len() as u64);
            metrics::counter!("pocket_osd_group_commit_bytes_total").increment(group_bytes);
            commit_group(&db, appends, &opts);
        }
        if let Some((extent, resp)) = seal {
            let _ = resp.send(seal_extent(&db, &extent));
        }
    }
}

type AppendResponder = oneshot::Sender<Result<AppendOutcome, StoreError>>;

struct PendingAppend {
    extent: Arc<Extent>,
    key: Key,
    data: Body,
    resp: AppendResponder,
}

/// One extent's share of a group commit.
struct Staged {
    extent: Arc<Extent>,
    start: ExtentMut,
    next_offset: u64,
    records: Vec<(Key, RecordLocation)>,
    pending_keys: HashMap<Key, u64>,
    /// (responder, offset, whether it duplicates a record of this group)
    waiters: Vec<(AppendResponder, u64, bool)>,
    failed: Option<StoreError>,
    /// With direct appends (ADR 11): the group's record bytes for this
    /// extent, written with one direct write before the sync.
    direct_parts: Vec<Bytes>,
}

enum Staging {
    /// Respond after the group is durable.
    Wait { offset: u64, duplicate: bool },
    /// Respond now.
    Done(Result<AppendOutcome, StoreError>),
}

fn commit_group(db: &DB, appends: Vec<PendingAppend>, opts: &StoreOptions) {
    let mut staged: Vec<Staged> = Vec::new();
    let mut slot: HashMap<ExtentId, usize> = HashMap::new();
    for a in appends {
        let i = *slot.entry(a.extent.id).or_insert_with(|| {
            let start = a.extent.snapshot();
            staged.push(Staged {
                extent: a.extent.clone(),
                start,
                next_offset: start.records_end,
                records: Vec::new(),
                pending_keys: HashMap::new(),
                waiters: Vec::new(),
                failed: None,
                direct_parts: Vec::new(),
            });
            staged.len() - 1
        });
        let s = &mut staged[i];
        match stage_append(db, s, a.key, a.data.chunks(), opts) {
            Staging::Wait { offset, duplicate } => s.waiters.push((a.resp, offset, duplicate)),
            Staging::Done(result) => {
                let _ = a.resp.send(result);
            }
        }
    }

    // One direct write per touched extent that appends directly.
    for s in staged.iter_mut().filter(|s| s.failed.is_none() && !s.direct_parts.is_empty()) {
        let parts: Vec<&[u8]> = s.direct_parts.iter().map(|part| &part[..]).collect();
        let written = match lock(&s.extent.direct).as_mut() {
            Some(direct) => direct.append(&parts, s.start.records_end),
            None => Err(io::Error::other("the extent's direct appender is gone")),
        };
        if let Err(e) = written {
            s.failed = Some(StoreError::Io { context: "write records", source: e });
        }
    }

    // One fdatasync per touched file.
    for s in staged.iter_mut().filter(|s| s.failed.is_none() && !s.records.is_empty()) {
        match s.extent.file.sync_data() {
            Ok(()) => drop_extent_behind(&s.extent, s.next_offset, opts.page_cache_window_bytes),
            Err(e) => s.failed = Some(StoreError::Io { context: "sync extent file", source: e }),
        }
    }

    // One RocksDB batch for the whole group.
    let mut batch = WriteBatch::default();
    for s in staged.iter().filter(|s| s.failed.is_none() && !s.records.is_empty()) {
        for (key, loc) in &s.records {
            batch.put(meta::record_key(s.extent.id, key), loc.encode());
        }
        let meta = ExtentMeta {
            state: ExtentState::Open,
            max_size_bytes: s.extent.max_size_bytes,
            indexed_up_to: s.next_offset,
            record_count: s.start.record_count + s.records.len() as u64,
        };
        batch.put(meta::extent_key(s.extent.id), meta.encode());
    }
    if !batch.is_empty() {
        if let Err(e) = db.write(batch) {
            for s in staged.iter_mut().filter(|s| s.failed.is_none() && !s.records.is_empty()) {
                s.failed = Some(StoreError::Meta(e.clone()));
            }
        }
    }

    for s in staged {
        let id = s.extent.id;
        match &s.failed {
            Some(failure) => {
                error!(extent = id, error = %failure, "group commit failed; extent stops accepting writes until restart");
                lock(&s.extent.state).poisoned = true;
                for (resp, _, _) in s.waiters {
                    let _ = resp.send(Err(failure.for_another_waiter(id)));
                }
            }
            None => {
                if !s.records.is_empty() {
                    let mut st = lock(&s.extent.state);
                    st.records_end = s.next_offset;
                    st.size_bytes = s.next_offset;
                    st.record_count = s.start.record_count + s.records.len() as u64;
                }
                for (resp, offset, duplicate) in s.waiters {
                    let outcome = if duplicate {
                        AppendOutcome::AlreadyPresent { offset }
                    } else {
                        AppendOutcome::Appended { offset }
                    };
                    let _ = resp.send(Ok(outcome));
                }
            }
        }
    }
}

/// Drops the pages of `extent` more than `window` bytes behind `synced_end`
/// from the page cache (see [`drop_behind`]), remembering how far it got.
fn drop_extent_behind(extent: &Extent, synced_end: u64, window: Option<u64>) {
    let Some(window) = window else { return };
    if lock(&extent.direct).is_some() {
        return; // written around the page cache
    }
    let from = extent.uncached_up_to.load(Ordering::Relaxed);
    let to = drop_behind(&extent.file, from, synced_end, window);
    if to > from {
        extent.uncached_up_to.store(to, Ordering::Relaxed);
        metrics::counter!("pocket_osd_page_cache_dropped_bytes_total").increment(to - from);
    }
}

fn stage_append(db: &DB, s: &mut Staged, key: Key, data: &[Bytes], opts: &StoreOptions) -> Staging {
    let id = s.extent.id;
    if s.start.sealed {
        return Staging::Done(Err(StoreError::Sealed(id)));
    }
    if s.start.poisoned || s.failed.is_some() {
        return Staging::Done(Err(StoreError::Poisoned(id)));
    }
    if let Some(&offset) = s.pending_keys.get(&key) {
        return Staging::Wait { offset, duplicate: true };
    }
    match meta::get_record(db, id, &key) {
        Ok(Lookup::Found(loc)) => return Staging::Done(Ok(AppendOutcome::AlreadyPresent { offset: loc.offset })),
        Ok(Lookup::Missing) => {}
        Ok(Lookup::Undecodable) => {
            warn!(extent = id, %key, "undecodable record entry; appending the record again");
        }
        Err(e) => return Staging::Done(Err(StoreError::Meta(e))),
    }
    let data_len: u64 = data.iter().map(|chunk| chunk.len() as u64).sum();
    if data_len > opts.max_record_bytes {
        return Staging::Done(Err(StoreError::TooLarge { len_bytes: data_len, max_bytes: opts.max_record_bytes }));
    }
    let record_bytes = RECORD_HEADER_LEN as u64 + data_len;
    if s.next_offset.saturating_add(record_bytes) > s.extent.max_size_bytes {
        return Staging::Done(Err(StoreError::ExtentFull {
            extent: id,
            size_bytes: s.next_offset,
            record_bytes,
            max_size_bytes: s.extent.max_size_bytes,
        }));
    }
    let header = RecordHeader::for_chunks(key, data);
    let header_bytes = header.encode();
    // Pair assertion: the bytes about to be written decode to what we meant.
    assert_eq!(RecordHeader::decode(&header_bytes), Ok(header), "encoded record header must decode");
    let offset = s.next_offset;
    if lock(&s.extent.direct).is_some() {
        // Written with the group's other records of this extent, in one
        // direct write before the sync (ADR 11).
        s.direct_parts.push(Bytes::copy_from_slice(&header_bytes));
        s.direct_parts.extend(data.iter().cloned());
    } else {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + data.len());
        parts.push(&header_bytes);
        parts.extend(data.iter().map(|chunk| &chunk[..]));
        if let Err(e) = write_all_vectored_at(&s.extent.file, &parts, offset) {
            let err = StoreError::Io { context: "write record", source: e };
            s.failed = Some(err.for_another_waiter(id));
            return Staging::Done(Err(err));
        }
    }
    s.next_offset = offset + record_bytes;
    s.records.push((key, RecordLocation { offset, data_len }));
    s.pending_keys.insert(key, offset);
    Staging::Wait { offset, duplicate: false }
}

/// Writes every byte of `parts`, in order, at `offset`: vectored writes
/// (writev) from the buffers the record arrived in, with no copy into one
/// buffer first. The file position is used only here, on the disk's writer
/// thread; every other access to an extent file is positional.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut file = file;
    file.seek(io::SeekFrom::Start(offset))?;
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|part| io::IoSlice::new(part)).collect();
    let mut remaining = &mut slices[..];
    io::IoSlice::advance_slices(&mut remaining, 0);
    while !remaining.is_empty() {
        match file.write_vectored(remaining) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut remaining, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the footer of an open extent from its RocksDB entries, syncs it and
/// records the extent as sealed. Idempotent. Runs on the disk's writer thread
/// (or in recovery, before it starts).
pub(super) fn seal_extent(db: &DB, ext: &Extent) -> Result<SealInfo, StoreError> {
    let s = ext.snapshot();
    if s.sealed {
        return Ok(SealInfo { size_bytes: s.size_bytes, record_count: s.record_count });
    }
    if s.poisoned {
        return Err(StoreError::Poisoned(ext.id));
    }
    let (records, undecodable) = meta::load_records(db, ext.id)?;
    if undecodable > 0 {
        warn!(extent = ext.id, undecodable, "sealing without undecodable record entries");
    }
    let mut located: Vec<IndexEntry> =
        records.into_iter().map(|(key, loc)| IndexEntry { key, offset: loc.offset, data_len: loc.data_len }).collect();
    located.sort_by_key(|e| e.offset);
    let mut entries = Vec::with_capacity(located.len());
    let mut previous_end = EXTENT_HEADER_LEN as u64;
    for e in located {
        match e.end() {
            Some(end) if e.offset >= previous_end && end <= s.records_end => {
                previous_end = end;
                entries.push(e);
            }
            _ => {
                warn!(extent = ext.id, offset = e.offset, key = %e.key, "record entry overlaps another or lies past the records; left out of the footer")
            }
        }
    }
    let footer = format::encode_footer(&entries, s.records_end);
    // Pair assertion: the footer decodes to exactly the index we meant to write.
    assert!(
        format::decode_footer(&footer).is_ok_and(|(t, decoded)| t.index_offset == s.records_end && decoded == entries),
        "encoded footer must decode to its entries"
    );
    let size_bytes = s.records_end + footer.len() as u64;
    // Direct appends leave zeros up to a whole block after the records: the
    // footer's end is the file's end.
    let written = ext
        .file
        .write_all_at(&footer, s.records_end)
        .and_then(|()| ext.file.set_len(size_bytes))
        .and_then(|()| ext.file.sync_data());
    if let Err(e) = written {
        lock(&ext.state).poisoned = true;
        error!(extent = ext.id, error = %e, "writing the footer failed; extent stops accepting writes until restart");
        return Err(StoreError::Io { context: "write extent footer", source: e });
    }
    let record_count = entries.len() as u64;
    lock(&ext.direct).take();
    {
        let mut st = lock(&ext.state);
        st.sealed = true;
        st.size_bytes = size_bytes;
        st.record_count = record_count;
    }
    let meta = ExtentMeta {
        state: ExtentState::Sealed,
        max_size_bytes: ext.max_size_bytes,
        indexed_up_to: s.records_end,
        record_count,
    };
    if let Err(e) = db.put(meta::extent_key(ext.id), meta.encode()) {
        // The footer is durable, so the extent is sealed: recovery finds the
        // footer where the records end and records the state then.
        warn!(extent = ext.id, error = %e, "recording the seal in metadata failed; recovery will redo it");
    }
    info!(extent = ext.id, size_bytes, record_count, "sealed extent");
    Ok(SealInfo { size_bytes, record_count })
}
