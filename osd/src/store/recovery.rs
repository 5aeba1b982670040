//! Recovery at open: brings each extent file of a disk and its metadata back
//! in line (`docs/extent-format.md`). The files are the truth: metadata that
//! agrees with its file is trusted without extent I/O; otherwise the file's
//! footer or a scan of its records rebuilds it. A torn tail is cut (never
//! below a record the metadata knows), corrupt bytes inside an extent are
//! skipped, and a file whose header is invalid and unknown to the metadata
//! is quarantined.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pocket_format::{
    self as format, ExtentHeader, FormatError, IndexEntry, Structure, Trailer, CORRUPT_SUFFIX, EXTENT_HEADER_LEN,
};
use pocket_proto::{ExtentId, Key};
use rocksdb::{WriteBatch, DB};
use tracing::{error, info, warn};

use super::direct::DIRECT_IO_ALIGN;
use super::error::{io_err, StoreError};
use super::extent::{open_direct, Extent, ExtentMut};
use super::layout::{sync_dir, EXTENTS_DIR};
use super::lock;
use super::scan::{footer_at, footer_from_end, footer_tiles_records, scan_records, Window};
use super::types::StoreOptions;
use super::writer::seal_extent;
use crate::meta::{self, ExtentMeta, ExtentState, Lookup, RecordLocation, RecordStats};

/// Record entries restored per RocksDB write batch during recovery.
const RESTORE_BATCH_RECORDS: usize = 4096;

#[derive(Debug, Default)]
struct RecoveryStats {
    extents: u64,
    sealed: u64,
    trusted: u64,
    scanned: u64,
    scanned_bytes: u64,
    records_restored: u64,
    entries_removed: u64,
    torn_tails: u64,
    truncated_bytes: u64,
    /// Open extents whose zero padding after the last record was cut (ADR 11).
    padding_cut: u64,
    corrupt_ranges: u64,
    corrupt_bytes: u64,
    quarantined: u64,
    damaged_headers: u64,
    resealed: u64,
    orphan_metas: u64,
}

