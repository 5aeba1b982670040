//! Whole-extent operations for erasure coding: receiving an extent as bytes
//! (a byte-identical copy of a sealed extent, or a parity shard), reading raw
//! ranges, verifying a whole extent, deleting one.
//!
//! Parity extents live in `DISK/parity/{extent_id:016x}.par`: raw bytes, no
//! header, since parity must line up byte for byte with the data extents.
//! Their length and BLAKE3 are kept in RocksDB (`p` + id, `meta.rs`); as for
//! extents, the files are the truth and recovery rehashes a parity file whose
//! metadata is missing.
//!
//! A whole extent is written to `NAME.tmp`, synced, checked (length, BLAKE3,
//! and for a data extent its header and footer), and only then renamed into
//! place and the directory synced: a crash leaves either no extent or a
//! complete, verified one.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use pocket_format::{self as format, ExtentHeader, RecordHeader, EXTENT_HEADER_LEN, RECORD_HEADER_LEN};
use pocket_proto::{ExtentId, Key};
use rocksdb::{WriteBatch, DB};
use tracing::{error, info, warn};

use super::api::Store;
use super::error::{io_err, StoreError};
use super::extent::Extent;
use super::layout::{fs_space, sync_dir, tmp_path, EXTENTS_DIR};
use super::lock;
use super::recovery::load_unindexed_extent;
use super::scan::read_footer;
use super::trash::move_to_trash;
use crate::meta::{self, ParityMeta};

/// Directory of parity extents on each disk.
pub const PARITY_DIR: &str = "parity";
/// File name suffix of a parity extent.
const PARITY_SUFFIX: &str = ".par";
/// Bytes read per I/O when hashing or verifying a whole extent.
const VERIFY_WINDOW_BYTES: usize = 1024 * 1024;
/// Free space a disk must keep beyond an incoming whole extent.
const FREE_SPACE_MARGIN_BYTES: u64 = 64 * 1024 * 1024;

/// What a whole extent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeKind {
    /// An extent-format file (a sealed extent, or a copy of one).
    Data,
    /// Raw Reed-Solomon parity bytes.
    Parity,
}

/// What [`Store::verify_whole`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeInfo {
    pub kind: WholeKind,
    pub size_bytes: u64,
    pub blake3: [u8; 32],
    /// Records checked (data extents; 0 for parity).
    pub record_count: u64,
}

/// A parity extent: raw bytes, their length and BLAKE3 kept in RocksDB.
pub(super) struct ParityExtent {
    pub(super) disk: usize,
    file: File,
    size_bytes: u64,
    blake3: [u8; 32],
}

impl ParityExtent {
    pub(super) fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

/// The store's whole-extent state: the parity extents it serves and the
/// ids of whole extents being received.
pub(super) struct WholeExtents {
    parity: RwLock<HashMap<ExtentId, Arc<ParityExtent>>>,
    writes: Mutex<HashSet<ExtentId>>,
}

impl WholeExtents {
    pub(super) fn new(parity: HashMap<ExtentId, Arc<ParityExtent>>) -> WholeExtents {
        WholeExtents { parity: RwLock::new(parity), writes: Mutex::new(HashSet::new()) }
    }