pub(super) fn recover_disk(disk: usize, dir: &Path, db: &DB, opts: &StoreOptions) -> Result<Vec<Extent>, StoreError> {
    let started = std::time::Instant::now();
    let mut stats = RecoveryStats::default();
    let metas: HashMap<ExtentId, Option<ExtentMeta>> = meta::load_extent_metas(db)?.into_iter().collect();
    let record_stats = meta::record_stats(db)?;
    let extents_dir = dir.join(EXTENTS_DIR);
    let mut files = Vec::new();
    for entry in fs::read_dir(&extents_dir).map_err(io_err("list extents directory"))? {
        let entry = entry.map_err(io_err("list extents directory"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match format::parse_extent_file_name(&name) {
            Some(id) => files.push((id, entry.path())),
            None if name.ends_with(CORRUPT_SUFFIX) => {}
            None => warn!(path = %entry.path().display(), "ignoring unexpected file in extents directory"),
        }
    }
    files.sort_by_key(|(id, _)| *id);
    let mut out = Vec::with_capacity(files.len());
    let mut present = HashSet::new();
    for (id, path) in files {
        present.insert(id);
        let meta = metas.get(&id).copied().flatten();
        if metas.get(&id).is_some_and(|m| m.is_none()) {
            warn!(extent = id, "undecodable extent metadata; rebuilding it from the file");
        }
        let rstats = record_stats.get(&id).copied().unwrap_or_default();
        if let Some(ext) = recover_extent(disk, db, id, &path, meta, rstats, &mut stats)? {
            stats.extents += 1;
            if ext.snapshot().sealed {
                stats.sealed += 1;
            } else {
                let direct = open_direct(&path, &ext.file, ext.snapshot().records_end, opts)?;
                *lock(&ext.direct) = direct;
            }
            out.push(ext);
        }
    }
    // Metadata whose extent file is gone: the data is not on this disk.
    let mut batch = WriteBatch::default();
    let orphan_ids = metas.keys().chain(record_stats.keys()).filter(|id| !present.contains(id)).copied();
    for id in orphan_ids.collect::<HashSet<_>>() {
        error!(extent = id, disk = %dir.display(), "metadata names an extent whose file is missing; dropping the metadata");
        meta::delete_extent(&mut batch, id);
        stats.orphan_metas += 1;
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    info!(
        disk = %dir.display(),
        extents = stats.extents,
        sealed = stats.sealed,
        trusted_metadata = stats.trusted,
        scanned = stats.scanned,
        scanned_bytes = stats.scanned_bytes,
        records_restored = stats.records_restored,
        entries_removed = stats.entries_removed,
        torn_tails = stats.torn_tails,
        truncated_bytes = stats.truncated_bytes,
        padding_cut = stats.padding_cut,
        corrupt_ranges = stats.corrupt_ranges,
        corrupt_bytes = stats.corrupt_bytes,
        quarantined = stats.quarantined,
        damaged_headers = stats.damaged_headers,
        resealed = stats.resealed,
        orphan_metadata = stats.orphan_metas,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered disk"
    );
    Ok(out)
}

fn quarantine(
    db: &DB,
    id: ExtentId,
    path: &Path,
    why: &dyn std::fmt::Display,
    stats: &mut RecoveryStats,
) -> Result<(), StoreError> {
    let mut target = path.as_os_str().to_owned();
    target.push(CORRUPT_SUFFIX);
    let mut target = PathBuf::from(target);
    if target.exists() {
        target = PathBuf::from(format!("{}.{}", target.display(), pocket_proto::now_unix_ms()));
    }
    fs::rename(path, &target).map_err(io_err("quarantine extent file"))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    let mut batch = WriteBatch::default();
    meta::delete_extent(&mut batch, id);
    db.write(batch)?;
    error!(extent = id, path = %target.display(), reason = %why, "extent header is invalid; quarantined the extent");
    stats.quarantined += 1;
    Ok(())
}

/// Loads an extent file that has no metadata (a whole extent just received)
/// exactly as recovery loads a file whose metadata was lost.
pub(super) fn load_unindexed_extent(
    disk: usize,
    db: &DB,
    id: ExtentId,
    path: &Path,
) -> Result<Option<Extent>, StoreError> {
    let mut stats = RecoveryStats::default();
    recover_extent(disk, db, id, path, None, RecordStats::default(), &mut stats)
}

/// How recovery should treat one extent file.
enum Plan {
    /// Metadata is consistent with the file: no extent I/O at all.
    TrustSealed(ExtentMeta),
    /// Scan records from `start` (and also treat as sealed before if `was_sealed`).
    Scan { start: u64, was_sealed: bool },
    /// A verified footer: its index is the record list.
    Footer(Trailer, Vec<IndexEntry>),
}

/// Recovers one extent file: checks its header, plans from its metadata,
/// then trusts the metadata, adopts the footer or scans the records.
/// None if the file was quarantined. An extent found sealed once but
/// without its footer is sealed again. The caller opens the direct
/// appender of an extent that takes appends.
fn recover_extent(
    disk: usize,
    db: &DB,
    id: ExtentId,
    path: &Path,
    meta: Option<ExtentMeta>,
    rstats: RecordStats,
    stats: &mut RecoveryStats,
) -> Result<Option<Extent>, StoreError> {
    let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err("open extent file"))?;
    let file_len = file.metadata().map_err(io_err("stat extent file"))?.len();
    let Some(max_size_bytes) = check_header(db, id, path, &file, file_len, meta.as_ref(), stats)? else {
        return Ok(None);
    };
    let extent = Recovering {
        db,
        id,
        file: &file,
        file_len,
        max_size_bytes,
        // Every record RocksDB knows of ends at or before this offset: recovery
        // never truncates below it (those records were, or may have been, acknowledged).
        floor: rstats.max_end.max(EXTENT_HEADER_LEN as u64),
    };
    let mut window = Window::new(&file, file_len);
    let plan = extent.plan(&mut window, meta, rstats)?;
    let (state, reseal) = match plan {
        Plan::TrustSealed(m) => {
            stats.trusted += 1;
            let state = ExtentMut {
                sealed: true,
                poisoned: false,
                records_end: m.indexed_up_to,
                size_bytes: file_len,
                record_count: m.record_count,
            };
            (state, false)
        }
        Plan::Footer(trailer, entries) => {
            let record_count = entries.len() as u64;
            (extent.adopt_footer(&trailer, &entries, record_count, file_len, stats)?, false)
        }
        Plan::Scan { start, was_sealed } => extent.rescan(&mut window, start, was_sealed, rstats.count, stats)?,
    };
    // Set by the caller for an extent that takes appends.
    let ext = Extent::new(id, disk, file, max_size_bytes, state, None);
    if reseal {
        seal_extent(db, &ext)?;
        stats.resealed += 1;
    }
    Ok(Some(ext))
}

/// Checks the header of an extent file against its name and its metadata.
/// Returns the extent's max size (from the header, or from the metadata if
/// the header is damaged), or None once the file is quarantined.
fn check_header(
    db: &DB,
    id: ExtentId,
    path: &Path,
    file: &File,
    file_len: u64,
    meta: Option<&ExtentMeta>,
    stats: &mut RecoveryStats,
) -> Result<Option<u64>, StoreError> {
    let mut header_bytes = [0u8; EXTENT_HEADER_LEN];
    let header = if file_len >= EXTENT_HEADER_LEN as u64 {
        file.read_exact_at(&mut header_bytes, 0).map_err(io_err("read extent header"))?;
        ExtentHeader::decode(&header_bytes)
    } else {
        Err(FormatError::Truncated {
            what: Structure::ExtentHeader,
            needed: EXTENT_HEADER_LEN as u64,
            available: file_len,
        })
    };
    let max_size_bytes = match header {
        Ok(h) if h.extent_id == id => h.max_size_bytes,
        Ok(h) => {
            let why = format!("header names extent {} but the file name names {id}", h.extent_id);
            quarantine(db, id, path, &why, stats)?;
            return Ok(None);
        }
        // A newer format is not corruption: refuse to run rather than
        // discard extents a newer binary wrote.
        Err(FormatError::UnsupportedVersion(version)) => {
            return Err(StoreError::UnsupportedFormat { path: path.to_path_buf(), version });
        }
        // The header is damaged but the metadata knows the extent: its
        // records are independent of the header and each carries its own
        // checksums, so keep serving them rather than drop acknowledged data.
        Err(e) if meta.is_some() => {
            let m = meta.map(|m| m.max_size_bytes).unwrap_or_default();
            error!(extent = id, error = %e, "extent header is damaged; keeping the extent on its metadata, records are still checked one by one");
            stats.damaged_headers += 1;
            m
        }
        Err(e) => {
            quarantine(db, id, path, &e, stats)?;
            return Ok(None);
        }
    };
    if let Some(m) = meta {
        if m.max_size_bytes != max_size_bytes {
            warn!(
                extent = id,
                meta = m.max_size_bytes,
                header = max_size_bytes,
                "metadata disagrees with the extent header on max size; using the header"
            );
        }
    }
    Ok(Some(max_size_bytes))
}

/// One extent file under recovery, once its header is checked.
struct Recovering<'a> {
    db: &'a DB,
    id: ExtentId,
    file: &'a File,
    file_len: u64,
    max_size_bytes: u64,
    /// Recovery never truncates below this offset: the end of the last
    /// record the metadata knows (at least the extent header's end).
    floor: u64,
}

impl Recovering<'_> {
    /// Decides from the metadata (and, without any, from a footer at the
    /// end of the file) how much of the file must be read.
    fn plan(&self, window: &mut Window<'_>, meta: Option<ExtentMeta>, rstats: RecordStats) -> Result<Plan, StoreError> {
        let (id, file_len) = (self.id, self.file_len);
        let plan = match meta {
            Some(m) if m.state == ExtentState::Sealed => {
                let expected_len = m.indexed_up_to.checked_add(format::footer_len(m.record_count));
                if expected_len == Some(file_len) && rstats.count == m.record_count {
                    Plan::TrustSealed(m)
                } else if expected_len == Some(file_len) {
                    warn!(
                        extent = id,
                        entries = rstats.count,
                        expected = m.record_count,
                        "sealed extent is missing record entries; reloading them from its footer"
                    );
                    match footer_at(window, m.indexed_up_to).map_err(io_err("read extent footer"))? {
                        Some((t, entries)) => Plan::Footer(t, entries),
                        None => Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: true },
                    }
                } else {
                    error!(extent = id, file_len, expected_len = ?expected_len, "sealed extent's length does not match its metadata; rescanning it");
                    Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: true }
                }
            }
            Some(m) => {
                let consistent =
                    rstats.count == m.record_count && m.indexed_up_to >= self.floor && m.indexed_up_to <= file_len;
                if consistent {
                    Plan::Scan { start: m.indexed_up_to, was_sealed: false }
                } else {
                    warn!(
                        extent = id,
                        entries = rstats.count,
                        record_count = m.record_count,
                        indexed_up_to = m.indexed_up_to,
                        file_len,
                        "open extent's metadata is inconsistent; rescanning the whole extent"
                    );
                    Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: false }
                }
            }
            None => match footer_from_end(window).map_err(io_err("read extent footer"))? {
                Some((t, entries))
                    if footer_tiles_records(window, &t, &entries).map_err(io_err("verify extent footer"))? =>
                {
                    Plan::Footer(t, entries)
                }
                _ => Plan::Scan { start: EXTENT_HEADER_LEN as u64, was_sealed: false },
            },
        };
        Ok(plan)
    }

    /// A sealed extent whose footer lists its records: the record entries
    /// become exactly the footer's index and the extent is recorded sealed.
    fn adopt_footer(
        &self,
        trailer: &Trailer,
        entries: &[IndexEntry],
        record_count: u64,
        size_bytes: u64,
        stats: &mut RecoveryStats,
    ) -> Result<ExtentMut, StoreError> {
        let (restored, removed) = sync_sealed_entries(self.db, self.id, entries)?;
        stats.records_restored += restored;
        stats.entries_removed += removed;
        let (id, max_size_bytes) = (self.id, self.max_size_bytes);
        put_extent_meta(self.db, id, ExtentState::Sealed, max_size_bytes, trailer.index_offset, record_count)?;
        Ok(ExtentMut { sealed: true, poisoned: false, records_end: trailer.index_offset, size_bytes, record_count })
    }

    /// Validates the records from `start` on, cuts a torn tail, and restores
    /// what the metadata lacks (`indexed_records` entries it has already).
    /// Returns the extent's state and whether it must be sealed again.
    fn rescan(
        &self,
        window: &mut Window<'_>,
        start: u64,
        was_sealed: bool,
        indexed_records: u64,
        stats: &mut RecoveryStats,
    ) -> Result<(ExtentMut, bool), StoreError> {
        stats.scanned += 1;
        stats.scanned_bytes += self.file_len.saturating_sub(start);
        let scan = scan_records(window, self.id, start, self.floor).map_err(io_err("scan extent"))?;
        stats.corrupt_ranges += scan.skipped.len() as u64;
        stats.corrupt_bytes += scan.skipped.iter().map(|(a, b)| b - a).sum::<u64>();
        if let Some(at) = scan.torn_tail_at {
            self.cut_tail(at, stats)?;
        }
        let size_bytes = scan.torn_tail_at.unwrap_or(self.file_len);
        match scan.footer {
            Some((trailer, entries)) => {
                // The seal wrote the footer from the metadata after every
                // record before it was indexed, so it lists every record.
                let record_count = trailer.record_count;
                Ok((self.adopt_footer(&trailer, &entries, record_count, size_bytes, stats)?, false))
            }
            None => {
                let restored = restore_entries(self.db, self.id, &scan.records)?;
                stats.records_restored += restored;
                let record_count = indexed_records + restored;
                let (id, max_size_bytes) = (self.id, self.max_size_bytes);
                put_extent_meta(self.db, id, ExtentState::Open, max_size_bytes, scan.records_end, record_count)?;
                let state = ExtentMut {
                    sealed: false,
                    poisoned: false,
                    records_end: scan.records_end,
                    size_bytes,
                    record_count,
                };
                // Sealed once, it must never take appends again.
                Ok((state, was_sealed))
            }
        }
    }

    /// Truncates the file at `at`, after its last valid record: the zero
    /// padding direct appends leave (ADR 11), or a torn tail.
    fn cut_tail(&self, at: u64, stats: &mut RecoveryStats) -> Result<(), StoreError> {
        let file_len = self.file_len;
        if is_direct_padding(self.file, at, file_len).map_err(io_err("read extent tail"))? {
            // What direct appends leave after the last record (ADR 11).
            stats.padding_cut += 1;
        } else {
            warn!(
                extent = self.id,
                at,
                cut_bytes = file_len - at,
                "torn tail; truncating the extent after its last valid record"
            );
            stats.torn_tails += 1;
            stats.truncated_bytes += file_len - at;
        }
        self.file.set_len(at).map_err(io_err("truncate torn extent tail"))?;
        self.file.sync_all().map_err(io_err("sync truncated extent"))?;
        Ok(())
    }
}

/// Whether `[at, file_len)` is the zero padding a direct append leaves: less
/// than a block of zeros ending on a block boundary.
fn is_direct_padding(file: &File, at: u64, file_len: u64) -> io::Result<bool> {
    let align = DIRECT_IO_ALIGN as u64;
    if !file_len.is_multiple_of(align) || file_len - at >= align {
        return Ok(false);
    }
    let mut tail = vec![0u8; (file_len - at) as usize];
    file.read_exact_at(&mut tail, at)?;
    Ok(tail.iter().all(|b| *b == 0))
}

fn put_extent_meta(
    db: &DB,
    id: ExtentId,
    state: ExtentState,
    max_size_bytes: u64,
    indexed_up_to: u64,
    record_count: u64,
) -> Result<(), StoreError> {
    let m = ExtentMeta { state, max_size_bytes, indexed_up_to, record_count };
    db.put(meta::extent_key(id), m.encode())?;
    Ok(())
}

/// Adds an entry for every record RocksDB lacks (the first occurrence of a
/// key wins). Returns how many were added.
fn restore_entries(db: &DB, id: ExtentId, records: &[IndexEntry]) -> Result<u64, StoreError> {
    let mut restored = 0;
    let mut seen = HashSet::new();
    let mut batch = WriteBatch::default();
    for r in records {
        if !seen.insert(r.key) {
            continue;
        }
        if meta::get_record(db, id, &r.key)? == Lookup::Missing {
            batch.put(meta::record_key(id, &r.key), RecordLocation { offset: r.offset, data_len: r.data_len }.encode());
            restored += 1;
            if batch.len() >= RESTORE_BATCH_RECORDS {
                db.write(std::mem::take(&mut batch))?;
            }
        }
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok(restored)
}

/// Makes a sealed extent's record entries exactly its footer's index.
/// Returns (entries added or corrected, entries removed).
fn sync_sealed_entries(db: &DB, id: ExtentId, entries: &[IndexEntry]) -> Result<(u64, u64), StoreError> {
    let mut wanted: HashMap<Key, RecordLocation> =
        entries.iter().map(|e| (e.key, RecordLocation { offset: e.offset, data_len: e.data_len })).collect();
    let mut batch = WriteBatch::default();
    let mut removed = 0;
    let prefix = meta::record_prefix(id);
    for item in db.iterator(rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        let Some((_, key)) = meta::parse_record_key(&k) else { continue };
        match wanted.get(&key) {
            // Already right: nothing to write.
            Some(loc) if RecordLocation::decode(&v).as_ref() == Some(loc) => {
                wanted.remove(&key);
            }
            // Wrong or undecodable: rewritten below.
            Some(_) => {}
            None => {
                batch.delete(&k);
                removed += 1;
            }
        }
    }
    let restored = wanted.len() as u64;
    for (key, loc) in &wanted {
        batch.put(meta::record_key(id, key), loc.encode());
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok((restored, removed))
}