    pub(super) fn parity(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ExtentId, Arc<ParityExtent>>> {
        self.parity.read().unwrap_or_else(|p| p.into_inner())
    }

    fn parity_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ExtentId, Arc<ParityExtent>>> {
        self.parity.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn parity_file_name(id: ExtentId) -> String {
    format!("{id:016x}{PARITY_SUFFIX}")
}

fn parse_parity_file_name(name: &str) -> Option<ExtentId> {
    let hex = name.strip_suffix(PARITY_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// BLAKE3 of the first `len` bytes of `file`, read in bounded windows.
fn hash_file(file: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; VERIFY_WINDOW_BYTES];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(VERIFY_WINDOW_BYTES as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Loads the parity extents of one disk; rehashes files without metadata
/// and drops metadata without files. Blocking.
pub(super) fn recover_parity(disk: usize, dir: &Path, db: &DB) -> Result<Vec<(ExtentId, ParityExtent)>, StoreError> {
    let parity_dir = dir.join(PARITY_DIR);
    fs::create_dir_all(&parity_dir).map_err(io_err("create parity directory"))?;
    let metas: HashMap<ExtentId, Option<ParityMeta>> = meta::load_parity_metas(db)?.into_iter().collect();
    let mut out = Vec::new();
    let mut rehashed = 0u64;
    for entry in fs::read_dir(&parity_dir).map_err(io_err("list parity directory"))? {
        let entry = entry.map_err(io_err("list parity directory"))?;
        let name = entry.file_name();
        let Some(id) = parse_parity_file_name(&name.to_string_lossy()) else {
            warn!(path = %entry.path().display(), "ignoring unexpected file in parity directory");
            continue;
        };
        let file = File::open(entry.path()).map_err(io_err("open parity extent"))?;
        let size_bytes = file.metadata().map_err(io_err("stat parity extent"))?.len();
        let meta = match metas.get(&id).copied().flatten() {
            Some(m) if m.size_bytes == size_bytes => m,
            other => {
                // Renamed into place only after it was verified, so the file is
                // whole; the metadata write was lost (or damaged): redo it.
                if other.is_some() {
                    error!(extent = id, size_bytes, "parity metadata disagrees with its file's length; rehashing the file");
                }
                let m = ParityMeta { size_bytes, blake3: hash_file(&file, size_bytes).map_err(io_err("hash parity extent"))? };
                db.put(meta::parity_key(id), m.encode())?;
                rehashed += 1;
                m
            }
        };
        out.push((id, ParityExtent { disk, file, size_bytes, blake3: meta.blake3 }));
    }
    let present: std::collections::HashSet<ExtentId> = out.iter().map(|(id, _)| *id).collect();
    let mut batch = WriteBatch::default();
    for id in metas.keys().filter(|id| !present.contains(id)) {
        error!(extent = id, disk = %dir.display(), "parity metadata names a missing file; dropping the metadata");
        batch.delete(meta::parity_key(*id));
    }
    if !batch.is_empty() {
        db.write(batch)?;
    }
    if !out.is_empty() || rehashed > 0 {
        info!(disk = %dir.display(), parity_extents = out.len(), rehashed, "recovered parity extents");
    }
    Ok(out)
}

/// An extent being received whole. Dropping it unfinished removes its
/// temporary file.
pub struct WholeWrite {
    store: Store,
    id: ExtentId,
    kind: WholeKind,
    size_bytes: u64,
    written: u64,
    hasher: blake3::Hasher,
    /// None when the extent already exists: the bytes are only hashed, to
    /// answer "already present" or refuse a different content.
    target: Option<(usize, PathBuf, File)>,
    finished: bool,
}

/// A sealed data extent or a parity extent, for raw range reads.
#[derive(Clone)]
pub struct RangeSource(Source);

#[derive(Clone)]
enum Source {
    Data(Arc<Extent>, u64),
    Parity(Arc<ParityExtent>),
}

impl RangeSource {
    pub fn size_bytes(&self) -> u64 {
        match &self.0 {
            Source::Data(_, size) => *size,
            Source::Parity(p) => p.size_bytes,
        }
    }

    /// Reads `[offset, offset + len)`, which must lie inside the extent. Blocking.
    pub fn read(&self, offset: u64, len: usize) -> Result<Bytes, StoreError> {
        if offset.checked_add(len as u64).is_none_or(|end| end > self.size_bytes()) {
            return Err(StoreError::OutOfRange { offset, len: len as u64, size_bytes: self.size_bytes() });
        }
        let file = match &self.0 {
            Source::Data(ext, _) => &ext.file,
            Source::Parity(p) => &p.file,
        };
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(io_err("read extent range"))?;
        Ok(Bytes::from(buf))
    }
}

impl WholeWrite {
    /// Appends the next bytes. Blocking.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.written + chunk.len() as u64 > self.size_bytes {
            return Err(StoreError::WholeLength { extent: self.id, expected: self.size_bytes, got: self.written + chunk.len() as u64 });
        }
        if let Some((_, _, file)) = self.target.as_mut() {
            file.write_all(chunk).map_err(io_err("write whole extent"))?;
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }
}

impl Drop for WholeWrite {
    fn drop(&mut self) {
        if !self.finished {
            if let Some((_, tmp, _)) = self.target.take() {
                let _ = fs::remove_file(tmp);
            }
        }
        lock(&self.store.whole_extents().writes).remove(&self.id);
    }
}

impl Store {
    pub(super) fn parity_extent(&self, id: ExtentId) -> Option<Arc<ParityExtent>> {
        // A parity extent on a failed disk is not served.
        self.whole_extents().parity().get(&id).cloned().filter(|parity| self.check_disk_ok(parity.disk).is_ok())
    }

    /// Starts receiving extent `id` whole (`size_bytes` of it). Refuses a
    /// second concurrent write of the same id and a disk without room.
    pub fn begin_whole_write(&self, id: ExtentId, kind: WholeKind, size_bytes: u64) -> Result<WholeWrite, StoreError> {
        if kind == WholeKind::Data && size_bytes < EXTENT_HEADER_LEN as u64 {
            return Err(StoreError::InvalidWhole { extent: id, detail: "shorter than an extent header".into() });
        }
        if !lock(&self.whole_extents().writes).insert(id) {
            return Err(StoreError::WriteInProgress(id));
        }
        let mut write = WholeWrite {
            store: self.clone(),
            id,
            kind,
            size_bytes,
            written: 0,
            hasher: blake3::Hasher::new(),
            target: None,
            finished: false,
        };
        let exists_as_data = self.extent(id).ok();
        let exists_as_parity = self.parity_extent(id);
        match (kind, exists_as_data, exists_as_parity) {
            (WholeKind::Data, Some(ext), None) if ext.snapshot().sealed => return Ok(write),
            (WholeKind::Parity, None, Some(_)) => return Ok(write),
            (_, None, None) => {}
            _ => return Err(StoreError::ContentConflict(id)),
        }
        let disk_index = self.pick_disk()?;
        let disk = self.disk(disk_index);
        let free = fs_space(disk.dir()).map(|s| s.free_bytes).unwrap_or(0);
        if free < size_bytes.saturating_add(FREE_SPACE_MARGIN_BYTES) {
            return Err(StoreError::NoSpace { needed_bytes: size_bytes, free_bytes: free });
        }
        let path = match kind {
            WholeKind::Data => disk.dir().join(EXTENTS_DIR).join(format::extent_file_name(id)),
            WholeKind::Parity => disk.dir().join(PARITY_DIR).join(parity_file_name(id)),
        };
        if path.exists() {
            return Err(StoreError::ExtentFileExists { extent: id, path });
        }
        let tmp = tmp_path(&path);
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io_err("create whole extent"))?;
        write.target = Some((disk_index, tmp, file));
        Ok(write)
    }

    /// Completes a whole write: length and BLAKE3 must match, a data extent
    /// must have a valid header (naming `id`) and footer; then the file is
    /// synced, renamed into place, the directory synced, and the extent
    /// served. Returns true if the same bytes were already stored. Blocking.
    pub fn finish_whole_write(&self, mut write: WholeWrite, expected_blake3: [u8; 32]) -> Result<bool, StoreError> {
        let id = write.id;
        if write.written != write.size_bytes {
            return Err(StoreError::WholeLength { extent: id, expected: write.size_bytes, got: write.written });
        }
        let received = *write.hasher.finalize().as_bytes();
        if received != expected_blake3 {
            return Err(StoreError::WholeHashMismatch(id));
        }
        let Some((disk_index, tmp, file)) = write.target.take() else {
            // Already stored: the same bytes, or a conflict.
            let existing = self.verify_whole(id)?;
            if existing.blake3 == received && existing.size_bytes == write.size_bytes {
                write.finished = true;
                return Ok(true);
            }
            return Err(StoreError::ContentConflict(id));
        };
        let cleanup = |e: StoreError| {
            let _ = fs::remove_file(&tmp);
            e
        };
        file.sync_all().map_err(io_err("sync whole extent")).map_err(cleanup)?;
        let disk = self.disk(disk_index);
        if write.kind == WholeKind::Data {
            check_data_extent(id, &file, write.size_bytes, self.options().max_record_bytes).map_err(cleanup)?;
        }
        drop(file);
        // From the last check that the id is free to the extent being served,
        // no creation or other whole write of this id can interleave.
        let _creating = self.creation_lock();
        if self.extent(id).is_ok() || self.parity_extent(id).is_some() {
            return Err(cleanup(StoreError::ContentConflict(id)));
        }
        match write.kind {
            WholeKind::Data => {
                let path = disk.dir().join(EXTENTS_DIR).join(format::extent_file_name(id));
                if path.exists() {
                    return Err(cleanup(StoreError::ExtentFileExists { extent: id, path }));
                }
                fs::rename(&tmp, &path).map_err(io_err("rename whole extent")).map_err(cleanup)?;
                sync_dir(&disk.dir().join(EXTENTS_DIR))?;
                write.finished = true;
                // Load it exactly as recovery would a file without metadata.
                let loaded = load_unindexed_extent(disk_index, disk.db(), id, &path)
                    .and_then(|ext| {
                        ext.filter(|ext| ext.snapshot().sealed).ok_or_else(|| StoreError::InvalidWhole {
                            extent: id,
                            detail: "did not load as a sealed extent".into(),
                        })
                    });
                let ext = match loaded {
                    Ok(ext) => ext,
                    Err(e) => {
                        // Never served, named by nothing: remove it, so that a retry starts clean.
                        let mut batch = WriteBatch::default();
                        meta::delete_extent(&mut batch, id);
                        let _ = disk.db().write(batch);
                        let _ = fs::remove_file(&path);
                        let _ = sync_dir(&disk.dir().join(EXTENTS_DIR));
                        return Err(e);
                    }
                };
                self.serve_extent(ext);
            }
            WholeKind::Parity => {
                let path = disk.dir().join(PARITY_DIR).join(parity_file_name(id));
                if path.exists() {
                    return Err(cleanup(StoreError::ExtentFileExists { extent: id, path }));
                }
                fs::rename(&tmp, &path).map_err(io_err("rename parity extent")).map_err(cleanup)?;
                sync_dir(&disk.dir().join(PARITY_DIR))?;
                write.finished = true;
                let meta = ParityMeta { size_bytes: write.size_bytes, blake3: received };
                // If this write is lost, recovery rehashes the file.
                disk.db().put(meta::parity_key(id), meta.encode())?;
                let file = File::open(&path).map_err(io_err("open parity extent"))?;
                let parity = ParityExtent { disk: disk_index, file, size_bytes: write.size_bytes, blake3: received };
                self.whole_extents().parity_mut().insert(id, Arc::new(parity));
            }
        }
        info!(extent = id, kind = ?write.kind, size_bytes = write.size_bytes, "stored whole extent");
        Ok(false)
    }

    /// A sealed data extent or a parity extent, for raw range reads.
    pub fn range_source(&self, id: ExtentId) -> Result<RangeSource, StoreError> {
        if let Some(parity) = self.parity_extent(id) {
            return Ok(RangeSource(Source::Parity(parity)));
        }
        let ext = self.extent(id)?;
        let s = ext.snapshot();
        if !s.sealed {
            return Err(StoreError::NotSealed(id));
        }
        Ok(RangeSource(Source::Data(ext, s.size_bytes)))
    }

    /// Reads a whole sealed or parity extent back from disk: its BLAKE3 and,
    /// for a data extent, every record of its footer checked (header, CRC,
    /// BLAKE3 against the key). Blocking.
    pub fn verify_whole(&self, id: ExtentId) -> Result<WholeInfo, StoreError> {
        if let Some(parity) = self.parity_extent(id) {
            let blake3 = hash_file(&parity.file, parity.size_bytes).map_err(io_err("hash parity extent"))?;
            if blake3 != parity.blake3 {
                error!(extent = id, "parity extent does not hash to the BLAKE3 recorded when it was written");
                return Err(StoreError::WholeHashMismatch(id));
            }
            return Ok(WholeInfo { kind: WholeKind::Parity, size_bytes: parity.size_bytes, blake3, record_count: 0 });
        }
        let ext = self.extent(id)?;
        let s = ext.snapshot();
        if !s.sealed {
            return Err(StoreError::NotSealed(id));
        }
        let record_count = check_data_extent(id, &ext.file, s.size_bytes, self.options().max_record_bytes)?;
        let blake3 = hash_file(&ext.file, s.size_bytes).map_err(io_err("hash extent"))?;
        Ok(WholeInfo { kind: WholeKind::Data, size_bytes: s.size_bytes, blake3, record_count })
    }

    /// Removes a sealed data extent or a parity extent: metadata first, then
    /// the file is moved to the trash (`trash.rs`), then a directory sync. Reads already holding the file finish.
    /// Returns whether it existed. Blocking.
    pub fn delete_whole(&self, id: ExtentId) -> Result<bool, StoreError> {
        let _creating = self.creation_lock();
        if let Some(parity) = self.parity_extent(id) {
            let disk = self.disk(parity.disk);
            disk.db().delete(meta::parity_key(id))?;
            self.whole_extents().parity_mut().remove(&id);
            let dir = disk.dir().join(PARITY_DIR);
            move_to_trash(disk.dir(), &dir.join(parity_file_name(id)), pocket_proto::now_unix_ms())?;
            sync_dir(&dir)?;
            info!(extent = id, "deleted parity extent (moved to trash)");
            return Ok(true);
        }
        let Ok(ext) = self.extent(id) else { return Ok(false) };
        if !ext.snapshot().sealed {
            return Err(StoreError::NotSealed(id));
        }
        let disk = self.disk(ext.disk);
        let mut batch = WriteBatch::default();
        meta::delete_extent(&mut batch, id);
        disk.db().write(batch)?;
        self.forget_extent(id);
        let dir = disk.dir().join(EXTENTS_DIR);
        move_to_trash(disk.dir(), &dir.join(format::extent_file_name(id)), pocket_proto::now_unix_ms())?;
        sync_dir(&dir)?;
        info!(extent = id, "deleted extent (moved to trash)");
        Ok(true)
    }

    /// Bytes held by parity extents.
    pub fn parity_bytes(&self) -> u64 {
        self.whole_extents().parity().values().map(|p| p.size_bytes).sum()
    }
}

/// Checks a sealed data extent file of `size_bytes`: its header names `id`,
/// it ends with a valid footer, and every record the footer lists is valid
/// and hashes to its key (one record in memory at a time, at most
/// `max_record_bytes`). Returns the record count. Blocking.
fn check_data_extent(id: ExtentId, file: &File, size_bytes: u64, max_record_bytes: u64) -> Result<u64, StoreError> {
    let invalid = |detail: String| StoreError::InvalidWhole { extent: id, detail };
    let mut header = [0u8; EXTENT_HEADER_LEN];
    file.read_exact_at(&mut header, 0).map_err(io_err("read extent header"))?;
    match ExtentHeader::decode(&header) {
        Ok(h) if h.extent_id == id => {}
        Ok(h) => return Err(invalid(format!("header names extent {}", h.extent_id))),
        Err(e) => return Err(invalid(format!("header: {e}"))),
    }
    let (_, entries) = read_footer(file, size_bytes)
        .map_err(io_err("read extent footer"))?
        .ok_or_else(|| invalid("no valid footer at the end".into()))?;
    let mut buf = Vec::new();
    for entry in &entries {
        if entry.data_len > max_record_bytes {
            return Err(invalid(format!("record at {} is larger than any record this OSD accepts", entry.offset)));
        }
        let len = RECORD_HEADER_LEN + entry.data_len as usize;
        buf.resize(len, 0);
        file.read_exact_at(&mut buf, entry.offset).map_err(io_err("read record"))?;
        let record = RecordHeader::decode(&buf).map_err(|e| invalid(format!("record at {}: {e}", entry.offset)))?;
        if record.key != entry.key || record.data_len != entry.data_len {
            return Err(invalid(format!("record at {} disagrees with the footer", entry.offset)));
        }
        let data = &buf[RECORD_HEADER_LEN..];
        record.check_data(data).map_err(|e| invalid(format!("record at {}: {e}", entry.offset)))?;
        if Key::of(data) != entry.key {
            return Err(invalid(format!("record at {} does not hash to its key", entry.offset)));
        }
    }
    Ok(entries.len() as u64)
}
